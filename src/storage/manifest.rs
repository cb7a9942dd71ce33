//! Job completion manifests (`_SUCCESS.json`): the job's identity, its
//! spec hash and every output's key, size and sha256. Written last, with a
//! conditional create, so a job is either committed with all its outputs or
//! not at all, and two concurrent runs of one job cannot both claim it.

use super::store::Store;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Which job a manifest belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobId {
    /// `folds`, `train`, `predict`, `ensemble`, ...
    pub kind: String,
    pub experiment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<u8>,
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.experiment)?;
        if let Some(m) = &self.model {
            write!(f, " model={m}")?;
        }
        if let Some(k) = self.fold {
            write!(f, " fold={k}")?;
        }
        Ok(())
    }
}

/// One output object of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputEntry {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

impl OutputEntry {
    pub fn of_bytes(key: &str, bytes: &[u8]) -> OutputEntry {
        OutputEntry { key: key.to_string(), size: bytes.len() as u64, sha256: hex::encode(Sha256::digest(bytes)) }
    }

    /// Reads `key` back from the store and describes it.
    pub async fn of_object(store: &Store, key: &str) -> Result<OutputEntry> {
        let bytes = store.get(key).await?;
        Ok(OutputEntry::of_bytes(key, &bytes))
    }
}

/// The `_SUCCESS.json` of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub job: JobId,
    pub spec_hash: String,
    pub outputs: Vec<OutputEntry>,
    /// The committed jobs whose outputs this job read, each with the digest
    /// of those outputs when it read them. A later change upstream makes
    /// this job stale ([`JobRef::committed`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputEntry>,
    /// RFC 3339 time of the commit.
    pub created_at: String,
    pub imet_version: String,
    /// The git commit imet was built from (`unknown` outside git).
    #[serde(default = "unknown")]
    pub source_commit: String,
    /// The libtorch build linked: `cpu` or `cuda`.
    #[serde(default = "unknown")]
    pub libtorch: String,
    /// The device the job's torch work used (`cpu`, `cuda:0 of N ...`).
    #[serde(default = "unknown")]
    pub device: String,
    /// The host the job ran on.
    #[serde(default = "unknown")]
    pub host: String,
}

/// What manifests written before a field existed read as.
fn unknown() -> String {
    "unknown".into()
}

/// An upstream job a job read from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputEntry {
    /// The upstream job's manifest key.
    pub manifest: String,
    /// [`Manifest::digest`] of that manifest when it was read.
    pub digest: String,
}

/// What [`Manifest::commit`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// This call created the manifest.
    Committed,
    /// Another run committed the same job with the same spec first; its
    /// manifest is returned and this run's outputs are redundant.
    AlreadyCommitted(Manifest),
}

