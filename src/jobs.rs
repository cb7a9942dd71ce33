//! Job kinds: each turns an experiment spec into one stage's own job
//! description and runs it against the spec's store. This is the only
//! place where the whole spec meets a stage: `imet folds|train|predict|
//! ensemble`, the local runner's children and the batch engines' jobs all
//! come through here.

use crate::data::folds::{self, FoldsJob, FoldsOutcome};
use crate::ensemble::{self, EnsembleJob, Summary};
use crate::error::{Error, Result};
use crate::fold_job::FoldJob;
use crate::ids::Fold;
use crate::predict::{self, PredictJob, PredictOutcome};
use crate::spec::JobSpec;
use crate::train::{self, TrainJob, TrainOutcome};

/// The folds job of `spec`.
pub fn folds_job(spec: &JobSpec) -> FoldsJob {
    FoldsJob { experiment: spec.experiment.clone(), folds: spec.folds.clone(), spec_hash: spec.folds_hash() }
}

/// The fold job of model `model`, fold `fold`.
///
/// # Errors
/// [`Error::Usage`] for a model the spec does not have.
pub fn fold_job(spec: &JobSpec, model: &str, fold: Fold) -> Result<FoldJob> {
    let m = spec.model(model)?;
    Ok(FoldJob { experiment: spec.experiment.clone(), model: m.name.clone(), fold, k: spec.folds.k, spec_hash: spec.model_hash(m) })
}

/// The train job of model `model`, fold `fold`.
///
/// # Errors
/// [`Error::Usage`] for a model the spec does not have.
pub fn train_job(spec: &JobSpec, model: &str, fold: Fold) -> Result<TrainJob> {
    let m = spec.model(model)?;
    Ok(TrainJob {
        fold: fold_job(spec, model, fold)?,
        network: m.network(m.head.classes),
        size: m.size,
        train: m.train.clone(),
        augment: m.augment.clone().unwrap_or_else(|| spec.image.augment.clone()),
        eval: m.eval_resize.pipeline(m.size),
        image: spec.image.clone(),
        predict_batch: m.predict_batch(),
        seed: crate::seed::fold_job(spec.seed, &m.name, fold.0),
    })
}

/// The predict job of model `model`, fold `fold`.
///
/// # Errors
/// [`Error::Usage`] for a model the spec does not have.
pub fn predict_job(spec: &JobSpec, model: &str, fold: Fold) -> Result<PredictJob> {
    let m = spec.model(model)?;
    Ok(PredictJob {
        fold: fold_job(spec, model, fold)?,
        network: m.network(m.head.classes),
        size: m.size,
        eval: m.eval_resize.pipeline(m.size),
        tta: m.tta.clone().unwrap_or_else(|| spec.image.tta.clone()),
        image: spec.image.clone(),
        batch_size: m.predict_batch(),
        limit_images: m.predict.limit_images,
        precision: m.train.precision,
        channels_last: m.train.channels_last,
    })
}

/// The ensemble job of `spec`.
///
/// # Errors
/// [`Error::Usage`] without an `[ensemble]` section.
pub fn ensemble_job(spec: &JobSpec) -> Result<EnsembleJob> {
    let config = spec
        .ensemble
        .clone()
        .ok_or_else(|| Error::Usage(format!("spec of experiment `{}` has no [ensemble] section; add `[ensemble] members = [...]`", spec.experiment)))?;
    Ok(EnsembleJob { experiment: spec.experiment.clone(), k: spec.folds.k, config, spec_hash: spec.hash() })
}

/// `imet folds`: writes the spec's synthetic sample first when it has one
/// and `data/train.csv` is absent, then assigns the folds.
///
/// # Errors
/// As [`folds::run`] and [`crate::data::sample::ensure`], plus an unusable
/// storage root.
pub async fn folds(spec: &JobSpec) -> Result<FoldsOutcome> {
    let store = spec.open_store()?;
    crate::data::sample::ensure(&store, &spec.data).await?;
    folds::run(&store, &folds_job(spec)).await
}

/// `imet train`.
///
/// # Errors
/// As [`train::run`].
pub async fn train(spec: &JobSpec, model: &str, fold: Fold) -> Result<TrainOutcome> {
    train::run(&spec.open_store()?, &train_job(spec, model, fold)?).await
}

/// `imet predict`.
///
/// # Errors
/// As [`predict::run`].
pub async fn predict(spec: &JobSpec, model: &str, fold: Fold) -> Result<PredictOutcome> {
    predict::run(&spec.open_store()?, &predict_job(spec, model, fold)?).await
}

/// `imet ensemble`.
///
/// # Errors
/// As [`ensemble::run`].
pub async fn ensemble(spec: &JobSpec) -> Result<Summary> {
    let job = ensemble_job(spec)?;
    ensemble::run(&spec.open_store()?, &job).await
}
