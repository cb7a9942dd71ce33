//! Failure records (`_FAILED.json`, beside where the job's manifest goes):
//! when a job fails, why (its exit status and kind, the error's whole
//! cause chain), which attempt it was, on which host and build, and the
//! batch engine's ids of the attempt. On a cluster the job's log lives on
//! the cluster; the record lives in the store, where `imet status` reads
//! it. A record never replaces an output: it has its own key, and a later
//! success commits the manifest beside it, which `imet status` reads
//! first. Written by [`super::JobRef::run_once`]; best effort (a store too
//! broken to take the record only logs a warning).

use super::manifest::{JobId, JobRef};
use super::provenance;
use super::store::Store;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `_FAILED.json` of a job's latest failed attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRecord {
    pub job: JobId,
    pub spec_hash: String,
    /// The exit status the command ends with (`ExitKind`: 2 spec, 3 bad
    /// input, 4 computation, 74 storage, 75 transient, ...).
    pub exit_status: u8,
    /// What that status means, in a few words.
    pub exit_kind: String,
    /// The error and its causes, outermost first.
    pub error: Vec<String>,
    /// 1 for the first failure recorded for this spec, counting up with
    /// each failed attempt after it.
    pub attempt: u32,
    pub host: String,
    /// RFC 3339 time of the failure.
    pub failed_at: String,
    pub imet_version: String,
    pub source_commit: String,
    /// The batch engine's ids of this attempt (`SLURM_JOB_ID`,
    /// `AWS_BATCH_JOB_ATTEMPT`, ...), as far as the environment says.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub engine: BTreeMap<String, String>,
}

/// The failure record's key for a job whose manifest is `manifest`: in
/// the same folder, `SUCCESS` in the name replaced by `FAILED`
/// (`_SUCCESS.json` -> `_FAILED.json`, `_FOLDS_SUCCESS.json` ->
/// `_FOLDS_FAILED.json`), any other name given a `_FAILED` suffix
/// (`_TRAINED.json` -> `_TRAINED_FAILED.json`).
pub fn failure_key(manifest: &str) -> String {
    let (dir, name) = manifest.rsplit_once('/').map(|(d, n)| (format!("{d}/"), n)).unwrap_or((String::new(), manifest));
    let stem = name.strip_suffix(".json").unwrap_or(name);
    let failed = match stem.rfind("SUCCESS") {
        Some(i) => format!("{}FAILED{}", &stem[..i], &stem[i + "SUCCESS".len()..]),
        None => format!("{stem}_FAILED"),
    };
    format!("{dir}{failed}.json")
}

/// The error and each of its sources, outermost first.
pub fn chain(err: &Error) -> Vec<String> {
    let mut out = vec![err.to_string()];
    let mut cur = std::error::Error::source(err);
    while let Some(e) = cur {
        let text = e.to_string();
        // thiserror's `{source}` in a message repeats the cause: keep it once.
        if !out.last().is_some_and(|l| l.ends_with(&text)) {
            out.push(text);
        }
        cur = e.source();
    }
    out
}

impl FailureRecord {
    /// The record of `err` ending an attempt of `job`, `attempt` counted.
    pub fn new(job: &JobRef, err: &Error, attempt: u32) -> FailureRecord {
        let kind = err.exit_kind();
        FailureRecord {
            job: job.id.clone(),
            spec_hash: job.spec_hash.clone(),
            exit_status: kind.code(),
            exit_kind: kind.describe().into(),
            error: chain(err),
            attempt,
            host: provenance::host(),
            failed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            imet_version: env!("CARGO_PKG_VERSION").into(),
            source_commit: provenance::SOURCE_COMMIT.into(),
            engine: provenance::engine_ids().into_iter().collect(),
        }
    }

    /// The record for the job whose manifest is `manifest`, if any.
    ///
    /// # Errors
    /// Store errors; [`Error::Format`] when the object is not a record.
    pub async fn load(store: &Store, manifest: &str) -> Result<Option<FailureRecord>> {
        let key = failure_key(manifest);
        match store.get_opt(&key).await? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| Error::Format { key, what: "failure record", reason: e.to_string() }),
        }
    }

    /// One line for a person: status, kind, attempt, host, time, and the
    /// innermost cause.
    pub fn summary(&self) -> String {
        let cause = self.error.last().map(String::as_str).unwrap_or("");
        format!("exit {} ({}), attempt {} on {} at {}: {cause}", self.exit_status, self.exit_kind, self.attempt, self.host, self.failed_at)
    }
}

