//! Offline inference, as the competition ran it (a kernel without
//! internet): a tiny two-stage experiment (a weighted blend of two models
//! averaging one fold's test predictions, then a stage that drops noisy
//! images, starts from the first stage's models, thresholds a level-2
//! model over its member and takes its culture columns from the first
//! stage's blend) is trained, packaged with `imet
//! package --tar`, unpacked into an empty folder and run there by the
//! package's `run.sh` with an empty environment beside `PATH` over a
//! Kaggle-style test folder. Its submission must be byte-identical to the
//! training run's, the package must hold no training image, no checkpoint
//! and no out-of-fold file, and `imet budget --package` must read it.

use crate::common;

use std::path::Path;
use std::process::Command;

const SPEC: &str = r#"
experiment = "off"
seed = 11
[storage]
root = "store"
[data.sample]
train = 40
test = 10
classes = 8
seed = 4
noise = 0.1
[folds]
k = 2
[image]
workers = 2
[[models]]
name = "a"
arch = "resnet18"
size = 32
augment = [{ random_resized_crop = { size = 32, scale = [0.6, 1.0] } }]
[models.train]
batch_size = 8
phases = [{ epochs = 1, optimizer = { kind = "adamw", lr = 2e-3 } }]
[[models]]
name = "b"
arch = "resnet18"
size = 32
tta = { hflip = false }
[models.train]
batch_size = 8
phases = [{ epochs = 1, optimizer = { kind = "adamw", lr = 2e-3 } }]
[ensemble]
members = ["a", "b"]
blend = "weighted"
weight_rows = 40
test_folds = [1]
[[stages]]
name = "clean"
drop_noisy = { fraction = 0.1 }
init = "source"
[[stages.models]]
name = "a"
arch = "resnet18"
size = 32
augment = [{ random_resized_crop = { size = 32, scale = [0.6, 1.0] } }]
[stages.models.train]
batch_size = 8
phases = [{ epochs = 1, optimizer = { kind = "adamw", lr = 1e-3 } }]
[stages.ensemble]
members = ["a"]
groups = { culture = "main" }
[stages.ensemble.level2]
top_k = 6
rounds = 20
num_leaves = 4
min_data_in_leaf = 5
"#;

