//! The `[[models]]` part of an experiment spec: one table per model the
//! experiment trains per fold, with its network, input size, training
//! recipe (phases, loss, optimiser, schedule), prediction settings and the
//! resources a batch engine should give its jobs. Every recipe element of
//! recipes.md has a field; elements not built yet are refused by
//! [`ModelSpec::validate`] with "not supported yet: <element>".

use crate::image::{Pipeline, TtaSettings};
use crate::model::{Arch, HeadConfig, ModelConfig};
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
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// `runs/{experiment}/models/{name}/`; what `--model` and the ensemble's
    /// `members` name.
    pub name: String,
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

/// The deterministic resize of validation and test images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalResize {
    /// Whole image resized to `size` x `size`.
    #[default]
    Resize,
    /// Centre square crop, then resize.
    CenterCrop,
}

/// How a model is trained on the other folds.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Images per forward pass.
    pub batch_size: usize,
    /// Images per optimiser step, by gradient accumulation (R2: 1000-1500,
    /// R3: 512); a multiple of `batch_size`. Unset: `batch_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_batch: Option<usize>,
    /// The loss of every phase that does not set its own.
    #[serde(default)]
    pub loss: LossSpec,
    /// Targets become `y (1 - eps) + eps / 2` (R3).
    #[serde(default)]
    pub label_smoothing: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixup: Option<MixupSpec>,
    /// The order images are visited in.
    #[serde(default)]
    pub sampling: Sampling,
    /// Clip the global gradient norm to this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
    /// `auto`: fp16 autocast with a grad scaler on CUDA, fp32 on CPU.
    #[serde(default)]
    pub precision: Precision,
    /// NHWC memory layout on CUDA (ignored on CPU).
    #[serde(default = "yes")]
    pub channels_last: bool,
    /// Phases run one after another; each sets its epochs, optimiser,
    /// schedule and what is trainable (R3: head only, then all, then tags).
    pub phases: Vec<PhaseSpec>,
    /// Run `predict` at the end of `imet train`.
    #[serde(default)]
    pub predict_after: bool,
    /// Use at most this many training images per epoch (smoke runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_images: Option<usize>,
    /// R2 stage 2 / R3: drop this fraction of training images whose OOF
    /// prediction disagrees most with their labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_noisy: Option<f64>,
    /// R2 stage 2: each epoch also visits this fraction of the training
    /// images once more: those with the highest loss in the epoch before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_negative_mining: Option<f64>,
    /// R2 stage 3 / R3: add this fraction of the most confident test
    /// predictions as pseudo-labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudo_labels: Option<f64>,
    /// Knowledge distillation: the ensemble experiment whose predictions
    /// become soft targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill_from: Option<String>,
}

fn yes() -> bool {
    true
}

/// Numeric precision of training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Auto,
    Fp32,
    Fp16,
    Bf16,
}

/// The order of training images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// A seeded permutation per epoch.
    #[default]
    Shuffle,
    /// R2: sampled with replacement, weight of an image = the largest
    /// `log(N / count(c))` over its classes.
    LogClassWeights,
}

/// What the training loss is.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LossSpec {
    /// Binary cross-entropy on logits, mean over images and classes.
    Bce,
    /// Focal loss (R2): `-alpha_t (1 - p_t)^gamma log p_t`; no `alpha`
    /// weighting when unset.
    Focal {
        #[serde(default = "focal_gamma")]
        gamma: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alpha: Option<f64>,
    },
    /// `1 - soft F-beta` per image from probabilities (beta 2).
    SoftF2,
    /// `bce + weight * soft_f2` (fine-tuning with a differentiable F2).
    BceSoftF2 {
        #[serde(default = "one")]
        weight: f64,
    },
}

fn focal_gamma() -> f64 {
    2.0
}
fn one() -> f64 {
    1.0
}

impl Default for LossSpec {
    fn default() -> Self {
        LossSpec::Bce
    }
}

