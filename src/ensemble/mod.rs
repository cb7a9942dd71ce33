//! Ensemble stage (`imet ensemble --spec S`): reads every member's
//! `oof.parquet` and `test.parquet` (models x folds), `folds.parquet` and
//! the competition CSVs; validates all of them, blends the members, fits
//! and cross-validates threshold strategies on OOF F2, and writes under
//! `runs/{exp}/ensemble/`: `ensemble_oof.parquet`, `ensemble_test.parquet`,
//! `thresholds.json`, `report.json`, `plots/*.png`, `submission.csv` and,
//! last, `_SUCCESS.json`. `imet eval` scores any predictions file.
//!
//! Memory: members are streamed into one accumulator per split, so the
//! peak is about two OOF matrices plus two test matrices, whatever the
//! number of members (see BENCHMARKS.md, ensemble section).

pub mod blend;
pub mod members;
pub use crate::data::metric;
pub mod plots;
pub mod report;
pub mod submission;
pub mod threshold;

pub use blend::BlendKind;

use crate::data::{self, Fold, Group, ImageId};
use crate::error::{Error, Result};
use crate::spec::{EnsembleSection, JobSpec};
use crate::storage::manifest::{JobId, Manifest, OutputEntry};
use crate::storage::parquet::{self as pq, PredictionKind, PredictionMeta, Predictions};
use crate::storage::{keys, Store};
use crate::telemetry::Progress;
use blend::{Accumulator, Subsample};
use members::{check_covered, Expected, IdIndex};
use metric::LabelSets;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;
use threshold::{FitConfig, Matrix, Range};
use tracing::{info, info_span, Instrument};

/// What an ensemble run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    /// True when a committed manifest for this spec was found.
    pub skipped: bool,
    pub chosen: String,
    pub cv_f2: f64,
    pub in_sample_f2: f64,
    pub outputs: Vec<OutputEntry>,
}

/// Runs the ensemble of `spec` against its store.
///
/// # Errors
/// See [`run_in`].
pub async fn run(spec: &JobSpec) -> Result<Summary> {
    let store = spec.open_store()?;
    run_in(&store, spec).await
}

/// The thresholding settings of an `[ensemble]` section.
pub fn fit_config(e: &EnsembleSection) -> FitConfig {
    let range = |[lo, hi]: [u32; 2]| Range { min: lo, max: if hi == 0 { None } else { Some(hi) } };
    FitConfig {
        bins: e.threshold_bins,
        total: range(e.labels),
        culture: range(e.culture_labels),
        tag: range(e.tag_labels),
        class_shrink: e.class_shrink,
        class_rounds: 3,
        ratio_default: e.ratio,
        ratio_max_labels: e.ratio_max_labels,
        target_label_count: e.target_label_count,
        kinds: e.strategies.clone(),
    }
}

/// Each training image's fold, in `train.csv` order.
async fn folds_of(store: &Store, spec: &JobSpec, train: &[ImageId]) -> Result<Vec<u8>> {
    let key = keys::folds(&spec.experiment);
    let (ids, folds, meta) = pq::read_folds(store, &key).await?;
    if meta.k != spec.folds.k {
        return Err(Error::Member { key, message: format!("has k = {} folds but the spec says {}; run `imet folds` again", meta.k, spec.folds.k) });
    }
    let by_id: HashMap<&str, u8> = ids.iter().zip(&folds).map(|(i, f)| (i.as_str(), f.0)).collect();
    if by_id.len() != train.len() {
        return Err(Error::Member { key, message: format!("covers {} images but data/train.csv has {}", by_id.len(), train.len()) });
    }
    train
        .iter()
        .map(|id| by_id.get(id.as_str()).copied().ok_or_else(|| Error::Member { key: key.clone(), message: format!("training image `{id}` has no fold") }))
        .collect()
}

