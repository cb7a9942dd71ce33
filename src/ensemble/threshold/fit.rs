//! Fitting: each strategy's cut-offs chosen on OOF F2, in sample and
//! across folds (fit on K-1 folds, score the held-out one), and the pick of
//! the best cross-validated strategy.

use super::rules::{apply, Limits, Range, Rule, Strategy, StrategyKind};
use super::tables::{SparseBins, Tables};
use super::{bin, grid, Matrix};
use crate::ensemble::metric::{f2_counts, f2_samples, LabelSets};
use rayon::prelude::*;
use serde::Serialize;


/// Settings of the fit (from the spec's `[ensemble]` section).
#[derive(Clone, Debug, PartialEq)]
pub struct FitConfig {
    /// Grid size: candidate thresholds are `j / bins`.
    pub bins: usize,
    /// Overall limits of every strategy (the metric scores an empty row 0,
    /// so `min = 1` is the usual choice).
    pub total: Range,
    pub culture: Range,
    pub tag: Range,
    /// Pseudo-count pulling a class threshold towards its group's:
    /// `t = (n t_class + s t_group) / (n + s)` with `n` positives.
    pub class_shrink: f64,
    /// Coordinate-ascent passes of the per-class fit.
    pub class_rounds: usize,
    pub ratio_default: f32,
    pub ratio_max_labels: u32,
    /// Target mean label count; `None` uses the global rule's mean count on
    /// the fitting rows.
    pub target_label_count: Option<f64>,
    pub kinds: Vec<StrategyKind>,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            bins: 100,
            total: Range { min: 1, max: None },
            culture: Range { min: 0, max: Some(3) },
            tag: Range { min: 1, max: Some(8) },
            class_shrink: 20.0,
            class_rounds: 3,
            ratio_default: 7.0,
            ratio_max_labels: 10,
            target_label_count: None,
            kinds: StrategyKind::ALL.to_vec(),
        }
    }
}

/// First index of the largest value among `j >= 1`.
pub(super) fn argmax_from_1(obj: &[f64]) -> usize {
    let mut best = 1;
    for j in 1..obj.len() {
        if obj[j] > obj[best] {
            best = j;
        }
    }
    best
}



/// The best global grid threshold on `rows` under `limits`.
pub(super) fn fit_global_j(t: &Tables, rows: &[u32], limits: &Limits) -> usize {
    argmax_from_1(&t.sweep(rows, |i, j| t.pair_score(i, j, j, limits)))
}

/// Culture and tag grid thresholds by coordinate ascent from the global one.
pub(super) fn fit_group_j(t: &Tables, rows: &[u32], limits: &Limits) -> (usize, usize) {
    let j0 = fit_global_j(t, rows, limits);
    let (mut jc, mut jt) = (j0, j0);
    for _ in 0..6 {
        let nc = argmax_from_1(&t.sweep(rows, |i, j| t.pair_score(i, j, jt, limits)));
        let nt = argmax_from_1(&t.sweep(rows, |i, j| t.pair_score(i, nc, j, limits)));
        let changed = (nc, nt) != (jc, jt);
        (jc, jt) = (nc, nt);
        if !changed {
            break;
        }
    }
    (jc, jt)
}

pub(super) fn fit_ratio_j(t: &Tables, rows: &[u32], total: Range) -> usize {
    let w = t.w();
    argmax_from_1(&t.sweep(rows, |i, j| {
        let (k, tp) = (t.qcnt[i * w + j] as u32, t.qpos[i * w + j] as u32);
        t.score_total(i, k, tp, total)
    }))
}