/// MixUp (R3, R4): images and targets mixed with a `Beta(alpha, alpha)`
/// weight, on a fraction `p` of batches.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MixupSpec {
    pub alpha: f64,
    #[serde(default = "one")]
    pub p: f64,
}

/// Which parameters a phase trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trainable {
    #[default]
    All,
    /// Frozen encoder, head only (R3's first phase).
    Head,
}

/// Which labels a phase's loss covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelScope {
    #[default]
    All,
    /// `tag::` attributes only (R2 stage 4, R3's last phase).
    Tags,
    /// `culture::` attributes only.
    Cultures,
}

/// One phase of training.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    /// Shown in logs and `history.parquet`; `phase{i}` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub epochs: u32,
    #[serde(default)]
    pub trainable: Trainable,
    #[serde(default)]
    pub labels: LabelScope,
    /// Overrides `train.loss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossSpec>,
    pub optimizer: OptimizerSpec,
    #[serde(default)]
    pub schedule: ScheduleSpec,
    /// The head's learning rate is `lr * head_lr_factor` (per-group rates).
    #[serde(default = "one")]
    pub head_lr_factor: f64,
}

/// An optimiser and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerSpec {
    Sgd {
        lr: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        nesterov: bool,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f64,
    },
    Adam {
        lr: f64,
        #[serde(default = "betas")]
        betas: (f64, f64),
        #[serde(default = "eps")]
        eps: f64,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f64,
    },
    /// Adam with decoupled weight decay.
    Adamw {
        lr: f64,
        #[serde(default = "betas")]
        betas: (f64, f64),
        #[serde(default = "eps")]
        eps: f64,
        #[serde(default = "adamw_decay")]
        weight_decay: f64,
    },
}

fn betas() -> (f64, f64) {
    (0.9, 0.999)
}
fn eps() -> f64 {
    1e-8
}
fn adamw_decay() -> f64 {
    0.01
}

impl OptimizerSpec {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match *self {
            OptimizerSpec::Sgd { lr, .. } | OptimizerSpec::Adam { lr, .. } | OptimizerSpec::Adamw { lr, .. } => lr,
        }
    }

    /// `sgd`, `adam` or `adamw`.
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerSpec::Sgd { .. } => "sgd",
            OptimizerSpec::Adam { .. } => "adam",
            OptimizerSpec::Adamw { .. } => "adamw",
        }
    }
}

/// The learning-rate schedule of a phase (epochs count from the phase's
/// start, from 0).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleSpec {
    Constant,
    /// `lr * factor^(number of milestones <= epoch)` (R1: milestones
    /// `[7, 9]`, factor 0.5; R2: factor 0.2).
    Step { milestones: Vec<u32>, factor: f64 },
    /// Linear warmup from 0 over `warmup_epochs` (fractional, per step),
    /// then cosine down to `lr * min_factor` at the phase's end (R3).
    Cosine {
        #[serde(default)]
        warmup_epochs: f64,
        #[serde(default)]
        min_factor: f64,
    },
}

impl Default for ScheduleSpec {
    fn default() -> Self {
        ScheduleSpec::Constant
    }
}

/// Prediction settings.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PredictSection {
    /// Images per forward pass; twice the training batch when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Predict at most this many test images (smoke runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_images: Option<usize>,
}

