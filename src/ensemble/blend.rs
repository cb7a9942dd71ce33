//! Blending of member probability matrices: arithmetic mean, weighted mean
//! (weights fitted on OOF F2), rank mean and geometric mean, optionally
//! divided by each image's maximum (R1). Members are added one at a time
//! into a single accumulator, so blending `M` members needs two matrices
//! (the accumulator and the member being added), whatever `M` is. Blend
//! weights are fitted on a row subsample of every member held quantised to
//! one byte per probability. Reads and writes nothing.

use super::metric::LabelSets;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How member probabilities are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BlendKind {
    Mean,
    Weighted,
    Rank,
    Geometric,
}

/// Floor of probabilities before the logarithm of the geometric mean.
const GEO_EPS: f32 = 1e-7;
/// Levels of the logit quantisation used by the rank transform.
const RANK_LEVELS: usize = 4096;
const LOGIT_SPAN: f32 = 16.0;

/// A running blend over `rows x classes`.
pub struct Accumulator {
    kind: BlendKind,
    classes: usize,
    sum: Vec<f32>,
    weight: f64,
}

impl Accumulator {
    pub fn new(kind: BlendKind, rows: usize, classes: usize) -> Accumulator {
        Accumulator { kind, classes, sum: vec![0.0; rows * classes], weight: 0.0 }
    }

    /// Adds one member with `weight` (1 for unweighted blends). `member`
    /// is transformed in place (ranks, logarithms) and may be reused.
    ///
    /// # Shapes
    /// `member`: `[rows, classes]`, the accumulator's shape.
    pub fn add(&mut self, member: &mut [f32], weight: f32) {
        assert_eq!(member.len(), self.sum.len(), "members share the accumulator's shape");
        match self.kind {
            BlendKind::Mean | BlendKind::Weighted => {}
            BlendKind::Geometric => member.par_iter_mut().for_each(|p| *p = p.max(GEO_EPS).ln()),
            BlendKind::Rank => rank_columns(member, self.classes),
        }
        self.sum.par_chunks_mut(1 << 16).zip(member.par_chunks(1 << 16)).for_each(|(s, m)| {
            for (a, b) in s.iter_mut().zip(m) {
                *a += weight * b;
            }
        });
        self.weight += weight as f64;
    }

    /// Adds one row of a member (element-wise blends only: mean, weighted,
    /// geometric); call [`Accumulator::add_weight`] once per member after.
    ///
    /// # Panics
    /// For rank blends, which need whole columns ([`Accumulator::add`]).
    pub fn add_row(&mut self, row: usize, probs: &[f32], weight: f32) {
        let c = self.classes;
        let out = &mut self.sum[row * c..(row + 1) * c];
        match self.kind {
            BlendKind::Mean | BlendKind::Weighted => out.iter_mut().zip(probs).for_each(|(a, &p)| *a += weight * p),
            BlendKind::Geometric => out.iter_mut().zip(probs).for_each(|(a, &p)| *a += weight * p.max(GEO_EPS).ln()),
            BlendKind::Rank => panic!("rank blends add whole members, never rows"),
        }
    }

    /// Counts a member's weight after its rows were added with [`Accumulator::add_row`].
    pub fn add_weight(&mut self, weight: f32) {
        self.weight += weight as f64;
    }

    /// The blend of rows each of which has its own total weight (members
    /// that predict only some rows), divided by each row's maximum when
    /// `normalize_max`. Rows of weight 0 stay 0.
    pub fn finish_per_row(self, row_weight: &[f32], normalize_max: bool) -> Vec<f32> {
        let c = self.classes.max(1);
        let geo = self.kind == BlendKind::Geometric;
        let mut out = self.sum;
        out.par_chunks_mut(c).zip(row_weight.par_iter()).for_each(|(row, &w)| {
            let inv = if w > 0.0 { 1.0 / w } else { 0.0 };
            for v in row.iter_mut() {
                *v *= inv;
                if geo && w > 0.0 {
                    *v = v.exp();
                }
                *v = v.clamp(0.0, 1.0);
            }
        });
        if normalize_max {
            divide_by_row_max(&mut out, self.classes);
        }
        out
    }

    /// The blend, divided by each row's maximum when `normalize_max`.
    pub fn finish(self, normalize_max: bool) -> Vec<f32> {
        let w = if self.weight > 0.0 { (1.0 / self.weight) as f32 } else { 0.0 };
        let mut out = self.sum;
        let geo = self.kind == BlendKind::Geometric;
        out.par_iter_mut().for_each(|v| {
            *v *= w;
            if geo {
                *v = v.exp();
            }
            *v = v.clamp(0.0, 1.0);
        });
        if normalize_max {
            divide_by_row_max(&mut out, self.classes);
        }
        out
    }
}

