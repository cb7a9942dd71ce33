//! Helpers shared by integration tests: locating the Python reference
//! interpreter and the S3 test server, and running them.
#![allow(dead_code)]

pub mod s3;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The folder ci/env.sh installs dependencies into.
pub fn deps_dir() -> PathBuf {
    if let Ok(d) = std::env::var("IMET_DEPS_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".cache"));
    cache.join("imet-deps")
}

/// The Python with the reference tools (pyarrow, scikit-learn, ...).
/// Panics with the fix when it is missing: these tests must not pass silently.
pub fn python() -> PathBuf {
    let p = std::env::var("IMET_PYTHON").map(PathBuf::from).unwrap_or_else(|_| deps_dir().join("venv/bin/python"));
    assert!(p.exists(), "no reference Python at {}; run `bash ci/setup-python.sh` (ci/test.sh does)", p.display());
    p
}

/// Runs `script` with the reference Python and `args`; panics with its
/// output on failure; returns stdout.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python()).arg("-c").arg(script).args(args).output().expect("reference Python starts");
    assert!(
        out.status.success(),
        "python failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("python prints UTF-8")
}

const JSONSCHEMA_CHECK: &str = r#"
import sys, json, jsonschema
schema = json.load(open(sys.argv[1]))
doc = json.load(open(sys.argv[2]))
jsonschema.validate(doc, schema, format_checker=jsonschema.FormatChecker())
print("ok")
"#;

/// Validates the JSON file `doc` against `schemas/{schema}` with the
/// reference Python's jsonschema (formats checked); panics with its error.
pub fn assert_matches_json_schema(schema: &str, doc: &std::path::Path) {
    let schema = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas").join(schema);
    let out = run_python(JSONSCHEMA_CHECK, &[schema.to_str().expect("UTF-8 path"), doc.to_str().expect("UTF-8 path")]);
    assert_eq!(out.trim(), "ok");
}

/// The real competition CSVs the repository ships (`data/imet2019/`).
pub fn real_data_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/imet2019");
    assert!(dir.join("train.csv").exists(), "the real competition CSVs are missing from {}", dir.display());
    dir
}

/// The `imet` binary under test (`IMET_TEST_BIN` overrides cargo's, for
/// running the suite against a copied build).
#[allow(dead_code)]
pub fn imet_bin() -> PathBuf {
    std::env::var_os("IMET_TEST_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_imet")))
}

/// Held by the tests whose runs write gigabytes (whole smoke and sample
/// experiments: every fold's weights and checkpoints) so that at most one
/// of them has its output on disk at a time, whatever `--test-threads`
/// says. A test that panicked while holding it does not block the rest.
#[allow(dead_code)]
pub fn heavy_run() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a failed whole run needs in its message, at the end where a
/// truncated log still shows it: the free space under `dir` and the last
/// lines of every job log under `logs` that reports an error.
#[allow(dead_code)]
pub fn run_diagnosis(dir: &Path, logs: &Path) -> String {
    let mut out = String::new();
    if let Ok(df) = Command::new("df").args(["-h", "--output=avail,target"]).arg(dir).output() {
        out.push_str(&format!("free space under {}:\n{}", dir.display(), String::from_utf8_lossy(&df.stdout)));
    }
    for f in files_under(logs) {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        if text.contains("ERROR") || text.contains("error:") || text.contains("panicked") {
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- last lines of {}:\n{}\n", f.display(), lines[lines.len().saturating_sub(6)..].join("\n")));
        }
    }
    out
}

/// Every file under `dir` (recursively), sorted; none when it is missing.
#[allow(dead_code)]
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// Runs `imet ARGS` in `dir` on the CPU, with `info` logs and without
/// `IMET_ROOT`, and waits for it.
#[allow(dead_code)]
pub fn run_imet(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(imet_bin()).current_dir(dir).args(args).env("RUST_LOG", "info").env("IMET_DEVICE", "cpu").env_remove("IMET_ROOT").output().expect("imet starts")
}

/// A finished command's stdout, then its stderr.
#[allow(dead_code)]
pub fn output_text(o: &std::process::Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A tiny whole experiment `experiment` at `root`: 40 training and 8 test
/// sample images over 8 classes, 2 folds, ResNet-18 at 32 px for one epoch,
/// one ensemble member; `more` (whole TOML tables, e.g. `[storage.retry]`
/// or `[cluster]`) is appended.
#[allow(dead_code)]
pub fn tiny_spec(experiment: &str, root: &str, more: &str) -> String {
    format!(
        r#"experiment = "{experiment}"
seed = 5
[storage]
root = "{root}"
[data.sample]
train = 40
test = 8
classes = 8
seed = 3
[folds]
k = 2
[image]
workers = 2
[[models]]
name = "r18"
arch = "resnet18"
size = 32
[models.train]
batch_size = 8
phases = [{{ epochs = 1, optimizer = {{ kind = "sgd", lr = 0.05, momentum = 0.9 }} }}]
[ensemble]
members = ["r18"]
{more}"#
    )
}
