//! Train stage: `imet train --spec S --model M --fold K` trains model `M` on
//! every fold but `K`, validates on `K` after each epoch, checkpoints after
//! each epoch and keeps the weights of the best epoch by validation F2.
//! Phases switch the optimiser, the trainable part and the labels learnt
//! (recipe R3). A rerun resumes from the newest complete checkpoint; a
//! committed job is skipped.
//!
//! Reads `data/`, `runs/{exp}/folds.parquet` and the model's initial
//! weights; writes, under `runs/{exp}/models/{M}/fold={K}/`,
//! `checkpoints/epoch={e}.safetensors`, `history.parquet` (and its
//! TensorBoard events under `tensorboard/`), `model.safetensors` and
//! `_TRAINED.json` (last).

pub mod amp;
pub mod checkpoint;
pub mod epoch;
pub mod job;
pub mod loss;
pub mod optim;
pub mod sampling;
pub mod schedule;

use crate::data::sample::draw::splitmix;
use crate::data::{Fold, Group};
use crate::error::{Error, Result};
use crate::image::loader::{Loader, LoaderOptions, Sequential};
use crate::model::{Arch, Network, ScriptModel};
use crate::spec::{JobSpec, LabelScope, ModelSpec, Trainable};
use crate::storage::keys;
use crate::storage::manifest::{JobId, Manifest, OutputEntry};
use crate::storage::parquet::{write_history, EpochRecord};
use crate::storage::Store;
use checkpoint::LoopState;
use epoch::{DeviceSetup, PhaseSetup, Position};
use serde::Serialize;
use std::sync::Arc;
use tch::{nn, Tensor};
use tracing::{info, info_span, warn, Instrument};

/// Variable holding a TorchScript module's bytes in checkpoints.
const SCRIPT_MODULE: &str = "__torchscript_module__";

/// What a train job did.
#[derive(Clone, Debug, Serialize)]
pub struct TrainOutcome {
    pub experiment: String,
    pub model: String,
    pub fold: u8,
    /// Already committed: nothing was done.
    pub skipped: bool,
    /// Epoch (1-based) whose weights were kept, and its validation F2.
    pub best_epoch: u32,
    pub best_f2: f64,
    /// Epochs run by this process (0 when resumed at the end).
    pub epochs_run: u32,
    /// Resumed from this many completed epochs.
    pub resumed_from: Option<u32>,
    pub outputs: Vec<OutputEntry>,
}

/// Trains fold `fold` of model `model`.
///
/// # Errors
/// [`Error::Usage`] for an unknown model; [`Error::Train`] for missing
/// folds, a NaN/inf loss, or a model/input mismatch; store, input, image
/// and checkpoint errors. Whatever was committed before stays readable.
pub async fn run(spec: &JobSpec, model: &str, fold: Fold) -> Result<TrainOutcome> {
    let span = info_span!("job", kind = "train", experiment = %spec.experiment, model = %model, fold = fold.0);
    run_inner(spec, model, fold).instrument(span).await
}

async fn run_inner(spec: &JobSpec, model: &str, fold: Fold) -> Result<TrainOutcome> {
    let m = spec.model(model)?.clone();
    let store = spec.open_store()?;
    let hash = spec.model_hash(&m);
    let job = format!("{} fold {}", m.name, fold.0);
    let manifest_key = keys::trained(&spec.experiment, &m.name, fold);
    if let Some(done) = Manifest::committed(&store, &manifest_key, &hash).await? {
        info!(key = %manifest_key, "already trained for this spec; skipping");
        let history = crate::storage::parquet::read_history(&store, &keys::history(&spec.experiment, &m.name, fold)).await?;
        let best = history.iter().fold(None::<&EpochRecord>, |b, r| if b.is_none_or(|b| r.valid_f2 > b.valid_f2) { Some(r) } else { b });
        return Ok(TrainOutcome {
            experiment: spec.experiment.clone(),
            model: m.name.clone(),
            fold: fold.0,
            skipped: true,
            best_epoch: best.map_or(0, |r| r.epoch),
            best_f2: best.map_or(f64::NAN, |r| r.valid_f2),
            epochs_run: 0,
            resumed_from: None,
            outputs: done.outputs,
        });
    }
    let data = job::fold_inputs(&store, spec, &job, fold).await?;
    let classes = data.inputs.vocab.len();
    if m.head.classes != classes as i64 && m.head.classes != crate::model::DEFAULT_CLASSES {
        return Err(Error::Train {
            job,
            message: format!("models[{}].head.classes = {} but data/labels.csv has {classes} attributes", m.name, m.head.classes),
        });
    }
    let mask = |scope: LabelScope| -> Option<Vec<f32>> {
        let group = match scope {
            LabelScope::All => return None,
            LabelScope::Tags => Group::Tag,
            LabelScope::Cultures => Group::Culture,
        };
        Some(data.inputs.vocab.groups().iter().map(|g| if *g == group { 1.0 } else { 0.0 }).collect())
    };
    let masks: Vec<Option<Vec<f32>>> = m.train.phases.iter().map(|p| mask(p.labels)).collect();
    let ctx = Ctx {
        spec: spec.clone(),
        model: m.clone(),
        fold,
        job: job.clone(),
        store: store.clone(),
        hash: hash.clone(),
        classes,
        seed: job::job_seed(spec, &m, fold),
        train_pipeline: job::train_pipeline(spec, &m, &job)?,
        train_items: data.train,
        valid_items: data.valid,
        masks,
        handle: tokio::runtime::Handle::current(),
    };
    let span = tracing::Span::current();
    let outcome = tokio::task::spawn_blocking(move || span.in_scope(|| train_blocking(ctx))).await??;
    info!(best_epoch = outcome.best_epoch, best_f2 = outcome.best_f2, "trained");
    Ok(outcome)
}

