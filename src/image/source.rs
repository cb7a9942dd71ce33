//! Where the loader's image bytes come from (image stage): the spec's
//! `[image] source` and `[image.shards]` settings, and the [`Source`] trait
//! the loader reads through. [`Objects`] reads one object per image
//! (`data/{split}/{id}.png`, through the store's cache); the shard sources
//! (`shards::source`) read a shard set sequentially or by id. Touches the
//! store only through a source.

use super::loader::Item;
use crate::error::Result;
use crate::storage::Store;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Where fold jobs read images from (`[image] source`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageSource {
    /// One object per image, `data/{split}/{id}.png` (the default).
    #[default]
    Objects,
    /// The shard sets `imet shard` builds: training epochs read the shards
    /// sequentially, validation and prediction read their images by id.
    Shards,
    /// The training order of `Shards`, every image read as its own object:
    /// a run that must end with the same weights as `Shards` (a check of
    /// the shard sets against the objects they were built from).
    ShardOrder,
}

impl ImageSource {
    pub fn is_default(&self) -> bool {
        *self == ImageSource::Objects
    }

    /// Whether fold jobs open the shard sets (`shards` or `shard_order`).
    pub fn uses_shards(&self) -> bool {
        !matches!(self, ImageSource::Objects)
    }
}

/// How images are stored in a shard set (`[image.shards] recode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ShardRecode {
    /// The stored objects' bytes, unchanged.
    #[default]
    Original,
    /// Decoded, shortest side reduced to at most `shortest_side`, PNG.
    Png { shortest_side: u32 },
    /// Decoded, shortest side reduced to at most `shortest_side`, JPEG at
    /// `quality` (lossy).
    Jpeg { shortest_side: u32, quality: u8 },
}

/// The spec's `[image.shards]` table: how `imet shard` builds a set and how
/// fold jobs read it when `[image] source = "shards"`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShardsSection {
    /// Target shard size in MiB.
    #[serde(default = "default_shard_mb")]
    pub shard_mb: u64,
    /// What each image is stored as.
    #[serde(default)]
    pub recode: ShardRecode,
    /// Image objects read at once while building.
    #[serde(default = "default_build_concurrency")]
    pub build_concurrency: usize,
    /// Images in the training epoch's shuffle buffer.
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
    /// Shards read and interleaved at once in a training epoch.
    #[serde(default = "default_shards_in_flight")]
    pub shards_in_flight: usize,
    /// Size of one ranged read of a shard, in MiB.
    #[serde(default = "default_chunk_mb")]
    pub chunk_mb: u64,
}

fn default_shard_mb() -> u64 {
    256
}
fn default_build_concurrency() -> usize {
    16
}
fn default_shuffle_buffer() -> usize {
    4096
}
fn default_shards_in_flight() -> usize {
    4
}
fn default_chunk_mb() -> u64 {
    16
}

impl Default for ShardsSection {
    fn default() -> Self {
        ShardsSection {
            shard_mb: default_shard_mb(),
            recode: ShardRecode::Original,
            build_concurrency: default_build_concurrency(),
            shuffle_buffer: default_shuffle_buffer(),
            shards_in_flight: default_shards_in_flight(),
            chunk_mb: default_chunk_mb(),
        }
    }
}

impl ShardsSection {
    pub fn is_default(&self) -> bool {
        *self == ShardsSection::default()
    }

    /// Range checks; messages name the field as `image.shards.field`.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let ones = [
            ("shard_mb", self.shard_mb as usize),
            ("build_concurrency", self.build_concurrency),
            ("shuffle_buffer", self.shuffle_buffer),
            ("shards_in_flight", self.shards_in_flight),
            ("chunk_mb", self.chunk_mb as usize),
        ];
        if let Some((name, _)) = ones.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`image.shards.{name}` must be at least 1"));
        }
        if self.shard_mb > 1 << 20 {
            return Err(format!("`image.shards.shard_mb` = {}: at most 1048576 (1 TiB)", self.shard_mb));
        }
        match self.recode {
            ShardRecode::Png { shortest_side: 0 } | ShardRecode::Jpeg { shortest_side: 0, .. } => {
                Err("`image.shards.recode.shortest_side` must be at least 1".into())
            }
            ShardRecode::Jpeg { quality, .. } if !(1..=100).contains(&quality) => {
                Err(format!("`image.shards.recode.quality` = {quality}: use 1 to 100"))
            }
            _ => Ok(()),
        }
    }
}

