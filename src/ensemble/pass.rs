//! Ensemble step 2: streams every member's files through validation into
//! one accumulator per split. Element-wise blends add each streamed row
//! straight into the accumulator; rank blends (and geometric test means)
//! need the member's whole matrix first; weighted blends fit their weights
//! on a quantised subsample of OOF rows, then stream the members again.
//! Reads the members' `oof.parquet` and `test.parquet`; writes nothing.

use super::blend::{self, Accumulator, BlendKind, Subsample};
use super::inputs::Inputs;
use super::members::{self, check_covered, Expected, IdIndex};
use super::{peak_rss_mib, report, EnsembleJob};
use crate::error::Result;
use crate::ids::Fold;
use crate::storage::parquet::PredictionKind;
use crate::storage::{keys, Store};
use crate::telemetry::Progress;
use std::collections::BTreeMap;
use std::time::Instant;
use tracing::info;

/// The blended predictions and how they were made.
pub struct Blended {
    /// `[train images, classes]`, in `train.csv` order.
    pub oof: Vec<f32>,
    /// `[test images, classes]`, in `sample_submission.csv` order.
    pub test: Vec<f32>,
    /// One weight per member (equal unless the blend is weighted).
    pub weights: Vec<f32>,
    /// Subsample F2 of fitted weights (weighted blends).
    pub weights_f2: Option<f64>,
    pub members: Vec<report::MemberReport>,
    /// F2 of the blend at its best global threshold.
    pub blend_oof_f2: f64,
    /// Largest TTA of any test file.
    pub tta: u32,
    /// The training rows some member predicts, when members train on fold
    /// subsets (`oof` then holds these rows only, in this order); `None`
    /// when every member predicts every row.
    pub rows: Option<Vec<u32>>,
}

/// Where the members' files are and what they must look like.
pub(super) struct Source<'a> {
    store: &'a Store,
    job: &'a EnsembleJob,
    fold_of: &'a [u8],
    train_index: IdIndex<'a>,
    test_index: IdIndex<'a>,
    classes: usize,
    vocabulary_hash: String,
    progress: Progress,
}