/// One pass of the per-class fit at grid thresholds `j`: the objective
/// (sum of F2 over `rows`) and, per class and bin, the F2 gained by
/// predicting the class for the images in that bin, others held fixed.
pub(super) fn class_pass(m: Matrix<'_>, truth: &LabelSets, sp: &SparseBins, rows: &[u32], j: &[usize], b: usize) -> (f64, Vec<f64>) {
    let c = m.classes;
    let w = b + 2;
    rows
        .par_chunks(512)
        .fold(
            || (0.0f64, vec![0.0f64; c * w], Vec::<u8>::with_capacity(c)),
            |(mut obj, mut hist, mut bins), chunk| {
                for &i in chunk {
                    let row = m.row(i as usize);
                    let (cls, bns) = sp.row(i as usize);
                    let labels = truth.row(i as usize);
                    let tc = labels.len() as u32;
                    bins.clear();
                    bins.extend(labels.iter().map(|&k| bin(row[k as usize], b) as u8));
                    let mut pp = 0u32;
                    for (&k, &bk) in cls.iter().zip(bns) {
                        pp += (bk as usize >= j[k as usize]) as u32;
                    }
                    let tp = labels.iter().zip(&bins).filter(|(&k, &bk)| bk as usize >= j[k as usize]).count() as u32;
                    let now = f2_counts(tp, tc, pp);
                    obj += now;
                    if tc == 0 {
                        continue;
                    }
                    let d_in = if pp > 0 { now - f2_counts(tp, tc, pp - 1) } else { 0.0 };
                    let d_out = f2_counts(tp, tc, pp + 1) - now;
                    // Bin 0 only feeds the threshold 0, which is never a
                    // candidate: only the sparse non-zero bins matter.
                    for (&k, &bk) in cls.iter().zip(bns) {
                        let (k, bk) = (k as usize, bk as usize);
                        hist[k * w + bk] += if bk >= j[k] { d_in } else { d_out };
                    }
                    for (&k, &bk) in labels.iter().zip(&bins) {
                        let (k, bk) = (k as usize, bk as usize);
                        if bk == 0 {
                            continue;
                        }
                        let (neg, posd) = if bk >= j[k] {
                            (d_in, now - f2_counts(tp - 1, tc, pp - 1))
                        } else {
                            (d_out, f2_counts(tp + 1, tc, pp + 1) - now)
                        };
                        hist[k * w + bk] += posd - neg;
                    }
                }
                (obj, hist, bins)
            },
        )
        .map(|(o, h, _)| (o, h))
        .reduce(|| (0.0, vec![0.0; c * w]), |(oa, mut ha), (ob, hb)| {
            ha.iter_mut().zip(&hb).for_each(|(x, y)| *x += y);
            (oa + ob, ha)
        })
}

/// The grid index with the largest suffix gain (`b + 1`: never predict).
pub(super) fn best_class_j(h: &[f64], b: usize) -> usize {
    let (mut acc, mut best_gain, mut best_j) = (0.0, 0.0, b + 1);
    for jj in (1..=b).rev() {
        acc += h[jj];
        if acc > best_gain + 1e-12 {
            best_gain = acc;
            best_j = jj;
        }
    }
    best_j
}

/// Per-class grid thresholds: coordinate ascent on per-image F2 for all
/// classes at once, each pass shrinking towards the group thresholds.
pub(super) fn fit_class_j(m: Matrix<'_>, truth: &LabelSets, sp: &SparseBins, rows: &[u32], start: [usize; 2], cfg: &FitConfig) -> Vec<usize> {
    let b = cfg.bins;
    let never = b + 1;
    let w = b + 2;
    let c = m.classes;
    let mut positives = vec![0u32; c];
    for &i in rows {
        for &k in truth.row(i as usize) {
            positives[k as usize] += 1;
        }
    }
    let mut j: Vec<usize> = (0..c).map(|k| start[m.group[k] as usize]).collect();
    let mut best: Option<(f64, Vec<usize>)> = None;
    for _ in 0..=cfg.class_rounds {
        let (obj, hist) = class_pass(m, truth, sp, rows, &j, b);
        match &best {
            Some((o, prev)) if obj <= *o => {
                j = prev.clone();
                break;
            }
            _ => best = Some((obj, j.clone())),
        }
        // New thresholds: best suffix sum per class, shrunk to the group's.
        for k in 0..c {
            let best_j = best_class_j(&hist[k * w..(k + 1) * w], b);
            let n = positives[k] as f64;
            let tg = start[m.group[k] as usize] as f64;
            let shrunk = (n * best_j as f64 + cfg.class_shrink * tg) / (n + cfg.class_shrink).max(1e-12);
            j[k] = (shrunk.round() as usize).clamp(1, never);
        }
    }
    best.map(|(_, j)| j).unwrap_or(j)
}

