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
pub mod job;
pub mod read;
pub mod source;
pub mod write;

pub use format::{ShardEntry, ShardIndex, SourceFiles};
pub use read::{plan_epoch, EpochOptions, EpochPlan, EpochReader, Sample, ShardSet};
pub use write::{build, BuildOptions, Recode};


pub use crate::error::ShardError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_shard_and_the_image() {
        let e = ShardError::Checksum { index: "i.json".into(), shard: "s.tar".into(), id: "0123456789ab".into(), offset: 512, length: 9, expected: 1, found: 2 };
        let text = e.to_string();
        assert!(text.contains("s.tar") && text.contains("0123456789ab") && text.contains("rebuild"), "{text}");
    }
}
