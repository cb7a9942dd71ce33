//! Where an experiment's store is: the spec's `[storage]` section, store
//! URLs from plain paths, the `IMET_ROOT` override, and opening the folder
//! of a single file named by path or URL.

use super::cache::CacheOptions;
use super::lease::LeasePolicy;
use super::store::{RetryPolicy, Store, StoreOptions};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The variable that overrides a spec's `storage.root`.
pub const ROOT_ENV: &str = "IMET_ROOT";

/// Where the experiment's data and outputs live.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// `file:///abs/path`, `s3://bucket/prefix`, `memory://`, or a plain
    /// path (relative to the working directory). `IMET_ROOT` overrides it.
    pub root: String,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Local read-through cache for input images; none when unset.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    #[serde(default = "default_cache_max_gb")]
    pub cache_max_gb: f64,
    /// How jobs lease their work so that concurrent runners never work on
    /// one job at once (`[storage.lease]`).
    #[serde(default, skip_serializing_if = "is_default_lease")]
    pub lease: LeasePolicy,
    /// Check every whole-object read from S3 against the object's ETag
    /// and read again when they disagree (a body corrupted on the way).
    /// Turn off for buckets whose ETags are not content MD5s (SSE-KMS).
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub verify_etags: bool,
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

fn is_default_lease(p: &LeasePolicy) -> bool {
    *p == LeasePolicy::default()
}

fn default_cache_max_gb() -> f64 {
    20.0
}

impl StorageSection {
    /// Range checks; messages name the field as `storage.field`.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.cache_max_gb > 0.0) {
            return Err(format!("`storage.cache_max_gb` = {}: must be positive", self.cache_max_gb));
        }
        self.lease.validate()
    }

    /// The root as written in the spec, or `IMET_ROOT` when set.
    pub fn root_raw(&self) -> String {
        std::env::var(ROOT_ENV).unwrap_or_else(|_| self.root.clone())
    }

    /// The storage root as a URL (`IMET_ROOT` overrides the spec; plain
    /// paths become `file://` URLs relative to the working directory).
    ///
    /// # Errors
    /// [`Error::Io`] when a relative path meets an unreadable working directory.
    pub fn root_url(&self) -> Result<String> {
        root_to_url(&self.root_raw())
    }

    /// Opens the store with the section's retry and cache settings.
    ///
    /// # Errors
    /// [`Error::StoreUrl`] for an unusable root; cache errors.
    pub fn open(&self) -> Result<Store> {
        let cache = self.cache_dir.as_ref().map(|dir| CacheOptions { dir: dir.clone(), max_bytes: (self.cache_max_gb * 1e9) as u64 });
        Ok(Store::open_with(&self.root_url()?, StoreOptions { retry: self.retry.clone(), cache, s3_config: Vec::new(), no_etag_check: !self.verify_etags })?.with_lease_policy(self.lease.clone()))
    }
}

/// `s3://...`, `file://...`, `memory://` pass through; a plain path becomes
/// an absolute `file://` URL.
///
/// # Errors
/// [`Error::Io`] when a relative path meets an unreadable working directory.
pub fn root_to_url(raw: &str) -> Result<String> {
    if raw.contains("://") {
        return Ok(raw.to_string());
    }
    let p = Path::new(raw);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map_err(|source| Error::Io { path: p.to_path_buf(), source })?.join(p)
    };
    Ok(format!("file://{}", abs.display()))
}

/// The store of the folder holding one file, and the file's key in it;
/// `path` is a path (absolute or relative) or a store URL.
///
/// # Errors
/// [`Error::StoreUrl`] when no file name follows the last `/`.
pub fn open_file(path: &str) -> Result<(Store, String)> {
    let url = root_to_url(path)?;
    match url.rsplit_once('/') {
        Some((parent, name)) if !name.is_empty() => {
            // `file:///w` splits into `file://`, `memory://w` into `memory:/`.
            let parent = if parent.ends_with(":/") || parent.ends_with("//") { format!("{parent}/") } else { parent.to_string() };
            Ok((Store::open(&parent)?, name.to_string()))
        }
        _ => Err(Error::StoreUrl {
            url: path.to_string(),
            reason: "expected the path or URL of a file, such as file:///abs/resnet50.safetensors".to_string(),
        }),
    }
}

/// Reads one file named by path or URL.
///
/// # Errors
/// As [`open_file`], and [`Error::NotFound`] naming the key.
pub async fn read_file(path: &str) -> Result<bytes::Bytes> {
    let (store, key) = open_file(path)?;
    store.get(&key).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_become_file_urls() {
        assert_eq!(root_to_url("/tmp/x").unwrap(), "file:///tmp/x");
        assert!(root_to_url("out").unwrap().starts_with("file:///"));
        assert_eq!(root_to_url("s3://b/p").unwrap(), "s3://b/p");
    }

    #[test]
    fn a_file_opens_as_its_folder_and_its_name() {
        let (store, key) = open_file("/tmp/imet-x/w.safetensors").unwrap();
        assert_eq!((store.url(), key.as_str()), ("file:///tmp/imet-x", "w.safetensors"));
        let (store, key) = open_file("memory://w.bin").unwrap();
        assert_eq!((store.url(), key.as_str()), ("memory://", "w.bin"));
        let (store, key) = open_file("file:///w.bin").unwrap();
        assert_eq!((store.url(), key.as_str()), ("file:///", "w.bin"));
        assert!(open_file("s3://bucket/").is_err());
    }
}
