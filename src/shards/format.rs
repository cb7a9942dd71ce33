//! The shard format: POSIX (ustar) tar members `{id}.{ext}` with fixed
//! headers (mode 0444, owner 0, mtime 0, so the same images give the same
//! bytes), and the set's JSON index (`index.json`): per shard its key, size,
//! sha256 and, column by column, each image's id, data offset, length and
//! CRC32C; per set the split, the sha256 of the CSVs it was built from and
//! the build options.

use super::ShardError;
use crate::ids::ImageId;
use crate::error::{Error, Result};
use crate::storage::keys::Split;
use crate::storage::Store;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Format tag written into every index; readers refuse other values.
pub const FORMAT: &str = "imet-shards/1";

/// Tar block size.
pub const BLOCK: u64 = 512;

/// Bytes a member of `len` data bytes takes: header plus padded data.
pub fn member_len(len: u64) -> u64 {
    BLOCK + len.div_ceil(BLOCK) * BLOCK
}

/// The end-of-archive marker: two zero blocks.
pub const END: [u8; 1024] = [0; 1024];

/// The 512-byte ustar header of member `name` holding `len` bytes.
///
/// # Errors
/// [`Error::Usage`] when `name` does not fit a ustar header.
pub fn header(name: &str, len: u64) -> Result<[u8; 512]> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).map_err(|e| Error::Usage(format!("tar member name `{name}`: {e}")))?;
    h.set_size(len);
    h.set_mode(0o444);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut out = [0u8; 512];
    out.copy_from_slice(h.as_bytes());
    Ok(out)
}

/// Zero padding after `len` data bytes.
pub fn padding(len: u64) -> usize {
    ((BLOCK - len % BLOCK) % BLOCK) as usize
}

/// The sha256 of the inputs a set was built from (both files are always
/// recorded: the test split's ids come from the submission file, the
/// training split's from `train.csv`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFiles {
    /// sha256 of `data/train.csv`.
    pub train_csv: String,
    /// sha256 of `data/sample_submission.csv`.
    pub sample_submission_csv: String,
}

impl SourceFiles {
    /// Hashes the two CSVs in `store`.
    ///
    /// # Errors
    /// [`Error::NotFound`] naming a missing file.
    pub async fn of_store(store: &Store) -> Result<SourceFiles> {
        let (t, s) = tokio::try_join!(store.get(crate::storage::keys::TRAIN), store.get(crate::storage::keys::SAMPLE_SUBMISSION))?;
        Ok(SourceFiles { train_csv: hex::encode(Sha256::digest(&t)), sample_submission_csv: hex::encode(Sha256::digest(&s)) })
    }
}

/// One shard of a set. The per-image fields are parallel columns in the
/// order of the members in the tar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    pub key: String,
    /// Object size in bytes (end-of-archive blocks included).
    pub size: u64,
    /// sha256 of the whole object.
    pub sha256: String,
    pub ids: Vec<ImageId>,
    /// Offset of each image's first data byte (after its tar header).
    pub offsets: Vec<u64>,
    pub lengths: Vec<u64>,
    /// CRC32C (Castagnoli) of each image's bytes.
    pub crc32c: Vec<u32>,
}

impl ShardEntry {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Byte range of image `j` in the shard.
    pub fn range(&self, j: usize) -> std::ops::Range<u64> {
        self.offsets[j]..self.offsets[j] + self.lengths[j]
    }
}

/// How images were transformed on the way into the set (the set's bytes
/// are the originals only for [`Recoded::Original`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Recoded {
    /// The stored objects' bytes, unchanged (lossless).
    Original,
    /// Decoded, shortest side reduced to at most `shortest_side`, PNG.
    Png { shortest_side: u32 },
    /// Decoded, shortest side reduced to at most `shortest_side`, JPEG.
    Jpeg { shortest_side: u32, quality: u8 },
}

/// The index of one shard set (`shards/{split}/{set}/index.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardIndex {
    /// Always [`FORMAT`].
    pub format: String,
    /// `train` or `test`: every image of the set comes from `data/{split}/`.
    pub split: String,
    /// The set's hash (its folder name), from its inputs and options.
    pub set: String,
    pub built_from: SourceFiles,
    /// Target shard size the set was built with.
    pub shard_bytes: u64,
    pub recode: Recoded,
    /// Extension of every member (`png` or `jpg`).
    pub ext: String,
    /// Number of images.
    pub images: u64,
    /// Sum of the images' byte lengths.
    pub image_bytes: u64,
    pub shards: Vec<ShardEntry>,
}

impl ShardIndex {
    /// The split the set holds.
    pub fn split(&self) -> Split {
        if self.split == "test" {
            Split::Test
        } else {
            Split::Train
        }
    }

