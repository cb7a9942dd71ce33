//! A store opened from a URL (`file:///abs/path`, `s3://bucket/prefix`,
//! `memory://`) with retries on transient faults. Keys are relative to the
//! URL's prefix (`data/train.csv`, `runs/exp/folds.parquet`). Whole-object
//! writes are atomic on every backend; multipart writes become visible only
//! when complete.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use imet::storage::{keys, Store};
//! let store = Store::open("memory://").unwrap();
//! store.put(keys::LABELS, "attribute_id,attribute_name\n0,tag::men\n").await.unwrap();
//! assert!(store.put_if_absent("runs/e/_SUCCESS.json", "{}").await.unwrap());
//! assert!(!store.put_if_absent("runs/e/_SUCCESS.json", "{}").await.unwrap());
//! let listed = store.list("runs/e").await.unwrap();
//! assert_eq!(listed[0].key, "runs/e/_SUCCESS.json");
//! # });
//! ```

use super::cache::{Cache, CacheOptions};
use crate::error::{is_transient, Error, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// How often and how patiently a failed storage call is retried.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts after the first one.
    #[serde(default = "defaults::retries")]
    pub retries: u32,
    /// First backoff, doubled after each failure up to `max_backoff_ms`.
    #[serde(default = "defaults::initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    #[serde(default = "defaults::max_backoff_ms")]
    pub max_backoff_ms: u64,
}