/// Everything the blocking training loop owns.
struct Ctx {
    spec: JobSpec,
    model: ModelSpec,
    fold: Fold,
    job: String,
    store: Store,
    hash: String,
    classes: usize,
    seed: u64,
    train_pipeline: crate::image::Pipeline,
    train_items: Vec<crate::image::loader::Item>,
    valid_items: Vec<crate::image::loader::Item>,
    masks: Vec<Option<Vec<f32>>>,
    handle: tokio::runtime::Handle,
}

/// Opens the job's network on `vs`: initial weights, or a checkpoint's
/// variables (and module, for TorchScript).
fn open_network(ctx: &Ctx, vs: &nn::VarStore, resume: Option<&(String, checkpoint::Checkpoint)>) -> Result<Network> {
    let config = ctx.model.network(ctx.classes as i64);
    match resume {
        Some((key, ck)) if config.arch == Arch::Torchscript => {
            let t = ck.model.get(SCRIPT_MODULE).ok_or_else(|| Error::Checkpoint { key: key.clone(), message: "no TorchScript module in it".into() })?;
            let bytes = Vec::<u8>::try_from(t)?;
            Ok(Network::Script(ScriptModel::from_bytes(key, &bytes, vs)?))
        }
        Some((key, ck)) => {
            let net = ctx.handle.block_on(Network::open(&crate::model::ModelConfig { weights: None, ..config }, vs))?.0;
            checkpoint::copy_into(key, &sorted_variables(vs), &ck.model)?;
            Ok(net)
        }
        None => {
            let (net, report) = ctx.handle.block_on(Network::open(&config, vs))?;
            let fresh_head = report.as_ref().is_none_or(|r| r.fresh.iter().any(|n| n == "head.fc.bias"));
            if let (Network::Native(_), true) = (&net, fresh_head) {
                init_head_bias(vs, &ctx.train_items, ctx.classes);
            }
            Ok(net)
        }
    }
}

