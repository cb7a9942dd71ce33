//! Threshold calibration: turns blended probabilities into label sets and
//! fits the cut-offs on OOF F2 (averaged per image). Rules: one global
//! threshold; one per group (culture, tag); one per class shrunk towards its
//! group's; a per-image ratio `p >= max / r`; a global threshold re-chosen
//! on each matrix so the mean label count hits a target. Each rule can be
//! combined with label-count limits per image, overall and per group.
//! Reads and writes nothing; `ensemble::run` calls it.
//!
//! Fitting is fast because it never re-scores a candidate from scratch: one
//! pass over the matrix builds, per image and group, how many classes and
//! how many true classes lie above each of the `bins + 1` grid thresholds
//! (`j / bins`), plus the true-class counts among the image's top-k. Every
//! global, group and ratio sweep then costs `images x bins` small integer
//! operations, and per-class thresholds use one histogram of per-image F2
//! gains per class and pass (coordinate ascent over all classes at once).
//! Fitted rules are always scored exactly on the probabilities.
//!
//! Three concerns, one file each: [`rules`] (what a strategy is and how it
//! turns probabilities into label sets), [`tables`] (the per-image counts
//! fitting sweeps over) and [`fit`] (fitting and cross-validating every
//! strategy).

mod fit;
mod rules;
mod tables;

pub use fit::{fit, fit_all, fit_all_with, group_curve, pick, Evaluated, FitConfig};
pub use rules::{apply, count_threshold, Limits, Range, Rule, Strategy, StrategyKind, MAX_LIMIT};
pub use tables::{SparseBins, Tables};

use crate::ids::Group;


/// A probability matrix with its class groups.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    /// Row-major `[rows, classes]`.
    pub probs: &'a [f32],
    pub classes: usize,
    /// 0 for culture, 1 for tag, per class.
    pub group: &'a [u8],
}

impl<'a> Matrix<'a> {
    pub fn rows(&self) -> usize {
        self.probs.len() / self.classes.max(1)
    }

    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.probs[i * self.classes..(i + 1) * self.classes]
    }
}

/// Group index per class (0 culture, 1 tag).
pub fn group_index(groups: &[Group]) -> Vec<u8> {
    groups.iter().map(|g| if *g == Group::Culture { 0 } else { 1 }).collect()
}

#[inline]
pub(super) fn bin(p: f32, bins: usize) -> usize {
    ((p * bins as f32) as usize).min(bins)
}

pub(super) fn grid(j: usize, bins: usize) -> f32 {
    j as f32 / bins as f32
}


#[cfg(test)]
mod tests {
    use super::fit::{best_class_j, class_pass};
    use super::*;
    use crate::ensemble::metric::{f2_counts, f2_samples, LabelSets};
    use rand::{Rng, SeedableRng};

    /// Random truth and probabilities correlated with it.
    fn synthetic(n: usize, c: usize, seed: u64) -> (Vec<f32>, LabelSets, Vec<u8>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let group: Vec<u8> = (0..c).map(|k| (k >= c / 3) as u8).collect();
        let mut probs = vec![0f32; n * c];
        let mut rows = Vec::new();
        for i in 0..n {
            let mut row = Vec::new();
            for k in 0..c {
                let pos = rng.random::<f32>() < 0.08;
                if pos {
                    row.push(k as u16);
                }
                let base: f32 = rng.random::<f32>();
                probs[i * c + k] = if pos { 0.3 + 0.7 * base } else { 0.45 * base * base };
            }
            rows.push(row);
        }
        (probs, LabelSets::from_rows(c, rows), group)
    }

    fn matrix<'a>(probs: &'a [f32], c: usize, group: &'a [u8]) -> Matrix<'a> {
        Matrix { probs, classes: c, group }
    }

    /// Slow exact F2 of a global threshold.
    fn exact_global(m: Matrix<'_>, truth: &LabelSets, t: f32, limits: Limits) -> f64 {
        let s = Strategy { name: "x".into(), rule: Rule::Global { threshold: t }, limits };
        f2_samples(truth, &apply(&s, m, None))
    }

