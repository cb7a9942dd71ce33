//! The level-2 job of one fold (`imet level2 --spec S [--stage X] --fold K`):
//! reads every member's out-of-fold and test predictions of its stage, the
//! labels and the folds; fits the second-level model of fold `K` on the
//! other folds' candidate pairs ([`super::fit_fold`]); writes, as a member
//! named `level2` of the stage, `models/level2/fold={K}/oof.parquet` (fold
//! `K`'s images), `test.parquet` (that model's test predictions),
//! `model.txt` (the fold model in LightGBM's text format), `level2.json`
//! (scores, candidate recall, feature importances) and `_SUCCESS.json`
//! (last). The stage's ensemble then thresholds these predictions like any
//! member's. For test-time inference (`[inference] oof = false`) the job
//! fits nothing: the fold's saved `model.txt` scores the members' test
//! predictions (with the training labels' statistics as features) and
//! only `test.parquet` is written.

use super::{fit_fold, Level2Config, Level2Input, Member};
use crate::data::metric::LabelSets;
use crate::data::{load_inputs, Inputs};
use crate::error::{Error, Result};
use crate::ids::{Fold, ImageId};
use crate::storage::keys::{self, Scope};
use crate::storage::parquet::{read_folds, read_predictions, write_predictions_owned, PredictionKind, PredictionMeta, Predictions};
use crate::storage::{JobId, JobRef, OutputEntry, Ran, Store, Upstream};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use tracing::{info, info_span, Instrument};

/// The name the level-2 model's predictions go under, as a stage member.
pub const MEMBER: &str = "level2";

/// One fold of a stage's level-2 model.
#[derive(Clone, Debug)]
pub struct Level2Job {
    pub experiment: String,
    /// `None` for the first stage.
    pub stage: Option<String>,
    pub fold: Fold,
    /// Folds of the experiment.
    pub k: u8,
    /// The first-level members whose predictions are its features.
    pub members: Vec<String>,
    /// Folds whose test files each member averages (all when `None`).
    pub test_folds: Option<Vec<u8>>,
    pub config: Level2Config,
    pub spec_hash: String,
    /// The members' predict jobs.
    pub inputs: Vec<Upstream>,
    /// Test-time inference (`[inference] oof = false`): no fitting; the
    /// fold's saved `model.txt` scores the members' test predictions.
    pub test_only: bool,
}

impl Level2Job {
    /// Where the stage's outputs live.
    pub fn scope(&self) -> Scope<'_> {
        Scope { experiment: &self.experiment, stage: self.stage.as_deref() }
    }

    /// The job as the store sees it (`models/level2/fold={K}/_SUCCESS.json`).
    pub fn job_ref(&self) -> JobRef {
        JobRef {
            id: JobId { kind: "level2".into(), experiment: self.experiment.clone(), model: Some(MEMBER.into()), fold: Some(self.fold.0) },
            manifest: keys::success(self.scope(), MEMBER, self.fold),
            spec_hash: self.spec_hash.clone(),
            inputs: self.inputs.clone(),
        }
    }
}

/// What a level-2 job did.
#[derive(Clone, Debug, Serialize)]
pub struct Level2Outcome {
    pub experiment: String,
    pub fold: u8,
    pub skipped: bool,
    pub oof_images: usize,
    pub outputs: Vec<OutputEntry>,
}

/// Runs `job` against `store`.
///
/// # Errors
/// [`Error::Member`] naming a member file that is missing, misaligned or
/// does not cover every training image; [`Error::Level2`] for bad
/// settings; storage errors.
pub async fn run(store: &Store, job: &Level2Job) -> Result<Level2Outcome> {
    let span = info_span!("job", kind = "level2", experiment = %job.experiment, fold = job.fold.0);
    async move {
        let ran = if job.test_only { job.job_ref().run_once(store, || work_test(store, job)).await? } else { job.job_ref().run_once(store, || work(store, job)).await? };
        let (skipped, rows, outputs) = match ran {
            Ran::Skipped(m) => (true, 0, m.outputs),
            Ran::Done { outcome, manifest, .. } => (false, outcome, manifest.outputs),
        };
        Ok(Level2Outcome { experiment: job.experiment.clone(), fold: job.fold.0, skipped, oof_images: rows, outputs })
    }
    .instrument(span)
    .await
}

