//! Predict stage: loads a fold model's kept weights and writes
//! probabilities averaged over the model's test-time views for the fold's
//! own images (OOF) and for the test set, as predictions Parquet with
//! provenance metadata, then the fold job's `_SUCCESS.json`. A committed
//! job is skipped. Each image is read and decoded once and every view is
//! rendered from the decoded pixels (one loader pass per image set); with
//! `[image] source = "shards"` the images are read by id from the shard
//! sets.
//!
//! Reads `data/`, `runs/{exp}/folds.parquet`,
//! `runs/{exp}/models/{M}/fold={K}/{_TRAINED.json,model.safetensors}`;
//! writes `oof.parquet`, `test.parquet`, `predict_stats.json` and
//! `_SUCCESS.json` (last) beside them.

pub mod config;
pub mod tta;

use crate::error::{Error, Result};
use crate::fold_job::{device, fold_inputs, predict_views, DeviceSetup, FoldImages, FoldJob, Precision, ShardReads};
use crate::ids::ImageId;
use crate::image::loader::Item;
use crate::image::Source;
use crate::storage::keys::Split;
use crate::image::{ImageSection, Pipeline, TtaSettings};
use crate::model::{ModelConfig, Network, WeightBytes};
use crate::storage::keys;
use crate::storage::parquet::{write_predictions_owned, PredictionKind, PredictionMeta, Predictions};
use crate::storage::{JobRef, Manifest, OutputEntry, Ran, Store, Upstream};
use serde::Serialize;
use std::sync::Arc;
use tch::nn;
use tracing::{info, info_span, Instrument};

/// One predict job: the fold job and everything its prediction reads from
/// the spec.
#[derive(Clone, Debug)]
pub struct PredictJob {
    pub fold: FoldJob,
    /// The network (its `weights` are ignored: the fold model's are used).
    pub network: ModelConfig,
    /// Square input size.
    pub size: u32,
    /// How images reach `size` before the views.
    pub eval: Pipeline,
    pub tta: TtaSettings,
    pub image: ImageSection,
    pub batch_size: usize,
    /// Predict at most this many test images (smoke runs).
    pub limit_images: Option<usize>,
    pub precision: Precision,
    pub channels_last: bool,
    /// Read the images by id from the experiment's shard sets.
    pub shards: Option<ShardReads>,
    /// Also predict the fold's validation images (`oof.parquet`); `false`
    /// for test-time inference (`[inference] oof = false`): test images
    /// only, reading neither `train.csv`, `folds.parquet` nor a training
    /// image, and the weights checked against the train job's manifest.
    pub oof: bool,
}

impl PredictJob {
    /// The job as the store sees it (`_SUCCESS.json`).
    pub fn job_ref(&self) -> JobRef {
        let f = &self.fold;
        let mut inputs = vec![Upstream::optional(keys::trained(f.scope(), &f.model, f.fold), f.command("train"))];
        if self.shards.is_some() {
            inputs.extend([Split::Train, Split::Test].map(|s| ShardReads::upstream(&f.experiment, s)));
        }
        JobRef { id: f.job_id("predict"), manifest: keys::success(f.scope(), &f.model, f.fold), spec_hash: f.spec_hash.clone(), inputs }
    }
}

/// What a predict job did.
#[derive(Clone, Debug, Serialize)]
pub struct PredictOutcome {
    pub experiment: String,
    pub model: String,
    pub fold: u8,
    pub skipped: bool,
    pub oof_images: usize,
    pub test_images: usize,
    pub views: usize,
    pub outputs: Vec<OutputEntry>,
}

/// Prediction throughput of a fold model (`predict_stats.json`), read by
/// inference-budget estimates.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct PredictStats {
    /// Images predicted (OOF + test), each over `views` views.
    pub images: u64,
    pub views: u64,
    pub seconds: f64,
    /// Image-views per second.
    #[serde(default)]
    pub images_per_sec: f64,
    /// `cpu` or `cuda:N`.
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub size: u32,
    #[serde(default)]
    pub batch_size: u64,
}

/// Predicts the fold model of `job` against `store`.
///
/// # Errors
/// [`Error::Predict`] when the fold model is not trained for this spec;
/// store, input, image and model errors. Nothing is committed on error.
pub async fn run(store: &Store, job: &PredictJob) -> Result<PredictOutcome> {
    let f = &job.fold;
    let span = info_span!("job", kind = "predict", experiment = %f.experiment, model = %f.model, fold = f.fold.0);
    run_inner(store, job).instrument(span).await
}

