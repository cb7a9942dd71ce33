//! Train stage: the compute loop of a train job, on a blocking thread.
//! Builds the network (initial weights, or a checkpoint to resume from),
//! the loaders and the sampler, then runs every epoch of every phase:
//! train, validate, record, and hand the epoch's checkpoint to the
//! [`super::sink`]. Returns the kept weights. Touches the store only through
//! the loaders (images) and the sink.

use super::amp::GradScaler;
use super::checkpoint::{self, Checkpoint, LoopState};
use super::config::{LabelScope, PhaseSpec, Sampling, Trainable};
use super::epoch::{self, PhaseSetup, Position, TrainTotals, Validation};
use super::optim::Optimizer;
use super::sampling::{self, HardMining};
use super::sink::{EpochDone, SinkSender};
use super::TrainJob;
use crate::error::{Error, Result};
use crate::fold_job::{device, DeviceSetup, FoldImages};
use crate::ids::{AttributeId, Group};
use crate::image::loader::{Item, Loader, LoaderOptions, Sequential};
use crate::image::{Pipeline, Sampler};
use crate::model::{Arch, Network, ScriptModel, WeightBytes};
use crate::image::Source;
use crate::storage::keys::{self, Split};
use crate::storage::parquet::EpochRecord;
use crate::storage::Store;
use crate::telemetry::JobProgress;
use std::sync::Arc;
use tch::{nn, Tensor};
use tracing::{info, warn};

/// Writes checkpoints inside an epoch through the job's sink, by
/// `train.checkpoints.every_steps` / `every_minutes` (counted from the
/// epoch's start or the last checkpoint).
struct InEpochWriter<'a> {
    every_steps: Option<u32>,
    every: Option<std::time::Duration>,
    /// Optimiser steps since the last checkpoint.
    steps: u64,
    last: std::time::Instant,
    /// The loop state at the epoch's start.
    base: LoopState,
    phase: usize,
    vs: &'a nn::VarStore,
    sink: &'a SinkSender,
    label: &'a str,
}

impl epoch::StepCheckpoints for InEpochWriter<'_> {
    fn due(&mut self) -> bool {
        self.steps += 1;
        self.every_steps.is_some_and(|n| self.steps >= u64::from(n)) || self.every.is_some_and(|d| self.last.elapsed() >= d)
    }

    fn write(&mut self, net: &Network, optimizer: &Optimizer, scaler: &GradScaler, at: checkpoint::InEpoch) -> Result<()> {
        let mut state = self.base.clone();
        state.in_epoch = Some(at);
        state.phase = self.phase;
        state.optim_steps = optimizer.steps();
        (state.scaler_scale, state.scaler_tracker) = scaler.state();
        let bytes = checkpoint::encode(&state, &model_tensors(net, self.vs)?, &optimizer.state_tensors())?;
        self.sink.send_in_epoch(bytes, self.label)?;
        self.steps = 0;
        self.last = std::time::Instant::now();
        Ok(())
    }
}

/// Variable holding a TorchScript module's bytes in checkpoints.
const SCRIPT_MODULE: &str = "__torchscript_module__";

/// The newest complete checkpoint of a job, and the checkpoint of its best
/// epoch when the kept weights come from before the resume point.
pub struct Resume {
    key: String,
    checkpoint: Checkpoint,
    best: Option<(String, Checkpoint)>,
}

