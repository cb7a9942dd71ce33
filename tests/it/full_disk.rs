//! A full disk under the store: the local root on a 24 MiB tmpfs, which
//! holds the sample's images but not a ResNet-18 checkpoint. The train job
//! fails at once (a full disk is not retried) with the storage exit status
//! and an error naming the checkpoint; nothing half-written is visible or
//! committed; after the file system grows, the same command finishes the
//! experiment. A cache folder too small for the inputs only costs the
//! caching: every read returns its bytes, and only whole entries stay.
//! Needs root (mount); elsewhere the tests say so and pass.

use crate::common;
use imet::error::ExitKind;
use imet::ids::Fold;
use imet::storage::keys;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` when mounting is not permitted here (not root).
    fn mount(dir: &Path, mib: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"]).arg(dir).output().ok()?;
        out.status.success().then(|| Tmpfs(dir.to_path_buf())).or_else(|| {
            eprintln!("cannot mount a tmpfs ({}); the full-disk test needs root", String::from_utf8_lossy(&out.stderr).trim());
            None
        })
    }

    fn resize(&self, mib: u32) {
        let out = Command::new("mount").args(["-o", &format!("remount,size={mib}m")]).arg(&self.0).output().unwrap();
        assert!(out.status.success(), "remount: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn spec_text(root: &Path) -> String {
    let retry = "[storage.retry]\nretries = 4\ninitial_backoff_ms = 500\nmax_backoff_ms = 2000\n";
    common::tiny_spec("disk", &root.display().to_string(), retry)
}

#[test]
fn a_full_disk_fails_the_job_naming_the_file_commits_nothing_and_a_rerun_after_space_is_freed_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let Some(fs) = Tmpfs::mount(&root, 24) else { return };
    std::fs::write(dir.path().join("spec.toml"), spec_text(&root)).unwrap();

    let folds = common::run_imet(dir.path(), &["folds", "--spec", "spec.toml"]);
    assert!(folds.status.success(), "the sample and folds fit: {}", common::output_text(&folds));
    let started = std::time::Instant::now();
    let train = common::run_imet(dir.path(), &["train", "--spec", "spec.toml", "--model", "r18", "--fold", "0"]);
    let msg = common::output_text(&train);
    assert_eq!(train.status.code(), Some(i32::from(ExitKind::Storage.code())), "exit status of a full disk: {msg}");
    let checkpoint = keys::checkpoint("disk", "r18", Fold(0), 1);
    assert!(msg.contains(&checkpoint), "the error names the file: {msg}");
    assert!(msg.to_lowercase().contains("no space left"), "and says why: {msg}");
    assert!(msg.contains("after 1 attempt"), "a full disk is not retried: {msg}");
    assert!(started.elapsed().as_secs() < 120);
    // Nothing half-written is visible, nothing is committed.
    assert!(!root.join(&checkpoint).exists(), "a partial checkpoint is visible");
    assert!(!root.join(keys::trained("disk", "r18", Fold(0))).exists());
    let stray: Vec<_> = common::files_under(&root).into_iter().filter(|p| p.to_string_lossy().contains('#')).collect();
    assert!(stray.is_empty(), "staging files left behind: {stray:?}");

    // The same through `imet run`: the run says which job failed and why.
    let run = common::run_imet(dir.path(), &["run", "--spec", "spec.toml"]);
    let run_msg = common::output_text(&run);
    assert_eq!(run.status.code(), Some(i32::from(ExitKind::JobsFailed.code())), "{run_msg}");
    assert!(run_msg.contains("storage or local I/O failed"), "{run_msg}");

    // Space freed: the same command finishes the experiment.
    fs.resize(1024);
    let again = common::run_imet(dir.path(), &["run", "--spec", "spec.toml", "--parallel", "2"]);
    assert!(again.status.success(), "{}", common::output_text(&again));
    assert!(root.join("runs/disk/ensemble/submission.csv").exists());
}

#[test]
fn a_full_cache_folder_costs_only_the_caching() {
    use crate::common::s3::S3Server;
    use imet::storage::{CacheOptions, RetryPolicy, Store, StoreOptions};
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let Some(_fs) = Tmpfs::mount(&cache_dir, 1) else { return };
    let server = S3Server::start("imet");
    let plain = server.store("imet", "exp", RetryPolicy::default());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Three 600 KB inputs: the first fits the 1 MiB folder, the others do not.
    let blobs: Vec<Vec<u8>> = (0..3u8).map(|i| (0..600_000u32).map(|j| (j as u8) ^ i.wrapping_mul(31)).collect()).collect();
    for (i, b) in blobs.iter().enumerate() {
        rt.block_on(plain.put(&format!("data/train/{i}.png"), b.clone())).unwrap();
    }
    let cached = Store::open_with(
        "s3://imet/exp",
        StoreOptions {
            cache: Some(CacheOptions { dir: cache_dir.clone(), max_bytes: 10 << 30 }),
            s3_config: vec![
                ("aws_endpoint".into(), server.endpoint()),
                ("aws_access_key_id".into(), common::s3::ACCESS_KEY.into()),
                ("aws_secret_access_key".into(), common::s3::SECRET_KEY.into()),
                ("aws_region".into(), "us-east-1".into()),
            ],
            ..Default::default()
        },
    )
    .unwrap();
    for round in 0..2 {
        for (i, b) in blobs.iter().enumerate() {
            let got = rt.block_on(cached.get_cached(&format!("data/train/{i}.png"))).unwrap_or_else(|e| panic!("round {round}, input {i}: {e}"));
            assert!(got == b[..], "round {round}, input {i}: other bytes");
        }
    }
    // Whole entries only: what is in the folder is one of the inputs, and
    // no temporary file stays.
    let files = common::files_under(&cache_dir);
    assert!(files.iter().all(|f| !f.starts_with(cache_dir.join("tmp"))), "{files:?}");
    let entries: Vec<_> = files.iter().filter(|f| !f.ends_with(".lock")).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(blobs.iter().any(|b| std::fs::read(entries[0]).unwrap() == *b));
}
