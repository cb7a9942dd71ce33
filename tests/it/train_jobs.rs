//! Train and predict jobs through the binary on a tiny synthetic sample:
//! a run killed with SIGKILL mid-epoch and restarted ends with the same
//! weights and OOF predictions as an uninterrupted one (with hard negative
//! mining, whose hard images travel in the checkpoint), and so does one
//! killed after a checkpoint written inside an epoch, which resumes at that
//! batch rather than at the epoch's start; a failed checkpoint
//! write keeps the previous checkpoint; a head-only phase leaves the encoder
//! untouched; bad inputs fail before any work with errors naming what to do.

use crate::common;

use imet::ids::Fold;
use imet::storage::parquet::{read_history, read_predictions};
use imet::storage::{keys, Store};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const EXP: &str = "tiny";

/// A tiny experiment: 2 folds of 60 images, resnet18 at 32 px.
fn spec_text(root: &Path, extra_train: &str, phases: &str) -> String {
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
[[models]]
name = "r18"
arch = "resnet18"
size = 32
head = {{ dropout = 0.2 }}
augment = [{{ random_resized_crop = {{ size = 32, scale = [0.5, 1.0] }} }}, {{ hflip = {{}} }}]
tta = {{ hflip = true, crops = 1 }}
[models.train]
batch_size = 8
effective_batch = 16
label_smoothing = 0.05
mixup = {{ alpha = 0.4, p = 0.5 }}
clip_grad_norm = 5.0
hard_negative_mining = 0.1
{extra_train}
phases = [{phases}]
"#,
        root = root.display()
    )
}

const PHASES: &str = r#"{ epochs = 3, optimizer = { kind = "sgd", lr = 0.05, momentum = 0.9, nesterov = true }, schedule = { kind = "step", milestones = [2], factor = 0.5 } }"#;

fn imet(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(common::imet_bin());
    c.current_dir(dir).args(args).env("RUST_LOG", "info").env("IMET_DEVICE", "cpu").env_remove("IMET_ROOT");
    c
}