async fn run_inner(store: &Store, job: &PredictJob) -> Result<PredictOutcome> {
    let f = &job.fold;
    let ran = job.job_ref().run_once(store, || predict(store, job)).await?;
    let (skipped, counts, outputs) = match ran {
        Ran::Skipped(done) => (true, (0, 0, 0), done.outputs),
        Ran::Done { outcome, manifest, .. } => (false, outcome, manifest.outputs),
    };
    Ok(PredictOutcome {
        experiment: f.experiment.clone(),
        model: f.model.clone(),
        fold: f.fold.0,
        skipped,
        oof_images: counts.0,
        test_images: counts.1,
        views: counts.2,
        outputs,
    })
}

/// The work of a predict job that is not committed yet: `(oof images, test
/// images, views)` and every output (the train job's included).
async fn predict(store: &Store, job: &PredictJob) -> Result<((usize, usize, usize), Vec<OutputEntry>)> {
    let f = &job.fold;
    let (exp, scope, model, fold) = (&f.experiment, f.scope(), &f.model, f.fold);
    let trained_key = keys::trained(scope, model, fold);
    let not_trained = || Error::Predict {
        job: f.label(),
        message: format!(
            "`{trained_key}` is missing: the fold model is not trained for this spec; run `imet train --spec <spec> --model {model} --fold {}` first",
            fold.0
        ),
    };
    let weights_key = keys::weights(scope, model, fold);
    // The train job's outputs, listed again in this job's manifest: all of
    // them, or for test-time inference (a package holds no checkpoints)
    // the weights alone, which must be the bytes the train job committed.
    let (mut outputs, vocab, valid, mut test, weights) = if job.oof {
        let trained = Manifest::committed(store, &trained_key, &f.spec_hash).await?.ok_or_else(not_trained)?;
        let data = fold_inputs(store, f).await?;
        let weights = store.get(&weights_key).await?;
        (trained.outputs, data.inputs.vocab, Some(data.valid), data.test, weights)
    } else {
        let trained = Manifest::load(store, &trained_key).await?.ok_or_else(not_trained)?;
        if trained.spec_hash != f.spec_hash {
            return Err(Error::SpecChanged { key: trained_key.clone(), expected: f.spec_hash.clone(), found: trained.spec_hash });
        }
        let weights = store.get(&weights_key).await?;
        let entry = OutputEntry::of_bytes(&weights_key, &weights);
        if !trained.outputs.contains(&entry) {
            return Err(Error::Predict {
                job: f.label(),
                message: format!(
                    "`{weights_key}` ({} bytes, sha256 {}) is not the file `{trained_key}` lists; the copy is damaged: package the run again",
                    entry.size, entry.sha256
                ),
            });
        }
        let (vocab, ids) = crate::data::load_test_inputs(store).await?;
        let test = ids.ids.iter().map(|id| Item::new(keys::image(Split::Test, id), id.clone(), Vec::<crate::ids::AttributeId>::new())).collect();
        (vec![entry], vocab, None, test, weights)
    };
    let classes = vocab.len();
    if let Some(limit) = job.limit_images {
        test.truncate(limit);
    }
    let weights_file = format!("{}/{}", store.url().trim_end_matches('/'), weights_key);
    let (mut oof_source, mut test_source) = (None, None);
    if let Some(reads) = &job.shards {
        let images = FoldImages::open(store, exp, reads, &[Split::Train, Split::Test]).await?;
        if let Some(valid) = &valid {
            oof_source = images.by_id(Split::Train, valid)?;
        }
        test_source = images.by_id(Split::Test, &test)?;
    }
    let ctx = Ctx { job: job.clone(), classes, store: store.clone(), oof: valid, test, oof_source, test_source, handle: tokio::runtime::Handle::current() };
    let span = tracing::Span::current();
    let (oof, test, stats) = tokio::task::spawn_blocking(move || span.in_scope(|| predict_blocking(ctx, &weights_file, &weights))).await??;

    let vocabulary_hash = vocab.hash();
    let meta = |kind| PredictionMeta {
        experiment: exp.clone(),
        model: model.clone(),
        fold: Some(fold),
        kind,
        tta: stats.views as u32,
        spec_hash: f.spec_hash.clone(),
        class_count: classes,
        vocabulary_hash: vocabulary_hash.clone(),
    };
    let oof_n = oof.as_ref().map_or(0, |o| o.0.len());
    let test_n = test.0.len();
    if let Some(oof) = oof {
        let oof_preds = Arc::new(Predictions { ids: oof.0, probs: oof.1, meta: meta(PredictionKind::Oof) });
        outputs.push(write_predictions_owned(store, &keys::oof(scope, model, fold), oof_preds).await?);
    }
    let test_preds = Arc::new(Predictions { ids: test.0, probs: test.1, meta: meta(PredictionKind::Test) });
    outputs.push(write_predictions_owned(store, &keys::test_predictions(scope, model, fold), test_preds).await?);
    let stats_key = keys::predict_stats(scope, model, fold);
    let stats_bytes = serde_json::to_vec_pretty(&stats)?;
    outputs.push(OutputEntry::of_bytes(&stats_key, &stats_bytes));
    store.put(&stats_key, stats_bytes).await?;
    info!(oof = oof_n, test = test_n, views = stats.views, images_per_sec = format_args!("{:.1}", stats.images_per_sec), "predicted");
    Ok(((oof_n, test_n, stats.views as usize), outputs))
}