/// Where a loader reads image bytes. The loader asks once per epoch
/// ([`Source::open`], with the epoch's whole order) and then batch by batch
/// ([`EpochReads::read`], the chunks of that order in turn).
pub trait Source: Send + Sync {
    /// The reads of one epoch whose batches visit `order` (indices into
    /// `items`), chunk after chunk, from position `start` of `order` on
    /// (the images a resumed epoch already trained on are not read).
    ///
    /// # Errors
    /// When the epoch cannot be read at all (an image the source lacks).
    fn open(&self, epoch: u64, items: Arc<Vec<Item>>, order: &[usize], start: usize) -> Result<Box<dyn EpochReads>>;

    /// A short description for logs (`objects`, `shards (sequential) ...`).
    fn describe(&self) -> String;
}

/// One epoch's reads.
pub trait EpochReads: Send {
    /// The bytes of the items `chunk` (the next chunk of the epoch's
    /// order), in its order: per item its bytes or its read error.
    ///
    /// # Errors
    /// When the whole batch fails (a broken shard).
    fn read<'a>(&'a mut self, chunk: &'a [usize]) -> BoxFuture<'a, Result<Vec<Result<Bytes>>>>;
}

/// One object per image, read through the store's cache, `concurrency`
/// at a time.
pub struct Objects {
    pub store: Store,
    pub concurrency: usize,
}

impl Source for Objects {
    fn open(&self, _epoch: u64, items: Arc<Vec<Item>>, _order: &[usize], _start: usize) -> Result<Box<dyn EpochReads>> {
        Ok(Box::new(ObjectReads { store: self.store.clone(), concurrency: self.concurrency.max(1), items }))
    }

    fn describe(&self) -> String {
        format!("objects ({} reads in flight)", self.concurrency)
    }
}

struct ObjectReads {
    store: Store,
    concurrency: usize,
    items: Arc<Vec<Item>>,
}

impl EpochReads for ObjectReads {
    fn read<'a>(&'a mut self, chunk: &'a [usize]) -> BoxFuture<'a, Result<Vec<Result<Bytes>>>> {
        // Owned keys and store handles: a boxed future cannot hold
        // closures borrowing `self` across the stream's items.
        let keys: Vec<String> = chunk.iter().map(|&i| self.items[i].key.clone()).collect();
        let store = self.store.clone();
        let concurrency = self.concurrency;
        Box::pin(async move {
            let got = stream::iter(keys)
                .map(move |key| {
                    let store = store.clone();
                    async move { store.get_cached(&key).await }
                })
                .buffered(concurrency)
                .collect()
                .await;
            Ok(got)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_settings_default_to_nothing_in_the_spec_and_check_their_ranges() {
        let s: ShardsSection = toml::from_str("").unwrap();
        assert!(s.is_default());
        let s: ShardsSection = toml::from_str("shard_mb = 64\nrecode = { kind = \"jpeg\", shortest_side = 640, quality = 90 }").unwrap();
        assert_eq!(s.recode, ShardRecode::Jpeg { shortest_side: 640, quality: 90 });
        assert!(s.validate().is_ok());
        let bad = ShardsSection { shuffle_buffer: 0, ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("image.shards.shuffle_buffer"));
        let bad = ShardsSection { recode: ShardRecode::Jpeg { shortest_side: 9, quality: 0 }, ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("quality"));
        assert!(toml::from_str::<ShardsSection>("shard_gb = 1").unwrap_err().to_string().contains("shard_gb"));
        assert_eq!(toml::from_str::<ImageSourceHolder>("source = \"shards\"").unwrap().source, ImageSource::Shards);
        assert!(toml::from_str::<ImageSourceHolder>("source = \"tar\"").is_err());
    }

    #[derive(Deserialize)]
    struct ImageSourceHolder {
        source: ImageSource,
    }
}
