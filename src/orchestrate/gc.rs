//! Garbage collection (orchestrate stage, `imet gc`): what an experiment's
//! store holds that its current spec no longer needs, listed (dry run) or
//! deleted (`--delete`). Reads the spec's plan, every object under
//! `runs/{experiment}/` and `leases/runs/{experiment}/`, and the manifests
//! and leases there; with
//! `--delete`, deletes what it listed and nothing else.
//!
//! Garbage, by reason:
//! - `stale_spec`: a job's manifest written by another spec (or made from
//!   upstream outputs committed again since), with the outputs it lists
//!   and, for a train job, its checkpoints;
//! - `set_aside`: manifests and checkpoints `imet run --rerun-stale` kept
//!   aside (`*.stale-{time}`);
//! - `not_in_spec`: the prefixes of models, folds and stages the spec no
//!   longer has;
//! - `superseded_checkpoint`: checkpoints of committed train jobs beyond
//!   what `train.checkpoints.after_commit` keeps, and their in-epoch
//!   checkpoint left by a stop just before it was deleted;
//! - `dead_lease`: lease generations of committed jobs, and leases whose
//!   holder is gone (`storage::lease::dead_now`); a live lease is kept;
//! - `staging_file`: a local store's half-written upload files
//!   (`{key}#{n}`, which object_store hides from listings) older than an
//!   hour, left by a killed writer.
//!
//! Never garbage: the manifest and the listed outputs of a job committed
//! for the current spec (checked again just before each delete), the saved
//! specs, reports, TensorBoard files and an uncommitted job's checkpoints
//! (its resume point).

use super::plan::{JobKind, Plan};
use crate::error::{Error, Result};
use crate::ids::Fold;
use crate::spec::JobSpec;
use crate::storage::lease;
use crate::storage::manifest::Manifest;
use crate::storage::keys;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

/// Why an object is garbage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GcReason {
    StaleSpec,
    SetAside,
    NotInSpec,
    SupersededCheckpoint,
    DeadLease,
    StagingFile,
}

impl GcReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GcReason::StaleSpec => "stale_spec",
            GcReason::SetAside => "set_aside",
            GcReason::NotInSpec => "not_in_spec",
            GcReason::SupersededCheckpoint => "superseded_checkpoint",
            GcReason::DeadLease => "dead_lease",
            GcReason::StagingFile => "staging_file",
        }
    }
}

/// One object to remove.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GcItem {
    pub key: String,
    pub size: u64,
    pub reason: GcReason,
}

/// What `imet gc` found (and removed, with `--delete`).
#[derive(Clone, Debug, Serialize)]
pub struct GcReport {
    pub experiment: String,
    pub root: String,
    pub items: Vec<GcItem>,
    /// Total bytes of `items`.
    pub bytes: u64,
    /// Objects under `runs/{experiment}/` and `leases/runs/{experiment}/`
    /// looked at.
    pub scanned: usize,
    /// Whether the items were deleted.
    pub deleted: bool,
    /// What could not be looked at, and why.
    pub notes: Vec<String>,
}

impl GcReport {
    /// A table: reason, count, bytes; then each key (dry run) or the total
    /// removed.
    pub fn render(&self) -> String {
        let mut by: BTreeMap<GcReason, (usize, u64)> = BTreeMap::new();
        for i in &self.items {
            let e = by.entry(i.reason).or_default();
            e.0 += 1;
            e.1 += i.size;
        }
        let mut out = format!("experiment `{}` at {}: {} objects scanned\n", self.experiment, self.root, self.scanned);
        for i in &self.items {
            out.push_str(&format!("{:<22} {:>12}  {}\n", i.reason.as_str(), i.size, i.key));
        }
        for (r, (n, b)) in &by {
            out.push_str(&format!("{}: {n} object(s), {b} bytes\n", r.as_str()));
        }
        let verb = if self.deleted { "deleted" } else { "would delete (dry run; --delete removes them)" };
        out.push_str(&format!("{verb}: {} object(s), {} bytes\n", self.items.len(), self.bytes));
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out
    }
}

