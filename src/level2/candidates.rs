//! Candidate pruning of the second-level model: each image keeps its `k`
//! highest classes by the blend, so the pair table has `rows x k` rows
//! instead of `rows x classes` (109,237 x 1,103 = 120 M at full scale).
//! Pairs outside the candidates get probability 0 downstream. Reads and
//! writes nothing.

use crate::data::metric::LabelSets;
use rayon::prelude::*;
use serde::Serialize;

/// The `k` candidate classes of every image, highest blend first (ties:
/// lower class index first), row-major `[rows, k]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidates {
    pub k: usize,
    pub classes: Vec<u16>,
}

/// How many of the true labels the candidates keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Recall {
    /// True labels among the candidates.
    pub kept: u64,
    /// All true labels.
    pub total: u64,
    /// `kept / total` (1 when there are no labels): the highest recall any
    /// second-level model on these candidates can reach.
    pub fraction: f64,
    /// Images whose every true label is a candidate, as a fraction.
    pub images_complete: f64,
}

impl Candidates {
    /// Picks each row's top `k` of `probs` (`[rows, classes]`).
    ///
    /// # Panics
    /// When `k` is 0 or above `classes`, or `probs` is not a whole number of
    /// rows (callers validate; [`super::fit_predict`] reports these as errors).
    pub fn top_k(probs: &[f32], classes: usize, k: usize) -> Candidates {
        assert!(k >= 1 && k <= classes, "1 <= k <= classes");
        assert_eq!(probs.len() % classes, 0, "probs hold whole rows");
        let rows = probs.len() / classes;
        let mut out = vec![0u16; rows * k];
        out.par_chunks_mut(k).zip(probs.par_chunks(classes)).for_each_init(
            || Vec::with_capacity(classes),
            |order: &mut Vec<u16>, (dst, row)| {
                order.clear();
                order.extend(0..classes as u16);
                let by = |a: &u16, b: &u16| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
                if k < classes {
                    order.select_nth_unstable_by(k - 1, by);
                }
                let top = &mut order[..k];
                top.sort_unstable_by(by);
                dst.copy_from_slice(top);
            },
        );
        Candidates { k, classes: out }
    }

    pub fn rows(&self) -> usize {
        self.classes.len() / self.k.max(1)
    }

    /// Row `i`'s candidates, highest first.
    pub fn row(&self, i: usize) -> &[u16] {
        &self.classes[i * self.k..(i + 1) * self.k]
    }

    /// The share of `truth`'s labels the candidates keep.
    ///
    /// # Panics
    /// When `truth` has a different number of rows.
    pub fn recall(&self, truth: &LabelSets) -> Recall {
        assert_eq!(truth.len(), self.rows(), "one label set per candidate row");
        let (kept, total, complete) = (0..self.rows())
            .into_par_iter()
            .map(|i| {
                let cand = self.row(i);
                let t = truth.row(i);
                let hit = t.iter().filter(|c| cand.contains(c)).count() as u64;
                (hit, t.len() as u64, (hit == t.len() as u64) as u64)
            })
            .reduce(|| (0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
        Recall {
            kept,
            total,
            fraction: if total == 0 { 1.0 } else { kept as f64 / total as f64 },
            images_complete: if self.rows() == 0 { 1.0 } else { complete as f64 / self.rows() as f64 },
        }
    }

    /// A dense `[rows, classes]` matrix holding `values` (one per candidate,
    /// in candidate order) at the candidates and 0 elsewhere.
    ///
    /// # Panics
    /// When `values` does not hold one value per candidate.
    pub fn scatter(&self, values: &[f32], classes: usize) -> Vec<f32> {
        assert_eq!(values.len(), self.classes.len(), "one value per candidate");
        let mut dense = vec![0f32; self.rows() * classes];
        dense.par_chunks_mut(classes).enumerate().for_each(|(i, row)| {
            for (&c, &v) in self.row(i).iter().zip(&values[i * self.k..(i + 1) * self.k]) {
                row[c as usize] = v;
            }
        });
        dense
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_highest_classes_in_order_with_ties_broken_by_index() {
        let probs = [0.1, 0.9, 0.5, 0.5, /* row 1 */ 0.0, 0.0, 0.3, 0.2];
        let c = Candidates::top_k(&probs, 4, 3);
        assert_eq!(c.row(0), &[1, 2, 3]);
        assert_eq!(c.row(1), &[2, 3, 0]);
    }

    #[test]
    fn recall_counts_kept_labels_over_all_labels() {
        let probs = [0.9, 0.8, 0.1, 0.0, /* row 1 */ 0.1, 0.2, 0.3, 0.4];
        let c = Candidates::top_k(&probs, 4, 2);
        // Row 0 keeps {0, 1}: label 0 kept, label 2 lost. Row 1 keeps {3, 2}: label 3 kept.
        let truth = LabelSets::from_rows(4, [vec![0u16, 2], vec![3]]);
        let r = c.recall(&truth);
        assert_eq!((r.kept, r.total), (2, 3));
        assert!((r.fraction - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.images_complete, 0.5);
        // Every class a candidate: recall 1.
        assert_eq!(Candidates::top_k(&probs, 4, 4).recall(&truth).fraction, 1.0);
    }

    #[test]
    fn scatter_puts_values_at_the_candidates_and_zero_elsewhere() {
        let probs = [0.9, 0.8, 0.1, /* row 1 */ 0.1, 0.2, 0.3];
        let c = Candidates::top_k(&probs, 3, 2);
        assert_eq!(c.scatter(&[0.5, 0.4, 0.7, 0.6], 3), vec![0.5, 0.4, 0.0, 0.0, 0.6, 0.7]);
    }
}