impl Manifest {
    pub fn new(job: JobId, spec_hash: impl Into<String>, outputs: Vec<OutputEntry>) -> Manifest {
        let build = super::provenance::Build::current();
        Manifest {
            job,
            spec_hash: spec_hash.into(),
            outputs,
            inputs: Vec::new(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            imet_version: build.imet_version,
            source_commit: build.source_commit,
            libtorch: build.libtorch,
            device: build.device,
            host: super::provenance::host(),
        }
    }

    /// sha256 over the keys and sha256 of every output: what a downstream
    /// job records of this one.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for o in &self.outputs {
            h.update(o.key.as_bytes());
            h.update(b" ");
            h.update(o.sha256.as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    }

    /// Writes the manifest at `key` unless one exists.
    ///
    /// # Errors
    /// [`Error::SpecChanged`] when the existing manifest has another spec
    /// hash; storage errors after retries.
    pub async fn commit(&self, store: &Store, key: &str) -> Result<CommitOutcome> {
        let body = serde_json::to_vec_pretty(self)?;
        crate::fault::point("manifest.commit");
        if store.put_if_absent(key, body.clone()).await? {
            return Ok(CommitOutcome::Committed);
        }
        let existing = Manifest::load(store, key).await?.ok_or_else(|| Error::Format {
            key: key.to_string(),
            what: "job manifest",
            reason: "vanished right after a conditional write found it".into(),
        })?;
        if existing == *self {
            // Our own write, answered late and retried.
            return Ok(CommitOutcome::Committed);
        }
        if existing.spec_hash != self.spec_hash {
            return Err(Error::SpecChanged { key: key.to_string(), expected: self.spec_hash.clone(), found: existing.spec_hash });
        }
        Ok(CommitOutcome::AlreadyCommitted(existing))
    }

    /// The manifest at `key`, if any.
    ///
    /// # Errors
    /// [`Error::Format`] when the object is not a manifest.
    pub async fn load(store: &Store, key: &str) -> Result<Option<Manifest>> {
        match store.get_opt(key).await? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Format { key: key.to_string(), what: "job manifest", reason: e.to_string() }),
        }
    }

    /// The manifest at `key` when the job is committed for `spec_hash` and
    /// all its outputs are present with their recorded sizes; `None` when
    /// the job still has to run.
    ///
    /// # Errors
    /// [`Error::SpecChanged`] when committed by another spec;
    /// [`Error::Format`] when an output listed in the manifest is missing or
    /// has another size (the store was tampered with).
    pub async fn committed(store: &Store, key: &str, spec_hash: &str) -> Result<Option<Manifest>> {
        let Some(m) = Manifest::load(store, key).await? else { return Ok(None) };
        if m.spec_hash != spec_hash {
            return Err(Error::SpecChanged { key: key.to_string(), expected: spec_hash.to_string(), found: m.spec_hash });
        }
        for out in &m.outputs {
            match store.size(&out.key).await? {
                Some(size) if size == out.size => {}
                found => {
                    return Err(Error::Format {
                        key: key.to_string(),
                        what: "job manifest",
                        reason: format!(
                            "output `{}` should be {} bytes but is {}; delete the manifest to rerun the job",
                            out.key,
                            out.size,
                            found.map(|s| format!("{s} bytes")).unwrap_or_else(|| "missing".into())
                        ),
                    })
                }
            }
        }
        Ok(Some(m))
    }
}

/// One job as the store sees it: who it is, the manifest that marks it
/// done, and the spec hash the manifest must carry. Every job kind runs
/// through [`JobRef::run_once`], so a new kind is one function that does
/// its work and returns its outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRef {
    pub id: JobId,
    /// Key of the job's manifest.
    pub manifest: String,
    pub spec_hash: String,
    /// The upstream jobs whose outputs this job reads (beyond the
    /// experiment's data and folds).
    pub inputs: Vec<Upstream>,
}

/// An upstream job of a [`JobRef`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Its manifest key.
    pub manifest: String,
    /// The command that commits it, for the error when it is missing.
    pub command: String,
    /// Whether the job refuses to run without it; an optional upstream is
    /// recorded when committed (files a job can also read without their
    /// manifest, such as members' predictions handed to an ensemble).
    pub required: bool,
}

impl Upstream {
    /// An upstream job that must be committed first.
    pub fn required(manifest: String, command: String) -> Upstream {
        Upstream { manifest, command, required: true }
    }

    /// An upstream job recorded when committed.
    pub fn optional(manifest: String, command: String) -> Upstream {
        Upstream { manifest, command, required: false }
    }
}

/// What [`JobRef::run_once`] did.
#[derive(Debug)]
pub enum Ran<T> {
    /// Committed before for this spec: nothing was done.
    Skipped(Manifest),
    /// The work ran; its outputs are committed (by this run, or by a
    /// concurrent run of the same job that committed first).
    Done { outcome: T, manifest: Manifest, commit: CommitOutcome },
}

impl JobRef {
    /// The manifest when the job is committed for this spec (see
    /// [`Manifest::committed`]).
    ///
    /// # Errors
    /// As [`Manifest::committed`].
    ///
    /// # Errors
    /// Also [`Error::Stale`] when an upstream job it read was committed
    /// again since, with other outputs.
    pub async fn committed(&self, store: &Store) -> Result<Option<Manifest>> {
        let Some(m) = Manifest::committed(store, &self.manifest, &self.spec_hash).await? else { return Ok(None) };
        for input in &m.inputs {
            let now = Manifest::load(store, &input.manifest).await?.map(|u| u.digest());
            if now.as_deref() != Some(input.digest.as_str()) {
                return Err(Error::Stale { key: self.manifest.clone(), upstream: input.manifest.clone() });
            }
        }
        Ok(Some(m))
    }

