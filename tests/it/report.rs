//! `imet report` against a local store holding synthetic histories: one
//! model with two of three folds trained (one committed, one still
//! training), one model not trained at all, and an ensemble plot. The
//! report draws a PNG for the trained model only (it decodes, at the
//! documented size), lists the missing folds and the ensemble plot, and
//! its table and JSON carry the histories' values.

use crate::common;

use imet::ids::Fold;
use imet::storage::parquet::{write_history, EpochRecord};
use imet::storage::{keys, Store};
use std::path::Path;
use std::process::Command;

const EXP: &str = "rep";

fn spec_text(root: &Path) -> String {
    let model = |name: &str| {
        format!(
            r#"[[models]]
name = "{name}"
arch = "resnet18"
size = 64
[models.train]
batch_size = 32
phases = [{{ name = "all", epochs = 3, optimizer = {{ kind = "adamw", lr = 2e-3 }} }}]
"#
        )
    };
    format!("experiment = \"{EXP}\"\n[storage]\nroot = \"{}\"\n[folds]\nk = 3\n{}{}", root.display(), model("r18"), model("r34"))
}

/// Fold `fold`'s history: F2 peaks at epoch 2 for fold 0, at epoch 3 for fold 1.
fn history(fold: u8, epochs: u32) -> Vec<EpochRecord> {
    (1..=epochs)
        .map(|e| {
            let e64 = f64::from(e);
            let f2 = if fold == 0 { [0.30, 0.52, 0.48][e as usize - 1] } else { 0.2 + 0.1 * e64 };
            EpochRecord {
                epoch: e,
                phase: "all".into(),
                train_loss: 0.08 / e64,
                valid_loss: 0.06 / e64 + 0.01 * f64::from(fold),
                valid_f2: f2,
                valid_threshold: 0.2,
                valid_f2_culture: 0.3,
                valid_f2_tag: 0.4,
                lr: 1e-3,
                train_images_per_sec: 100.0 + f64::from(fold) * 10.0 + e64,
                seconds: 30.0,
            }
        })
        .collect()
}

fn imet(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(common::imet_bin()).current_dir(dir).args(args).env_remove("IMET_ROOT").output().unwrap();
    assert!(out.status.success(), "imet {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_report_draws_trained_models_lists_missing_folds_and_ensemble_plots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::write(dir.path().join("spec.toml"), spec_text(&root)).unwrap();
    let store = Store::open(&format!("file://{}", root.display())).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for fold in [0u8, 1] {
            let key = keys::history(EXP, "r18", Fold(fold));
            write_history(&store, &key, &history(fold, 3), EXP, "r18", Fold(fold), "h").await.unwrap();
        }
        store.put(&keys::trained(EXP, "r18", Fold(0)), "{}").await.unwrap();
        store.put(&keys::plot(EXP, "f2_vs_threshold"), vec![0u8; 4]).await.unwrap();
    });

    let out = dir.path().join("copies");
    let json: serde_json::Value = serde_json::from_str(&imet(dir.path(), &["report", "--spec", "spec.toml", "--json", "--out", "copies"])).unwrap();
    let r18 = &json["models"][0];
    assert_eq!(r18["model"], "r18");
    assert_eq!(r18["folds"][0]["state"], "trained");
    assert_eq!(r18["folds"][1]["state"], "training");
    assert_eq!(r18["folds"][2]["state"], "missing");
    assert_eq!((r18["folds"][0]["best_epoch"].as_u64(), r18["folds"][0]["best_f2"].as_f64()), (Some(2), Some(0.52)));
    assert_eq!((r18["folds"][1]["best_epoch"].as_u64(), r18["folds"][1]["epochs"].as_u64()), (Some(3), Some(3)));
    assert!((r18["mean_best_f2"].as_f64().unwrap() - (0.52 + 0.5) / 2.0).abs() < 1e-12);
    assert_eq!(r18["folds"][1]["last_valid_loss"].as_f64(), Some(0.06 / 3.0 + 0.01));
    assert_eq!(r18["folds"][1]["images_per_sec"].as_f64(), Some(112.0));
    assert_eq!(r18["folds"][0]["history"].as_array().unwrap().len(), 3);
    assert!(json["models"][1]["plot"].is_null(), "no PNG for a model without history");
    let missing: Vec<&str> = json["missing"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(missing, ["r18 fold 2", "r34 fold 0", "r34 fold 1", "r34 fold 2"]);
    let plots = json["ensemble_plots"].as_array().unwrap();
    assert_eq!(plots.len(), 1);
    assert_eq!(plots[0].as_str().unwrap(), root.join(keys::plot(EXP, "f2_vs_threshold")).display().to_string());

    // The PNG: in the store and in --out, the same bytes, decodable, at the documented size.
    let stored = std::fs::read(root.join(keys::curves_plot(EXP, "r18"))).unwrap();
    assert_eq!(stored, std::fs::read(out.join("curves-r18.png")).unwrap());
    assert!(!root.join(keys::curves_plot(EXP, "r34")).exists());
    let decoded = image::load_from_memory_with_format(&stored, image::ImageFormat::Png).unwrap();
    assert_eq!((decoded.width(), decoded.height()), imet::report::plot::SIZE);
    // Curves are drawn: many pixels in the first two fold colours.
    let rgb = decoded.to_rgb8();
    let count = |c: [u8; 3]| rgb.pixels().filter(|p| p.0 == c).count();
    assert!(count([31, 119, 180]) > 500 && count([255, 127, 14]) > 500, "fold lines missing");
    let stored_json: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join(keys::curves_report(EXP))).unwrap()).unwrap();
    assert_eq!(stored_json["models"], json["models"]);

    // The table, and the same bytes on a second run (deterministic drawing).
    let table = imet(dir.path(), &["report", "--spec", "spec.toml"]);
    let row = |model: &str, fold: &str| {
        table.lines().find(|l| l.split_whitespace().take(2).eq([model, fold])).unwrap_or_else(|| panic!("no row {model} {fold}:\n{table}")).to_string()
    };
    let words = |l: String| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(words(row("r18", "0")), ["r18", "0", "trained", "3", "2", "0.5200", "0.0267", "0.0200", "102.0", "90"]);
    assert_eq!(words(row("r18", "1"))[..6], ["r18", "1", "training", "3", "3", "0.5000"]);
    assert_eq!(words(row("r34", "2")), ["r34", "2", "missing", "0", "-", "-", "-", "-", "-", "-"]);
    assert!(table.contains("r18: mean best F2 0.5100 over 2/3 fold(s)"), "{table}");
    assert!(table.contains("r34 fold 2") && table.contains(&keys::plot(EXP, "f2_vs_threshold")), "{table}");
    assert_eq!(std::fs::read(root.join(keys::curves_plot(EXP, "r18"))).unwrap(), stored);
}

#[test]
fn a_history_that_does_not_read_is_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::write(dir.path().join("spec.toml"), spec_text(&root)).unwrap();
    let bad = root.join(keys::history(EXP, "r34", Fold(1)));
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, b"not parquet").unwrap();
    let table = imet(dir.path(), &["report", "--spec", "spec.toml"]);
    assert!(table.lines().any(|l| l.split_whitespace().take(3).eq(["r34", "1", "unreadable"])), "{table}");
    assert!(table.contains(&keys::history(EXP, "r34", Fold(1))), "the error names the file:\n{table}");
}
