//! The stages of an experiment. The spec's top-level `[[models]]` and
//! `[ensemble]` are the first stage, named `main`; each `[[stages]]` table
//! is a later one, with its own models and ensemble, reading an earlier
//! stage's ensemble (its `source`, the previous stage by default) to edit
//! its training data: drop noisy images, add pseudo-labelled test images,
//! learn from the blend (distillation), start from the source's fold models.
//!
//! ```toml
//! [[stages]]
//! name = "clean"
//! drop_noisy = { fraction = 0.05 }
//! init = "pretrained"
//! [[stages.models]]
//! name = "r18"
//! ...
//! [stages.ensemble]
//! members = ["r18"]
//! ```

use super::models::ModelSpec;
use crate::curate::{Distill, DropNoisy, PseudoLabels};
use crate::ensemble::EnsembleSection;
use serde::{Deserialize, Serialize};

/// The name of the first stage (the spec's top-level models and ensemble).
pub const MAIN: &str = crate::ids::MAIN_STAGE;

/// One later stage (`[[stages]]`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// `runs/{experiment}/stages/{name}/`; what `--stage` names.
    pub name: String,
    /// The stage whose ensemble this one reads (`main` or an earlier
    /// stage); the previous stage when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_noisy: Option<DropNoisy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudo_labels: Option<PseudoLabels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<Distill>,
    /// Where each model's weights start: `pretrained` (its `weights`, or
    /// random: R2's "retrain from scratch") or `source` (the source stage's
    /// fold model of the same name and fold).
    #[serde(default)]
    pub init: Init,
    pub models: Vec<ModelSpec>,
    pub ensemble: EnsembleSection,
}

/// Where a later stage's models start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    #[default]
    Pretrained,
    Source,
}

/// A stage of an experiment, the first one included.
#[derive(Clone, Copy, Debug)]
pub struct Stage<'a> {
    /// [`MAIN`] for the first stage.
    pub name: &'a str,
    /// `None` for the first stage.
    pub spec: Option<&'a StageSpec>,
    pub models: &'a [ModelSpec],
    pub ensemble: Option<&'a EnsembleSection>,
    /// The stage it reads (later stages only).
    pub source: Option<&'a str>,
}

impl<'a> Stage<'a> {
    /// The stage's name as keys and jobs carry it: `None` for the first.
    pub fn key(&self) -> Option<&'a str> {
        self.spec.map(|s| s.name.as_str())
    }

    /// Its model called `name`.
    pub fn model(&self, name: &str) -> Option<&'a ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Whether it edits its training data (a curate job runs first).
    pub fn curates(&self) -> bool {
        self.spec.is_some_and(|s| s.drop_noisy.is_some() || s.pseudo_labels.is_some() || s.distill.is_some())
    }
}

impl StageSpec {
    /// Range checks of the stage's own fields; `earlier` are the names of
    /// the stages before it (`main` first). Messages name the field as
    /// `stages[name].field`.
    pub fn validate(&self, earlier: &[&str]) -> Result<(), String> {
        let at = |field: &str| format!("`stages[{}].{field}`", self.name);
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 32
            && self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b))
            && self.name != MAIN;
        if !name_ok {
            return Err(format!(
                "`stages` entry name {:?}: use 1-32 characters from a-z, 0-9, '-', '_' (and not `{MAIN}`, the first stage's name)",
                self.name
            ));
        }
        if earlier.contains(&self.name.as_str()) {
            return Err(format!("`stages`: two stages are named {:?}", self.name));
        }
        if let Some(src) = &self.source {
            if src == &self.name {
                return Err(format!("{} = {src:?}: a stage cannot read its own ensemble", at("source")));
            }
            if !earlier.contains(&src.as_str()) {
                return Err(format!("{} = {src:?}: a stage reads an earlier stage ({}), never a later one", at("source"), earlier.join(", ")));
            }
        }
        if let Some(d) = &self.drop_noisy {
            d.validate(&at)?;
        }
        if let Some(p) = &self.pseudo_labels {
            p.validate(&at)?;
        }
        if let Some(d) = &self.distill {
            d.validate(&at)?;
        }
        if self.models.is_empty() {
            return Err(format!("{}: list at least one model", at("models")));
        }
        Ok(())
    }
}
