//! Shard sets as the loader's byte sources and epoch order.
//!
//! A training epoch read from shards visits the images in the order
//! [`super::plan_epoch`] gives (shard permutation, round-robin over the
//! shards in flight, shuffle buffer), which is a pure function of the
//! index, the filter (the fold's training ids), `(seed, epoch)` and the
//! reader settings. [`ShardOrder`] is that order as a loader sampler (item
//! indices), and [`Sequential`] reads the bytes in that order with an
//! [`super::EpochReader`], checking that every image it yields is the one
//! the loader expects. [`ById`] reads the images of each batch by id with
//! ranged reads ([`ShardSet::fetch_many`]): validation and prediction, whose
//! order is the items' own.
//!
//! A resumed job restarts an epoch at the image after the last one its
//! checkpoint trained on ([`crate::image::Source::open`]'s `start`; the
//! sequential reader skips the shards and ranges before it unread), so what
//! must hold, and does, is that an epoch's order depends only on
//! `(seed, epoch)` and the set, never on what was read before or on timing.

use super::read::{plan_epoch, EpochOptions, EpochReader, ShardSet};
use super::ShardError;
use crate::error::{Error, Result};
use crate::ids::ImageId;
use crate::image::loader::{Item, Sampler};
use crate::image::source::{EpochReads, Source};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tracing::error;

/// The order of a shard epoch over `items`, as item indices. `opts.epoch`
/// is replaced by the epoch asked for.
pub struct ShardOrder {
    set: Arc<ShardSet>,
    filter: HashSet<ImageId>,
    position: HashMap<ImageId, usize>,
    opts: EpochOptions,
}

impl ShardOrder {
    /// The order over `items`, each of which must be in `set` once.
    ///
    /// # Errors
    /// [`ShardError::MissingId`] naming the first item (in sort order) the
    /// set lacks; [`Error::Usage`] for an image listed twice in `items`.
    pub fn new(set: Arc<ShardSet>, items: &[Item], opts: EpochOptions) -> Result<ShardOrder> {
        let mut position = HashMap::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if position.insert(item.id.clone(), i).is_some() {
                return Err(Error::Usage(format!("image `{}` is listed twice: a shard epoch reads each image once", item.id)));
            }
        }
        let filter: HashSet<ImageId> = position.keys().cloned().collect();
        let order = ShardOrder { set, filter, position, opts };
        order.plan(0)?;
        Ok(order)
    }

    /// The epoch's order as item indices.
    ///
    /// # Errors
    /// [`ShardError::MissingId`] (checked once by [`ShardOrder::new`]).
    pub fn plan(&self, epoch: u64) -> Result<Vec<usize>> {
        let index = self.set.index();
        let opts = EpochOptions { epoch, ..self.opts.clone() };
        let plan = plan_epoch(index, Some(&self.filter), &opts)?;
        Ok(plan.order.iter().map(|&(s, j)| self.position[&index.shards[s as usize].ids[j as usize]]).collect())
    }

    /// The reader options (seed, buffer, shards in flight, reads).
    pub fn options(&self) -> &EpochOptions {
        &self.opts
    }
}

impl Sampler for ShardOrder {
    fn order(&self, epoch: u64, _n: usize) -> Vec<usize> {
        match self.plan(epoch) {
            Ok(order) => order,
            // Unreachable after `new` checked the filter; the sequential
            // source raises the same error for the epoch.
            Err(e) => {
                error!(error = %e, "shard epoch order");
                Vec::new()
            }
        }
    }
}

/// Reads a training epoch sequentially from a shard set, in the order of
/// [`ShardOrder`] (the loader's sampler must be that order, possibly cut
/// short: any other order is refused at the first image that differs).
pub struct Sequential {
    set: Arc<ShardSet>,
    order: Arc<ShardOrder>,
}

impl Sequential {
    pub fn new(set: Arc<ShardSet>, order: Arc<ShardOrder>) -> Sequential {
        Sequential { set, order }
    }
}

impl Source for Sequential {
    fn open(&self, epoch: u64, items: Arc<Vec<Item>>, _order: &[usize], start: usize) -> Result<Box<dyn EpochReads>> {
        let opts = EpochOptions { epoch, ..self.order.opts.clone() };
        let reader = self.set.epoch(Some(&self.order.filter), &opts, start as u64)?;
        Ok(Box::new(SequentialReads { reader, items, index: self.set.index().key() }))
    }

    fn describe(&self) -> String {
        let o = &self.order.opts;
        format!(
            "shards {} (sequential: {} in flight, shuffle buffer {}, {} MiB reads)",
            self.set.index().key(),
            o.shards_in_flight,
            o.shuffle_buffer,
            o.chunk_bytes >> 20
        )
    }
}

struct SequentialReads {
    reader: EpochReader,
    items: Arc<Vec<Item>>,
    index: String,
}

