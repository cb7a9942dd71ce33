//! Ensemble step 4: writes the blends, `thresholds.json`, the plots, the
//! submission and `report.json` under `runs/{exp}/ensemble/`, returning
//! every output for the manifest.

use super::pass::Blended;
use super::inputs::Inputs;
use super::report::{self, BlendInfo, LabelCounts, ThresholdsFile};
use super::{curve_thresholds, peak_rss_mib, plots, submission, threshold, EnsembleJob, Fitted};
use crate::error::Result;
use crate::ids::Group;
use crate::storage::parquet::{self as pq, PredictionKind, PredictionMeta, Predictions};
use crate::storage::{keys, OutputEntry, Store};
use std::collections::BTreeMap;
use std::time::Instant;
use tracing::info;

/// Writes every output of the ensemble; `seconds` and `t0` time the job.
///
/// # Errors
/// Storage errors; plot rendering errors.
pub async fn write(
    store: &Store,
    job: &EnsembleJob,
    inputs: &Inputs,
    blended: Blended,
    fitted: &Fitted,
    mut seconds: BTreeMap<String, f64>,
    t0: Instant,
) -> Result<Vec<OutputEntry>> {
    let t3 = Instant::now();
    let cfg = &job.config;
    let exp = job.experiment.as_str();
    let scope = job.scope();
    let (vocab, train, test) = (&inputs.vocab, &inputs.train, &inputs.test);
    let c = vocab.len();
    let vh = vocab.hash();
    let blend_info = BlendInfo {
        kind: cfg.blend,
        normalize_max: cfg.normalize_max,
        members: cfg.members.clone(),
        weights: blended.weights.clone(),
        test_folds: inputs.union_test_folds(),
    };
    let mut outputs = Vec::new();
    let (scores, per_class) = report::chosen_scores(&fitted.truth, &fitted.pred_oof, vocab);
    // F2 curves per group, the other group at the chosen (or fitted group) threshold.
    let [tc, tt] = curve_thresholds(&fitted.chosen.strategy, &fitted.evaluated, vocab.groups());
    let curves = vec![
        ("culture".to_string(), threshold::group_curve(&fitted.tables, 0, tt)),
        ("tag".to_string(), threshold::group_curve(&fitted.tables, 1, tc)),
    ];
    let meta = |kind| PredictionMeta {
        experiment: exp.to_string(),
        model: "ensemble".into(),
        fold: None,
        kind,
        tta: if kind == PredictionKind::Test { blended.tta } else { 1 },
        spec_hash: job.spec_hash.clone(),
        class_count: c,
        vocabulary_hash: vh.clone(),
    };
    // Test first: the OOF write then holds the OOF matrix and its copy only.
    let test_preds = Predictions { ids: test.ids.clone(), probs: blended.test, meta: meta(PredictionKind::Test) };
    let test_entry = pq::write_predictions(store, &keys::ensemble_test(scope), &test_preds).await?;
    drop(test_preds);
    let oof_ids = match &blended.rows {
        None => train.ids.clone(),
        Some(rows) => rows.iter().map(|&r| train.ids[r as usize].clone()).collect(),
    };
    let oof_preds = Predictions { ids: oof_ids, probs: blended.oof, meta: meta(PredictionKind::Oof) };
    outputs.push(pq::write_predictions(store, &keys::ensemble_oof(scope), &oof_preds).await?);
    outputs.push(test_entry);
    drop(oof_preds);
    info!(peak_rss_mib = peak_rss_mib(), "blends written");

    let thresholds_doc = ThresholdsFile {
        version: report::THRESHOLDS_VERSION,
        experiment: exp.to_string(),
        spec_hash: job.spec_hash.clone(),
        class_count: c,
        vocabulary_hash: vh.clone(),
        blend: blend_info.clone(),
        chosen: fitted.chosen.strategy.clone(),
        cv_f2: fitted.chosen.cv_f2,
        strategies: fitted.evaluated.iter().map(|e| e.strategy.clone()).collect(),
    };
    outputs.push(put(store, &keys::thresholds(scope), serde_json::to_vec_pretty(&thresholds_doc)?).await?);

    let counts = train.labels.iter().fold(vec![0u32; c], |mut acc, r| {
        r.iter().for_each(|a| acc[a.0 as usize] += 1);
        acc
    });
    let points: Vec<(u32, f64, bool)> = per_class.iter().map(|p| (counts[p.id as usize], p.f2, p.group == Group::Culture)).collect();
    let label_counts = LabelCounts {
        true_mean: fitted.truth.mean_count(),
        oof_predicted_mean: fitted.pred_oof.mean_count(),
        test_predicted_mean: fitted.pred_test.mean_count(),
        true_hist: report::histogram(&fitted.truth),
        oof_predicted_hist: report::histogram(&fitted.pred_oof),
        test_predicted_hist: report::histogram(&fitted.pred_test),
    };
    let plots = [
        ("f2_vs_threshold", plots::f2_vs_threshold(&curves)?),
        ("class_f2_vs_frequency", plots::class_f2_vs_frequency(&points)?),
        (
            "labels_per_image",
            plots::labels_per_image(&[
                ("true (OOF)".to_string(), label_counts.true_hist.clone()),
                ("predicted (OOF)".to_string(), label_counts.oof_predicted_hist.clone()),
                ("predicted (test)".to_string(), label_counts.test_predicted_hist.clone()),
            ])?,
        ),
    ];
    for (name, png) in plots {
        outputs.push(put(store, &keys::plot(scope, name), png).await?);
    }
    let csv = submission::to_csv(&test.ids, &fitted.pred_test);
    outputs.push(put(store, &keys::submission(scope), csv.into_bytes()).await?);
    seconds.insert("outputs".to_string(), t3.elapsed().as_secs_f64());
    seconds.insert("total".to_string(), t0.elapsed().as_secs_f64());

    let rep = report::Report {
        experiment: exp.to_string(),
        spec_hash: job.spec_hash.clone(),
        train_images: train.len(),
        covered_images: fitted.truth.len(),
        test_images: test.ids.len(),
        members: blended.members,
        blend: blend_info,
        blend_oof_f2: blended.blend_oof_f2,
        strategies: fitted.evaluated.clone(),
        chosen: fitted.chosen.strategy.name.clone(),
        scores,
        label_counts,
        per_class,
        seconds,
        weights_f2: blended.weights_f2,
        peak_rss_mib: peak_rss_mib(),
    };
    outputs.push(put(store, &keys::report(scope), serde_json::to_vec_pretty(&rep)?).await?);
    Ok(outputs)
}

async fn put(store: &Store, key: &str, bytes: Vec<u8>) -> Result<OutputEntry> {
    let entry = OutputEntry::of_bytes(key, &bytes);
    store.put(key, bytes).await?;
    Ok(entry)
}