/// Fits the rule of `kind` on `rows` of `m`.
///
/// # Panics
/// When `tables` or `truth` were built for another matrix.
pub fn fit(kind: StrategyKind, m: Matrix<'_>, truth: &LabelSets, tables: &Tables, rows: &[u32], cfg: &FitConfig) -> Strategy {
    let b = cfg.bins;
    let total = Limits::total(cfg.total);
    let grouped = Limits { total: cfg.total, culture: Some(cfg.culture), tag: Some(cfg.tag) };
    let (rule, limits) = match kind {
        StrategyKind::Global => (Rule::Global { threshold: grid(fit_global_j(tables, rows, &total), b) }, total),
        StrategyKind::Group | StrategyKind::GroupLimits => {
            let limits = if kind == StrategyKind::Group { total } else { grouped };
            let (jc, jt) = fit_group_j(tables, rows, &limits);
            (Rule::Group { culture: grid(jc, b), tag: grid(jt, b) }, limits)
        }
        StrategyKind::Class | StrategyKind::ClassLimits => {
            let limits = if kind == StrategyKind::Class { total } else { grouped };
            let (jc, jt) = fit_group_j(tables, rows, &limits);
            let j = fit_class_j(m, truth, &tables.sparse, rows, [jc, jt], cfg);
            (Rule::Class { thresholds: j.into_iter().map(|j| grid(j, b)).collect() }, limits)
        }
        StrategyKind::Ratio | StrategyKind::RatioDefault => {
            let limits = Limits::total(Range { min: cfg.total.min, max: Some(cfg.ratio_max_labels) });
            let ratio = if kind == StrategyKind::Ratio {
                b as f32 / fit_ratio_j(tables, rows, limits.total) as f32
            } else {
                cfg.ratio_default
            };
            (Rule::Ratio { ratio }, limits)
        }
        StrategyKind::TargetCount => {
            let mean_labels = cfg.target_label_count.unwrap_or_else(|| {
                let j = fit_global_j(tables, rows, &total);
                let sum: u64 = rows
                    .iter()
                    .map(|&i| {
                        let (kc, _) = tables.group_at(i as usize, 0, j, None);
                        let (kt, _) = tables.group_at(i as usize, 1, j, None);
                        (kc + kt) as u64
                    })
                    .sum();
                sum as f64 / rows.len().max(1) as f64
            });
            (Rule::TargetCount { mean_labels }, total)
        }
    };
    Strategy { name: kind.as_str().to_string(), rule, limits }
}

/// A fitted strategy with its scores.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evaluated {
    pub strategy: Strategy,
    /// F2 on the rows it was fitted on.
    pub in_sample_f2: f64,
    /// F2 over all rows, each scored by the rule fitted without its fold.
    pub cv_f2: f64,
    /// Held-out F2 of each fold.
    pub cv_per_fold: Vec<f64>,
    /// Mean labels per image on the OOF rows (in-sample rule).
    pub mean_labels: f64,
    /// Seconds to fit and score in-sample, and across the folds.
    pub seconds_in_sample: f64,
    pub seconds_cv: f64,
}

