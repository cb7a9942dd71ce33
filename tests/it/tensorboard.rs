//! TensorBoard event files against TensorBoard itself (the `tensorboard`
//! Python package, no TensorFlow): our bytes equal those of TensorBoard's
//! own protobuf classes and record writer for the same events; its
//! `EventAccumulator` reads back every scalar of a history (from a local
//! folder and from an S3 server); and a real train job writes events that
//! match its `history.parquet`.

use crate::common;

use imet::ids::Fold;
use imet::storage::parquet::{read_history, EpochRecord};
use imet::storage::tensorboard::{events_from_history, TAGS};
use imet::storage::{keys, RetryPolicy, Store};
use std::path::Path;
use std::process::Command;

/// Prints `{tag: [[step, wall_time, value], ...]}` for the run in argv[1]
/// (a folder or an s3:// URL), as TensorBoard loads it.
const ACCUMULATE: &str = r#"
import sys, json
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
out = {t: [[e.step, e.wall_time, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
assert acc.file_version == 2.0, acc.file_version
print(json.dumps(out))
"#;

/// Writes the events of the history in argv[1] (JSON) to argv[3] with
/// TensorBoard's own protobuf classes and record writer; argv[2] = tags.
const REFERENCE_WRITER: &str = r#"
import sys, json, io
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
history = json.load(open(sys.argv[1]))
tags = json.loads(sys.argv[2])
buf = io.BytesIO()
w = RecordWriter(buf)
w.write(event_pb2.Event(wall_time=0.0, step=0, file_version="brain.Event:2").SerializeToString())
wall = 0.0
for r in history:
    wall += r["seconds"]
    values = [r["train_loss"], r["valid_loss"], r["valid_f2"], r["valid_f2_culture"], r["valid_f2_tag"], r["valid_threshold"], r["lr"], r["train_images_per_sec"], r["seconds"]]
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in zip(tags, values)])
    w.write(event_pb2.Event(wall_time=wall, step=r["epoch"], summary=summary).SerializeToString())
open(sys.argv[3], "wb").write(buf.getvalue())
"#;

fn history() -> Vec<EpochRecord> {
    (1..=4u32)
        .map(|e| EpochRecord {
            epoch: e,
            phase: if e <= 2 { "head".into() } else { "full".into() },
            train_loss: 0.7 / f64::from(e) + 0.013,
            valid_loss: 0.5 - 0.031 * f64::from(e),
            valid_f2: 0.1 + 0.123_456_789 * f64::from(e),
            valid_threshold: if e == 1 { 0.0 } else { 0.05 * f64::from(e) },
            valid_f2_culture: 0.3,
            valid_f2_tag: 0.4,
            lr: 3e-4 * 0.5f64.powi(e as i32),
            train_images_per_sec: 123.456 + f64::from(e),
            seconds: 10.25 + f64::from(e) * 0.5,
        })
        .collect()
}

type Scalars = std::collections::BTreeMap<String, Vec<(i64, f64, f64)>>;

fn accumulate(run: &str, env: &[(&str, String)]) -> Scalars {
    let mut cmd = Command::new(common::python());
    cmd.arg("-c").arg(ACCUMULATE).arg(run);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("python starts");
    assert!(out.status.success(), "TensorBoard could not read {run}:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("the reader prints JSON")
}

/// Every tag holds the history's values at f32 precision, at steps = epochs,
/// with wall times = cumulative epoch seconds.
fn assert_matches(scalars: &Scalars, history: &[EpochRecord]) {
    let tags: Vec<&str> = TAGS.iter().map(|t| t.0).collect();
    assert_eq!(scalars.keys().map(String::as_str).collect::<std::collections::BTreeSet<_>>(), tags.iter().copied().collect());
    for (i, (tag, _)) in TAGS.iter().enumerate() {
        let events = &scalars[*tag];
        assert_eq!(events.len(), history.len(), "{tag}");
        let mut wall = 0.0;
        for (e, r) in events.iter().zip(history) {
            wall += r.seconds;
            let want = imet::storage::tensorboard::scalars(r)[i] as f32;
            assert_eq!(e.0, i64::from(r.epoch), "{tag}: step");
            // TensorBoard's f32, printed by Python and parsed here as f64: equal at f32.
            assert_eq!(e.2 as f32, want, "{tag} at epoch {}", r.epoch);
            assert!((e.1 - wall).abs() < 1e-9, "{tag}: wall time {} != {wall}", e.1);
        }
    }
}

#[test]
fn the_bytes_equal_tensorboards_own_writer_for_the_same_events() {
    let dir = tempfile::tempdir().unwrap();
    let h = history();
    let json = dir.path().join("history.json");
    std::fs::write(&json, serde_json::to_vec(&h).unwrap()).unwrap();
    let want = dir.path().join("reference.tfevents");
    let tags = serde_json::to_string(&TAGS.iter().map(|t| t.0).collect::<Vec<_>>()).unwrap();
    common::run_python(REFERENCE_WRITER, &[json.to_str().unwrap(), &tags, want.to_str().unwrap()]);
    let reference = std::fs::read(&want).unwrap();
    let ours = events_from_history(&h);
    assert_eq!(ours.len(), reference.len());
    assert!(ours == reference, "the event bytes differ from TensorBoard's writer");
}

#[test]
fn tensorboard_reads_every_scalar_of_a_history_from_a_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}", dir.path().display())).unwrap();
    let h = history();
    let key = keys::tensorboard_events("exp", "r18", Fold(1));
    tokio::runtime::Runtime::new().unwrap().block_on(store.put(&key, events_from_history(&h))).unwrap();
    let run = dir.path().join(keys::tensorboard_dir("exp", "r18", Fold(1)));
    assert_matches(&accumulate(run.to_str().unwrap(), &[]), &h);
}

