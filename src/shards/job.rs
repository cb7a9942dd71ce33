//! The shard job (`imet shard --spec S --split train|test`): packs the
//! split's images (`data/train.csv` or `data/sample_submission.csv` order)
//! into a shard set and commits the experiment's manifest
//! `runs/{exp}/shards/{split}/_SUCCESS.json`, whose outputs are the set's
//! `index.json` and every shard. A set already in the store for the same
//! data and options (built by another experiment, or by a run that stopped
//! after writing its index) is reused as it is. Fold jobs find the set
//! through the manifest ([`committed_index`]).

use super::format::{set_hash, ShardIndex, SourceFiles};
use super::write::{build, BuildOptions};
use crate::error::{Error, Result};
use crate::ids::ImageId;
use crate::storage::keys::{self, Split};
use crate::storage::{JobId, JobRef, Manifest, OutputEntry, Ran, Store};
use serde::Serialize;
use tracing::{info, info_span, Instrument};

/// One shard job: which split, how to build, and the hash of the spec
/// parts it depends on.
#[derive(Clone, Debug)]
pub struct ShardJob {
    pub experiment: String,
    pub split: Split,
    pub build: BuildOptions,
    pub spec_hash: String,
}

impl ShardJob {
    /// The job as the store sees it.
    pub fn job_ref(&self) -> JobRef {
        JobRef {
            id: JobId { kind: "shard".into(), experiment: self.experiment.clone(), model: None, fold: None },
            manifest: keys::shard_success(&self.experiment, self.split),
            spec_hash: self.spec_hash.clone(),
            inputs: Vec::new(),
        }
    }

    /// The command that runs this job, for messages.
    pub fn command(&self) -> String {
        format!("imet shard --spec <spec> --split {}", keys::split_name(self.split))
    }
}

/// What a shard job did.
#[derive(Clone, Debug, Serialize)]
pub struct ShardOutcome {
    pub experiment: String,
    pub split: String,
    /// Committed before for this spec: nothing was done.
    pub skipped: bool,
    /// The set was in the store already (same data and options).
    pub reused: bool,
    /// Key of the set's `index.json`.
    pub index: String,
    pub shards: usize,
    pub images: u64,
    /// Bytes of all shards.
    pub bytes: u64,
    pub seconds: f64,
    pub outputs: Vec<OutputEntry>,
}

/// Runs the shard job `job` against `store` (skipped when committed).
///
/// # Errors
/// Input errors (missing or malformed CSVs); [`Error::NotFound`] naming a
/// missing image; storage errors naming the shard; [`Error::BadImage`] when
/// recoding meets an image that does not decode.
pub async fn run(store: &Store, job: &ShardJob) -> Result<ShardOutcome> {
    let span = info_span!("job", kind = "shard", experiment = %job.experiment, split = keys::split_name(job.split));
    run_inner(store, job).instrument(span).await
}

async fn run_inner(store: &Store, job: &ShardJob) -> Result<ShardOutcome> {
    let started = std::time::Instant::now();
    let ran = job.job_ref().run_once(store, || work(store, job)).await?;
    let (skipped, reused, outputs) = match ran {
        Ran::Skipped(m) => (true, false, m.outputs),
        Ran::Done { outcome, manifest, .. } => (false, outcome, manifest.outputs),
    };
    let index = index_of(&job.job_ref().manifest, &outputs)?;
    let shards: Vec<&OutputEntry> = outputs.iter().filter(|o| o.key.ends_with(".tar")).collect();
    let images = ShardIndex::load(store, &index).await?.images;
    Ok(ShardOutcome {
        experiment: job.experiment.clone(),
        split: keys::split_name(job.split).into(),
        skipped,
        reused,
        shards: shards.len(),
        bytes: shards.iter().map(|o| o.size).sum(),
        index,
        images,
        seconds: started.elapsed().as_secs_f64(),
        outputs,
    })
}

/// The ids of `split` in the order the set holds them.
async fn split_ids(store: &Store, split: Split) -> Result<Vec<ImageId>> {
    let inputs = crate::data::load_inputs(store).await?;
    Ok(match split {
        Split::Train => inputs.train.ids,
        Split::Test => inputs.test.ids,
    })
}

