//! Curate stage: the data edits of a later stage of an experiment, made
//! from its source stage's committed ensemble. `drop_noisy` scores every
//! training image's out-of-fold blend against its labels and lists the
//! worst; `pseudo_labels` ranks the test images by confidence and writes the
//! chosen ones with their targets; `distill` records which blend teaches.
//! The train jobs of the stage read these products (see
//! [`crate::fold_job::DataEdits`]).
//!
//! Reads `runs/{exp}/[stages/{source}/]ensemble/{ensemble_oof.parquet,
//! ensemble_test.parquet, thresholds.json}` and `data/*.csv`; writes under
//! `runs/{exp}/stages/{stage}/data/`: `dropped.parquet`, `pseudo.parquet`,
//! `pseudo_targets.parquet`, `distill.json` and `_SUCCESS.json` (last).

pub mod config;
pub mod select;

pub use config::{Confidence, Distill, DropNoisy, NoiseCriterion, PseudoLabels, Targets};

use crate::data::{self, Inputs};
use crate::ensemble::report::ThresholdsFile;
use crate::ensemble::threshold::{self, Matrix};
use crate::error::{Error, Result};
use crate::fold_job::DataEdits;
use crate::ids::ImageId;
use crate::storage::keys::{self, Scope};
use crate::storage::parquet::{self as pq, PredictionKind, PredictionMeta, Predictions, ScoredIds};
use crate::storage::{JobId, JobRef, OutputEntry, Ran, Store, Upstream};
use serde::Serialize;
use std::collections::BTreeMap;
use tracing::{info, info_span, Instrument};

/// The curate job of one stage.
#[derive(Clone, Debug)]
pub struct CurateJob {
    pub experiment: String,
    pub stage: String,
    /// The stage whose ensemble is read; `None` for the first stage.
    pub source: Option<String>,
    pub drop_noisy: Option<DropNoisy>,
    pub pseudo_labels: Option<PseudoLabels>,
    pub distill: Option<Distill>,
    pub spec_hash: String,
}

impl CurateJob {
    /// Where this stage's outputs live.
    pub fn scope(&self) -> Scope<'_> {
        Scope { experiment: &self.experiment, stage: Some(&self.stage) }
    }

    /// Where the source stage's outputs live.
    pub fn source_scope(&self) -> Scope<'_> {
        Scope { experiment: &self.experiment, stage: self.source.as_deref() }
    }

    /// The job as the store sees it; it reads the source stage's ensemble.
    pub fn job_ref(&self) -> JobRef {
        let source = self.source.as_ref().map(|s| format!(" --stage {s}")).unwrap_or_default();
        JobRef {
            id: JobId { kind: "curate".into(), experiment: self.experiment.clone(), model: Some(self.stage.clone()), fold: None },
            manifest: keys::stage_data_success(self.scope()),
            spec_hash: self.spec_hash.clone(),
            inputs: vec![Upstream::required(keys::ensemble_success(self.source_scope()), format!("imet ensemble --spec <spec>{source}"))],
        }
    }

    /// What the stage's train jobs read of this job's outputs.
    pub fn edits(&self) -> DataEdits {
        let key = |name: &str| keys::stage_data(self.scope(), name);
        DataEdits {
            dropped: self.drop_noisy.as_ref().map(|_| key(DROPPED)),
            pseudo: self.pseudo_labels.as_ref().map(|_| (key(PSEUDO), key(PSEUDO_TARGETS))),
            distill: self.distill.as_ref().map(|d| (keys::ensemble_oof(self.source_scope()), d.weight)),
        }
    }

    /// Whether the stage edits its data at all.
    pub fn is_needed(&self) -> bool {
        self.drop_noisy.is_some() || self.pseudo_labels.is_some() || self.distill.is_some()
    }
}

const DROPPED: &str = "dropped.parquet";
const PSEUDO: &str = "pseudo.parquet";
const PSEUDO_TARGETS: &str = "pseudo_targets.parquet";
const DISTILL: &str = "distill.json";

