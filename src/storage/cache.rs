//! Read-through local disk cache for input objects (images, CSVs), so a
//! second epoch or a second job on the same machine does not fetch them
//! again. Entries are written to a temporary file and renamed into place,
//! so concurrent processes sharing the folder never see a partial entry;
//! eviction (least recently used first) runs under an exclusive file lock
//! when the folder grows past its bound. A cache that cannot take an entry
//! (its disk is full, its folder read-only) costs only the caching: the
//! caller gets the bytes it fetched, and the first such failure is logged.

use crate::error::{Error, Result};
use bytes::Bytes;
use fs2::FileExt;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

/// Where the cache lives and how large it may grow.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheOptions {
    pub dir: PathBuf,
    /// Upper bound on the bytes kept; eviction brings it back to 90%.
    pub max_bytes: u64,
}

/// A bounded, process-safe disk cache.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    max_bytes: u64,
    /// Bytes believed to be in the cache (rescanned under the lock on eviction).
    approx_bytes: AtomicU64,
    /// Whether a failed insert was already logged as a warning.
    warned: AtomicBool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Cache { path: path.to_path_buf(), source }
}

impl Cache {
    /// Opens (creating) the cache folder.
    ///
    /// # Errors
    /// [`Error::Cache`] when the folder cannot be created.
    pub fn open(opts: CacheOptions) -> Result<Cache> {
        std::fs::create_dir_all(opts.dir.join("tmp")).map_err(io(&opts.dir))?;
        let used = scan(&opts.dir)?.iter().map(|e| e.1).sum();
        Ok(Cache { dir: opts.dir, max_bytes: opts.max_bytes, approx_bytes: AtomicU64::new(used), warned: AtomicBool::new(false) })
    }

    fn entry(&self, name: &str) -> PathBuf {
        let h = hex::encode(Sha256::digest(name.as_bytes()));
        self.dir.join(&h[..2]).join(&h[2..])
    }

    /// The cached bytes of `name`, marking the entry as recently used.
    pub fn lookup(&self, name: &str) -> Result<Option<Bytes>> {
        let path = self.entry(name);
        match std::fs::read(&path) {
            Ok(b) => {
                if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
                Ok(Some(Bytes::from(b)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Stores `bytes` under `name`, evicting old entries when over the bound.
    pub fn insert(&self, name: &str, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 > self.max_bytes {
            return Ok(());
        }
        let path = self.entry(name);
        let parent = path.parent().expect("cache entries live in a two-level folder");
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let tmp_dir = self.dir.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io(&tmp_dir))?;
        std::io::Write::write_all(&mut tmp, bytes).map_err(io(tmp.path()))?;
        tmp.persist(&path).map_err(|e| io(&path)(e.error))?;
        let used = self.approx_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed) + bytes.len() as u64;
        if used > self.max_bytes {
            self.evict()?;
        }
        Ok(())
    }

    /// [`Cache::insert`], with a failure logged instead of returned (a
    /// warning the first time, then at debug level): what a reader that
    /// already holds the bytes wants. Returns whether the entry was stored.
    pub fn insert_or_warn(&self, name: &str, bytes: &[u8]) -> bool {
        match self.insert(name, bytes) {
            Ok(()) => true,
            Err(e) => {
                if self.warned.swap(true, Ordering::Relaxed) {
                    tracing::debug!(error = %e, entry = name, "not cached");
                } else {
                    tracing::warn!(
                        error = %e,
                        entry = name,
                        "the local cache cannot take entries; reading on without caching (free space in the cache folder or lower storage.cache_max_gb)"
                    );
                }
                false
            }
        }
    }

    /// Deletes least recently used entries until the cache is at 90% of its bound.
    pub fn evict(&self) -> Result<()> {
        let lock_path = self.dir.join(".lock");
        let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
        lock.lock_exclusive().map_err(io(&lock_path))?;
        let mut entries = scan(&self.dir)?;
        let mut used: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort_by_key(|e| e.2);
        let target = self.max_bytes / 10 * 9;
        for (path, size, _) in entries {
            if used <= target {
                break;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => used -= size,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => used -= size,
                Err(e) => return Err(io(&path)(e)),
            }
        }
        self.approx_bytes.store(used, Ordering::Relaxed);
        FileExt::unlock(&lock).map_err(io(&lock_path))?;
        Ok(())
    }

    /// Bytes currently in the cache (a fresh scan).
    pub fn used_bytes(&self) -> Result<u64> {
        Ok(scan(&self.dir)?.iter().map(|e| e.1).sum())
    }
}

/// Every entry: path, size, last use.
fn scan(dir: &Path) -> Result<Vec<(PathBuf, u64, SystemTime)>> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir).map_err(io(dir))? {
        let shard = shard.map_err(io(dir))?;
        let name = shard.file_name();
        if name.len() != 2 || !shard.path().is_dir() {
            continue;
        }
        let shard_path = shard.path();
        for e in std::fs::read_dir(&shard_path).map_err(io(&shard_path))? {
            let e = e.map_err(io(&shard_path))?;
            if let Ok(meta) = e.metadata() {
                out.push((e.path(), meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_what_was_inserted_and_misses_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(CacheOptions { dir: dir.path().into(), max_bytes: 1 << 20 }).unwrap();
        assert_eq!(cache.lookup("s3://b/data/train/a.png").unwrap(), None);
        cache.insert("s3://b/data/train/a.png", b"png").unwrap();
        assert_eq!(cache.lookup("s3://b/data/train/a.png").unwrap(), Some(Bytes::from_static(b"png")));
    }

    #[test]
    fn stays_within_its_bound_evicting_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(CacheOptions { dir: dir.path().into(), max_bytes: 1000 }).unwrap();
        for i in 0..10 {
            cache.insert(&format!("k{i}"), &[0u8; 300]).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(cache.used_bytes().unwrap() <= 1000);
        assert!(cache.lookup("k9").unwrap().is_some(), "newest entry evicted");
        assert!(cache.lookup("k0").unwrap().is_none(), "oldest entry kept");
    }

    #[test]
    fn concurrent_writers_of_one_entry_leave_a_whole_entry() {
        let dir = tempfile::tempdir().unwrap();
        let opts = CacheOptions { dir: dir.path().into(), max_bytes: 1 << 24 };
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let opts = opts.clone();
                std::thread::spawn(move || {
                    let cache = Cache::open(opts).unwrap();
                    for _ in 0..20 {
                        cache.insert("same", &[7u8; 100_000]).unwrap();
                        if let Some(b) = cache.lookup("same").unwrap() {
                            assert_eq!(b.len(), 100_000);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}