struct Ctx {
    job: PredictJob,
    classes: usize,
    store: Store,
    /// The fold's validation images (none for test-time inference).
    oof: Option<Vec<Item>>,
    test: Vec<Item>,
    /// Where the OOF and test images are read from (objects when `None`).
    oof_source: Option<Arc<dyn Source>>,
    test_source: Option<Arc<dyn Source>>,
    handle: tokio::runtime::Handle,
}

type Probs = (Vec<ImageId>, Vec<f32>);

fn predict_blocking(ctx: Ctx, weights_file: &str, weights: &[u8]) -> Result<(Option<Probs>, Probs, PredictStats)> {
    let job = &ctx.job;
    let device = device();
    let dev = DeviceSetup::new(device, job.precision, job.channels_last);
    let vs = nn::VarStore::new(device);
    let config = ModelConfig { head: crate::model::HeadConfig { classes: ctx.classes as i64, ..job.network.head }, ..job.network.clone() };
    let mut net = Network::restore(&config, &vs, WeightBytes { file: weights_file, bytes: weights })?;
    dev.place_weights(&vs);
    let views = tta::views(&job.eval, job.size, &job.tta);
    let output = dev.loader_output();
    let started = std::time::Instant::now();
    let oof_len = ctx.oof.as_ref().map_or(0, Vec::len);
    let _job = crate::telemetry::JobProgress::start(format!("predict {}", job.fold.label()), ((oof_len + ctx.test.len()) * views.len()) as u64);
    let mut run_set = |items: &[Item], set: &str, source: Option<&Arc<dyn Source>>| -> Result<Probs> {
        let ids: Vec<ImageId> = items.iter().map(|i| i.id.clone()).collect();
        let loader = {
            let _rt = ctx.handle.enter();
            tta::loader(ctx.store.clone(), items.to_vec(), &views, &job.image, job.batch_size, ctx.classes, output.clone())?
        };
        let loader = match source {
            Some(s) => loader.with_source(s.clone()),
            None => loader,
        };
        info!(images = items.len(), views = views.len(), source = %loader.source(), "predicting");
        let progress = crate::telemetry::Progress::with_unit(format!("predict {set} ({} views)", views.len()), (items.len() * views.len()) as u64, "views");
        let (probs, _) = predict_views(&mut net, &dev, loader.epoch(0), items.len(), ctx.classes, &progress)?;
        Ok((ids, probs))
    };
    let oof = match &ctx.oof {
        Some(items) => Some(run_set(items, "oof", ctx.oof_source.as_ref())?),
        None => None,
    };
    let test = run_set(&ctx.test, "test", ctx.test_source.as_ref())?;
    let seconds = started.elapsed().as_secs_f64();
    let images = oof_len + ctx.test.len();
    let stats = PredictStats {
        images: images as u64,
        views: views.len() as u64,
        seconds,
        images_per_sec: (images * views.len()) as f64 / seconds.max(1e-9),
        device: format!("{device:?}").to_lowercase(),
        size: job.size,
        batch_size: job.batch_size as u64,
    };
    Ok((oof, test, stats))
}
