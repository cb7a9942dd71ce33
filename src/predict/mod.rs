//! Predict stage: `imet predict --spec S --model M --fold K` loads the fold
//! model's kept weights and writes probabilities averaged over the model's
//! test-time views for the fold's own images (OOF) and for the test set,
//! as predictions Parquet with provenance metadata, then the fold job's
//! `_SUCCESS.json`. A committed job is skipped.
//!
//! Reads `data/`, `runs/{exp}/folds.parquet`,
//! `runs/{exp}/models/{M}/fold={K}/{_TRAINED.json,model.safetensors}`;
//! writes `oof.parquet`, `test.parquet`, `predict_stats.json` and
//! `_SUCCESS.json` (last) beside them.

pub mod tta;

use crate::data::{Fold, ImageId};
use crate::error::{Error, Result};
use crate::image::loader::{Item, Loader, LoaderOptions, Sequential};
use crate::model::Network;
use crate::spec::{JobSpec, ModelSpec};
use crate::storage::keys;
use crate::storage::manifest::{JobId, Manifest, OutputEntry};
use crate::storage::parquet::{write_predictions_owned, PredictionKind, PredictionMeta, Predictions};
use crate::storage::Store;
use crate::train::epoch::{self, DeviceSetup};
use crate::train::job;
use serde::Serialize;
use std::sync::Arc;
use tch::nn;
use tracing::{info, info_span, Instrument};

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
    pub images: usize,
    pub views: usize,
    pub seconds: f64,
    /// Image-views per second.
    pub images_per_sec: f64,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub size: u32,
    pub batch_size: usize,
}

/// Predicts fold `fold` of model `model`.
///
/// # Errors
/// [`Error::Predict`] when the fold model is not trained for this spec;
/// store, input, image and model errors. Nothing is committed on error.
pub async fn run(spec: &JobSpec, model: &str, fold: Fold) -> Result<PredictOutcome> {
    let span = info_span!("job", kind = "predict", experiment = %spec.experiment, model = %model, fold = fold.0);
    run_inner(spec, model, fold).instrument(span).await
}

async fn run_inner(spec: &JobSpec, model: &str, fold: Fold) -> Result<PredictOutcome> {
    let m = spec.model(model)?.clone();
    let store = spec.open_store()?;
    let hash = spec.model_hash(&m);
    let exp = spec.experiment.clone();
    let job_name = format!("{} fold {}", m.name, fold.0);
    let success = keys::success(&exp, &m.name, fold);
    if let Some(done) = Manifest::committed(&store, &success, &hash).await? {
        info!(key = %success, "already predicted for this spec; skipping");
        return Ok(PredictOutcome {
            experiment: exp,
            model: m.name,
            fold: fold.0,
            skipped: true,
            oof_images: 0,
            test_images: 0,
            views: 0,
            outputs: done.outputs,
        });
    }
    let trained = keys::trained(&exp, &m.name, fold);
    let Some(trained) = Manifest::committed(&store, &trained, &hash).await? else {
        return Err(Error::Predict {
            job: job_name,
            message: format!(
                "`{trained}` is missing: the fold model is not trained for this spec; run `imet train --spec <spec> --model {} --fold {}` first",
                m.name, fold.0
            ),
        });
    };
    let data = job::fold_inputs(&store, spec, &job_name, fold).await?;
    let classes = data.inputs.vocab.len();
    let mut test = data.test;
    if let Some(limit) = m.predict.limit_images {
        test.truncate(limit);
    }
    let ctx = Ctx { spec: spec.clone(), model: m.clone(), fold, classes, store: store.clone(), oof: data.valid, test, handle: tokio::runtime::Handle::current() };
    let span = tracing::Span::current();
    let (oof, test, stats) = tokio::task::spawn_blocking(move || span.in_scope(|| predict_blocking(ctx))).await??;

    let vocabulary_hash = data.inputs.vocab.hash();
    let meta = |kind| PredictionMeta {
        experiment: exp.clone(),
        model: m.name.clone(),
        fold: Some(fold),
        kind,
        tta: stats.views as u32,
        spec_hash: hash.clone(),
        class_count: classes,
        vocabulary_hash: vocabulary_hash.clone(),
    };
    let (oof_n, test_n) = (oof.0.len(), test.0.len());
    // The weights and history, as the train job committed them.
    let mut outputs = trained.outputs;
    let oof_preds = Arc::new(Predictions { ids: oof.0, probs: oof.1, meta: meta(PredictionKind::Oof) });
    outputs.push(write_predictions_owned(&store, &keys::oof(&exp, &m.name, fold), oof_preds).await?);
    let test_preds = Arc::new(Predictions { ids: test.0, probs: test.1, meta: meta(PredictionKind::Test) });
    outputs.push(write_predictions_owned(&store, &keys::test_predictions(&exp, &m.name, fold), test_preds).await?);
    let stats_key = keys::predict_stats(&exp, &m.name, fold);
    let stats_bytes = serde_json::to_vec_pretty(&stats)?;
    outputs.push(OutputEntry::of_bytes(&stats_key, &stats_bytes));
    store.put(&stats_key, stats_bytes).await?;
    let manifest = Manifest::new(JobId { kind: "predict".into(), experiment: exp.clone(), model: Some(m.name.clone()), fold: Some(fold.0) }, hash, outputs.clone());
    manifest.commit(&store, &success).await?;
    info!(oof = oof_n, test = test_n, views = stats.views, images_per_sec = format_args!("{:.1}", stats.images_per_sec), "predicted");
    Ok(PredictOutcome { experiment: exp, model: m.name, fold: fold.0, skipped: false, oof_images: oof_n, test_images: test_n, views: stats.views, outputs })
}

