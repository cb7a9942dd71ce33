//! The batch loader (image stage): reads image bytes from a [`Source`]
//! (by default one object per image through the store's read-through
//! cache, with bounded concurrency), decodes and augments them on a worker
//! pool, and hands out NCHW batches (normalised f32, or u8 for GPU-side
//! normalisation) with float targets. A fetch thread and a decode thread
//! each run at most `prefetch` batches ahead, so memory stays bounded
//! whatever the dataset size. A loader may render several views of each
//! image ([`Render`], test-time augmentation): each image is read and
//! decoded once and every view is made from the decoded pixels. Reads
//! `data/{train,test}/{id}.png` (or shards, through the source); writes
//! nothing.

use super::augment::{write_chw_u8, Normalize, Pipeline};
use super::decode::{decode, BadImageKind, OnBadImage, DEFAULT_MAX_PIXELS};
use super::source::{Objects, Source};
use crate::ids::{AttributeId, ImageId};
use crate::error::{Error, Result};
use crate::storage::Store;
use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use tch::{Kind, Tensor};
use tracing::warn;

/// One image to load.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// Object key (from `storage::keys::image`).
    pub key: String,
    pub id: ImageId,
    /// Multi-hot truth; empty for test images.
    pub labels: Vec<AttributeId>,
    /// Soft targets (`[classes]`, distillation or soft pseudo-labels) that
    /// replace the multi-hot `labels` as the image's training target.
    pub soft: Option<std::sync::Arc<[f32]>>,
}

impl Item {
    /// An image with hard labels.
    pub fn new(key: String, id: ImageId, labels: Vec<AttributeId>) -> Item {
        Item { key, id, labels, soft: None }
    }
}

/// Element type of the image tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// `(v / 255 - mean) / std`, f32.
    Normalized(Normalize),
    /// Raw u8 (normalise on the GPU with [`normalize_on_device`]).
    U8,
}

/// Loader settings.
#[derive(Clone, Debug)]
pub struct LoaderOptions {
    pub batch_size: usize,
    /// Decode and augment threads.
    pub workers: usize,
    /// Concurrent object reads.
    pub fetch_concurrency: usize,
    /// Batches each stage may run ahead of the consumer.
    pub prefetch: usize,
    pub drop_last: bool,
    /// Width of the target rows (the vocabulary size).
    pub classes: usize,
    pub max_pixels: u64,
    pub on_bad_image: OnBadImage,
    pub output: Output,
    /// Seeds augmentations (with the epoch and the item index).
    pub seed: u64,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            batch_size: 32,
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            fetch_concurrency: 16,
            prefetch: 2,
            drop_last: false,
            classes: 1103,
            max_pixels: DEFAULT_MAX_PIXELS,
            on_bad_image: OnBadImage::Fail,
            output: Output::Normalized(Normalize::default()),
            seed: 0,
        }
    }
}

impl LoaderOptions {
    /// Options from the spec's `[image]` section (`workers = 0`: all cores).
    pub fn from_section(image: &super::ImageSection, batch_size: usize, classes: usize, seed: u64, output: Output) -> LoaderOptions {
        let all = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        LoaderOptions {
            batch_size,
            workers: if image.workers == 0 { all } else { image.workers },
            fetch_concurrency: image.fetch_concurrency,
            prefetch: image.prefetch,
            drop_last: false,
            classes,
            max_pixels: image.max_pixels,
            on_bad_image: image.on_bad_image,
            output,
            seed,
        }
    }
}

/// The order in which an epoch visits items (indices may repeat, as for
/// weighted sampling with replacement).
pub trait Sampler: Send + Sync {
    fn order(&self, epoch: u64, n: usize) -> Vec<usize>;
}

/// Items in their given order (prediction).
pub struct Sequential;

impl Sampler for Sequential {
    fn order(&self, _epoch: u64, n: usize) -> Vec<usize> {
        (0..n).collect()
    }
}

/// A fresh permutation each epoch, seeded by `seed` and the epoch.
pub struct Shuffle {
    pub seed: u64,
}

