//! The prediction settings of a model (`[models.predict]` of a spec).

use serde::{Deserialize, Serialize};

/// Prediction settings.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictSection {
    /// Images per forward pass; twice the training batch when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Predict at most this many test images (smoke runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_images: Option<usize>,
}


impl PredictSection {
    /// Range checks; `at` names a field of this section in errors.
    pub fn validate(&self, at: &dyn Fn(&str) -> String) -> Result<(), String> {
        if self.limit_images == Some(0) {
            return Err(format!("{}: limit_images must be at least 1", at("limit_images")));
        }
        if self.batch_size == Some(0) {
            return Err(format!("{} = 0: must be at least 1", at("batch_size")));
        }
        Ok(())
    }
}
