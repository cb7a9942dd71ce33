//! Train stage: trains one model on every fold but `K`, validates on `K`
//! after each epoch, checkpoints after each epoch (and inside epochs, with
//! `checkpoints.every_steps` / `every_minutes`) and keeps the weights of
//! the best epoch by validation F2. Phases switch the optimiser, the
//! trainable part and the labels learnt (recipe R3). A rerun resumes from
//! the newest complete checkpoint; a committed job is skipped.
//!
//! The work is a compute loop ([`fit`], on a blocking thread) that sends
//! each epoch's record to an output task ([`sink`]) writing checkpoints and
//! history while the next epoch computes.
//!
//! Reads `data/`, `runs/{exp}/folds.parquet` and the model's initial
//! weights; writes, under `runs/{exp}/models/{M}/fold={K}/`,
//! `checkpoints/epoch={e}.safetensors`, `checkpoints/in-epoch.safetensors`,
//! `history.parquet`,
//! `model.safetensors` and `_TRAINED.json` (last).

pub mod amp;
pub mod checkpoint;
pub mod config;
pub mod epoch;
pub mod fit;
pub mod loss;
pub mod optim;
pub mod sampling;
pub mod schedule;
pub mod sink;

use crate::error::{Error, Result};
use crate::fold_job::{fetch_weights, fold_inputs, FoldJob};
use crate::image::{ImageSection, Pipeline};
use crate::model::{ModelConfig, DEFAULT_CLASSES};
use crate::storage::keys;
use crate::storage::parquet::{read_history, EpochRecord};
use crate::storage::{JobRef, OutputEntry, Ran, Store};
use config::TrainSection;
use serde::Serialize;
use tracing::{info, info_span, Instrument};

/// One train job: the fold job and everything its training reads from the
/// spec.
#[derive(Clone, Debug)]
pub struct TrainJob {
    pub fold: FoldJob,
    /// The network as the spec gives it (`head.classes` is checked against
    /// the vocabulary, which sets the real count).
    pub network: ModelConfig,
    /// Square input size.
    pub size: u32,
    pub train: TrainSection,
    /// Training augmentations (the model's own, else `[image] augment`);
    /// empty: the evaluation resize.
    pub augment: Pipeline,
    /// How validation images reach `size`.
    pub eval: Pipeline,
    pub image: ImageSection,
    /// Images per validation batch.
    pub predict_batch: usize,
    /// The job's seed ([`crate::seed::fold_job`]).
    pub seed: u64,
    /// Start from this fold model of the job's store (an earlier stage's
    /// `model.safetensors`) instead of `network.weights`.
    pub init_from: Option<String>,
    /// Read the images from the experiment's training shard set (its shard
    /// job is among `fold.inputs`).
    pub shards: Option<crate::fold_job::ShardReads>,
}

impl TrainJob {
    /// The job as the store sees it (`_TRAINED.json`).
    pub fn job_ref(&self) -> JobRef {
        let f = &self.fold;
        JobRef { id: f.job_id("train"), manifest: keys::trained(f.scope(), &f.model, f.fold), spec_hash: f.spec_hash.clone(), inputs: f.inputs.clone() }
    }

    /// The training augmentations, or the evaluation resize when none are
    /// set.
    ///
    /// # Errors
    /// [`Error::Train`] when the pipeline does not end at the model's size.
    pub fn pipeline(&self) -> Result<Pipeline> {
        if self.augment.0.is_empty() {
            return Ok(self.eval.clone());
        }
        match self.augment.output_size() {
            Some(s) if s == self.size => Ok(self.augment.clone()),
            other => Err(Error::Train {
                job: self.fold.label(),
                message: format!(
                    "the training augmentations produce {} but models[{}].size = {}; make the sizing transform's size match",
                    other.map_or("no fixed size".to_string(), |s| format!("{s}x{s} images")),
                    self.fold.model,
                    self.size
                ),
            }),
        }
    }
}

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

/// Trains the fold model of `job` against `store`.
///
/// # Errors
/// [`Error::Train`] for missing folds, a NaN/inf loss, or a model/input
/// mismatch; store, input, image and checkpoint errors. Whatever was
/// committed before stays readable.
pub async fn run(store: &Store, job: &TrainJob) -> Result<TrainOutcome> {
    let f = &job.fold;
    let span = info_span!("job", kind = "train", experiment = %f.experiment, model = %f.model, fold = f.fold.0);
    run_inner(store, job).instrument(span).await
}