    /// The digests of the upstream manifests, each of which must be
    /// committed.
    ///
    /// # Errors
    /// [`Error::Usage`] naming the first upstream job not committed yet.
    pub async fn read_inputs(&self, store: &Store) -> Result<Vec<InputEntry>> {
        let mut out = Vec::new();
        for up in &self.inputs {
            let Some(m) = Manifest::load(store, &up.manifest).await? else {
                if !up.required {
                    continue;
                }
                return Err(Error::Usage(format!(
                    "{} reads the outputs of `{}`, which is not committed yet; run `{}` first (`imet run` runs every job in order)",
                    self.id, up.manifest, up.command
                )));
            };
            out.push(InputEntry { manifest: up.manifest.clone(), digest: m.digest() });
        }
        Ok(out)
    }

    /// Skips the job when it is committed for this spec; otherwise takes
    /// the job's lease ([`super::lease`]: waiting while another live runner
    /// holds it, and skipping the job if that runner commits it), runs
    /// `work`, which returns its outcome and every output it wrote, and
    /// commits those outputs. Nothing is committed when `work` fails, or
    /// when the lease was lost meanwhile; the lease is deleted after the
    /// commit and released after a failure.
    ///
    /// # Errors
    /// `work`'s error; [`Error::SpecChanged`] when the job was committed by
    /// another spec; [`Error::LeaseLost`]; storage errors.
    pub async fn run_once<T, F, Fut>(&self, store: &Store, work: F) -> Result<Ran<T>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(T, Vec<OutputEntry>)>>,
    {
        if let Some(done) = self.committed(store).await? {
            tracing::info!(key = %self.manifest, job = %self.id, "already committed for this spec; skipping");
            return Ok(Ran::Skipped(done));
        }
        // One live runner per job: wait while another holds the job's lease.
        let lease = match super::lease::acquire(store, &self.id, &self.manifest, || async { Ok(self.committed(store).await?.is_some()) }).await? {
            super::lease::Taken::Held(lease) => lease,
            super::lease::Taken::Committed => {
                tracing::info!(key = %self.manifest, job = %self.id, "committed by another runner while this one waited; skipping");
                let done = self.committed(store).await?.ok_or_else(|| Error::Format { key: self.manifest.clone(), what: "job manifest", reason: "vanished right after it was found".into() })?;
                return Ok(Ran::Skipped(done));
            }
        };
        let _stop = lease.stop_on_drop();
        let ran = self.run_leased(store, &lease, work).await;
        match &ran {
            Ok(_) => {
                if let Err(e) = lease.finish_committed().await {
                    tracing::warn!(key = %lease.key(), error = %e, "could not delete the committed job's lease (`imet gc --delete` removes it)");
                }
            }
            Err(e) => {
                super::failure::record(store, self, e).await;
                lease.release().await
            }
        }
        ran
    }

