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

use super::metric::{f2_counts, f2_samples, LabelSets};
use crate::data::Group;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Largest label-count limit the fitting tables track exactly.
pub const MAX_LIMIT: u32 = 32;
const L: usize = MAX_LIMIT as usize;

/// An inclusive range of labels per image; `max = None` is unbounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    pub min: u32,
    #[serde(default)]
    pub max: Option<u32>,
}

impl Range {
    pub const ANY: Range = Range { min: 0, max: None };

    fn clamp(self, k: u32) -> u32 {
        let k = k.max(self.min);
        match self.max {
            Some(m) => k.min(m),
            None => k,
        }
    }
}

/// Label-count limits applied after thresholding: per group first, then
/// overall. Missing labels are filled with the highest-scoring classes of
/// the scope; extra ones drop the lowest-scoring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub total: Range,
    #[serde(default)]
    pub culture: Option<Range>,
    #[serde(default)]
    pub tag: Option<Range>,
}

impl Limits {
    pub fn total(total: Range) -> Limits {
        Limits { total, culture: None, tag: None }
    }

    fn group(&self, g: usize) -> Option<Range> {
        if g == 0 {
            self.culture
        } else {
            self.tag
        }
    }
}

/// How a threshold is chosen for each class of an image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// Keep classes with `p >= threshold`.
    Global { threshold: f32 },
    /// One threshold for culture classes, one for tags.
    Group { culture: f32, tag: f32 },
    /// One threshold per class, in class order.
    Class { thresholds: Vec<f32> },
    /// Keep classes with `p >= max(p) / ratio` within the image.
    Ratio { ratio: f32 },
    /// A global threshold chosen on each matrix so that images get
    /// `mean_labels` labels on average (before limits).
    TargetCount { mean_labels: f64 },
}

/// A named rule with its limits: what `thresholds.json` stores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Strategy {
    pub name: String,
    pub rule: Rule,
    pub limits: Limits,
}

/// The strategies `ensemble` can fit (spec `[ensemble] strategies`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    Global,
    Group,
    GroupLimits,
    Class,
    ClassLimits,
    Ratio,
    RatioDefault,
    TargetCount,
}

impl StrategyKind {
    pub const ALL: [StrategyKind; 8] = [
        StrategyKind::Global,
        StrategyKind::Group,
        StrategyKind::GroupLimits,
        StrategyKind::Class,
        StrategyKind::ClassLimits,
        StrategyKind::Ratio,
        StrategyKind::RatioDefault,
        StrategyKind::TargetCount,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::Global => "global",
            StrategyKind::Group => "group",
            StrategyKind::GroupLimits => "group_limits",
            StrategyKind::Class => "class",
            StrategyKind::ClassLimits => "class_limits",
            StrategyKind::Ratio => "ratio",
            StrategyKind::RatioDefault => "ratio_default",
            StrategyKind::TargetCount => "target_count",
        }
    }
}

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
fn bin(p: f32, bins: usize) -> usize {
    ((p * bins as f32) as usize).min(bins)
}

fn grid(j: usize, bins: usize) -> f32 {
    j as f32 / bins as f32
}

// ---------------------------------------------------------------------------
// Applying

enum RowThreshold<'a> {
    Same(f32),
    Group([f32; 2]),
    Class(&'a [f32]),
}

/// Applies `strategy` to the listed rows of `m` (all rows when `rows` is
/// `None`), returning each row's sorted classes in `rows` order.
///
/// # Shapes
/// `m.probs`: `[rows, classes]` -> one label set per selected row.
pub fn apply(strategy: &Strategy, m: Matrix<'_>, rows: Option<&[u32]>) -> LabelSets {
    let all: Vec<u32>;
    let rows = match rows {
        Some(r) => r,
        None => {
            all = (0..m.rows() as u32).collect();
            &all
        }
    };
    let target_t = match &strategy.rule {
        Rule::TargetCount { mean_labels } => Some(count_threshold(m, rows, *mean_labels)),
        _ => None,
    };
    let parts: Vec<LabelSets> = rows
        .par_chunks(2048)
        .map(|chunk| {
            let mut out = LabelSets::new(m.classes);
            let mut sel: Vec<u16> = Vec::new();
            let mut order: Vec<(f32, u16)> = Vec::new();
            for &i in chunk {
                let row = m.row(i as usize);
                let thr = match &strategy.rule {
                    Rule::Global { threshold } => RowThreshold::Same(*threshold),
                    Rule::Group { culture, tag } => RowThreshold::Group([*culture, *tag]),
                    Rule::Class { thresholds } => RowThreshold::Class(thresholds),
                    Rule::Ratio { ratio } => {
                        let max = row.iter().copied().fold(0.0f32, f32::max);
                        RowThreshold::Same(if max > 0.0 { max / ratio } else { f32::INFINITY })
                    }
                    Rule::TargetCount { .. } => RowThreshold::Same(target_t.unwrap_or(f32::INFINITY)),
                };
                select_row(row, &thr, m.group, &strategy.limits, &mut sel, &mut order);
                out.push_sorted(&sel);
            }
            out
        })
        .collect();
    LabelSets::concat(m.classes, parts)
}