impl Resume {
    /// Reads what a rerun of `job` resumes from; `None` for a fresh start.
    ///
    /// # Errors
    /// [`Error::SpecChanged`] for a checkpoint of another spec; storage and
    /// checkpoint errors.
    pub async fn find(store: &Store, job: &TrainJob) -> Result<Option<Resume>> {
        let f = &job.fold;
        let key_of = |e: u32| keys::checkpoint(f.scope(), &f.model, f.fold, e);
        let prefix = keys::checkpoints(f.scope(), &f.model, f.fold);
        // A checkpoint from inside the epoch after the newest epoch
        // checkpoint is further on, and holds the whole state: the epoch
        // checkpoint is then not read (it was whole before the in-epoch one
        // was written, which is all `latest` would check).
        let newest = checkpoint::list(store, &prefix).await?.last().copied().unwrap_or(0);
        let in_epoch_key = keys::checkpoint_in_epoch(f.scope(), &f.model, f.fold);
        let (key, checkpoint) = match checkpoint::in_epoch(store, &in_epoch_key, &f.spec_hash, newest).await? {
            Some(c) => (in_epoch_key, c),
            None => match checkpoint::latest(store, &prefix, key_of, &f.spec_hash).await? {
                Some(l) => l,
                None => return Ok(None),
            },
        };
        let s = &checkpoint.state;
        // An in-epoch checkpoint's weights are not an epoch's: the best
        // epoch's are always read from its own file.
        let best = if s.best_epoch > 0 && (s.best_epoch != s.epochs_done || s.in_epoch.is_some()) {
            let best_key = key_of(s.best_epoch);
            let bytes = store.get(&best_key).await?;
            Some((best_key.clone(), checkpoint::decode(&best_key, &bytes)?))
        } else {
            None
        };
        Ok(Some(Resume { key, checkpoint, best }))
    }

    /// The stored checkpoint of the best epoch so far: read separately when
    /// it is older than the resume point, else the resume point itself (a
    /// resumed run whose later epochs never improve keeps it).
    fn best(self) -> Option<(String, Checkpoint)> {
        let s = &self.checkpoint.state;
        match self.best {
            Some(best) => Some(best),
            None if s.best_epoch > 0 && s.best_epoch == s.epochs_done && s.in_epoch.is_none() => Some((self.key, self.checkpoint)),
            None => None,
        }
    }
}

/// What the loop trained.
pub struct Trained {
    /// The kept (best epoch's) weights, as `model.safetensors` bytes.
    pub weights: Vec<u8>,
    pub best_epoch: u32,
    pub best_f2: f64,
    pub epochs_done: u32,
    pub epochs_run: u32,
    pub resumed_from: Option<u32>,
    pub history: Vec<EpochRecord>,
}

/// Everything the blocking loop owns.
pub struct Fit {
    job: TrainJob,
    store: Store,
    classes: usize,
    pipeline: Pipeline,
    train_items: Vec<Item>,
    valid_items: Vec<Item>,
    /// Per phase, the `[classes]` 0/1 mask of the labels it learns.
    masks: Vec<Option<Vec<f32>>>,
    /// Each class's group.
    groups: Vec<Group>,
    /// The shard sets to read from (objects when `None`).
    images: Option<FoldImages>,
    handle: tokio::runtime::Handle,
}

impl Fit {
    /// Prepares the loop of `job` (call on the runtime).
    ///
    /// # Errors
    /// As [`TrainJob::pipeline`].
    pub fn new(job: &TrainJob, store: &Store, classes: usize, train_items: Vec<Item>, valid_items: Vec<Item>, groups: &[Group]) -> Result<Fit> {
        let mask = |scope: LabelScope| -> Option<Vec<f32>> {
            let group = match scope {
                LabelScope::All => return None,
                LabelScope::Tags => Group::Tag,
                LabelScope::Cultures => Group::Culture,
            };
            Some(groups.iter().map(|g| if *g == group { 1.0 } else { 0.0 }).collect())
        };
        Ok(Fit {
            pipeline: job.pipeline()?,
            masks: job.train.phases.iter().map(|p| mask(p.labels)).collect(),
            groups: groups.to_vec(),
            job: job.clone(),
            store: store.clone(),
            classes,
            train_items,
            valid_items,
            images: None,
            handle: tokio::runtime::Handle::current(),
        })
    }

    /// Reads the images from the opened shard sets `images`.
    pub fn with_shards(mut self, images: FoldImages) -> Fit {
        self.images = Some(images);
        self
    }