    /// The index's own key.
    pub fn key(&self) -> String {
        crate::storage::keys::shard_index(self.split(), &self.set)
    }

    /// Reads and validates the index at `key`.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`ShardError::BadIndex`] naming `key` for
    /// malformed JSON, another format, or inconsistent columns.
    pub async fn load(store: &Store, key: &str) -> Result<ShardIndex> {
        let bytes = store.get(key).await?;
        ShardIndex::parse(key, &bytes)
    }

    /// Parses and validates an index read from `key`.
    ///
    /// # Errors
    /// As [`ShardIndex::load`].
    pub fn parse(key: &str, bytes: &[u8]) -> Result<ShardIndex> {
        let bad = |reason: String| Error::from(ShardError::BadIndex { key: key.to_string(), reason });
        let index: ShardIndex = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        index.validate().map_err(bad)?;
        Ok(index)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format `{}`, this build reads `{FORMAT}`", self.format));
        }
        if self.split != "train" && self.split != "test" {
            return Err(format!("split `{}` is neither train nor test", self.split));
        }
        let mut seen = std::collections::HashSet::new();
        let mut images = 0u64;
        let mut bytes = 0u64;
        for s in &self.shards {
            let n = s.ids.len();
            if s.offsets.len() != n || s.lengths.len() != n || s.crc32c.len() != n {
                return Err(format!("shard `{}` has {} ids but {} offsets, {} lengths, {} checksums", s.key, n, s.offsets.len(), s.lengths.len(), s.crc32c.len()));
            }
            let mut end = 0u64;
            for j in 0..n {
                if s.offsets[j] < end + BLOCK || s.offsets[j] + s.lengths[j] > s.size {
                    return Err(format!("shard `{}`: image `{}` at offset {} (+{}) overlaps the previous member or the end ({} bytes)", s.key, s.ids[j], s.offsets[j], s.lengths[j], s.size));
                }
                end = s.offsets[j] + s.lengths[j];
                if !seen.insert(&s.ids[j]) {
                    return Err(format!("image `{}` appears twice (again in shard `{}`)", s.ids[j], s.key));
                }
                bytes += s.lengths[j];
            }
            images += n as u64;
        }
        if images != self.images || bytes != self.image_bytes {
            return Err(format!("header says {} images / {} bytes, the shards hold {images} / {bytes}", self.images, self.image_bytes));
        }
        Ok(())
    }

    /// Refuses a set built from CSVs other than the store's.
    ///
    /// # Errors
    /// [`ShardError::OtherData`] naming the index and the file that
    /// differs; [`Error::NotFound`] when a CSV is missing.
    pub async fn check_source(&self, store: &Store) -> Result<()> {
        self.check_source_against(&SourceFiles::of_store(store).await?)
    }

    /// As [`ShardIndex::check_source`], against hashes computed already.
    ///
    /// # Errors
    /// [`ShardError::OtherData`].
    pub fn check_source_against(&self, found: &SourceFiles) -> Result<()> {
        let pairs = [
            (crate::storage::keys::TRAIN, &self.built_from.train_csv, &found.train_csv),
            (crate::storage::keys::SAMPLE_SUBMISSION, &self.built_from.sample_submission_csv, &found.sample_submission_csv),
        ];
        for (file, built, found) in pairs {
            if built != found {
                return Err(ShardError::OtherData { index: self.key(), file: file.into(), built: built.clone(), found: found.clone() }.into());
            }
        }
        Ok(())
    }

    /// `(shard, position in shard)` of every image.
    pub fn locations(&self) -> HashMap<ImageId, (u32, u32)> {
        let mut m = HashMap::with_capacity(self.images as usize);
        for (s, e) in self.shards.iter().enumerate() {
            for (j, id) in e.ids.iter().enumerate() {
                m.insert(id.clone(), (s as u32, j as u32));
            }
        }
        m
    }
}

