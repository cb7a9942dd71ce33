//! The `[[models]]` part of an experiment spec: one table per model the
//! experiment trains per fold, with its network, input size, training
//! recipe (phases, loss, optimiser, schedule), prediction settings and the
//! resources a batch engine should give its jobs. The table composes the
//! stages' own types (`model`, `image`, `train::config`, `predict::config`);
//! every recipe element has a field, and elements not built yet are refused
//! by [`ModelSpec::validate`] with "not supported yet: <element>".

use crate::image::{EvalResize, Pipeline, TtaSettings};
use crate::model::{Arch, HeadConfig, ModelConfig};
use crate::predict::config::PredictSection;
use crate::train::config::TrainSection;
use serde::{Deserialize, Serialize};

/// One model of the experiment.
///
/// ```toml
/// [[models]]
/// name = "r18-64"
/// arch = "resnet18"
/// size = 64
/// head = { pool = "avgmax", dropout = 0.2 }
/// [models.train]
/// batch_size = 32
/// phases = [{ epochs = 3, optimizer = { kind = "adamw", lr = 1e-3, weight_decay = 0.01 } }]
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// `runs/{experiment}/models/{name}/`; what `--model` and the ensemble's
    /// `members` name.
    pub name: String,
    /// The folds this model trains fold models for (R4: members on disjoint
    /// fold subsets), as numbers or ranges: `[0, 1, "5-9"]`. Every fold
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folds: Option<Vec<FoldItem>>,
    pub arch: Arch,
    /// Initial weights (timm names; any store URL). Random init when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    /// Partial-convolution padding (R3).
    #[serde(default)]
    pub partial_conv: bool,
    #[serde(default)]
    pub head: HeadConfig,
    /// Square input size of the network (pixels).
    pub size: u32,
    /// Training augmentations; `[image] augment` when unset. The last
    /// geometric transform must produce `size` x `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<Pipeline>,
    /// How validation and prediction images reach `size` (deterministic):
    /// `resize` squashes the whole image, `center_crop` crops the centre
    /// square first.
    #[serde(default)]
    pub eval_resize: EvalResize,
    /// Test-time views; `[image] tta` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tta: Option<TtaSettings>,
    pub train: TrainSection,
    #[serde(default)]
    pub predict: PredictSection,
    #[serde(default)]
    pub resources: Resources,
}

/// A fold or an inclusive range of folds (`3` or `"10-14"`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum FoldItem {
    One(u8),
    Range(String),
}

impl FoldItem {
    /// The folds it names.
    ///
    /// # Errors
    /// A message for a range that is not `a-b` with `a <= b`.
    pub fn folds(&self) -> Result<Vec<u8>, String> {
        match self {
            FoldItem::One(f) => Ok(vec![*f]),
            FoldItem::Range(r) => {
                let bad = || format!("{r:?} is not a fold range like \"10-14\"");
                let (a, b) = r.split_once('-').ok_or_else(bad)?;
                let (a, b): (u8, u8) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                Ok((a..=b).collect())
            }
        }
    }
}

/// What a batch engine should give one train or predict job of this model.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// GPUs one train or predict job uses: 1, or 0 to run on CPUs.
    #[serde(default = "one_u32")]
    pub gpus: u32,
    #[serde(default = "cpus")]
    pub cpus: u32,
    #[serde(default = "memory_gb")]
    pub memory_gb: u32,
    /// Wall-clock limit of one train job, e.g. `"12h"`, `"90m"`.
    #[serde(default = "time_limit")]
    pub time_limit: String,
    /// Wall-clock limit of one predict job.
    #[serde(default = "predict_time_limit")]
    pub predict_time_limit: String,
}

fn one_u32() -> u32 {
    1
}
fn cpus() -> u32 {
    8
}
fn memory_gb() -> u32 {
    32
}
fn time_limit() -> String {
    "24h".into()
}
fn predict_time_limit() -> String {
    "2h".into()
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            gpus: 1,
            cpus: cpus(),
            memory_gb: memory_gb(),
            time_limit: time_limit(),
            predict_time_limit: predict_time_limit(),
        }
    }
}

