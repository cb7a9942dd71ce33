//! The ensemble's configuration (`[ensemble]` of a spec): members, blend,
//! threshold strategies and their limits, and the thresholding settings
//! derived from them.

use super::blend::BlendKind;
use super::threshold::{FitConfig, Range, StrategyKind, MAX_LIMIT};
use serde::{Deserialize, Serialize};

/// The ensemble: which models to blend, how, and how to threshold.
/// Every member's folds come from `[folds] k`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleSection {
    /// Model names (`runs/{experiment}/models/{model}/`) to blend.
    pub members: Vec<String>,
    /// `mean`, `weighted` (weights fitted on OOF F2), `rank` or `geometric`.
    #[serde(default = "defaults::blend")]
    pub blend: BlendKind,
    /// Divide each image's blended probabilities by their maximum (R1).
    #[serde(default)]
    pub normalize_max: bool,
    /// Folds whose test predictions are averaged (R1 uses 9 of 10); all when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_folds: Option<Vec<u8>>,
    /// Threshold strategies to fit; the best cross-validated one is used.
    #[serde(default = "defaults::strategies")]
    pub strategies: Vec<StrategyKind>,
    /// Candidate thresholds are `j / threshold_bins`.
    #[serde(default = "defaults::threshold_bins")]
    pub threshold_bins: usize,
    /// Labels per image, overall: `[min, max]` (max 0 = unbounded).
    #[serde(default = "defaults::total_labels")]
    pub labels: [u32; 2],
    /// Culture labels per image for the `*_limits` strategies (R2: 0-3).
    #[serde(default = "defaults::culture_labels")]
    pub culture_labels: [u32; 2],
    /// Tag labels per image for the `*_limits` strategies (R2: 1-8).
    #[serde(default = "defaults::tag_labels")]
    pub tag_labels: [u32; 2],
    /// Pseudo-count shrinking per-class thresholds to their group's.
    #[serde(default = "defaults::class_shrink")]
    pub class_shrink: f64,
    /// `r` of the `ratio_default` strategy (keep `p >= max / r`, R4: 7).
    #[serde(default = "defaults::ratio")]
    pub ratio: f32,
    /// Most labels per image of the ratio strategies (R4: 10).
    #[serde(default = "defaults::ratio_max_labels")]
    pub ratio_max_labels: u32,
    /// Mean labels per image the `target_count` strategy aims for on test;
    /// unset: the global strategy's mean count on OOF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_label_count: Option<f64>,
    /// OOF rows used to fit blend weights (held quantised to bytes).
    #[serde(default = "defaults::weight_rows")]
    pub weight_rows: usize,
    /// A second-level model over the members' predictions (R2 stage 5,
    /// LightGBM stacking). Not built yet: refused by validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level2: Option<Level2Spec>,
    /// k-NN "tag relevance" over embeddings added to the blend (4th place).
    /// Not built yet: refused by validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_tag_relevance: Option<KnnTagRelevance>,
    /// Folds each member is trained on when not all of `folds.k` (R4: 10,
    /// 5 and 5 fold-models of a 40-fold split). Not built yet: refused by
    /// validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_folds: Option<std::collections::BTreeMap<String, Vec<u8>>>,
}

/// A second-level (stacking) model fitted on OOF predictions.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Level2Spec {
    /// `pair_classifier`: a binary classifier on (image, class) rows with
    /// the members' probabilities as features (R2); `lightgbm`: gradient
    /// boosted trees on the same rows.
    pub kind: Level2Kind,
    /// Extra per-row features, e.g. `"class_frequency"`, `"rank_in_image"`.
    #[serde(default)]
    pub features: Vec<String>,
}

/// The model family of a second-level model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level2Kind {
    PairClassifier,
    Lightgbm,
}

/// k-NN tag relevance: neighbours' labels, weighted by similarity, added
/// to the blended tag probabilities.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KnnTagRelevance {
    pub k: usize,
    /// Weight of the neighbours' vote in the sum.
    pub weight: f64,
}

