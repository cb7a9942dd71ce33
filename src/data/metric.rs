//! F-beta metrics of multi-label predictions, equal to scikit-learn's
//! `precision_recall_fscore_support` (`average='samples'|'micro'|'macro'`,
//! `zero_division` 0 or 1): the competition metric is F2 averaged per
//! image. Works on sparse label sets; reads and writes nothing.

use crate::ids::Group;
use rayon::prelude::*;
use serde::Serialize;

/// Sparse multi-label sets, one sorted list of class indices per image
/// (CSR layout). Used for the truth and for binarised predictions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSets {
    offsets: Vec<u32>,
    classes: Vec<u16>,
    class_count: usize,
}

impl LabelSets {
    /// An empty collection over `class_count` classes.
    pub fn new(class_count: usize) -> LabelSets {
        LabelSets { offsets: vec![0], classes: Vec::new(), class_count }
    }

    /// Builds from rows of class indices (any order, duplicates allowed).
    ///
    /// # Panics
    /// When an index is not below `class_count` (an invariant of callers).
    pub fn from_rows<I, R>(class_count: usize, rows: I) -> LabelSets
    where
        I: IntoIterator<Item = R>,
        R: AsRef<[u16]>,
    {
        let mut out = LabelSets::new(class_count);
        for r in rows {
            out.push(r.as_ref());
        }
        out
    }

    /// From a dense 0/1 matrix, row-major `[rows, class_count]`.
    pub fn from_dense(class_count: usize, dense: &[u8]) -> LabelSets {
        let rows = dense.chunks(class_count.max(1)).map(|r| {
            r.iter().enumerate().filter(|(_, &v)| v != 0).map(|(c, _)| c as u16).collect::<Vec<u16>>()
        });
        LabelSets::from_rows(class_count, rows)
    }

    /// Appends one image's classes.
    pub fn push(&mut self, row: &[u16]) {
        let start = self.classes.len();
        self.classes.extend_from_slice(row);
        let new = &mut self.classes[start..];
        new.sort_unstable();
        let mut w = 0;
        for r in 0..new.len() {
            assert!((new[r] as usize) < self.class_count, "class index {} is below the class count {}", new[r], self.class_count);
            if w == 0 || new[r] != new[w - 1] {
                new[w] = new[r];
                w += 1;
            }
        }
        self.classes.truncate(start + w);
        self.offsets.push(self.classes.len() as u32);
    }

    /// Appends a row whose classes are already sorted and distinct.
    pub(crate) fn push_sorted(&mut self, row: &[u16]) {
        self.classes.extend_from_slice(row);
        self.offsets.push(self.classes.len() as u32);
    }

    /// Concatenates row blocks in order.
    pub(crate) fn concat(class_count: usize, parts: Vec<LabelSets>) -> LabelSets {
        let mut out = LabelSets::new(class_count);
        for p in parts {
            for r in 0..p.len() {
                out.push_sorted(p.row(r));
            }
        }
        out
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn class_count(&self) -> usize {
        self.class_count
    }

    /// The sorted classes of image `i`.
    pub fn row(&self, i: usize) -> &[u16] {
        &self.classes[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// The rows listed in `rows`, in that order.
    pub fn select(&self, rows: &[u32]) -> LabelSets {
        let mut out = LabelSets::new(self.class_count);
        for &r in rows {
            out.push_sorted(self.row(r as usize));
        }
        out
    }

    /// Positives per class.
    pub fn class_counts(&self) -> Vec<u32> {
        let mut n = vec![0u32; self.class_count];
        for &c in &self.classes {
            n[c as usize] += 1;
        }
        n
    }

    /// Mean number of classes per image.
    pub fn mean_count(&self) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        self.classes.len() as f64 / self.len() as f64
    }
}

/// Precision, recall and F-beta under one averaging.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f: f64,
}

/// Counts and scores of one class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ClassScore {
    pub support: u32,
    pub predicted: u32,
    pub tp: u32,
    pub precision: f64,
    pub recall: f64,
    pub f: f64,
}