struct Ctx {
    spec: JobSpec,
    model: ModelSpec,
    fold: Fold,
    classes: usize,
    store: Store,
    oof: Vec<Item>,
    test: Vec<Item>,
    handle: tokio::runtime::Handle,
}

type Probs = (Vec<ImageId>, Vec<f32>);

fn predict_blocking(ctx: Ctx) -> Result<(Probs, Probs, PredictStats)> {
    let m = &ctx.model;
    let exp = &ctx.spec.experiment;
    let device = job::device();
    let dev = DeviceSetup::new(device, m.train.precision, m.train.channels_last);
    let vs = nn::VarStore::new(device);
    let config = m.network(ctx.classes as i64);
    let mut net = ctx.handle.block_on(Network::restore(&config, &vs, &ctx.store, &keys::weights(exp, &m.name, ctx.fold)))?;
    dev.place_weights(&vs);
    let settings = m.tta.clone().unwrap_or_else(|| ctx.spec.image.tta.clone());
    let views = tta::views(&job::eval_pipeline(m), m.size, &settings);
    let output = dev.loader_output();
    let started = std::time::Instant::now();
    let mut run_set = |items: &[Item]| -> Result<Probs> {
        let ids: Vec<ImageId> = items.iter().map(|i| i.id.clone()).collect();
        let mut sum = vec![0f32; items.len() * ctx.classes];
        for view in &views {
            let opts = LoaderOptions::from_section(&ctx.spec.image, m.predict_batch(), ctx.classes, view.seed, output.clone());
            let loader = {
                let _rt = ctx.handle.enter();
                Loader::new(ctx.store.clone(), items.to_vec(), view.pipeline.clone(), opts, Arc::new(Sequential))?
            };
            let (probs, _) = epoch::predict_probs(&mut net, &dev, loader.epoch(view.epoch))?;
            for (s, p) in sum.iter_mut().zip(&probs) {
                *s += p;
            }
        }
        let n = views.len() as f32;
        sum.iter_mut().for_each(|s| *s /= n);
        Ok((ids, sum))
    };
    let oof = run_set(&ctx.oof)?;
    let test = run_set(&ctx.test)?;
    let seconds = started.elapsed().as_secs_f64();
    let images = ctx.oof.len() + ctx.test.len();
    let stats = PredictStats {
        images,
        views: views.len(),
        seconds,
        images_per_sec: (images * views.len()) as f64 / seconds.max(1e-9),
        device: format!("{device:?}").to_lowercase(),
        size: m.size,
        batch_size: m.predict_batch(),
    };
    Ok((oof, test, stats))
}