/// What a batch engine should give one train or predict job of this model.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
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
        self.train.effective_batch.map_or(1, |e| (e / self.train.batch_size).max(1))
    }

    /// Epochs over all phases.
    pub fn epochs(&self) -> u32 {
        self.train.phases.iter().map(|p| p.epochs).sum()
    }

    /// Prediction batch size.
    pub fn predict_batch(&self) -> usize {
        self.predict.batch_size.unwrap_or(2 * self.train.batch_size)
    }

    /// Range checks; messages name the field as `models[name].field`.
    pub fn validate(&self) -> Result<(), String> {
        let at = |field: &str| format!("`models[{}].{field}`", self.name);
        let unsupported = |field: &str, element: &str| Err(format!("{}: not supported yet: {element}", at(field)));
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !self.name.starts_with('.');
        if !name_ok {
            return Err(format!("`models` entry name {:?}: use 1-64 characters from a-z, A-Z, 0-9, '-', '_', '.'", self.name));
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
        let t = &self.train;
        if t.batch_size == 0 || t.batch_size > 4096 {
            return Err(format!("{} = {}: must be 1 to 4096", at("train.batch_size"), t.batch_size));
        }
        if let Some(e) = t.effective_batch {
            if e < t.batch_size || e % t.batch_size != 0 {
                return Err(format!(
                    "{} = {e}: must be a multiple of train.batch_size = {} (gradients of effective_batch / batch_size batches are accumulated)",
                    at("train.effective_batch"),
                    t.batch_size
                ));
            }
        }
        validate_loss(&t.loss).map_err(|e| format!("{}: {e}", at("train.loss")))?;
        if !(0.0..0.5).contains(&t.label_smoothing) {
            return Err(format!("{} = {}: must be in [0, 0.5)", at("train.label_smoothing"), t.label_smoothing));
        }
        if let Some(m) = &t.mixup {
            if !(m.alpha > 0.0) || !(0.0..=1.0).contains(&m.p) {
                return Err(format!("{}: alpha must be positive and p in [0, 1]", at("train.mixup")));
            }
        }
        if let Some(c) = t.clip_grad_norm {
            if !(c > 0.0) {
                return Err(format!("{} = {c}: must be positive", at("train.clip_grad_norm")));
            }
        }
        if t.precision == Precision::Bf16 {
            return unsupported("train.precision", "bf16 autocast (the torch binding exposes fp16 autocast only; use \"fp16\" or \"auto\")");
        }
        if t.phases.is_empty() {
            return Err(format!("{}: list at least one phase", at("train.phases")));
        }
        for (i, p) in t.phases.iter().enumerate() {
            let at_p = |f: &str| at(&format!("train.phases[{i}].{f}"));
            if p.epochs == 0 || p.epochs > 1000 {
                return Err(format!("{} = {}: must be 1 to 1000", at_p("epochs"), p.epochs));
            }
            if let Some(l) = &p.loss {
                validate_loss(l).map_err(|e| format!("{}: {e}", at_p("loss")))?;
            }
            let lr = p.optimizer.lr();
            if !(lr > 0.0 && lr < 10.0) {
                return Err(format!("{} = {lr}: must be in (0, 10)", at_p("optimizer.lr")));
            }
            match p.optimizer {
                OptimizerSpec::Sgd { momentum, nesterov, weight_decay, .. } => {
                    if !((0.0..1.0).contains(&momentum) && weight_decay.is_finite() && weight_decay >= 0.0) {
                        return Err(format!("{}: momentum must be in [0, 1) and weight_decay >= 0", at_p("optimizer")));
                    }
                    if nesterov && momentum == 0.0 {
                        return Err(format!("{}: nesterov needs momentum > 0", at_p("optimizer")));
                    }
                }
                OptimizerSpec::Adam { betas, eps, weight_decay, .. } | OptimizerSpec::Adamw { betas, eps, weight_decay, .. } => {
                    let betas_ok = (0.0..1.0).contains(&betas.0) && (0.0..1.0).contains(&betas.1);
                    if !(betas_ok && eps > 0.0 && weight_decay.is_finite() && weight_decay >= 0.0) {
                        return Err(format!("{}: betas must be in [0, 1), eps > 0, weight_decay >= 0", at_p("optimizer")));
                    }
                }
            }
            match &p.schedule {
                ScheduleSpec::Constant => {}
                ScheduleSpec::Step { milestones, factor } => {
                    if !(*factor > 0.0 && *factor <= 1.0) {
                        return Err(format!("{} = {factor}: must be in (0, 1]", at_p("schedule.factor")));
                    }
                    if milestones.windows(2).any(|w| w[0] >= w[1]) || milestones.iter().any(|&m| m == 0 || m >= p.epochs) {
                        return Err(format!(
                            "{} = {milestones:?}: must increase and lie in 1..{} (epochs count from 0 within the phase)",
                            at_p("schedule.milestones"),
                            p.epochs
                        ));
                    }
                }
                ScheduleSpec::Cosine { warmup_epochs, min_factor } => {
                    if !(*warmup_epochs >= 0.0 && *warmup_epochs < p.epochs as f64) || !(0.0..1.0).contains(min_factor) {
                        return Err(format!(
                            "{}: warmup_epochs must be in [0, epochs) and min_factor in [0, 1)",
                            at_p("schedule")
                        ));
                    }
                }
            }
            if !(p.head_lr_factor > 0.0 && p.head_lr_factor <= 1000.0) {
                return Err(format!("{} = {}: must be in (0, 1000]", at_p("head_lr_factor"), p.head_lr_factor));
            }
            if p.trainable == Trainable::Head && self.arch == Arch::Torchscript {
                return Err(format!("{}: a TorchScript module is trained whole", at_p("trainable")));
            }
            if let Some(n) = &p.name {
                if n.is_empty() || n.len() > 32 {
                    return Err(format!("{}: 1-32 characters", at_p("name")));
                }
            }
        }
        if t.limit_images == Some(0) || self.predict.limit_images == Some(0) {
            return Err(format!("{}: limit_images must be at least 1", at("train")));
        }
        if self.predict.batch_size == Some(0) {
            return Err(format!("{} = 0: must be at least 1", at("predict.batch_size")));
        }
        if t.drop_noisy.is_some() {
            return unsupported("train.drop_noisy", "dropping noisy training labels by OOF disagreement");
        }
        if let Some(f) = t.hard_negative_mining {
            if !(f > 0.0 && f <= 0.5) {
                return Err(format!("{} = {f}: must be in (0, 0.5] (the fraction of images visited again)", at("train.hard_negative_mining")));
            }
        }
        if t.pseudo_labels.is_some() {
            return unsupported("train.pseudo_labels", "pseudo-labelling from test predictions");
        }
        if t.distill_from.is_some() {
            return unsupported("train.distill_from", "knowledge distillation");
        }
        let r = &self.resources;
        if r.cpus == 0 || r.memory_gb == 0 || r.gpus > 16 {
            return Err(format!("{}: cpus and memory_gb must be at least 1, gpus at most 16", at("resources")));
        }
        parse_duration(&r.time_limit).map_err(|e| format!("{}: {e}", at("resources.time_limit")))?;
        parse_duration(&r.predict_time_limit).map_err(|e| format!("{}: {e}", at("resources.predict_time_limit")))?;
        Ok(())
    }
}

fn validate_loss(loss: &LossSpec) -> Result<(), String> {
    match *loss {
        LossSpec::Focal { gamma, alpha } => {
            if !(0.0..=10.0).contains(&gamma) {
                return Err(format!("focal gamma = {gamma}: must be in [0, 10]"));
            }
            if let Some(a) = alpha {
                if !(0.0..=1.0).contains(&a) {
                    return Err(format!("focal alpha = {a}: must be in [0, 1]"));
                }
            }
        }
        LossSpec::BceSoftF2 { weight } => {
            if !(weight > 0.0) {
                return Err(format!("bce_soft_f2 weight = {weight}: must be positive"));
            }
        }
        LossSpec::Bce | LossSpec::SoftF2 => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        m.validate()?;
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
            ("drop_noisy = 0.05", "not supported yet: dropping noisy"),
            ("pseudo_labels = 0.1", "not supported yet: pseudo-labelling"),
            ("distill_from = \"e\"", "not supported yet: knowledge distillation"),
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