/// What a curate job did.
#[derive(Clone, Debug, Serialize)]
pub struct CurateOutcome {
    pub experiment: String,
    pub stage: String,
    pub skipped: bool,
    /// Training images listed as dropped.
    pub dropped: usize,
    /// Test images pseudo-labelled.
    pub pseudo_labelled: usize,
    pub distill: bool,
    pub outputs: Vec<OutputEntry>,
}

/// `distill.json`: which blend teaches the stage, and with what weight.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct DistillFile {
    /// The teacher's out-of-fold blend and its sha256 when read.
    pub teacher_oof: OutputEntry,
    pub weight: f64,
}

/// Runs the curate job `job` against `store`.
///
/// # Errors
/// [`Error::Usage`] when the source stage's ensemble is not committed;
/// read errors of its files; storage errors.
pub async fn run(store: &Store, job: &CurateJob) -> Result<CurateOutcome> {
    let span = info_span!("job", kind = "curate", experiment = %job.experiment, stage = %job.stage);
    async move {
        let ran = job.job_ref().run_once(store, || curate(store, job)).await?;
        let (skipped, counts, outputs) = match ran {
            Ran::Skipped(m) => (true, (0, 0), m.outputs),
            Ran::Done { outcome, manifest, .. } => (false, outcome, manifest.outputs),
        };
        Ok(CurateOutcome {
            experiment: job.experiment.clone(),
            stage: job.stage.clone(),
            skipped,
            dropped: counts.0,
            pseudo_labelled: counts.1,
            distill: job.distill.is_some(),
            outputs,
        })
    }
    .instrument(span)
    .await
}

