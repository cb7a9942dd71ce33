//! Scores of binary pair predictions: ROC AUC (as scikit-learn's
//! `roc_auc_score`, ties counted half) and mean log-loss (as
//! `log_loss`, probabilities clipped to `[1e-15, 1 - 1e-15]`). Reads and
//! writes nothing.

use rayon::prelude::*;

/// Area under the ROC curve of `scores` for 0/1 `targets`: the chance that
/// a random positive scores above a random negative, ties counting half.
/// NaN when either class is missing.
///
/// # Panics
/// When the two differ in length.
pub fn auc(scores: &[f32], targets: &[f32]) -> f64 {
    assert_eq!(scores.len(), targets.len(), "one target per score");
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.par_sort_unstable_by(|&a, &b| scores[a as usize].total_cmp(&scores[b as usize]));
    let (mut pos, mut neg, mut sum_ranks) = (0f64, 0f64, 0f64);
    let mut i = 0;
    while i < order.len() {
        let s = scores[order[i] as usize];
        let mut j = i;
        let mut p = 0f64;
        while j < order.len() && scores[order[j] as usize] == s {
            p += (targets[order[j] as usize] > 0.5) as u8 as f64;
            j += 1;
        }
        // Ranks i+1 ..= j share their mean.
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        sum_ranks += p * mean_rank;
        pos += p;
        neg += (j - i) as f64 - p;
        i = j;
    }
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    (sum_ranks - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// Mean binary cross-entropy of `probs` against 0/1 `targets`.
///
/// # Panics
/// When the two differ in length.
pub fn logloss(probs: &[f32], targets: &[f32]) -> f64 {
    assert_eq!(probs.len(), targets.len(), "one target per probability");
    if probs.is_empty() {
        return f64::NAN;
    }
    let eps = 1e-15;
    let s: f64 = probs
        .par_iter()
        .zip(targets)
        .map(|(&p, &t)| {
            let p = (p as f64).clamp(eps, 1.0 - eps);
            if t > 0.5 {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum();
    s / probs.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_matches_hand_computed_values_with_ties() {
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]), 0.75);
        assert_eq!(auc(&[0.5, 0.5, 0.5], &[0.0, 1.0, 0.0]), 0.5);
        assert_eq!(auc(&[0.9, 0.1], &[1.0, 0.0]), 1.0);
        assert!(auc(&[0.9, 0.1], &[1.0, 1.0]).is_nan());
    }

    #[test]
    fn logloss_matches_the_definition() {
        let l = logloss(&[0.8, 0.3], &[1.0, 0.0]);
        assert!((l - (-(0.8f64.ln()) - (0.7f64.ln())) / 2.0).abs() < 1e-6);
    }
}
