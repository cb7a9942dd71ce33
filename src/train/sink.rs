//! Train stage: the output side of the training loop. The loop computes an
//! epoch and sends its record (checkpoint bytes and history so far) here;
//! an async task writes the checkpoint, the history and prunes old
//! checkpoints by the job's [`CheckpointPolicy`], while the loop goes on with
//! the next epoch. At most one record waits, so storage never falls more
//! than an epoch behind and memory stays bounded.
//!
//! Checkpoints written inside an epoch go the same way: each overwrites
//! `checkpoints/in-epoch.safetensors`, which the epoch's own checkpoint
//! then makes obsolete and deletes.
//!
//! Writes `checkpoints/epoch={e}.safetensors`,
//! `checkpoints/in-epoch.safetensors`, `history.parquet` and
//! `tensorboard/events.out.tfevents.*` under the fold job's prefix.

use super::checkpoint;
use super::config::CheckpointPolicy;
use crate::error::{Error, Result};
use crate::fold_job::FoldJob;
use crate::storage::keys;
use crate::storage::parquet::{write_history, EpochRecord};
use crate::storage::{OutputEntry, Store};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// What the loop hands over after an epoch.
pub struct EpochDone {
    /// Epochs done (1-based number of the epoch just finished).
    pub epoch: u32,
    /// The epoch's checkpoint ([`checkpoint::encode`]).
    pub checkpoint: Vec<u8>,
    /// Every epoch's record so far.
    pub history: Vec<EpochRecord>,
    /// Best epoch so far (its checkpoint is kept by the default policy).
    pub best_epoch: u32,
}

/// What the loop hands over.
enum Record {
    Epoch(EpochDone),
    /// A checkpoint written inside an epoch ([`checkpoint::encode`]).
    InEpoch(Vec<u8>),
}

/// The sending half, for the blocking loop.
#[derive(Clone)]
pub struct SinkSender(mpsc::Sender<Record>);

impl SinkSender {
    /// Hands an epoch over, waiting while the previous record is still
    /// being written.
    ///
    /// # Errors
    /// [`Error::Train`] when the writer stopped (its own error is what the
    /// job reports).
    pub fn send(&self, done: EpochDone, job: &str) -> Result<()> {
        self.send_record(Record::Epoch(done), job)
    }

    /// Hands a checkpoint written inside an epoch over, as [`Self::send`].
    ///
    /// # Errors
    /// As [`Self::send`].
    pub fn send_in_epoch(&self, checkpoint: Vec<u8>, job: &str) -> Result<()> {
        self.send_record(Record::InEpoch(checkpoint), job)
    }

    fn send_record(&self, record: Record, job: &str) -> Result<()> {
        self.0.blocking_send(record).map_err(|_| Error::Train { job: job.to_string(), message: "the checkpoint writer stopped".into() })
    }
}

/// The writer task of one train job.
pub struct Sink {
    tx: SinkSender,
    task: JoinHandle<Result<Option<OutputEntry>>>,
}

impl Sink {
    /// Starts the writer for `job` on the current runtime.
    pub fn start(store: Store, job: FoldJob, policy: CheckpointPolicy) -> Sink {
        let (tx, mut rx) = mpsc::channel::<Record>(1);
        let span = tracing::Span::current();
        // The job's lease (when it runs under one): checked before each
        // write, so a runner that lost the job never prunes the new
        // holder's checkpoints.
        let lease = crate::storage::Lease::current();
        let task = tokio::spawn(
            async move {
                let mut history_entry = None;
                while let Some(record) = rx.recv().await {
                    if let Some(lease) = &lease {
                        lease.ensure_held().await?;
                    }
                    match record {
                        Record::Epoch(done) => history_entry = Some(write_epoch(&store, &job, policy, done).await?),
                        Record::InEpoch(bytes) => {
                            crate::fault::point("checkpoint.write");
                            store.put(&keys::checkpoint_in_epoch(job.scope(), &job.model, job.fold), bytes).await?;
                        }
                    }
                }
                Ok(history_entry)
            }
            .instrument(span),
        );
        Sink { tx: SinkSender(tx), task }
    }

    /// A sender for the loop.
    pub fn sender(&self) -> SinkSender {
        self.tx.clone()
    }

    /// Waits until every record sent is written; the entry of the last
    /// history write, if any.
    ///
    /// # Errors
    /// The first storage error the writer met.
    pub async fn finish(self) -> Result<Option<OutputEntry>> {
        drop(self.tx);
        self.task.await?
    }
}

/// Checkpoint, history, then pruning: a checkpoint is complete before any
/// older one is deleted.
async fn write_epoch(store: &Store, job: &FoldJob, policy: CheckpointPolicy, done: EpochDone) -> Result<OutputEntry> {
    let (scope, model, fold) = (job.scope(), &job.model, job.fold);
    crate::fault::point("checkpoint.write");
    store.put(&keys::checkpoint(scope, model, fold, done.epoch), done.checkpoint).await?;
    let entry = write_history(store, &keys::history(scope, model, fold), &done.history, &job.experiment, model, fold, &job.spec_hash).await?;
    // The same records for TensorBoard (a whole small file, rewritten).
    store.put(&keys::tensorboard_events(scope, model, fold), crate::storage::tensorboard::events_from_history(&done.history)).await?;
    // The epoch's checkpoint makes the in-epoch one obsolete: pruning
    // deletes it, or, when every epoch is kept, this.
    match policy.while_training(done.epoch, done.best_epoch) {
        Some(keep) => prune(store, job, &keep).await?,
        None => store.delete(&keys::checkpoint_in_epoch(scope, model, fold)).await?,
    }
    Ok(entry)
}

/// Deletes every checkpoint of `job` but those of the epochs in `keep`
/// (an in-epoch checkpoint is never kept).
///
/// # Errors
/// Storage errors.
pub async fn prune(store: &Store, job: &FoldJob, keep: &[u32]) -> Result<()> {
    let (scope, model, fold) = (job.scope(), &job.model, job.fold);
    store.delete(&keys::checkpoint_in_epoch(scope, model, fold)).await?;
    checkpoint::prune(store, &keys::checkpoints(scope, model, fold), |e| keys::checkpoint(scope, model, fold, e), keep).await
}
