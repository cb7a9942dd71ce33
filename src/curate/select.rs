//! Curate stage: the per-image scores behind a stage's data edits and the
//! selections made from them. Pure functions over prediction matrices;
//! touches no store.

use super::config::{Confidence, DropNoisy, NoiseCriterion, PseudoLabels};
use crate::data::metric::{f2_counts, LabelSets};
use crate::ensemble::threshold::{self, Matrix, Strategy};
use crate::storage::parquet::Predictions;
use rayon::prelude::*;

/// Probabilities are clamped this far from 0 and 1 before a logarithm.
const EPS: f32 = 1e-6;

/// Each row's error against its labels (higher: more likely mislabelled).
/// `strategy` and `group` turn probabilities into labels for the F2
/// criterion.
pub fn noise_errors(p: &Predictions, truth: &LabelSets, criterion: NoiseCriterion, strategy: &Strategy, group: &[u8]) -> Vec<f32> {
    let c = p.classes();
    match criterion {
        NoiseCriterion::Bce => (0..p.rows())
            .into_par_iter()
            .map(|r| {
                let row = p.row(r);
                let labels = truth.row(r);
                let mut pos = 0f64;
                let mut neg = 0f64;
                for (k, &v) in row.iter().enumerate() {
                    let v = v.clamp(EPS, 1.0 - EPS) as f64;
                    if labels.binary_search(&(k as u16)).is_ok() {
                        pos -= v.ln();
                    } else {
                        neg -= (1.0 - v).ln();
                    }
                }
                let n_pos = labels.len();
                let mean_pos = if n_pos > 0 { pos / n_pos as f64 } else { 0.0 };
                let mean_neg = if c > n_pos { neg / (c - n_pos) as f64 } else { 0.0 };
                (mean_pos + mean_neg) as f32
            })
            .collect(),
        NoiseCriterion::F2 => {
            let m = Matrix { probs: &p.probs, classes: c, group };
            let predicted = threshold::apply(strategy, m, None);
            (0..p.rows())
                .map(|r| {
                    let (t, q) = (truth.row(r), predicted.row(r));
                    let tp = t.iter().filter(|k| q.binary_search(k).is_ok()).count() as u32;
                    1.0 - f2_counts(tp, t.len() as u32, q.len() as u32) as f32
                })
                .collect()
        }
    }
}

/// Rows to drop: the `fraction` with the highest error, or every row at or
/// above `min_error`; worst first, ties by row.
pub fn worst(errors: &[f32], d: &DropNoisy) -> Vec<usize> {
    let mut order: Vec<usize> = (0..errors.len()).collect();
    order.sort_by(|&a, &b| errors[b].total_cmp(&errors[a]).then(a.cmp(&b)));
    match (d.fraction, d.min_error) {
        (Some(f), _) => order.truncate(((errors.len() as f64) * f).round() as usize),
        (None, Some(e)) => order.retain(|&r| errors[r] as f64 >= e),
        (None, None) => order.clear(),
    }
    order
}

/// Each row's confidence.
pub fn confidence(p: &Predictions, how: Confidence) -> Vec<f32> {
    match how {
        Confidence::MeanMargin => (0..p.rows())
            .into_par_iter()
            .map(|r| {
                let row = p.row(r);
                row.iter().map(|&v| (v - 0.5).abs() as f64).sum::<f64>() as f32 / row.len().max(1) as f32
            })
            .collect(),
    }
}

/// Rows to pseudo-label: the most confident `fraction` (or `count`), most
/// confident first, ties by row.
pub fn most_confident(confidence: &[f32], p: &PseudoLabels) -> Vec<usize> {
    let mut order: Vec<usize> = (0..confidence.len()).collect();
    order.sort_by(|&a, &b| confidence[b].total_cmp(&confidence[a]).then(a.cmp(&b)));
    let n = match (p.fraction, p.count) {
        (Some(f), _) => ((confidence.len() as f64) * f).round() as usize,
        (None, Some(n)) => n,
        (None, None) => 0,
    };
    order.truncate(n.min(confidence.len()));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ensemble::threshold::{Limits, Range, Rule};
    use crate::ids::{Fold, ImageId};
    use crate::storage::parquet::{PredictionKind, PredictionMeta};

    fn preds(probs: Vec<f32>, classes: usize) -> Predictions {
        let rows = probs.len() / classes;
        Predictions {
            ids: (0..rows).map(|i| ImageId::new(&format!("{:012x}", i + 1)).unwrap()).collect(),
            probs,
            meta: PredictionMeta {
                experiment: "e".into(),
                model: "ensemble".into(),
                fold: Some(Fold(0)),
                kind: PredictionKind::Oof,
                tta: 1,
                spec_hash: "h".into(),
                class_count: classes,
                vocabulary_hash: "v".into(),
            },
        }
    }

    fn global(t: f32) -> Strategy {
        Strategy { name: "global".into(), rule: Rule::Global { threshold: t }, limits: Limits::total(Range { min: 1, max: None }) }
    }

    #[test]
    fn a_row_whose_labels_the_blend_contradicts_has_the_highest_error_by_both_criteria() {
        // Row 1 is labelled class 2 but the blend is sure of class 0.
        let p = preds(vec![0.9, 0.1, 0.1, 0.9, 0.1, 0.05, 0.1, 0.1, 0.9], 3);
        let truth = LabelSets::from_rows(3, [vec![0u16], vec![2], vec![2]]);
        for criterion in [NoiseCriterion::Bce, NoiseCriterion::F2] {
            let e = noise_errors(&p, &truth, criterion, &global(0.5), &[1, 1, 1]);
            let top = (0..3).max_by(|&a, &b| e[a].total_cmp(&e[b])).unwrap();
            assert_eq!(top, 1, "{criterion:?}: {e:?}");
        }
        let d = DropNoisy { criterion: NoiseCriterion::Bce, fraction: Some(0.34), min_error: None };
        assert_eq!(worst(&noise_errors(&p, &truth, NoiseCriterion::Bce, &global(0.5), &[1, 1, 1]), &d), [1]);
    }

    #[test]
    fn a_cut_off_drops_every_row_at_or_above_it_worst_first() {
        let d = DropNoisy { criterion: NoiseCriterion::Bce, fraction: None, min_error: Some(0.5) };
        assert_eq!(worst(&[0.1, 0.7, 0.5, 0.9], &d), [3, 1, 2]);
    }

    #[test]
    fn the_most_confident_rows_have_probabilities_farthest_from_a_half() {
        let p = preds(vec![0.5, 0.5, 0.99, 0.01, 0.7, 0.3], 2);
        let c = confidence(&p, Confidence::MeanMargin);
        assert!((c[1] - 0.49).abs() < 1e-6 && c[0] == 0.0);
        let pick = PseudoLabels { fraction: None, count: Some(2), confidence: Confidence::MeanMargin, targets: super::super::Targets::Hard };
        assert_eq!(most_confident(&c, &pick), [1, 2]);
    }
}