/// Fits every configured strategy on all rows and across folds (fit on
/// K-1 folds, score the held-out one); `fold[i]` is row `i`'s fold.
///
/// # Panics
/// When `fold`, `truth` and `m` disagree on the number of rows.
pub fn fit_all(m: Matrix<'_>, truth: &LabelSets, fold: &[u8], cfg: &FitConfig) -> Vec<Evaluated> {
    fit_all_with(m, truth, fold, cfg, &Tables::build(m, truth, cfg.bins))
}

/// [`fit_all`] with tables already built by [`Tables::build`] for `m`, `truth`, `cfg.bins`.
///
/// # Panics
/// When `fold`, `truth`, `tables` and `m` disagree on the number of rows.
pub fn fit_all_with(m: Matrix<'_>, truth: &LabelSets, fold: &[u8], cfg: &FitConfig, tables: &Tables) -> Vec<Evaluated> {
    let n = m.rows();
    assert_eq!(fold.len(), n, "one fold per OOF row");
    assert_eq!(tables.truth.len(), n, "tables built for this matrix");
    let all: Vec<u32> = (0..n as u32).collect();
    let k = fold.iter().copied().max().map(|f| f as usize + 1).unwrap_or(0);
    let splits: Vec<(Vec<u32>, Vec<u32>)> = (0..k)
        .map(|f| {
            let (held, fit): (Vec<u32>, Vec<u32>) = all.iter().partition(|&&i| fold[i as usize] as usize == f);
            (fit, held)
        })
        .filter(|(fit, held)| !fit.is_empty() && !held.is_empty())
        .collect();
    cfg.kinds
        .iter()
        .map(|&kind| {
            let _span = tracing::info_span!("strategy", name = kind.as_str()).entered();
            let t0 = std::time::Instant::now();
            let strategy = fit(kind, m, truth, tables, &all, cfg);
            let pred = apply(&strategy, m, None);
            let in_sample_f2 = f2_samples(truth, &pred);
            let seconds_in_sample = t0.elapsed().as_secs_f64();
            let t1 = std::time::Instant::now();
            let mut cv_sum = 0.0;
            let mut cv_per_fold = Vec::new();
            for (fit_rows, held) in &splits {
                let s = fit(kind, m, truth, tables, fit_rows, cfg);
                let p = apply(&s, m, Some(held));
                let f = f2_samples(&truth.select(held), &p);
                cv_sum += f * held.len() as f64;
                cv_per_fold.push(f);
            }
            let cv_f2 = if splits.is_empty() { in_sample_f2 } else { cv_sum / n as f64 };
            let seconds_cv = t1.elapsed().as_secs_f64();
            tracing::info!(in_sample_f2, cv_f2, seconds_in_sample, seconds_cv, "strategy fitted");
            Evaluated { strategy, in_sample_f2, cv_f2, cv_per_fold, mean_labels: pred.mean_count(), seconds_in_sample, seconds_cv }
        })
        .collect()
}

/// The strategy with the best cross-validated F2 (ties: the first).
pub fn pick(evaluated: &[Evaluated]) -> Option<&Evaluated> {
    evaluated.iter().fold(None, |best: Option<&Evaluated>, e| match best {
        Some(b) if b.cv_f2 >= e.cv_f2 => Some(b),
        _ => Some(e),
    })
}

/// F2 per image averaged over the grid thresholds `j / bins` of one group
/// (the other group at its `other` threshold), for the plots.
pub fn group_curve(t: &Tables, g: usize, other: f32) -> Vec<(f32, f64)> {
    let bins = t.bins;
    let rows: Vec<u32> = (0..t.truth.len() as u32).collect();
    let jo = bin(other, bins);
    let none = Limits::total(Range::ANY);
    let obj = t.sweep(&rows, |i, j| if g == 0 { t.pair_score(i, j, jo, &none) } else { t.pair_score(i, jo, j, &none) });
    obj.iter().enumerate().map(|(j, v)| (grid(j, bins), v / rows.len().max(1) as f64)).collect()
}
