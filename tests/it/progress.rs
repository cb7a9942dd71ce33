//! Progress of the long loops through the binary, on a tiny sample: JSON
//! progress objects under `--log-format json` (rate, running loss, the
//! loop's and the job's ETA; the job's units add up to its total), text
//! lines only every `IMET_PROGRESS_SECS`, and a bar with the same fields on
//! a terminal (a pseudo-terminal from `script`).

use crate::common;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn spec_text(root: &Path) -> String {
    format!(
        r#"experiment = "progress"
seed = 5
[storage]
root = "{root}"
[data.sample]
train = 48
test = 12
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
eval_resize = "resize"
augment = [{{ random_resized_crop = {{ size = 32 }} }}]
tta = {{ hflip = true }}
[models.train]
batch_size = 8
predict_after = true
phases = [{{ epochs = 2, optimizer = {{ kind = "adamw", lr = 1e-3 }} }}]
"#,
        root = root.display()
    )
}

fn imet(dir: &Path) -> Command {
    let mut c = Command::new(common::imet_bin());
    c.current_dir(dir).env("RUST_LOG", "info").env("IMET_DEVICE", "cpu").env_remove("IMET_ROOT").env_remove("IMET_LOG_FORMAT");
    c
}

fn ok(out: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{what} failed:\n{stderr}");
    stderr
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("progress").tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), spec_text(&dir.path().join("store"))).unwrap();
    ok(imet(dir.path()).args(["folds", "--spec", "spec.toml"]).output().unwrap(), "folds");
    dir
}

#[test]
fn json_logs_carry_rate_loss_and_both_etas_and_the_job_adds_up() {
    let dir = setup();
    let stderr = ok(
        imet(dir.path()).env("IMET_PROGRESS_SECS", "0").args(["--log-format", "json", "train", "--spec", "spec.toml", "--model", "r18", "--fold", "0"]).output().unwrap(),
        "train",
    );
    let lines: Vec<Value> = stderr.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).map(|v| v["fields"].clone()).filter(|f| f["message"] == "progress").collect();
    let of = |prefix: &str| -> Vec<&Value> { lines.iter().filter(|f| f["what"].as_str().unwrap().starts_with(prefix)).collect() };

    let train = of("train r18 fold 0 epoch 1/2");
    assert!(!train.is_empty(), "no training progress in:\n{stderr}");
    for f in &train {
        assert_eq!(f["unit"], "images");
        assert!(f["per_sec"].as_f64().unwrap() > 0.0 && f["loss"].as_f64().unwrap() > 0.0, "{f}");
        assert!(f["eta_s"].as_f64().is_some() && f["job_eta_s"].as_f64().is_some(), "{f}");
        assert_eq!(f["job"], "train r18 fold 0");
    }
    let last = train.last().unwrap();
    assert_eq!(last["done"], last["total"], "the epoch's last batch reaches its total");
    assert_eq!(last["eta_s"].as_f64(), Some(0.0));
    let valid = of("validate r18 fold 0 epoch 2/2");
    assert!(!valid.is_empty() && valid.iter().all(|f| f.get("loss").is_none()), "validation shows no training loss");
    // Every epoch's training and validation images make the job's total.
    let job_last = of("validate r18 fold 0 epoch 2/2").last().map(|f| (f["job_done"].as_u64(), f["job_total"].as_u64())).unwrap();
    assert_eq!(job_last.0, job_last.1, "train job: {job_last:?}");
    assert_eq!(job_last.1, Some(2 * 48), "2 epochs x (24 training + 24 validation images)");

    // predict_after: the predict job's loops, each image decoded once and
    // both views of it predicted, counted as views.
    let test_views = of("predict test (2 views)");
    let f = test_views.last().expect("test-set progress");
    assert_eq!((f["unit"].as_str(), f["done"].as_u64(), f["total"].as_u64()), (Some("views"), Some(2 * 12), Some(2 * 12)));
    assert_eq!((f["job"].as_str(), f["job_done"].as_u64(), f["job_total"].as_u64()), (Some("predict r18 fold 0"), Some(2 * (24 + 12)), Some(2 * (24 + 12))));
}

#[test]
fn text_logs_wait_for_the_interval() {
    let dir = setup();
    let quiet = ok(
        imet(dir.path()).env("IMET_PROGRESS_SECS", "3600").args(["train", "--spec", "spec.toml", "--model", "r18", "--fold", "1"]).output().unwrap(),
        "train (an hour between lines)",
    );
    // Progress lines are the `progress` event (the experiment is also named
    // `progress`, and appears in other lines).
    assert!(!quiet.contains(": progress ") && quiet.contains("epoch done"), "{quiet}");
    let chatty = ok(
        imet(dir.path()).env("IMET_PROGRESS_SECS", "0").args(["train", "--spec", "spec.toml", "--model", "r18", "--fold", "0"]).output().unwrap(),
        "train (every update)",
    );
    let progress: Vec<&str> = chatty.lines().filter(|l| l.contains(": progress ")).collect();
    assert!(progress.iter().any(|l| l.contains("what=train r18 fold 0 epoch 2/2") && l.contains("loss=") && l.contains("job_eta_s=")), "{chatty}");
    assert!(progress.iter().any(|l| l.contains("what=predict test (2 views)")), "{chatty}");
}

#[test]
fn a_terminal_shows_a_bar_with_rate_loss_and_etas() {
    let dir = setup();
    let bin = common::imet_bin();
    let cmd = format!("{} train --spec spec.toml --model r18 --fold 0", bin.display());
    let out = Command::new("script")
        .current_dir(dir.path())
        .env("IMET_DEVICE", "cpu")
        .env("RUST_LOG", "info")
        .env("TERM", "xterm-256color")
        .env_remove("IMET_LOG_FORMAT")
        .env_remove("IMET_ROOT")
        .args(["-qefc", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("train r18 fold 0 epoch 1/2 ["), "no bar:\n{screen}");
    assert!(screen.contains("images/s") && screen.contains("loss ") && screen.contains("ETA") && screen.contains("train r18 fold 0 ETA"), "{screen}");
}
