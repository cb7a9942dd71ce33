//! Reading a shard set: sequential epochs ([`EpochReader`]) and random
//! access by id ([`ShardSet::fetch_many`]).
//!
//! # An epoch's order
//!
//! [`plan_epoch`] computes the whole order from the index alone, before any
//! byte is read:
//!
//! 1. the filter keeps only the given ids (a fold's training images); the
//!    others are never read;
//! 2. the shards that keep at least one image are permuted with an rng
//!    drawn from `(seed, epoch)` (or left in index order);
//! 3. `shards_in_flight` shards are open at once and their images are
//!    interleaved round-robin, one image per open shard in slot order; a
//!    slot whose shard is exhausted takes the next shard of the permutation;
//! 4. the interleaved stream passes a shuffle buffer of `shuffle_buffer`
//!    images (WebDataset's `_shuffle` with `initial = bufsize`): each
//!    arriving image is appended, and once the buffer is full a uniformly
//!    drawn slot is yielded and the last image moved into it; at the end
//!    the rest is drained the same way. The rng is drawn from
//!    `(seed, epoch)` too.
//!
//! So the order is a pure function of the index, the filter, `seed`,
//! `epoch`, `shuffle_shards`, `shuffle_buffer` and `shards_in_flight`. It
//! does not depend on network timing, on `chunk_bytes` / `max_gap`, or on
//! where a reader starts: [`EpochReader`] fetches the images in the
//! stream's order (bytes arriving early wait in the reader) and yields
//! them in the planned order. Starting at position `p` yields exactly
//! `order[p..]`, reading only those images (the ones still in the buffer
//! at `p`, then the rest of the stream): the images before `p` are not
//! downloaded, except as bytes inside a chunk that also holds a needed
//! image (gaps up to `max_gap` are read through rather than split into
//! another request).
//!
//! Every image's bytes are checked against the index's CRC32C, and every
//! shard's size against the store (one HEAD per shard) before it is read.
//!
//! Not supported on this path: sampling with replacement (class-weighted
//! samplers) and per-epoch hard-negative revisits: an epoch reads each kept
//! image exactly once. Splitting shards over several processes (WebDataset's
//! `split_by_node`) is not done: one fold job reads the whole set.

use super::format::ShardIndex;
use super::ShardError;
use crate::ids::ImageId;
use crate::error::{Error, Result};
use crate::storage::Store;
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// One image: `(shard number, position in the shard)`.
pub type Slot = (u32, u32);

/// How an epoch is ordered and read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochOptions {
    pub seed: u64,
    pub epoch: u64,
    /// Permute the shards each epoch (false: index order, for prediction).
    pub shuffle_shards: bool,
    /// Images in the shuffle buffer (0 or 1: no in-memory shuffle).
    pub shuffle_buffer: usize,
    /// Shards read and interleaved at once (at least 1).
    pub shards_in_flight: usize,
    /// Size of one ranged read (an image larger than this is one read).
    pub chunk_bytes: u64,
    /// Unneeded bytes between two needed images that are read through
    /// rather than starting another request.
    pub max_gap: u64,
}

impl Default for EpochOptions {
    fn default() -> Self {
        EpochOptions { seed: 0, epoch: 0, shuffle_shards: true, shuffle_buffer: 4096, shards_in_flight: 4, chunk_bytes: 16 << 20, max_gap: 1 << 20 }
    }
}

impl EpochOptions {
    /// Index order, no shuffle, one shard at a time (prediction, scans).
    pub fn sequential() -> EpochOptions {
        EpochOptions { shuffle_shards: false, shuffle_buffer: 1, shards_in_flight: 1, ..EpochOptions::default() }
    }
}

/// The planned order of one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochPlan {
    /// The images in the order they are yielded.
    pub order: Vec<Slot>,
    /// The interleaved stream before the shuffle buffer (the order in
    /// which images are read).
    pub stream: Vec<Slot>,
}

fn rng(seed: u64, epoch: u64, stage: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(crate::seed::shard_epoch(seed, epoch, stage))
}