    /// Runs every remaining epoch, sending each to `sink`.
    ///
    /// # Errors
    /// [`Error::Train`] for a NaN/inf loss; loader, model and checkpoint
    /// errors; a stopped sink.
    pub fn run(self, resume: Option<Resume>, init_weights: Option<(String, bytes::Bytes)>, sink: SinkSender) -> Result<Trained> {
        let label = self.job.fold.label();
        let train = &self.job.train;
        let device = device();
        let dev = DeviceSetup::new(device, train.precision, train.channels_last);
        tch::manual_seed(crate::seed::torch_init(self.job.seed));
        let vs = nn::VarStore::new(device);
        let mut net = self.open_network(&vs, resume.as_ref(), init_weights)?;
        dev.place_weights(&vs);
        let mut state = match &resume {
            Some(r) => {
                let s = &r.checkpoint.state;
                match &s.in_epoch {
                    Some(at) => info!(key = %r.key, epoch = s.epochs_done + 1, batches_done = at.batches, images_done = at.images, "resuming inside an epoch"),
                    None => info!(key = %r.key, epochs_done = s.epochs_done, "resuming from checkpoint"),
                }
                r.checkpoint.state.clone()
            }
            None => LoopState::fresh(&self.job.fold.spec_hash),
        };
        let resumed_from = resume.as_ref().map(|r| r.checkpoint.state.epochs_done);
        let mut scaler = GradScaler::new(dev.autocast);
        if resume.is_some() && dev.autocast {
            scaler.restore(state.scaler_scale, state.scaler_tracker);
        }
        let loaders = self.loaders(&dev)?;
        // Every remaining epoch's training (hard examples included) and
        // validation images: the job's ETA.
        let per_epoch = loaders.n_train as f64 * (1.0 + train.hard_negative_mining.unwrap_or(0.0)) + loaders.valid_labels.len() as f64;
        let remaining = train.epochs().saturating_sub(state.epochs_done) as f64;
        let _job = JobProgress::start(format!("train {label}"), (per_epoch * remaining).round() as u64);
        let mut optimizer: Option<(usize, Optimizer)> = None;
        let mut best_weights: Option<Vec<u8>> = None;
        let mut epochs_run = 0;
        for e in state.epochs_done..train.epochs() {
            let (pi, epoch_in_phase) = self.phase_of(e);
            let phase = &train.phases[pi];
            if optimizer.as_ref().is_none_or(|(i, _)| *i != pi) {
                optimizer = Some((pi, self.start_phase(&net, &vs, phase, pi, e, epoch_in_phase, &state, resume.as_ref())?));
            }
            let (_, opt) = optimizer.as_mut().expect("set above");
            let record = self.epoch(&mut net, &dev, &loaders, opt, &mut scaler, &mut state, (e, pi, epoch_in_phase), &label, (&vs, &sink))?;
            state.in_epoch = None;
            let improved = improves(&record, &state, phase.labels);
            state.history.push(record);
            if improved {
                state.best_f2 = state.history.last().map_or(f64::NAN, |r| r.valid_f2);
                state.best_epoch = e + 1;
            }
            state.epochs_done = e + 1;
            state.phase = pi;
            state.optim_steps = opt.steps();
            (state.scaler_scale, state.scaler_tracker) = scaler.state();
            if improved {
                best_weights = Some(net.checkpoint(&vs)?);
            }
            let bytes = checkpoint::encode(&state, &model_tensors(&net, &vs)?, &opt.state_tensors())?;
            sink.send(EpochDone { epoch: e + 1, checkpoint: bytes, history: state.history.clone(), best_epoch: state.best_epoch }, &label)?;
            epochs_run += 1;
        }
        if let Some(skipped) = Some(loaders.train.skipped()).filter(|s| !s.is_empty()) {
            warn!(images = skipped.len(), "training skipped bad images");
        }
        let weights = self.kept_weights(&mut net, &vs, &state, best_weights, resume.and_then(Resume::best))?;
        Ok(Trained {
            weights,
            best_epoch: state.best_epoch,
            best_f2: state.best_f2,
            epochs_done: state.epochs_done,
            epochs_run,
            resumed_from,
            history: state.history,
        })
    }

