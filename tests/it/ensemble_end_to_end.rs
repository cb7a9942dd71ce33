//! `imet ensemble` end to end at the CI sample's scale (a few hundred train
//! images, 5 folds, ~30 used classes of 1,103) against in-memory and local
//! stores: every blend, every output and its contract in `schemas/`, the
//! skip on rerun, and each bad-input case failing before anything is
//! written, naming the file and the first bad id.

use crate::common;

use imet::data::{Annotations, TestIds, Vocabulary};
use imet::ids::{AttributeId, Fold, ImageId};
use imet::ensemble::{self, metric::LabelSets, submission};
use imet::storage::parquet::{self as pq, FoldsMeta, PredictionKind, PredictionMeta, Predictions};
use imet::storage::{keys, Store};
use imet::JobSpec;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const N: usize = 300;
const NT: usize = 80;
const K: u8 = 5;
const USED: usize = 30;

fn vocab() -> Vocabulary {
    let names = (0..1103).map(|i| if i < 398 { format!("culture::c{i}") } else { format!("tag::t{i}") }).collect();
    Vocabulary::from_names(names).unwrap()
}

/// The classes the sample uses: 10 cultures and 20 tags.
fn used() -> Vec<u16> {
    (0..10u16).map(|i| i * 7).chain((0..20u16).map(|i| 398 + i * 11)).collect()
}

fn id(i: usize) -> ImageId {
    ImageId::new(&format!("{:016x}", 0x5eed_0000_0000u64 + i as u64)).unwrap()
}

struct Fixture {
    spec: JobSpec,
    train: Annotations,
    test: TestIds,
}

fn spec(exp: &str, extra: &str) -> JobSpec {
    let text = format!("experiment = \"{exp}\"\n[storage]\nroot = \"memory://\"\n[folds]\nk = {K}\n[ensemble]\nmembers = [\"alpha\", \"beta\"]\n{extra}");
    JobSpec::parse("test.toml", &text).unwrap()
}

fn probs_for(rng: &mut impl Rng, labels: &[u16], skill: f32) -> Vec<f32> {
    let used = used();
    let mut row: Vec<f32> = (0..1103).map(|_| 0.002 * rng.random::<f32>()).collect();
    for &c in &used {
        let u: f32 = rng.random();
        row[c as usize] = if labels.contains(&c) { (0.25 + skill * u).min(1.0) } else { 0.5 * u * u };
    }
    row
}

/// Writes the CSVs, folds.parquet and every member file of `spec`.
async fn fixture(store: &Store, spec: JobSpec) -> Fixture {
    let v = vocab();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let used = used();
    let mut labels = Vec::new();
    for _ in 0..N {
        let mut l: Vec<AttributeId> = Vec::new();
        if rng.random::<f32>() < 0.8 {
            l.push(AttributeId(used[rng.random_range(0..10)]));
        }
        for _ in 0..rng.random_range(1..4) {
            l.push(AttributeId(used[10 + rng.random_range(0..20)]));
        }
        l.sort();
        l.dedup();
        labels.push(l);
    }
    let train = Annotations { ids: (0..N).map(id).collect(), labels };
    let test = TestIds { ids: (0..NT).map(|i| id(10_000 + i)).collect() };
    store.put(keys::LABELS, v.to_csv()).await.unwrap();
    store.put(keys::TRAIN, train.to_csv()).await.unwrap();
    store.put(keys::SAMPLE_SUBMISSION, test.to_csv()).await.unwrap();
    let exp = spec.experiment.clone();
    let folds: Vec<Fold> = (0..N).map(|i| Fold((i % K as usize) as u8)).collect();
    pq::write_folds(store, &keys::folds(&exp), &train.ids, &folds, &FoldsMeta { k: K, seed: 1, method: "modulo".into() }).await.unwrap();
    for (mi, model) in ["alpha", "beta"].into_iter().enumerate() {
        for f in 0..K {
            let rows: Vec<usize> = (0..N).filter(|&i| folds[i].0 == f).collect();
            let mut probs = Vec::new();
            for &i in &rows {
                let l: Vec<u16> = train.labels[i].iter().map(|a| a.0).collect();
                probs.extend(probs_for(&mut rng, &l, 0.5 + 0.2 * mi as f32));
            }
            let meta = |kind| PredictionMeta {
                experiment: exp.clone(),
                model: model.into(),
                fold: Some(Fold(f)),
                kind,
                tta: 2,
                spec_hash: "h".into(),
                class_count: 1103,
                vocabulary_hash: v.hash(),
            };
            let oof = Predictions { ids: rows.iter().map(|&i| train.ids[i].clone()).collect(), probs, meta: meta(PredictionKind::Oof) };
            pq::write_predictions(store, &keys::oof(&exp, model, Fold(f)), &oof).await.unwrap();
            let mut tp = Vec::new();
            for i in 0..NT {
                tp.extend(probs_for(&mut rng, &[used[i % 10], used[10 + i % 20]], 0.6));
            }
            let test_preds = Predictions { ids: test.ids.clone(), probs: tp, meta: meta(PredictionKind::Test) };
            pq::write_predictions(store, &keys::test_predictions(&exp, model, Fold(f)), &test_preds).await.unwrap();
        }
    }
    Fixture { spec, train, test }
}