/// Parses `"90s"`, `"45m"`, `"12h"`, `"2d"` or `"1h30m"` into seconds.
///
/// # Errors
/// A message naming the value when it is not a positive duration.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration: use e.g. \"90m\", \"12h\", \"1h30m\"");
    let mut total = 0u64;
    let mut digits = String::new();
    for ch in text.trim().chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total += n * unit;
        digits.clear();
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

impl ModelSpec {
    /// The network part, with `classes` logits.
    pub fn network(&self, classes: i64) -> ModelConfig {
        ModelConfig {
            arch: self.arch,
            weights: self.weights.clone(),
            partial_conv: self.partial_conv,
            head: HeadConfig { classes, ..self.head },
        }
    }

    /// Optimiser steps accumulate this many batches.
    pub fn accumulation(&self) -> usize {
        self.train.accumulation()
    }

    /// Epochs over all phases.
    pub fn epochs(&self) -> u32 {
        self.train.epochs()
    }

    /// The folds this model trains, in order (all `k` when `folds` is unset).
    pub fn fold_list(&self, k: u8) -> Vec<u8> {
        match &self.folds {
            None => (0..k).collect(),
            Some(items) => {
                let mut all: Vec<u8> = items.iter().filter_map(|i| i.folds().ok()).flatten().collect();
                all.sort_unstable();
                all.dedup();
                all
            }
        }
    }

    /// Prediction batch size.
    pub fn predict_batch(&self) -> usize {
        self.predict.batch_size.unwrap_or(2 * self.train.batch_size)
    }

    /// Range checks (`k`: the spec's folds); messages name the field as
    /// `models[name].field`.
    pub fn validate(&self, k: u8) -> Result<(), String> {
        let at = |field: &str| format!("`models[{}].{field}`", self.name);
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !self.name.starts_with('.');
        if !name_ok {
            return Err(format!("`models` entry name {:?}: use 1-64 characters from a-z, A-Z, 0-9, '-', '_', '.'", self.name));
        }
        if let Some(items) = &self.folds {
            for item in items {
                let folds = item.folds().map_err(|e| format!("{}: {e}", at("folds")))?;
                if let Some(f) = folds.iter().find(|&&f| f >= k) {
                    return Err(format!("{}: fold {f} is outside `folds.k` = {k} (folds 0 to {})", at("folds"), k - 1));
                }
            }
            if self.fold_list(k).is_empty() {
                return Err(format!("{}: list at least one fold", at("folds")));
            }
        }
        self.network(self.head.classes).validate("spec").map_err(|e| format!("{}: {e}", at("arch")))?;
        if (self.size as i64) < self.arch.min_input_size() || self.size > 2048 {
            return Err(format!("{} = {}: {} needs {} to 2048 pixels", at("size"), self.size, self.arch.name(), self.arch.min_input_size()));
        }
        if let Some(p) = &self.augment {
            p.validate().map_err(|e| format!("{}: {e}", at("augment")))?;
        }
        if let Some(t) = &self.tta {
            t.validate().map_err(|e| format!("{}: {e}", at("tta")))?;
        }
        self.train.validate(&|f: &str| at(&format!("train.{f}")), self.arch == Arch::Torchscript)?;
        self.predict.validate(&|f: &str| at(&format!("predict.{f}")))?;
        self.resources.validate(&at)
    }
}