    /// Opens the job's network on `vs`: initial weights, or the resume
    /// checkpoint's variables (and module, for TorchScript).
    fn open_network(&self, vs: &nn::VarStore, resume: Option<&Resume>, init: Option<(String, bytes::Bytes)>) -> Result<Network> {
        let config = crate::model::ModelConfig { head: crate::model::HeadConfig { classes: self.classes as i64, ..self.job.network.head }, ..self.job.network.clone() };
        match resume {
            Some(r) if config.arch == Arch::Torchscript => Ok(Network::Script(script_module(&r.key, &r.checkpoint, vs)?)),
            Some(r) => {
                let net = Network::open(&crate::model::ModelConfig { weights: None, ..config }, vs, None)?.0;
                checkpoint::copy_into(&r.key, &sorted_variables(vs), &r.checkpoint.model)?;
                Ok(net)
            }
            None => {
                let weights = init.as_ref().map(|(file, bytes)| WeightBytes { file, bytes });
                let (net, report) = Network::open(&config, vs, weights)?;
                let fresh_head = report.as_ref().is_none_or(|r| r.fresh.iter().any(|n| n == "head.fc.bias"));
                if let (Network::Native(_), true) = (&net, fresh_head) {
                    init_head_bias(vs, &self.train_items, self.classes);
                }
                Ok(net)
            }
        }
    }

    /// The training and validation loaders (started on the runtime).
    fn loaders(&self, dev: &DeviceSetup) -> Result<Loaders> {
        let train = &self.job.train;
        let output = dev.loader_output();
        let train_opts = LoaderOptions { drop_last: false, ..LoaderOptions::from_section(&self.job.image, train.batch_size, self.classes, self.job.seed, output.clone()) };
        let labels: Vec<_> = self.train_items.iter().map(|i| i.labels.clone()).collect();
        let (shard_order, train_source, valid_source) = self.shard_reads()?;
        let base = match shard_order {
            Some(order) => sampling::limited(order, train.limit_images),
            None => sampling::sampler(train.sampling, &labels, self.classes, train.limit_images, self.job.seed),
        };
        let mining = train.hard_negative_mining.map(|_| Arc::new(HardMining::new(base.clone(), self.job.seed)));
        let sampler: Arc<dyn Sampler> = match &mining {
            Some(h) => h.clone(),
            None => base,
        };
        let valid_opts = LoaderOptions::from_section(&self.job.image, self.job.predict_batch, self.classes, self.job.seed, output);
        let _rt = self.handle.enter();
        let mut train_loader = Loader::new(self.store.clone(), self.train_items.clone(), self.pipeline.clone(), train_opts, sampler)?;
        if let Some(s) = train_source {
            train_loader = train_loader.with_source(s);
        }
        let mut valid_loader = Loader::new(self.store.clone(), self.valid_items.clone(), self.job.eval.clone(), valid_opts, Arc::new(Sequential))?;
        if let Some(s) = valid_source {
            valid_loader = valid_loader.with_source(s);
        }
        info!(train = %train_loader.source(), validation = %valid_loader.source(), "image sources");
        Ok(Loaders {
            train: train_loader,
            valid: valid_loader,
            valid_labels: self.valid_items.iter().map(|i| i.labels.clone()).collect(),
            mining,
            n_train: train.limit_images.map_or(self.train_items.len(), |l| l.min(self.train_items.len())),
        })
    }

