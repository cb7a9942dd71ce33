//! Fitting tables: per image and group, how many classes and how many true
//! classes lie above each grid threshold, built in one pass, so every sweep
//! of a fit costs `images x bins` small integer operations.

use super::rules::{Limits, Range, L};
use super::{bin, Matrix};
use crate::ensemble::metric::{f2_counts, LabelSets};
use rayon::prelude::*;


/// Per-image counts above every grid threshold, built in one pass.
pub struct Tables {
    pub(super) bins: usize,
    /// `[(image * 2 + group) * (bins + 1) + j]`: classes with bin >= j.
    pub(super) cnt: Vec<u16>,
    /// Same for true classes.
    pub(super) pos: Vec<u16>,
    /// Ratio grid: classes (and true classes) with `p / max` bin >= j.
    pub(super) qcnt: Vec<u16>,
    pub(super) qpos: Vec<u16>,
    /// `[(image * 3 + scope) * (L + 1) + k]`: true classes among the top k
    /// of culture (0), tag (1), all (2).
    pub(super) top: Vec<u16>,
    /// True classes per image and group.
    pub(super) truth: Vec<[u16; 2]>,
    pub(super) group_size: [u32; 2],
    /// Non-zero grid bins, for the per-class fit.
    pub(super) sparse: SparseBins,
}

/// The grid bins above 0 of every row (CSR, classes ascending): most
/// probabilities fall in bin 0, which no candidate threshold keeps.
pub struct SparseBins {
    pub(super) offsets: Vec<u64>,
    pub(super) class: Vec<u16>,
    pub(super) bin: Vec<u8>,
}

impl SparseBins {
    pub fn build(m: Matrix<'_>, bins: usize) -> SparseBins {
        let parts: Vec<(Vec<u32>, Vec<u16>, Vec<u8>)> = (0..m.rows())
            .collect::<Vec<_>>()
            .par_chunks(2048)
            .map(|chunk| {
                let (mut len, mut cls, mut bns) = (Vec::with_capacity(chunk.len()), Vec::new(), Vec::new());
                for &i in chunk {
                    let before = cls.len();
                    for (k, &p) in m.row(i).iter().enumerate() {
                        let bk = bin(p, bins);
                        if bk != 0 {
                            cls.push(k as u16);
                            bns.push(bk as u8);
                        }
                    }
                    len.push((cls.len() - before) as u32);
                }
                (len, cls, bns)
            })
            .collect();
        let nnz: usize = parts.iter().map(|p| p.1.len()).sum();
        let mut out = SparseBins { offsets: Vec::with_capacity(m.rows() + 1), class: Vec::with_capacity(nnz), bin: Vec::with_capacity(nnz) };
        out.offsets.push(0);
        for (len, cls, bns) in parts {
            for l in len {
                let last = *out.offsets.last().expect("offsets start with 0");
                out.offsets.push(last + l as u64);
            }
            out.class.extend_from_slice(&cls);
            out.bin.extend_from_slice(&bns);
        }
        out
    }

    pub(super) fn row(&self, i: usize) -> (&[u16], &[u8]) {
        let (a, b) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        (&self.class[a..b], &self.bin[a..b])
    }

    /// Stored (non-zero) entries.
    pub fn nnz(&self) -> usize {
        self.class.len()
    }
}

