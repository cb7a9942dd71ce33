//! Building a shard set: reads `data/{split}/{id}.png` for the given ids in
//! their given order (bounded concurrency), appends each image as a tar
//! member to the current shard, streams the shard to the store as a
//! multipart upload, starts the next shard before one would pass the
//! target size, and writes `index.json` last (its presence commits the
//! set). Memory stays bounded: a shard is never held whole (the store's
//! writer keeps its 16 MiB buffer and the parts in flight), only the images
//! being fetched. Same store contents and options, same bytes.

use super::format::{self, header, member_len, padding, set_hash, Recoded, ShardEntry, ShardIndex, SourceFiles, END, FORMAT};
use crate::ids::ImageId;
use crate::error::{Error, Result};
use crate::image::decode::decode;
use crate::storage::keys::{self as store_keys, Split};
use crate::storage::store::io_to_store;
use crate::storage::Store;
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::info;

/// What to store for each image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recode {
    /// The original bytes, unchanged: training on the shards sees exactly
    /// the images it would read one object at a time.
    #[default]
    Original,
    /// Decode, reduce the shortest side to at most `shortest_side` (the
    /// project's antialiased resize; smaller images are kept as they are,
    /// but still re-encoded), encode as PNG (fast compression).
    Png { shortest_side: u32 },
    /// As `Png`, encoded as JPEG at `quality` (1-100). Lossy.
    Jpeg { shortest_side: u32, quality: u8 },
}

impl Recode {
    /// How the index records this recoding.
    pub fn recorded(self) -> Recoded {
        match self {
            Recode::Original => Recoded::Original,
            Recode::Png { shortest_side } => Recoded::Png { shortest_side },
            Recode::Jpeg { shortest_side, quality } => Recoded::Jpeg { shortest_side, quality },
        }
    }

    /// Member extension.
    pub fn ext(self) -> &'static str {
        match self {
            Recode::Jpeg { .. } => "jpg",
            _ => "png",
        }
    }

    /// Applies the recoding to the bytes of the object at `key`.
    ///
    /// # Errors
    /// [`Error::BadImage`] naming `key` when it does not decode;
    /// [`Error::Usage`] when encoding fails.
    pub fn apply(self, key: &str, bytes: Bytes) -> Result<Bytes> {
        let (shortest, jpeg) = match self {
            Recode::Original => return Ok(bytes),
            Recode::Png { shortest_side } => (shortest_side, None),
            Recode::Jpeg { shortest_side, quality } => (shortest_side, Some(quality)),
        };
        let img = decode(key, &bytes, crate::image::decode::DEFAULT_MAX_PIXELS)?;
        let (w, h) = img.dimensions();
        let img = if w.min(h) > shortest {
            // Round the long side; keep the short side exact.
            let (nw, nh) = if w <= h {
                (shortest, ((h as u64 * shortest as u64 + w as u64 / 2) / w as u64).max(1) as u32)
            } else {
                (((w as u64 * shortest as u64 + h as u64 / 2) / h as u64).max(1) as u32, shortest)
            };
            crate::image::geometry::resize(&img, nw, nh)
        } else {
            img
        };
        let mut out = Vec::new();
        let enc = |e: ::image::ImageError| Error::Usage(format!("re-encoding `{key}`: {e}"));
        match jpeg {
            None => {
                let encoder = ::image::codecs::png::PngEncoder::new_with_quality(
                    &mut out,
                    ::image::codecs::png::CompressionType::Fast,
                    ::image::codecs::png::FilterType::Adaptive,
                );
                ::image::ImageEncoder::write_image(encoder, img.as_raw(), img.width(), img.height(), ::image::ExtendedColorType::Rgb8).map_err(enc)?;
            }
            Some(q) => {
                let encoder = ::image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, q.clamp(1, 100));
                ::image::ImageEncoder::write_image(encoder, img.as_raw(), img.width(), img.height(), ::image::ExtendedColorType::Rgb8).map_err(enc)?;
            }
        }
        Ok(Bytes::from(out))
    }
}

/// Build settings.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Target shard size: a shard is closed before an image would take it
    /// past this (a single larger image gets a shard of its own).
    pub shard_bytes: u64,
    /// Image objects read at once.
    pub fetch_concurrency: usize,
    pub recode: Recode,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions { shard_bytes: 256 << 20, fetch_concurrency: 16, recode: Recode::Original }
    }
}

/// What one shard upload produced.
struct Written {
    entry: ShardEntry,
}