fn select_row(row: &[f32], thr: &RowThreshold<'_>, group: &[u8], limits: &Limits, sel: &mut Vec<u16>, order: &mut Vec<(f32, u16)>) {
    sel.clear();
    for (c, &p) in row.iter().enumerate() {
        let t = match thr {
            RowThreshold::Same(t) => *t,
            RowThreshold::Group(ts) => ts[group[c] as usize],
            RowThreshold::Class(ts) => ts[c],
        };
        if p >= t {
            sel.push(c as u16);
        }
    }
    for g in 0..2u8 {
        if let Some(r) = limits.group(g as usize) {
            enforce(row, sel, order, r, |c| group[c] == g);
        }
    }
    enforce(row, sel, order, limits.total, |_| true);
    sel.sort_unstable();
}

/// Brings the number of selected classes in scope into `range`.
fn enforce(row: &[f32], sel: &mut Vec<u16>, order: &mut Vec<(f32, u16)>, range: Range, in_scope: impl Fn(usize) -> bool) {
    if range == Range::ANY {
        return;
    }
    let k = sel.iter().filter(|&&c| in_scope(c as usize)).count() as u32;
    let by_score = |a: &(f32, u16), b: &(f32, u16)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if k < range.min {
        // Add the best unselected classes of the scope.
        sel.sort_unstable();
        order.clear();
        for (c, &p) in row.iter().enumerate() {
            if in_scope(c) && sel.binary_search(&(c as u16)).is_err() {
                order.push((p, c as u16));
            }
        }
        let need = ((range.min - k) as usize).min(order.len());
        if need > 0 && need < order.len() {
            order.select_nth_unstable_by(need - 1, by_score);
        }
        sel.extend(order[..need].iter().map(|&(_, c)| c));
    } else if let Some(max) = range.max {
        if k > max {
            order.clear();
            order.extend(sel.iter().filter(|&&c| in_scope(c as usize)).map(|&c| (row[c as usize], c)));
            order.sort_unstable_by(by_score);
            let drop: Vec<u16> = order[max as usize..].iter().map(|&(_, c)| c).collect();
            sel.retain(|c| !drop.contains(c));
        }
    }
}

/// The threshold at which the listed rows get `mean_labels` labels on
/// average (a 65,536-bin histogram of the probabilities).
pub fn count_threshold(m: Matrix<'_>, rows: &[u32], mean_labels: f64) -> f32 {
    const H: usize = 1 << 16;
    let hist = rows
        .par_chunks(1024)
        .fold(
            || vec![0u64; H + 1],
            |mut h, chunk| {
                for &i in chunk {
                    for &p in m.row(i as usize) {
                        h[((p * H as f32) as usize).min(H)] += 1;
                    }
                }
                h
            },
        )
        .reduce(|| vec![0u64; H + 1], |mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
            a
        });
    let target = (mean_labels * rows.len() as f64).round().max(0.0) as u64;
    let mut cum = 0u64;
    for b in (0..=H).rev() {
        cum += hist[b];
        if cum >= target {
            return b as f32 / H as f32;
        }
    }
    0.0
}

// ---------------------------------------------------------------------------
// Fitting tables

