//! Settings of the second-level (stacking) model: candidate pruning, the
//! co-occurrence feature and the gradient-boosted trees. A plain serde
//! struct with defaults, meant to become the spec's `[ensemble.level2]`
//! table; [`Level2Config::validate`] names each bad field as
//! `level2.<field>`. Reads and writes nothing.

use serde::{Deserialize, Serialize};

/// Everything [`super::fit_predict`] needs besides the data.
///
/// ```toml
/// [ensemble.level2]
/// top_k = 30            # candidate classes per image (by the blend)
/// cooc_top_m = 5        # other top classes of the image the co-occurrence score looks at
/// rounds = 400
/// learning_rate = 0.05
/// num_leaves = 63
/// seed = 2019
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Level2Config {
    /// Candidate classes kept per image: its `top_k` highest by the blend.
    /// Pairs outside get probability 0 in the output.
    #[serde(default = "defaults::top_k")]
    pub top_k: usize,
    /// Probability cut-offs of the `img_n_ge_*` features: how many classes
    /// of the image reach each one (by the blend), in (0, 1].
    #[serde(default = "defaults::count_cutoffs")]
    pub count_cutoffs: Vec<f32>,
    /// The co-occurrence score of class `c` looks at the image's `cooc_top_m`
    /// highest classes other than `c` (by the blend).
    #[serde(default = "defaults::cooc_top_m")]
    pub cooc_top_m: usize,
    /// Boosting rounds (trees) of each fold's model.
    #[serde(default = "defaults::rounds")]
    pub rounds: usize,
    /// Shrinkage of each tree, in (0, 1].
    #[serde(default = "defaults::learning_rate")]
    pub learning_rate: f64,
    /// Leaves per tree, at least 2.
    #[serde(default = "defaults::num_leaves")]
    pub num_leaves: usize,
    /// Depth limit of each tree; 0 means unlimited (leaf-wise growth bounded
    /// by `num_leaves`).
    #[serde(default)]
    pub max_depth: usize,
    /// Fewest training pairs in a leaf.
    #[serde(default = "defaults::min_data_in_leaf")]
    pub min_data_in_leaf: usize,
    /// Fraction of features each tree may use, in (0, 1].
    #[serde(default = "defaults::one")]
    pub feature_fraction: f64,
    /// Fraction of pairs each tree sees (bagging, redrawn every round), in (0, 1].
    #[serde(default = "defaults::one")]
    pub bagging_fraction: f64,
    /// L2 penalty on leaf values, >= 0.
    #[serde(default)]
    pub lambda_l2: f64,
    /// Seed of every random choice (bagging, feature sampling).
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// Fold models trained at the same time (each single-threaded); 0 uses
    /// rayon's thread count.
    #[serde(default)]
    pub parallel_folds: usize,
}

impl Default for Level2Config {
    fn default() -> Self {
        Level2Config {
            top_k: defaults::top_k(),
            count_cutoffs: defaults::count_cutoffs(),
            cooc_top_m: defaults::cooc_top_m(),
            rounds: defaults::rounds(),
            learning_rate: defaults::learning_rate(),
            num_leaves: defaults::num_leaves(),
            max_depth: 0,
            min_data_in_leaf: defaults::min_data_in_leaf(),
            feature_fraction: 1.0,
            bagging_fraction: 1.0,
            lambda_l2: 0.0,
            seed: defaults::seed(),
            parallel_folds: 0,
        }
    }
}

mod defaults {
    pub fn top_k() -> usize {
        30
    }
    pub fn count_cutoffs() -> Vec<f32> {
        vec![0.1, 0.2, 0.3, 0.5]
    }
    pub fn cooc_top_m() -> usize {
        5
    }
    pub fn rounds() -> usize {
        300
    }
    pub fn learning_rate() -> f64 {
        0.05
    }
    pub fn num_leaves() -> usize {
        63
    }
    pub fn min_data_in_leaf() -> usize {
        100
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn seed() -> u64 {
        2019
    }
}

impl Level2Config {
    /// Checks ranges; every message names its field as `level2.<field>` and
    /// the accepted values. `classes` is the vocabulary size, when known,
    /// which bounds `top_k`.
    ///
    /// # Errors
    /// All problems found, one message each.
    pub fn validate(&self, classes: Option<usize>) -> Result<(), Vec<String>> {
        let mut bad = Vec::new();
        let unit = |v: f64| v > 0.0 && v <= 1.0;
        if self.top_k == 0 {
            bad.push("`level2.top_k` is 0: keep at least 1 candidate class per image".to_string());
        }
        if let Some(c) = classes {
            if self.top_k > c {
                bad.push(format!("`level2.top_k` is {} but there are only {c} classes: use at most {c}", self.top_k));
            }
        }
        if self.count_cutoffs.iter().any(|&t| !(t > 0.0 && t <= 1.0)) {
            bad.push(format!("`level2.count_cutoffs` {:?}: each cut-off must lie in (0, 1]", self.count_cutoffs));
        }
        if self.cooc_top_m == 0 {
            bad.push("`level2.cooc_top_m` is 0: the co-occurrence score needs at least 1 other class".to_string());
        }
        if self.rounds == 0 {
            bad.push("`level2.rounds` is 0: train at least 1 tree".to_string());
        }
        if !unit(self.learning_rate) {
            bad.push(format!("`level2.learning_rate` is {}: use a value in (0, 1]", self.learning_rate));
        }
        if self.num_leaves < 2 || self.num_leaves > 131_072 {
            bad.push(format!("`level2.num_leaves` is {}: use 2..=131072", self.num_leaves));
        }
        if self.min_data_in_leaf == 0 {
            bad.push("`level2.min_data_in_leaf` is 0: use at least 1".to_string());
        }
        if !unit(self.feature_fraction) {
            bad.push(format!("`level2.feature_fraction` is {}: use a value in (0, 1]", self.feature_fraction));
        }
        if !unit(self.bagging_fraction) {
            bad.push(format!("`level2.bagging_fraction` is {}: use a value in (0, 1]", self.bagging_fraction));
        }
        if !(self.lambda_l2 >= 0.0 && self.lambda_l2.is_finite()) {
            bad.push(format!("`level2.lambda_l2` is {}: use a finite value >= 0", self.lambda_l2));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_an_empty_table_gives_the_defaults() {
        assert_eq!(Level2Config::default().validate(Some(1103)), Ok(()));
        let parsed: Level2Config = toml::from_str("").unwrap();
        assert_eq!(parsed, Level2Config::default());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<Level2Config>("num_leafs = 31").unwrap_err().to_string();
        assert!(err.contains("num_leafs"), "{err}");
    }

    #[test]
    fn each_bad_field_is_named() {
        let cfg = Level2Config {
            top_k: 2000,
            num_leaves: 1,
            learning_rate: 0.0,
            feature_fraction: 1.5,
            lambda_l2: -1.0,
            count_cutoffs: vec![0.0],
            ..Level2Config::default()
        };
        let bad = cfg.validate(Some(1103)).unwrap_err().join("\n");
        for field in ["level2.top_k", "level2.num_leaves", "level2.learning_rate", "level2.feature_fraction", "level2.lambda_l2", "level2.count_cutoffs"] {
            assert!(bad.contains(field), "{field} missing from:\n{bad}");
        }
        assert!(bad.contains("only 1103 classes"), "{bad}");
    }
}
