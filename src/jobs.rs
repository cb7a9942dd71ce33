//! Job kinds: each turns an experiment spec into one stage's own job
//! description and runs it against the spec's store. This is the only
//! place where the whole spec meets a stage: `imet folds|shard|train|
//! predict|ensemble|curate`, the local runner's children and the batch
//! engines' jobs all come through here. A `stage` of `None` is the first
//! stage.

use crate::curate::{self, CurateJob, CurateOutcome};
use crate::data::folds::{self, FoldsJob, FoldsOutcome};
use crate::ensemble::{self, EnsembleJob, Summary};
use crate::error::{Error, Result};
use crate::fold_job::{DataEdits, FoldJob, ShardReads};
use crate::ids::Fold;
use crate::image::{ImageSource, ShardRecode};
use crate::shards::job::{ShardJob, ShardOutcome};
use crate::shards::{BuildOptions, Recode};
use crate::level2::{self, Level2Job, Level2Outcome};
use crate::predict::{self, PredictJob, PredictOutcome};
use crate::spec::{Init, JobSpec, Stage, MAIN};
use crate::storage::keys::{self, Scope, Split};
use crate::storage::Upstream;
use crate::train::{self, TrainJob, TrainOutcome};

/// `--stage S` for messages (empty for the first stage).
fn stage_arg(stage: Option<&str>) -> String {
    stage.map(|s| format!(" --stage {s}")).unwrap_or_default()
}

/// The stage called `stage` (the first when `None` or `main`), and its name
/// as keys carry it.
fn stage_of<'a>(spec: &'a JobSpec, stage: Option<&str>) -> Result<(Stage<'a>, Option<String>)> {
    let st = spec.stage(stage.unwrap_or(MAIN))?;
    Ok((st, st.key().map(String::from)))
}

/// The folds job of `spec`.
pub fn folds_job(spec: &JobSpec) -> FoldsJob {
    FoldsJob { experiment: spec.experiment.clone(), folds: spec.folds.clone(), spec_hash: spec.folds_hash() }
}

/// Whether the spec's fold jobs read shard sets (`[image] source =
/// "shards"` or `"shard_order"`).
pub fn reads_shards(spec: &JobSpec) -> bool {
    spec.image.source.uses_shards()
}

/// The shard job of `split`: `[image.shards]` build settings, and a hash
/// of what the set depends on (the data section, the split, the shard size
/// and the recoding).
pub fn shard_job(spec: &JobSpec, split: Split) -> ShardJob {
    let s = &spec.image.shards;
    let recode = match s.recode {
        ShardRecode::Original => Recode::Original,
        ShardRecode::Png { shortest_side } => Recode::Png { shortest_side },
        ShardRecode::Jpeg { shortest_side, quality } => Recode::Jpeg { shortest_side, quality },
    };
    let spec_hash = crate::spec::hash_parts(&[
        serde_json::to_value(&spec.data).unwrap_or_default(),
        serde_json::json!(keys::split_name(split)),
        serde_json::json!(s.shard_mb),
        serde_json::to_value(s.recode).unwrap_or_default(),
    ]);
    ShardJob {
        experiment: spec.experiment.clone(),
        split,
        build: BuildOptions { shard_bytes: s.shard_mb << 20, fetch_concurrency: s.build_concurrency, recode },
        spec_hash,
    }
}

/// How the spec's fold jobs read shard sets; `None` when they read
/// objects.
pub fn shard_reads(spec: &JobSpec) -> Option<ShardReads> {
    let s = &spec.image.shards;
    reads_shards(spec).then(|| ShardReads { shuffle_buffer: s.shuffle_buffer, shards_in_flight: s.shards_in_flight, chunk_bytes: s.chunk_mb << 20, order_only: spec.image.source == ImageSource::ShardOrder })
}

/// The curate job of stage `stage`.
///
/// # Errors
/// [`Error::Usage`] for a stage the spec does not have, or the first stage
/// (which edits nothing).
pub fn curate_job(spec: &JobSpec, stage: &str) -> Result<CurateJob> {
    let (st, _) = stage_of(spec, Some(stage))?;
    let s = st.spec.ok_or_else(|| Error::Usage(format!("stage `{MAIN}` is the first stage: it has no data edits")))?;
    Ok(CurateJob {
        experiment: spec.experiment.clone(),
        stage: s.name.clone(),
        source: st.source.filter(|s| *s != MAIN).map(String::from),
        drop_noisy: s.drop_noisy.clone(),
        pseudo_labels: s.pseudo_labels.clone(),
        distill: s.distill.clone(),
        spec_hash: spec.curate_hash(stage),
    })
}

