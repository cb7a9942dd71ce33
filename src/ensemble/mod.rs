//! Ensemble stage (`imet ensemble --spec S`): reads every member's
//! `oof.parquet` and `test.parquet` (models x folds), `folds.parquet` and
//! the competition CSVs; validates all of them, blends the members, fits
//! and cross-validates threshold strategies on OOF F2, and writes under
//! `runs/{exp}/ensemble/`: `ensemble_oof.parquet`, `ensemble_test.parquet`,
//! `thresholds.json`, `report.json`, `plots/*.png`, `submission.csv` and,
//! last, `_SUCCESS.json`. `imet eval` scores any predictions file.
//!
//! The job runs in four steps: [`inputs::read`] (every file checked before
//! any work), [`pass::blend`] (members streamed into one accumulator per
//! split), [`fit`] (threshold strategies), [`outputs::write`].
//!
//! Memory: members are streamed into one accumulator per split, so the
//! peak is about two OOF matrices plus two test matrices, whatever the
//! number of members (see BENCHMARKS.md, ensemble section).

pub mod apply;
pub mod blend;
pub mod config;
pub mod eval;
pub mod inputs;
pub mod members;
pub use crate::data::metric;
pub mod outputs;
pub mod pass;
pub mod plots;
pub mod report;
pub mod submission;
pub mod threshold;

pub use blend::BlendKind;
pub use config::{EnsembleSection, GroupSources, KnnTagRelevance};
pub use eval::eval;

use crate::error::{Error, Result};
use crate::storage::keys::{self, Scope};
use crate::storage::{JobId, JobRef, OutputEntry, Ran, Store, Upstream};
use std::collections::BTreeMap;
use std::time::Instant;
use threshold::{Evaluated, Matrix, Strategy};
use tracing::{info, info_span, Instrument};

/// One ensemble job: the experiment and stage, its folds and its
/// `[ensemble]` section, with the hash its manifest carries.
#[derive(Clone, Debug)]
pub struct EnsembleJob {
    pub experiment: String,
    /// `None` for the first stage.
    pub stage: Option<String>,
    /// Folds of the experiment (`folds.k`).
    pub k: u8,
    pub config: EnsembleSection,
    /// Folds a member trains when not all of them (members on fold subsets).
    pub member_folds: BTreeMap<String, Vec<u8>>,
    pub spec_hash: String,
    /// The upstream jobs it reads (the members' predict jobs, the stages a
    /// group's columns come from).
    pub inputs: Vec<Upstream>,
}

impl EnsembleJob {
    /// Where the job's outputs live.
    pub fn scope(&self) -> Scope<'_> {
        Scope { experiment: &self.experiment, stage: self.stage.as_deref() }
    }

    /// The folds member `model` has predictions for.
    pub fn folds_of(&self, model: &str) -> Vec<u8> {
        self.member_folds.get(model).cloned().unwrap_or_else(|| (0..self.k).collect())
    }

    /// The job as the store sees it (`ensemble/_SUCCESS.json`).
    pub fn job_ref(&self) -> JobRef {
        JobRef {
            id: JobId { kind: "ensemble".into(), experiment: self.experiment.clone(), model: self.stage.clone(), fold: None },
            manifest: keys::ensemble_success(self.scope()),
            spec_hash: self.spec_hash.clone(),
            inputs: self.inputs.clone(),
        }
    }
}

/// What an ensemble run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    /// True when a committed manifest for this spec was found.
    pub skipped: bool,
    pub chosen: String,
    pub cv_f2: f64,
    pub in_sample_f2: f64,
    pub outputs: Vec<OutputEntry>,
}

/// Peak resident memory of this process so far, in MiB (Linux; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Runs the ensemble `job` against `store`.
///
/// # Errors
/// [`Error::Member`] naming the file and first bad id for any invalid
/// member file (nothing is written then); storage and input errors.
pub async fn run(store: &Store, job: &EnsembleJob) -> Result<Summary> {
    let span = info_span!("job", kind = "ensemble", experiment = %job.experiment);
    run_inner(store, job).instrument(span).await
}

async fn run_inner(store: &Store, job: &EnsembleJob) -> Result<Summary> {
    match job.job_ref().run_once(store, || ensemble(store, job)).await? {
        Ran::Skipped(m) => Ok(Summary { skipped: true, chosen: String::new(), cv_f2: f64::NAN, in_sample_f2: f64::NAN, outputs: m.outputs }),
        Ran::Done { outcome: chosen, manifest, .. } => {
            info!(chosen = %chosen.strategy.name, cv_f2 = chosen.cv_f2, "ensemble committed");
            Ok(Summary { skipped: false, chosen: chosen.strategy.name, cv_f2: chosen.cv_f2, in_sample_f2: chosen.in_sample_f2, outputs: manifest.outputs })
        }
    }
}

/// The work of an ensemble job that is not committed yet: the chosen
/// strategy and every output.
async fn ensemble(store: &Store, job: &EnsembleJob) -> Result<(Evaluated, Vec<OutputEntry>)> {
    let mut seconds = BTreeMap::new();
    let t0 = Instant::now();
    let inputs = inputs::read(store, job).await?;
    seconds.insert("inputs".to_string(), t0.elapsed().as_secs_f64());
    let mut blended = pass::blend(store, job, &inputs, &mut seconds).await?;
    take_groups(store, job, &inputs, &mut blended).await?;
    let t2 = Instant::now();
    let fitted = fit(&job.config, &inputs, &blended)?;
    seconds.insert("thresholds".to_string(), t2.elapsed().as_secs_f64());
    let outputs = outputs::write(store, job, &inputs, blended, &fitted, seconds, t0).await?;
    Ok((fitted.chosen, outputs))
}