/// Every average of F-beta, precision and recall, and the per-class scores.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scores {
    pub beta: f64,
    pub zero_division: f64,
    /// Averaged per image: the competition's metric when beta = 2.
    pub samples: Prf,
    pub micro: Prf,
    pub macro_: Prf,
    pub per_class: Vec<ClassScore>,
}

/// scikit-learn's `_prf_divide`: `num / den`, or `zero_division` when `den` is 0.
#[inline]
pub fn divide(num: f64, den: f64, zero_division: f64) -> f64 {
    if den == 0.0 {
        zero_division
    } else {
        num / den
    }
}

/// F-beta from counts: `(1 + b²) tp / (b² true + predicted)`.
#[inline]
pub fn fbeta_counts(tp: f64, true_count: f64, predicted: f64, beta: f64, zero_division: f64) -> f64 {
    let b2 = beta * beta;
    divide((1.0 + b2) * tp, b2 * true_count + predicted, zero_division)
}

/// F2 of one image from its counts, with an empty prediction scoring 0
/// (scikit-learn's default `zero_division`).
#[inline]
pub fn f2_counts(tp: u32, true_count: u32, predicted: u32) -> f64 {
    let den = 4 * true_count + predicted;
    if den == 0 {
        0.0
    } else {
        (5 * tp) as f64 / den as f64
    }
}