/// The fold job of model `model`, fold `fold` in stage `stage`.
///
/// # Errors
/// [`Error::Usage`] for a stage or model the spec does not have, or a fold
/// the model does not train.
pub fn fold_job(spec: &JobSpec, stage: Option<&str>, model: &str, fold: Fold) -> Result<FoldJob> {
    let (st, key) = stage_of(spec, stage)?;
    let m = spec.stage_model(stage, model)?;
    let own = m.fold_list(spec.folds.k);
    if !own.contains(&fold.0) {
        return Err(Error::Usage(format!("model `{model}` trains folds {own:?}, not fold {}; see its `folds`", fold.0)));
    }
    let mut edits = DataEdits::default();
    let mut inputs = Vec::new();
    if st.curates() {
        let c = curate_job(spec, st.name)?;
        edits = c.edits();
        inputs.push(Upstream::required(keys::stage_data_success(c.scope()), format!("imet curate --spec <spec> --stage {}", st.name)));
    }
    Ok(FoldJob {
        experiment: spec.experiment.clone(),
        stage: key,
        model: m.name.clone(),
        fold,
        k: spec.folds.k,
        spec_hash: spec.stage_model_hash(stage, m),
        edits,
        inputs,
    })
}

/// The train job of model `model`, fold `fold` in stage `stage`.
///
/// # Errors
/// As [`fold_job`].
pub fn train_job(spec: &JobSpec, stage: Option<&str>, model: &str, fold: Fold) -> Result<TrainJob> {
    let (st, _) = stage_of(spec, stage)?;
    let m = spec.stage_model(stage, model)?;
    let mut f = fold_job(spec, stage, model, fold)?;
    let mut init_from = None;
    if let (Some(s), Some(source)) = (st.spec, st.source) {
        if s.init == Init::Source {
            let scope = Scope { experiment: &spec.experiment, stage: Some(source).filter(|s| *s != MAIN) };
            init_from = Some(keys::weights(scope, model, fold));
            f.inputs.push(Upstream::required(
                keys::trained(scope, model, fold),
                format!("imet train --spec <spec> --model {model} --fold {}{}", fold.0, stage_arg(scope.stage)),
            ));
        }
    }
    let shards = shard_reads(spec);
    if shards.is_some() {
        f.inputs.push(ShardReads::upstream(&spec.experiment, Split::Train));
    }
    Ok(TrainJob {
        shards,
        fold: f,
        network: m.network(m.head.classes),
        size: m.size,
        train: m.train.clone(),
        augment: m.augment.clone().unwrap_or_else(|| spec.image.augment.clone()),
        eval: m.eval_resize.pipeline(m.size),
        image: spec.image.clone(),
        predict_batch: m.predict_batch(),
        seed: crate::seed::fold_job(spec.seed, &m.name, fold.0),
        init_from,
    })
}

/// The predict job of model `model`, fold `fold` in stage `stage`.
///
/// # Errors
/// As [`fold_job`].
pub fn predict_job(spec: &JobSpec, stage: Option<&str>, model: &str, fold: Fold) -> Result<PredictJob> {
    let m = spec.stage_model(stage, model)?;
    Ok(PredictJob {
        fold: fold_job(spec, stage, model, fold)?,
        network: m.network(m.head.classes),
        size: m.size,
        eval: m.eval_resize.pipeline(m.size),
        tta: m.tta.clone().unwrap_or_else(|| spec.image.tta.clone()),
        image: spec.image.clone(),
        batch_size: m.predict_batch(),
        limit_images: m.predict.limit_images,
        precision: m.train.precision,
        channels_last: m.train.channels_last,
        // Test-time inference reads the test images as objects: a package
        // carries no shard set (and refuses recoded ones, see `imet package`).
        shards: shard_reads(spec).filter(|_| spec.inference.oof),
        oof: spec.inference.oof,
    })
}

/// The level-2 job of fold `fold` in stage `stage`.
///
/// # Errors
/// [`Error::Usage`] for a stage whose ensemble has no `level2`.
pub fn level2_job(spec: &JobSpec, stage: Option<&str>, fold: Fold) -> Result<Level2Job> {
    let (st, key) = stage_of(spec, stage)?;
    let e = st.ensemble.ok_or_else(|| Error::Usage(format!("stage `{}` has no [ensemble] section", st.name)))?;
    let config = e.level2.clone().ok_or_else(|| Error::Usage(format!("the ensemble of stage `{}` has no `level2` table", st.name)))?;
    if fold.0 >= spec.folds.k {
        return Err(Error::Usage(format!("fold {} but the spec has folds.k = {}", fold.0, spec.folds.k)));
    }
    let scope = Scope { experiment: &spec.experiment, stage: key.as_deref() };
    let mut inputs = Vec::new();
    for name in &e.members {
        for f in 0..spec.folds.k {
            inputs.push(Upstream::required(
                keys::success(scope, name, Fold(f)),
                format!("imet predict --spec <spec> --model {name} --fold {f}{}", stage_arg(key.as_deref())),
            ));
        }
    }
    Ok(Level2Job {
        experiment: spec.experiment.clone(),
        stage: key,
        fold,
        k: spec.folds.k,
        members: e.members.clone(),
        test_folds: e.test_folds.clone(),
        config,
        spec_hash: spec.stage_hash(st.name),
        inputs,
        test_only: spec.inference.test_only(),
    })
}