impl EpochReads for SequentialReads {
    fn read<'a>(&'a mut self, chunk: &'a [usize]) -> BoxFuture<'a, Result<Vec<Result<Bytes>>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let want = &self.items[i].id;
                let sample = match self.reader.next().await {
                    Some(s) => s?,
                    None => return Err(Error::Usage(format!("shard epoch of `{}` ended before image `{want}`", self.index))),
                };
                if sample.id != *want {
                    return Err(Error::Usage(format!(
                        "shard epoch of `{}` yields image `{}` at position {} where the loader expects `{want}`: the loader's order is not the shard epoch's",
                        self.index, sample.id, sample.position
                    )));
                }
                out.push(Ok(sample.bytes));
            }
            Ok(out)
        })
    }
}

/// Reads each batch's images by id from a shard set (one `get_ranges` per
/// shard per batch).
pub struct ById {
    set: Arc<ShardSet>,
}

impl ById {
    /// By-id reads of `set`; `items` must all be in it.
    ///
    /// # Errors
    /// [`ShardError::MissingId`] naming the first missing item (in sort
    /// order).
    pub fn new(set: Arc<ShardSet>, items: &[Item]) -> Result<ById> {
        let mut missing: Vec<&ImageId> = items.iter().map(|i| &i.id).filter(|id| !set.contains(id)).collect();
        if !missing.is_empty() {
            missing.sort();
            return Err(ShardError::MissingId { index: set.index().key(), id: missing[0].to_string(), missing: missing.len() }.into());
        }
        Ok(ById { set })
    }
}

impl Source for ById {
    fn open(&self, _epoch: u64, items: Arc<Vec<Item>>, _order: &[usize], _start: usize) -> Result<Box<dyn EpochReads>> {
        Ok(Box::new(ByIdReads { set: self.set.clone(), items }))
    }

    fn describe(&self) -> String {
        format!("shards {} (by id)", self.set.index().key())
    }
}

struct ByIdReads {
    set: Arc<ShardSet>,
    items: Arc<Vec<Item>>,
}