/// Starts a fresh head at the label prior: `head.fc.bias[c] = logit(p_c)`
/// with `p_c` the class's frequency in the training images (clamped to
/// [1e-4, 0.5]), so the first epoch does not spend itself learning that
/// almost every attribute is absent.
fn init_head_bias(vs: &nn::VarStore, items: &[crate::image::loader::Item], classes: usize) {
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

fn train_blocking(ctx: Ctx) -> Result<TrainOutcome> {
    let exp = ctx.spec.experiment.clone();
    let m = &ctx.model;
    let (store, handle) = (&ctx.store, &ctx.handle);
    let ck_prefix = keys::checkpoints(&exp, &m.name, ctx.fold);
    let key_of = |e: u32| keys::checkpoint(&exp, &m.name, ctx.fold, e);
    let resume = handle.block_on(checkpoint::latest(store, &ck_prefix, key_of, &ctx.hash))?;
    let device = job::device();
    let dev = DeviceSetup::new(device, m.train.precision, m.train.channels_last);
    tch::manual_seed(splitmix(ctx.seed ^ 0x1417) as i64);
    let vs = nn::VarStore::new(device);
    let mut net = open_network(&ctx, &vs, resume.as_ref())?;
    dev.place_weights(&vs);
    let mut state = match &resume {
        Some((key, ck)) => {
            info!(key = %key, epochs_done = ck.state.epochs_done, "resuming from checkpoint");
            ck.state.clone()
        }
        None => LoopState {
            epochs_done: 0,
            phase: 0,
            optim_steps: 0,
            scaler_scale: 0.0,
            scaler_tracker: 0,
            best_f2: f64::NEG_INFINITY,
            best_epoch: 0,
            history: Vec::new(),
            hard: Vec::new(),
            spec_hash: ctx.hash.clone(),
        },
    };
    let resumed_from = resume.as_ref().map(|(_, ck)| ck.state.epochs_done);
    let mut scaler = amp::GradScaler::new(dev.autocast);
    if resume.is_some() && dev.autocast {
        scaler.restore(state.scaler_scale, state.scaler_tracker);
    }

    let output = dev.loader_output();
    let train_opts = LoaderOptions { drop_last: false, ..LoaderOptions::from_section(&ctx.spec.image, m.train.batch_size, ctx.classes, ctx.seed, output.clone()) };
    let labels: Vec<_> = ctx.train_items.iter().map(|i| i.labels.clone()).collect();
    let base = sampling::sampler(m.train.sampling, &labels, ctx.classes, m.train.limit_images, ctx.seed);
    let mining = m.train.hard_negative_mining.map(|_| Arc::new(sampling::HardMining::new(base.clone(), ctx.seed)));
    let sampler: Arc<dyn crate::image::Sampler> = match &mining {
        Some(h) => h.clone(),
        None => base,
    };
    let n_train = m.train.limit_images.map_or(ctx.train_items.len(), |l| l.min(ctx.train_items.len()));
    let valid_opts = LoaderOptions::from_section(&ctx.spec.image, m.predict_batch(), ctx.classes, ctx.seed, output);
    let valid_labels: Vec<_> = ctx.valid_items.iter().map(|i| i.labels.clone()).collect();
    let (train_loader, valid_loader) = {
        let _rt = handle.enter();
        (
            Loader::new(store.clone(), ctx.train_items.clone(), ctx.train_pipeline.clone(), train_opts, sampler)?,
            Loader::new(store.clone(), ctx.valid_items.clone(), job::eval_pipeline(m), valid_opts, Arc::new(Sequential))?,
        )
    };

    let total_epochs = m.epochs();
    let phase_of = |e: u32| {
        let mut start = 0;
        for (i, p) in m.train.phases.iter().enumerate() {
            if e < start + p.epochs {
                return (i, e - start);
            }
            start += p.epochs;
        }
        unreachable!("epoch {e} is below the total of the phases")
    };
    let mut optimizer: Option<(usize, optim::Optimizer)> = None;
    let mut epochs_run = 0;
    let history_key = keys::history(&exp, &m.name, ctx.fold);
    // The entry of this process's last history write; a job resumed after
    // its last epoch writes the history once more for the manifest.
    let mut history_entry = None;
    for e in state.epochs_done..total_epochs {
        let (pi, epoch_in_phase) = phase_of(e);
        let phase = &m.train.phases[pi];
        if optimizer.as_ref().is_none_or(|(i, _)| *i != pi) {
            match (&net, phase.trainable) {
                (Network::Native(_), t) => net.set_backbone_trainable(t == Trainable::All)?,
                (Network::Script(_), _) => {}
            }
            let params: Vec<(String, Tensor)> = sorted_variables(&vs).into_iter().filter(|(_, t)| t.requires_grad()).collect();
            let mut opt = optim::Optimizer::new(&phase.optimizer, params);
            if let Some((key, ck)) = &resume {
                if state.epochs_done == e && ck.state.phase == pi && epoch_in_phase > 0 {
                    opt.load_state(&ck.optim, ck.state.optim_steps).map_err(|err| Error::Checkpoint { key: key.clone(), message: err.to_string() })?;
                }
            }
            info!(phase = pi, name = %phase_name(phase, pi), optimizer = phase.optimizer.name(), trainable = ?phase.trainable, labels = ?phase.labels, "phase starts");
            optimizer = Some((pi, opt));
        }
        let (_, opt) = optimizer.as_mut().expect("set above");
        let setup = PhaseSetup {
            phase,
            loss: phase.loss.unwrap_or(m.train.loss),
            mask: ctx.masks[pi].as_ref().map(|v| Tensor::from_slice(v).to_device(device)),
            label_smoothing: m.train.label_smoothing,
            mixup: m.train.mixup,
            clip_grad_norm: m.train.clip_grad_norm,
            accumulation: m.accumulation(),
            track_items: m.train.hard_negative_mining.is_some(),
        };
        let pos = Position {
            job: &ctx.job,
            epoch: e,
            epoch_in_phase,
            last_checkpoint: (state.epochs_done > 0).then_some(state.epochs_done),
            seed: ctx.seed,
        };
        let started = std::time::Instant::now();
        // Dropout and other torch randomness restart from a per-epoch seed,
        // so a resumed epoch draws what the uninterrupted one drew.
        tch::manual_seed(splitmix(ctx.seed ^ splitmix(e as u64 + 1)) as i64);
        if let Some(h) = &mining {
            h.set_hard(state.hard.clone());
        }
        let batch_count = (n_train + state.hard.len()).div_ceil(m.train.batch_size);
        let totals = epoch::train_epoch(&mut net, &dev, &setup, opt, &mut scaler, train_loader.epoch(e as u64), batch_count, &pos)?;
        if let Some(fraction) = m.train.hard_negative_mining {
            state.hard = sampling::hardest(&totals.item_losses, fraction, n_train);
        }
        let v = epoch::validate(&mut net, &dev, valid_loader.epoch(0), &valid_labels, ctx.classes)?;
        if !v.loss.is_finite() {
            warn!(
                epoch = e + 1,
                valid_loss = v.loss,
                "validation loss is not finite (training loss is): BatchNorm statistics or the learning rate may have diverged; NaN probabilities count as predicting nothing"
            );
        }
        let record = EpochRecord {
            epoch: e + 1,
            phase: phase_name(phase, pi),
            train_loss: totals.loss,
            valid_loss: v.loss,
            valid_f2: v.f2,
            valid_threshold: v.threshold,
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
        state.history.push(record);
        if v.f2 > state.best_f2 {
            state.best_f2 = v.f2;
            state.best_epoch = e + 1;
        }
        state.epochs_done = e + 1;
        state.phase = pi;
        state.optim_steps = opt.steps();
        (state.scaler_scale, state.scaler_tracker) = scaler.state();
        let bytes = checkpoint::encode(&state, &model_tensors(&net, &vs)?, &opt.state_tensors())?;
        handle.block_on(store.put(&key_of(e + 1), bytes))?;
        history_entry = Some(handle.block_on(write_history(store, &history_key, &state.history, &exp, &m.name, ctx.fold, &ctx.hash))?);
        handle.block_on(store.put(&keys::tensorboard_events(&exp, &m.name, ctx.fold), crate::storage::tensorboard::events_from_history(&state.history)))?;
        handle.block_on(checkpoint::prune(store, &ck_prefix, key_of, &[e + 1, state.best_epoch]))?;
        epochs_run += 1;
    }
    if let Some(skipped) = Some(train_loader.skipped()).filter(|s| !s.is_empty()) {
        warn!(images = skipped.len(), "training skipped bad images");
    }

    // Keep the best epoch's weights.
    if state.best_epoch != state.epochs_done && state.best_epoch > 0 {
        let key = key_of(state.best_epoch);
        let bytes = handle.block_on(store.get(&key))?;
        let best = checkpoint::decode(&key, &bytes)?;
        if let Network::Native(_) = net {
            checkpoint::copy_into(&key, &sorted_variables(&vs), &best.model)?;
        } else {
            let t = best.model.get(SCRIPT_MODULE).ok_or_else(|| Error::Checkpoint { key: key.clone(), message: "no TorchScript module in it".into() })?;
            net = Network::Script(ScriptModel::from_bytes(&key, &Vec::<u8>::try_from(t)?, &vs)?);
        }
    }
    let weights_key = keys::weights(&exp, &m.name, ctx.fold);
    let weights = net.checkpoint(&vs)?;
    let mut outputs = vec![OutputEntry::of_bytes(&weights_key, &weights)];
    handle.block_on(store.put(&weights_key, weights))?;
    outputs.push(match history_entry {
        Some(entry) => entry,
        None => handle.block_on(write_history(store, &history_key, &state.history, &exp, &m.name, ctx.fold, &ctx.hash))?,
    });
    let manifest = Manifest::new(
        JobId { kind: "train".into(), experiment: exp.clone(), model: Some(m.name.clone()), fold: Some(ctx.fold.0) },
        ctx.hash.clone(),
        outputs.clone(),
    );
    handle.block_on(manifest.commit(store, &keys::trained(&exp, &m.name, ctx.fold)))?;
    handle.block_on(checkpoint::prune(store, &ck_prefix, key_of, &[state.epochs_done]))?;
    Ok(TrainOutcome {
        experiment: exp.clone(),
        model: m.name.clone(),
        fold: ctx.fold.0,
        skipped: false,
        best_epoch: state.best_epoch,
        best_f2: state.best_f2,
        epochs_run,
        resumed_from,
        outputs,
    })
}

/// `name`, or `phase{i}` when the phase has none.
pub fn phase_name(phase: &crate::spec::PhaseSpec, i: usize) -> String {
    phase.name.clone().unwrap_or_else(|| format!("phase{i}"))
}