/// Per-group blends: overwrites the columns of each group `groups` takes
/// from another stage with that stage's committed blend (OOF and test).
///
/// # Errors
/// [`Error::Member`] when the other stage's blend covers other images or
/// was made with another vocabulary; read errors.
async fn take_groups(store: &Store, job: &EnsembleJob, inputs: &inputs::Inputs, blended: &mut pass::Blended) -> Result<()> {
    let c = inputs.vocab.len();
    for (group, stage) in job.config.groups.sources() {
        let scope = Scope { experiment: &job.experiment, stage: Some(stage).filter(|s| *s != crate::ids::MAIN_STAGE) };
        let columns: Vec<usize> = (0..c).filter(|&k| inputs.vocab.groups()[k] == group).collect();
        let own_oof_ids: Vec<&crate::ids::ImageId> = match &blended.rows {
            None => inputs.train.ids.iter().collect(),
            Some(rows) => rows.iter().map(|&r| &inputs.train.ids[r as usize]).collect(),
        };
        for (key, own_ids, own) in [
            (keys::ensemble_oof(scope), own_oof_ids, &mut blended.oof),
            (keys::ensemble_test(scope), inputs.test.ids.iter().collect(), &mut blended.test),
        ] {
            take_columns(store, key, &inputs.vocab, &own_ids, &columns, own).await?;
        }
        info!(group = group.as_str(), from = %scope, "group columns taken from another stage's blend");
    }
    Ok(())
}

/// Overwrites `columns` of `own` (rows `own_ids`, the vocabulary's width)
/// with the same rows and columns of the blend at `key`, another stage's.
///
/// # Errors
/// [`Error::Member`] naming `key` when it was made with another vocabulary
/// or lacks one of `own_ids`; read errors.
pub(crate) async fn take_columns(
    store: &Store,
    key: String,
    vocab: &crate::data::Vocabulary,
    own_ids: &[&crate::ids::ImageId],
    columns: &[usize],
    own: &mut [f32],
) -> Result<()> {
    let c = vocab.len();
    let other = crate::storage::parquet::read_predictions(store, &key).await?;
    if other.classes() != c || other.meta.vocabulary_hash != vocab.hash() {
        return Err(Error::Member { key, message: "was made with another data/labels.csv; rerun that stage".into() });
    }
    let row: std::collections::HashMap<&crate::ids::ImageId, usize> = other.ids.iter().enumerate().map(|(r, id)| (id, r)).collect();
    for (i, id) in own_ids.iter().enumerate() {
        let &r = row.get(id).ok_or_else(|| Error::Member {
            key: key.clone(),
            message: format!("has no row for `{id}`, which this stage's blend has; both stages must predict the same images"),
        })?;
        let src = other.row(r);
        for &k in columns {
            own[i * c + k] = src[k];
        }
    }
    Ok(())
}

/// Fitted threshold strategies and what the chosen one predicts.
pub struct Fitted {
    /// The labels of the blended OOF rows (every training image, or the
    /// covered ones).
    pub truth: metric::LabelSets,
    pub group: Vec<u8>,
    pub tables: threshold::Tables,
    pub evaluated: Vec<Evaluated>,
    pub chosen: Evaluated,
    pub pred_oof: metric::LabelSets,
    pub pred_test: metric::LabelSets,
}

/// Fits every strategy on the blended OOF, picks the best cross-validated
/// one, and applies it to OOF and test.
///
/// # Errors
/// [`Error::Ensemble`] when no strategy could be fitted.
fn fit(cfg: &EnsembleSection, inputs: &inputs::Inputs, blended: &pass::Blended) -> Result<Fitted> {
    let c = inputs.vocab.len();
    let group = threshold::group_index(inputs.vocab.groups());
    let oof_m = Matrix { probs: &blended.oof, classes: c, group: &group };
    let test_m = Matrix { probs: &blended.test, classes: c, group: &group };
    let (truth, fold_of) = match &blended.rows {
        None => (inputs.truth.clone(), inputs.fold_of.clone()),
        Some(rows) => (inputs.truth.select(rows), rows.iter().map(|&r| inputs.fold_of[r as usize]).collect()),
    };
    let fit_cfg = cfg.fit_config();
    let tables = threshold::Tables::build(oof_m, &truth, fit_cfg.bins);
    let evaluated = threshold::fit_all_with(oof_m, &truth, &fold_of, &fit_cfg, &tables);
    let chosen = threshold::pick(&evaluated).cloned().ok_or_else(|| Error::Ensemble("no threshold strategy was fitted".into()))?;
    info!(strategy = %chosen.strategy.name, cv_f2 = chosen.cv_f2, in_sample_f2 = chosen.in_sample_f2, "strategy chosen");
    let pred_oof = threshold::apply(&chosen.strategy, oof_m, None);
    let pred_test = threshold::apply(&chosen.strategy, test_m, None);
    info!(peak_rss_mib = peak_rss_mib(), "thresholds fitted");
    Ok(Fitted { truth, group, tables, evaluated, chosen, pred_oof, pred_test })
}

/// The chosen strategy's group thresholds for the F2 curves: its own, else
/// the fitted group strategy's, else 0.2.
fn curve_thresholds(chosen: &Strategy, evaluated: &[Evaluated], groups: &[crate::ids::Group]) -> [f32; 2] {
    report::group_thresholds(chosen, groups)
        .or_else(|| {
            evaluated.iter().find_map(|e| match e.strategy.rule {
                threshold::Rule::Group { culture, tag } => Some([culture, tag]),
                _ => None,
            })
        })
        .unwrap_or([0.2, 0.2])
}