impl EpochReads for ByIdReads {
    fn read<'a>(&'a mut self, chunk: &'a [usize]) -> BoxFuture<'a, Result<Vec<Result<Bytes>>>> {
        Box::pin(async move {
            let ids: Vec<ImageId> = chunk.iter().map(|&i| self.items[i].id.clone()).collect();
            Ok(self.set.fetch_many(&ids).await?.into_iter().map(Ok).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::augment::{Side, Transform};
    use crate::image::loader::{Loader, LoaderOptions, Shuffle};
    use crate::image::Pipeline;
    use crate::shards::write::{build, BuildOptions};
    use crate::storage::keys::{self, Split};
    use crate::storage::Store;

    /// `n` small PNGs under data/train, a set of them in shards of 1-3 images, and
    /// their items.
    async fn fixture(n: usize) -> (Store, Arc<ShardSet>, Vec<Item>) {
        let store = Store::memory();
        store.put(keys::TRAIN, "id,attribute_ids\n").await.unwrap();
        store.put(keys::SAMPLE_SUBMISSION, "id,attribute_ids\n").await.unwrap();
        let mut items = Vec::new();
        for i in 0..n {
            let id = ImageId::new(&format!("{:012x}", i + 1)).unwrap();
            let img = ::image::RgbImage::from_fn(20 + i as u32, 18, |x, y| ::image::Rgb([(x * 9) as u8, (y * 5) as u8, (i * 17) as u8]));
            let mut png = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut png), ::image::ImageFormat::Png).unwrap();
            let key = keys::image(Split::Train, &id);
            store.put(&key, png).await.unwrap();
            items.push(Item::new(key, id, vec![crate::ids::AttributeId((i % 3) as u16)]));
        }
        let ids: Vec<ImageId> = items.iter().map(|i| i.id.clone()).collect();
        let index = build(&store, Split::Train, &ids, &BuildOptions { shard_bytes: 3 * 1024, fetch_concurrency: 4, ..Default::default() }).await.unwrap();
        assert!(index.shards.len() >= 4);
        (store.clone(), Arc::new(ShardSet::new(store, index)), items)
    }

    fn opts() -> LoaderOptions {
        LoaderOptions { batch_size: 4, workers: 2, classes: 3, seed: 11, ..Default::default() }
    }

    fn pipeline() -> Pipeline {
        Pipeline(vec![Transform::RandomResizedCrop(crate::image::augment::RandomResizedCrop { size: 12, scale: (0.5, 1.0), ratio: (0.75, 1.33) }), Transform::Resize(Side { size: 12 })])
    }

    fn collect(loader: Loader, epoch: u64) -> Vec<crate::image::Batch> {
        loader.epoch(epoch).collect::<Result<Vec<_>>>().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sequential_shard_epoch_gives_the_batches_objects_give_in_the_same_order() {
        let (store, set, items) = fixture(23).await;
        // A fold's training images: every image but a few.
        let train: Vec<Item> = items.iter().filter(|i| !i.id.as_str().ends_with('5')).cloned().collect();
        let eopts = EpochOptions { seed: 3, shuffle_buffer: 5, shards_in_flight: 2, chunk_bytes: 5000, ..EpochOptions::default() };
        let order = Arc::new(ShardOrder::new(set.clone(), &train, eopts).unwrap());
        let from_shards = Loader::new(store.clone(), train.clone(), pipeline(), opts(), order.clone()).unwrap().with_source(Arc::new(Sequential::new(set.clone(), order.clone())));
        let from_objects = Loader::new(store.clone(), train.clone(), pipeline(), opts(), order.clone()).unwrap();
        let (a, b) = tokio::task::spawn_blocking(move || (collect(from_shards, 1), collect(from_objects, 1))).await.unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.ids, y.ids);
            assert!(x.images.equal(&y.images), "same bytes, same seeds, same pixels");
            assert!(x.targets.equal(&y.targets));
        }
        let mut seen: Vec<usize> = a.iter().flat_map(|b| b.indices.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..train.len()).collect::<Vec<_>>(), "every training image once");
        // The order is the plan's, differs per epoch, and is the same again.
        assert_eq!(a.iter().flat_map(|b| b.indices.clone()).collect::<Vec<_>>(), order.plan(1).unwrap());
        assert_ne!(order.plan(1).unwrap(), order.plan(2).unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_order_an_image_missing_or_a_broken_shard_are_errors_naming_them() {
        let (store, set, items) = fixture(12).await;
        let order = Arc::new(ShardOrder::new(set.clone(), &items, EpochOptions { seed: 1, ..EpochOptions::default() }).unwrap());
        // A loader whose sampler is not the shard order is refused.
        let wrong = Loader::new(store.clone(), items.clone(), pipeline(), opts(), Arc::new(Shuffle { seed: 99 })).unwrap().with_source(Arc::new(Sequential::new(set.clone(), order.clone())));
        let err = tokio::task::spawn_blocking(move || wrong.epoch(0).find_map(|b| b.err()).unwrap()).await.unwrap().to_string();
        assert!(err.contains("not the shard epoch's"), "{err}");
        // An item the set lacks.
        let mut more = items.clone();
        let ghost = ImageId::new("0000000fffff").unwrap();
        more.push(Item::new(keys::image(Split::Train, &ghost), ghost, vec![]));
        let err = ShardOrder::new(set.clone(), &more, EpochOptions::default()).err().unwrap().to_string();
        assert!(err.contains("0000000fffff") && err.contains("index.json"), "{err}");
        let err = ById::new(set.clone(), &more).err().unwrap().to_string();
        assert!(err.contains("0000000fffff"), "{err}");
        // A shard cut short: the epoch fails naming the shard and an image.
        let victim = &set.index().shards[1];
        let bytes = store.get(&victim.key).await.unwrap();
        store.put(&victim.key, bytes.slice(..bytes.len() / 2)).await.unwrap();
        let broken = Loader::new(store.clone(), items.clone(), pipeline(), opts(), order.clone()).unwrap().with_source(Arc::new(Sequential::new(set.clone(), order)));
        let err = tokio::task::spawn_blocking(move || broken.epoch(0).find_map(|b| b.err()).unwrap()).await.unwrap();
        assert!(matches!(err, Error::Shard(ShardError::Truncated { .. })), "{err}");
        assert!(err.to_string().contains(&victim.key), "{err}");
        let by_id = Loader::new(store, items.clone(), pipeline(), opts(), Arc::new(crate::image::Sequential)).unwrap().with_source(Arc::new(ById::new(set.clone(), &items).unwrap()));
        let err = tokio::task::spawn_blocking(move || by_id.epoch(0).find_map(|b| b.err()).unwrap()).await.unwrap();
        assert!(err.to_string().contains(&victim.key), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn by_id_reads_give_what_objects_give() {
        let (store, set, items) = fixture(10).await;
        let valid: Vec<Item> = items.iter().step_by(3).cloned().collect();
        let a = Loader::new(store.clone(), valid.clone(), pipeline(), opts(), Arc::new(crate::image::Sequential)).unwrap().with_source(Arc::new(ById::new(set, &valid).unwrap()));
        let b = Loader::new(store, valid, pipeline(), opts(), Arc::new(crate::image::Sequential)).unwrap();
        let (a, b) = tokio::task::spawn_blocking(move || (collect(a, 0), collect(b, 0))).await.unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.ids, y.ids);
            assert!(x.images.equal(&y.images));
        }
    }
}