/// The set hash (16 hex digits of a sha256) of a build: the format, the
/// split, the source CSVs, the ids in order, the target shard size and the
/// recoding. The same inputs always give the same folder.
pub fn set_hash(split: Split, source: &SourceFiles, ids: &[ImageId], shard_bytes: u64, recode: Recoded) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update([0]);
    h.update(crate::storage::keys::split_name(split).as_bytes());
    h.update([0]);
    h.update(source.train_csv.as_bytes());
    h.update([0]);
    h.update(source.sample_submission_csv.as_bytes());
    h.update([0]);
    for id in ids {
        h.update(id.as_str().as_bytes());
        h.update([b'\n']);
    }
    h.update(shard_bytes.to_le_bytes());
    h.update(serde_json::to_vec(&recode).unwrap_or_default());
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> ShardEntry {
        ShardEntry {
            key: "shards/train/x/shard-00000.tar".into(),
            size: 3072,
            sha256: "00".into(),
            ids: vec![ImageId::new("0123456789ab").unwrap(), ImageId::new("0123456789ac").unwrap()],
            offsets: vec![512, 1536],
            lengths: vec![10, 20],
            crc32c: vec![1, 2],
        }
    }

    fn index() -> ShardIndex {
        ShardIndex {
            format: FORMAT.into(),
            split: "train".into(),
            set: "x".into(),
            built_from: SourceFiles { train_csv: "a".into(), sample_submission_csv: "b".into() },
            shard_bytes: 1 << 20,
            recode: Recoded::Original,
            ext: "png".into(),
            images: 2,
            image_bytes: 30,
            shards: vec![entry()],
        }
    }

    #[test]
    fn headers_are_valid_ustar_that_the_tar_crate_reads_back() {
        let mut tarball = Vec::new();
        for (name, data) in [("0123456789ab.png", &b"hello"[..]), ("0123456789ac.png", &[7u8; 600][..])] {
            tarball.extend_from_slice(&header(name, data.len() as u64).unwrap());
            tarball.extend_from_slice(data);
            tarball.extend(std::iter::repeat_n(0u8, padding(data.len() as u64)));
        }
        tarball.extend_from_slice(&END);
        assert_eq!(tarball.len() as u64, member_len(5) + member_len(600) + 1024);
        let mut ar = tar::Archive::new(&tarball[..]);
        let mut got = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().to_string();
            assert_eq!(e.header().mode().unwrap(), 0o444);
            assert_eq!(e.header().mtime().unwrap(), 0);
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            got.push((name, data.len()));
        }
        assert_eq!(got, vec![("0123456789ab.png".to_string(), 5), ("0123456789ac.png".to_string(), 600)]);
    }

    #[test]
    fn an_index_round_trips_and_inconsistent_ones_are_refused() {
        let idx = index();
        let json = serde_json::to_vec(&idx).unwrap();
        assert_eq!(ShardIndex::parse("i.json", &json).unwrap(), idx);
        let mut twice = idx.clone();
        twice.shards.push(ShardEntry { key: "other".into(), ..entry() });
        twice.images = 4;
        twice.image_bytes = 60;
        let e = ShardIndex::parse("i.json", &serde_json::to_vec(&twice).unwrap()).unwrap_err().to_string();
        assert!(e.contains("i.json") && e.contains("appears twice"), "{e}");
        let mut overlap = idx.clone();
        overlap.shards[0].offsets[1] = 600;
        let e = ShardIndex::parse("i.json", &serde_json::to_vec(&overlap).unwrap()).unwrap_err().to_string();
        assert!(e.contains("overlaps"), "{e}");
        let mut other = idx;
        other.format = "imet-shards/9".into();
        let e = ShardIndex::parse("i.json", &serde_json::to_vec(&other).unwrap()).unwrap_err().to_string();
        assert!(e.contains("imet-shards/9"), "{e}");
        assert!(ShardIndex::parse("i.json", b"{\"format\": 1}").is_err());
    }

    #[test]
    fn a_set_built_from_other_csvs_is_refused_naming_the_file() {
        let idx = index();
        assert!(idx.check_source_against(&SourceFiles { train_csv: "a".into(), sample_submission_csv: "b".into() }).is_ok());
        let e = idx.check_source_against(&SourceFiles { train_csv: "a".into(), sample_submission_csv: "c".into() }).unwrap_err();
        assert!(matches!(e, Error::Shard(ShardError::OtherData { .. })), "{e}");
        let text = e.to_string();
        assert!(text.contains("data/sample_submission.csv") && text.contains("shards/train/x/index.json"), "{text}");
    }

    #[test]
    fn the_set_hash_changes_with_every_input() {
        let src = SourceFiles { train_csv: "a".into(), sample_submission_csv: "b".into() };
        let ids = vec![ImageId::new("0123456789ab").unwrap(), ImageId::new("0123456789ac").unwrap()];
        let base = set_hash(Split::Train, &src, &ids, 100, Recoded::Original);
        assert_eq!(base.len(), 16);
        assert_eq!(base, set_hash(Split::Train, &src, &ids, 100, Recoded::Original));
        assert_ne!(base, set_hash(Split::Test, &src, &ids, 100, Recoded::Original));
        assert_ne!(base, set_hash(Split::Train, &src, &ids[..1], 100, Recoded::Original));
        assert_ne!(base, set_hash(Split::Train, &src, &ids, 101, Recoded::Original));
        assert_ne!(base, set_hash(Split::Train, &src, &ids, 100, Recoded::Png { shortest_side: 640 }));
        let other = SourceFiles { train_csv: "z".into(), ..src };
        assert_ne!(base, set_hash(Split::Train, &other, &ids, 100, Recoded::Original));
    }
}