/// Positions of the ids of `filter` in `index`, per shard (ascending).
fn kept(index: &ShardIndex, filter: Option<&HashSet<ImageId>>) -> Result<Vec<Vec<u32>>> {
    let mut found = 0usize;
    let kept: Vec<Vec<u32>> = index
        .shards
        .iter()
        .map(|s| {
            (0..s.len() as u32)
                .filter(|&j| match filter {
                    None => true,
                    Some(f) => {
                        let hit = f.contains(&s.ids[j as usize]);
                        found += hit as usize;
                        hit
                    }
                })
                .collect()
        })
        .collect();
    if let Some(f) = filter {
        if found != f.len() {
            let all: HashSet<&ImageId> = index.shards.iter().flat_map(|s| s.ids.iter()).collect();
            let mut missing: Vec<&ImageId> = f.iter().filter(|id| !all.contains(id)).collect();
            missing.sort();
            return Err(ShardError::MissingId { index: index.key(), id: missing[0].to_string(), missing: missing.len() }.into());
        }
    }
    Ok(kept)
}

/// The order of one epoch over the images of `index` kept by `filter`
/// (see the module docs).
///
/// # Errors
/// [`ShardError::MissingId`] naming the first filter id (in sort order)
/// that the set does not hold.
pub fn plan_epoch(index: &ShardIndex, filter: Option<&HashSet<ImageId>>, opts: &EpochOptions) -> Result<EpochPlan> {
    let kept = kept(index, filter)?;
    let total: usize = kept.iter().map(Vec::len).sum();
    let mut shards: Vec<u32> = (0..kept.len() as u32).filter(|&s| !kept[s as usize].is_empty()).collect();
    if opts.shuffle_shards {
        shards.shuffle(&mut rng(opts.seed, opts.epoch, 1));
    }
    let k = opts.shards_in_flight.max(1);
    let mut next = shards.iter();
    let mut slots: Vec<Option<(u32, usize)>> = (0..k).map(|_| next.next().map(|&s| (s, 0))).collect();
    let mut stream = Vec::with_capacity(total);
    while stream.len() < total {
        for slot in slots.iter_mut() {
            if let Some((s, c)) = *slot {
                let list = &kept[s as usize];
                stream.push((s, list[c]));
                *slot = if c + 1 < list.len() { Some((s, c + 1)) } else { next.next().map(|&s| (s, 0)) };
            }
        }
    }
    let cap = opts.shuffle_buffer.max(1);
    let mut r = rng(opts.seed, opts.epoch, 2);
    let mut buf: Vec<Slot> = Vec::with_capacity(cap.min(total));
    let mut order = Vec::with_capacity(total);
    for &x in &stream {
        buf.push(x);
        if buf.len() >= cap {
            order.push(buf.swap_remove(r.random_range(0..buf.len())));
        }
    }
    while !buf.is_empty() {
        order.push(buf.swap_remove(r.random_range(0..buf.len())));
    }
    Ok(EpochPlan { order, stream })
}

/// One image read from a shard set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub id: ImageId,
    pub bytes: Bytes,
    /// Position in the epoch (0-based): resume at `position + 1`.
    pub position: u64,
}

/// Ranges of needed images of one shard, grouped into reads.
fn chunks(ranges: &[Range<u64>], chunk_bytes: u64, max_gap: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(c) if r.start >= c.end && r.start - c.end <= max_gap && r.end - c.start <= chunk_bytes => c.end = r.end,
            _ => out.push(r.clone()),
        }
    }
    out
}

/// Checks the shard's size in the store against the index.
async fn check_size(store: &Store, index: &ShardIndex, s: usize) -> Result<()> {
    let e = &index.shards[s];
    match store.size(&e.key).await? {
        None => Err(Error::NotFound { store: store.url().to_string(), key: e.key.clone(), hint: format!("shard set `{}` lists it; rebuild the set", index.key()) }),
        Some(found) if found < e.size => {
            let id = (0..e.len()).find(|&j| e.range(j).end > found).map(|j| e.ids[j].to_string()).unwrap_or_else(|| "none (only the tar end blocks are missing)".into());
            Err(ShardError::Truncated { shard: e.key.clone(), expected: e.size, found, id }.into())
        }
        Some(found) if found > e.size => {
            Err(ShardError::ShardHash { index: index.key(), shard: e.key.clone(), expected: format!("{} bytes", e.size), found: format!("{found} bytes") }.into())
        }
        Some(_) => Ok(()),
    }
}