/// Packs the images `ids` of `split` (read from `data/{split}/{id}.png`,
/// in this order) into `shards/{split}/{set}/shard-{n:05}.tar` and writes
/// `shards/{split}/{set}/index.json` last. `set` is [`format::set_hash`] of
/// the inputs, so building again with the same store contents and options
/// writes the same keys with the same bytes.
///
/// # Errors
/// [`Error::Usage`] for no ids, a zero shard size or concurrency, or a
/// duplicate id; [`Error::NotFound`] naming a missing image or CSV;
/// storage errors naming the shard key; [`Error::BadImage`] when recoding
/// meets an image that does not decode.
pub async fn build(store: &Store, split: Split, ids: &[ImageId], opts: &BuildOptions) -> Result<ShardIndex> {
    if ids.is_empty() {
        return Err(Error::Usage("shard build: no image ids given".into()));
    }
    if opts.shard_bytes == 0 || opts.fetch_concurrency == 0 {
        return Err(Error::Usage("shard build: shard_bytes and fetch_concurrency must be at least 1".into()));
    }
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    if let Some(dup) = ids.iter().find(|id| !seen.insert(*id)) {
        return Err(Error::Usage(format!("shard build: image `{dup}` is listed twice")));
    }
    let source = SourceFiles::of_store(store).await?;
    let recode = opts.recode.recorded();
    let set = set_hash(split, &source, ids, opts.shard_bytes, recode);
    let started = std::time::Instant::now();
    let mut shards: Vec<ShardEntry> = Vec::new();
    let mut next = 0usize;
    let progress = crate::telemetry::Progress::with_unit(format!("{} shards", crate::storage::keys::split_name(split)), ids.len() as u64, "images");
    while next < ids.len() {
        let key = crate::storage::keys::shard(split, &set, shards.len());
        let rest = &ids[next..];
        let written = store
            .put_streamed(&key, |w| write_shard(store, split, rest, opts, &key, w))
            .await?;
        next += written.entry.len();
        progress.inc(written.entry.len() as u64);
        info!(shard = %key, images = written.entry.len(), bytes = written.entry.size, done = next, total = ids.len(), "shard written");
        shards.push(written.entry);
    }
    let index = ShardIndex {
        format: FORMAT.into(),
        split: crate::storage::keys::split_name(split).into(),
        set: set.clone(),
        built_from: source,
        shard_bytes: opts.shard_bytes,
        recode,
        ext: opts.recode.ext().into(),
        images: ids.len() as u64,
        image_bytes: shards.iter().flat_map(|s| s.lengths.iter()).sum(),
        shards,
    };
    let key = index.key();
    store.put(&key, serde_json::to_vec(&index)?).await?;
    info!(index = %key, shards = index.shards.len(), images = index.images, seconds = started.elapsed().as_secs_f64(), "shard set written");
    Ok(index)
}

