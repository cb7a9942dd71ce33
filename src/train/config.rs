//! The training configuration of a model (`[models.train]` of a spec):
//! batch and accumulation, loss, soft targets, sampling, precision, and the
//! phases with their optimiser, schedule, trainable part and labels. The
//! spec composes it; [`TrainSection::validate`] checks its ranges.

pub use crate::fold_job::Precision;
use serde::{Deserialize, Serialize};

/// How a model is trained on the other folds.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
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
    /// Refused: a stage's `drop_noisy` (`[[stages]]`) does this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_noisy: Option<f64>,
    /// R2 stage 2: each epoch also visits this fraction of the training
    /// images once more: those with the highest loss in the epoch before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_negative_mining: Option<f64>,
    /// Refused: a stage's `pseudo_labels` (`[[stages]]`) does this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudo_labels: Option<f64>,
    /// Refused: a stage's `distill` (`[[stages]]`) does this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill_from: Option<String>,
    /// Which epoch checkpoints are kept while training and once the job is
    /// committed. Not part of the job's identity: changing it reruns nothing.
    #[serde(default, skip_serializing_if = "CheckpointPolicy::is_default")]
    pub checkpoints: CheckpointPolicy,
}

/// The retention policy of a train job's epoch checkpoints, and how often
/// it checkpoints inside an epoch.
///
/// ```toml
/// checkpoints = { keep = "last_and_best", after_commit = "none", every_minutes = 10 }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointPolicy {
    /// While training: `last_and_best` (the newest, to resume from, and the
    /// best epoch's, whose weights the job keeps) or `all`.
    #[serde(default)]
    pub keep: KeepWhileTraining,
    /// Once `_TRAINED.json` is committed: `last` (enough to train further),
    /// `none` (the committed `model.safetensors` is all that stays) or `all`.
    #[serde(default)]
    pub after_commit: KeepAfterCommit,
    /// Also checkpoint inside an epoch, after every this many optimiser
    /// steps: a preempted job resumes at that step, not at the epoch's
    /// start. One `checkpoints/in-epoch.safetensors` is overwritten each
    /// time and deleted once the epoch's own checkpoint is written. Results
    /// are the same whether and where the job was stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_steps: Option<u32>,
    /// Also checkpoint inside an epoch once this many minutes have passed
    /// since the last checkpoint (spot instances: a reclaimed node costs at
    /// most this much training). With `every_steps`, whichever comes first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_minutes: Option<u32>,
}

/// Checkpoints kept while a job trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeepWhileTraining {
    #[default]
    LastAndBest,
    All,
}

/// Checkpoints kept after the job is committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeepAfterCommit {
    #[default]
    Last,
    None,
    All,
}

impl CheckpointPolicy {
    fn is_default(&self) -> bool {
        *self == CheckpointPolicy::default()
    }

    /// Whether the job checkpoints inside epochs at all.
    pub fn in_epoch(&self) -> bool {
        self.every_steps.is_some() || self.every_minutes.is_some()
    }

    fn validate(&self, at: &dyn Fn(&str) -> String) -> Result<(), String> {
        for (name, v) in [("every_steps", self.every_steps), ("every_minutes", self.every_minutes)] {
            if v == Some(0) {
                return Err(format!("{} = 0: must be at least 1 (leave it out to checkpoint after each epoch only)", at(&format!("checkpoints.{name}"))));
            }
        }
        Ok(())
    }

    /// Epochs whose checkpoints stay after epoch `done` (1-based) with the
    /// best epoch `best`; `None`: all of them.
    pub fn while_training(&self, done: u32, best: u32) -> Option<Vec<u32>> {
        match self.keep {
            KeepWhileTraining::LastAndBest => Some(vec![done, best]),
            KeepWhileTraining::All => None,
        }
    }

    /// Epochs whose checkpoints stay once the job of `done` epochs is
    /// committed; `None`: all of them.
    pub fn after_commit(&self, done: u32) -> Option<Vec<u32>> {
        match self.after_commit {
            KeepAfterCommit::Last => Some(vec![done]),
            KeepAfterCommit::None => Some(Vec::new()),
            KeepAfterCommit::All => None,
        }
    }
}