/// One ranged read, retried on transient faults.
async fn get_range(store: &Store, key: &str, r: Range<u64>) -> Result<Bytes> {
    let (inner, path) = store.raw(key);
    store.with_retry("get_range", key, || inner.get_range(&path, r.clone())).await
}

fn verify(index: &ShardIndex, s: usize, j: usize, bytes: &[u8]) -> Result<()> {
    let e = &index.shards[s];
    let found = crc32c::crc32c(bytes);
    if found != e.crc32c[j] {
        return Err(ShardError::Checksum {
            index: index.key(),
            shard: e.key.clone(),
            id: e.ids[j].to_string(),
            offset: e.offsets[j],
            length: e.lengths[j],
            expected: e.crc32c[j],
            found,
        }
        .into());
    }
    Ok(())
}

/// A shard being read: its chunks arrive in order from a background task.
struct Open {
    rx: mpsc::Receiver<Result<(u64, Bytes)>>,
    current: Option<(u64, Bytes)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The images of one epoch, in the planned order (see the module docs).
/// Memory: the shuffle buffer's images plus, per open shard, up to three
/// chunks (one being read, one queued, one being cut).
pub struct EpochReader {
    store: Store,
    index: Arc<ShardIndex>,
    order: Vec<Slot>,
    /// The stream restricted to the images still to yield.
    fetch: Vec<Slot>,
    pos: usize,
    fetch_pos: usize,
    pending: HashMap<Slot, Bytes>,
    chunks: HashMap<u32, Vec<Range<u64>>>,
    /// `(first fetch position, shard)` in order of first need.
    schedule: Vec<(usize, u32)>,
    next_open: usize,
    last_need: HashMap<u32, usize>,
    open: HashMap<u32, Open>,
    in_flight: usize,
    failed: bool,
}

impl EpochReader {
    /// A reader of epoch `opts.epoch` over the images of `index` kept by
    /// `filter`, starting at position `start` (images already yielded).
    /// Reads nothing until the first [`EpochReader::next`].
    ///
    /// # Errors
    /// [`ShardError::MissingId`] for a filter id the set lacks;
    /// [`Error::Usage`] when `start` is past the epoch's end.
    pub fn new(store: Store, index: Arc<ShardIndex>, filter: Option<&HashSet<ImageId>>, opts: &EpochOptions, start: u64) -> Result<EpochReader> {
        let plan = plan_epoch(&index, filter, opts)?;
        let start = start as usize;
        if start > plan.order.len() {
            return Err(Error::Usage(format!("shard epoch: cannot start at image {start}, the epoch has {}", plan.order.len())));
        }
        let needed: HashSet<Slot> = plan.order[start..].iter().copied().collect();
        let fetch: Vec<Slot> = plan.stream.into_iter().filter(|x| needed.contains(x)).collect();
        let mut per_shard: HashMap<u32, Vec<Range<u64>>> = HashMap::new();
        let mut schedule = Vec::new();
        let mut last_need = HashMap::new();
        for (i, &(s, j)) in fetch.iter().enumerate() {
            let ranges = per_shard.entry(s).or_default();
            if ranges.is_empty() {
                schedule.push((i, s));
            }
            ranges.push(index.shards[s as usize].range(j as usize));
            last_need.insert(s, i);
        }
        let chunks = per_shard.into_iter().map(|(s, r)| (s, chunks(&r, opts.chunk_bytes.max(1), opts.max_gap))).collect();
        Ok(EpochReader {
            store,
            index,
            order: plan.order,
            fetch,
            pos: start,
            fetch_pos: 0,
            pending: HashMap::new(),
            chunks,
            schedule,
            next_open: 0,
            last_need,
            open: HashMap::new(),
            in_flight: opts.shards_in_flight.max(1),
            failed: false,
        })
    }

    /// Images in the whole epoch.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Images yielded so far, counting those skipped by the start position.
    pub fn position(&self) -> u64 {
        self.pos as u64
    }

