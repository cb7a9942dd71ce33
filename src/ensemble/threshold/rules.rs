//! Threshold rules: what a fitted strategy is (a global, per-group,
//! per-class, ratio or target-count rule with label-count limits) and how it
//! turns a probability matrix into label sets.

use super::Matrix;
use crate::ensemble::metric::LabelSets;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};


/// Largest label-count limit the fitting tables track exactly.
pub const MAX_LIMIT: u32 = 32;
pub(super) const L: usize = MAX_LIMIT as usize;

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

    pub(super) fn clamp(self, k: u32) -> u32 {
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

    pub(super) fn group(&self, g: usize) -> Option<Range> {
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
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


pub(super) enum RowThreshold<'a> {
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

pub(super) fn select_row(row: &[f32], thr: &RowThreshold<'_>, group: &[u8], limits: &Limits, sel: &mut Vec<u16>, order: &mut Vec<(f32, u16)>) {
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
pub(super) fn enforce(row: &[f32], sel: &mut Vec<u16>, order: &mut Vec<(f32, u16)>, range: Range, in_scope: impl Fn(usize) -> bool) {
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