impl Sampler for Shuffle {
    fn order(&self, epoch: u64, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        v.shuffle(&mut ChaCha8Rng::seed_from_u64(crate::seed::epoch_order(self.seed, epoch)));
        v
    }
}

/// An image the loader skipped (`on_bad_image = "skip"`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Skipped {
    pub key: String,
    pub kind: BadImageKind,
    pub reason: String,
}

/// Writes the list of skipped images (a JSON array of `{key, kind,
/// reason}`, deduplicated by key) at `key` (from
/// `storage::keys::skipped_images`), for the job's manifest.
///
/// # Errors
/// Storage errors naming the key.
pub async fn write_skipped(store: &Store, key: &str, skipped: &[Skipped]) -> Result<crate::storage::OutputEntry> {
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<&Skipped> = skipped.iter().filter(|s| seen.insert(s.key.clone())).collect();
    let body = serde_json::to_vec_pretty(&unique)?;
    let entry = crate::storage::OutputEntry::of_bytes(key, &body);
    store.put(key, body).await?;
    Ok(entry)
}

/// One batch.
#[derive(Debug)]
pub struct Batch {
    /// Positions of the images in the loader's items.
    pub indices: Vec<usize>,
    pub ids: Vec<ImageId>,
    /// # Shapes
    /// `[batch, 3, size, size]`, f32 or u8 (see [`Output`]).
    pub images: Tensor,
    /// # Shapes
    /// `[batch, classes]` f32 multi-hot (soft after MixUp / smoothing).
    pub targets: Tensor,
    /// The further views of a loader with several ([`Loader::with_views`]),
    /// each shaped as `images`; empty otherwise.
    pub views: Vec<Tensor>,
    /// The batch's place in the epoch (0-based, counting batches whose
    /// images were all skipped): [`Loader::epoch_from`] resumes after it.
    pub position: usize,
}

/// Normalises a u8 batch where it lives (e.g. on the GPU).
///
/// # Shapes
/// `[batch, 3, h, w]` u8 -> `[batch, 3, h, w]` f32.
pub fn normalize_on_device(images: &Tensor, n: &Normalize) -> Tensor {
    let dev = images.device();
    let mean = Tensor::from_slice(&n.mean).view([1, 3, 1, 1]).to_device(dev);
    let std = Tensor::from_slice(&n.std).view([1, 3, 1, 1]).to_device(dev);
    (images.to_kind(Kind::Float) / 255.0 - mean) / std
}

/// One view a loader renders of every image: a pipeline and the seed its
/// random choices draw from.
#[derive(Clone, Debug, PartialEq)]
pub struct Render {
    pub pipeline: Pipeline,
    /// `(seed, epoch)` of [`crate::seed::augment`] for this view; `None`:
    /// the loader's seed and the epoch being read (training).
    pub seed: Option<(u64, u64)>,
}

/// Feeds batches of augmented images.
pub struct Loader {
    items: Arc<Vec<Item>>,
    views: Arc<Vec<Render>>,
    source: Arc<dyn Source>,
    size: u32,
    opts: Arc<LoaderOptions>,
    sampler: Arc<dyn Sampler>,
    pool: Arc<rayon::ThreadPool>,
    skipped: Arc<Mutex<Vec<Skipped>>>,
    handle: tokio::runtime::Handle,
}

/// Raw batch as the decode thread builds it (one image buffer per view).
struct RawBatch {
    position: usize,
    indices: Vec<usize>,
    images_f32: Vec<Vec<f32>>,
    images_u8: Vec<Vec<u8>>,
    targets: Vec<f32>,
}

impl Loader {
    /// A loader over `items`; `pipeline` must end in a fixed-size transform.
    /// Call inside a tokio runtime (reads go through it).
    ///
    /// # Errors
    /// [`Error::Usage`] for a pipeline without a fixed output size, zero
    /// batch size or workers, or no runtime; [`Error::Augment`] for an
    /// invalid transform.
    pub fn new(store: Store, items: Vec<Item>, pipeline: Pipeline, opts: LoaderOptions, sampler: Arc<dyn Sampler>) -> Result<Loader> {
        Loader::with_views(store, items, vec![Render { pipeline, seed: None }], opts, sampler)
    }

