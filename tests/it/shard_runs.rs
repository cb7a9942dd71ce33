//! Whole experiments on shard sets: `imet run` with `[image] source =
//! "shards"` runs the two `imet shard` jobs, trains from sequential shard
//! epochs and predicts by id from the shards; `source = "shard_order"`
//! (the same training order, every image read as its own object) ends with
//! the same weights and predictions bit for bit, and `source = "objects"`
//! trains on the same images per epoch; a run on shards with in-epoch
//! checkpoints, killed inside an epoch and run again, resumes the shard
//! epoch at the checkpoint's image and ends bit for bit the same. A
//! truncated shard fails the fold
//! job naming the shard; a fold job whose shard job has not run says what
//! to run.

use crate::common;
use imet::ids::Fold;
use imet::storage::keys;
use imet::storage::parquet::{read_history, read_predictions};
use imet::storage::Store;
use std::path::Path;

const EXP: &str = "tiny";

/// 60 training and 12 test images, 2 folds, ResNet-18 at 32 px for 2
/// epochs, TTA with the mirror and one crop; shards of 1 MiB (several per
/// split), a 16-image shuffle buffer over 2 shards in flight.
fn spec_text(root: &Path, source: &str) -> String {
    format!(
        r#"experiment = "{EXP}"
seed = 5
[storage]
root = "{root}"
[data.sample]
train = 60
test = 12
classes = 8
seed = 3
[folds]
k = 2
[image]
workers = 2
source = "{source}"
[image.shards]
shard_mb = 1
shuffle_buffer = 16
shards_in_flight = 2
chunk_mb = 1
[[models]]
name = "r18"
arch = "resnet18"
size = 32
augment = [{{ random_resized_crop = {{ size = 32, scale = [0.5, 1.0] }} }}, {{ hflip = {{}} }}]
tta = {{ hflip = true, crops = 1 }}
[models.train]
batch_size = 8
phases = [{{ epochs = 2, optimizer = {{ kind = "sgd", lr = 0.05, momentum = 0.9 }} }}]
[ensemble]
members = ["r18"]
"#,
        root = root.display()
    )
}

/// Writes the spec with `source` into a new folder and runs the whole
/// experiment there.
fn run_with(source: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), spec_text(&dir.path().join("store"), source)).unwrap();
    let out = common::run_imet(dir.path(), &["run", "--spec", "spec.toml", "--parallel", "2"]);
    let all = common::output_text(&out);
    if !out.status.success() {
        panic!("source = {source}: imet run failed:\n{all}\n{}", common::run_diagnosis(dir.path(), &dir.path().join("store/logs")));
    }
    (dir, all)
}

/// As [`run_with`] with `train` added to `[models.train]`, the first run
/// SIGKILLed (once, by the first job to get there) at `fault`, then run
/// again to the end; the logs of both.
fn run_killed_then_resumed(source: &str, train: &str, fault: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let text = spec_text(&dir.path().join("store"), source).replace("[models.train]\n", &format!("[models.train]\n{train}\n"));
    std::fs::write(dir.path().join("spec.toml"), text).unwrap();
    let fired = dir.path().join("fired");
    let first = std::process::Command::new(common::imet_bin())
        .current_dir(dir.path())
        .args(["run", "--spec", "spec.toml", "--parallel", "2"])
        .env("RUST_LOG", "info")
        .env("IMET_DEVICE", "cpu")
        .env_remove("IMET_ROOT")
        .env("IMET_FAULT", fault)
        .env("IMET_FAULT_ONCE", &fired)
        .output()
        .unwrap();
    assert!(fired.exists(), "the fault {fault} never fired:\n{}", common::output_text(&first));
    let out = common::run_imet(dir.path(), &["run", "--spec", "spec.toml", "--parallel", "2"]);
    let all = common::output_text(&out);
    if !out.status.success() {
        panic!("the rerun after {fault} failed:\n{all}\n{}", common::run_diagnosis(dir.path(), &dir.path().join("store/logs")));
    }
    (dir, format!("{}\n{all}", common::output_text(&first)))
}

fn store_of(dir: &Path) -> Store {
    Store::open(&format!("file://{}", dir.join("store").display())).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Every tensor of a safetensors file, by name, as raw bytes.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    out.sort();
    out
}