/// Loads the run in argv[1], prints the epochs it sees, waits for a line on
/// stdin (the file is replaced meanwhile), loads again and prints the scalars.
const RELOAD: &str = r#"
import sys, json
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps([e.step for e in acc.Scalars("loss/train")]), flush=True)
sys.stdin.readline()
acc.Reload()
print(json.dumps({t: [[e.step, e.wall_time, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}), flush=True)
"#;

#[test]
fn a_running_tensorboard_sees_the_rewritten_file_as_an_append() {
    use std::io::{BufRead, Write};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}", dir.path().display())).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let h = history();
    let key = keys::tensorboard_events("exp", "r18", Fold(0));
    rt.block_on(store.put(&key, events_from_history(&h[..2]))).unwrap();
    let run = dir.path().join(keys::tensorboard_dir("exp", "r18", Fold(0)));
    let mut child = Command::new(common::python())
        .arg("-c")
        .arg(RELOAD)
        .arg(&run)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "[1, 2]");
    // The train job's next epoch: the whole object replaced (a new file on disk).
    rt.block_on(store.put(&key, events_from_history(&h))).unwrap();
    writeln!(child.stdin.take().unwrap(), "go").unwrap();
    let scalars: Scalars = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(child.wait().unwrap().success());
    assert_matches(&scalars, &h);
}

#[test]
fn tensorboard_reads_the_events_from_an_s3_store() {
    let server = common::s3::S3Server::start_with(common::s3::Backend::Moto, "imet-tensorboard");
    let store = server.store("imet-tensorboard", "team/imet", RetryPolicy::default());
    let h = history();
    let key = keys::tensorboard_events("exp", "r34", Fold(0));
    tokio::runtime::Runtime::new().unwrap().block_on(store.put(&key, events_from_history(&h))).unwrap();
    let run = format!("s3://imet-tensorboard/team/imet/{}", keys::tensorboard_dir("exp", "r34", Fold(0)));
    let env = [
        ("S3_ENDPOINT", server.endpoint()),
        ("AWS_ACCESS_KEY_ID", common::s3::ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", common::s3::SECRET_KEY.to_string()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
    ];
    assert_matches(&accumulate(&run, &env), &h);
}

/// The tiny experiment of the train job tests: 2 folds of 60 images,
/// resnet18 at 32 px, 2 epochs.
fn spec_text(root: &Path) -> String {
    format!(
        r#"experiment = "tb"
seed = 5
[storage]
root = "{}"
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
eval_resize = "resize"
[models.train]
batch_size = 8
phases = [
  {{ name = "head", epochs = 1, trainable = "head", optimizer = {{ kind = "adamw", lr = 3e-3 }} }},
  {{ name = "full", epochs = 1, optimizer = {{ kind = "sgd", lr = 0.02, momentum = 0.9 }} }},
]
"#,
        root.display()
    )
}

#[test]
fn a_train_job_writes_events_that_tensorboard_reads_as_its_history() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), spec_text(&dir.path().join("store"))).unwrap();
    for args in [&["folds", "--spec", "spec.toml"][..], &["train", "--spec", "spec.toml", "--model", "r18", "--fold", "0"]] {
        let out = Command::new(common::imet_bin())
            .current_dir(dir.path())
            .args(args)
            .env("IMET_DEVICE", "cpu")
            .env_remove("IMET_ROOT")
            .output()
            .unwrap();
        assert!(out.status.success(), "imet {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let store = Store::open(&format!("file://{}", dir.path().join("store").display())).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let h = rt.block_on(read_history(&store, &keys::history("tb", "r18", Fold(0)))).unwrap();
    assert_eq!(h.iter().map(|r| r.epoch).collect::<Vec<_>>(), vec![1, 2]);
    let key = keys::tensorboard_events("tb", "r18", Fold(0));
    let bytes = rt.block_on(store.get(&key)).unwrap();
    assert_eq!(bytes.as_ref(), events_from_history(&h).as_slice(), "the stored events are the history's");
    let run = dir.path().join("store").join(keys::tensorboard_dir("tb", "r18", Fold(0)));
    assert_matches(&accumulate(run.to_str().unwrap(), &[]), &h);
}