/// Divides each row by its maximum (rows of zeros stay zero).
pub fn divide_by_row_max(m: &mut [f32], classes: usize) {
    m.par_chunks_mut(classes.max(1)).for_each(|row| {
        let max = row.iter().copied().fold(0.0f32, f32::max);
        if max > 0.0 {
            let inv = 1.0 / max;
            row.iter_mut().for_each(|v| *v = (*v * inv).min(1.0));
        }
    });
}

#[inline]
fn logit_level(p: f32) -> usize {
    let p = p.clamp(1e-7, 1.0 - 1e-7);
    let l = (p / (1.0 - p)).ln().clamp(-LOGIT_SPAN, LOGIT_SPAN);
    (((l + LOGIT_SPAN) / (2.0 * LOGIT_SPAN)) * (RANK_LEVELS - 1) as f32).round() as usize
}

/// Replaces every value by its normalised mid-rank within its column,
/// in [0, 1]. Values are ranked on a 4,096-level logit quantisation
/// (ties within one level share their mid-rank), which needs two passes in
/// row order instead of one sort per column.
pub fn rank_columns(m: &mut [f32], classes: usize) {
    let rows = m.len() / classes.max(1);
    if rows == 0 {
        return;
    }
    let counts = m
        .par_chunks(classes * 256)
        .fold(
            || vec![0u32; classes * RANK_LEVELS],
            |mut h, chunk| {
                for row in chunk.chunks(classes) {
                    for (c, &p) in row.iter().enumerate() {
                        h[c * RANK_LEVELS + logit_level(p)] += 1;
                    }
                }
                h
            },
        )
        .reduce(|| vec![0u32; classes * RANK_LEVELS], |mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
            a
        });
    // Mid-rank of each level, normalised by the row count.
    let mut mid = vec![0f32; classes * RANK_LEVELS];
    let denom = (rows.max(2) - 1) as f64;
    for c in 0..classes {
        let mut below = 0u64;
        for l in 0..RANK_LEVELS {
            let n = counts[c * RANK_LEVELS + l] as u64;
            mid[c * RANK_LEVELS + l] = ((below as f64 + (n.saturating_sub(1)) as f64 / 2.0) / denom).min(1.0) as f32;
            below += n;
        }
    }
    m.par_chunks_mut(classes * 256).for_each(|chunk| {
        for row in chunk.chunks_mut(classes) {
            for (c, p) in row.iter_mut().enumerate() {
                *p = mid[c * RANK_LEVELS + logit_level(*p)];
            }
        }
    });
}

/// Members' probabilities on a row subsample, one byte each (`p * 255`
/// rounded): what weight fitting holds instead of whole members.
pub struct Subsample {
    pub rows: Vec<u32>,
    pub classes: usize,
    pub members: Vec<Vec<u8>>,
    /// Position of each matrix row in `rows`, `u32::MAX` when not sampled.
    slot: Vec<u32>,
}

impl Subsample {
    /// Picks `want` rows evenly spaced over `n`.
    pub fn new(n: usize, want: usize, classes: usize) -> Subsample {
        let want = want.min(n).max(1);
        let rows: Vec<u32> = (0..want).map(|k| ((k as u128 * n as u128) / want as u128) as u32).collect();
        let mut slot = vec![u32::MAX; n];
        for (s, &r) in rows.iter().enumerate() {
            slot[r as usize] = s as u32;
        }
        Subsample { rows, classes, members: Vec::new(), slot }
    }

    /// Starts a new member, filled by [`Subsample::offer`].
    pub fn add_member(&mut self) {
        self.members.push(vec![0; self.rows.len() * self.classes]);
    }

    /// Keeps row `row` of member `member` if it is sampled.
    pub fn offer(&mut self, member: usize, row: usize, probs: &[f32]) {
        let s = self.slot[row];
        if s != u32::MAX {
            let c = self.classes;
            let out = &mut self.members[member][s as usize * c..(s as usize + 1) * c];
            out.iter_mut().zip(probs).for_each(|(q, &p)| *q = (p * 255.0).round() as u8);
        }
    }

    /// Member `member`'s sampled rows as probabilities.
    pub fn dequantised(&self, member: usize) -> Vec<f32> {
        self.members[member].iter().map(|&q| q as f32 / 255.0).collect()
    }

    /// Quantises the subsample rows of a whole member matrix.
    pub fn push(&mut self, member: &[f32]) {
        self.add_member();
        let m = self.members.len() - 1;
        for r in 0..self.rows.len() {
            let row = self.rows[r] as usize;
            self.offer(m, row, &member[row * self.classes..(row + 1) * self.classes]);
        }
    }
}

/// F2 per image at the best global grid threshold `j / bins` (see
/// [`crate::data::metric::best_global_f2`]), and that threshold.
///
/// # Shapes
/// `probs`: `[truth.len(), classes]`.
pub fn best_global_f2(probs: &[f32], classes: usize, truth: &LabelSets, bins: usize) -> (f32, f64) {
    let (j, f2) = crate::data::metric::best_global_f2(probs, classes, truth, bins);
    (j as f32 / bins as f32, f2)
}