/// Per-image counts above every grid threshold, built in one pass.
pub struct Tables {
    bins: usize,
    /// `[(image * 2 + group) * (bins + 1) + j]`: classes with bin >= j.
    cnt: Vec<u16>,
    /// Same for true classes.
    pos: Vec<u16>,
    /// Ratio grid: classes (and true classes) with `p / max` bin >= j.
    qcnt: Vec<u16>,
    qpos: Vec<u16>,
    /// `[(image * 3 + scope) * (L + 1) + k]`: true classes among the top k
    /// of culture (0), tag (1), all (2).
    top: Vec<u16>,
    /// True classes per image and group.
    truth: Vec<[u16; 2]>,
    group_size: [u32; 2],
    /// Non-zero grid bins, for the per-class fit.
    sparse: SparseBins,
}

/// The grid bins above 0 of every row (CSR, classes ascending): most
/// probabilities fall in bin 0, which no candidate threshold keeps.
pub struct SparseBins {
    offsets: Vec<u64>,
    class: Vec<u16>,
    bin: Vec<u8>,
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

    fn row(&self, i: usize) -> (&[u16], &[u8]) {
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

    fn w(&self) -> usize {
        self.bins + 1
    }

    /// (count, true count) of group `g` of image `i` at grid `j`, after the
    /// group's limits.
    #[inline]
    fn group_at(&self, i: usize, g: usize, j: usize, range: Option<Range>) -> (u32, u32) {
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
    fn top_pos(&self, i: usize, scope: usize, k: u32) -> u32 {
        self.top[(i * 3 + scope) * (L + 1) + (k as usize).min(L)] as u32
    }

    #[inline]
    fn truth_count(&self, i: usize) -> u32 {
        (self.truth[i][0] + self.truth[i][1]) as u32
    }

    /// F2 of image `i` with `k` labels of which `tp` true, after the overall
    /// limits (exact when the selection is a top-k set, as for global and
    /// ratio rules; approximate otherwise).
    #[inline]
    fn score_total(&self, i: usize, k: u32, tp: u32, total: Range) -> f64 {
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

    fn pair_score(&self, i: usize, jc: usize, jt: usize, limits: &Limits) -> f64 {
        let (kc, tc) = self.group_at(i, 0, jc, limits.culture);
        let (kt, tt) = self.group_at(i, 1, jt, limits.tag);
        self.score_total(i, kc + kt, tc + tt, limits.total)
    }

    /// Sum over `rows` of `score(i, j)` for every grid index `j`.
    fn sweep(&self, rows: &[u32], score: impl Fn(usize, usize) -> f64 + Sync) -> Vec<f64> {
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

/// First index of the largest value among `j >= 1`.
fn argmax_from_1(obj: &[f64]) -> usize {
    let mut best = 1;
    for j in 1..obj.len() {
        if obj[j] > obj[best] {
            best = j;
        }
    }
    best
}

// ---------------------------------------------------------------------------
// Fitting rules

/// The best global grid threshold on `rows` under `limits`.
fn fit_global_j(t: &Tables, rows: &[u32], limits: &Limits) -> usize {
    argmax_from_1(&t.sweep(rows, |i, j| t.pair_score(i, j, j, limits)))
}

/// Culture and tag grid thresholds by coordinate ascent from the global one.
fn fit_group_j(t: &Tables, rows: &[u32], limits: &Limits) -> (usize, usize) {
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

fn fit_ratio_j(t: &Tables, rows: &[u32], total: Range) -> usize {
    let w = t.w();
    argmax_from_1(&t.sweep(rows, |i, j| {
        let (k, tp) = (t.qcnt[i * w + j] as u32, t.qpos[i * w + j] as u32);
        t.score_total(i, k, tp, total)
    }))
}

/// One pass of the per-class fit at grid thresholds `j`: the objective
/// (sum of F2 over `rows`) and, per class and bin, the F2 gained by
/// predicting the class for the images in that bin, others held fixed.
fn class_pass(m: Matrix<'_>, truth: &LabelSets, sp: &SparseBins, rows: &[u32], j: &[usize], b: usize) -> (f64, Vec<f64>) {
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
fn best_class_j(h: &[f64], b: usize) -> usize {
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
fn fit_class_j(m: Matrix<'_>, truth: &LabelSets, sp: &SparseBins, rows: &[u32], start: [usize; 2], cfg: &FitConfig) -> Vec<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;
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