/// Staging files younger than this may belong to a writer still running.
const STAGING_MIN_AGE: Duration = Duration::from_secs(3600);

/// Lists (and with `delete`, removes) the garbage of `spec`'s experiment.
///
/// # Errors
/// Store errors; [`Error::Format`] for a damaged manifest.
pub async fn gc(spec: &JobSpec, delete: bool) -> Result<GcReport> {
    let store = spec.open_store()?;
    let plan = Plan::new(spec, Path::new("spec.toml"))?;
    let exp = &spec.experiment;
    let mut objects = store.list(&format!("{}/", keys::run(exp))).await?;
    let lease_root = format!("{}/", keys::lease_dir(&keys::run(exp)));
    objects.extend(store.list(&lease_root).await?);
    let sizes: BTreeMap<&str, u64> = objects.iter().map(|o| (o.key.as_str(), o.size)).collect();
    let mut items: BTreeMap<String, GcItem> = BTreeMap::new();
    let mut add = |key: &str, reason: GcReason| {
        if let Some(&size) = sizes.get(key) {
            items.entry(key.to_string()).or_insert(GcItem { key: key.to_string(), size, reason });
        }
    };

    // The jobs of the current spec: committed (protected), stale, or not yet.
    let mut protected: HashSet<String> = HashSet::new();
    let mut committed_manifests: HashSet<&str> = HashSet::new();
    for job in &plan.jobs {
        match job.committed(&store).await {
            Ok(true) => {
                committed_manifests.insert(job.manifest.as_str());
                protected.insert(job.manifest.clone());
                if let Some(m) = Manifest::load(&store, &job.manifest).await? {
                    protected.extend(m.outputs.into_iter().map(|o| o.key));
                }
                if job.kind == JobKind::Train {
                    let (Some(model), Some(fold)) = (job.model.as_deref(), job.fold) else { continue };
                    let m = spec.stage_model(job.stage.as_deref(), model)?;
                    if let Some(keep) = m.train.checkpoints.after_commit(m.epochs()) {
                        let scope = keys::Scope { experiment: exp, stage: job.stage.as_deref() };
                        for key in checkpoint_keys(&objects, &keys::checkpoints(scope, model, Fold(fold))) {
                            // An in-epoch checkpoint is never needed once the job is committed.
                            let in_epoch = key.ends_with(keys::IN_EPOCH_CHECKPOINT);
                            if in_epoch || super::status::checkpoint_epoch(key).is_some_and(|e| !keep.contains(&e)) {
                                add(key, GcReason::SupersededCheckpoint);
                            }
                        }
                    }
                }
            }
            Ok(false) => {}
            Err(Error::SpecChanged { .. } | Error::Stale { .. }) => {
                add(&job.manifest, GcReason::StaleSpec);
                if let Some(m) = Manifest::load(&store, &job.manifest).await? {
                    for o in &m.outputs {
                        add(&o.key, GcReason::StaleSpec);
                    }
                }
                if job.kind == JobKind::Train {
                    let (Some(model), Some(fold)) = (job.model.as_deref(), job.fold) else { continue };
                    let scope = keys::Scope { experiment: exp, stage: job.stage.as_deref() };
                    for key in checkpoint_keys(&objects, &keys::checkpoints(scope, model, Fold(fold))) {
                        add(key, GcReason::StaleSpec);
                    }
                }
            }
            // Outputs missing: the job reruns; nothing here is garbage.
            Err(Error::Format { .. }) => {}
            Err(e) => return Err(e),
        }
    }

    // Prefixes of models, folds and stages the spec no longer has.
    let mut fold_dirs: HashSet<String> = HashSet::new();
    let mut model_dirs: HashSet<String> = HashSet::new();
    let mut stage_dirs: HashSet<String> = HashSet::new();
    for st in spec.stages() {
        let scope = keys::Scope { experiment: exp, stage: st.key() };
        if let Some(name) = st.key() {
            stage_dirs.insert(format!("{}/stages/{name}/", keys::run(exp)));
        }
        for m in st.models {
            model_dirs.insert(format!("runs/{scope}/models/{}/", m.name));
            for k in m.fold_list(spec.folds.k) {
                fold_dirs.insert(format!("{}/", keys::fold_dir(scope, &m.name, Fold(k))));
            }
        }
        // The level-2 model's folds live under a model name of their own;
        // kept whatever the spec says of level 2 (a conservative choice).
        model_dirs.insert(format!("runs/{scope}/models/{}/", crate::level2::MEMBER));
        for k in 0..spec.folds.k {
            fold_dirs.insert(format!("{}/", keys::fold_dir(scope, crate::level2::MEMBER, Fold(k))));
        }
    }
    let stages_root = format!("{}/stages/", keys::run(exp));
    for o in &objects {
        let key = o.key.as_str();
        if key.contains(".stale-") {
            add(key, GcReason::SetAside);
            continue;
        }
        if key.starts_with(&stages_root) && !stage_dirs.iter().any(|d| key.starts_with(d.as_str())) {
            add(key, GcReason::NotInSpec);
            continue;
        }
        // `runs/{exp}/[stages/{s}/]models/{m}/[fold={k}/]...`
        let run_prefix = format!("{}/", keys::run(exp));
        let Some(rest) = key.strip_prefix(&run_prefix) else { continue };
        let (scope_prefix, rest) = match rest.strip_prefix("stages/").and_then(|r| r.split_once('/')) {
            Some((stage, r)) => (format!("{run_prefix}stages/{stage}/"), r),
            None => (run_prefix.clone(), rest),
        };
        let Some((model, rest)) = rest.strip_prefix("models/").and_then(|r| r.split_once('/')) else { continue };
        let model_dir = format!("{scope_prefix}models/{model}/");
        let in_spec = model_dirs.contains(&model_dir)
            && (!rest.starts_with("fold=") || rest.split_once('/').is_some_and(|(f, _)| fold_dirs.contains(&format!("{model_dir}{f}/"))));
        if !in_spec {
            add(key, GcReason::NotInSpec);
        }
    }

    // Leases: of committed jobs, or with a gone holder.
    let policy = store.lease_policy().clone();
    let mut lease_dirs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for o in &objects {
        if !o.key.starts_with(&lease_root) {
            continue;
        }
        // `leases/{manifest}/{generation}.json`
        let Some((_, manifest)) = o.key.rsplit_once('/').and_then(|(dir, _)| dir.split_once('/')) else { continue };
        lease_dirs.entry(manifest).or_default().push(o.key.as_str());
    }
    for (manifest, gens) in &lease_dirs {
        let done = committed_manifests.contains(manifest) || store.exists(manifest).await?;
        let newest = gens.iter().max().copied();
        let dead = match newest {
            Some(key) => match lease::read(&store, key).await {
                Ok(Some(rec)) => lease::dead_now(&rec, &policy),
                Ok(None) => false,
                // A damaged record: nobody can hold it.
                Err(Error::Format { .. }) => true,
                Err(e) => return Err(e),
            },
            None => false,
        };
        if done || dead {
            for key in gens {
                add(key, GcReason::DeadLease);
            }
        }
    }

    let mut notes = Vec::new();
    let url = store.url().to_string();
    let mut staging: Vec<(std::path::PathBuf, u64)> = Vec::new();
    if let Some(root) = url.strip_prefix("file://") {
        staging = staging_files(&Path::new(root).join(keys::run(exp)), STAGING_MIN_AGE);
    } else if url.starts_with("s3://") {
        notes.push(
            "incomplete multipart uploads are not listed: object_store 0.14 has no call for S3's ListMultipartUploads; \
             an S3 lifecycle rule (AbortIncompleteMultipartUpload) removes them"
                .into(),
        );
    }

    // Never a committed output of the current spec, whatever matched above.
    let mut items: Vec<GcItem> = items.into_values().filter(|i| !protected.contains(&i.key)).collect();
    let root = url.strip_prefix("file://").map(std::path::PathBuf::from);
    for (path, size) in &staging {
        let rel = root.as_ref().and_then(|r| path.strip_prefix(r).ok()).map(|p| p.display().to_string()).unwrap_or_else(|| path.display().to_string());
        items.push(GcItem { key: rel, size: *size, reason: GcReason::StagingFile });
    }
    if delete {
        for i in &items {
            if i.reason == GcReason::StagingFile {
                if let Some(r) = &root {
                    let p = r.join(&i.key);
                    std::fs::remove_file(&p).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }).map_err(|source| Error::Io { path: p, source })?;
                }
                continue;
            }
            store.delete(&i.key).await?;
        }
    }
    let bytes = items.iter().map(|i| i.size).sum();
    Ok(GcReport { experiment: exp.clone(), root: url, scanned: objects.len(), bytes, items, deleted: delete, notes })
}