fn yes() -> bool {
    true
}

/// The order of training images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
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
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
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
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MixupSpec {
    pub alpha: f64,
    #[serde(default = "one")]
    pub p: f64,
}

/// Which parameters a phase trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Trainable {
    #[default]
    All,
    /// Frozen encoder, head only (R3's first phase).
    Head,
}

/// Which labels a phase's loss covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
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
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
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
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
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
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
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

impl TrainSection {
    /// Optimiser steps accumulate this many batches.
    pub fn accumulation(&self) -> usize {
        self.effective_batch.map_or(1, |e| (e / self.batch_size).max(1))
    }

    /// Epochs over all phases.
    pub fn epochs(&self) -> u32 {
        self.phases.iter().map(|p| p.epochs).sum()
    }

    /// Range checks. `at` turns a field path relative to this section
    /// (`batch_size`, `phases[0].optimizer.lr`) into the name errors show;
    /// `whole_network_only` is set for networks that cannot freeze their
    /// encoder (TorchScript modules).
    pub fn validate(&self, at: &dyn Fn(&str) -> String, whole_network_only: bool) -> Result<(), String> {
        self.validate_batches(at)?;
        self.validate_targets(at)?;
        if self.precision == Precision::Bf16 {
            return Err(format!(
                "{}: not supported yet: bf16 autocast (the torch binding exposes fp16 autocast only; use \"fp16\" or \"auto\")",
                at("precision")
            ));
        }
        if self.phases.is_empty() {
            return Err(format!("{}: list at least one phase", at("phases")));
        }
        for (i, p) in self.phases.iter().enumerate() {
            p.validate(&|f: &str| at(&format!("phases[{i}].{f}")), whole_network_only)?;
        }
        if self.limit_images == Some(0) {
            return Err(format!("{}: limit_images must be at least 1", at("limit_images")));
        }
        self.checkpoints.validate(at)?;
        self.validate_data_edits(at)
    }

    fn validate_batches(&self, at: &dyn Fn(&str) -> String) -> Result<(), String> {
        if self.batch_size == 0 || self.batch_size > 4096 {
            return Err(format!("{} = {}: must be 1 to 4096", at("batch_size"), self.batch_size));
        }
        if let Some(e) = self.effective_batch {
            if e < self.batch_size || e % self.batch_size != 0 {
                return Err(format!(
                    "{} = {e}: must be a multiple of train.batch_size = {} (gradients of effective_batch / batch_size batches are accumulated)",
                    at("effective_batch"),
                    self.batch_size
                ));
            }
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c > 0.0) {
                return Err(format!("{} = {c}: must be positive", at("clip_grad_norm")));
            }
        }
        Ok(())
    }

    fn validate_targets(&self, at: &dyn Fn(&str) -> String) -> Result<(), String> {
        self.loss.validate().map_err(|e| format!("{}: {e}", at("loss")))?;
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(format!("{} = {}: must be in [0, 0.5)", at("label_smoothing"), self.label_smoothing));
        }
        if let Some(m) = &self.mixup {
            if !(m.alpha > 0.0) || !(0.0..=1.0).contains(&m.p) {
                return Err(format!("{}: alpha must be positive and p in [0, 1]", at("mixup")));
            }
        }
        Ok(())
    }

    fn validate_data_edits(&self, at: &dyn Fn(&str) -> String) -> Result<(), String> {
        // Edits that need predictions the job has not made yet belong to a
        // later stage, which reads an earlier stage's ensemble.
        let moved = |field: &str, example: &str| {
            Err(format!(
                "{}: a stage setting now: add a `[[stages]]` table with `{example}`, which reads an earlier stage's ensemble (see docs/recipes.md)",
                at(field)
            ))
        };
        if self.drop_noisy.is_some() {
            return moved("drop_noisy", "drop_noisy = { fraction = 0.05 }");
        }
        if let Some(f) = self.hard_negative_mining {
            if !(f > 0.0 && f <= 0.5) {
                return Err(format!("{} = {f}: must be in (0, 0.5] (the fraction of images visited again)", at("hard_negative_mining")));
            }
        }
        if self.pseudo_labels.is_some() {
            return moved("pseudo_labels", "pseudo_labels = { fraction = 0.1 }");
        }
        if self.distill_from.is_some() {
            return moved("distill_from", "distill = { weight = 0.5 }");
        }
        Ok(())
    }
}