#[test]
fn a_sample_experiment_on_shards_matches_its_order_check_bit_for_bit_and_trains_on_the_images_objects_give() {
    let _heavy = common::heavy_run();
    let (shards, log) = run_with("shards");
    for job in ["shard/train", "shard/test"] {
        assert!(log.lines().any(|l| l.contains(job) && l.contains("done")), "{job} did not run:\n{log}");
    }
    // The fold jobs read the shards: sequential training epochs, by-id reads
    // for validation and prediction.
    let logs = |dir: &Path| -> String {
        let mut all = String::new();
        for e in common::files_under(&dir.join("store/logs")) {
            all.push_str(&std::fs::read_to_string(e).unwrap_or_default());
        }
        all
    };
    let shard_logs = logs(shards.path());
    assert!(shard_logs.contains("shards shards/train/") && shard_logs.contains("(sequential:"), "training did not read the shards sequentially");
    assert!(shard_logs.contains("by id"), "validation or prediction did not read the shards by id");
    let submission = |dir: &Path| std::fs::read_to_string(dir.join(format!("store/runs/{EXP}/ensemble/submission.csv"))).unwrap();
    assert_eq!(submission(shards.path()).lines().count(), 1 + 12);

    // The same order, each image read as its own object: identical results.
    let (order, _) = run_with("shard_order");
    assert!(!logs(order.path()).contains("(sequential:"), "shard_order read the shards");
    for f in 0..2u8 {
        let w = |dir: &Path| tensors(&dir.join("store").join(keys::weights(EXP, "r18", Fold(f))));
        assert!(w(shards.path()) == w(order.path()), "fold {f}: the weights differ between shards and their objects in the same order");
        for key in [keys::oof(EXP, "r18", Fold(f)), keys::test_predictions(EXP, "r18", Fold(f))] {
            let p = |dir: &Path| rt().block_on(read_predictions(&store_of(dir), &key)).unwrap();
            let (a, b) = (p(shards.path()), p(order.path()));
            assert_eq!(a.ids, b.ids, "{key}");
            assert!(a.probs == b.probs, "{key}: predictions differ");
        }
    }
    assert_eq!(submission(shards.path()), submission(order.path()));

    // Killed inside an epoch, after in-epoch checkpoints: 30 training
    // images in batches of 8 are 4 steps an epoch, checkpointed after steps
    // 1-3; the 6th checkpoint write is the 2nd of epoch 2, so the rerun
    // starts epoch 2's shard epoch at its 9th image.
    let (resumed, _) = run_killed_then_resumed("shards", "checkpoints = { every_steps = 1 }", "checkpoint.write:6");
    let resumed_logs = logs(resumed.path());
    assert!(resumed_logs.contains("resuming inside an epoch") && resumed_logs.contains("batches_done=1"), "no in-epoch resume in the logs");
    for f in 0..2u8 {
        let w = |dir: &Path| tensors(&dir.join("store").join(keys::weights(EXP, "r18", Fold(f))));
        assert!(w(shards.path()) == w(resumed.path()), "fold {f}: the weights differ after an in-epoch resume on shards");
    }
    assert_eq!(submission(shards.path()), submission(resumed.path()));

    // Objects in the sampler's order: other batches of the same images.
    let (objects, _) = run_with("objects");
    for f in 0..2u8 {
        let key = keys::history(EXP, "r18", Fold(f));
        let h = |dir: &Path| rt().block_on(read_history(&store_of(dir), &key)).unwrap();
        let (a, b) = (h(shards.path()), h(objects.path()));
        assert_eq!((a.len(), b.len()), (2, 2), "{key}");
        assert!(a.iter().chain(&b).all(|r| r.train_loss.is_finite() && r.valid_f2 > 0.0), "{key}");
    }

    assert!(!logs(objects.path()).contains("shards shards/"), "objects read shards");

    // A second run skips every job, the shard jobs included.
    let again = common::run_imet(shards.path(), &["run", "--spec", "spec.toml"]);
    let again_text = common::output_text(&again);
    assert!(again.status.success() && again_text.contains("shard/train") && !again_text.contains(" done "), "{again_text}");
}

#[test]
fn a_truncated_shard_fails_the_fold_job_naming_it_and_a_missing_shard_job_names_the_command() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), spec_text(&dir.path().join("store"), "shards")).unwrap();
    let ok = |args: &[&str]| {
        let o = common::run_imet(dir.path(), args);
        assert!(o.status.success(), "{args:?}: {}", common::output_text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    ok(&["folds", "--spec", "spec.toml"]);
    let train = ["train", "--spec", "spec.toml", "--model", "r18", "--fold", "0"];
    let missing = common::run_imet(dir.path(), &train);
    assert!(!missing.status.success());
    assert!(common::output_text(&missing).contains("imet shard --spec <spec> --split train"), "{}", common::output_text(&missing));

    let built: serde_json::Value = serde_json::from_str(&ok(&["shard", "--spec", "spec.toml", "--split", "train"])).unwrap();
    assert!(built["shards"].as_u64().unwrap() >= 2, "{built}");
    ok(&["shard", "--spec", "spec.toml", "--split", "test"]);
    let shard = built["outputs"].as_array().unwrap().iter().map(|o| o["key"].as_str().unwrap().to_string()).find(|k| k.ends_with(".tar")).unwrap();
    let path = dir.path().join("store").join(&shard);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let out = common::run_imet(dir.path(), &train);
    let msg = common::output_text(&out);
    assert!(!out.status.success(), "a truncated shard trained: {msg}");
    assert!(msg.contains(&shard), "the error does not name the shard `{shard}`: {msg}");
    assert!(!dir.path().join("store").join(keys::weights(EXP, "r18", Fold(0))).exists());
}