impl Resources {
    fn validate(&self, at: &dyn Fn(&str) -> String) -> Result<(), String> {
        if self.cpus == 0 || self.memory_gb == 0 {
            return Err(format!("{}: cpus and memory_gb must be at least 1", at("resources")));
        }
        if self.gpus > 1 {
            return Err(format!(
                "{} = {}: a train or predict job uses one GPU (data-parallel training over several is not built); set 0 or 1, and run more folds at once instead (`imet run --parallel`, the engines' arrays)",
                at("resources.gpus"),
                self.gpus
            ));
        }
        parse_duration(&self.time_limit).map_err(|e| format!("{}: {e}", at("resources.time_limit")))?;
        parse_duration(&self.predict_time_limit).map_err(|e| format!("{}: {e}", at("resources.predict_time_limit")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::{LabelScope, LossSpec, OptimizerSpec};

    const MODEL: &str = r#"
name = "r18"
arch = "resnet18"
size = 64
[train]
batch_size = 16
phases = [{ epochs = 3, optimizer = { kind = "adamw", lr = 1e-3 } }]
"#;

    fn parse(text: &str) -> Result<ModelSpec, String> {
        let m: ModelSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        m.validate(5)?;
        Ok(m)
    }

    #[test]
    fn a_minimal_model_gets_defaults() {
        let m = parse(MODEL).unwrap();
        assert_eq!(m.accumulation(), 1);
        assert_eq!(m.epochs(), 3);
        assert_eq!(m.predict_batch(), 32);
        assert_eq!(m.train.loss, LossSpec::Bce);
        assert_eq!(m.train.phases[0].optimizer, OptimizerSpec::Adamw { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 });
        assert_eq!(m.resources.gpus, 1);
        assert_eq!(m.network(1103).head.classes, 1103);
    }

    #[test]
    fn every_recipe_element_parses() {
        let text = format!(
            "{MODEL}effective_batch = 64\nloss = {{ kind = \"focal\", gamma = 2.0, alpha = 0.25 }}\nlabel_smoothing = 0.1\n\
             mixup = {{ alpha = 0.4 }}\nsampling = \"log_class_weights\"\nclip_grad_norm = 5.0\nprecision = \"fp16\"\n"
        );
        let m = parse(&text).unwrap();
        assert_eq!(m.accumulation(), 4);
        let phases = r#"
name = "r3"
arch = "seresnext50_32x4d"
size = 320
partial_conv = true
[train]
batch_size = 32
effective_batch = 512
phases = [
  { name = "head", epochs = 1, trainable = "head", optimizer = { kind = "adamw", lr = 1e-4, weight_decay = 0.01 } },
  { name = "all", epochs = 10, optimizer = { kind = "sgd", lr = 1e-3, momentum = 0.9, nesterov = true }, schedule = { kind = "cosine", warmup_epochs = 1.0 } },
  { name = "tags", epochs = 2, labels = "tags", loss = { kind = "bce" }, optimizer = { kind = "adam", lr = 1e-4 }, schedule = { kind = "step", milestones = [1], factor = 0.2 }, head_lr_factor = 10.0 },
]
"#;
        let m = parse(phases).unwrap();
        assert_eq!(m.epochs(), 13);
        assert_eq!(m.train.phases[2].labels, LabelScope::Tags);
    }

    #[test]
    fn bad_values_name_the_field() {
        for (bad, field) in [
            (MODEL.replace("size = 64", "size = 8"), "models[r18].size"),
            (MODEL.replace("batch_size = 16", "batch_size = 0"), "train.batch_size"),
            (format!("{MODEL}effective_batch = 20\n"), "train.effective_batch"),
            (MODEL.replace("lr = 1e-3", "lr = -1.0"), "train.phases[0].optimizer.lr"),
            (MODEL.replace("epochs = 3", "epochs = 0"), "train.phases[0].epochs"),
            (
                MODEL.replace("lr = 1e-3 }", "lr = 1e-3 }, schedule = { kind = \"step\", milestones = [5], factor = 0.5 }"),
                "schedule.milestones",
            ),
            (format!("{MODEL}label_smoothing = 0.7\n"), "label_smoothing"),
            (format!("{MODEL}loss = {{ kind = \"focal\", gamma = -1.0 }}\n"), "train.loss"),
            (MODEL.replace("name = \"r18\"", "name = \"a/b\""), "name"),
        ] {
            let err = parse(&bad).unwrap_err();
            assert!(err.contains(field), "{field}: {err}");
        }
        let err = parse(&MODEL.replace("arch = \"resnet18\"", "arch = \"resnet19\"")).unwrap_err();
        assert!(err.contains("resnet19"), "{err}");
        let err = parse(&format!("{MODEL}momentum = 0.9\n")).unwrap_err();
        assert!(err.contains("momentum"), "{err}");
    }

    #[test]
    fn elements_not_built_yet_are_refused_by_name() {
        for (line, element) in [
            ("drop_noisy = 0.05", "train.drop_noisy`: a stage setting now"),
            ("pseudo_labels = 0.1", "train.pseudo_labels`: a stage setting now"),
            ("distill_from = \"e\"", "train.distill_from`: a stage setting now"),
            ("precision = \"bf16\"", "not supported yet: bf16"),
        ] {
            let err = parse(&format!("{MODEL}{line}\n")).unwrap_err();
            assert!(err.contains(element), "{line}: {err}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90m"), Ok(5400));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        assert!(parse_duration("12").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