/// Blends the members of `job`, timing each pass into `seconds`.
///
/// # Errors
/// [`crate::Error::Member`] naming the file and first bad id of any invalid
/// member file; storage errors.
pub async fn blend(store: &Store, job: &EnsembleJob, inputs: &Inputs, seconds: &mut BTreeMap<String, f64>) -> Result<Blended> {
    let cfg = &job.config;
    let (n, c) = (inputs.train.len(), inputs.vocab.len());
    let kind = cfg.blend;
    let weighted = kind == BlendKind::Weighted;
    let partial = !inputs.full_coverage();
    if partial && !matches!(kind, BlendKind::Mean | BlendKind::Geometric) {
        return Err(crate::Error::Ensemble(format!(
            "members train on different folds, so rows are blended over the members that cover them; `ensemble.blend = {kind:?}` needs every member on every row: use `mean` or `geometric`"
        )));
    }
    let files = inputs.oof_folds.iter().chain(&inputs.test_folds).map(Vec::len).sum::<usize>() as u64;
    // Weighted blends read the OOF files twice (to fit, then to blend).
    let files = files + if weighted { inputs.oof_folds.iter().map(Vec::len).sum::<usize>() as u64 } else { 0 };
    let src = Source {
        store,
        job,
        fold_of: &inputs.fold_of,
        train_index: IdIndex::new(&inputs.train.ids, Some(&inputs.fold_of)),
        test_index: IdIndex::new(&inputs.test.ids, None),
        classes: c,
        vocabulary_hash: inputs.vocab.hash(),
        progress: Progress::with_unit("member files", files, "files"),
    };
    // Rows each member covers weigh in the blend; with full coverage every
    // row has every member's weight and the scalar total is used.
    let mut row_weight = if partial { vec![0f32; n] } else { Vec::new() };

    // Pass 1: validate every file, blending as we go (except weighted blends).
    let t1 = Instant::now();
    let mut oof_acc = Accumulator::new(kind, if weighted { 0 } else { n }, c);
    let mut sub = Subsample::new(n, cfg.weight_rows, c);
    let mut whole = if kind == BlendKind::Rank { vec![0f32; n * c] } else { Vec::new() };
    for (mi, m) in cfg.members.iter().enumerate() {
        sub.add_member();
        src.stream(m, PredictionKind::Oof, &inputs.oof_folds[mi], |r, p| {
            sub.offer(mi, r, p);
            match kind {
                BlendKind::Rank => whole[r * c..(r + 1) * c].copy_from_slice(p),
                BlendKind::Weighted => {}
                BlendKind::Mean | BlendKind::Geometric => {
                    oof_acc.add_row(r, p, 1.0);
                    if partial {
                        row_weight[r] += 1.0;
                    }
                }
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
    let truth_sub = inputs.truth.select(&sub.rows);
    let mut member_reports: Vec<report::MemberReport> = cfg
        .members
        .iter()
        .enumerate()
        .map(|(mi, m)| {
            let (threshold, oof_f2) = if partial {
                // Only the sampled rows the member predicts.
                let own: Vec<usize> = (0..sub.rows.len()).filter(|&s| inputs.oof_folds[mi].contains(&inputs.fold_of[sub.rows[s] as usize])).collect();
                let probs = sub.dequantised(mi);
                let kept: Vec<f32> = own.iter().flat_map(|&s| probs[s * c..(s + 1) * c].iter().copied()).collect();
                let rows: Vec<u32> = own.iter().map(|&s| s as u32).collect();
                blend::best_global_f2(&kept, c, &truth_sub.select(&rows), cfg.threshold_bins)
            } else {
                blend::best_global_f2(&sub.dequantised(mi), c, &truth_sub, cfg.threshold_bins)
            };
            report::MemberReport { model: m.clone(), weight: 1.0 / cfg.members.len() as f32, oof_f2, threshold }
        })
        .collect();
    let equal = vec![1.0f32; cfg.members.len()];
    let (mut test_acc, mut tta) = if weighted { (Accumulator::new(kind, 0, c), 1) } else { src.test_pass(kind, &cfg.members, &inputs.test_folds, &equal).await? };
    info!(peak_rss_mib = peak_rss_mib(), "every member file valid");
    seconds.insert("read_validate_blend".to_string(), t1.elapsed().as_secs_f64());

    // Weighted blends: fit weights on the subsample, then stream again.
    let mut weights = vec![1.0 / cfg.members.len() as f32; cfg.members.len()];
    let mut weights_f2 = None;
    if weighted {
        let t = Instant::now();
        let (w, f2) = blend::fit_weights(&sub, &inputs.truth, cfg.threshold_bins);
        info!(?w, f2, rows = sub.rows.len(), "blend weights fitted");
        weights = w;
        weights_f2 = Some(f2);
        seconds.insert("fit_weights".to_string(), t.elapsed().as_secs_f64());
        let t = Instant::now();
        oof_acc = Accumulator::new(BlendKind::Weighted, n, c);
        for (mi, (m, &w)) in cfg.members.iter().zip(&weights).enumerate() {
            src.stream(m, PredictionKind::Oof, &inputs.oof_folds[mi], |r, p| oof_acc.add_row(r, p, w)).await?;
            oof_acc.add_weight(w);
        }
        (test_acc, tta) = src.test_pass(BlendKind::Weighted, &cfg.members, &inputs.test_folds, &weights).await?;
        seconds.insert("weighted_blend".to_string(), t.elapsed().as_secs_f64());
    }
    drop(sub);
    for (r, w) in member_reports.iter_mut().zip(&weights) {
        r.weight = *w;
    }
    let test = test_acc.finish(cfg.normalize_max);
    let (oof, rows) = if partial {
        let rows: Vec<u32> = (0..n as u32).filter(|&r| inputs.covered[r as usize]).collect();
        let full = oof_acc.finish_per_row(&row_weight, cfg.normalize_max);
        let oof = rows.iter().flat_map(|&r| full[r as usize * c..(r as usize + 1) * c].iter().copied()).collect();
        info!(covered = rows.len(), of = n, "members on fold subsets: rows blended over the members that cover them");
        (oof, Some(rows))
    } else {
        (oof_acc.finish(cfg.normalize_max), None)
    };
    let truth = rows.as_ref().map(|r| inputs.truth.select(r));
    let (_, blend_oof_f2) = blend::best_global_f2(&oof, c, truth.as_ref().unwrap_or(&inputs.truth), cfg.threshold_bins);
    Ok(Blended { oof, test, weights, weights_f2, members: member_reports, blend_oof_f2, tta, rows })
}

impl<'a> Source<'a> {
    /// The members' test files alone (test-time inference: no training
    /// images, no OOF files).
    pub(super) fn test_only(store: &'a Store, job: &'a EnsembleJob, test: &'a [crate::ids::ImageId], classes: usize, vocabulary_hash: String, files: u64) -> Source<'a> {
        Source {
            store,
            job,
            fold_of: &[],
            train_index: IdIndex::new(&[], None),
            test_index: IdIndex::new(test, None),
            classes,
            vocabulary_hash,
            progress: Progress::with_unit("member files", files, "files"),
        }
    }

    /// Blends the members' test files of `test_folds` (per member, in
    /// `members` order), member `i` with weight `weights[i]` and each of
    /// its files with `1 / files`: the test half of [`blend`], also what
    /// applying a saved blend does. Returns the accumulator (not finished)
    /// and the largest TTA seen.
    ///
    /// # Errors
    /// As [`Source::stream`].
    pub(super) async fn test_pass(&self, kind: BlendKind, members: &[String], test_folds: &[Vec<u8>], weights: &[f32]) -> Result<(Accumulator, u32)> {
        let (nt, c) = (self.test_index.ids.len(), self.classes);
        let mut acc = Accumulator::new(kind, nt, c);
        let mut tta = 1;
        let whole_needed = matches!(kind, BlendKind::Rank | BlendKind::Geometric);
        let mut model = if whole_needed { vec![0f32; nt * c] } else { Vec::new() };
        for (mi, (m, &w)) in members.iter().zip(weights).enumerate() {
            model.iter_mut().for_each(|v| *v = 0.0);
            let nf = test_folds[mi].len() as f32;
            let t = self
                .stream(m, PredictionKind::Test, &test_folds[mi], |r, p| match kind {
                    BlendKind::Mean | BlendKind::Weighted => acc.add_row(r, p, w / nf),
                    BlendKind::Rank | BlendKind::Geometric => model[r * c..(r + 1) * c].iter_mut().zip(p).for_each(|(a, b)| *a += b / nf),
                })
                .await?;
            tta = tta.max(t);
            match kind {
                BlendKind::Mean | BlendKind::Weighted => acc.add_weight(w),
                BlendKind::Rank | BlendKind::Geometric => acc.add(&mut model, w),
            }
        }
        Ok((acc, tta))
    }

    /// Streams one member's files of `kind` for `folds` through
    /// [`members::stream`], calling `sink(row, probs)` for every row, and
    /// checks coverage (OOF: every training image exactly once over the
    /// folds; test: every test image in each file). Returns the largest TTA
    /// seen.
    async fn stream(&self, model: &str, kind: PredictionKind, folds: &[u8], mut sink: impl FnMut(usize, &[f32])) -> Result<u32> {
        let exp = self.job.scope();
        let index = match kind {
            PredictionKind::Oof => &self.train_index,
            PredictionKind::Test => &self.test_index,
        };
        let mut tta = 1;
        let mut seen = vec![false; index.ids.len()];
        if kind == PredictionKind::Oof {
            // Rows of folds the member did not train count as seen: the
            // coverage check below is for the member's own folds.
            for (s, f) in seen.iter_mut().zip(self.fold_of) {
                *s = !folds.contains(f);
            }
        }
        for &f in folds {
            let key = match kind {
                PredictionKind::Oof => keys::oof(exp, model, Fold(f)),
                PredictionKind::Test => keys::test_predictions(exp, model, Fold(f)),
            };
            let bytes = self.store.get(&key).await?;
            let expected = Expected { kind, model, fold: Fold(f), classes: self.classes, vocabulary_hash: &self.vocabulary_hash };
            if kind == PredictionKind::Test {
                seen.iter_mut().for_each(|s| *s = false);
            }
            tta = tta.max(members::stream(&key, bytes, &expected, index, &mut seen, &mut sink)?);
            if kind == PredictionKind::Test {
                check_covered(&key, &seen, index.ids, "every test file must cover every id of data/sample_submission.csv")?;
            }
            self.progress.inc(1);
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
}