/// Builds the set (or finds it built) and returns whether it was reused,
/// with the outputs: the index, then every shard.
async fn work(store: &Store, job: &ShardJob) -> Result<(bool, Vec<OutputEntry>)> {
    let ids = split_ids(store, job.split).await?;
    let source = SourceFiles::of_store(store).await?;
    let set = set_hash(job.split, &source, &ids, job.build.shard_bytes, job.build.recode.recorded());
    let key = keys::shard_index(job.split, &set);
    let (index, reused) = match reusable(store, &key).await? {
        Some(index) => {
            info!(index = %key, shards = index.shards.len(), images = index.images, "the shard set is in the store already; reusing it");
            (index, true)
        }
        None => (build(store, job.split, &ids, &job.build).await?, false),
    };
    let body = serde_json::to_vec(&index)?;
    let mut outputs = vec![OutputEntry::of_bytes(&index.key(), &body)];
    outputs.extend(index.shards.iter().map(|s| OutputEntry { key: s.key.clone(), size: s.size, sha256: s.sha256.clone() }));
    Ok((reused, outputs))
}

/// The index at `key` when it and every shard it lists (by size) are in
/// the store.
async fn reusable(store: &Store, key: &str) -> Result<Option<ShardIndex>> {
    let Some(bytes) = store.get_opt(key).await? else { return Ok(None) };
    let Ok(index) = ShardIndex::parse(key, &bytes) else { return Ok(None) };
    for s in &index.shards {
        if store.size(&s.key).await? != Some(s.size) {
            return Ok(None);
        }
    }
    Ok(Some(index))
}

/// The index key among a shard job's manifest outputs.
fn index_of(manifest: &str, outputs: &[OutputEntry]) -> Result<String> {
    outputs.iter().find(|o| o.key.ends_with("/index.json")).map(|o| o.key.clone()).ok_or_else(|| Error::Format {
        key: manifest.to_string(),
        what: "shard job manifest",
        reason: "it lists no index.json; delete it and rerun `imet shard`".into(),
    })
}

/// The index key of the committed shard job of `split` in `experiment`.
///
/// # Errors
/// [`Error::Usage`] when the shard job is not committed (run `imet shard`
/// first); [`Error::Format`] for a manifest without an index.
pub async fn committed_index(store: &Store, experiment: &str, split: Split) -> Result<String> {
    let key = keys::shard_success(experiment, split);
    let Some(m) = Manifest::load(store, &key).await? else {
        return Err(Error::Usage(format!(
            "`[image] source = \"shards\"` but `{key}` is missing: run `imet shard --spec <spec> --split {}` first (`imet run` runs it)",
            keys::split_name(split)
        )));
    };
    index_of(&key, &m.outputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::write::Recode;

    async fn store_with_sample() -> Store {
        let store = Store::memory();
        crate::data::sample::generate(&store, &crate::data::sample::SampleSection { train: 30, test: 7, classes: 8, seed: 3, noise: 0.0 }).await.unwrap();
        store
    }

    fn job(split: Split) -> ShardJob {
        ShardJob { experiment: "e".into(), split, build: BuildOptions { shard_bytes: 1 << 20, fetch_concurrency: 4, recode: Recode::Original }, spec_hash: "h".into() }
    }

    #[tokio::test]
    async fn a_shard_job_builds_commits_then_skips_and_another_experiment_reuses_the_set() {
        let store = store_with_sample().await;
        let first = run(&store, &job(Split::Train)).await.unwrap();
        assert!(!first.skipped && !first.reused);
        assert_eq!(first.images, 30);
        assert!(first.shards >= 2, "{} shards", first.shards);
        assert_eq!(committed_index(&store, "e", Split::Train).await.unwrap(), first.index);
        let again = run(&store, &job(Split::Train)).await.unwrap();
        assert!(again.skipped);
        assert_eq!(again.index, first.index);
        let other = run(&store, &ShardJob { experiment: "f".into(), ..job(Split::Train) }).await.unwrap();
        assert!(other.reused && !other.skipped);
        assert_eq!(other.outputs, first.outputs);
        let test = run(&store, &job(Split::Test)).await.unwrap();
        assert_eq!(test.images, 7);
        assert!(test.index.starts_with("shards/test/"));
        let err = committed_index(&store, "nope", Split::Train).await.unwrap_err().to_string();
        assert!(err.contains("imet shard --spec <spec> --split train"), "{err}");
    }
}
