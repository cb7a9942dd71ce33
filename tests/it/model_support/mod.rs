//! Shared by the model tests: finds the torch+timm Python of
//! ci/setup-torch-python.sh and runs ci/export_timm.py once per distinct
//! request, caching its outputs under `$IMET_DEPS_DIR/model-refs/<hash>`
//! keyed by the exporter script's content and the request.

#![allow(dead_code)]

use fs2::FileExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::Tensor;

use crate::common::deps_dir;

/// The Python with torch 2.11.0 and timm; panics (fails the test) when absent.
pub fn torch_python() -> PathBuf {
    let candidate = std::env::var("IMET_TORCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| deps_dir().join("venv-torch/bin/python"));
    assert!(
        candidate.exists(),
        "torch/timm Python not found at {} (IMET_TORCH_PYTHON); run `bash ci/setup-torch-python.sh` first",
        candidate.display()
    );
    candidate
}

fn exporter() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/export_timm.py")
}

/// Runs `export_timm.py <args> --out DIR` unless DIR already holds its
/// finished outputs; returns DIR.
pub fn export(args: &[&str]) -> PathBuf {
    // Checked even when cached: the reference side must exist where the tests run.
    let python = torch_python();
    let script = std::fs::read(exporter()).expect("ci/export_timm.py is readable");
    let mut hasher = Sha256::new();
    hasher.update(&script);
    for a in args {
        hasher.update(a.as_bytes());
        hasher.update([0]);
    }
    let key = hex::encode(&hasher.finalize()[..8]);
    let root = deps_dir().join("model-refs");
    std::fs::create_dir_all(&root).expect("model-refs folder can be created");
    let dir = root.join(&key);
    let done = dir.join(".done");
    let lock = std::fs::File::create(root.join(format!("{key}.lock"))).expect("lock file");
    lock.lock_exclusive().expect("lock model-refs");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let started = std::time::Instant::now();
        let output = Command::new(&python)
            .arg(exporter())
            .args(args)
            .arg("--out")
            .arg(&dir)
            .env("OMP_NUM_THREADS", std::env::var("OMP_NUM_THREADS").unwrap_or_else(|_| "2".into()))
            .output()
            .expect("the torch Python runs");
        assert!(
            output.status.success(),
            "ci/export_timm.py {args:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("exported {args:?} in {:.1}s", started.elapsed().as_secs_f64());
        std::fs::write(&done, b"").expect("mark export done");
    }
    // Mark as used now, and drop reference sets unused for two days (older
    // exporter versions), so the cache does not grow without bound.
    std::fs::write(&done, b"").expect("mark export used");
    let _ = FileExt::unlock(&lock);
    prune_stale(&root, &dir);
    dir
}

fn prune_stale(root: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    let max_age = std::time::Duration::from_secs(2 * 24 * 3600);
    for entry in entries.flatten() {
        let path = entry.path();
        if path == keep || !path.is_dir() {
            continue;
        }
        let stale = std::fs::metadata(path.join(".done"))
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().map(|age| age > max_age).unwrap_or(false))
            .unwrap_or(false);
        if stale {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// All tensors of a safetensors file by name.
pub fn read_tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// Largest absolute elementwise difference.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}

/// Fetches the weights file at `url` the way jobs do and loads it into `vs`.
pub fn load_url(url: &str, vs: &tch::nn::VarStore, arch: imet::model::Arch) -> imet::Result<imet::model::LoadReport> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let bytes = rt.block_on(imet::fold_job::fetch_weights(url))?;
    imet::model::apply_weights(vs, arch, url, &bytes)
}

/// Fetches the TorchScript archive at `url` the way jobs do and loads it.
pub fn load_script(url: &str, vs: &tch::nn::VarStore) -> imet::Result<imet::model::ScriptModel> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let bytes = rt.block_on(imet::fold_job::fetch_weights(url))?;
    imet::model::ScriptModel::from_bytes(url, &bytes, vs)
}