    #[test]
    fn global_sweep_scores_equal_exact_scoring_at_every_grid_threshold() {
        let (p, truth, g) = synthetic(300, 40, 1);
        let m = matrix(&p, 40, &g);
        let b = 50;
        let t = Tables::build(m, &truth, b);
        let rows: Vec<u32> = (0..300).collect();
        for limits in [Limits::total(Range::ANY), Limits::total(Range { min: 1, max: Some(4) })] {
            let obj = t.sweep(&rows, |i, j| t.pair_score(i, j, j, &limits));
            for j in (1..=b).step_by(7) {
                // Grid thresholds land exactly on bin edges for these values.
                let exact = exact_global(m, &truth, grid(j, b), limits);
                // At most one image may sit on a bin edge (1/300 of F2).
                assert!((obj[j] / 300.0 - exact).abs() < 0.004, "j={j}: {} vs {exact}", obj[j] / 300.0);
            }
        }
    }

    #[test]
    fn fitted_global_threshold_is_the_best_of_the_grid() {
        let (p, truth, g) = synthetic(400, 30, 2);
        let m = matrix(&p, 30, &g);
        let cfg = FitConfig { kinds: vec![StrategyKind::Global], ..FitConfig::default() };
        let t = Tables::build(m, &truth, cfg.bins);
        let rows: Vec<u32> = (0..400).collect();
        let s = fit(StrategyKind::Global, m, &truth, &t, &rows, &cfg);
        let Rule::Global { threshold } = s.rule else { panic!("global rule") };
        let fitted = exact_global(m, &truth, threshold, s.limits);
        let best = (1..100).map(|j| exact_global(m, &truth, grid(j, 100), s.limits)).fold(0.0, f64::max);
        assert!(fitted >= best - 0.005, "fitted {fitted} vs grid best {best}");
    }

    #[test]
    fn group_and_class_rules_do_not_score_below_global_in_sample() {
        let (p, truth, g) = synthetic(500, 30, 3);
        let m = matrix(&p, 30, &g);
        let fold: Vec<u8> = (0..500).map(|i| (i % 5) as u8).collect();
        let cfg = FitConfig::default();
        let ev = fit_all(m, &truth, &fold, &cfg);
        let get = |n: &str| ev.iter().find(|e| e.strategy.name == n).unwrap();
        assert!(get("group").in_sample_f2 >= get("global").in_sample_f2 - 1e-3);
        assert!(get("class").in_sample_f2 >= get("group").in_sample_f2 - 1e-3);
        for e in &ev {
            assert_eq!(e.cv_per_fold.len(), 5);
            assert!(e.cv_f2 > 0.3 && e.cv_f2 <= 1.0, "{}: {}", e.strategy.name, e.cv_f2);
        }
        let best = pick(&ev).unwrap();
        assert!(ev.iter().all(|e| e.cv_f2 <= best.cv_f2));
    }

    #[test]
    fn class_thresholds_of_classes_without_positives_equal_their_group_threshold() {
        let (mut p, truth, g) = synthetic(200, 12, 4);
        // Class 11 (a tag) never occurs in the truth below.
        let rows: Vec<Vec<u16>> = (0..200).map(|i| truth.row(i).iter().copied().filter(|&k| k != 11).collect()).collect();
        let truth = LabelSets::from_rows(12, rows);
        for i in 0..200 {
            p[i * 12 + 11] = 0.9;
        }
        let m = matrix(&p, 12, &g);
        let cfg = FitConfig { bins: 20, ..FitConfig::default() };
        let t = Tables::build(m, &truth, cfg.bins);
        let all: Vec<u32> = (0..200).collect();
        let s = fit(StrategyKind::Class, m, &truth, &t, &all, &cfg);
        let gs = fit(StrategyKind::Group, m, &truth, &t, &all, &cfg);
        let (Rule::Class { thresholds }, Rule::Group { tag, .. }) = (&s.rule, &gs.rule) else { panic!("rules") };
        assert_eq!(thresholds[11], *tag);
    }

