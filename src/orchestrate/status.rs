//! Experiment status (orchestrate stage): where an experiment stands, from
//! the store only, whichever executor ran it (local, Slurm, Kubernetes,
//! AWS Batch). Reads the jobs' manifests, the train jobs' checkpoint
//! listings, the failure records of jobs not done (why their latest
//! attempt failed) and the ensemble's `report.json`; writes nothing.

use super::plan::{JobKind, Plan};
use crate::ids::Fold;
use crate::error::{Error, Result};
use crate::spec::JobSpec;
use crate::storage::failure::FailureRecord;
use crate::storage::{keys, Store};
use serde::Serialize;
use std::path::Path;

/// One job's standing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobStatus {
    pub job: String,
    pub kind: JobKind,
    /// `done` (manifest committed for this spec), `failed` (not done, and
    /// its latest attempt failed: see `failure`), `pending`, or `stale`
    /// (committed by a different spec).
    pub state: String,
    /// Train jobs: the latest checkpoint's epoch in the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_epoch: Option<u32>,
    /// Train jobs: epochs over all phases.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    /// Why its latest attempt failed, for a job not done whose failure
    /// record (`_FAILED.json`) has this spec's hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureRecord>,
}

/// Where the experiment stands.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub experiment: String,
    pub root: String,
    pub jobs: Vec<JobStatus>,
    pub done: usize,
    pub total: usize,
    /// The ensemble's OOF F2 (chosen thresholds) once it is committed.
    pub oof_f2: Option<f64>,
    /// The chosen strategy's cross-validated OOF F2.
    pub cv_f2: Option<f64>,
}

impl StatusReport {
    /// A table: job, state, progress; then the totals and the OOF F2.
    pub fn render(&self) -> String {
        let width = self.jobs.iter().map(|j| j.job.len()).max().unwrap_or(3).max(3);
        let mut out = format!("experiment `{}` at {}\n{:<width$}  {:<8} progress\n", self.experiment, self.root, "job", "state");
        for j in &self.jobs {
            let progress = match (j.checkpoint_epoch, j.epochs) {
                (_, Some(total)) if j.state == "done" => format!("{total}/{total} epochs"),
                (Some(e), Some(total)) => format!("checkpoint at epoch {e}/{total}"),
                (None, Some(total)) => format!("no checkpoint yet ({total} epochs)"),
                _ => String::new(),
            };
            out.push_str(&format!("{:<width$}  {:<8} {progress}\n", j.job, j.state));
            if let Some(f) = &j.failure {
                out.push_str(&format!("{:<width$}    {}\n", "", f.summary()));
            }
        }
        out.push_str(&format!("{}/{} jobs done\n", self.done, self.total));
        if let Some(f2) = self.oof_f2 {
            out.push_str(&format!("OOF F2: {f2:.4}"));
            if let Some(cv) = self.cv_f2 {
                out.push_str(&format!(" (cross-validated {cv:.4})"));
            }
            out.push('\n');
        }
        out
    }
}

/// The status of `spec`'s experiment, read from its store.
///
/// # Errors
/// Store errors (an unreachable store, an unreadable manifest or report).
pub async fn status(spec: &JobSpec) -> Result<StatusReport> {
    let store = spec.open_store()?;
    let plan = Plan::new(spec, Path::new("spec.toml"))?;
    let mut jobs = Vec::with_capacity(plan.jobs.len());
    for job in &plan.jobs {
        let mut failure = None;
        let state = match job.committed(&store).await {
            Ok(true) => "done",
            Ok(false) => {
                failure = FailureRecord::load(&store, &job.manifest).await?.filter(|f| f.spec_hash == job.spec_hash);
                if failure.is_some() { "failed" } else { "pending" }
            }
            Err(Error::SpecChanged { .. } | Error::Stale { .. }) => "stale",
            Err(e) => return Err(e),
        };
        let (mut checkpoint_epoch, mut epochs) = (None, None);
        if job.kind == JobKind::Train {
            let (Some(model), Some(fold)) = (job.model.as_deref(), job.fold) else { continue };
            epochs = spec.stage_model(job.stage.as_deref(), model).ok().map(|m| m.epochs());
            let scope = crate::storage::keys::Scope { experiment: &spec.experiment, stage: job.stage.as_deref() };
            checkpoint_epoch = latest_checkpoint(&store, scope, model, Fold(fold)).await?;
        }
        jobs.push(JobStatus { job: job.id.clone(), kind: job.kind, state: state.into(), checkpoint_epoch, epochs, failure });
    }
    let (_, oof_f2, cv_f2) = super::local::stages_f2(&store, spec).await?;
    let done = jobs.iter().filter(|j| j.state == "done").count();
    Ok(StatusReport { experiment: spec.experiment.clone(), root: spec.storage.root_url()?, total: jobs.len(), done, jobs, oof_f2, cv_f2 })
}

/// The highest `epoch={e}` among a fold model's checkpoints.
///
/// # Errors
/// Store errors.
pub async fn latest_checkpoint(store: &Store, experiment: impl std::fmt::Display + Copy, model: &str, fold: Fold) -> Result<Option<u32>> {
    let prefix = keys::checkpoints(experiment, model, fold);
    let listed = store.list(&prefix).await?;
    Ok(listed.iter().filter_map(|o| checkpoint_epoch(&o.key)).max())
}

/// `…/checkpoints/epoch=12.safetensors` -> 12.
pub fn checkpoint_epoch(key: &str) -> Option<u32> {
    let name = key.rsplit('/').next()?;
    name.strip_prefix("epoch=")?.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_give_their_epoch() {
        assert_eq!(checkpoint_epoch(&keys::checkpoint("e", "m", Fold(2), 12)), Some(12));
        assert_eq!(checkpoint_epoch("runs/e/models/m/fold=2/checkpoints/other.bin"), None);
    }

    #[tokio::test]
    async fn status_shows_committed_jobs_checkpoints_and_the_pending_rest() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "experiment = \"e\"\n[storage]\nroot = \"{}\"\n[folds]\nk = 2\n[[models]]\nname = \"m\"\narch = \"resnet18\"\nsize = 32\n\
             train = {{ batch_size = 4, phases = [{{ epochs = 3, optimizer = {{ kind = \"sgd\", lr = 0.1 }} }}] }}\n",
            dir.path().display()
        );
        let spec = JobSpec::parse("s.toml", &text).unwrap();
        let store = spec.open_store().unwrap();
        store.put(&keys::checkpoint("e", "m", Fold(1), 1), "x").await.unwrap();
        store.put(&keys::checkpoint("e", "m", Fold(1), 2), "x").await.unwrap();
        let manifest = crate::storage::manifest::Manifest::new(
            crate::storage::manifest::JobId { kind: "folds".into(), experiment: "e".into(), model: None, fold: None },
            spec.folds_hash(),
            vec![],
        );
        manifest.commit(&store, &keys::folds_success("e")).await.unwrap();
        let s = status(&spec).await.unwrap();
        assert_eq!((s.done, s.total), (1, 5));
        let t1 = s.jobs.iter().find(|j| j.job == "train/m/1").unwrap();
        assert_eq!((t1.state.as_str(), t1.checkpoint_epoch, t1.epochs), ("pending", Some(2), Some(3)));
        assert!(s.render().contains("checkpoint at epoch 2/3"), "{}", s.render());
        assert_eq!(s.oof_f2, None);
    }
}