    /// Ranged reads this reader will make (its chunks), and their bytes.
    pub fn planned_reads(&self) -> (usize, u64) {
        let all = self.chunks.values().flatten();
        (self.chunks.values().map(Vec::len).sum(), all.map(|r| r.end - r.start).sum())
    }

    fn open_shard(&mut self, s: u32) {
        let (tx, rx) = mpsc::channel(1);
        let store = self.store.clone();
        let index = self.index.clone();
        let chunks = self.chunks.get(&s).cloned().unwrap_or_default();
        let task = tokio::spawn(async move {
            if let Err(e) = check_size(&store, &index, s as usize).await {
                let _ = tx.send(Err(e)).await;
                return;
            }
            let key = &index.shards[s as usize].key;
            for r in chunks {
                let got = get_range(&store, key, r.clone()).await.and_then(|b| {
                    if b.len() as u64 == r.end - r.start {
                        Ok((r.start, b))
                    } else {
                        let e = &index.shards[s as usize];
                        let found = r.start + b.len() as u64;
                        let j = (0..e.len()).find(|&j| e.range(j).end > found).unwrap_or(0);
                        Err(ShardError::Truncated { shard: key.clone(), expected: e.size, found, id: e.ids[j].to_string() }.into())
                    }
                });
                let stop = got.is_err();
                if tx.send(got).await.is_err() || stop {
                    return;
                }
            }
        });
        self.open.insert(s, Open { rx, current: None, task });
    }

    /// Opens shards in order of first need: every shard needed by now,
    /// and more while fewer than `shards_in_flight + 1` are open.
    fn open_ahead(&mut self) {
        while let Some(&(first, s)) = self.schedule.get(self.next_open) {
            if first > self.fetch_pos && self.open.len() > self.in_flight {
                break;
            }
            self.open_shard(s);
            self.next_open += 1;
        }
    }

    /// Reads the next image of the stream into `pending`.
    async fn fetch_next(&mut self) -> Result<()> {
        self.open_ahead();
        let (s, j) = self.fetch[self.fetch_pos];
        let range = self.index.shards[s as usize].range(j as usize);
        let key = &self.index.shards[s as usize].key;
        let open = self.open.get_mut(&s).ok_or_else(|| Error::Usage(format!("shard `{key}` was not opened before its image was needed")))?;
        let bytes = loop {
            if let Some((start, b)) = &open.current {
                let end = start + b.len() as u64;
                if range.start >= *start && range.end <= end {
                    break Bytes::copy_from_slice(&b[(range.start - start) as usize..(range.end - start) as usize]);
                }
            }
            match open.rx.recv().await {
                Some(chunk) => open.current = Some(chunk?),
                None => return Err(Error::Usage(format!("shard `{key}`: its reader stopped before image `{}`", self.index.shards[s as usize].ids[j as usize]))),
            }
        };
        verify(&self.index, s as usize, j as usize, &bytes)?;
        if self.last_need.get(&s) == Some(&self.fetch_pos) {
            self.open.remove(&s);
        }
        self.pending.insert((s, j), bytes);
        self.fetch_pos += 1;
        Ok(())
    }

    /// The next image, `None` at the end of the epoch (or after an error).
    ///
    /// # Errors
    /// [`ShardError::Truncated`], [`ShardError::Checksum`] naming the shard
    /// and the image; storage errors naming the shard.
    pub async fn next(&mut self) -> Option<Result<Sample>> {
        if self.failed || self.pos >= self.order.len() {
            return None;
        }
        let want = self.order[self.pos];
        while !self.pending.contains_key(&want) {
            if let Err(e) = self.fetch_next().await {
                self.failed = true;
                self.open.clear();
                return Some(Err(e));
            }
        }
        let bytes = self.pending.remove(&want).expect("checked above");
        let id = self.index.shards[want.0 as usize].ids[want.1 as usize].clone();
        self.pos += 1;
        Some(Ok(Sample { id, bytes, position: self.pos as u64 - 1 }))
    }
}

/// A shard set opened for reading: the index, and random access by id.
pub struct ShardSet {
    store: Store,
    index: Arc<ShardIndex>,
    locations: HashMap<ImageId, Slot>,
    /// Shards whose size was checked against the store.
    checked: Mutex<HashSet<u32>>,
}

impl ShardSet {
    /// Loads the index at `key` and refuses it unless it was built from
    /// the store's `data/train.csv` and `data/sample_submission.csv`.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`ShardError::BadIndex`],
    /// [`ShardError::OtherData`].
    pub async fn open(store: &Store, key: &str) -> Result<ShardSet> {
        let index = ShardIndex::load(store, key).await?;
        index.check_source(store).await?;
        Ok(ShardSet::new(store.clone(), index))
    }