async fn json(store: &Store, key: &str) -> Value {
    serde_json::from_slice(&store.get(key).await.unwrap()).unwrap()
}

#[tokio::test]
async fn every_blend_runs_end_to_end_and_writes_every_output() {
    for (exp, extra) in [
        ("mean", "blend = \"mean\"\n"),
        ("weighted", "blend = \"weighted\"\nweight_rows = 200\n"),
        ("rank", "blend = \"rank\"\n"),
        ("geometric", "blend = \"geometric\"\nnormalize_max = true\ntest_folds = [0, 1, 2, 3]\n"),
    ] {
        let store = Store::memory();
        let fx = fixture(&store, spec(exp, extra)).await;
        let summary = ensemble::run(&store, &imet::jobs::ensemble_job(&fx.spec, None).unwrap()).await.unwrap();
        assert!(!summary.skipped);
        assert!(summary.cv_f2 > 0.5, "{exp}: CV F2 {}", summary.cv_f2);
        for key in [
            keys::ensemble_oof(exp),
            keys::ensemble_test(exp),
            keys::thresholds(exp),
            keys::report(exp),
            keys::submission(exp),
            keys::plot(exp, "f2_vs_threshold"),
            keys::plot(exp, "class_f2_vs_frequency"),
            keys::plot(exp, "labels_per_image"),
            keys::ensemble_success(exp),
        ] {
            assert!(store.exists(&key).await.unwrap(), "{exp}: {key} missing");
        }
        let oof = pq::read_predictions(&store, &keys::ensemble_oof(exp)).await.unwrap();
        assert_eq!(oof.ids, fx.train.ids);
        assert_eq!(oof.meta.model, "ensemble");
        assert_eq!(oof.meta.fold, None);
        assert!(oof.probs.iter().all(|p| (0.0..=1.0).contains(p)));
        let test = pq::read_predictions(&store, &keys::ensemble_test(exp)).await.unwrap();
        assert_eq!(test.ids, fx.test.ids);
        assert_eq!(test.meta.tta, 2);

        let report = json(&store, &keys::report(exp)).await;
        assert_eq!(report["strategies"].as_array().unwrap().len(), 8);
        let chosen = report["chosen"].as_str().unwrap();
        let best = report["strategies"].as_array().unwrap().iter().map(|s| s["cv_f2"].as_f64().unwrap()).fold(0.0, f64::max);
        let chosen_cv = report["strategies"].as_array().unwrap().iter().find(|s| s["strategy"]["name"] == chosen).unwrap()["cv_f2"].as_f64().unwrap();
        assert_eq!(chosen_cv, best, "{exp}: the chosen strategy has the best CV F2");
        assert_eq!(report["per_class"].as_array().unwrap().len(), 1103);
        if exp == "weighted" {
            let w: Vec<f64> = report["blend"]["weights"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{w:?}");
        }
        // The submission re-derives from ensemble_test.parquet and thresholds.json.
        let csv = String::from_utf8(store.get(&keys::submission(exp)).await.unwrap().to_vec()).unwrap();
        let (ids, sets) = submission::parse("submission.csv", &csv, 1103).unwrap();
        assert_eq!(ids, fx.test.ids);
        let th = json(&store, &keys::thresholds(exp)).await;
        let strategy: imet::ensemble::threshold::Strategy = serde_json::from_value(th["chosen"].clone()).unwrap();
        let v = vocab();
        let group = imet::ensemble::threshold::group_index(v.groups());
        let m = imet::ensemble::threshold::Matrix { probs: &test.probs, classes: 1103, group: &group };
        assert_eq!(imet::ensemble::threshold::apply(&strategy, m, None), sets, "{exp}");
        assert!((0..sets.len()).all(|i| !sets.row(i).is_empty()), "at least one label per image");

        // A rerun with the same spec is skipped.
        assert!(ensemble::run(&store, &imet::jobs::ensemble_job(&fx.spec, None).unwrap()).await.unwrap().skipped);
    }
}

/// Rewrites one member file through `edit`.
async fn edit(store: &Store, key: &str, f: impl FnOnce(&mut Predictions)) {
    let mut p = pq::read_predictions(store, key).await.unwrap();
    f(&mut p);
    pq::write_predictions(store, key, &p).await.unwrap();
}

#[tokio::test]
async fn bad_member_files_fail_before_any_output_naming_file_and_first_bad_id() {
    let exp = "bad";
    let oof0 = keys::oof(exp, "beta", Fold(2));
    let test1 = keys::test_predictions(exp, "alpha", Fold(1));
    type Edit = Box<dyn Fn(&mut Predictions)>;
    let cases: Vec<(&str, String, Edit, &str)> = vec![
        ("nan", oof0.clone(), Box::new(|p: &mut Predictions| p.probs[1103 * 3 + 5] = f32::NAN), "not in [0, 1]"),
        ("above one", oof0.clone(), Box::new(|p: &mut Predictions| p.probs[1103 * 4 + 7] = 1.25), "not in [0, 1]"),
        ("duplicate", oof0.clone(), Box::new(|p: &mut Predictions| p.ids[6] = p.ids[5].clone()), "twice"),
        ("missing id", oof0.clone(), Box::new(|p: &mut Predictions| {
            p.ids.truncate(10);
            p.probs.truncate(10 * 1103);
        }), "no prediction"),
        ("vocabulary", oof0.clone(), Box::new(|p: &mut Predictions| p.meta.vocabulary_hash = "0".repeat(64)), "vocabulary hash"),
        ("unknown test id", test1.clone(), Box::new(|p: &mut Predictions| p.ids[3] = id(999_999)), "sample_submission"),
        ("wrong fold", oof0.clone(), Box::new(|p: &mut Predictions| p.meta.fold = Some(Fold(3))), "fold"),
    ];
    for (name, key, change, needle) in cases {
        let store = Store::memory();
        let fx = fixture(&store, spec(exp, "")).await;
        let before = pq::read_predictions(&store, &key).await.unwrap();
        edit(&store, &key, |p| change(p)).await;
        let err = ensemble::run(&store, &imet::jobs::ensemble_job(&fx.spec, None).unwrap()).await.unwrap_err().to_string();
        let bad_id = match name {
            "nan" => before.ids[3].to_string(),
            "above one" => before.ids[4].to_string(),
            "duplicate" => before.ids[5].to_string(),
            "missing id" => before.ids[10].to_string(),
            "unknown test id" => id(999_999).to_string(),
            _ => String::new(),
        };
        let file = if name == "missing id" { "beta".to_string() } else { key.clone() };
        assert!(err.contains(&file) && err.contains(&bad_id) && err.contains(needle), "{name}: {err}");
        // The job's failure record (`_FAILED.json`) is the only thing written.
        let written: Vec<String> = store.list(&keys::ensemble_dir(exp)).await.unwrap().into_iter().map(|o| o.key).collect();
        assert!(written.iter().all(|k| k.ends_with("/_FAILED.json")), "{name}: outputs were written: {written:?}");
    }
    // A missing file is named with the command that makes it.
    let store = Store::memory();
    let fx = fixture(&store, spec(exp, "")).await;
    store.delete(&keys::test_predictions(exp, "beta", Fold(4))).await.unwrap();
    let err = ensemble::run(&store, &imet::jobs::ensemble_job(&fx.spec, None).unwrap()).await.unwrap_err().to_string();
    assert!(err.contains("fold=4/test.parquet") && err.contains("imet predict"), "{err}");
}

const SUBMISSION_CHECK: &str = r#"
import sys, json, re, csv
contract = json.load(open(sys.argv[1]))
rows = list(csv.reader(open(sys.argv[2], newline="")))
sample = [r[0] for r in list(csv.reader(open(sys.argv[3], newline="")))[1:]]
assert rows[0] == contract["header"], rows[0]
id_re = re.compile(contract["columns"]["id"]["pattern"])
attr_re = re.compile(contract["columns"]["attribute_ids"]["pattern"])
ids = []
for r in rows[1:]:
    assert len(r) == len(contract["header"]), r
    assert id_re.fullmatch(r[0]), r[0]
    assert attr_re.fullmatch(r[1]), r[1]
    vals = [int(v) for v in r[1].split(contract["columns"]["attribute_ids"]["separator"]) if v]
    assert vals == sorted(set(vals)), r
    assert all(0 <= v < contract["columns"]["attribute_ids"]["class_count"] for v in vals), r
    ids.append(r[0])
assert contract["row_order"] == "sample_submission"
assert ids == sample
print("ok")
"#;

#[tokio::test]
async fn thresholds_and_submission_follow_their_contracts_in_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}", dir.path().display())).unwrap();
    let fx = fixture(&store, spec("contract", "")).await;
    ensemble::run(&store, &imet::jobs::ensemble_job(&fx.spec, None).unwrap()).await.unwrap();
    common::assert_matches_json_schema("thresholds.schema.json", &dir.path().join(keys::thresholds("contract")));
    let schemas = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let sub = dir.path().join(keys::submission("contract"));
    let sample = dir.path().join(keys::SAMPLE_SUBMISSION);
    let out = common::run_python(
        SUBMISSION_CHECK,
        &[schemas.join("submission.csv.json").to_str().unwrap(), sub.to_str().unwrap(), sample.to_str().unwrap()],
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn eval_scores_a_predictions_file_against_train_csv() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}", dir.path().display())).unwrap();
    let fx = fixture(&store, spec("evaluated", "")).await;
    let pred = dir.path().join(keys::oof("evaluated", "beta", Fold(1)));
    let truth = dir.path().join(keys::TRAIN);
    let labels = dir.path().join(keys::LABELS);
    let v = ensemble::eval(pred.to_str().unwrap(), truth.to_str().unwrap(), Some(labels.to_str().unwrap()), Some(0.3)).await.unwrap();
    assert_eq!(v["images"], N / K as usize);
    // Same number computed directly.
    let p = pq::read_predictions(&store, &keys::oof("evaluated", "beta", Fold(1))).await.unwrap();
    let rows: Vec<Vec<u16>> = p
        .ids
        .iter()
        .map(|i| fx.train.labels[fx.train.ids.iter().position(|t| t == i).unwrap()].iter().map(|a| a.0).collect())
        .collect();
    let truth_sets = LabelSets::from_rows(1103, rows);
    let pred_sets = LabelSets::from_rows(
        1103,
        (0..p.rows()).map(|r| {
            let row = p.row(r);
            let mut s: Vec<u16> = (0..1103u16).filter(|&c| row[c as usize] >= 0.3).collect();
            if s.is_empty() {
                s.push((0..1103u16).max_by(|&a, &b| row[a as usize].total_cmp(&row[b as usize]).then(b.cmp(&a))).unwrap());
            }
            s
        }),
    );
    let want = imet::ensemble::metric::f2_samples(&truth_sets, &pred_sets);
    assert!((v["f2"].as_f64().unwrap() - want).abs() < 1e-12, "{} vs {want}", v["f2"]);
    assert!(v["culture"]["samples"]["f"].is_number() && v["best_global_f2"].as_f64().unwrap() >= want - 0.02);
    let _ = USED;
}

