//! How a stage edits its training data (`[[stages]]` fields of a spec):
//! `drop_noisy`, `pseudo_labels` and `distill`, each read from the source
//! stage's committed ensemble.

use serde::{Deserialize, Serialize};

/// Drop the training images whose out-of-fold prediction disagrees most
/// with their labels (R2 stage 2, R3).
///
/// ```toml
/// drop_noisy = { fraction = 0.05 }                      # the worst 5%
/// drop_noisy = { min_error = 0.2, criterion = "f2" }    # every image at or above an error
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DropNoisy {
    /// How an image's disagreement is measured.
    #[serde(default)]
    pub criterion: NoiseCriterion,
    /// Drop this fraction of the training images, worst first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// Drop every image whose error is at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_error: Option<f64>,
}

/// The error of an image's OOF prediction against its labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoiseCriterion {
    /// Mean over the image's true labels of `-ln p` plus the mean over its
    /// other classes of `-ln (1 - p)`: missed labels and confident
    /// extra classes weigh alike, whatever the vocabulary size.
    #[default]
    Bce,
    /// `1 - F2` of the source stage's chosen thresholds on the image.
    F2,
}

/// Add the test images with the most confident predictions, as extra
/// training images (R2 stage 3, R3).
///
/// ```toml
/// pseudo_labels = { fraction = 0.1 }                  # hard labels from the source's thresholds
/// pseudo_labels = { count = 500, targets = "soft" }   # the blended probabilities as targets
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PseudoLabels {
    /// This fraction of the test images, most confident first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// Or this many test images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// How confidence is measured.
    #[serde(default)]
    pub confidence: Confidence,
    /// What the added images are trained on.
    #[serde(default)]
    pub targets: Targets,
}

/// The confidence of a test image's prediction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    /// Mean over classes of `|p - 0.5|` (R2: "largest mean |p - 0.5|").
    #[default]
    MeanMargin,
}

/// Targets of pseudo-labelled images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Targets {
    /// 0/1 labels from the source stage's chosen threshold strategy.
    #[default]
    Hard,
    /// The source stage's blended probabilities.
    Soft,
}

/// Knowledge distillation: a stage's models learn from an ensemble's
/// blended out-of-fold probabilities as well as from the labels.
///
/// ```toml
/// distill = { weight = 0.5 }   # targets = 0.5 labels + 0.5 the source stage's blend
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Distill {
    /// Targets are `(1 - weight) * labels + weight * teacher`.
    #[serde(default = "half")]
    pub weight: f64,
}

fn half() -> f64 {
    0.5
}

impl DropNoisy {
    /// Range checks; `at` names a field in errors.
    pub fn validate(&self, at: &dyn Fn(&str) -> String) -> Result<(), String> {
        match (self.fraction, self.min_error) {
            (Some(f), None) if f > 0.0 && f < 0.5 => Ok(()),
            (Some(f), None) => Err(format!("{} = {f}: must be in (0, 0.5)", at("drop_noisy.fraction"))),
            (None, Some(e)) if e > 0.0 => Ok(()),
            (None, Some(e)) => Err(format!("{} = {e}: must be positive", at("drop_noisy.min_error"))),
            _ => Err(format!("{}: set exactly one of `fraction` and `min_error`", at("drop_noisy"))),
        }
    }
}

impl PseudoLabels {
    /// Range checks; `at` names a field in errors.
    pub fn validate(&self, at: &dyn Fn(&str) -> String) -> Result<(), String> {
        match (self.fraction, self.count) {
            (Some(f), None) if f > 0.0 && f <= 1.0 => Ok(()),
            (Some(f), None) => Err(format!("{} = {f}: must be in (0, 1]", at("pseudo_labels.fraction"))),
            (None, Some(n)) if n > 0 => Ok(()),
            (None, Some(_)) => Err(format!("{} = 0: must be at least 1", at("pseudo_labels.count"))),
            _ => Err(format!("{}: set exactly one of `fraction` and `count`", at("pseudo_labels"))),
        }
    }
}

impl Distill {
    /// Range checks; `at` names a field in errors.
    pub fn validate(&self, at: &dyn Fn(&str) -> String) -> Result<(), String> {
        if !(self.weight > 0.0 && self.weight <= 1.0) {
            return Err(format!("{} = {}: must be in (0, 1]", at("distill.weight"), self.weight));
        }
        Ok(())
    }
}
