//! The ensemble's configuration (`[ensemble]` of a spec): members, blend,
//! threshold strategies and their limits, and the thresholding settings
//! derived from them.

use super::blend::BlendKind;
use super::threshold::{FitConfig, Range, StrategyKind, MAX_LIMIT};
use serde::{Deserialize, Serialize};

/// The ensemble: which models to blend, how, and how to threshold.
/// Every member's folds come from `[folds] k`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
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
    /// A second-level model over the members' out-of-fold predictions
    /// (R2 stage 5): gradient-boosted trees on (image, class) pairs, one
    /// model per fold, whose predictions the ensemble then thresholds in
    /// place of the members' blend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level2: Option<crate::level2::Level2Config>,
    /// k-NN "tag relevance" over embeddings added to the blend (4th place).
    /// Not built yet: refused by validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_tag_relevance: Option<KnnTagRelevance>,
    /// Refused: each model's own `folds` (`[[models]] folds = ["0-9"]`)
    /// says which folds it trains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_folds: Option<std::collections::BTreeMap<String, Vec<u8>>>,
    /// Per-group blends: take the columns of a group (`culture`, `tag`)
    /// from another stage's blend instead of this one's (R2 and R3 trust
    /// tags more than cultures; R2 fine-tunes a tags-only stage).
    #[serde(default, skip_serializing_if = "GroupSources::is_empty")]
    pub groups: GroupSources,
}

/// Which stage's blend supplies each group's columns (this stage's own
/// when unset).
///
/// ```toml
/// groups = { culture = "main" }   # cultures from the first stage, tags from this one
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub culture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl GroupSources {
    pub fn is_empty(&self) -> bool {
        self.culture.is_none() && self.tag.is_none()
    }

    /// `(group, stage)` of every group taken from another stage.
    pub fn sources(&self) -> Vec<(crate::ids::Group, &str)> {
        let mut out = Vec::new();
        if let Some(s) = &self.culture {
            out.push((crate::ids::Group::Culture, s.as_str()));
        }
        if let Some(s) = &self.tag {
            out.push((crate::ids::Group::Tag, s.as_str()));
        }
        out
    }
}

/// k-NN tag relevance: neighbours' labels, weighted by similarity, added
/// to the blended tag probabilities.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
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
            return Err("`ensemble.member_folds`: set each member's folds in its own table instead (`[[models]] folds = [\"0-9\"]`)".into());
        }
        if let Some(l2) = &self.level2 {
            l2.validate(Some(1103)).map_err(|bad| bad.join("; ").replace("`level2.", "`ensemble.level2."))?;
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
    /// Checks `groups` of the ensemble of stage `stage`: each names one of
    /// the `earlier` stages (`main` first), and not both groups come from
    /// elsewhere.
    pub fn validate_groups(&self, earlier: &[&str], stage: &str) -> Result<(), String> {
        let at = if stage == crate::ids::MAIN_STAGE { "`ensemble.groups`".to_string() } else { format!("`stages[{stage}].ensemble.groups`") };
        if self.groups.culture.is_some() && self.groups.tag.is_some() {
            return Err(format!("{at}: both groups come from other stages; take that stage's ensemble instead"));
        }
        for (g, s) in self.groups.sources() {
            if s == stage {
                return Err(format!("{at}.{}: names this stage itself; leave it out", g.as_str()));
            }
            if !earlier.contains(&s) {
                return Err(format!("{at}.{} = {s:?}: must name an earlier stage ({})", g.as_str(), if earlier.is_empty() { "the first stage has none".to_string() } else { earlier.join(", ") }));
            }
        }
        Ok(())
    }

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