/// Streams one member's files of `kind` for `folds` through
/// [`members::stream`], calling `sink(row, probs)` for every row, and checks
/// coverage (OOF: every training image exactly once over the folds; test:
/// every test image in each file). Returns the largest TTA seen.
#[allow(clippy::too_many_arguments)]
async fn stream_member(
    store: &Store,
    exp: &str,
    model: &str,
    kind: PredictionKind,
    folds: &[u8],
    index: &IdIndex<'_>,
    classes: usize,
    vocabulary_hash: &str,
    progress: &Progress,
    mut sink: impl FnMut(usize, &[f32]),
) -> Result<u32> {
    let mut tta = 1;
    let mut seen = vec![false; index.ids.len()];
    for &f in folds {
        let key = match kind {
            PredictionKind::Oof => keys::oof(exp, model, Fold(f)),
            PredictionKind::Test => keys::test_predictions(exp, model, Fold(f)),
        };
        let bytes = store.get(&key).await?;
        let expected = Expected { kind, model, fold: Fold(f), classes, vocabulary_hash };
        if kind == PredictionKind::Test {
            seen.iter_mut().for_each(|s| *s = false);
        }
        tta = tta.max(members::stream(&key, bytes, &expected, index, &mut seen, &mut sink)?);
        if kind == PredictionKind::Test {
            check_covered(&key, &seen, index.ids, "every test file must cover every id of data/sample_submission.csv")?;
        }
        progress.inc(1);
    }
    if kind == PredictionKind::Oof {
        check_covered(
            &format!("OOF files of model `{model}`"),
            &seen,
            index.ids,
            "each training image needs exactly one OOF prediction per model; predict the missing fold",
        )?;
    }
    Ok(tta)
}

/// Peak resident memory of this process so far, in MiB (Linux; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Runs the ensemble of `spec` against `store` (tests pass an in-memory one).
///
/// # Errors
/// [`Error::Usage`] without an `[ensemble]` section; [`Error::Member`]
/// naming the file and first bad id for any invalid member file (nothing is
/// written then); storage and input errors.
pub async fn run_in(store: &Store, spec: &JobSpec) -> Result<Summary> {
    let span = info_span!("job", kind = "ensemble", experiment = %spec.experiment);
    run_inner(store, spec).instrument(span).await
}

/// The spec hash the ensemble's manifest is committed with: the whole
/// spec but its storage (the ensemble depends on every member).
pub fn spec_hash(spec: &JobSpec) -> String {
    spec.hash()
}