/// The members' predictions aligned to `train.csv` and `sample_submission.csv` order.
struct Aligned {
    oof: Vec<Vec<f32>>,
    test: Vec<Vec<f32>>,
}

async fn work(store: &Store, job: &Level2Job) -> Result<(usize, Vec<OutputEntry>)> {
    let inputs = load_inputs(store).await?;
    let c = inputs.vocab.len();
    let fold_of = folds_of(store, job, &inputs).await?;
    let aligned = align(store, job, &inputs, &fold_of).await?;
    // The blend feature is the members' plain mean: the stage's own blend
    // (weights fitted by its ensemble) is made after this job.
    let (blend, test_blend) = (mean(&aligned.oof), mean(&aligned.test));
    let labels = LabelSets::from_rows(c, inputs.train.labels.iter().map(|r| r.iter().map(|a| a.0).collect::<Vec<u16>>()));
    let (cfg, fold, members) = (job.config.clone(), job.fold.0, job.members.clone());
    let (train_ids, test_ids, groups, folds) = (inputs.train.ids.clone(), inputs.test.ids.clone(), inputs.vocab.groups().to_vec(), fold_of.clone());
    let span = tracing::Span::current();
    let mut out = tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            let input = Level2Input {
                classes: c,
                groups: &groups,
                ids: &train_ids,
                labels: &labels,
                folds: &folds,
                members: members.iter().zip(&aligned.oof).map(|(name, p)| Member { name, ids: &train_ids, probs: p }).collect(),
                blend: &blend,
                test_ids: &test_ids,
                test_members: members.iter().zip(&aligned.test).map(|(name, p)| Member { name, ids: &test_ids, probs: p }).collect(),
                test_blend: &test_blend,
            };
            fit_fold(&input, &cfg, fold)
        })
    })
    .await??;
    info!(fold, oof_auc = out.oof_auc, blend_auc = out.blend_auc, recall = out.candidate_recall.fraction, "level-2 fold model fitted");

    let rows: Vec<usize> = (0..fold_of.len()).filter(|&i| fold_of[i] == fold).collect();
    let meta = |kind| PredictionMeta {
        experiment: job.experiment.clone(),
        model: MEMBER.into(),
        fold: Some(job.fold),
        kind,
        tta: 1,
        spec_hash: job.spec_hash.clone(),
        class_count: c,
        vocabulary_hash: inputs.vocab.hash(),
    };
    let scope = job.scope();
    let oof = Predictions {
        ids: rows.iter().map(|&i| inputs.train.ids[i].clone()).collect(),
        probs: rows.iter().flat_map(|&i| out.oof[i * c..(i + 1) * c].iter().copied()).collect(),
        meta: meta(PredictionKind::Oof),
    };
    let mut outputs = vec![write_predictions_owned(store, &keys::oof(scope, MEMBER, job.fold), Arc::new(oof)).await?];
    let test = Predictions { ids: inputs.test.ids.clone(), probs: out.test.clone(), meta: meta(PredictionKind::Test) };
    outputs.push(write_predictions_owned(store, &keys::test_predictions(scope, MEMBER, job.fold), Arc::new(test)).await?);
    // The fold model itself, for test-time inference (`imet package`).
    let text = out.models.pop().map(|(_, t)| t).ok_or_else(|| Error::Level2(format!("fold {fold} has no images: no model was fitted")))?;
    let model_key = model_key(scope, job.fold);
    outputs.push(OutputEntry::of_bytes(&model_key, text.as_bytes()));
    store.put(&model_key, text.into_bytes()).await?;
    let report_key = format!("{}/level2.json", keys::fold_dir(scope, MEMBER, job.fold));
    let bytes = serde_json::to_vec_pretty(&out)?;
    outputs.push(OutputEntry::of_bytes(&report_key, &bytes));
    store.put(&report_key, bytes).await?;
    Ok((rows.len(), outputs))
}