fn ok(out: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{what} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn setup(name: &str, extra_train: &str, phases: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix(name).tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(&spec, spec_text(&dir.path().join("store"), extra_train, phases)).unwrap();
    ok(imet(dir.path(), &["folds", "--spec", "spec.toml"]).output().unwrap(), "folds");
    (dir, spec)
}

fn store_of(dir: &Path) -> Store {
    Store::open(&format!("file://{}", dir.join("store").display())).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

fn weights_and_oof(dir: &Path) -> (Vec<u8>, Vec<f32>) {
    let store = store_of(dir);
    rt().block_on(async {
        let w = store.get(&keys::weights(EXP, "r18", Fold(0))).await.unwrap().to_vec();
        let oof = read_predictions(&store, &keys::oof(EXP, "r18", Fold(0))).await.unwrap();
        (w, oof.probs)
    })
}

#[test]
fn a_run_killed_mid_epoch_resumes_to_the_same_weights_and_oof() {
    let (a, _) = setup("imet-resume-a", "", PHASES);
    ok(imet(a.path(), &["train", "--spec", "spec.toml", "--model", "r18", "--fold", "0"]).output().unwrap(), "train");
    ok(imet(a.path(), &["predict", "--spec", "spec.toml", "--model", "r18", "--fold", "0"]).output().unwrap(), "predict");

    let (b, _) = setup("imet-resume-b", "", PHASES);
    let first = b.path().join("store").join(keys::checkpoint(EXP, "r18", Fold(0), 1));
    let mut child = imet(b.path(), &["train", "--spec", "spec.toml", "--model", "r18", "--fold", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !first.exists() {
        assert!(t.elapsed() < Duration::from_secs(300), "no checkpoint after 5 minutes");
        assert!(child.try_wait().unwrap().is_none(), "train exited before its first checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Into the second epoch, then SIGKILL.
    std::thread::sleep(Duration::from_millis(400));
    child.kill().unwrap();
    child.wait().unwrap();
    let trained = b.path().join("store").join(keys::trained(EXP, "r18", Fold(0)));
    assert!(!trained.exists(), "the job finished before it was killed; the test needs a longer epoch");

    let out = ok(imet(b.path(), &["train", "--spec", "spec.toml", "--model", "r18", "--fold", "0"]).output().unwrap(), "resumed train");
    let outcome: serde_json::Value = serde_json::from_str(&out).unwrap();
    let resumed = outcome["resumed_from"].as_u64().expect("the rerun resumed from a checkpoint");
    assert!((1..3).contains(&resumed), "resumed from {resumed}");
    ok(imet(b.path(), &["predict", "--spec", "spec.toml", "--model", "r18", "--fold", "0"]).output().unwrap(), "predict");

    let fold0 = a.path().join("store").join(keys::fold_dir(EXP, "r18", Fold(0)));
    common::assert_matches_json_schema("predict_stats.schema.json", &fold0.join("predict_stats.json"));
    common::assert_matches_json_schema("manifest.schema.json", &fold0.join("_TRAINED.json"));
    common::assert_matches_json_schema("manifest.schema.json", &fold0.join("_SUCCESS.json"));
    let (wa, oa) = weights_and_oof(a.path());
    let (wb, ob) = weights_and_oof(b.path());
    assert!(wa == wb, "weights differ after kill and resume");
    assert_eq!(oa, ob, "OOF predictions differ after kill and resume");
    let store = store_of(b.path());
    let history = rt().block_on(read_history(&store, &keys::history(EXP, "r18", Fold(0)))).unwrap();
    assert_eq!(history.iter().map(|r| r.epoch).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(history[2].lr, 0.025, "the step schedule halved the rate at epoch 2");

    // A committed job is skipped.
    let again = ok(imet(b.path(), &["train", "--spec", "spec.toml", "--model", "r18", "--fold", "0"]).output().unwrap(), "rerun");
    assert!(again.contains("\"skipped\": true"), "{again}");
}

#[test]
fn a_run_killed_after_an_in_epoch_checkpoint_resumes_at_that_batch_to_the_same_weights_and_oof() {
    let (a, _) = setup("imet-inepoch-a", "", PHASES);
    ok(imet(a.path(), &["train", "--spec", "spec.toml", "--model", "r18", "--fold", "0"]).output().unwrap(), "train");
    ok(imet(a.path(), &["predict", "--spec", "spec.toml", "--model", "r18", "--fold", "0"]).output().unwrap(), "predict");

    // 30 training images in batches of 8, two batches a step: 2 steps an
    // epoch, a checkpoint after the first. Checkpoint writes: in-epoch 1,
    // epoch 1, in-epoch 2, epoch 2, ...: the 4th write is killed, so epoch
    // 2's in-epoch checkpoint is the newest.
    let (b, _) = setup("imet-inepoch-b", "checkpoints = { every_steps = 1 }", PHASES);
    let killed = imet(b.path(), &["train", "--spec", "spec.toml", "--model", "r18", "--fold", "0"]).env("IMET_FAULT", "checkpoint.write:4").output().unwrap();
    assert!(!killed.status.success(), "the job was to be killed at its 4th checkpoint write");
    let in_epoch = b.path().join("store").join(keys::checkpoint_in_epoch(EXP, "r18", Fold(0)));
    let ck = imet::train::checkpoint::decode("in-epoch", &std::fs::read(&in_epoch).expect("an in-epoch checkpoint is left")).unwrap();
    let at = ck.state.in_epoch.expect("written inside an epoch");
    assert_eq!((ck.state.epochs_done, at.batches, at.steps), (1, 2, 1), "after the first step of epoch 2");

    let resumed = imet(b.path(), &["train", "--spec", "spec.toml", "--model", "r18", "--fold", "0"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr).to_string();
    let out = ok(resumed, "resumed train");
    assert!(stderr.contains("resuming inside an epoch") && stderr.contains("batches_done=2"), "{stderr}");
    let outcome: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcome["resumed_from"], 1);
    assert!(!in_epoch.exists(), "the epoch's own checkpoint made the in-epoch one obsolete");
    ok(imet(b.path(), &["predict", "--spec", "spec.toml", "--model", "r18", "--fold", "0"]).output().unwrap(), "predict");

    // Checkpointing inside epochs changes nothing the job computes.
    let (wa, oa) = weights_and_oof(a.path());
    let (wb, ob) = weights_and_oof(b.path());
    assert!(wa == wb, "weights differ after a kill and an in-epoch resume");
    assert_eq!(oa, ob, "OOF predictions differ after a kill and an in-epoch resume");
    let history = |d: &Path| rt().block_on(read_history(&store_of(d), &keys::history(EXP, "r18", Fold(0)))).unwrap();
    let (ha, hb) = (history(a.path()), history(b.path()));
    assert_eq!(ha.iter().map(|r| (r.train_loss, r.valid_f2, r.lr)).collect::<Vec<_>>(), hb.iter().map(|r| (r.train_loss, r.valid_f2, r.lr)).collect::<Vec<_>>());
}

#[test]
fn a_failed_checkpoint_write_keeps_the_previous_checkpoint() {
    let (d, _) = setup("imet-ckfail", "", PHASES);
    // A non-empty folder where epoch 2's checkpoint goes: the write fails.
    let blocker = d.path().join("store").join(keys::checkpoint(EXP, "r18", Fold(1), 2));
    std::fs::create_dir_all(&blocker).unwrap();
    std::fs::write(blocker.join("x"), b"x").unwrap();
    let out = imet(d.path(), &["train", "--spec", "spec.toml", "--model", "r18", "--fold", "1"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("epoch=2.safetensors"), "{stderr}");
    let first = d.path().join("store").join(keys::checkpoint(EXP, "r18", Fold(1), 1));
    let bytes = std::fs::read(&first).expect("the epoch 1 checkpoint is kept");
    let ck = imet::train::checkpoint::decode("epoch=1", &bytes).expect("and readable");
    assert_eq!(ck.state.epochs_done, 1);

    std::fs::remove_dir_all(&blocker).unwrap();
    let out = ok(imet(d.path(), &["train", "--spec", "spec.toml", "--model", "r18", "--fold", "1"]).output().unwrap(), "rerun");
    let outcome: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcome["resumed_from"], 1);
}

#[test]
fn a_head_only_phase_leaves_the_encoder_untouched_and_phases_are_recorded() {
    // Initial weights from a file, so both runs start from known tensors.
    let init_dir = tempfile::tempdir().unwrap();
    let init = init_dir.path().join("init.safetensors");
    {
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let _m = imet::model::ModelConfig::new(imet::model::Arch::Resnet18).build(&vs).unwrap();
        std::fs::write(&init, imet::model::weights::to_safetensors(&vs).unwrap()).unwrap();
    }
    let head = r#"{ name = "head", epochs = 1, trainable = "head", optimizer = { kind = "adamw", lr = 1e-2 } }"#;
    let tags = r#"{ name = "tags", epochs = 1, labels = "tags", loss = { kind = "focal", gamma = 2.0, alpha = 0.25 }, optimizer = { kind = "adam", lr = 1e-4 }, head_lr_factor = 10.0 }"#;
    let extra = "sampling = \"log_class_weights\"\nloss = { kind = \"bce_soft_f2\", weight = 0.5 }";
    let (d, spec) = setup("imet-phases", extra, &format!("{head},\n  {tags}"));
    let with_init = |text: String| text.replace("arch = \"resnet18\"", &format!("arch = \"resnet18\"\nweights = \"file://{}\"", init.display()));
    std::fs::write(&spec, with_init(std::fs::read_to_string(&spec).unwrap())).unwrap();
    // The head-only spec also predicts at the end of `imet train`.
    let head_only = with_init(
        spec_text(&d.path().join("store"), &format!("{extra}\npredict_after = true"), head).replace("experiment = \"tiny\"", "experiment = \"head\""),
    );
    std::fs::write(d.path().join("head.toml"), head_only).unwrap();
    ok(imet(d.path(), &["folds", "--spec", "head.toml"]).output().unwrap(), "folds");
    ok(imet(d.path(), &["train", "--spec", "head.toml", "--model", "r18", "--fold", "0"]).output().unwrap(), "head phase");
    ok(imet(d.path(), &["train", "--spec", "spec.toml", "--model", "r18", "--fold", "0"]).output().unwrap(), "two phases");

    let init_bytes = std::fs::read(&init).unwrap();
    let initial = safetensors::SafeTensors::deserialize(&init_bytes).unwrap();
    let store = store_of(d.path());
    let trained = rt().block_on(store.get(&keys::weights("head", "r18", Fold(0)))).unwrap();
    let trained = safetensors::SafeTensors::deserialize(&trained).unwrap();
    let same = |n: &str| initial.tensor(n).unwrap().data() == trained.tensor(n).unwrap().data();
    for n in ["conv1.weight", "layer2.0.conv1.weight", "layer4.1.bn2.weight"] {
        assert!(same(n), "{n} changed in a head-only phase");
    }
    assert!(!same("head.fc.weight"), "the head did not train");
    let predicted = d.path().join("store").join(keys::success("head", "r18", Fold(0)));
    assert!(predicted.exists(), "predict_after = true: `imet train` also predicted");
    assert!(!d.path().join("store").join(keys::success(EXP, "r18", Fold(0))).exists(), "and only when asked");
    let history = rt().block_on(read_history(&store, &keys::history(EXP, "r18", Fold(0)))).unwrap();
    assert_eq!(history.iter().map(|r| r.phase.as_str()).collect::<Vec<_>>(), ["head", "tags"]);
    assert!(history.iter().all(|r| r.train_loss.is_finite() && r.valid_f2 >= 0.0));
}

#[test]
fn bad_inputs_fail_before_any_work_and_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let spec = spec_text(&store, "", PHASES);
    std::fs::write(dir.path().join("spec.toml"), &spec).unwrap();
    let fail = |args: &[&str]| {
        let out = imet(dir.path(), args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let train = ["train", "--spec", "spec.toml", "--model", "r18", "--fold", "0"];
    // No folds yet (the sample is generated by `imet folds`, which has not run).
    let err = fail(&train);
    assert!(err.contains("imet folds") || err.contains("data/"), "{err}");
    ok(imet(dir.path(), &["folds", "--spec", "spec.toml"]).output().unwrap(), "folds");
    let err = fail(&["train", "--spec", "spec.toml", "--model", "r19", "--fold", "0"]);
    assert!(err.contains("r19") && err.contains("r18"), "{err}");
    let err = fail(&["train", "--spec", "spec.toml", "--model", "r18", "--fold", "2"]);
    assert!(err.contains("folds.k = 2"), "{err}");
    let err = fail(&["predict", "--spec", "spec.toml", "--model", "r18", "--fold", "0"]);
    assert!(err.contains("imet train"), "{err}");
    for (bad, field) in [
        (spec.replace("batch_size = 8", "batch_size = 8\nbatchsize = 4"), "batchsize"),
        (spec.replace("lr = 0.05", "lr = 50.0"), "models[r18].train.phases[0].optimizer.lr"),
        (spec.replace("size = 32\n", "size = 16\n"), "models[r18].size"),
        (spec.replace("clip_grad_norm = 5.0", "clip_grad_norm = 5.0\npseudo_labels = 0.1"), "add a `[[stages]]` table with `pseudo_labels"),
    ] {
        std::fs::write(dir.path().join("bad.toml"), bad).unwrap();
        let err = fail(&["train", "--spec", "bad.toml", "--model", "r18", "--fold", "0"]);
        assert!(err.contains(field) && err.contains("bad.toml"), "{field}: {err}");
    }
    // Only the failed jobs' failure records (`_FAILED.json`, `_TRAINED_FAILED.json`).
    let written: Vec<_> = common::files_under(&store.join("runs/tiny/models"))
        .into_iter()
        .filter(|f| !f.file_name().unwrap().to_string_lossy().ends_with("FAILED.json"))
        .collect();
    assert!(written.is_empty(), "nothing but failure records was written by the failed jobs: {written:?}");
}