/// `imet ARGS` in `dir` with the thread counts pinned, so the training
/// run's and the offline run's CPU arithmetic match.
fn imet(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(common::imet_bin())
        .current_dir(dir)
        .args(args)
        .env("RUST_LOG", "info")
        .env("IMET_DEVICE", "cpu")
        .env("OMP_NUM_THREADS", "1")
        .env("RAYON_NUM_THREADS", "1")
        .env_remove("IMET_ROOT")
        .output()
        .expect("imet starts")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_package_unpacked_elsewhere_makes_the_training_runs_submission_offline() {
    let _heavy = common::heavy_run();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("off.toml"), SPEC).unwrap();
    let run = imet(d, &["run", "--spec", "off.toml", "--parallel", "2"]);
    assert!(run.status.success(), "{}\n{}", common::output_text(&run), common::run_diagnosis(d, &d.join("store/logs")));

    // Package it: a folder and a tar file.
    let pkg = imet(d, &["package", "--spec", "off.toml", "--out", "pkg", "--tar", "pkg.tar"]);
    assert!(pkg.status.success(), "{}", common::output_text(&pkg));
    let text = common::output_text(&pkg);
    assert!(text.contains("6 fold models"), "main a/b fold 1, clean a and level2 folds 0-1:\n{text}");
    let files: Vec<String> = common::files_under(&d.join("pkg")).iter().map(|p| p.strip_prefix(d.join("pkg")).unwrap().display().to_string()).collect();
    let bytes: u64 = common::files_under(&d.join("pkg")).iter().map(|p| p.metadata().unwrap().len()).sum();
    eprintln!("package: {} files, {bytes} bytes; tar {} bytes", files.len(), d.join("pkg.tar").metadata().unwrap().len());
    for f in &files {
        assert!(!f.ends_with(".png") && !f.contains("data/train/"), "a training image in the package: {f}");
        assert!(!f.contains("oof") && !f.ends_with("folds.parquet") && !f.contains("checkpoints"), "an OOF file or checkpoint in the package: {f}");
    }
    for want in [
        "bin/imet",
        "run.sh",
        "spec.toml",
        "package.json",
        "README.md",
        "store/data/labels.csv",
        "store/runs/off/models/a/fold=1/model.safetensors",
        "store/runs/off/models/b/fold=1/_TRAINED.json",
        "store/runs/off/ensemble/thresholds.json",
        "store/runs/off/stages/clean/models/a/fold=0/model.safetensors",
        "store/runs/off/stages/clean/ensemble/thresholds.json",
        "store/runs/off/stages/clean/models/level2/fold=1/model.txt",
        "store/data/train.csv",
    ] {
        assert!(files.iter().any(|f| f == want), "{want} missing from {files:#?}");
    }
    assert!(!files.iter().any(|f| f.contains("models/a/fold=0") && !f.contains("stages")), "main's fold 0 is not in test_folds: {files:#?}");
    let listed: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("pkg/package.json")).unwrap()).unwrap();
    assert_eq!(listed["files"].as_array().unwrap().len() + 1, files.len(), "package.json lists every other file");
    common::assert_matches_json_schema("package.schema.json", &d.join("pkg/package.json"));

    // Idempotent; another folder's contents are not overwritten unless told.
    let again = imet(d, &["package", "--spec", "off.toml", "--out", "pkg"]);
    assert!(again.status.success() && common::output_text(&again).contains("unchanged"), "{}", common::output_text(&again));
    std::fs::create_dir_all(d.join("busy")).unwrap();
    std::fs::write(d.join("busy/notes.txt"), "mine").unwrap();
    let refused = imet(d, &["package", "--spec", "off.toml", "--out", "busy"]);
    assert_eq!(refused.status.code(), Some(2), "{}", common::output_text(&refused));
    assert!(common::output_text(&refused).contains("--force"));
    assert_eq!(std::fs::read_to_string(d.join("busy/notes.txt")).unwrap(), "mine");

    // An empty machine: the tar unpacked, the competition's test files in Kaggle's layout.
    let offline = tempfile::tempdir().unwrap();
    let o = offline.path();
    let untar = Command::new("tar").arg("-xf").arg(d.join("pkg.tar")).current_dir(o).output().unwrap();
    assert!(untar.status.success(), "{}", String::from_utf8_lossy(&untar.stderr));
    std::fs::create_dir_all(o.join("input")).unwrap();
    std::fs::copy(d.join("store/data/sample_submission.csv"), o.join("input/sample_submission.csv")).unwrap();
    copy_dir(&d.join("store/data/test"), &o.join("input/test"));
    let run_sh = |args: &[&str]| {
        Command::new(o.join("pkg/run.sh"))
            .args(args)
            .current_dir(o)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("IMET_DEVICE", "cpu")
            .env("OMP_NUM_THREADS", "1")
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .unwrap()
    };
    let infer = run_sh(&["input", "submission.csv"]);
    assert!(infer.status.success(), "{}", common::output_text(&infer));
    let want = std::fs::read(d.join("store/runs/off/stages/clean/ensemble/submission.csv")).unwrap();
    assert_eq!(std::fs::read(o.join("submission.csv")).unwrap(), want, "the offline submission is the training run's, byte for byte");
    assert_eq!(
        std::fs::read(o.join("imet-work/runs/off/ensemble/submission.csv")).unwrap(),
        std::fs::read(d.join("store/runs/off/ensemble/submission.csv")).unwrap(),
        "the first stage's too"
    );
    for f in common::files_under(&o.join("imet-work")) {
        let name = f.display().to_string();
        assert!(!name.contains("oof") && !name.contains("data/train/") && !name.contains("folds.parquet"), "the offline run wrote or read {name}");
    }

    // A rerun skips every committed job and writes the same file.
    std::fs::remove_file(o.join("submission.csv")).unwrap();
    let rerun = run_sh(&["input", "submission.csv"]);
    assert!(rerun.status.success(), "{}", common::output_text(&rerun));
    assert!(common::output_text(&rerun).contains("(4 already done)"), "{}", common::output_text(&rerun));
    assert_eq!(std::fs::read(o.join("submission.csv")).unwrap(), want);

    // The budget from the package: the training run's measured throughput.
    let budget = imet(o, &["budget", "--package", "pkg", "--budget", "9h", "--json"]);
    assert!(budget.status.success(), "{}", common::output_text(&budget));
    let b: serde_json::Value = serde_json::from_slice(&budget.stdout).unwrap();
    let members = b["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{b}");
    for m in members {
        assert_eq!((m["test_images"].as_u64(), m["folds"].as_u64()), (Some(10), Some(1)), "{m}");
        assert_eq!(m["source"]["kind"], "history", "{m}");
    }

    // A damaged copy is refused before any work, naming the file.
    let weights = o.join("pkg/store/runs/off/models/a/fold=1/model.safetensors");
    let mut w = std::fs::read(&weights).unwrap();
    let last = w.len() - 1;
    w[last] ^= 1;
    std::fs::write(&weights, w).unwrap();
    let damaged = run_sh(&["input", "other.csv", "work2"]);
    assert!(!damaged.status.success());
    assert!(common::output_text(&damaged).contains("models/a/fold=1/model.safetensors"), "{}", common::output_text(&damaged));
    assert!(!o.join("other.csv").exists());
}