impl PhaseSpec {
    /// `name`, or `phase{i}` when the phase has none.
    pub fn display_name(&self, i: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("phase{i}"))
    }

    fn validate(&self, at: &dyn Fn(&str) -> String, whole_network_only: bool) -> Result<(), String> {
        if self.epochs == 0 || self.epochs > 1000 {
            return Err(format!("{} = {}: must be 1 to 1000", at("epochs"), self.epochs));
        }
        if let Some(l) = &self.loss {
            l.validate().map_err(|e| format!("{}: {e}", at("loss")))?;
        }
        self.optimizer.validate(at)?;
        self.schedule.validate(at, self.epochs)?;
        if !(self.head_lr_factor > 0.0 && self.head_lr_factor <= 1000.0) {
            return Err(format!("{} = {}: must be in (0, 1000]", at("head_lr_factor"), self.head_lr_factor));
        }
        if self.trainable == Trainable::Head && whole_network_only {
            return Err(format!("{}: a TorchScript module is trained whole", at("trainable")));
        }
        if let Some(n) = &self.name {
            if n.is_empty() || n.len() > 32 {
                return Err(format!("{}: 1-32 characters", at("name")));
            }
        }
        Ok(())
    }
}

impl OptimizerSpec {
    fn validate(&self, at: &dyn Fn(&str) -> String) -> Result<(), String> {
        let lr = self.lr();
        if !(lr > 0.0 && lr < 10.0) {
            return Err(format!("{} = {lr}: must be in (0, 10)", at("optimizer.lr")));
        }
        match *self {
            OptimizerSpec::Sgd { momentum, nesterov, weight_decay, .. } => {
                if !((0.0..1.0).contains(&momentum) && weight_decay.is_finite() && weight_decay >= 0.0) {
                    return Err(format!("{}: momentum must be in [0, 1) and weight_decay >= 0", at("optimizer")));
                }
                if nesterov && momentum == 0.0 {
                    return Err(format!("{}: nesterov needs momentum > 0", at("optimizer")));
                }
            }
            OptimizerSpec::Adam { betas, eps, weight_decay, .. } | OptimizerSpec::Adamw { betas, eps, weight_decay, .. } => {
                let betas_ok = (0.0..1.0).contains(&betas.0) && (0.0..1.0).contains(&betas.1);
                if !(betas_ok && eps > 0.0 && weight_decay.is_finite() && weight_decay >= 0.0) {
                    return Err(format!("{}: betas must be in [0, 1), eps > 0, weight_decay >= 0", at("optimizer")));
                }
            }
        }
        Ok(())
    }
}

impl ScheduleSpec {
    fn validate(&self, at: &dyn Fn(&str) -> String, epochs: u32) -> Result<(), String> {
        match self {
            ScheduleSpec::Constant => {}
            ScheduleSpec::Step { milestones, factor } => {
                if !(*factor > 0.0 && *factor <= 1.0) {
                    return Err(format!("{} = {factor}: must be in (0, 1]", at("schedule.factor")));
                }
                if milestones.windows(2).any(|w| w[0] >= w[1]) || milestones.iter().any(|&m| m == 0 || m >= epochs) {
                    return Err(format!(
                        "{} = {milestones:?}: must increase and lie in 1..{epochs} (epochs count from 0 within the phase)",
                        at("schedule.milestones"),
                    ));
                }
            }
            ScheduleSpec::Cosine { warmup_epochs, min_factor } => {
                if !(*warmup_epochs >= 0.0 && *warmup_epochs < epochs as f64) || !(0.0..1.0).contains(min_factor) {
                    return Err(format!("{}: warmup_epochs must be in [0, epochs) and min_factor in [0, 1)", at("schedule")));
                }
            }
        }
        Ok(())
    }
}

impl LossSpec {
    fn validate(&self) -> Result<(), String> {
        match *self {
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
}