/// The ensemble job of stage `stage`.
///
/// # Errors
/// [`Error::Usage`] for a stage without an `[ensemble]` section.
pub fn ensemble_job(spec: &JobSpec, stage: Option<&str>) -> Result<EnsembleJob> {
    let (st, key) = stage_of(spec, stage)?;
    let config = st.ensemble.cloned().ok_or_else(|| {
        Error::Usage(format!("stage `{}` of experiment `{}` has no [ensemble] section; add `[ensemble] members = [...]`", st.name, spec.experiment))
    })?;
    let scope = Scope { experiment: &spec.experiment, stage: key.as_deref() };
    let mut member_folds = std::collections::BTreeMap::new();
    let mut inputs = Vec::new();
    let mut config = config;
    if config.level2.is_some() {
        // The level-2 model's predictions are what the ensemble thresholds.
        config.members = vec![level2::MEMBER.to_string()];
        config.blend = crate::ensemble::BlendKind::Mean;
        for f in 0..spec.folds.k {
            inputs.push(Upstream::required(
                keys::success(scope, level2::MEMBER, Fold(f)),
                format!("imet level2 --spec <spec> --fold {f}{}", stage_arg(key.as_deref())),
            ));
        }
    }
    for name in &config.members {
        let Some(m) = st.model(name) else { continue };
        let folds = m.fold_list(spec.folds.k);
        for &f in &folds {
            inputs.push(Upstream::optional(
                keys::success(scope, name, Fold(f)),
                format!("imet predict --spec <spec> --model {name} --fold {f}{}", stage_arg(key.as_deref())),
            ));
        }
        if m.folds.is_some() {
            member_folds.insert(name.clone(), folds);
        }
    }
    for (_, other) in config.groups.sources() {
        let other_scope = Scope { experiment: &spec.experiment, stage: Some(other).filter(|s| *s != MAIN) };
        inputs.push(Upstream::required(keys::ensemble_success(other_scope), format!("imet ensemble --spec <spec>{}", stage_arg(other_scope.stage))));
    }
    let spec_hash = spec.stage_hash(st.name);
    Ok(EnsembleJob { experiment: spec.experiment.clone(), stage: key, k: spec.folds.k, config, member_folds, spec_hash, inputs })
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

/// `imet shard`: builds (or finds) the shard set of `split` and commits
/// the experiment's shard job. Writes the spec's synthetic sample first
/// when it has one and `data/train.csv` is absent.
///
/// # Errors
/// As [`crate::shards::job::run`].
pub async fn shard(spec: &JobSpec, split: Split) -> Result<ShardOutcome> {
    let store = spec.open_store()?;
    crate::data::sample::ensure(&store, &spec.data).await?;
    crate::shards::job::run(&store, &shard_job(spec, split)).await
}

/// `imet curate`.
///
/// # Errors
/// As [`curate::run`].
pub async fn curate(spec: &JobSpec, stage: &str) -> Result<CurateOutcome> {
    curate::run(&spec.open_store()?, &curate_job(spec, stage)?).await
}

/// `imet train`.
///
/// # Errors
/// As [`train::run`].
pub async fn train(spec: &JobSpec, stage: Option<&str>, model: &str, fold: Fold) -> Result<TrainOutcome> {
    let job = train_job(spec, stage, model, fold)?;
    train::run(&spec.open_store()?, &job).await
}

/// `imet predict`.
///
/// # Errors
/// As [`predict::run`].
pub async fn predict(spec: &JobSpec, stage: Option<&str>, model: &str, fold: Fold) -> Result<PredictOutcome> {
    let job = predict_job(spec, stage, model, fold)?;
    predict::run(&spec.open_store()?, &job).await
}

/// `imet level2`.
///
/// # Errors
/// As [`level2::job::run`].
pub async fn level2(spec: &JobSpec, stage: Option<&str>, fold: Fold) -> Result<Level2Outcome> {
    let job = level2_job(spec, stage, fold)?;
    level2::job::run(&spec.open_store()?, &job).await
}

/// `imet ensemble`: fits the stage's blend and thresholds, or with
/// `[inference] ensemble = "apply"` applies the saved ones.
///
/// # Errors
/// As [`ensemble::run`] and [`ensemble::apply::run`].
pub async fn ensemble(spec: &JobSpec, stage: Option<&str>) -> Result<Summary> {
    let job = ensemble_job(spec, stage)?;
    match spec.inference.ensemble {
        crate::spec::EnsembleMode::Fit => ensemble::run(&spec.open_store()?, &job).await,
        crate::spec::EnsembleMode::Apply => ensemble::apply::run(&spec.open_store()?, &job).await,
    }
}
