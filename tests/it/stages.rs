//! Experiments in stages, end to end with the real binary on a tiny noisy
//! sample: stage `main` trains, stage `clean` drops the noisiest images and
//! adds pseudo-labelled test images from main's ensemble, then trains again
//! from main's fold models. Checks the curate products and their schemas,
//! that the training side really changed, and that an edit upstream makes
//! every job downstream stale until `imet run --rerun-stale`.

use crate::common;

use imet::ids::Fold;
use imet::storage::keys::{self, Scope};
use imet::storage::parquet::{read_predictions, read_scored_ids};
use imet::storage::{Manifest, Store};

const SPEC: &str = r#"
experiment = "st"
seed = 3
[storage]
root = "store"
[data.sample]
train = 40
test = 12
classes = 8
seed = 5
noise = 0.2
[folds]
k = 2
[[models]]
name = "r18"
arch = "resnet18"
size = 32
augment = [{ random_resized_crop = { size = 32, scale = [0.6, 1.0] } }]
[models.train]
batch_size = 8
phases = [{ epochs = 1, optimizer = { kind = "adamw", lr = 2e-3 } }]
[models.resources]
gpus = 0
[ensemble]
members = ["r18"]
[[stages]]
name = "clean"
drop_noisy = { fraction = 0.2 }
pseudo_labels = { count = 4 }
init = "source"
[[stages.models]]
name = "r18"
arch = "resnet18"
size = 32
augment = [{ random_resized_crop = { size = 32, scale = [0.6, 1.0] } }]
[stages.models.train]
batch_size = 8
phases = [{ epochs = 1, optimizer = { kind = "adamw", lr = 1e-3 } }]
[stages.models.resources]
gpus = 0
[stages.ensemble]
members = ["r18"]
groups = { culture = "main" }
"#;