async fn run_inner(store: &Store, spec: &JobSpec) -> Result<Summary> {
    let cfg = spec
        .ensemble
        .as_ref()
        .ok_or_else(|| Error::Usage(format!("spec of experiment `{}` has no [ensemble] section; add `[ensemble] members = [...]`", spec.experiment)))?;
    let exp = spec.experiment.as_str();
    let spec_hash = spec_hash(spec);
    let success = keys::ensemble_success(exp);
    if let Some(m) = Manifest::committed(store, &success, &spec_hash).await? {
        info!(key = %success, "ensemble already committed for this spec; skipping");
        return Ok(Summary { skipped: true, chosen: String::new(), cv_f2: f64::NAN, in_sample_f2: f64::NAN, outputs: m.outputs });
    }
    let mut seconds = BTreeMap::new();
    let t0 = Instant::now();
    let inputs = data::load_inputs(store).await?;
    let (vocab, train, test) = (&inputs.vocab, &inputs.train, &inputs.test);
    let (n, c, nt) = (train.len(), vocab.len(), test.ids.len());
    let vh = vocab.hash();
    let fold_of = folds_of(store, spec, &train.ids).await?;
    let k = spec.folds.k;
    let all_folds: Vec<u8> = (0..k).collect();
    let test_folds = cfg.test_folds.clone().unwrap_or_else(|| all_folds.clone());
    // Every file must exist before any work.
    for m in &cfg.members {
        for &f in &all_folds {
            let mut want = vec![keys::oof(exp, m, Fold(f))];
            if test_folds.contains(&f) {
                want.push(keys::test_predictions(exp, m, Fold(f)));
            }
            for key in want {
                if !store.exists(&key).await? {
                    return Err(Error::Member {
                        key,
                        message: format!("missing; run `imet predict --model {m} --fold {f}` (or `imet run`) before the ensemble"),
                    });
                }
            }
        }
    }
    let truth = LabelSets::from_rows(c, train.labels.iter().map(|r| r.iter().map(|a| a.0).collect::<Vec<u16>>()));
    seconds.insert("inputs".to_string(), t0.elapsed().as_secs_f64());

    // Pass 1: validate every file, blending as we go (except weighted
    // blends). Element-wise blends add each streamed row straight into the
    // accumulator; rank blends (and geometric test means) need the member's
    // whole matrix first.
    let t1 = Instant::now();
    let train_index = IdIndex::new(&train.ids, Some(&fold_of));
    let test_index = IdIndex::new(&test.ids, None);
    let kind = cfg.blend;
    let weighted = kind == BlendKind::Weighted;
    let nf = test_folds.len() as f32;
    let files = (cfg.members.len() * (all_folds.len() + test_folds.len())) as u64;
    let progress = Progress::new("member files", if weighted { 2 * files } else { files });
    let mut oof_acc = Accumulator::new(kind, if weighted { 0 } else { n }, c);
    let mut sub = Subsample::new(n, cfg.weight_rows, c);
    let mut tta = 1;
    let mut whole = if kind == BlendKind::Rank { vec![0f32; n * c] } else { Vec::new() };
    for (mi, m) in cfg.members.iter().enumerate() {
        sub.add_member();
        stream_member(store, exp, m, PredictionKind::Oof, &all_folds, &train_index, c, &vh, &progress, |r, p| {
            sub.offer(mi, r, p);
            match kind {
                BlendKind::Rank => whole[r * c..(r + 1) * c].copy_from_slice(p),
                BlendKind::Weighted => {}
                BlendKind::Mean | BlendKind::Geometric => oof_acc.add_row(r, p, 1.0),
            }
        })
        .await?;
        match kind {
            BlendKind::Rank => oof_acc.add(&mut whole, 1.0),
            BlendKind::Weighted => {}
            BlendKind::Mean | BlendKind::Geometric => oof_acc.add_weight(1.0),
        }
        info!(model = %m, peak_rss_mib = peak_rss_mib(), "member OOF read");
    }
    drop(whole);
    let truth_sub = truth.select(&sub.rows);
    let mut member_reports: Vec<report::MemberReport> = cfg
        .members
        .iter()
        .enumerate()
        .map(|(mi, m)| {
            let (threshold, oof_f2) = blend::best_global_f2(&sub.dequantised(mi), c, &truth_sub, cfg.threshold_bins);
            report::MemberReport { model: m.clone(), weight: 1.0 / cfg.members.len() as f32, oof_f2, threshold }
        })
        .collect();
    let mut test_acc = Accumulator::new(kind, if weighted { 0 } else { nt }, c);
    {
        let whole_needed = matches!(kind, BlendKind::Rank | BlendKind::Geometric);
        let mut model = if whole_needed { vec![0f32; nt * c] } else { Vec::new() };
        for m in &cfg.members {
            model.iter_mut().for_each(|v| *v = 0.0);
            let t = stream_member(store, exp, m, PredictionKind::Test, &test_folds, &test_index, c, &vh, &progress, |r, p| match kind {
                BlendKind::Mean => test_acc.add_row(r, p, 1.0 / nf),
                BlendKind::Weighted => {}
                BlendKind::Rank | BlendKind::Geometric => {
                    model[r * c..(r + 1) * c].iter_mut().zip(p).for_each(|(a, b)| *a += b / nf)
                }
            })
            .await?;
            tta = tta.max(t);
            match kind {
                BlendKind::Mean => test_acc.add_weight(1.0),
                BlendKind::Weighted => {}
                BlendKind::Rank | BlendKind::Geometric => test_acc.add(&mut model, 1.0),
            }
        }
    }
    info!(peak_rss_mib = peak_rss_mib(), "every member file valid");
    seconds.insert("read_validate_blend".to_string(), t1.elapsed().as_secs_f64());

    // Weighted blends: fit weights on the subsample, then stream again.
    let mut weights = vec![1.0 / cfg.members.len() as f32; cfg.members.len()];
    let mut weights_f2 = None;
    if weighted {
        let t = Instant::now();
        let (w, f2) = blend::fit_weights(&sub, &truth, cfg.threshold_bins);
        info!(?w, f2, rows = sub.rows.len(), "blend weights fitted");
        weights = w;
        weights_f2 = Some(f2);
        seconds.insert("fit_weights".to_string(), t.elapsed().as_secs_f64());
        let t = Instant::now();
        oof_acc = Accumulator::new(BlendKind::Weighted, n, c);
        test_acc = Accumulator::new(BlendKind::Weighted, nt, c);
        for (m, &w) in cfg.members.iter().zip(&weights) {
            stream_member(store, exp, m, PredictionKind::Oof, &all_folds, &train_index, c, &vh, &progress, |r, p| oof_acc.add_row(r, p, w)).await?;
            oof_acc.add_weight(w);
            stream_member(store, exp, m, PredictionKind::Test, &test_folds, &test_index, c, &vh, &progress, |r, p| test_acc.add_row(r, p, w / nf))
                .await?;
            test_acc.add_weight(w);
        }
        seconds.insert("weighted_blend".to_string(), t.elapsed().as_secs_f64());
    }
    drop(sub);
    for (r, w) in member_reports.iter_mut().zip(&weights) {
        r.weight = *w;
    }
    let oof = oof_acc.finish(cfg.normalize_max);
    let test_probs = test_acc.finish(cfg.normalize_max);
    let (_, blend_oof_f2) = blend::best_global_f2(&oof, c, &truth, cfg.threshold_bins);

    // Thresholds.
    let t2 = Instant::now();
    let group = threshold::group_index(vocab.groups());
    let oof_m = Matrix { probs: &oof, classes: c, group: &group };
    let test_m = Matrix { probs: &test_probs, classes: c, group: &group };
    let fit_cfg = fit_config(cfg);
    let tables = threshold::Tables::build(oof_m, &truth, fit_cfg.bins);
    let evaluated = threshold::fit_all_with(oof_m, &truth, &fold_of, &fit_cfg, &tables);
    let chosen = threshold::pick(&evaluated).cloned().ok_or_else(|| Error::Ensemble("no threshold strategy was fitted".into()))?;
    info!(strategy = %chosen.strategy.name, cv_f2 = chosen.cv_f2, in_sample_f2 = chosen.in_sample_f2, "strategy chosen");
    let pred_oof = threshold::apply(&chosen.strategy, oof_m, None);
    let pred_test = threshold::apply(&chosen.strategy, test_m, None);
    info!(peak_rss_mib = peak_rss_mib(), "thresholds fitted");
    seconds.insert("thresholds".to_string(), t2.elapsed().as_secs_f64());

    // Outputs.
    let t3 = Instant::now();
    let blend_info = report::BlendInfo {
        kind: cfg.blend,
        normalize_max: cfg.normalize_max,
        members: cfg.members.clone(),
        weights: weights.clone(),
        test_folds: test_folds.clone(),
    };
    let mut outputs = Vec::new();
    let (scores, per_class) = report::chosen_scores(&truth, &pred_oof, vocab);
    // F2 curves per group, the other group at the chosen (or fitted group) threshold.
    let [tc, tt] = report::group_thresholds(&chosen.strategy, vocab.groups())
        .or_else(|| {
            evaluated.iter().find_map(|e| match e.strategy.rule {
                threshold::Rule::Group { culture, tag } => Some([culture, tag]),
                _ => None,
            })
        })
        .unwrap_or([0.2, 0.2]);
    let curves = vec![
        ("culture".to_string(), threshold::group_curve(&tables, 0, tt)),
        ("tag".to_string(), threshold::group_curve(&tables, 1, tc)),
    ];
    drop(tables);
    let meta = |kind| PredictionMeta {
        experiment: exp.to_string(),
        model: "ensemble".into(),
        fold: None,
        kind,
        tta: if kind == PredictionKind::Test { tta } else { 1 },
        spec_hash: spec_hash.clone(),
        class_count: c,
        vocabulary_hash: vh.clone(),
    };
    // Test first: the OOF write then holds the OOF matrix and its copy only.
    let test_preds = Predictions { ids: test.ids.clone(), probs: test_probs, meta: meta(PredictionKind::Test) };
    let test_entry = pq::write_predictions(store, &keys::ensemble_test(exp), &test_preds).await?;
    drop(test_preds);
    let oof_preds = Predictions { ids: train.ids.clone(), probs: oof, meta: meta(PredictionKind::Oof) };
    outputs.push(pq::write_predictions(store, &keys::ensemble_oof(exp), &oof_preds).await?);
    outputs.push(test_entry);
    drop(oof_preds);
    info!(peak_rss_mib = peak_rss_mib(), "blends written");

    let thresholds_doc = report::ThresholdsFile {
        version: report::THRESHOLDS_VERSION,
        experiment: exp.to_string(),
        spec_hash: spec_hash.clone(),
        class_count: c,
        vocabulary_hash: vh.clone(),
        blend: blend_info.clone(),
        chosen: chosen.strategy.clone(),
        cv_f2: chosen.cv_f2,
        strategies: evaluated.iter().map(|e| e.strategy.clone()).collect(),
    };
    outputs.push(put(store, &keys::thresholds(exp), serde_json::to_vec_pretty(&thresholds_doc)?).await?);

    let counts = train.labels.iter().fold(vec![0u32; c], |mut acc, r| {
        r.iter().for_each(|a| acc[a.0 as usize] += 1);
        acc
    });
    let points: Vec<(u32, f64, bool)> = per_class.iter().map(|p| (counts[p.id as usize], p.f2, p.group == Group::Culture)).collect();
    let label_counts = report::LabelCounts {
        true_mean: truth.mean_count(),
        oof_predicted_mean: pred_oof.mean_count(),
        test_predicted_mean: pred_test.mean_count(),
        true_hist: report::histogram(&truth),
        oof_predicted_hist: report::histogram(&pred_oof),
        test_predicted_hist: report::histogram(&pred_test),
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
        outputs.push(put(store, &keys::plot(exp, name), png).await?);
    }
    let csv = submission::to_csv(&test.ids, &pred_test);
    outputs.push(put(store, &keys::submission(exp), csv.into_bytes()).await?);
    seconds.insert("outputs".to_string(), t3.elapsed().as_secs_f64());
    seconds.insert("total".to_string(), t0.elapsed().as_secs_f64());

    let rep = report::Report {
        experiment: exp.to_string(),
        spec_hash: spec_hash.clone(),
        train_images: n,
        test_images: nt,
        members: member_reports,
        blend: blend_info,
        blend_oof_f2,
        strategies: evaluated,
        chosen: chosen.strategy.name.clone(),
        scores,
        label_counts,
        per_class,
        seconds,
        weights_f2,
        peak_rss_mib: peak_rss_mib(),
    };
    outputs.push(put(store, &keys::report(exp), serde_json::to_vec_pretty(&rep)?).await?);
    let manifest = Manifest::new(JobId { kind: "ensemble".into(), experiment: exp.to_string(), model: None, fold: None }, spec_hash, outputs.clone());
    manifest.commit(store, &success).await?;
    info!(chosen = %chosen.strategy.name, cv_f2 = chosen.cv_f2, "ensemble committed");
    Ok(Summary { skipped: false, chosen: chosen.strategy.name, cv_f2: chosen.cv_f2, in_sample_f2: chosen.in_sample_f2, outputs })
}