    /// A set over an index already loaded and checked.
    pub fn new(store: Store, index: ShardIndex) -> ShardSet {
        let locations = index.locations();
        ShardSet { store, index: Arc::new(index), locations, checked: Mutex::new(HashSet::new()) }
    }

    pub fn index(&self) -> &ShardIndex {
        &self.index
    }

    /// Whether the set holds `id`.
    pub fn contains(&self, id: &ImageId) -> bool {
        self.locations.contains_key(id)
    }

    /// A reader of one epoch (see [`EpochReader::new`]).
    ///
    /// # Errors
    /// As [`EpochReader::new`].
    pub fn epoch(&self, filter: Option<&HashSet<ImageId>>, opts: &EpochOptions, start: u64) -> Result<EpochReader> {
        EpochReader::new(self.store.clone(), self.index.clone(), filter, opts, start)
    }

    /// The bytes of one image: one ranged read.
    ///
    /// # Errors
    /// As [`ShardSet::fetch_many`].
    pub async fn fetch(&self, id: &ImageId) -> Result<Bytes> {
        Ok(self.fetch_many(std::slice::from_ref(id)).await?.remove(0))
    }

    /// The bytes of `ids`, in their order: per shard one `get_ranges` call
    /// (object_store merges ranges less than 1 MiB apart and reads up to
    /// 10 at once), up to 8 shards at once; each shard's size is checked
    /// once per set.
    ///
    /// # Errors
    /// [`ShardError::MissingId`], [`ShardError::Truncated`],
    /// [`ShardError::Checksum`]; storage errors naming the shard.
    pub async fn fetch_many(&self, ids: &[ImageId]) -> Result<Vec<Bytes>> {
        let mut by_shard: HashMap<u32, Vec<(usize, u32)>> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            let &(s, j) = self.locations.get(id).ok_or_else(|| {
                let missing = ids.iter().filter(|x| !self.locations.contains_key(x)).count();
                Error::from(ShardError::MissingId { index: self.index.key(), id: id.to_string(), missing })
            })?;
            by_shard.entry(s).or_default().push((i, j));
        }
        let mut groups: Vec<(u32, Vec<(usize, u32)>)> = by_shard.into_iter().collect();
        groups.sort_by_key(|g| g.0);
        let got: Vec<Vec<(usize, Bytes)>> = stream::iter(groups)
            .map(|(s, mut want)| async move {
                want.sort_by_key(|w| w.1);
                let fresh = self.checked.lock().map(|c| !c.contains(&s)).unwrap_or(true);
                if fresh {
                    check_size(&self.store, &self.index, s as usize).await?;
                    if let Ok(mut c) = self.checked.lock() {
                        c.insert(s);
                    }
                }
                let e = &self.index.shards[s as usize];
                let ranges: Vec<Range<u64>> = want.iter().map(|w| e.range(w.1 as usize)).collect();
                let (inner, path) = self.store.raw(&e.key);
                let parts = self.store.with_retry("get_ranges", &e.key, || inner.get_ranges(&path, &ranges)).await?;
                let mut out = Vec::with_capacity(want.len());
                for ((i, j), b) in want.into_iter().zip(parts) {
                    if b.len() as u64 != e.lengths[j as usize] {
                        return Err(ShardError::Truncated { shard: e.key.clone(), expected: e.size, found: e.offsets[j as usize] + b.len() as u64, id: e.ids[j as usize].to_string() }.into());
                    }
                    verify(&self.index, s as usize, j as usize, &b)?;
                    out.push((i, b));
                }
                Ok::<_, Error>(out)
            })
            .buffer_unordered(8)
            .try_collect()
            .await?;
        let mut slots: Vec<Option<Bytes>> = vec![None; ids.len()];
        for (i, b) in got.into_iter().flatten() {
            slots[i] = Some(b);
        }
        Ok(slots.into_iter().map(|b| b.expect("every id was assigned to a shard")).collect())
    }