/// Writes the failure record of `job` failed with `err`, the attempt one
/// more than the last record's for the same spec. Never fails: a record
/// that cannot be written is logged as a warning, and the job's own error
/// is what the command reports.
pub async fn record(store: &Store, job: &JobRef, err: &Error) {
    let key = failure_key(&job.manifest);
    let previous = FailureRecord::load(store, &job.manifest).await.ok().flatten().filter(|r| r.spec_hash == job.spec_hash);
    let rec = FailureRecord::new(job, err, previous.map_or(1, |p| p.attempt.saturating_add(1)));
    let written = match serde_json::to_vec_pretty(&rec) {
        Ok(body) => store.put(&key, body).await,
        Err(e) => Err(e.into()),
    };
    match written {
        Ok(()) => tracing::info!(key = %key, job = %job.id, exit_status = rec.exit_status, attempt = rec.attempt, "failure recorded"),
        Err(e) => tracing::warn!(key = %key, job = %job.id, error = %e, "could not write the failure record"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::manifest::OutputEntry;

    fn job() -> JobRef {
        JobRef {
            id: JobId { kind: "train".into(), experiment: "e".into(), model: Some("m".into()), fold: Some(1) },
            manifest: "runs/e/models/m/fold=1/_TRAINED.json".into(),
            spec_hash: "h".into(),
            inputs: vec![],
        }
    }

    #[test]
    fn the_record_sits_beside_the_manifest_under_its_own_name() {
        assert_eq!(failure_key("runs/e/models/m/fold=1/_SUCCESS.json"), "runs/e/models/m/fold=1/_FAILED.json");
        assert_eq!(failure_key("runs/e/_FOLDS_SUCCESS.json"), "runs/e/_FOLDS_FAILED.json");
        assert_eq!(failure_key("runs/e/models/m/fold=1/_TRAINED.json"), "runs/e/models/m/fold=1/_TRAINED_FAILED.json");
        assert_eq!(failure_key("_SUCCESS.json"), "_FAILED.json");
    }

    #[tokio::test]
    async fn a_failed_attempt_is_recorded_counted_and_a_later_success_commits_beside_it() {
        let store = Store::memory();
        let j = job();
        let nan = || async { Err::<((), Vec<OutputEntry>), _>(Error::Train { job: "train e m 1".into(), message: "loss is NaN at epoch 2".into() }) };
        assert!(j.run_once(&store, nan).await.is_err());
        let first = FailureRecord::load(&store, &j.manifest).await.unwrap().expect("recorded");
        assert_eq!((first.exit_status, first.attempt, first.job.fold), (4, 1, Some(1)));
        assert!(first.error[0].contains("loss is NaN at epoch 2"), "{first:?}");
        assert!(first.summary().starts_with("exit 4 (the job's computation failed), attempt 1 on "), "{}", first.summary());
        let busy = || async {
            let source = object_store::Error::Generic { store: "S3", source: "503 Service Unavailable".into() };
            Err::<((), Vec<OutputEntry>), _>(Error::Store { op: "get", key: "runs/e/folds.parquet".into(), attempts: 5, source })
        };
        assert!(j.run_once(&store, busy).await.is_err());
        let second = FailureRecord::load(&store, &j.manifest).await.unwrap().unwrap();
        assert_eq!((second.exit_status, second.attempt), (75, 2));
        assert!(second.error.iter().any(|l| l.contains("503 Service Unavailable")), "{second:?}");
        // A success commits the manifest; the record stays beside it, untouched.
        j.run_once(&store, || async {
            store.put("runs/e/models/m/fold=1/model.bin", "w").await?;
            Ok(((), vec![OutputEntry::of_bytes("runs/e/models/m/fold=1/model.bin", b"w")]))
        })
        .await
        .unwrap();
        assert!(j.committed(&store).await.unwrap().is_some());
        assert_eq!(FailureRecord::load(&store, &j.manifest).await.unwrap(), Some(second));
    }

    #[tokio::test]
    async fn a_committed_job_is_skipped_without_a_record() {
        let store = Store::memory();
        let j = job();
        j.run_once(&store, || async { Ok(((), vec![])) }).await.unwrap();
        j.run_once(&store, || async { Err::<((), Vec<OutputEntry>), _>(Error::Usage("never runs".into())) }).await.unwrap();
        assert_eq!(FailureRecord::load(&store, &j.manifest).await.unwrap(), None);
    }
}