    /// A loader that renders every view of `views` from each image, read
    /// and decoded once; batches carry one tensor per view
    /// ([`Batch::images`] and [`Batch::views`]).
    ///
    /// # Errors
    /// As [`Loader::new`], and [`Error::Usage`] for no views or views of
    /// different sizes.
    pub fn with_views(store: Store, items: Vec<Item>, views: Vec<Render>, opts: LoaderOptions, sampler: Arc<dyn Sampler>) -> Result<Loader> {
        let mut size = None;
        for v in &views {
            v.pipeline.validate()?;
            let s = v.pipeline.output_size().ok_or_else(|| {
                Error::Usage("the loader's augmentation pipeline must end in a sizing transform (resize, random_resized_crop, crop_if_needed, random_crop, center_crop_resize)".into())
            })?;
            if size.is_some_and(|x| x != s) {
                return Err(Error::Usage(format!("the loader's views make images of different sizes ({} and {s})", size.unwrap_or_default())));
            }
            size = Some(s);
        }
        let size = size.ok_or_else(|| Error::Usage("a loader needs at least one view".into()))?;
        if opts.batch_size == 0 || opts.workers == 0 || opts.prefetch == 0 || opts.fetch_concurrency == 0 {
            return Err(Error::Usage("loader batch_size, workers, prefetch and fetch_concurrency must all be at least 1".into()));
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::Usage("the loader must be created inside a tokio runtime".into()))?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.workers)
            .thread_name(|i| format!("imet-decode-{i}"))
            .build()
            .map_err(|e| Error::Usage(format!("cannot start {} decode threads: {e}", opts.workers)))?;
        let source: Arc<dyn Source> = Arc::new(Objects { store, concurrency: opts.fetch_concurrency });
        Ok(Loader {
            items: Arc::new(items),
            views: Arc::new(views),
            source,
            size,
            opts: Arc::new(opts),
            sampler,
            pool: Arc::new(pool),
            skipped: Arc::new(Mutex::new(Vec::new())),
            handle,
        })
    }

    /// Reads the image bytes from `source` instead of one object per image.
    pub fn with_source(mut self, source: Arc<dyn Source>) -> Loader {
        self.source = source;
        self
    }

    /// Where the bytes come from, for logs.
    pub fn source(&self) -> String {
        self.source.describe()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Side of the square images in every batch.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Images skipped so far (all epochs), for the job's outputs.
    pub fn skipped(&self) -> Vec<Skipped> {
        self.skipped.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The batches of epoch `epoch`. Dropping the iterator stops the
    /// background threads.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        self.epoch_from(epoch, 0)
    }

    /// The batches of epoch `epoch` from batch `start` on (0-based): the
    /// rest of an epoch a resumed job had begun. The epoch's order and each
    /// image's augmentation depend only on the seed, the epoch and the
    /// image, so these are the batches the whole epoch yields after its
    /// first `start`; the images before are neither read nor decoded.
    pub fn epoch_from(&self, epoch: u64, start: usize) -> Epoch {
        let order = self.sampler.order(epoch, self.items.len());
        let bs = self.opts.batch_size;
        let mut chunks: Vec<(usize, Vec<usize>)> = order.chunks(bs).map(|c| c.to_vec()).enumerate().collect();
        if self.opts.drop_last && chunks.last().is_some_and(|(_, c)| c.len() < bs) {
            chunks.pop();
        }
        let chunks: Vec<(usize, Vec<usize>)> = chunks.into_iter().skip(start).collect();
        let first_image = (start * bs).min(order.len());
        let (fetch_tx, fetch_rx) = sync_channel::<Result<(usize, Vec<usize>, Vec<Result<Bytes>>)>>(self.opts.prefetch);
        let (batch_tx, batch_rx) = sync_channel::<Result<RawBatch>>(self.opts.prefetch);

        // Fetch thread: the source's reads, one batch at a time.
        {
            let (source, items, handle) = (self.source.clone(), self.items.clone(), self.handle.clone());
            std::thread::spawn(move || {
                let _rt = handle.enter();
                let mut reads = match source.open(epoch, items, &order, first_image) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = fetch_tx.send(Err(e));
                        return;
                    }
                };
                for (position, chunk) in chunks {
                    let got = handle.block_on(reads.read(&chunk));
                    let stop = got.is_err();
                    if fetch_tx.send(got.map(|g| (position, chunk, g))).is_err() || stop {
                        return;
                    }
                }
            });
        }

        // Decode thread: decode + augment on the pool, assemble planar batches.
        {
            let (items, views, opts, pool, skipped, size) =
                (self.items.clone(), self.views.clone(), self.opts.clone(), self.pool.clone(), self.skipped.clone(), self.size);
            std::thread::spawn(move || {
                for msg in fetch_rx {
                    let out = msg.and_then(|(position, chunk, bytes)| assemble(&items, &views, &opts, &pool, &skipped, size, epoch, position, chunk, bytes));
                    match out {
                        Ok(None) => continue,
                        Ok(Some(raw)) => {
                            if batch_tx.send(Ok(raw)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = batch_tx.send(Err(e));
                            return;
                        }
                    }
                }
            });
        }
        Epoch { rx: batch_rx, items: self.items.clone(), size: self.size as i64, classes: self.opts.classes as i64, u8: self.opts.output == Output::U8 }
    }
}

