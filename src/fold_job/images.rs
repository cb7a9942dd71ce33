//! Where a fold job reads its images when the spec says
//! `[image] source = "shards"`: the experiment's committed shard sets
//! (`imet shard`), opened and checked against the store's CSVs before any
//! work. Training reads its epoch sequentially in the shard order (the
//! fold's training ids as the filter, the job's seed, the epoch number);
//! validation and prediction read their images by id. Reads
//! `runs/{exp}/shards/{split}/_SUCCESS.json` and the sets' indexes.
//!
//! The sequential path reads every kept image once per epoch, so training
//! that draws with replacement (`sampling = "log_class_weights"`) or
//! revisits hard examples (`hard_negative_mining`) keeps its sampler's
//! order and reads each batch by id from the shards; training on images
//! outside the training set (a stage's pseudo-labelled test images) reads
//! its training images one object at a time, saying why in the log. Its
//! validation still reads by id from the shards.
//!
//! `[image] source = "shard_order"` takes only the training order from the
//! shards and reads every image as its own object: the same images in the
//! same order as `"shards"`, so both runs end with identical weights (the
//! check that a shard set holds the objects it was built from).

use crate::error::Result;
use crate::image::loader::Item;
use crate::image::source::Source;
use crate::shards::job::committed_index;
use crate::shards::read::{EpochOptions, ShardSet};
use crate::shards::source::{ById, Sequential, ShardOrder};
use crate::storage::keys::Split;
use crate::storage::{Store, Upstream};
use std::sync::Arc;
use tracing::info;

/// How a fold job reads shard sets (from `[image.shards]`).
#[derive(Clone, Debug, PartialEq)]
pub struct ShardReads {
    /// Images in the training epoch's shuffle buffer.
    pub shuffle_buffer: usize,
    /// Shards read and interleaved at once.
    pub shards_in_flight: usize,
    /// Size of one ranged read.
    pub chunk_bytes: u64,
    /// Take only the training epoch's order from the shards and read every
    /// image as its own object. Training then sees, image for image and in
    /// the same order, what it sees from the shards, so the two runs must
    /// end with identical weights: a check of a shard set against the
    /// objects it was built from. Validation and prediction read objects.
    pub order_only: bool,
}

impl ShardReads {
    /// The upstream shard job of `split` that a fold job reads.
    pub fn upstream(experiment: &str, split: Split) -> Upstream {
        Upstream::required(
            crate::storage::keys::shard_success(experiment, split),
            format!("imet shard --spec <spec> --split {}", crate::storage::keys::split_name(split)),
        )
    }

    /// The epoch options of a training job with seed `seed`.
    pub fn epoch_options(&self, seed: u64) -> EpochOptions {
        EpochOptions { seed, epoch: 0, shuffle_shards: true, shuffle_buffer: self.shuffle_buffer, shards_in_flight: self.shards_in_flight, chunk_bytes: self.chunk_bytes, ..EpochOptions::default() }
    }
}

/// The shard sets a fold job reads, opened.
pub struct FoldImages {
    pub reads: ShardReads,
    train: Option<Arc<ShardSet>>,
    test: Option<Arc<ShardSet>>,
}

impl FoldImages {
    /// Opens the committed sets of `splits` for `experiment`.
    ///
    /// # Errors
    /// [`crate::Error::Usage`] when a shard job is not committed;
    /// [`crate::error::ShardError::OtherData`] for a set built from other
    /// CSVs than the store's; [`crate::error::ShardError::BadIndex`].
    pub async fn open(store: &Store, experiment: &str, reads: &ShardReads, splits: &[Split]) -> Result<FoldImages> {
        let mut out = FoldImages { reads: reads.clone(), train: None, test: None };
        for &split in splits {
            let key = committed_index(store, experiment, split).await?;
            let set = Arc::new(ShardSet::open(store, &key).await?);
            match split {
                Split::Train => out.train = Some(set),
                Split::Test => out.test = Some(set),
            }
        }
        Ok(out)
    }

    fn set(&self, split: Split) -> Option<&Arc<ShardSet>> {
        match split {
            Split::Train => self.train.as_ref(),
            Split::Test => self.test.as_ref(),
        }
    }

    /// The training epoch's order over `items` and, unless
    /// [`ShardReads::order_only`], the sequential source that reads it.
    /// `None` (with the reason logged) when the items are not all in the
    /// training set.
    ///
    /// # Errors
    /// [`crate::Error::Usage`] for an image listed twice.
    pub fn training(&self, items: &[Item], seed: u64) -> Result<Option<(Arc<ShardOrder>, Option<Arc<dyn Source>>)>> {
        let Some(set) = self.set(Split::Train) else { return Ok(None) };
        let outside = items.iter().filter(|i| !set.contains(&i.id)).count();
        if outside > 0 {
            info!(
                images = outside,
                index = %set.index().key(),
                "reading the training images as objects: {outside} of them are not in the training shard set (a stage's pseudo-labelled test images); the sequential shard epoch reads only the set's images"
            );
            return Ok(None);
        }
        let order = Arc::new(ShardOrder::new(set.clone(), items, self.reads.epoch_options(seed))?);
        let source: Option<Arc<dyn Source>> = (!self.reads.order_only).then(|| Arc::new(Sequential::new(set.clone(), order.clone())) as Arc<dyn Source>);
        Ok(Some((order, source)))
    }

    /// Whether every one of `items` is in the set of `split`.
    pub fn contains_all(&self, split: Split, items: &[Item]) -> bool {
        self.set(split).is_some_and(|set| items.iter().all(|i| set.contains(&i.id)))
    }

    /// By-id reads of `items` of `split` (validation, prediction); `None`
    /// when only the order comes from the shards.
    ///
    /// # Errors
    /// [`crate::error::ShardError::MissingId`] naming an image the set
    /// lacks; [`crate::Error::Usage`] when the split's set was not opened.
    pub fn by_id(&self, split: Split, items: &[Item]) -> Result<Option<Arc<dyn Source>>> {
        if self.reads.order_only {
            return Ok(None);
        }
        let set = self.set(split).ok_or_else(|| {
            crate::Error::Usage(format!("the {} shard set was not opened for this job", crate::storage::keys::split_name(split)))
        })?;
        Ok(Some(Arc::new(ById::new(set.clone(), items)?)))
    }
}