async fn curate(store: &Store, job: &CurateJob) -> Result<((usize, usize), Vec<OutputEntry>)> {
    let inputs = data::load_inputs(store).await?;
    let source = job.source_scope();
    let thresholds = read_thresholds(store, &keys::thresholds(source)).await?;
    let mut outputs = Vec::new();
    let mut counts = (0, 0);
    if let Some(d) = &job.drop_noisy {
        let oof = pq::read_predictions(store, &keys::ensemble_oof(source)).await?;
        check_vocabulary(&oof, &inputs)?;
        let truth = train_truth(&oof, &inputs, &keys::ensemble_oof(source))?;
        let errors = select::noise_errors(&oof, &truth, d.criterion, &thresholds.chosen, &group_of(&inputs));
        let picked = select::worst(&errors, d);
        info!(scored = errors.len(), dropped = picked.len(), criterion = ?d.criterion, "noisy training images listed");
        let mut meta = BTreeMap::new();
        meta.insert("what".into(), "dropped".into());
        meta.insert("score".into(), format!("{:?}", d.criterion).to_lowercase() + " error of the source blend");
        meta.insert("source".into(), source.to_string());
        meta.insert("scored_images".into(), errors.len().to_string());
        let s = ScoredIds { ids: picked.iter().map(|&r| oof.ids[r].clone()).collect(), scores: picked.iter().map(|&r| errors[r]).collect(), meta };
        counts.0 = s.ids.len();
        outputs.push(pq::write_scored_ids(store, &keys::stage_data(job.scope(), DROPPED), &s).await?);
    }
    if let Some(p) = &job.pseudo_labels {
        let test = pq::read_predictions(store, &keys::ensemble_test(source)).await?;
        check_vocabulary(&test, &inputs)?;
        let confidence = select::confidence(&test, p.confidence);
        let picked = select::most_confident(&confidence, p);
        let c = test.classes();
        let group = group_of(&inputs);
        let m = Matrix { probs: &test.probs, classes: c, group: &group };
        let rows: Vec<u32> = picked.iter().map(|&r| r as u32).collect();
        let targets: Vec<f32> = match p.targets {
            Targets::Soft => picked.iter().flat_map(|&r| test.row(r).iter().copied()).collect(),
            Targets::Hard => {
                let sets = threshold::apply(&thresholds.chosen, m, Some(&rows));
                let mut t = vec![0f32; picked.len() * c];
                for i in 0..picked.len() {
                    for &k in sets.row(i) {
                        t[i * c + k as usize] = 1.0;
                    }
                }
                t
            }
        };
        info!(test = test.rows(), pseudo_labelled = picked.len(), targets = ?p.targets, "pseudo-labels chosen");
        let ids: Vec<ImageId> = picked.iter().map(|&r| test.ids[r].clone()).collect();
        let mut meta = BTreeMap::new();
        meta.insert("what".into(), "pseudo_labels".into());
        meta.insert("score".into(), "mean |p - 0.5| over classes of the source blend".into());
        meta.insert("source".into(), source.to_string());
        meta.insert("targets".into(), format!("{:?}", p.targets).to_lowercase());
        let s = ScoredIds { ids: ids.clone(), scores: picked.iter().map(|&r| confidence[r]).collect(), meta };
        outputs.push(pq::write_scored_ids(store, &keys::stage_data(job.scope(), PSEUDO), &s).await?);
        let preds = Predictions {
            ids,
            probs: targets,
            meta: PredictionMeta {
                experiment: job.experiment.clone(),
                model: "pseudo_labels".into(),
                fold: None,
                kind: PredictionKind::Test,
                tta: 1,
                spec_hash: job.spec_hash.clone(),
                class_count: c,
                vocabulary_hash: inputs.vocab.hash(),
            },
        };
        counts.1 = preds.rows();
        outputs.push(pq::write_predictions(store, &keys::stage_data(job.scope(), PSEUDO_TARGETS), &preds).await?);
    }
    if let Some(d) = &job.distill {
        let key = keys::ensemble_oof(source);
        let file = DistillFile { teacher_oof: OutputEntry::of_object(store, &key).await?, weight: d.weight };
        let bytes = serde_json::to_vec_pretty(&file)?;
        let out = keys::stage_data(job.scope(), DISTILL);
        outputs.push(OutputEntry::of_bytes(&out, &bytes));
        store.put(&out, bytes).await?;
    }
    Ok((counts, outputs))
}

async fn read_thresholds(store: &Store, key: &str) -> Result<ThresholdsFile> {
    let bytes = store.get(key).await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Format { key: key.to_string(), what: "thresholds file", reason: e.to_string() })
}

fn check_vocabulary(p: &Predictions, inputs: &Inputs) -> Result<()> {
    if p.meta.vocabulary_hash != inputs.vocab.hash() || p.classes() != inputs.vocab.len() {
        return Err(Error::Member {
            key: format!("{} predictions of experiment `{}`", p.meta.kind.as_str(), p.meta.experiment),
            message: "were made with another data/labels.csv; rerun the source stage".into(),
        });
    }
    Ok(())
}

/// The labels of each row of `oof`, from `train.csv`.
fn train_truth(oof: &Predictions, inputs: &Inputs, key: &str) -> Result<crate::data::metric::LabelSets> {
    let by_id: std::collections::HashMap<&ImageId, usize> = inputs.train.ids.iter().enumerate().map(|(i, id)| (id, i)).collect();
    let mut rows = Vec::with_capacity(oof.rows());
    for id in &oof.ids {
        let &i = by_id.get(id).ok_or_else(|| Error::Member { key: key.to_string(), message: format!("id `{id}` is not in data/train.csv") })?;
        rows.push(inputs.train.labels[i].iter().map(|a| a.0).collect::<Vec<u16>>());
    }
    Ok(crate::data::metric::LabelSets::from_rows(inputs.vocab.len(), rows))
}

fn group_of(inputs: &Inputs) -> Vec<u8> {
    threshold::group_index(inputs.vocab.groups())
}