/// The keys of `objects` under a `checkpoints` prefix (`prefix/...`).
fn checkpoint_keys<'a>(objects: &'a [crate::storage::ObjectInfo], prefix: &str) -> impl Iterator<Item = &'a str> {
    let prefix = format!("{prefix}/");
    objects.iter().map(|o| o.key.as_str()).filter(move |k| k.starts_with(&prefix))
}

/// Files under `dir` whose name holds `#` (object_store's staging files for
/// a local store) and that were last written more than `min_age` ago.
fn staging_files(dir: &Path, min_age: Duration) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n.to_string_lossy().contains('#')) {
                let old = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age >= min_age);
                if old {
                    out.push((p, meta.len()));
                }
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::manifest::{JobId, OutputEntry};
    use crate::storage::Store;

    fn spec(root: &Path, models: &[&str]) -> JobSpec {
        let mut text = format!("experiment = \"e\"\n[storage]\nroot = \"{}\"\n[folds]\nk = 2\n", root.display());
        for m in models {
            text.push_str(&format!(
                "[[models]]\nname = \"{m}\"\narch = \"resnet18\"\nsize = 32\ntrain = {{ batch_size = 4, phases = [{{ epochs = 3, optimizer = {{ kind = \"sgd\", lr = 0.1 }} }}] }}\n"
            ));
        }
        JobSpec::parse("s.toml", &text).unwrap()
    }

    /// Commits every train job of `spec` with a weights file and 3 epoch
    /// checkpoints.
    async fn train_all(store: &Store, spec: &JobSpec) {
        let plan = Plan::new(spec, Path::new("spec.toml")).unwrap();
        for job in plan.jobs.iter().filter(|j| j.kind == JobKind::Train) {
            let (model, fold) = (job.model.as_deref().unwrap(), Fold(job.fold.unwrap()));
            for e in 1..=3 {
                store.put(&keys::checkpoint("e", model, fold, e), "ck").await.unwrap();
            }
            let w = keys::weights("e", model, fold);
            store.put(&w, "w").await.unwrap();
            let id = JobId { kind: "train".into(), experiment: "e".into(), model: Some(model.into()), fold: Some(fold.0) };
            Manifest::new(id, job.spec_hash.clone(), vec![OutputEntry::of_bytes(&w, b"w")]).commit(store, &job.manifest).await.unwrap();
        }
    }

    #[tokio::test]
    async fn gc_lists_stale_prefixes_old_checkpoints_and_dead_leases_but_never_a_committed_output() {
        let dir = tempfile::tempdir().unwrap();
        let old = spec(dir.path(), &["a", "b"]);
        let store = old.open_store().unwrap();
        train_all(&store, &old).await;
        // The spec drops model b; a's fold 0 got a leftover lease of a dead holder.
        let now = spec(dir.path(), &["a"]);
        let lease_key = keys::lease(&keys::trained("e", "a", Fold(0)), 0);
        store.put(&lease_key, "{}").await.unwrap();
        // And an in-epoch checkpoint a stop left behind.
        store.put(&keys::checkpoint_in_epoch("e", "a", Fold(0)), "ck").await.unwrap();
        let dry = gc(&now, false).await.unwrap();
        let reasons: BTreeMap<&str, GcReason> = dry.items.iter().map(|i| (i.key.as_str(), i.reason)).collect();
        assert_eq!(reasons.get(keys::weights("e", "b", Fold(1)).as_str()), Some(&GcReason::NotInSpec), "{}", dry.render());
        assert_eq!(reasons.get(keys::checkpoint("e", "a", Fold(0), 1).as_str()), Some(&GcReason::SupersededCheckpoint));
        assert_eq!(reasons.get(keys::checkpoint("e", "a", Fold(0), 2).as_str()), Some(&GcReason::SupersededCheckpoint));
        assert!(!reasons.contains_key(keys::checkpoint("e", "a", Fold(0), 3).as_str()), "after_commit = last keeps the last");
        assert_eq!(reasons.get(keys::checkpoint_in_epoch("e", "a", Fold(0)).as_str()), Some(&GcReason::SupersededCheckpoint));
        assert_eq!(reasons.get(lease_key.as_str()), Some(&GcReason::DeadLease));
        for k in [keys::weights("e", "a", Fold(0)), keys::trained("e", "a", Fold(1))] {
            assert!(!reasons.contains_key(k.as_str()), "{k} is a committed output");
        }
        assert!(store.exists(&keys::weights("e", "b", Fold(1))).await.unwrap(), "a dry run deletes nothing");
        let done = gc(&now, true).await.unwrap();
        assert_eq!(done.items.len(), dry.items.len());
        assert!(!store.exists(&keys::weights("e", "b", Fold(1))).await.unwrap());
        assert!(store.exists(&keys::weights("e", "a", Fold(1))).await.unwrap());
        let plan = Plan::new(&now, Path::new("spec.toml")).unwrap();
        for job in plan.jobs.iter().filter(|j| j.kind == JobKind::Train) {
            assert!(job.committed(&store).await.unwrap(), "{} stays committed", job.id);
        }
        assert!(gc(&now, false).await.unwrap().items.is_empty(), "nothing left to collect");
    }

    #[tokio::test]
    async fn a_job_committed_by_an_edited_spec_is_stale_and_a_live_lease_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let old = spec(dir.path(), &["a"]);
        let store = old.open_store().unwrap();
        train_all(&store, &old).await;
        let text = old.to_toml().replace("lr = 0.1", "lr = 0.2");
        let edited = JobSpec::parse("s.toml", &text).unwrap();
        // A live lease (this process) on a pending job is never collected.
        let live = keys::lease(&keys::success("e", "a", Fold(0)), 0);
        let rec = serde_json::json!({
            "job": "predict e", "generation": 0, "owner": lease::Owner::this(), "token": "t",
            "acquired_at": "2099-01-01T00:00:00Z", "renewed_at": "2099-01-01T00:00:00Z", "expires_at": "2099-01-01T00:00:00Z", "beats": 0
        });
        store.put(&live, serde_json::to_vec(&rec).unwrap()).await.unwrap();
        let r = gc(&edited, false).await.unwrap();
        let stale: Vec<&str> = r.items.iter().filter(|i| i.reason == GcReason::StaleSpec).map(|i| i.key.as_str()).collect();
        assert!(stale.contains(&keys::trained("e", "a", Fold(0)).as_str()) && stale.contains(&keys::weights("e", "a", Fold(0)).as_str()), "{}", r.render());
        assert!(stale.contains(&keys::checkpoint("e", "a", Fold(1), 3).as_str()));
        assert!(!r.items.iter().any(|i| i.key == live), "{}", r.render());
    }
}
