//! `runs/{exp}/ensemble/report.json` and `thresholds.json`: every
//! strategy's in-sample and cross-validated F2, the chosen one, the scores
//! of the chosen thresholds on OOF (per image, micro, macro, per group, per
//! class) and label-count statistics. Builds the documents; `ensemble::run`
//! stores them.

use super::blend::BlendKind;
use super::metric::{self, group_scores, LabelSets, Prf, Prf3};
use super::threshold::{Evaluated, Rule, Strategy};
use crate::data::Vocabulary;
use crate::ids::Group;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the `thresholds.json` layout (schemas/thresholds.schema.json).
pub const THRESHOLDS_VERSION: u32 = 1;

/// `thresholds.json`: everything needed to turn a blend into labels.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThresholdsFile {
    pub version: u32,
    pub experiment: String,
    pub spec_hash: String,
    pub class_count: usize,
    pub vocabulary_hash: String,
    pub blend: BlendInfo,
    /// The strategy used for the submission (best cross-validated F2).
    pub chosen: Strategy,
    pub cv_f2: f64,
    /// Every fitted strategy, in spec order.
    pub strategies: Vec<Strategy>,
}

/// How members were blended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlendInfo {
    pub kind: BlendKind,
    pub normalize_max: bool,
    pub members: Vec<String>,
    /// Weight of each member (equal unless `kind` is `weighted`).
    pub weights: Vec<f32>,
    /// Folds whose test predictions were averaged.
    pub test_folds: Vec<u8>,
}

/// One member's own OOF quality.
#[derive(Clone, Debug, Serialize)]
pub struct MemberReport {
    pub model: String,
    pub weight: f32,
    /// F2 of this member alone at its best global threshold.
    pub oof_f2: f64,
    pub threshold: f32,
}

/// One class's OOF scores under the chosen strategy.
#[derive(Clone, Debug, Serialize)]
pub struct ClassReport {
    pub id: u16,
    pub name: String,
    pub group: Group,
    pub support: u32,
    pub predicted: u32,
    pub tp: u32,
    pub f2: f64,
    pub precision: f64,
    pub recall: f64,
}

/// Labels-per-image statistics.
#[derive(Clone, Debug, Serialize)]
pub struct LabelCounts {
    pub true_mean: f64,
    pub oof_predicted_mean: f64,
    pub test_predicted_mean: f64,
    /// `hist[k]`: images with k labels.
    pub true_hist: Vec<u64>,
    pub oof_predicted_hist: Vec<u64>,
    pub test_predicted_hist: Vec<u64>,
}

/// Averages of the chosen strategy on OOF.
#[derive(Clone, Debug, Serialize)]
pub struct ChosenScores {
    pub samples: Prf,
    pub micro: Prf,
    #[serde(rename = "macro")]
    pub macro_: Prf,
    pub culture: Prf3,
    pub tag: Prf3,
}

/// `report.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub experiment: String,
    pub spec_hash: String,
    pub train_images: usize,
    /// Training images some member predicts (every one unless members
    /// train on fold subsets): what the thresholds are fitted on.
    pub covered_images: usize,
    pub test_images: usize,
    pub members: Vec<MemberReport>,
    pub blend: BlendInfo,
    /// F2 of the blend at its best global threshold (before strategies).
    pub blend_oof_f2: f64,
    pub strategies: Vec<Evaluated>,
    pub chosen: String,
    pub scores: ChosenScores,
    pub label_counts: LabelCounts,
    pub per_class: Vec<ClassReport>,
    /// Wall seconds per stage.
    pub seconds: BTreeMap<String, f64>,
    /// Subsample F2 of the fitted blend weights (weighted blends).
    pub weights_f2: Option<f64>,
    /// Peak resident memory of the job, MiB (Linux).
    pub peak_rss_mib: f64,
}

/// Images per label count.
pub fn histogram(sets: &LabelSets) -> Vec<u64> {
    let mut h = Vec::new();
    for i in 0..sets.len() {
        let k = sets.row(i).len();
        if h.len() <= k {
            h.resize(k + 1, 0);
        }
        h[k] += 1;
    }
    h
}

/// Scores of `pred` against `truth` for the report.
pub fn chosen_scores(truth: &LabelSets, pred: &LabelSets, vocab: &Vocabulary) -> (ChosenScores, Vec<ClassReport>) {
    let s = metric::scores(truth, pred, 2.0, 0.0);
    let groups = vocab.groups();
    let per_class = s
        .per_class
        .iter()
        .enumerate()
        .map(|(k, c)| ClassReport {
            id: k as u16,
            name: vocab.names()[k].clone(),
            group: groups[k],
            support: c.support,
            predicted: c.predicted,
            tp: c.tp,
            f2: c.f,
            precision: c.precision,
            recall: c.recall,
        })
        .collect();
    let scores = ChosenScores {
        samples: s.samples,
        micro: s.micro,
        macro_: s.macro_,
        culture: group_scores(truth, pred, groups, Group::Culture, 2.0),
        tag: group_scores(truth, pred, groups, Group::Tag, 2.0),
    };
    (scores, per_class)
}

/// The culture and tag thresholds a strategy implies for the F2 curves
/// (the mean class threshold for per-class rules; none for image-relative rules).
pub fn group_thresholds(s: &Strategy, groups: &[Group]) -> Option<[f32; 2]> {
    match &s.rule {
        Rule::Global { threshold } => Some([*threshold, *threshold]),
        Rule::Group { culture, tag } => Some([*culture, *tag]),
        Rule::Class { thresholds } => {
            let mean = |g: Group| {
                let v: Vec<f32> = thresholds.iter().zip(groups).filter(|(_, gg)| **gg == g).map(|(t, _)| *t).collect();
                v.iter().sum::<f32>() / v.len().max(1) as f32
            };
            Some([mean(Group::Culture), mean(Group::Tag)])
        }
        Rule::Ratio { .. } | Rule::TargetCount { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_images_per_label_count() {
        let s = LabelSets::from_rows(5, [vec![0u16, 1], vec![], vec![2, 3]]);
        assert_eq!(histogram(&s), vec![1, 0, 2]);
    }
}
