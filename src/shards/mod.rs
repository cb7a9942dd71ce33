//! Image shards (image stage): the training or test images packed into a few
//! large tar objects plus one JSON index, so that a fold job on a cloud GPU
//! reads its epoch as a few hundred large sequential reads instead of
//! 100,000 small GETs (at 20-50 ms per request and 16 requests in flight,
//! per-object reads cap out at a few hundred images/s; one GPU trains on
//! thousands). Reads `data/{split}/{id}.png`, `data/train.csv` and
//! `data/sample_submission.csv`; writes `shards/{split}/{set}/shard-{n:05}.tar`
//! and `shards/{split}/{set}/index.json` ([`keys`]).
//!
//! # Design
//!
//! Taken from WebDataset (`webdataset/webdataset`): the container is a plain
//! POSIX tar, one member `{id}.png` per image (the WebDataset sample key is
//! the image id, the extension names the field), so `tar tf`, Python's
//! `tarfile` and `webdataset.WebDataset(urls)` open a shard as it is. Its
//! epoch is a shard-order shuffle followed by an in-memory shuffle buffer
//! (`filters._shuffle`: fill the buffer, then pick a random slot and swap
//! the last sample into it); [`read`] uses the same two stages. Unlike
//! WebDataset's default (an rng seeded from the pid and the clock, shards
//! handed to DataLoader workers as they ask), every random choice here is
//! drawn from `(seed, epoch)` and the shards in flight are consumed in a
//! fixed round-robin, so the order never depends on timing. WebDataset
//! splits shards over nodes and workers (`split_by_node`,
//! `split_by_worker`: `islice(rank, None, world)`); a fold job here is one
//! process, so no split is done (see `docs/shards.md`).
//!
//! Taken from MosaicML streaming (`mosaicml/streaming`): a separate index
//! with every sample's byte offset (MDS keeps per-shard offset tables and an
//! `index.json` with each shard's size and hashes), which gives random
//! access to one sample by a ranged read, and its resumption model: the
//! epoch's whole sample order is a pure function of `(seed, epoch)` and the
//! shard sizes (`get_shuffle_py1s`: shard spans shuffled with
//! `default_rng(seed)`, then within each node's span list with
//! `default_rng(seed + epoch)`), so resuming at `sample_in_epoch` drops the
//! first samples of that order instead of replaying the stream. Here the
//! shuffle buffer is simulated on sample numbers alone (the index knows
//! every sample), so a resume downloads only the samples still to come (the
//! ones sitting in the buffer at that point and everything after), never
//! the ones already yielded.
//!
//! Integrity: the index records a CRC32C of every image's bytes (checked on
//! every read) and the size and sha256 of every shard; the set records the
//! sha256 of the `train.csv` and `sample_submission.csv` it was built from,
//! and [`ShardIndex::check_source`] refuses a set built from other data.
//! Errors are [`ShardError`]s naming the shard key and the image id.

pub mod format;
pub mod read;
pub mod write;

pub use format::{ShardEntry, ShardIndex, SourceFiles};
pub use read::{plan_epoch, EpochOptions, EpochPlan, EpochReader, Sample, ShardSet};
pub use write::{build, BuildOptions, Recode};

use crate::storage::keys::Split;

/// Why a shard set cannot be used. Every variant names the object and the
/// image at fault; none of them is ever skipped silently.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard `{shard}` is truncated: the index says {expected} bytes, the store has {found}; image `{id}` lies past the end; rebuild the shard set (the shard's images are still under data/) or restore the object")]
    Truncated { shard: String, expected: u64, found: u64, id: String },

    #[error("shard `{shard}`: the bytes of image `{id}` (offset {offset}, {length} bytes) have CRC32C {found:08x}, index `{index}` says {expected:08x}; the shard and its index disagree: rebuild the shard set")]
    Checksum { index: String, shard: String, id: String, offset: u64, length: u64, expected: u32, found: u32 },

    #[error("shard `{shard}` has sha256 {found}, index `{index}` says {expected}; the shard was changed after the set was built: rebuild the shard set")]
    ShardHash { index: String, shard: String, expected: String, found: String },

    #[error("image `{id}` is not in shard set `{index}` ({missing} of the requested ids are missing); build the shard set from the same data/train.csv and data/sample_submission.csv as the spec")]
    MissingId { index: String, id: String, missing: usize },

    #[error("shard set `{index}` was built from `{file}` with sha256 {built}, but the store's `{file}` has sha256 {found}; a shard set built from other data is never used: rebuild it for this data")]
    OtherData { index: String, file: String, built: String, found: String },

    #[error("`{key}` is not a valid shard index: {reason}; rebuild the shard set")]
    BadIndex { key: String, reason: String },
}

/// The object keys of shard sets.
pub mod keys {
    use super::Split;

    /// `train` or `test`.
    pub fn split_name(split: Split) -> &'static str {
        match split {
            Split::Train => "train",
            Split::Test => "test",
        }
    }

    /// Folder of one shard set: `shards/{split}/{set}`.
    pub fn set_dir(split: Split, set: &str) -> String {
        format!("shards/{}/{set}", split_name(split))
    }

    /// `shards/{split}/{set}/shard-{n:05}.tar`.
    pub fn shard(split: Split, set: &str, n: usize) -> String {
        format!("{}/shard-{n:05}.tar", set_dir(split, set))
    }

    /// `shards/{split}/{set}/index.json`, written last: its presence
    /// commits the set.
    pub fn index(split: Split, set: &str) -> String {
        format!("{}/index.json", set_dir(split, set))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        assert_eq!(keys::shard(Split::Train, "abcd", 7), "shards/train/abcd/shard-00007.tar");
        assert_eq!(keys::index(Split::Test, "abcd"), "shards/test/abcd/index.json");
    }

    #[test]
    fn errors_name_the_shard_and_the_image() {
        let e = ShardError::Checksum { index: "i.json".into(), shard: "s.tar".into(), id: "0123456789ab".into(), offset: 512, length: 9, expected: 1, found: 2 };
        let text = e.to_string();
        assert!(text.contains("s.tar") && text.contains("0123456789ab") && text.contains("rebuild"), "{text}");
    }
}