mod defaults {
    pub fn retries() -> u32 {
        8
    }
    pub fn initial_backoff_ms() -> u64 {
        200
    }
    pub fn max_backoff_ms() -> u64 {
        10_000
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: defaults::retries(),
            initial_backoff_ms: defaults::initial_backoff_ms(),
            max_backoff_ms: defaults::max_backoff_ms(),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt` (1-based retry count).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ms = self.initial_backoff_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
        Duration::from_millis(ms.min(self.max_backoff_ms))
    }
}

/// Options for opening a store.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    pub retry: RetryPolicy,
    /// Read-through cache for input objects (`get_cached`); none when unset.
    pub cache: Option<CacheOptions>,
    /// Extra S3 settings applied after the `AWS_*` variables, as
    /// `(key, value)` pairs named like the variables in lower case
    /// (`aws_endpoint`, `aws_access_key_id`, ...).
    pub s3_config: Vec<(String, String)>,
    /// Do not check S3 reads against ETags (`storage.verify_etags = false`:
    /// buckets whose ETags are not content MD5s, such as SSE-KMS ones).
    pub no_etag_check: bool,
}

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the store's prefix.
    pub key: String,
    pub size: u64,
}

/// An object store rooted at a URL's prefix.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    retry: RetryPolicy,
    cache: Option<Arc<Cache>>,
    lease: super::lease::LeasePolicy,
    /// S3 only, unless turned off: reads are checked against ETags.
    check_etags: bool,
}

/// Multipart part size of [`Store::writer`] (and so of every multipart
/// upload this store makes): the ETag check recomputes S3's multipart
/// ETag with it.
const PART_BYTES: usize = 16 << 20;

/// A body whose MD5 disagrees with the object's ETag: corrupted on the way
/// (transient: the read is repeated).
#[derive(Debug)]
pub struct BodyMismatch {
    pub etag: String,
    pub found: String,
    pub len: usize,
    /// The same bytes came back before.
    pub repeated: bool,
}

impl std::fmt::Display for BodyMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the body read ({} bytes, MD5 {}) does not match the object's ETag {}: corrupted in transit", self.len, self.found, self.etag)?;
        if self.repeated {
            write!(
                f,
                ", and the same bytes came back again: a fault on the way that repeats, or a bucket whose ETags are not content MD5s (SSE-KMS encryption); for the latter set `storage.verify_etags = false`"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for BodyMismatch {}

/// Whether `etag` is S3's ETag of `bytes`: the MD5 of the bytes, or for
/// `…-N` the MD5 of the MD5s of `part`-sized parts, N of them. `None` when
/// `etag` is neither form, or names another part count (another writer's
/// part size): nothing to check.
pub fn etag_matches(etag: &str, bytes: &[u8], part: usize) -> Option<std::result::Result<(), String>> {
    use md5::{Digest, Md5};
    let e = etag.trim_matches('"');
    let (hex, parts) = match e.split_once('-') {
        Some((h, n)) => (h, Some(n.parse::<usize>().ok()?)),
        None => (e, None),
    };
    if hex.len() != 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let found = match parts {
        None => hex::encode(Md5::digest(bytes)),
        Some(n) => {
            if n == 0 || bytes.len().div_ceil(part) != n {
                return None;
            }
            let mut digests = Vec::with_capacity(16 * n);
            for c in bytes.chunks(part) {
                digests.extend_from_slice(&Md5::digest(c));
            }
            format!("{}-{n}", hex::encode(Md5::digest(&digests)))
        }
    };
    Some(if found.eq_ignore_ascii_case(e) { Ok(()) } else { Err(found) })
}

impl Store {
    /// Opens `url` with default options.
    ///
    /// # Errors
    /// [`Error::StoreUrl`] for an unknown scheme or a relative file path.
    pub fn open(url: &str) -> Result<Store> {
        Store::open_with(url, StoreOptions::default())
    }

    /// Opens `url`: `file:///abs/path` (created if missing), `s3://bucket/prefix`
    /// (region, endpoint and credentials from the `AWS_*` variables; plain
    /// http is allowed when `AWS_ENDPOINT`/`AWS_ENDPOINT_URL` is an http URL),
    /// or `memory://` (a fresh in-memory store).
    ///
    /// # Errors
    /// [`Error::StoreUrl`] naming the URL and what is wrong with it.
    pub fn open_with(url: &str, opts: StoreOptions) -> Result<Store> {
        let bad = |reason: String| Error::StoreUrl { url: url.to_string(), reason };
        let (inner, prefix): (Arc<dyn ObjectStore>, Path) = if url == "memory://" || url.starts_with("memory://") {
            (Arc::new(InMemory::new()), Path::from(url.trim_start_matches("memory://")))
        } else if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad("file URLs need an absolute path (file:///abs/path)".into()));
            }
            std::fs::create_dir_all(rest).map_err(|e| bad(format!("cannot create folder: {e}")))?;
            let fs = LocalFileSystem::new_with_prefix(rest).map_err(|e| bad(e.to_string()))?;
            (Arc::new(fs.with_automatic_cleanup(true)), Path::default())
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name".into()));
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            let endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")).ok();
            if let Some(ep) = &endpoint {
                builder = builder.with_endpoint(ep.clone());
                if ep.starts_with("http://") {
                    builder = builder.with_allow_http(true);
                }
            }
            if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
                builder = builder.with_region("us-east-1");
            }
            for (k, v) in &opts.s3_config {
                let key = k.parse().map_err(|e| bad(format!("S3 setting `{k}`: {e}")))?;
                if k == "aws_endpoint" && v.starts_with("http://") {
                    builder = builder.with_allow_http(true);
                }
                builder = builder.with_config(key, v.clone());
            }
            // Retries are ours (whole operation, with logging); the client gets a short budget.
            builder = builder.with_retry(object_store::RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(30),
                backoff: Default::default(),
            });
            let s3 = builder.build().map_err(|e| bad(e.to_string()))?;
            (Arc::new(s3), Path::from(prefix.trim_matches('/')))
        } else {
            return Err(bad("unknown scheme".into()));
        };
        let cache = match opts.cache {
            Some(c) => Some(Arc::new(Cache::open(c)?)),
            None => None,
        };
        let check_etags = url.starts_with("s3://") && !opts.no_etag_check;
        Ok(Store { inner, prefix, url: url.to_string(), retry: opts.retry, cache, lease: Default::default(), check_etags })
    }

    /// A fresh in-memory store (tests, doctests).
    pub fn memory() -> Store {
        Store::open("memory://").expect("memory:// is always a valid store URL")
    }

    /// The URL this store was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// How jobs on this store lease their work ([`super::lease`]).
    pub fn lease_policy(&self) -> &super::lease::LeasePolicy {
        &self.lease
    }

    /// This store with jobs leased by `policy`.
    pub fn with_lease_policy(mut self, policy: super::lease::LeasePolicy) -> Store {
        self.lease = policy;
        self
    }

    /// The underlying object store and the full path of `key` (for
    /// streaming readers and writers).
    pub fn raw(&self, key: &str) -> (Arc<dyn ObjectStore>, Path) {
        (self.inner.clone(), self.path(key))
    }

    fn path(&self, key: &str) -> Path {
        let key = key.trim_matches('/');
        if self.prefix.as_ref().is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    fn rel(&self, p: &Path) -> String {
        let s = p.as_ref();
        let pre = self.prefix.as_ref();
        if pre.is_empty() {
            s.to_string()
        } else {
            s.strip_prefix(pre).map(|r| r.trim_start_matches('/').to_string()).unwrap_or_else(|| s.to_string())
        }
    }

    /// Runs `op` until it succeeds, fails permanently, or retries run out.
    pub async fn with_retry<T, F, Fut>(&self, op: &'static str, key: &str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, object_store::Error>>,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt <= self.retry.retries && is_transient(&e) => {
                    let pause = self.retry.backoff(attempt);
                    warn!(op, key, attempt, error = %e, pause_ms = pause.as_millis() as u64, "transient storage fault; retrying");
                    tokio::time::sleep(pause).await;
                }
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(Error::NotFound {
                        store: self.url.clone(),
                        key: key.to_string(),
                        hint: "check the store URL and that the stage producing it has run".into(),
                    })
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    return Err(Error::AlreadyExists { store: self.url.clone(), key: key.to_string() })
                }
                Err(source) => return Err(Error::Store { op, key: key.to_string(), attempts: attempt, source }),
            }
        }
    }

    /// The whole object at `key`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when absent; [`Error::Store`] after retries.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        crate::fault::point("store.get");
        let path = self.path(key);
        // The MD5 of the last body that disagreed with its ETag.
        let last_mismatch = std::sync::Mutex::new(None::<String>);
        self.with_retry("get", key, || async {
            let got = self.inner.get(&path).await?;
            let etag = got.meta.e_tag.clone();
            let bytes = got.bytes().await?;
            self.check_body(etag.as_deref(), &bytes, &last_mismatch)?;
            Ok(bytes)
        })
        .await
    }

    /// Checks a whole body read from S3 against its ETag (see the module
    /// docs); `last_mismatch` holds the MD5 of the previous attempt's
    /// mismatching body, for the error's advice.
    fn check_body(&self, etag: Option<&str>, bytes: &[u8], last_mismatch: &std::sync::Mutex<Option<String>>) -> std::result::Result<(), object_store::Error> {
        let Some(etag) = etag.filter(|_| self.check_etags) else { return Ok(()) };
        let Some(Err(found)) = etag_matches(etag, bytes, PART_BYTES) else { return Ok(()) };
        let mut last = last_mismatch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let repeated = last.as_deref() == Some(found.as_str());
        *last = Some(found.clone());
        Err(object_store::Error::Generic { store: "S3", source: Box::new(BodyMismatch { etag: etag.to_string(), found, len: bytes.len(), repeated }) })
    }

    /// Like [`Store::get`], but `None` when the object does not exist.
    pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>> {
        match self.get(key).await {
            Ok(b) => Ok(Some(b)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads an input object through the local cache when one is configured;
    /// a cache that cannot take the object (full disk) only logs it.
    pub async fn get_cached(&self, key: &str) -> Result<Bytes> {
        match &self.cache {
            None => self.get(key).await,
            Some(cache) => {
                let ns = format!("{}/{}", self.url, key);
                if let Some(b) = cache.lookup(&ns)? {
                    return Ok(b);
                }
                let bytes = self.get(key).await?;
                cache.insert_or_warn(&ns, &bytes);
                Ok(bytes)
            }
        }
    }

    /// Size of the object, or `None` when absent.
    pub async fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key);
        match self.with_retry("head", key, || self.inner.head(&path)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.size(key).await?.is_some())
    }

    /// Writes `bytes` at `key`, replacing any previous object atomically:
    /// readers see the old object or the new one, never a partial one.
    pub async fn put(&self, key: &str, bytes: impl Into<Bytes>) -> Result<()> {
        let path = self.path(key);
        let bytes: Bytes = bytes.into();
        self.with_retry("put", key, || self.inner.put(&path, PutPayload::from(bytes.clone()))).await?;
        Ok(())
    }

    /// Writes `bytes` at `key` only if nothing is there yet (`If-None-Match: *`
    /// on S3, a hard link on local disk). Returns `false` when another
    /// writer got there first.
    ///
    /// A retry after a lost response can find its own write already there;
    /// callers that need to tell the two apart compare contents.
    pub async fn put_if_absent(&self, key: &str, bytes: impl Into<Bytes>) -> Result<bool> {
        let path = self.path(key);
        let bytes: Bytes = bytes.into();
        let opts = || PutOptions { mode: PutMode::Create, ..Default::default() };
        match self
            .with_retry("put_if_absent", key, || self.inner.put_opts(&path, PutPayload::from(bytes.clone()), opts()))
            .await
        {
            Ok(_) => Ok(true),
            Err(Error::AlreadyExists { .. }) => Ok(false),
            Err(Error::Store { source: object_store::Error::Precondition { .. }, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes `key`; deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match self.with_retry("delete", key, || self.inner.delete(&path)).await {
            Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Moves `from` to `to` inside the store (a server-side copy then a
    /// delete on S3, a file rename on a local folder), overwriting `to`.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (a, b) = (self.path(from), self.path(to));
        self.with_retry("rename", from, || self.inner.rename(&a, &b)).await
    }

    /// Every object under `prefix` (recursive), sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let path = self.path(prefix);
        let path = if prefix.is_empty() && self.prefix.as_ref().is_empty() { None } else { Some(path) };
        let mut out: Vec<ObjectInfo> = self
            .with_retry("list", prefix, || async {
                self.inner.list(path.as_ref()).try_collect::<Vec<_>>().await
            })
            .await?
            .into_iter()
            .map(|m| ObjectInfo { key: self.rel(&m.location), size: m.size })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// A streaming multipart writer for `key`; the object appears only when
    /// the writer is shut down successfully (`AsyncWriteExt::shutdown`).
    /// Retrying means writing again from the start: see [`Store::put_streamed`].
    pub fn writer(&self, key: &str) -> BufWriter {
        BufWriter::with_capacity(self.inner.clone(), self.path(key), PART_BYTES)
    }

    /// Streams an object produced by `produce` into `key`, restarting the
    /// whole upload on a transient fault. `produce` must write the same
    /// bytes each time it is called. When completing the upload fails, the
    /// object is looked up: one that appeared or changed since the attempt
    /// began is this upload, whose answer was lost.
    pub async fn put_streamed<T, F, Fut>(&self, key: &str, mut produce: F) -> Result<T>
    where
        F: FnMut(BufWriter) -> Fut,
        Fut: Future<Output = Result<(BufWriter, T)>>,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // What was there before (unknown when the lookup fails: then a
            // failed completion is never taken for a landed one).
            let before = self.version(key).await.ok();
            let writer = self.writer(key);
            match produce(writer).await {
                Ok((mut w, n)) => {
                    use tokio::io::AsyncWriteExt;
                    match w.shutdown().await {
                        Ok(()) => return Ok(n),
                        Err(e) => {
                            // A failed completion leaves at most an incomplete
                            // multipart upload, which is never visible (and
                            // `abort` is not allowed after `shutdown`).
                            drop(w);
                            let err = io_to_store(e);
                            if let (Some(before), Ok(now @ Some(_))) = (&before, self.version(key).await) {
                                if now != *before {
                                    warn!(op = "put_streamed", key, attempt, error = %err, "the answer to completing the upload was lost, but the object is there, new: the upload landed");
                                    return Ok(n);
                                }
                            }
                            if attempt <= self.retry.retries && is_transient(&err) {
                                let pause = self.retry.backoff(attempt);
                                warn!(op = "put_streamed", key, attempt, error = %err, "transient storage fault on completion; restarting upload");
                                tokio::time::sleep(pause).await;
                                continue;
                            }
                            return Err(Error::Store { op: "put_streamed", key: key.to_string(), attempts: attempt, source: err });
                        }
                    }
                }
                Err(e) if attempt <= self.retry.retries && e.is_transient() => {
                    let pause = self.retry.backoff(attempt);
                    warn!(op = "put_streamed", key, attempt, error = %e, "transient storage fault; restarting upload");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// What identifies the object now at `key` (ETag, modification time,
    /// size), or `None` when there is none.
    async fn version(&self, key: &str) -> Result<Option<(Option<String>, chrono::DateTime<chrono::Utc>, u64)>> {
        let path = self.path(key);
        match self.with_retry("head", key, || self.inner.head(&path)).await {
            Ok(m) => Ok(Some((m.e_tag, m.last_modified, m.size))),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Maps an I/O error from a streaming writer back to the store error it wraps.
pub(crate) fn io_to_store(e: std::io::Error) -> object_store::Error {
    if e.get_ref().map(|inner| inner.is::<object_store::Error>()).unwrap_or(false) {
        let inner = e.into_inner().expect("checked that an inner error exists");
        *inner.downcast::<object_store::Error>().expect("checked the inner error's type")
    } else {
        object_store::Error::Generic { store: "stream", source: Box::new(e) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_if_absent_lets_exactly_one_writer_win() {
        let store = Store::memory();
        assert!(store.put_if_absent("a/_SUCCESS.json", "one").await.unwrap());
        assert!(!store.put_if_absent("a/_SUCCESS.json", "two").await.unwrap());
        assert_eq!(store.get("a/_SUCCESS.json").await.unwrap(), Bytes::from("one"));
    }

    #[tokio::test]
    async fn missing_objects_name_the_key() {
        let err = Store::memory().get("data/train.csv").await.unwrap_err();
        assert!(err.to_string().contains("data/train.csv"), "{err}");
        assert!(matches!(err, Error::NotFound { .. }));
    }

    #[tokio::test]
    async fn local_store_lists_relative_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("file://{}", dir.path().display())).unwrap();
        store.put("runs/x/b.txt", "b").await.unwrap();
        store.put("runs/x/a.txt", "a").await.unwrap();
        let keys: Vec<String> = store.list("runs/x").await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, vec!["runs/x/a.txt", "runs/x/b.txt"]);
    }

    #[test]
    fn rejects_relative_file_urls_and_unknown_schemes() {
        assert!(matches!(Store::open("file://relative/path"), Err(Error::StoreUrl { .. })));
        assert!(matches!(Store::open("gs://bucket"), Err(Error::StoreUrl { .. })));
    }

    #[test]
    fn etags_of_one_request_and_multipart_uploads_are_recomputed() {
        use md5::{Digest, Md5};
        let body: Vec<u8> = (0..25u32).map(|i| i as u8).collect();
        let single = format!("\"{}\"", hex::encode(Md5::digest(&body)));
        assert_eq!(etag_matches(&single, &body, 10), Some(Ok(())));
        let mut flipped = body.clone();
        flipped[12] ^= 0xff;
        assert!(matches!(etag_matches(&single, &flipped, 10), Some(Err(_))));
        // Three parts of 10, 10 and 5 bytes.
        let parts: Vec<u8> = body.chunks(10).flat_map(|c| Md5::digest(c).to_vec()).collect();
        let multi = format!("{}-3", hex::encode(Md5::digest(&parts)));
        assert_eq!(etag_matches(&multi, &body, 10), Some(Ok(())));
        assert!(matches!(etag_matches(&multi, &flipped, 10), Some(Err(_))));
        assert_eq!(etag_matches(&multi, &body, 20), None, "another part size: not checkable");
        assert_eq!(etag_matches("1a2b-3c4d-5e", &body, 10), None, "a local file's ETag is no MD5");
        assert_eq!(etag_matches("7", &body, 10), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy { retries: 5, initial_backoff_ms: 100, max_backoff_ms: 350 };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(350));
    }
}