    /// With shard sets: the training epoch's shard order (`None` when the
    /// training images are read as objects in the sampler's order, with
    /// the reason logged), the training source (`None` for objects) and
    /// the validation source.
    #[allow(clippy::type_complexity)]
    fn shard_reads(&self) -> Result<(Option<Arc<dyn Sampler>>, Option<Arc<dyn Source>>, Option<Arc<dyn Source>>)> {
        let Some(images) = &self.images else { return Ok((None, None, None)) };
        let train = &self.job.train;
        let valid = images.by_id(Split::Train, &self.valid_items)?;
        let why = if train.sampling == Sampling::LogClassWeights {
            Some("`sampling = \"log_class_weights\"` draws images with replacement")
        } else if train.hard_negative_mining.is_some() {
            Some("`hard_negative_mining` visits the hardest images again")
        } else {
            None
        };
        if let Some(why) = why {
            // The sampler's order, each batch read by id from the shards
            // (objects for images outside the set, or when only the order
            // is checked).
            let all_in_set = images.contains_all(Split::Train, &self.train_items);
            let source = if all_in_set { images.by_id(Split::Train, &self.train_items)? } else { None };
            info!(by_id = source.is_some(), "training reads in the sampler's order: {why}, and a sequential shard epoch reads each image exactly once");
            return Ok((None, source, valid));
        }
        Ok(match images.training(&self.train_items, self.job.seed)? {
            Some((order, source)) => (Some(order as Arc<dyn Sampler>), source, valid),
            None => (None, None, valid),
        })
    }

    /// The phase of epoch `e` (0-based over all phases) and the epoch
    /// within it.
    fn phase_of(&self, e: u32) -> (usize, u32) {
        let mut start = 0;
        for (i, p) in self.job.train.phases.iter().enumerate() {
            if e < start + p.epochs {
                return (i, e - start);
            }
            start += p.epochs;
        }
        unreachable!("epoch {e} is below the total of the phases")
    }

    /// Sets the trainable part of phase `pi` and its optimiser, restoring
    /// the optimiser's state when resuming inside the phase.
    #[allow(clippy::too_many_arguments)]
    fn start_phase(
        &self,
        net: &Network,
        vs: &nn::VarStore,
        phase: &PhaseSpec,
        pi: usize,
        e: u32,
        epoch_in_phase: u32,
        state: &LoopState,
        resume: Option<&Resume>,
    ) -> Result<Optimizer> {
        if let Network::Native(_) = net {
            net.set_backbone_trainable(phase.trainable == Trainable::All)?;
        }
        let params: Vec<(String, Tensor)> = sorted_variables(vs).into_iter().filter(|(_, t)| t.requires_grad()).collect();
        let mut opt = Optimizer::new(&phase.optimizer, params);
        if let Some(r) = resume {
            // The optimiser of an epoch-end checkpoint goes on in the same
            // phase's next epoch; an in-epoch one's in its own epoch.
            let at = &r.checkpoint.state;
            let inside = at.in_epoch.is_some();
            if state.epochs_done == e && at.phase == pi && (epoch_in_phase > 0 || inside) {
                opt.load_state(&r.checkpoint.optim, r.checkpoint.state.optim_steps)
                    .map_err(|err| Error::Checkpoint { key: r.key.clone(), message: err.to_string() })?;
            }
        }
        info!(phase = pi, name = %phase.display_name(pi), optimizer = phase.optimizer.name(), trainable = ?phase.trainable, labels = ?phase.labels, "phase starts");
        Ok(opt)
    }