    /// Reads every shard whole and checks its size and sha256 against the
    /// index (a full scan: as many bytes as the set).
    ///
    /// # Errors
    /// [`ShardError::Truncated`], [`ShardError::ShardHash`], storage errors.
    pub async fn verify_shards(&self) -> Result<()> {
        use sha2::{Digest, Sha256};
        for (s, e) in self.index.shards.iter().enumerate() {
            check_size(&self.store, &self.index, s).await?;
            let (inner, path) = self.store.raw(&e.key);
            let mut h = Sha256::new();
            let mut body = self.store.with_retry("get", &e.key, || inner.get(&path)).await?.into_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|source| Error::Store { op: "get", key: e.key.clone(), attempts: 1, source })?;
                h.update(&chunk);
            }
            let found = hex::encode(h.finalize());
            if found != e.sha256 {
                return Err(ShardError::ShardHash { index: self.index.key(), shard: e.key.clone(), expected: e.sha256.clone(), found }.into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::write::{build, BuildOptions};
    use crate::storage::keys::{self as store_keys, Split};

    async fn built(n: usize, shard_bytes: u64) -> (Store, ShardIndex, HashMap<ImageId, Bytes>) {
        let (store, ids, blobs) = crate::shards::write::tests::store_with(n, 5).await;
        let index = build(&store, Split::Train, &ids, &BuildOptions { shard_bytes, fetch_concurrency: 4, ..Default::default() }).await.unwrap();
        (store, index, ids.into_iter().zip(blobs).collect())
    }

    async fn read_all(r: &mut EpochReader) -> Result<Vec<Sample>> {
        let mut out = Vec::new();
        while let Some(s) = r.next().await {
            out.push(s?);
        }
        Ok(out)
    }

    fn opts(seed: u64, epoch: u64, buffer: usize, in_flight: usize) -> EpochOptions {
        EpochOptions { seed, epoch, shuffle_buffer: buffer, shards_in_flight: in_flight, chunk_bytes: 3000, max_gap: 600, ..EpochOptions::default() }
    }

    #[tokio::test]
    async fn every_image_comes_back_identical_exactly_once_for_many_settings() {
        let (store, index, blobs) = built(97, 9000).await;
        assert!(index.shards.len() >= 8);
        let index = Arc::new(index);
        // Property-style sweep: seeds, epochs, buffers, shards in flight, chunk sizes.
        for case in 0..24u64 {
            let o = EpochOptions {
                seed: case,
                epoch: case % 3,
                shuffle_shards: case % 5 != 0,
                shuffle_buffer: [1, 2, 7, 50, 500][case as usize % 5],
                shards_in_flight: 1 + case as usize % 4,
                chunk_bytes: [1, 700, 4096, 1 << 20][case as usize % 4],
                max_gap: [0, 100, 1 << 20][case as usize % 3],
            };
            let mut r = EpochReader::new(store.clone(), index.clone(), None, &o, 0).unwrap();
            let got = read_all(&mut r).await.unwrap();
            assert_eq!(got.len(), blobs.len(), "case {case}");
            let mut seen = HashSet::new();
            for (p, s) in got.iter().enumerate() {
                assert_eq!(s.position, p as u64);
                assert_eq!(&s.bytes, &blobs[&s.id], "case {case}: bytes of {}", s.id);
                assert!(seen.insert(s.id.clone()), "case {case}: {} twice", s.id);
            }
            // The same order as the plan, whatever the chunking.
            let plan = plan_epoch(&index, None, &o).unwrap();
            let want: Vec<&ImageId> = plan.order.iter().map(|&(s, j)| &index.shards[s as usize].ids[j as usize]).collect();
            assert_eq!(got.iter().map(|s| &s.id).collect::<Vec<_>>(), want, "case {case}");
        }
    }

    #[test]
    fn the_order_depends_on_seed_epoch_and_buffer_but_not_on_chunking() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (_store, index, _) = rt.block_on(built(60, 9000));
        let a = plan_epoch(&index, None, &opts(1, 0, 16, 2)).unwrap();
        assert_eq!(a, plan_epoch(&index, None, &EpochOptions { chunk_bytes: 1, max_gap: 0, ..opts(1, 0, 16, 2) }).unwrap());
        assert_ne!(a.order, plan_epoch(&index, None, &opts(2, 0, 16, 2)).unwrap().order);
        assert_ne!(a.order, plan_epoch(&index, None, &opts(1, 1, 16, 2)).unwrap().order);
        assert_ne!(a.order, plan_epoch(&index, None, &opts(1, 0, 32, 2)).unwrap().order);
        let seq = plan_epoch(&index, None, &EpochOptions::sequential()).unwrap();
        let flat: Vec<Slot> = index.shards.iter().enumerate().flat_map(|(s, e)| (0..e.len() as u32).map(move |j| (s as u32, j))).collect();
        assert_eq!(seq.order, flat, "sequential reads the index order");
        // Two shards in flight alternate between two shards.
        let two = plan_epoch(&index, None, &EpochOptions { shuffle_shards: false, shards_in_flight: 2, shuffle_buffer: 1, ..Default::default() }).unwrap();
        let both = index.shards[0].len().min(index.shards[1].len()) as u32;
        let want: Vec<Slot> = (0..both).flat_map(|j| [(0, j), (1, j)]).collect();
        assert_eq!(&two.order[..want.len()], &want[..]);
    }

    #[tokio::test]
    async fn resuming_mid_epoch_yields_exactly_the_rest_and_reads_less() {
        let (store, index, _) = built(120, 6000).await;
        let index = Arc::new(index);
        let o = opts(7, 3, 20, 3);
        let mut full = EpochReader::new(store.clone(), index.clone(), None, &o, 0).unwrap();
        let (_, full_bytes) = full.planned_reads();
        let all = read_all(&mut full).await.unwrap();
        for start in [0usize, 1, 19, 60, 119, 120] {
            let mut r = EpochReader::new(store.clone(), index.clone(), None, &o, start as u64).unwrap();
            assert_eq!(r.position(), start as u64);
            let (_, bytes) = r.planned_reads();
            let rest = read_all(&mut r).await.unwrap();
            assert_eq!(rest, all[start..].to_vec(), "start {start}");
            if start >= 60 {
                assert!(bytes < full_bytes * 3 / 4, "start {start}: reads {bytes} of {full_bytes}");
            }
        }
        assert!(EpochReader::new(store, index, None, &o, 121).is_err());
    }

    #[tokio::test]
    async fn a_filter_reads_only_its_ids_and_an_unknown_id_is_an_error() {
        let (store, index, blobs) = built(80, 5000).await;
        let mut ids: Vec<ImageId> = blobs.keys().cloned().collect();
        ids.sort();
        let fold: HashSet<ImageId> = ids.iter().step_by(3).cloned().collect();
        let set = ShardSet::new(store.clone(), index);
        let mut r = set.epoch(Some(&fold), &opts(3, 0, 8, 2), 0).unwrap();
        let got = read_all(&mut r).await.unwrap();
        assert_eq!(got.iter().map(|s| s.id.clone()).collect::<HashSet<_>>(), fold);
        assert_eq!(got.len(), fold.len());
        let mut bad = fold.clone();
        bad.insert(ImageId::new("00000000deadbeef").unwrap());
        let e = set.epoch(Some(&bad), &opts(3, 0, 8, 2), 0).err().unwrap();
        assert!(matches!(e, Error::Shard(ShardError::MissingId { .. })), "{e}");
        assert!(e.to_string().contains("00000000deadbeef") && e.to_string().contains("index.json"), "{e}");
    }

    #[tokio::test]
    async fn random_access_returns_the_bytes_in_the_requested_order() {
        let (store, index, blobs) = built(50, 7000).await;
        let set = ShardSet::new(store, index);
        let mut ids: Vec<ImageId> = blobs.keys().cloned().collect();
        ids.sort();
        ids.reverse();
        let got = set.fetch_many(&ids[..17]).await.unwrap();
        for (id, b) in ids.iter().zip(&got) {
            assert_eq!(b, &blobs[id]);
        }
        assert_eq!(set.fetch(&ids[3]).await.unwrap(), blobs[&ids[3]]);
        let e = set.fetch(&ImageId::new("00000000deadbeef").unwrap()).await.unwrap_err();
        assert!(e.to_string().contains("00000000deadbeef"), "{e}");
        set.verify_shards().await.unwrap();
    }

    #[tokio::test]
    async fn a_truncated_shard_is_an_error_naming_the_shard_and_the_first_lost_image() {
        let (store, index, _) = built(40, 8000).await;
        let victim = index.shards[1].clone();
        let bytes = store.get(&victim.key).await.unwrap();
        let cut = victim.range(2).start + 3;
        store.put(&victim.key, bytes.slice(..cut as usize)).await.unwrap();
        let set = ShardSet::new(store.clone(), index.clone());
        let mut r = set.epoch(None, &EpochOptions::sequential(), 0).unwrap();
        let e = read_all(&mut r).await.unwrap_err();
        match &e {
            Error::Shard(ShardError::Truncated { shard, id, found, .. }) => {
                assert_eq!(shard, &victim.key);
                assert_eq!(id, &victim.ids[2].to_string());
                assert_eq!(*found, cut);
            }
            other => panic!("not a truncation: {other}"),
        }
        assert!(r.next().await.is_none(), "no images after an error");
        let e = set.fetch(&victim.ids[3]).await.unwrap_err();
        assert!(matches!(e, Error::Shard(ShardError::Truncated { .. })), "{e}");
        assert!(set.verify_shards().await.is_err());
        // The first shard's images still read by id.
        assert!(set.fetch(&index.shards[0].ids[0]).await.is_ok());
    }

    #[tokio::test]
    async fn bytes_that_disagree_with_the_index_are_an_error_naming_shard_and_image() {
        let (store, index, _) = built(30, 6000).await;
        let victim = index.shards[0].clone();
        let mut bytes = store.get(&victim.key).await.unwrap().to_vec();
        bytes[victim.range(1).start as usize] ^= 0xff;
        store.put(&victim.key, bytes).await.unwrap();
        let set = ShardSet::new(store.clone(), index);
        let mut r = set.epoch(None, &EpochOptions::sequential(), 0).unwrap();
        let e = read_all(&mut r).await.unwrap_err();
        let text = e.to_string();
        match e {
            Error::Shard(ShardError::Checksum { shard, id, .. }) => {
                assert_eq!(shard, victim.key);
                assert_eq!(id, victim.ids[1].to_string());
            }
            other => panic!("not a checksum error: {other}"),
        }
        assert!(text.contains("rebuild"), "{text}");
        assert!(matches!(set.fetch(&victim.ids[1]).await.unwrap_err(), Error::Shard(ShardError::Checksum { .. })));
        assert!(matches!(set.verify_shards().await.unwrap_err(), Error::Shard(ShardError::ShardHash { .. })));
    }

    #[tokio::test]
    async fn opening_a_set_built_from_other_csvs_is_refused() {
        let (store, index, _) = built(10, 1 << 20).await;
        assert!(ShardSet::open(&store, &index.key()).await.is_ok());
        store.put(store_keys::TRAIN, "id,attribute_ids\n0123456789ab,1\n").await.unwrap();
        let e = ShardSet::open(&store, &index.key()).await.err().unwrap();
        assert!(matches!(e, Error::Shard(ShardError::OtherData { .. })), "{e}");
        assert!(e.to_string().contains("data/train.csv"), "{e}");
    }

    #[test]
    fn nearby_ranges_merge_into_chunks_up_to_the_size() {
        let r = [0..10, 15..20, 100..110, 112..300, 300..400];
        assert_eq!(chunks(&r, 1000, 5), vec![0..20, 100..400]);
        assert_eq!(chunks(&r, 250, 5), vec![0..20, 100..300, 300..400]);
        assert_eq!(chunks(&r, 1, 1000), r.to_vec());
    }
}