/// R1's "10 folds, averaged over 9": with `test_folds` leaving fold 4 out,
/// the test blend is the mean over folds 0-3 alone; fold 4's test
/// predictions (set to 1.0 everywhere here) leave no trace in it.
#[tokio::test]
async fn the_left_out_fold_is_absent_from_the_test_average() {
    let store = Store::memory();
    let fx = fixture(&store, spec("leftout", "blend = \"mean\"\ntest_folds = [0, 1, 2, 3]\n")).await;
    let exp = &fx.spec.experiment;
    let mut expected = vec![0f32; NT * 1103];
    for model in ["alpha", "beta"] {
        let key = keys::test_predictions(exp, model, Fold(4));
        let mut p = pq::read_predictions(&store, &key).await.unwrap();
        p.probs.iter_mut().for_each(|v| *v = 1.0);
        pq::write_predictions(&store, &key, &p).await.unwrap();
        for f in 0..4 {
            let p = pq::read_predictions(&store, &keys::test_predictions(exp, model, Fold(f))).await.unwrap();
            for (e, v) in expected.iter_mut().zip(&p.probs) {
                *e += v / 8.0;
            }
        }
    }
    ensemble::run(&store, &imet::jobs::ensemble_job(&fx.spec, None).unwrap()).await.unwrap();
    let blend = pq::read_predictions(&store, &keys::ensemble_test(exp)).await.unwrap();
    let worst = blend.probs.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-5, "the test blend differs from the mean over folds 0-3 by {worst}");
    let report = json(&store, &keys::report(exp)).await;
    assert_eq!(report["blend"]["test_folds"], serde_json::json!([0, 1, 2, 3]));
}