#[test]
fn a_later_stage_edits_its_data_from_the_first_stages_ensemble_and_goes_stale_with_it() {
    let _heavy = common::heavy_run();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("st.toml"), SPEC).unwrap();
    let run = common::run_imet(dir.path(), &["run", "--spec", "st.toml", "--parallel", "2"]);
    assert!(run.status.success(), "{}", common::output_text(&run));
    let out = common::output_text(&run);
    assert!(out.contains("stage main") && out.contains("stage clean"), "both stages report their F2:\n{out}");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = Store::open(&format!("file://{}", dir.path().join("store").display())).unwrap();
    let clean = Scope { experiment: "st", stage: Some("clean") };
    rt.block_on(async {
        // Curate products: 20% of 40 images dropped, 4 test images added.
        let dropped = read_scored_ids(&store, &keys::stage_data(clean, "dropped.parquet")).await.unwrap();
        assert_eq!(dropped.ids.len(), 8);
        assert!(dropped.scores.windows(2).all(|w| w[0] >= w[1]), "worst first");
        assert_eq!(dropped.meta["what"], "dropped");
        let pseudo = read_predictions(&store, &keys::stage_data(clean, "pseudo_targets.parquet")).await.unwrap();
        assert_eq!(pseudo.rows(), 4);
        assert!(pseudo.probs.iter().all(|&v| v == 0.0 || v == 1.0), "hard targets");
        let m = Manifest::load(&store, &keys::trained(clean, "r18", Fold(0))).await.unwrap().unwrap();
        assert!(m.inputs.iter().any(|i| i.manifest.ends_with("data/_SUCCESS.json")), "the stage's train job records the curate job it read");
        assert!(m.inputs.iter().any(|i| i.manifest == keys::trained("st", "r18", Fold(0))), "and the fold model it started from");
    });
    // What a person inspects opens with pyarrow.
    for key in ["dropped.parquet", "pseudo.parquet", "pseudo_targets.parquet"] {
        let path = dir.path().join("store").join(keys::stage_data(clean, key));
        let rows = common::run_python("import sys, pyarrow.parquet as pq; print(pq.read_table(sys.argv[1]).num_rows)", &[path.to_str().unwrap()]);
        assert!(rows.trim().parse::<usize>().unwrap() > 0, "{key}");
    }
    let train_log = std::fs::read_to_string(dir.path().join("store/logs/st/clean_train_r18_0.log")).unwrap();
    assert!(train_log.contains("training data edited by the stage"), "{train_log}");

    // The report draws every stage's models, a later stage's as `{stage}/{model}`.
    let report = common::run_imet(dir.path(), &["report", "--spec", "st.toml", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap_or_else(|_| panic!("{}", common::output_text(&report)));
    let names: Vec<&str> = r["models"].as_array().unwrap().iter().map(|m| m["model"].as_str().unwrap()).collect();
    assert_eq!(names, ["r18", "clean/r18"], "{r}");
    assert!(r["missing"].as_array().unwrap().is_empty(), "every fold of both stages has a history: {r}");
    for m in r["models"].as_array().unwrap() {
        let plot = m["plot"].as_str().unwrap_or_else(|| panic!("no plot: {m}"));
        assert!(std::fs::metadata(plot).map(|f| f.len() > 1000).unwrap_or(false), "{plot}");
    }

    // An edit of stage main: everything downstream is stale, never reused.
    let edited = SPEC.replace("lr = 2e-3", "lr = 3e-3");
    std::fs::write(dir.path().join("st.toml"), &edited).unwrap();
    let status = common::run_imet(dir.path(), &["status", "--spec", "st.toml", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_else(|_| panic!("{}", common::output_text(&status)));
    let state = |id: &str| v["jobs"].as_array().unwrap().iter().find(|j| j["job"] == id).unwrap()["state"].as_str().unwrap().to_string();
    assert_eq!(state("folds"), "done");
    assert_eq!(state("train/r18/0"), "stale");
    assert_eq!(state("clean/train/r18/0"), "stale", "the stage's hash includes its source's");
    let again = common::run_imet(dir.path(), &["run", "--spec", "st.toml"]);
    assert!(!again.status.success(), "stale jobs fail without --rerun-stale");
    assert!(common::output_text(&again).contains("--rerun-stale"), "{}", common::output_text(&again));
    let rerun = common::run_imet(dir.path(), &["run", "--spec", "st.toml", "--parallel", "2", "--rerun-stale"]);
    assert!(rerun.status.success(), "{}", common::output_text(&rerun));
    let kept: Vec<_> = std::fs::read_dir(dir.path().join("store/runs/st/stages/clean/ensemble")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("_SUCCESS.json.stale-")).collect();
    assert_eq!(kept.len(), 1, "the stale manifest is kept beside the new one");
    let status = common::run_imet(dir.path(), &["status", "--spec", "st.toml", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["done"], v["total"], "{v}");
}

#[test]
fn a_stage_that_reads_itself_or_a_later_stage_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    for (edit, needle) in [
        (SPEC.replace("init = \"source\"", "init = \"source\"\nsource = \"clean\""), "cannot read its own ensemble"),
        (SPEC.replace("init = \"source\"", "init = \"source\"\nsource = \"later\""), "never a later one"),
        (SPEC.replace("drop_noisy = { fraction = 0.2 }", "drop_noisy = { fraction = 0.2, min_error = 1.0 }"), "exactly one of"),
        (SPEC.replace("name = \"clean\"", "name = \"main\""), "`main`"),
        (SPEC.replace("groups = { culture = \"main\" }", "groups = { culture = \"nowhere\" }"), "must name an earlier stage"),
    ] {
        std::fs::write(dir.path().join("bad.toml"), edit).unwrap();
        let out = common::run_imet(dir.path(), &["plan", "--spec", "bad.toml"]);
        assert!(!out.status.success(), "{needle}");
        assert!(common::output_text(&out).contains(needle) && common::output_text(&out).contains("bad.toml"), "{needle}: {}", common::output_text(&out));
    }
    assert!(!dir.path().join("store").exists(), "nothing was written");
}