    #[test]
    fn sparse_class_fit_equals_a_dense_reference_pass() {
        // One pass of the per-class fit against a brute-force search of each
        // class's best grid threshold with every other class held fixed.
        let (p, truth, g) = synthetic(150, 10, 8);
        let m = matrix(&p, 10, &g);
        let cfg = FitConfig { bins: 20, class_shrink: 0.0, class_rounds: 1, ..FitConfig::default() };
        let t = Tables::build(m, &truth, cfg.bins);
        let rows: Vec<u32> = (0..150).collect();
        let (_, hist) = class_pass(m, &truth, &t.sparse, &rows, &[6; 10], 20);
        let got: Vec<usize> = (0..10).map(|k| best_class_j(&hist[k * 22..(k + 1) * 22], 20)).collect();
        let score = |j: &[usize]| -> f64 {
            (0..150)
                .map(|i| {
                    let row = m.row(i);
                    let pred: Vec<u16> = (0..10u16).filter(|&k| bin(row[k as usize], 20) >= j[k as usize]).collect();
                    let tp = pred.iter().filter(|k| truth.row(i).contains(k)).count() as u32;
                    f2_counts(tp, truth.row(i).len() as u32, pred.len() as u32)
                })
                .sum()
        };
        let base = vec![6usize; 10];
        for k in 0..10 {
            let best = (1..=21)
                .map(|jj| {
                    let mut j = base.clone();
                    j[k] = jj;
                    (score(&j), jj)
                })
                .fold((f64::MIN, 0), |a, b| if b.0 > a.0 + 1e-12 { b } else { a });
            let mut j = base.clone();
            j[k] = got[k];
            assert!((score(&j) - best.0).abs() < 1e-9, "class {k}: picked {} scoring {}, best {} at {}", got[k], score(&j), best.0, best.1);
        }
    }

    #[test]
    fn ratio_keeps_classes_within_a_factor_of_the_maximum() {
        let p = [0.8f32, 0.2, 0.1, 0.05, 0.6, 0.01];
        let g = [0u8, 0, 1, 1, 1, 1];
        let m = matrix(&p, 6, &g);
        let s = Strategy { name: "r".into(), rule: Rule::Ratio { ratio: 7.0 }, limits: Limits::total(Range { min: 1, max: Some(10) }) };
        assert_eq!(apply(&s, m, None).row(0), &[0, 1, 4]);
    }

    #[test]
    fn limits_fill_and_trim_per_group_then_overall() {
        let p = [0.9f32, 0.8, 0.7, 0.6, 0.05, 0.04, 0.03];
        let g = [0u8, 0, 0, 0, 1, 1, 1];
        let m = matrix(&p, 7, &g);
        let limits = Limits { total: Range { min: 1, max: None }, culture: Some(Range { min: 0, max: Some(3) }), tag: Some(Range { min: 1, max: Some(8) }) };
        let s = Strategy { name: "g".into(), rule: Rule::Global { threshold: 0.5 }, limits };
        // Four cultures over 0.5 -> top 3; no tag -> best tag added.
        assert_eq!(apply(&s, m, None).row(0), &[0, 1, 2, 4]);
        let empty = Strategy { name: "e".into(), rule: Rule::Global { threshold: 0.95 }, limits: Limits::total(Range { min: 2, max: None }) };
        assert_eq!(apply(&empty, m, None).row(0), &[0, 1]);
    }

    #[test]
    fn target_count_threshold_hits_the_mean_label_count() {
        let (p, _, g) = synthetic(300, 50, 5);
        let m = matrix(&p, 50, &g);
        let s = Strategy { name: "t".into(), rule: Rule::TargetCount { mean_labels: 4.0 }, limits: Limits::total(Range::ANY) };
        let mean = apply(&s, m, None).mean_count();
        assert!((mean - 4.0).abs() < 0.05, "{mean}");
    }

    #[test]
    fn ratio_fit_recovers_a_planted_ratio() {
        // Truth = classes within a factor 4 of the image maximum.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (n, c) = (300, 20);
        let p: Vec<f32> = (0..n * c).map(|_| rng.random::<f32>()).collect();
        let rows: Vec<Vec<u16>> = (0..n)
            .map(|i| {
                let r = &p[i * c..(i + 1) * c];
                let max = r.iter().copied().fold(0.0, f32::max);
                (0..c as u16).filter(|&k| r[k as usize] >= max / 4.0).collect()
            })
            .collect();
        let truth = LabelSets::from_rows(c, rows);
        let g = vec![1u8; c];
        let m = matrix(&p, c, &g);
        let cfg = FitConfig { ratio_max_labels: 20, ..FitConfig::default() };
        let t = Tables::build(m, &truth, cfg.bins);
        let all: Vec<u32> = (0..n as u32).collect();
        let s = fit(StrategyKind::Ratio, m, &truth, &t, &all, &cfg);
        let Rule::Ratio { ratio } = s.rule else { panic!("ratio rule") };
        assert!((ratio - 4.0).abs() < 0.2, "{ratio}");
    }
}