    /// Trains and validates one epoch; its history record.
    #[allow(clippy::too_many_arguments)]
    fn epoch(
        &self,
        net: &mut Network,
        dev: &DeviceSetup,
        loaders: &Loaders,
        opt: &mut Optimizer,
        scaler: &mut GradScaler,
        state: &mut LoopState,
        (e, pi, epoch_in_phase): (u32, usize, u32),
        label: &str,
        (vs, sink): (&nn::VarStore, &SinkSender),
    ) -> Result<EpochRecord> {
        let train = &self.job.train;
        let phase = &train.phases[pi];
        let setup = PhaseSetup {
            phase,
            loss: phase.loss.unwrap_or(train.loss),
            mask: self.masks[pi].as_ref().map(|v| Tensor::from_slice(v).to_device(dev.device)),
            label_smoothing: train.label_smoothing,
            mixup: train.mixup,
            clip_grad_norm: train.clip_grad_norm,
            accumulation: train.accumulation(),
            track_items: train.hard_negative_mining.is_some(),
        };
        let pos = Position { job: label, epoch: e, epochs: train.epochs(), epoch_in_phase, last_checkpoint: (state.epochs_done > 0).then_some(state.epochs_done), seed: self.job.seed };
        let started = std::time::Instant::now();
        if let Some(h) = &loaders.mining {
            h.set_hard(state.hard.clone());
        }
        let images = loaders.n_train + state.hard.len();
        let batch_count = images.div_ceil(train.batch_size);
        // The rest of the epoch a resumed checkpoint was written in.
        let resume = state.in_epoch.take();
        let batches = loaders.train.epoch_from(e as u64, resume.as_ref().map_or(0, |r| r.batches));
        let policy = &train.checkpoints;
        let mut writer = InEpochWriter {
            every_steps: policy.every_steps,
            every: policy.every_minutes.map(|m| std::time::Duration::from_secs(u64::from(m) * 60)),
            steps: 0,
            last: std::time::Instant::now(),
            base: state.clone(),
            phase: pi,
            vs,
            sink,
            label,
        };
        let checkpoints: Option<&mut dyn epoch::StepCheckpoints> = if policy.in_epoch() { Some(&mut writer) } else { None };
        let totals = epoch::train_epoch(net, dev, &setup, opt, scaler, batches, batch_count, images, &pos, resume.as_ref(), checkpoints)?;
        if let Some(fraction) = train.hard_negative_mining {
            state.hard = sampling::hardest(&totals.item_losses, fraction, loaders.n_train);
        }
        let what = format!("validate {label} epoch {}/{}", e + 1, train.epochs());
        let v = epoch::validate(net, dev, loaders.valid.epoch(0), &loaders.valid_labels, &self.groups, &what)?;
        if !v.loss.is_finite() {
            warn!(
                epoch = e + 1,
                valid_loss = v.loss,
                "validation loss is not finite (training loss is): BatchNorm statistics or the learning rate may have diverged; NaN probabilities count as predicting nothing"
            );
        }
        Ok(record(e, phase.display_name(pi), &totals, &v, started, train.epochs()))
    }

    /// The weights the job keeps: the best epoch's (from memory, or from its
    /// checkpoint when it came before the resume point), else the last.
    fn kept_weights(&self, net: &mut Network, vs: &nn::VarStore, state: &LoopState, best: Option<Vec<u8>>, stored: Option<(String, Checkpoint)>) -> Result<Vec<u8>> {
        if state.best_epoch == state.epochs_done || state.best_epoch == 0 {
            return net.checkpoint(vs);
        }
        if let Some(bytes) = best {
            return Ok(bytes);
        }
        let (key, ck) = stored.ok_or_else(|| Error::Checkpoint {
            key: keys::checkpoint(self.job.fold.scope(), &self.job.fold.model, self.job.fold.fold, state.best_epoch),
            message: "the best epoch's checkpoint was not read before resuming".into(),
        })?;
        match net {
            Network::Native(_) => checkpoint::copy_into(&key, &sorted_variables(vs), &ck.model)?,
            Network::Script(_) => *net = Network::Script(script_module(&key, &ck, vs)?),
        }
        net.checkpoint(vs)
    }
}

/// The loaders of a job and what goes with them.
struct Loaders {
    train: Loader,
    valid: Loader,
    valid_labels: Vec<Vec<AttributeId>>,
    mining: Option<Arc<HardMining>>,
    /// Training images per epoch, before hard examples.
    n_train: usize,
}