/// Writes one shard: images from the start of `ids` until the next one
/// would pass the target size. Called again from the start on a retry.
async fn write_shard(
    store: &Store,
    split: Split,
    ids: &[ImageId],
    opts: &BuildOptions,
    key: &str,
    mut w: object_store::buffered::BufWriter,
) -> Result<(object_store::buffered::BufWriter, Written)> {
    let recode = opts.recode;
    let ext = recode.ext();
    let io = |e: std::io::Error| Error::Store { op: "put_streamed", key: key.to_string(), attempts: 1, source: io_to_store(e) };
    let obj = |e: object_store::Error| Error::Store { op: "put_streamed", key: key.to_string(), attempts: 1, source: e };
    let mut images = stream::iter(ids.iter())
        .map(|id| async move {
            let src = store_keys::image(split, id);
            let bytes = store.get(&src).await?;
            let bytes = match recode {
                Recode::Original => bytes,
                r => tokio::task::spawn_blocking(move || r.apply(&src, bytes)).await??,
            };
            Ok::<_, Error>((id, bytes))
        })
        .buffered(opts.fetch_concurrency);
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let mut entry = ShardEntry { key: key.to_string(), size: 0, sha256: String::new(), ids: vec![], offsets: vec![], lengths: vec![], crc32c: vec![] };
    while let Some(got) = images.next().await {
        let (id, bytes) = got?;
        let len = bytes.len() as u64;
        if !entry.ids.is_empty() && size + member_len(len) + END.len() as u64 > opts.shard_bytes {
            break;
        }
        let head = header(&format!("{id}.{ext}"), len)?;
        hash.update(head);
        hash.update(&bytes);
        let pad = &END[..padding(len)];
        hash.update(pad);
        entry.ids.push(id.clone());
        entry.offsets.push(size + format::BLOCK);
        entry.lengths.push(len);
        entry.crc32c.push(crc32c::crc32c(&bytes));
        w.write_all(&head).await.map_err(io)?;
        w.put(bytes).await.map_err(obj)?;
        w.write_all(pad).await.map_err(io)?;
        size += member_len(len);
    }
    drop(images);
    hash.update(END);
    w.write_all(&END).await.map_err(io)?;
    size += END.len() as u64;
    entry.size = size;
    entry.sha256 = hex::encode(hash.finalize());
    Ok((w, Written { entry }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::seed::splitmix;

    pub(crate) async fn store_with(n: usize, seed: u64) -> (Store, Vec<ImageId>, Vec<Bytes>) {
        let store = Store::memory();
        store.put(store_keys::TRAIN, "id,attribute_ids\n").await.unwrap();
        store.put(store_keys::SAMPLE_SUBMISSION, "id,attribute_ids\n").await.unwrap();
        let mut ids = Vec::new();
        let mut blobs = Vec::new();
        for i in 0..n {
            let id = ImageId::new(&format!("{:016x}", splitmix(seed ^ i as u64))).unwrap();
            // Lengths from 1 byte to a few blocks, so padding varies.
            let len = 1 + (splitmix(i as u64 + 99) % 2000) as usize;
            let body: Vec<u8> = (0..len).map(|k| splitmix((i * 7919 + k) as u64) as u8).collect();
            store.put(&store_keys::image(Split::Train, &id), body.clone()).await.unwrap();
            ids.push(id);
            blobs.push(Bytes::from(body));
        }
        (store, ids, blobs)
    }

    #[tokio::test]
    async fn a_build_packs_every_image_once_and_is_byte_identical_when_repeated() {
        let (store, ids, blobs) = store_with(40, 1).await;
        let opts = BuildOptions { shard_bytes: 8 * 1024, fetch_concurrency: 3, recode: Recode::Original };
        let index = build(&store, Split::Train, &ids, &opts).await.unwrap();
        assert!(index.shards.len() > 3, "{} shards", index.shards.len());
        let flat: Vec<&ImageId> = index.shards.iter().flat_map(|s| s.ids.iter()).collect();
        assert_eq!(flat, ids.iter().collect::<Vec<_>>(), "the given order, each once");
        for s in &index.shards {
            let bytes = store.get(&s.key).await.unwrap();
            assert_eq!(bytes.len() as u64, s.size);
            assert!(s.size <= opts.shard_bytes || s.len() == 1, "{} > target", s.size);
            assert_eq!(hex::encode(Sha256::digest(&bytes)), s.sha256);
            for j in 0..s.len() {
                let i = ids.iter().position(|x| x == &s.ids[j]).unwrap();
                assert_eq!(&bytes[s.range(j).start as usize..s.range(j).end as usize], &blobs[i][..]);
            }
        }
        let first: Vec<Bytes> = futures::future::try_join_all(index.shards.iter().map(|s| store.get(&s.key))).await.unwrap();
        let again = build(&store, Split::Train, &ids, &opts).await.unwrap();
        assert_eq!(again, index);
        let second: Vec<Bytes> = futures::future::try_join_all(again.shards.iter().map(|s| store.get(&s.key))).await.unwrap();
        assert_eq!(first, second, "same inputs, same bytes");
        let loaded = ShardIndex::load(&store, &index.key()).await.unwrap();
        assert_eq!(loaded, index);
    }

    #[tokio::test]
    async fn a_missing_image_or_duplicate_id_fails_the_build_naming_it() {
        let (store, mut ids, _) = store_with(5, 2).await;
        let ghost = ImageId::new("00000000deadbeef").unwrap();
        ids.push(ghost.clone());
        let e = build(&store, Split::Train, &ids, &BuildOptions::default()).await.unwrap_err().to_string();
        assert!(e.contains("data/train/00000000deadbeef.png"), "{e}");
        ids.pop();
        ids.push(ids[0].clone());
        let e = build(&store, Split::Train, &ids, &BuildOptions::default()).await.unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn recoding_shrinks_the_short_side_and_keeps_small_images_whole() {
        let img = ::image::RgbImage::from_fn(900, 1500, |x, y| ::image::Rgb([(x % 256) as u8, (y % 256) as u8, 9]));
        let mut png = Vec::new();
        ::image::DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut png), ::image::ImageFormat::Png).unwrap();
        let png = Bytes::from(png);
        let small = Recode::Png { shortest_side: 640 }.apply("a.png", png.clone()).unwrap();
        let back = decode("a.png", &small, u64::MAX).unwrap();
        assert_eq!(back.dimensions(), (640, 1067));
        let jpg = Recode::Jpeg { shortest_side: 2000, quality: 95 }.apply("a.png", png.clone()).unwrap();
        assert_eq!(decode("a.jpg", &jpg, u64::MAX).unwrap().dimensions(), (900, 1500));
        assert_eq!(Recode::Original.apply("a.png", png.clone()).unwrap(), png);
        assert!(Recode::Png { shortest_side: 10 }.apply("bad.png", Bytes::from_static(b"nope")).is_err());
    }
}