    /// [`JobRef::run_once`] once this process holds the job's lease.
    async fn run_leased<T, F, Fut>(&self, store: &Store, lease: &super::lease::Lease, work: F) -> Result<Ran<T>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(T, Vec<OutputEntry>)>>,
    {
        // Committed between the first look and the lease.
        if let Some(done) = self.committed(store).await? {
            tracing::info!(key = %self.manifest, job = %self.id, "already committed for this spec; skipping");
            return Ok(Ran::Skipped(done));
        }
        let inputs = self.read_inputs(store).await?;
        let (outcome, outputs) = lease.scope(work()).await?;
        lease.ensure_held().await?;
        let mut manifest = Manifest::new(self.id.clone(), self.spec_hash.clone(), outputs);
        manifest.inputs = inputs;
        let commit = manifest.commit(store, &self.manifest).await?;
        crate::fault::point("job.committed");
        match &commit {
            CommitOutcome::Committed => tracing::info!(key = %self.manifest, job = %self.id, "job committed"),
            CommitOutcome::AlreadyCommitted(_) => tracing::info!(key = %self.manifest, job = %self.id, "another run committed the same job first"),
        }
        Ok(Ran::Done { outcome, manifest, commit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn run_once_runs_then_skips_and_commits_nothing_on_failure() {
        let store = Store::memory();
        let job = JobRef { id: job(), manifest: "_SUCCESS.json".into(), spec_hash: "h".into(), inputs: vec![] };
        let failed = job.run_once(&store, || async { Err::<((), Vec<OutputEntry>), _>(Error::Usage("boom".into())) }).await;
        assert!(failed.is_err());
        assert!(job.committed(&store).await.unwrap().is_none());
        let work = || async {
            store.put("o", "x").await?;
            Ok((7, vec![OutputEntry::of_bytes("o", b"x")]))
        };
        assert!(matches!(job.run_once(&store, work).await.unwrap(), Ran::Done { outcome: 7, commit: CommitOutcome::Committed, .. }));
        let again = job.run_once(&store, || async { panic!("a committed job does not run") as Result<(i32, Vec<OutputEntry>)> }).await.unwrap();
        assert!(matches!(again, Ran::Skipped(m) if m.outputs.len() == 1));
    }

    #[tokio::test]
    async fn a_job_goes_stale_when_what_it_read_is_committed_again() {
        let store = Store::memory();
        let up = JobRef { id: job(), manifest: "up/_SUCCESS.json".into(), spec_hash: "u".into(), inputs: vec![] };
        let down = JobRef { id: job(), manifest: "down/_SUCCESS.json".into(), spec_hash: "d".into(), inputs: vec![Upstream::required(up.manifest.clone(), "imet up".into())] };
        let err = down.run_once(&store, || async { Ok(((), vec![])) }).await.unwrap_err().to_string();
        assert!(err.contains("up/_SUCCESS.json") && err.contains("not committed yet") && err.contains("imet up"), "{err}");
        let write = |bytes: &'static [u8]| {
            let store = store.clone();
            async move {
                store.put("up/out", bytes).await?;
                Ok(((), vec![OutputEntry::of_bytes("up/out", bytes)]))
            }
        };
        up.run_once(&store, || write(b"one")).await.unwrap();
        down.run_once(&store, || async { Ok(((), vec![])) }).await.unwrap();
        assert!(down.committed(&store).await.unwrap().is_some());
        // Upstream is redone with other outputs: downstream is stale, by name.
        store.delete("up/_SUCCESS.json").await.unwrap();
        up.run_once(&store, || write(b"two")).await.unwrap();
        let err = down.committed(&store).await.unwrap_err();
        assert!(matches!(&err, Error::Stale { upstream, .. } if upstream == "up/_SUCCESS.json"), "{err}");
    }

    fn job() -> JobId {
        JobId { kind: "predict".into(), experiment: "exp".into(), model: Some("m".into()), fold: Some(0) }
    }

    #[tokio::test]
    async fn second_commit_with_the_same_spec_is_a_no_op() {
        let store = Store::memory();
        store.put("o.parquet", "x").await.unwrap();
        let out = vec![OutputEntry::of_bytes("o.parquet", b"x")];
        let first = Manifest::new(job(), "h1", out.clone());
        assert_eq!(first.commit(&store, "_SUCCESS.json").await.unwrap(), CommitOutcome::Committed);
        let mut second = Manifest::new(job(), "h1", out);
        second.created_at = "later".into();
        assert!(matches!(second.commit(&store, "_SUCCESS.json").await.unwrap(), CommitOutcome::AlreadyCommitted(m) if m == first));
        assert_eq!(Manifest::committed(&store, "_SUCCESS.json", "h1").await.unwrap(), Some(first));
    }

    #[tokio::test]
    async fn a_commit_from_another_spec_is_refused() {
        let store = Store::memory();
        Manifest::new(job(), "h1", vec![]).commit(&store, "_SUCCESS.json").await.unwrap();
        let err = Manifest::new(job(), "h2", vec![]).commit(&store, "_SUCCESS.json").await.unwrap_err();
        assert!(matches!(err, Error::SpecChanged { .. }), "{err}");
        assert!(Manifest::committed(&store, "_SUCCESS.json", "h2").await.is_err());
    }

    #[tokio::test]
    async fn a_missing_output_is_reported() {
        let store = Store::memory();
        let m = Manifest::new(job(), "h", vec![OutputEntry::of_bytes("gone.parquet", b"abc")]);
        m.commit(&store, "_SUCCESS.json").await.unwrap();
        let err = Manifest::committed(&store, "_SUCCESS.json", "h").await.unwrap_err();
        assert!(err.to_string().contains("gone.parquet"), "{err}");
    }
}