/// The key of fold `fold`'s model in LightGBM's text format.
pub fn model_key(scope: Scope<'_>, fold: Fold) -> String {
    format!("{}/model.txt", keys::fold_dir(scope, MEMBER, fold))
}

/// The members' plain mean (the blend feature: the stage's own blend is
/// made after this job).
fn mean(ms: &[Vec<f32>]) -> Vec<f32> {
    let mut out = vec![0f32; ms[0].len()];
    for m in ms {
        out.iter_mut().zip(m).for_each(|(a, b)| *a += b);
    }
    out.iter_mut().for_each(|v| *v /= ms.len() as f32);
    out
}

/// Test-time inference of the fold: the saved `model.txt` scores the
/// members' test predictions; writes `test.parquet`.
async fn work_test(store: &Store, job: &Level2Job) -> Result<(usize, Vec<OutputEntry>)> {
    let inputs = load_inputs(store).await?;
    let c = inputs.vocab.len();
    let scope = job.scope();
    let model_key = model_key(scope, job.fold);
    let text = store.get(&model_key).await?;
    let text = String::from_utf8(text.to_vec()).map_err(|e| Error::Format { key: model_key.clone(), what: "LightGBM model", reason: e.to_string() })?;
    let progress = crate::telemetry::Progress::with_unit("member test files", job.members.len() as u64, "members");
    let mut test = Vec::new();
    for m in &job.members {
        test.push(member_test(store, job, &inputs, m).await?);
        progress.inc(1);
    }
    let blend = mean(&test);
    let labels = LabelSets::from_rows(c, inputs.train.labels.iter().map(|r| r.iter().map(|a| a.0).collect::<Vec<u16>>()));
    let (cfg, members, groups, test_ids) = (job.config.clone(), job.members.clone(), inputs.vocab.groups().to_vec(), inputs.test.ids.clone());
    let model_text = text.clone();
    let span = tracing::Span::current();
    let probs = tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            let input = super::TestInput {
                classes: c,
                groups: &groups,
                labels: &labels,
                test_ids: &test_ids,
                members: members.iter().zip(&test).map(|(name, p)| Member { name, ids: &test_ids, probs: p }).collect(),
                blend: &blend,
            };
            super::predict_test(&input, &cfg, &model_text)
        })
    })
    .await??;
    info!(fold = job.fold.0, test = inputs.test.ids.len(), "level-2 fold model applied to the test images");
    let meta = PredictionMeta {
        experiment: job.experiment.clone(),
        model: MEMBER.into(),
        fold: Some(job.fold),
        kind: PredictionKind::Test,
        tta: 1,
        spec_hash: job.spec_hash.clone(),
        class_count: c,
        vocabulary_hash: inputs.vocab.hash(),
    };
    let test = Predictions { ids: inputs.test.ids.clone(), probs, meta };
    let outputs = vec![
        write_predictions_owned(store, &keys::test_predictions(scope, MEMBER, job.fold), Arc::new(test)).await?,
        OutputEntry::of_bytes(&model_key, text.as_bytes()),
    ];
    Ok((0, outputs))
}

/// Member `m`'s test predictions averaged over the job's test folds, in
/// `sample_submission.csv` order.
///
/// # Errors
/// [`Error::Member`] naming a file made with another vocabulary, an id
/// that is not a test image, or a file that misses some.
async fn member_test(store: &Store, job: &Level2Job, inputs: &Inputs, m: &str) -> Result<Vec<f32>> {
    let c = inputs.vocab.len();
    let nt = inputs.test.ids.len();
    let test_row: HashMap<&ImageId, usize> = inputs.test.ids.iter().enumerate().map(|(i, id)| (id, i)).collect();
    let folds: Vec<u8> = (0..job.k).filter(|f| job.test_folds.as_ref().is_none_or(|t| t.contains(f))).collect();
    let mut sum = vec![0f32; nt * c];
    for &f in &folds {
        let key = keys::test_predictions(job.scope(), m, Fold(f));
        let p = read_predictions(store, &key).await?;
        if p.classes() != c || p.meta.vocabulary_hash != inputs.vocab.hash() {
            return Err(Error::Member { key, message: "was made with another data/labels.csv; predict it again".into() });
        }
        let mut covered = 0;
        for (r, id) in p.ids.iter().enumerate() {
            let &i = test_row.get(id).ok_or_else(|| Error::Member { key: key.clone(), message: format!("id `{id}` is not in data/sample_submission.csv") })?;
            sum[i * c..(i + 1) * c].iter_mut().zip(p.row(r)).for_each(|(a, b)| *a += b / folds.len() as f32);
            covered += 1;
        }
        if covered != nt {
            return Err(Error::Member { key, message: format!("covers {covered} of {nt} test images") });
        }
    }
    Ok(sum)
}