fn intersect(a: &[u16], b: &[u16]) -> u32 {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

/// Scores `pred` against `truth` like scikit-learn's
/// `precision_recall_fscore_support(truth, pred, beta=beta, zero_division=z)`
/// for each of `average='samples'`, `'micro'` and `'macro'`.
///
/// # Panics
/// When the two have different image or class counts (callers align them).
pub fn scores(truth: &LabelSets, pred: &LabelSets, beta: f64, zero_division: f64) -> Scores {
    assert_eq!(truth.len(), pred.len(), "truth and predictions cover the same images");
    assert_eq!(truth.class_count, pred.class_count, "truth and predictions share the class count");
    let c = truth.class_count;
    let mut tp_c = vec![0u32; c];
    let mut true_c = vec![0u32; c];
    let mut pred_c = vec![0u32; c];
    let (mut sp, mut sr, mut sf) = (0.0, 0.0, 0.0);
    for i in 0..truth.len() {
        let (t, p) = (truth.row(i), pred.row(i));
        let tp = intersect(t, p);
        for &k in t {
            true_c[k as usize] += 1;
        }
        for &k in p {
            pred_c[k as usize] += 1;
        }
        let (mut a, mut b) = (0, 0);
        while a < t.len() && b < p.len() {
            match t[a].cmp(&p[b]) {
                std::cmp::Ordering::Less => a += 1,
                std::cmp::Ordering::Greater => b += 1,
                std::cmp::Ordering::Equal => {
                    tp_c[t[a] as usize] += 1;
                    a += 1;
                    b += 1;
                }
            }
        }
        sp += divide(tp as f64, p.len() as f64, zero_division);
        sr += divide(tp as f64, t.len() as f64, zero_division);
        sf += fbeta_counts(tp as f64, t.len() as f64, p.len() as f64, beta, zero_division);
    }
    let n = truth.len() as f64;
    let samples = if truth.is_empty() {
        Prf::default()
    } else {
        Prf { precision: sp / n, recall: sr / n, f: sf / n }
    };
    let (tps, trues, preds): (u64, u64, u64) = (
        tp_c.iter().map(|&v| v as u64).sum(),
        true_c.iter().map(|&v| v as u64).sum(),
        pred_c.iter().map(|&v| v as u64).sum(),
    );
    let micro = Prf {
        precision: divide(tps as f64, preds as f64, zero_division),
        recall: divide(tps as f64, trues as f64, zero_division),
        f: fbeta_counts(tps as f64, trues as f64, preds as f64, beta, zero_division),
    };
    let per_class: Vec<ClassScore> = (0..c)
        .map(|k| ClassScore {
            support: true_c[k],
            predicted: pred_c[k],
            tp: tp_c[k],
            precision: divide(tp_c[k] as f64, pred_c[k] as f64, zero_division),
            recall: divide(tp_c[k] as f64, true_c[k] as f64, zero_division),
            f: fbeta_counts(tp_c[k] as f64, true_c[k] as f64, pred_c[k] as f64, beta, zero_division),
        })
        .collect();
    let mean = |g: fn(&ClassScore) -> f64| if c == 0 { 0.0 } else { per_class.iter().map(g).sum::<f64>() / c as f64 };
    let macro_ = Prf { precision: mean(|s| s.precision), recall: mean(|s| s.recall), f: mean(|s| s.f) };
    Scores { beta, zero_division, samples, micro, macro_, per_class }
}

/// The competition metric: F2 averaged per image, empty predictions 0.
pub fn f2_samples(truth: &LabelSets, pred: &LabelSets) -> f64 {
    assert_eq!(truth.len(), pred.len(), "truth and predictions cover the same images");
    if truth.is_empty() {
        return 0.0;
    }
    let s: f64 = (0..truth.len())
        .map(|i| {
            let (t, p) = (truth.row(i), pred.row(i));
            f2_counts(intersect(t, p), t.len() as u32, p.len() as u32)
        })
        .sum();
    s / truth.len() as f64
}

/// Keeps only the classes of `group` (scikit-learn on the group's columns;
/// class indices are unchanged).
pub fn restrict(sets: &LabelSets, groups: &[Group], group: Group) -> LabelSets {
    let mut out = LabelSets::new(sets.class_count);
    let mut buf = Vec::new();
    for i in 0..sets.len() {
        buf.clear();
        buf.extend(sets.row(i).iter().copied().filter(|&c| groups[c as usize] == group));
        out.push_sorted(&buf);
    }
    out
}

/// Scores restricted to one group's classes: samples and micro averages
/// over the group's columns, macro over the group's classes only.
pub fn group_scores(truth: &LabelSets, pred: &LabelSets, groups: &[Group], group: Group, beta: f64) -> Prf3 {
    let t = restrict(truth, groups, group);
    let p = restrict(pred, groups, group);
    let s = scores(&t, &p, beta, 0.0);
    let members: Vec<&ClassScore> = s.per_class.iter().enumerate().filter(|(k, _)| groups[*k] == group).map(|(_, v)| v).collect();
    let m = members.len().max(1) as f64;
    let macro_ = Prf {
        precision: members.iter().map(|v| v.precision).sum::<f64>() / m,
        recall: members.iter().map(|v| v.recall).sum::<f64>() / m,
        f: members.iter().map(|v| v.f).sum::<f64>() / m,
    };
    Prf3 { samples: s.samples, micro: s.micro, macro_ }
}

/// The three averages of one group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Prf3 {
    pub samples: Prf,
    pub micro: Prf,
    #[serde(rename = "macro")]
    pub macro_: Prf,
}

