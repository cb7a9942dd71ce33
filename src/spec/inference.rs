//! Test-time inference (`[inference]` of a spec): whether predict jobs
//! also predict their fold's validation images, and whether ensembles fit
//! their blend and thresholds or apply the ones a training run saved. The
//! defaults are the training run's; `imet package` writes a spec with
//! `oof = false` and `ensemble = "apply"`, which an offline machine runs
//! with `imet infer` over its test images alone.
//!
//! ```toml
//! [inference]
//! oof = false          # predict test images only (no folds, no training images)
//! ensemble = "apply"   # blend with the saved weights, label with the saved thresholds
//! ```
//!
//! The section is not part of any job's identity: a packaged spec's jobs
//! hash as the training run's did, so its fold models and saved thresholds
//! are recognised as made by the same spec.

use serde::{Deserialize, Serialize};

/// How predict and ensemble jobs run.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InferenceSection {
    /// Predict jobs also predict their fold's validation images
    /// (`oof.parquet`); `false`: test images only, reading neither
    /// `data/train.csv` nor `folds.parquet` nor any training image.
    #[serde(default = "yes")]
    pub oof: bool,
    /// `fit`: ensembles fit blend weights and thresholds on the OOF
    /// predictions; `apply`: they read the stage's saved
    /// `ensemble/thresholds.json` and apply it to the test predictions.
    #[serde(default)]
    pub ensemble: EnsembleMode,
}

/// What an ensemble job does with its stage's blend and thresholds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EnsembleMode {
    /// Fit them on the members' out-of-fold predictions.
    #[default]
    Fit,
    /// Apply the ones saved in `thresholds.json` to the test predictions.
    Apply,
}

fn yes() -> bool {
    true
}

impl Default for InferenceSection {
    fn default() -> Self {
        InferenceSection { oof: true, ensemble: EnsembleMode::Fit }
    }
}

impl InferenceSection {
    /// Whether this is the training run's behaviour (left out of the
    /// resolved spec).
    pub fn is_default(&self) -> bool {
        *self == InferenceSection::default()
    }

    /// Whether jobs run as on an offline test machine (test images only).
    pub fn test_only(&self) -> bool {
        !self.oof
    }

    /// Checks the combination: fitting needs the OOF predictions.
    pub fn validate(&self) -> Result<(), String> {
        if !self.oof && self.ensemble == EnsembleMode::Fit {
            return Err(
                "`inference.oof` = false but `inference.ensemble` = \"fit\": fitting thresholds needs the OOF predictions; set `inference.ensemble = \"apply\"`"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_only_prediction_needs_the_apply_mode() {
        assert!(InferenceSection::default().validate().is_ok());
        let bad = InferenceSection { oof: false, ensemble: EnsembleMode::Fit };
        assert!(bad.validate().unwrap_err().contains("inference.ensemble = \"apply\""));
        let offline = InferenceSection { oof: false, ensemble: EnsembleMode::Apply };
        assert!(offline.validate().is_ok() && offline.test_only() && !offline.is_default());
    }
}