/// The history record of epoch `e` (0-based), logged.
fn record(e: u32, phase: String, totals: &TrainTotals, v: &Validation, started: std::time::Instant, total_epochs: u32) -> EpochRecord {
    let record = EpochRecord {
        epoch: e + 1,
        phase,
        train_loss: totals.loss,
        valid_loss: v.loss,
        valid_f2: v.f2,
        valid_threshold: v.threshold,
        valid_f2_culture: v.f2_culture,
        valid_f2_tag: v.f2_tag,
        lr: totals.lr,
        train_images_per_sec: totals.images as f64 / totals.seconds.max(1e-9),
        seconds: started.elapsed().as_secs_f64(),
    };
    info!(
        epoch = e + 1,
        of = total_epochs,
        train_loss = format_args!("{:.4}", record.train_loss),
        valid_loss = format_args!("{:.4}", record.valid_loss),
        valid_f2 = format_args!("{:.4}", record.valid_f2),
        threshold = record.valid_threshold,
        images_per_sec = format_args!("{:.1}", record.train_images_per_sec),
        skipped_steps = totals.skipped_steps,
        "epoch done"
    );
    record
}

/// Whether `record` beats the kept epoch on the labels its phase trains: a
/// phase over every label compares F2 over every label; a tags-only (or
/// cultures-only) phase compares F2 over that group, so it keeps its best
/// epoch even where the other group got worse.
fn improves(record: &EpochRecord, state: &LoopState, labels: LabelScope) -> bool {
    let score = |r: &EpochRecord| match labels {
        LabelScope::All => r.valid_f2,
        LabelScope::Tags => r.valid_f2_tag,
        LabelScope::Cultures => r.valid_f2_culture,
    };
    let kept = state.history.iter().find(|r| r.epoch == state.best_epoch);
    match kept {
        // An old record without group scores: the stored all-label best.
        Some(k) if !score(k).is_nan() || labels == LabelScope::All => score(record) > score(k),
        Some(_) => record.valid_f2 > state.best_f2,
        None => score(record) > f64::NEG_INFINITY,
    }
}

/// The TorchScript module a checkpoint holds.
fn script_module(key: &str, ck: &Checkpoint, vs: &nn::VarStore) -> Result<ScriptModel> {
    let t = ck.model.get(SCRIPT_MODULE).ok_or_else(|| Error::Checkpoint { key: key.to_string(), message: "no TorchScript module in it".into() })?;
    ScriptModel::from_bytes(key, &Vec::<u8>::try_from(t)?, vs)
}

/// Starts a fresh head at the label prior: `head.fc.bias[c] = logit(p_c)`
/// with `p_c` the class's frequency in the training images (clamped to
/// [1e-4, 0.5]), so the first epoch does not spend itself learning that
/// almost every attribute is absent.
fn init_head_bias(vs: &nn::VarStore, items: &[Item], classes: usize) {
    let Some(bias) = vs.variables().get("head.fc.bias").map(|b| b.shallow_clone()) else { return };
    let mut counts = vec![0f64; classes];
    for item in items {
        for a in &item.labels {
            counts[a.0 as usize] += 1.0;
        }
    }
    let n = items.len().max(1) as f64;
    let prior: Vec<f32> = counts.iter().map(|c| (c / n).clamp(1e-4, 0.5)).map(|p| (p / (1.0 - p)).ln() as f32).collect();
    tch::no_grad(|| {
        let mut b = bias;
        b.copy_(&Tensor::from_slice(&prior).to_device(b.device()).to_kind(b.kind()));
    });
}

/// Every variable of `vs`, sorted by name.
fn sorted_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The model part of a checkpoint.
fn model_tensors(net: &Network, vs: &nn::VarStore) -> Result<Vec<(String, Tensor)>> {
    match net {
        Network::Native(_) => Ok(sorted_variables(vs)),
        Network::Script(_) => Ok(vec![(SCRIPT_MODULE.to_string(), Tensor::from_slice(&net.checkpoint(vs)?))]),
    }
}