async fn run_inner(store: &Store, job: &TrainJob) -> Result<TrainOutcome> {
    let f = &job.fold;
    let outcome = |skipped, best: Option<&EpochRecord>, epochs_run, resumed_from, outputs| TrainOutcome {
        experiment: f.experiment.clone(),
        model: f.model.clone(),
        fold: f.fold.0,
        skipped,
        best_epoch: best.map_or(0, |r| r.epoch),
        best_f2: best.map_or(f64::NAN, |r| r.valid_f2),
        epochs_run,
        resumed_from,
        outputs,
    };
    let ran = job.job_ref().run_once(store, || train(store, job)).await?;
    match ran {
        Ran::Skipped(done) => {
            let history = read_history(store, &keys::history(f.scope(), &f.model, f.fold)).await?;
            let best = history.iter().fold(None::<&EpochRecord>, |b, r| if b.is_none_or(|b| r.valid_f2 > b.valid_f2) { Some(r) } else { b });
            Ok(outcome(true, best, 0, None, done.outputs))
        }
        Ran::Done { outcome: trained, manifest, .. } => {
            if let Some(keep) = job.train.checkpoints.after_commit(trained.epochs_done) {
                sink::prune(store, f, &keep).await?;
            }
            info!(best_epoch = trained.best_epoch, best_f2 = trained.best_f2, "trained");
            Ok(TrainOutcome {
                best_epoch: trained.best_epoch,
                best_f2: trained.best_f2,
                ..outcome(false, None, trained.epochs_run, trained.resumed_from, manifest.outputs)
            })
        }
    }
}

/// The work of a train job that is not committed yet: fit, then write the
/// kept weights. Returns what was trained and every output.
async fn train(store: &Store, job: &TrainJob) -> Result<(fit::Trained, Vec<OutputEntry>)> {
    let f = &job.fold;
    let data = fold_inputs(store, f).await?;
    let classes = data.inputs.vocab.len();
    if job.network.head.classes != classes as i64 && job.network.head.classes != DEFAULT_CLASSES {
        return Err(Error::Train {
            job: f.label(),
            message: format!("models[{}].head.classes = {} but data/labels.csv has {classes} attributes", f.model, job.network.head.classes),
        });
    }
    let resume = fit::Resume::find(store, job).await?;
    let init_weights = match (&resume, &job.init_from, &job.network.weights) {
        (Some(_), _, _) => None,
        (None, Some(key), _) => Some((format!("{}/{key}", store.url().trim_end_matches('/')), store.get(key).await?)),
        (None, None, Some(url)) => Some((url.clone(), fetch_weights(url).await?)),
        (None, None, None) => None,
    };
    if data.dropped > 0 || data.pseudo > 0 {
        info!(dropped = data.dropped, pseudo_labelled = data.pseudo, train = data.train.len(), "training data edited by the stage");
    }
    let sink = sink::Sink::start(store.clone(), f.clone(), job.train.checkpoints);
    let mut ctx = fit::Fit::new(job, store, classes, data.train, data.valid, data.inputs.vocab.groups())?;
    if let Some(reads) = &job.shards {
        ctx = ctx.with_shards(crate::fold_job::FoldImages::open(store, &f.experiment, reads, &[keys::Split::Train]).await?);
    }
    let span = tracing::Span::current();
    let tx = sink.sender();
    let fitted = tokio::task::spawn_blocking(move || span.in_scope(|| ctx.run(resume, init_weights, tx))).await?;
    // The writer's error comes first: a loop stopped by it only says so.
    let history_entry = sink.finish().await?;
    let trained = fitted?;
    let weights_key = keys::weights(f.scope(), &f.model, f.fold);
    let mut outputs = vec![OutputEntry::of_bytes(&weights_key, &trained.weights)];
    store.put(&weights_key, trained.weights.clone()).await?;
    outputs.push(match history_entry {
        Some(entry) => entry,
        // Resumed after the last epoch: the history once more, for the manifest.
        None => {
            let key = keys::history(f.scope(), &f.model, f.fold);
            crate::storage::parquet::write_history(store, &key, &trained.history, &f.experiment, &f.model, f.fold, &f.spec_hash).await?
        }
    });
    Ok((trained, outputs))
}