async fn put(store: &Store, key: &str, bytes: Vec<u8>) -> Result<OutputEntry> {
    let entry = OutputEntry::of_bytes(key, &bytes);
    store.put(key, bytes).await?;
    Ok(entry)
}

/// Opens the folder (or URL prefix) holding `path` and returns the store
/// and the object's key.
fn open_parent(path: &str) -> Result<(Store, String)> {
    let url = crate::spec::root_to_url(path)?;
    let (parent, name) = url.rsplit_once('/').ok_or_else(|| Error::Usage(format!("`{path}` names no file")))?;
    let parent = if parent.ends_with(':') || parent.ends_with("//") { format!("{parent}/") } else { parent.to_string() };
    Ok((Store::open(&parent)?, name.to_string()))
}

/// Scores the predictions file `pred` (any `schemas/predictions.parquet.json`
/// file) against `truth` (`id,attribute_ids` CSV, e.g. `train.csv`): at
/// `threshold`, or at the best global threshold when `None`, with at least
/// one label per image. Group scores need `labels` (`labels.csv`).
///
/// # Errors
/// [`Error::Member`] when an id of `pred` is not in `truth`; read errors.
pub async fn eval(pred: &str, truth: &str, labels: Option<&str>, threshold: Option<f32>) -> Result<serde_json::Value> {
    let (ps, pk) = open_parent(pred)?;
    let preds = pq::read_predictions(&ps, &pk).await?;
    let c = preds.classes();
    let (ts, tk) = open_parent(truth)?;
    let text = ts.get(&tk).await?;
    let text = String::from_utf8_lossy(&text);
    let (tids, tsets) = submission::parse(truth, &text, c)?;
    let pos: HashMap<&str, usize> = tids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let mut aligned = LabelSets::new(c);
    for id in &preds.ids {
        let &i = pos.get(id.as_str()).ok_or_else(|| Error::Member { key: pred.to_string(), message: format!("id `{id}` is not in {truth}") })?;
        aligned.push_sorted(tsets.row(i));
    }
    let vocab = match labels {
        Some(l) => {
            let (ls, lk) = open_parent(l)?;
            Some(data::Vocabulary::parse(l, &ls.get(&lk).await?)?)
        }
        None => None,
    };
    let group: Vec<u8> = match &vocab {
        Some(v) if v.len() == c => threshold::group_index(v.groups()),
        Some(v) => return Err(Error::Usage(format!("{} has {} classes but the predictions have {c}", labels.unwrap_or(""), v.len()))),
        None => vec![1; c],
    };
    let (best_t, best_f2) = blend::best_global_f2(&preds.probs, c, &aligned, 100);
    let t = threshold.unwrap_or(best_t);
    let strategy = threshold::Strategy {
        name: "global".into(),
        rule: threshold::Rule::Global { threshold: t },
        limits: threshold::Limits::total(Range { min: 1, max: None }),
    };
    let m = Matrix { probs: &preds.probs, classes: c, group: &group };
    let p = threshold::apply(&strategy, m, None);
    let s = metric::scores(&aligned, &p, 2.0, 0.0);
    let mut out = serde_json::json!({
        "predictions": pred,
        "truth": truth,
        "images": preds.rows(),
        "classes": c,
        "threshold": t,
        "best_global_threshold": best_t,
        "best_global_f2": best_f2,
        "f2": s.samples.f,
        "samples": s.samples,
        "micro": s.micro,
        "macro": s.macro_,
        "mean_labels_predicted": p.mean_count(),
        "mean_labels_true": aligned.mean_count(),
    });
    if let Some(v) = &vocab {
        for g in Group::ALL {
            out[g.as_str()] = serde_json::to_value(metric::group_scores(&aligned, &p, v.groups(), g, 2.0))?;
        }
    }
    Ok(out)
}