/// Mean per-image F2 at the best single threshold over every class, and
/// that threshold as a grid index `j` (the threshold is `j / bins`, `j` from
/// 1 to `bins`). A probability counts as predicted when its grid bin
/// (`floor(p * bins)`) is at least `j`. An image with no probability at or
/// above the threshold predicts its most probable class, as a submission
/// does: the one definition of F2 that validation, blend-weight fitting and
/// the ensemble's reports share.
///
/// # Shapes
/// `probs`: `[truth.len(), classes]`.
pub fn best_global_f2(probs: &[f32], classes: usize, truth: &LabelSets, bins: usize) -> (usize, f64) {
    let n = truth.len();
    let w = bins + 1;
    let obj = (0..n)
        .into_par_iter()
        .fold(
            || (vec![0.0f64; w], vec![0u32; w], vec![0u32; w]),
            |(mut obj, mut cnt, mut pos), i| {
                let row = &probs[i * classes..(i + 1) * classes];
                cnt.iter_mut().for_each(|v| *v = 0);
                pos.iter_mut().for_each(|v| *v = 0);
                let (mut max, mut arg) = (f32::MIN, 0usize);
                for (c, &p) in row.iter().enumerate() {
                    cnt[((p * bins as f32) as usize).min(bins)] += 1;
                    if p > max {
                        max = p;
                        arg = c;
                    }
                }
                let labels = truth.row(i);
                for &c in labels {
                    pos[((row[c as usize] * bins as f32) as usize).min(bins)] += 1;
                }
                let top_true = labels.binary_search(&(arg as u16)).is_ok() as u32;
                let (mut k, mut tp) = (0u32, 0u32);
                for j in (0..w).rev() {
                    k += cnt[j];
                    tp += pos[j];
                    obj[j] += if k == 0 { f2_counts(top_true, labels.len() as u32, 1) } else { f2_counts(tp, labels.len() as u32, k) };
                }
                (obj, cnt, pos)
            },
        )
        .map(|(o, _, _)| o)
        .reduce(|| vec![0.0; w], |mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
            a
        });
    let mut best = 1;
    for j in 1..w {
        if obj[j] > obj[best] {
            best = j;
        }
    }
    (best, obj[best] / n.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_prediction_scores_zero_and_a_perfect_one_scores_one() {
        let truth = LabelSets::from_rows(4, [vec![0u16, 2], vec![1]]);
        let pred = LabelSets::from_rows(4, [vec![0u16, 2], vec![]]);
        assert_eq!(f2_samples(&truth, &pred), 0.5);
        let s = scores(&truth, &pred, 2.0, 0.0);
        assert_eq!(s.samples.f, 0.5);
        assert_eq!(s.micro.precision, 1.0);
    }

    #[test]
    fn f2_weights_recall_four_times_precision() {
        // 2 true, 4 predicted, 2 hit: 5*2 / (4*2 + 4) = 10/12.
        let truth = LabelSets::from_rows(6, [vec![0u16, 1]]);
        let pred = LabelSets::from_rows(6, [vec![0u16, 1, 2, 3]]);
        assert!((f2_samples(&truth, &pred) - 10.0 / 12.0).abs() < 1e-12);
    }

    #[test]
    fn zero_division_fills_rows_with_neither_truth_nor_prediction() {
        let truth = LabelSets::from_rows(3, [vec![], vec![1u16]]);
        let pred = LabelSets::from_rows(3, [vec![], vec![1u16]]);
        assert_eq!(scores(&truth, &pred, 2.0, 0.0).samples.f, 0.5);
        assert_eq!(scores(&truth, &pred, 2.0, 1.0).samples.f, 1.0);
        // Macro: classes 0 and 2 are empty on both sides.
        assert!((scores(&truth, &pred, 2.0, 0.0).macro_.f - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn rows_are_sorted_and_deduplicated() {
        let s = LabelSets::from_rows(5, [vec![3u16, 1, 3]]);
        assert_eq!(s.row(0), &[1, 3]);
        assert_eq!(LabelSets::from_dense(3, &[0, 1, 1, 1, 0, 0]).row(1), &[0]);
    }

    #[test]
    fn an_image_with_nothing_above_the_threshold_predicts_its_top_class() {
        // Every probability is below both candidate thresholds (0.5 and
        // 1.0), the top class is right: F2 1 rather than 0 for predicting
        // nothing.
        let probs = [0.40f32, 0.10, 0.05];
        let truth = LabelSets::from_rows(3, [vec![0u16]]);
        let (j, f2) = best_global_f2(&probs, 3, &truth, 2);
        assert_eq!((j, f2), (1, 1.0), "a threshold above every probability still scores the top class");
        // A wrong top class scores 0 however high the threshold.
        let truth = LabelSets::from_rows(3, [vec![2u16]]);
        let (_, f2) = best_global_f2(&probs, 3, &truth, 10);
        assert!(f2 < 1.0);
    }
}