#[allow(clippy::too_many_arguments)]
fn assemble(
    items: &[Item],
    views: &[Render],
    opts: &LoaderOptions,
    pool: &rayon::ThreadPool,
    skipped: &Mutex<Vec<Skipped>>,
    size: u32,
    epoch: u64,
    position: usize,
    chunk: Vec<usize>,
    bytes: Vec<Result<Bytes>>,
) -> Result<Option<RawBatch>> {
    let plane = (size * size) as usize;
    let decoded: Vec<Result<Option<(usize, Vec<::image::RgbImage>)>>> = pool.install(|| {
        chunk
            .par_iter()
            .zip(bytes.into_par_iter())
            .map(|(&i, b)| {
                let item = &items[i];
                let img = match b.and_then(|b| decode(&item.key, &b, opts.max_pixels)) {
                    Ok(img) => img,
                    Err(Error::BadImage { key, kind, reason }) if opts.on_bad_image == OnBadImage::Skip => {
                        warn!(key = %key, kind = %kind, reason = %reason, "skipping bad image");
                        if let Ok(mut s) = skipped.lock() {
                            s.push(Skipped { key, kind, reason });
                        }
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                };
                let rendered = views
                    .iter()
                    .map(|v| {
                        let (seed, ep) = v.seed.unwrap_or((opts.seed, epoch));
                        v.pipeline.apply(img.clone(), crate::seed::augment(seed, ep, i))
                    })
                    .collect();
                Ok(Some((i, rendered)))
            })
            .collect()
    });
    let mut kept = Vec::with_capacity(decoded.len());
    for d in decoded {
        if let Some(x) = d? {
            kept.push(x);
        }
    }
    if kept.is_empty() {
        return Ok(None);
    }
    let n = kept.len();
    let mut raw = RawBatch { position, indices: kept.iter().map(|(i, _)| *i).collect(), images_f32: Vec::new(), images_u8: Vec::new(), targets: vec![0.0; n * opts.classes] };
    for (r, (i, _)) in kept.iter().enumerate() {
        let row = &mut raw.targets[r * opts.classes..(r + 1) * opts.classes];
        match &items[*i].soft {
            Some(soft) if soft.len() == opts.classes => row.copy_from_slice(soft),
            _ => {
                for a in &items[*i].labels {
                    if (a.0 as usize) < opts.classes {
                        row[a.0 as usize] = 1.0;
                    }
                }
            }
        }
    }
    for v in 0..views.len() {
        match &opts.output {
            Output::Normalized(norm) => {
                let mut buf = vec![0f32; n * 3 * plane];
                pool.install(|| {
                    buf.par_chunks_mut(3 * plane).zip(kept.par_iter()).for_each(|(out, (_, imgs))| norm.write_chw(&imgs[v], out));
                });
                raw.images_f32.push(buf);
            }
            Output::U8 => {
                let mut buf = vec![0u8; n * 3 * plane];
                pool.install(|| {
                    buf.par_chunks_mut(3 * plane).zip(kept.par_iter()).for_each(|(out, (_, imgs))| write_chw_u8(&imgs[v], out));
                });
                raw.images_u8.push(buf);
            }
        }
    }
    Ok(Some(raw))
}

/// The batches of one epoch, in sampler order.
pub struct Epoch {
    rx: Receiver<Result<RawBatch>>,
    items: Arc<Vec<Item>>,
    size: i64,
    classes: i64,
    u8: bool,
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        let raw = match self.rx.recv().ok()? {
            Ok(raw) => raw,
            Err(e) => return Some(Err(e)),
        };
        let n = raw.indices.len() as i64;
        let shape = [n, 3, self.size, self.size];
        let mut views: Vec<Tensor> = if self.u8 {
            raw.images_u8.iter().map(|b| Tensor::from_slice(b).view(shape)).collect()
        } else {
            raw.images_f32.iter().map(|b| Tensor::from_slice(b).view(shape)).collect()
        };
        let images = views.remove(0);
        let targets = Tensor::from_slice(&raw.targets).view([n, self.classes]);
        let ids = raw.indices.iter().map(|&i| self.items[i].id.clone()).collect();
        Some(Ok(Batch { indices: raw.indices, ids, images, targets, views, position: raw.position }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::augment::{Side, Transform};
    use crate::storage::keys::{self, Split};

    async fn store_with(n: usize) -> (Store, Vec<Item>) {
        let store = Store::memory();
        let mut items = Vec::new();
        for i in 0..n {
            let id = ImageId::new(&format!("{:012x}", i + 1)).unwrap();
            let img = ::image::RgbImage::from_fn(40 + i as u32, 30, |x, y| ::image::Rgb([(x * 5) as u8, (y * 7) as u8, i as u8]));
            let mut png = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut png), ::image::ImageFormat::Png).unwrap();
            let key = keys::image(Split::Train, &id);
            store.put(&key, png).await.unwrap();
            items.push(Item::new(key, id, vec![AttributeId((i % 3) as u16)]));
        }
        (store, items)
    }

    fn opts(bs: usize) -> LoaderOptions {
        LoaderOptions { batch_size: bs, workers: 2, classes: 3, ..Default::default() }
    }

    fn resize16() -> Pipeline {
        Pipeline(vec![Transform::Resize(Side { size: 16 }), Transform::Hflip(crate::image::augment::Prob { p: 0.5 })])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_are_nchw_with_multi_hot_targets_and_cover_every_item() {
        let (store, items) = store_with(10).await;
        let loader = Loader::new(store, items.clone(), resize16(), opts(4), Arc::new(Sequential)).unwrap();
        let batches: Vec<Batch> = tokio::task::spawn_blocking(move || loader.epoch(0).collect::<Result<Vec<_>>>()).await.unwrap().unwrap();
        assert_eq!(batches.iter().map(|b| b.ids.len()).collect::<Vec<_>>(), [4, 4, 2]);
        assert_eq!(batches[0].images.size(), [4, 3, 16, 16]);
        assert_eq!(batches[0].images.kind(), Kind::Float);
        assert_eq!(batches[0].targets.size(), [4, 3]);
        let t = Vec::<f32>::try_from(batches[0].targets.view([-1])).unwrap();
        assert_eq!(&t[..6], &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        let ids: Vec<ImageId> = batches.iter().flat_map(|b| b.ids.clone()).collect();
        assert_eq!(ids, items.iter().map(|i| i.id.clone()).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shuffling_is_seeded_per_epoch_and_batches_are_reproducible() {
        let (store, items) = store_with(12).await;
        let mk = || Loader::new(store.clone(), items.clone(), resize16(), LoaderOptions { seed: 5, ..opts(5) }, Arc::new(Shuffle { seed: 9 })).unwrap();
        let (a, b) = (mk(), mk());
        let run = |l: Loader, e: u64| tokio::task::spawn_blocking(move || l.epoch(e).map(|b| b.unwrap()).collect::<Vec<_>>());
        let ea = run(a, 1).await.unwrap();
        let eb = run(b, 1).await.unwrap();
        for (x, y) in ea.iter().zip(&eb) {
            assert_eq!(x.indices, y.indices);
            assert!(x.images.equal(&y.images), "same seed, same pixels");
        }
        let e2 = run(mk(), 2).await.unwrap();
        let flat = |v: &[Batch]| v.iter().flat_map(|b| b.indices.clone()).collect::<Vec<_>>();
        assert_ne!(flat(&ea), flat(&e2), "each epoch gets its own order");
        let mut sorted = flat(&ea);
        sorted.sort();
        assert_eq!(sorted, (0..12).collect::<Vec<_>>());
        assert_eq!(ea.iter().map(|b| b.ids.len()).sum::<usize>(), 12);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn u8_batches_match_the_normalised_ones_after_device_normalisation() {
        let (store, items) = store_with(3).await;
        let pipe = Pipeline(vec![Transform::Resize(Side { size: 16 })]);
        let f = Loader::new(store.clone(), items.clone(), pipe.clone(), opts(3), Arc::new(Sequential)).unwrap();
        let u = Loader::new(store, items, pipe, LoaderOptions { output: Output::U8, ..opts(3) }, Arc::new(Sequential)).unwrap();
        let (bf, bu) = tokio::task::spawn_blocking(move || (f.epoch(0).next().unwrap().unwrap(), u.epoch(0).next().unwrap().unwrap())).await.unwrap();
        assert_eq!(bu.images.kind(), Kind::Uint8);
        let on_device = normalize_on_device(&bu.images, &Normalize::default());
        assert!(on_device.allclose(&bf.images, 1e-5, 1e-5, false));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_images_fail_the_epoch_or_are_skipped_and_listed() {
        let (store, mut items) = store_with(4).await;
        let bad = ImageId::new("badbadbadbad").unwrap();
        let key = keys::image(Split::Train, &bad);
        store.put(&key, bytes::Bytes::from_static(b"")).await.unwrap();
        items.insert(1, Item::new(key.clone(), bad, vec![]));
        let fail = Loader::new(store.clone(), items.clone(), resize16(), opts(8), Arc::new(Sequential)).unwrap();
        let err = tokio::task::spawn_blocking(move || fail.epoch(0).next().unwrap().unwrap_err()).await.unwrap();
        assert!(err.to_string().contains(&key), "{err}");
        let skip = Loader::new(store, items, resize16(), LoaderOptions { on_bad_image: OnBadImage::Skip, ..opts(8) }, Arc::new(Sequential)).unwrap();
        let (batch, skipped) = tokio::task::spawn_blocking(move || {
            let b = skip.epoch(0).next().unwrap().unwrap();
            (b, skip.skipped())
        })
        .await
        .unwrap();
        assert_eq!(batch.ids.len(), 4);
        assert_eq!(skipped, vec![Skipped { key: key.clone(), kind: BadImageKind::Empty, reason: "the object has no bytes".into() }]);
        let out = Store::memory();
        let twice = [skipped.clone(), skipped].concat();
        let entry = write_skipped(&out, "skipped.json", &twice).await.unwrap();
        let listed: serde_json::Value = serde_json::from_slice(&out.get("skipped.json").await.unwrap()).unwrap();
        assert_eq!(listed.as_array().unwrap().len(), 1, "listed once however often skipped");
        assert_eq!(listed[0]["kind"], "empty");
        assert_eq!(listed[0]["key"], key.as_str());
        assert_eq!(entry.key, "skipped.json");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_object_is_an_error_naming_it() {
        let (store, mut items) = store_with(2).await;
        items[1].key = "data/train/000000000fff.png".into();
        let l = Loader::new(store, items, resize16(), opts(2), Arc::new(Sequential)).unwrap();
        let err = tokio::task::spawn_blocking(move || l.epoch(0).next().unwrap().unwrap_err()).await.unwrap();
        assert!(err.to_string().contains("000000000fff"), "{err}");
    }

    #[test]
    fn a_pipeline_without_a_fixed_size_is_refused() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _g = rt.enter();
        let err = Loader::new(Store::memory(), vec![], Pipeline(vec![]), opts(2), Arc::new(Sequential)).err().unwrap();
        assert!(err.to_string().contains("sizing transform"), "{err}");
    }
}