/// R4's members on disjoint fold subsets: each OOF row is blended over the
/// members that cover it, thresholds are fitted on the covered rows only,
/// and the report states the coverage.
#[tokio::test]
async fn members_on_fold_subsets_blend_each_row_over_the_members_that_cover_it() {
    let text = format!(
        "experiment = \"subsets\"\n[storage]\nroot = \"memory://\"\n[folds]\nk = {K}\n\
         [[models]]\nname = \"alpha\"\nfolds = [0, 1]\narch = \"resnet18\"\nsize = 64\n\
         train = {{ batch_size = 8, phases = [{{ epochs = 1, optimizer = {{ kind = \"sgd\", lr = 0.1 }} }}] }}\n\
         [[models]]\nname = \"beta\"\nfolds = [\"1-2\"]\narch = \"resnet18\"\nsize = 64\n\
         train = {{ batch_size = 8, phases = [{{ epochs = 1, optimizer = {{ kind = \"sgd\", lr = 0.1 }} }}] }}\n\
         [ensemble]\nmembers = [\"alpha\", \"beta\"]\nblend = \"mean\"\n"
    );
    let spec = JobSpec::parse("subsets.toml", &text).unwrap();
    let store = Store::memory();
    let fx = fixture(&store, spec).await;
    let exp = &fx.spec.experiment;
    // Folds 3 and 4 are nobody's: their files must not be read.
    for model in ["alpha", "beta"] {
        for f in [3u8, 4] {
            store.delete(&keys::oof(exp, model, Fold(f))).await.unwrap();
            store.delete(&keys::test_predictions(exp, model, Fold(f))).await.unwrap();
        }
    }
    store.delete(&keys::oof(exp, "alpha", Fold(2))).await.unwrap();
    store.delete(&keys::oof(exp, "beta", Fold(0))).await.unwrap();
    let job = imet::jobs::ensemble_job(&fx.spec, None).unwrap();
    assert_eq!(job.folds_of("alpha"), [0, 1]);
    ensemble::run(&store, &job).await.unwrap();
    let blend = pq::read_predictions(&store, &keys::ensemble_oof(exp)).await.unwrap();
    let covered: Vec<usize> = (0..N).filter(|i| i % K as usize <= 2).collect();
    assert_eq!(blend.ids, covered.iter().map(|&i| fx.train.ids[i].clone()).collect::<Vec<_>>(), "only covered rows, in train.csv order");
    // Fold 1 rows average both members; fold 0 rows are alpha's alone.
    let member = |m: &'static str, f: u8| {
        let store = store.clone();
        async move { pq::read_predictions(&store, &keys::oof(exp, m, Fold(f))).await.unwrap() }
    };
    let (a0, a1, b1) = (member("alpha", 0).await, member("alpha", 1).await, member("beta", 1).await);
    let row_of = |p: &Predictions, id: &ImageId| p.ids.iter().position(|x| x == id).unwrap();
    let r0 = blend.ids.iter().position(|x| x == &a0.ids[0]).unwrap();
    assert_eq!(blend.row(r0), a0.row(0));
    let id1 = &a1.ids[0];
    let r1 = blend.ids.iter().position(|x| x == id1).unwrap();
    for c in 0..1103 {
        let want = (a1.row(row_of(&a1, id1))[c] + b1.row(row_of(&b1, id1))[c]) / 2.0;
        assert!((blend.row(r1)[c] - want).abs() < 1e-6);
    }
    let report = json(&store, &keys::report(exp)).await;
    assert_eq!((report["train_images"].as_u64(), report["covered_images"].as_u64()), (Some(N as u64), Some(covered.len() as u64)));
}