/// Each training image's fold.
async fn folds_of(store: &Store, job: &Level2Job, inputs: &Inputs) -> Result<Vec<u8>> {
    let key = keys::folds(&job.experiment);
    let (ids, folds, meta) = read_folds(store, &key).await?;
    if meta.k != job.k {
        return Err(Error::Member { key, message: format!("has k = {} folds but the spec says {}; run `imet folds` again", meta.k, job.k) });
    }
    let by_id: HashMap<&ImageId, u8> = ids.iter().zip(&folds).map(|(i, f)| (i, f.0)).collect();
    inputs
        .train
        .ids
        .iter()
        .map(|id| by_id.get(id).copied().ok_or_else(|| Error::Member { key: key.clone(), message: format!("training image `{id}` has no fold") }))
        .collect()
}

/// Every member's OOF (one row per training image, each from the fold
/// that held it out) and test predictions (averaged over its test folds).
///
/// # Errors
/// [`Error::Member`] naming the file and the first id that is unknown, in
/// the wrong fold, duplicated or missing.
async fn align(store: &Store, job: &Level2Job, inputs: &Inputs, fold_of: &[u8]) -> Result<Aligned> {
    let c = inputs.vocab.len();
    let n = inputs.train.len();
    let train_row: HashMap<&ImageId, usize> = inputs.train.ids.iter().enumerate().map(|(i, id)| (id, i)).collect();
    let vh = inputs.vocab.hash();
    let check = |key: &str, p: &Predictions| -> Result<()> {
        if p.classes() != c || p.meta.vocabulary_hash != vh {
            return Err(Error::Member { key: key.to_string(), message: "was made with another data/labels.csv; predict it again".into() });
        }
        Ok(())
    };
    let mut oof = Vec::new();
    let mut test = Vec::new();
    let test_files = (0..job.k).filter(|f| job.test_folds.as_ref().is_none_or(|t| t.contains(f))).count();
    let progress = crate::telemetry::Progress::with_unit("member files", (job.members.len() * (job.k as usize + test_files)) as u64, "files");
    for m in &job.members {
        let mut matrix = vec![0f32; n * c];
        let mut seen = vec![false; n];
        for f in 0..job.k {
            let key = keys::oof(job.scope(), m, Fold(f));
            let p = read_predictions(store, &key).await?;
            check(&key, &p)?;
            progress.inc(1);
            for (r, id) in p.ids.iter().enumerate() {
                let &i = train_row.get(id).ok_or_else(|| Error::Member { key: key.clone(), message: format!("id `{id}` is not in data/train.csv") })?;
                if fold_of[i] != f || std::mem::replace(&mut seen[i], true) {
                    return Err(Error::Member { key: key.clone(), message: format!("id `{id}` belongs to fold {} or appears twice", fold_of[i]) });
                }
                matrix[i * c..(i + 1) * c].copy_from_slice(p.row(r));
            }
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(Error::Member {
                key: format!("OOF files of model `{m}`"),
                message: format!("id `{}` has no prediction: the level-2 model needs every member on every training image (members on fold subsets cannot feed it)", inputs.train.ids[i]),
            });
        }
        oof.push(matrix);
        test.push(member_test(store, job, inputs, m).await?);
        progress.inc(test_files as u64);
    }
    Ok(Aligned { oof, test })
}