/// Fits blend weights (summing to 1) on the subsample by coordinate search:
/// each pass tries scaling each member's weight by 0, 0.5, 0.8, 1.25 and 2
/// and keeps any change that raises F2 at the best global threshold.
/// Returns the weights and their subsample F2.
pub fn fit_weights(sub: &Subsample, truth: &LabelSets, bins: usize) -> (Vec<f32>, f64) {
    let m = sub.members.len();
    let truth = truth.select(&sub.rows);
    let c = sub.classes;
    let len = sub.rows.len() * c;
    let mut blend = vec![0f32; len];
    let score = |w: &[f32], blend: &mut Vec<f32>| {
        let total: f32 = w.iter().sum();
        if total <= 0.0 {
            return f64::MIN;
        }
        blend.par_chunks_mut(1 << 14).enumerate().for_each(|(ci, out)| {
            let start = ci * (1 << 14);
            out.iter_mut().enumerate().for_each(|(k, v)| {
                let mut s = 0.0f32;
                for (mi, q) in sub.members.iter().enumerate() {
                    s += w[mi] * q[start + k] as f32;
                }
                *v = s / (255.0 * total);
            });
        });
        best_global_f2(blend, c, &truth, bins).1
    };
    let mut w = vec![1.0 / m as f32; m];
    let mut best = score(&w, &mut blend);
    for _round in 0..4 {
        let mut improved = false;
        for k in 0..m {
            for mult in [0.0f32, 0.5, 0.8, 1.25, 2.0] {
                let mut cand = w.clone();
                cand[k] *= mult;
                let s = score(&cand, &mut blend);
                if s > best + 1e-6 {
                    best = s;
                    let total: f32 = cand.iter().sum();
                    w = cand.iter().map(|v| v / total).collect();
                    improved = true;
                }
            }
        }
        if !improved {
            break;
        }
    }
    (w, best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_geometric_blends_match_their_formulas() {
        let mut acc = Accumulator::new(BlendKind::Mean, 1, 2);
        acc.add(&mut [0.2, 0.8], 1.0);
        acc.add(&mut [0.4, 0.2], 1.0);
        let m = acc.finish(false);
        assert!((m[0] - 0.3).abs() < 1e-6 && (m[1] - 0.5).abs() < 1e-6);
        let mut acc = Accumulator::new(BlendKind::Geometric, 1, 2);
        acc.add(&mut [0.2, 0.8], 1.0);
        acc.add(&mut [0.8, 0.2], 1.0);
        let g = acc.finish(false);
        assert!((g[0] - 0.4).abs() < 1e-5 && (g[1] - 0.4).abs() < 1e-5, "{g:?}");
    }

    #[test]
    fn weighted_blend_divides_by_the_weight_total_and_max_normalisation_tops_rows_at_one() {
        let mut acc = Accumulator::new(BlendKind::Weighted, 2, 2);
        acc.add(&mut [0.2, 0.4, 0.0, 0.0], 3.0);
        acc.add(&mut [0.6, 0.0, 0.0, 0.0], 1.0);
        let m = acc.finish(true);
        assert!((m[0] - 1.0).abs() < 1e-6 && (m[1] - 1.0).abs() < 1e-6, "{m:?}");
        assert_eq!(&m[2..], &[0.0, 0.0]);
    }

    #[test]
    fn rank_blend_orders_by_mean_rank_in_each_column() {
        // Column 0 ranks: a = [0, 0.5, 1], b = [1, 0, 0.5] -> mean [0.5, 0.25, 0.75].
        let mut acc = Accumulator::new(BlendKind::Rank, 3, 1);
        acc.add(&mut [0.1, 0.5, 0.9], 1.0);
        acc.add(&mut [0.7, 0.01, 0.3], 1.0);
        let r = acc.finish(false);
        assert!((r[0] - 0.5).abs() < 1e-6 && (r[1] - 0.25).abs() < 1e-6 && (r[2] - 0.75).abs() < 1e-6, "{r:?}");
    }

    #[test]
    fn weight_fitting_drops_a_useless_member() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (n, c) = (400, 20);
        let mut rows = Vec::new();
        let mut good = vec![0f32; n * c];
        let mut noise = vec![0f32; n * c];
        for i in 0..n {
            let mut r = Vec::new();
            for k in 0..c {
                let pos = rng.random::<f32>() < 0.15;
                if pos {
                    r.push(k as u16);
                }
                good[i * c + k] = if pos { 0.5 + 0.5 * rng.random::<f32>() } else { 0.45 * rng.random::<f32>() };
                noise[i * c + k] = rng.random::<f32>();
            }
            rows.push(r);
        }
        let truth = LabelSets::from_rows(c, rows);
        let mut sub = Subsample::new(n, n, c);
        sub.push(&good);
        sub.push(&noise);
        let (w, f) = fit_weights(&sub, &truth, 100);
        assert!(w[0] > 0.75, "{w:?}");
        assert!(f > best_global_f2(&noise, c, &truth, 100).1);
    }
}