impl EnsembleSection {
    /// Range checks; `k` is the spec's fold count. Messages name the
    /// field as `ensemble.field`.
    pub fn validate(&self, k: u8) -> std::result::Result<(), String> {
        if self.members.is_empty() {
            return Err("`ensemble.members` is empty: name at least one model".into());
        }
        let mut seen = std::collections::HashSet::new();
        for m in &self.members {
            let ok = !m.is_empty() && m.len() <= 64 && m.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) && !m.starts_with('.');
            if !ok {
                return Err(format!("`ensemble.members` entry {m:?}: use 1-64 characters from a-z, A-Z, 0-9, '-', '_', '.'"));
            }
            if !seen.insert(m) {
                return Err(format!("`ensemble.members` lists {m:?} twice"));
            }
        }
        if let Some(tf) = &self.test_folds {
            if tf.is_empty() {
                return Err("`ensemble.test_folds` is empty: leave it out to use every fold".into());
            }
            if let Some(f) = tf.iter().find(|&&f| f >= k) {
                return Err(format!("`ensemble.test_folds` has fold {f} but `folds.k` = {k}"));
            }
        }
        if self.strategies.is_empty() {
            return Err("`ensemble.strategies` is empty: leave it out to fit every strategy".into());
        }
        if !(2..=250).contains(&self.threshold_bins) {
            return Err(format!("`ensemble.threshold_bins` = {}: must be between 2 and 250", self.threshold_bins));
        }
        let lim = MAX_LIMIT;
        for (name, [lo, hi]) in [("labels", self.labels), ("culture_labels", self.culture_labels), ("tag_labels", self.tag_labels)] {
            if lo > lim || hi > lim || (hi != 0 && hi < lo) {
                return Err(format!("`ensemble.{name}` = [{lo}, {hi}]: need min <= max <= {lim} (max 0 = unbounded)"));
            }
        }
        if !(self.class_shrink >= 0.0) {
            return Err(format!("`ensemble.class_shrink` = {}: must be >= 0", self.class_shrink));
        }
        if !(self.ratio > 1.0) {
            return Err(format!("`ensemble.ratio` = {}: must be above 1", self.ratio));
        }
        if self.ratio_max_labels == 0 || self.ratio_max_labels > lim {
            return Err(format!("`ensemble.ratio_max_labels` = {}: must be 1 to {lim}", self.ratio_max_labels));
        }
        if let Some(t) = self.target_label_count {
            if !(t > 0.0 && t < 1103.0) {
                return Err(format!("`ensemble.target_label_count` = {t}: must be positive"));
            }
        }
        if self.weight_rows < 10 {
            return Err(format!("`ensemble.weight_rows` = {}: use at least 10", self.weight_rows));
        }
        if self.member_folds.is_some() {
            return Err("`ensemble.member_folds`: not supported yet: training a member on a subset of the folds".into());
        }
        if self.level2.is_some() {
            return Err("`ensemble.level2`: not supported yet: a second-level model over the members' predictions".into());
        }
        if self.knn_tag_relevance.is_some() {
            return Err("`ensemble.knn_tag_relevance`: not supported yet: k-NN tag relevance over embeddings".into());
        }
        Ok(())
    }
}

mod defaults {
    use super::{BlendKind, StrategyKind};
    pub fn blend() -> BlendKind {
        BlendKind::Mean
    }
    pub fn strategies() -> Vec<StrategyKind> {
        StrategyKind::ALL.to_vec()
    }
    pub fn threshold_bins() -> usize {
        100
    }
    pub fn total_labels() -> [u32; 2] {
        [1, 0]
    }
    pub fn culture_labels() -> [u32; 2] {
        [0, 3]
    }
    pub fn tag_labels() -> [u32; 2] {
        [1, 8]
    }
    pub fn class_shrink() -> f64 {
        20.0
    }
    pub fn ratio() -> f32 {
        7.0
    }
    pub fn ratio_max_labels() -> u32 {
        10
    }
    pub fn weight_rows() -> usize {
        20_000
    }
}

impl EnsembleSection {
    /// The thresholding settings of this section.
    pub fn fit_config(&self) -> FitConfig {
        let range = |[lo, hi]: [u32; 2]| Range { min: lo, max: if hi == 0 { None } else { Some(hi) } };
        FitConfig {
            bins: self.threshold_bins,
            total: range(self.labels),
            culture: range(self.culture_labels),
            tag: range(self.tag_labels),
            class_shrink: self.class_shrink,
            class_rounds: 3,
            ratio_default: self.ratio,
            ratio_max_labels: self.ratio_max_labels,
            target_label_count: self.target_label_count,
            kinds: self.strategies.clone(),
        }
    }
}