impl Tables {
    /// Builds the tables of every row of `m` against `truth`.
    ///
    /// # Panics
    /// When `truth` does not have one row per matrix row.
    pub fn build(m: Matrix<'_>, truth: &LabelSets, bins: usize) -> Tables {
        let n = m.rows();
        assert_eq!(truth.len(), n, "one truth row per probability row");
        let w = bins + 1;
        let mut t = Tables {
            bins,
            cnt: vec![0; n * 2 * w],
            pos: vec![0; n * 2 * w],
            qcnt: vec![0; n * w],
            qpos: vec![0; n * w],
            top: vec![0; n * 3 * (L + 1)],
            truth: vec![[0, 0]; n],
            sparse: SparseBins::build(m, bins),
            group_size: [
                m.group.iter().filter(|&&g| g == 0).count() as u32,
                m.group.iter().filter(|&&g| g == 1).count() as u32,
            ],
        };
        const CH: usize = 512;
        t.cnt
            .par_chunks_mut(CH * 2 * w)
            .zip(t.pos.par_chunks_mut(CH * 2 * w))
            .zip(t.qcnt.par_chunks_mut(CH * w))
            .zip(t.qpos.par_chunks_mut(CH * w))
            .zip(t.top.par_chunks_mut(CH * 3 * (L + 1)))
            .zip(t.truth.par_chunks_mut(CH))
            .enumerate()
            .for_each(|(ci, (((((cnt, pos), qcnt), qpos), top), tr))| {
                let mut bufs: [Vec<(f32, u16)>; 3] = [Vec::with_capacity(L + 1), Vec::with_capacity(L + 1), Vec::with_capacity(L + 1)];
                let mut is_true = vec![false; m.classes];
                for r in 0..tr.len() {
                    let i = ci * CH + r;
                    let row = m.row(i);
                    let labels = truth.row(i);
                    for &c in labels {
                        is_true[c as usize] = true;
                    }
                    let cnt = &mut cnt[r * 2 * w..(r + 1) * 2 * w];
                    let pos = &mut pos[r * 2 * w..(r + 1) * 2 * w];
                    let mut max = 0.0f32;
                    for (c, &p) in row.iter().enumerate() {
                        cnt[m.group[c] as usize * w + bin(p, bins)] += 1;
                        max = max.max(p);
                    }
                    for &c in labels {
                        pos[m.group[c as usize] as usize * w + bin(row[c as usize], bins)] += 1;
                        tr[r][m.group[c as usize] as usize] += 1;
                    }
                    let qcnt = &mut qcnt[r * w..(r + 1) * w];
                    let qpos = &mut qpos[r * w..(r + 1) * w];
                    let inv = if max > 0.0 { 1.0 / max } else { 0.0 };
                    for &p in row {
                        qcnt[bin(p * inv, bins)] += 1;
                    }
                    for &c in labels {
                        qpos[bin(row[c as usize] * inv, bins)] += 1;
                    }
                    for a in [cnt, pos, qcnt, qpos] {
                        for g in 0..a.len() / w {
                            let s = &mut a[g * w..(g + 1) * w];
                            for j in (0..bins).rev() {
                                s[j] += s[j + 1];
                            }
                        }
                    }
                    let top = &mut top[r * 3 * (L + 1)..(r + 1) * 3 * (L + 1)];
                    // Top L of culture, tag and all in one pass, each kept
                    // sorted by (p descending, class ascending).
                    for buf in bufs.iter_mut() {
                        buf.clear();
                    }
                    for (c, &p) in row.iter().enumerate() {
                        for scope in [m.group[c] as usize, 2] {
                            let buf = &mut bufs[scope];
                            if buf.len() < L || p > buf[buf.len() - 1].0 {
                                let at = buf.partition_point(|x| x.0 >= p);
                                buf.insert(at, (p, c as u16));
                                buf.truncate(L);
                            }
                        }
                    }
                    for (scope, buf) in bufs.iter().enumerate() {
                        let out = &mut top[scope * (L + 1)..(scope + 1) * (L + 1)];
                        let mut acc = 0u16;
                        for kk in 1..=L {
                            if kk <= buf.len() && is_true[buf[kk - 1].1 as usize] {
                                acc += 1;
                            }
                            out[kk] = acc;
                        }
                    }
                    for &c in labels {
                        is_true[c as usize] = false;
                    }
                }
            });
        t
    }

    pub(super) fn w(&self) -> usize {
        self.bins + 1
    }

    /// (count, true count) of group `g` of image `i` at grid `j`, after the
    /// group's limits.
    #[inline]
    pub(super) fn group_at(&self, i: usize, g: usize, j: usize, range: Option<Range>) -> (u32, u32) {
        let o = (i * 2 + g) * self.w() + j;
        let (k, tp) = (self.cnt[o] as u32, self.pos[o] as u32);
        match range {
            None => (k, tp),
            Some(r) => {
                let kk = r.clamp(k).min(self.group_size[g]);
                if kk == k {
                    (k, tp)
                } else {
                    (kk, self.top_pos(i, g, kk))
                }
            }
        }
    }

    #[inline]
    pub(super) fn top_pos(&self, i: usize, scope: usize, k: u32) -> u32 {
        self.top[(i * 3 + scope) * (L + 1) + (k as usize).min(L)] as u32
    }

    #[inline]
    pub(super) fn truth_count(&self, i: usize) -> u32 {
        (self.truth[i][0] + self.truth[i][1]) as u32
    }

    /// F2 of image `i` with `k` labels of which `tp` true, after the overall
    /// limits (exact when the selection is a top-k set, as for global and
    /// ratio rules; approximate otherwise).
    #[inline]
    pub(super) fn score_total(&self, i: usize, k: u32, tp: u32, total: Range) -> f64 {
        let kk = total.clamp(k);
        let tp = if kk == k {
            tp
        } else if k == 0 || kk < k {
            self.top_pos(i, 2, kk)
        } else {
            tp // missing labels filled: assume they are wrong (pessimistic)
        };
        f2_counts(tp, self.truth_count(i), kk)
    }

    pub(super) fn pair_score(&self, i: usize, jc: usize, jt: usize, limits: &Limits) -> f64 {
        let (kc, tc) = self.group_at(i, 0, jc, limits.culture);
        let (kt, tt) = self.group_at(i, 1, jt, limits.tag);
        self.score_total(i, kc + kt, tc + tt, limits.total)
    }

    /// Sum over `rows` of `score(i, j)` for every grid index `j`.
    pub(super) fn sweep(&self, rows: &[u32], score: impl Fn(usize, usize) -> f64 + Sync) -> Vec<f64> {
        let w = self.w();
        rows.par_chunks(1024)
            .fold(
                || vec![0.0f64; w],
                |mut acc, chunk| {
                    for &i in chunk {
                        for (j, a) in acc.iter_mut().enumerate() {
                            *a += score(i as usize, j);
                        }
                    }
                    acc
                },
            )
            .reduce(|| vec![0.0; w], |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            })
    }
}

