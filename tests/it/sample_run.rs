//! README's main command end to end: `imet run --spec jobs/sample.toml`
//! from an empty folder generates the synthetic sample, assigns folds,
//! trains and predicts every fold model on 2 CPU cores, blends them and
//! writes `submission.csv`. It is also the proof that the models learn: the
//! out-of-fold F2 of every member and of the blend must clearly beat the
//! best label-prior baseline (the same k most frequent attributes for every
//! image, best k), and the test states both numbers.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// How far above the baseline the blend's OOF F2 must be.
const MARGIN: f64 = 0.08;

/// Best mean per-image F2 of predicting the `k` most frequent attributes of
/// `train.csv` for every image.
fn label_prior_baseline(train_csv: &Path) -> f64 {
    let text = std::fs::read_to_string(train_csv).unwrap();
    let rows: Vec<Vec<u32>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().split_whitespace().map(|a| a.parse().unwrap()).collect())
        .collect();
    let mut freq: HashMap<u32, usize> = HashMap::new();
    for r in &rows {
        for a in r {
            *freq.entry(*a).or_default() += 1;
        }
    }
    let mut by_freq: Vec<(u32, usize)> = freq.into_iter().collect();
    by_freq.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    (1..=by_freq.len().min(30))
        .map(|k| {
            let top: Vec<u32> = by_freq[..k].iter().map(|x| x.0).collect();
            rows.iter()
                .map(|r| {
                    let tp = r.iter().filter(|a| top.contains(a)).count() as f64;
                    let (p, rec) = (tp / k as f64, tp / r.len() as f64);
                    if tp == 0.0 {
                        0.0
                    } else {
                        5.0 * p * rec / (4.0 * p + rec)
                    }
                })
                .sum::<f64>()
                / rows.len() as f64
        })
        .fold(0.0, f64::max)
}

#[test]
fn the_main_command_runs_the_sample_to_a_submission_and_the_models_learn() {
    let _heavy = common::heavy_run();
    let dir = tempfile::Builder::new().prefix("imet-sample-run").tempdir().unwrap();
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/sample.toml");
    let out = Command::new(common::imet_bin())
        .current_dir(dir.path())
        .args(["run", "--spec", spec.to_str().unwrap(), "--parallel", "2"])
        // Only the committed weights stay (about 0.7 GB instead of 1.8 GB);
        // the policy is not part of a job's identity.
        .args(["--set", "models[r18].train.checkpoints.after_commit=none", "--set", "models[r34].train.checkpoints.after_commit=none"])
        .env("RUST_LOG", "info")
        .env("IMET_DEVICE", "cpu")
        .env_remove("IMET_ROOT")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let why = common::run_diagnosis(dir.path(), &dir.path().join("out/sample/logs"));
        panic!("imet run failed:\n{stdout}\n{stderr}\n{why}");
    }
    let root = dir.path().join("out/sample");
    let exp = root.join("runs/sample");
    let submission = std::fs::read_to_string(exp.join("ensemble/submission.csv")).unwrap();
    assert!(submission.starts_with("id,attribute_ids\n"), "{}", &submission[..submission.len().min(200)]);
    assert_eq!(submission.lines().count(), 1 + 200, "one row per test image");

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(exp.join("ensemble/report.json")).unwrap()).unwrap();
    let blend = report["blend_oof_f2"].as_f64().unwrap();
    let baseline = label_prior_baseline(&root.join("data/train.csv"));
    let members: Vec<(String, f64)> =
        report["members"].as_array().unwrap().iter().map(|m| (m["model"].as_str().unwrap().to_string(), m["oof_f2"].as_f64().unwrap())).collect();
    eprintln!("label-prior baseline F2 {baseline:.4}; blend OOF F2 {blend:.4}; members {members:?}");
    assert!(blend >= baseline + MARGIN, "blend OOF F2 {blend:.4} is not {MARGIN} above the label-prior baseline {baseline:.4}");
    for (name, f2) in &members {
        assert!(*f2 > baseline, "{name}: OOF F2 {f2:.4} does not beat the label-prior baseline {baseline:.4}");
    }

    // A second run skips every committed job.
    let again = Command::new(common::imet_bin())
        .current_dir(dir.path())
        .args(["run", "--spec", spec.to_str().unwrap()])
        .env("IMET_DEVICE", "cpu")
        .env_remove("IMET_ROOT")
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(text.contains("skipped") && !text.contains(" done "), "{text}");
}
