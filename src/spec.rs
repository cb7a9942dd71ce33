//! Experiment specs: one TOML file per experiment (`jobs/*.toml`). Each
//! section is a plain struct with `deny_unknown_fields`, so a misspelt key
//! stops the job before any work; [`JobSpec::validate`] checks ranges.
//! Jobs hash the parts of the spec they depend on, so changing the ensemble
//! does not invalidate trained folds.

use crate::error::{Error, Result};
use crate::storage::{CacheOptions, RetryPolicy, Store, StoreOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A whole experiment.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Name of the experiment: the `runs/{experiment}/` prefix.
    pub experiment: String,
    /// Master seed; stages derive their own seeds from it unless given.
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    pub storage: StorageSection,
    #[serde(default)]
    pub data: DataSection,
    pub folds: FoldsSection,
    #[serde(default)]
    pub image: ImageSection,
}

/// Where the experiment's data and outputs live.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
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
    #[serde(default = "defaults::cache_max_gb")]
    pub cache_max_gb: f64,
}

/// Input data, and the synthetic sample to generate when it is missing.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Generate the synthetic sample under `data/` when `data/train.csv`
    /// is absent (CI and the README's main command).
    #[serde(default)]
    pub sample: Option<SampleSection>,
}

/// Synthetic sample size and content.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SampleSection {
    pub train: usize,
    pub test: usize,
    /// Number of frequent classes the sample's labels are drawn from.
    #[serde(default = "defaults::sample_classes")]
    pub classes: usize,
    #[serde(default = "defaults::seed")]
    pub seed: u64,
}

/// Cross-validation folds.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FoldsSection {
    /// Number of folds, 2 to 40.
    pub k: u8,
    #[serde(default = "defaults::seed")]
    pub seed: u64,
}

/// Image decoding, augmentation and loading (issue 3). Models may override
/// `augment` with their own lists.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    /// `"fail"` stops the job at the first bad image; `"skip"` counts, logs
    /// and lists it in the job's outputs.
    #[serde(default)]
    pub on_bad_image: crate::image::OnBadImage,
    /// Largest accepted width x height (decompression-bomb guard).
    #[serde(default = "defaults::max_pixels")]
    pub max_pixels: u64,
    /// Decode and augment threads; 0 = all cores.
    #[serde(default)]
    pub workers: usize,
    /// Batches the loader prepares ahead of training.
    #[serde(default = "defaults::prefetch")]
    pub prefetch: usize,
    /// Concurrent object reads.
    #[serde(default = "defaults::fetch_concurrency")]
    pub fetch_concurrency: usize,
    /// Training augmentations (a list of one-key tables; see `image::augment`).
    #[serde(default)]
    pub augment: crate::image::Pipeline,
    /// Test-time views.
    #[serde(default)]
    pub tta: crate::image::TtaSettings,
}

impl Default for ImageSection {
    fn default() -> Self {
        ImageSection {
            on_bad_image: Default::default(),
            max_pixels: defaults::max_pixels(),
            workers: 0,
            prefetch: defaults::prefetch(),
            fetch_concurrency: defaults::fetch_concurrency(),
            augment: Default::default(),
            tta: Default::default(),
        }
    }
}

mod defaults {
    pub fn max_pixels() -> u64 {
        crate::image::decode::DEFAULT_MAX_PIXELS
    }
    pub fn prefetch() -> usize {
        2
    }
    pub fn fetch_concurrency() -> usize {
        16
    }
    pub fn seed() -> u64 {
        42
    }
    pub fn cache_max_gb() -> f64 {
        20.0
    }
    pub fn sample_classes() -> usize {
        30
    }
}

impl JobSpec {
    /// Reads and validates the spec at `path`.
    ///
    /// # Errors
    /// [`Error::Spec`] naming the file and the field (unknown fields,
    /// wrong types, out-of-range values).
    pub fn load(path: &Path) -> Result<JobSpec> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        JobSpec::parse(&path.display().to_string(), &text)
    }

    /// Parses and validates spec text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<JobSpec> {
        let spec: JobSpec =
            toml::from_str(text).map_err(|e| Error::Spec { path: origin.to_string(), message: e.to_string().trim().to_string() })?;
        spec.validate().map_err(|message| Error::Spec { path: origin.to_string(), message })?;
        Ok(spec)
    }

    /// Range checks; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let name_ok = !self.experiment.is_empty()
            && self.experiment.len() <= 64
            && self.experiment.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
            && !self.experiment.starts_with('.');
        if !name_ok {
            return Err(format!(
                "`experiment` = {:?}: use 1-64 characters from a-z, 0-9, '-', '_', '.' (it becomes an object key)",
                self.experiment
            ));
        }
        if !(2..=40).contains(&self.folds.k) {
            return Err(format!("`folds.k` = {}: must be between 2 and 40", self.folds.k));
        }
        if !(self.storage.cache_max_gb > 0.0) {
            return Err(format!("`storage.cache_max_gb` = {}: must be positive", self.storage.cache_max_gb));
        }
        if let Some(s) = &self.data.sample {
            if s.train < 2 * self.folds.k as usize {
                return Err(format!("`data.sample.train` = {}: needs at least 2 images per fold ({})", s.train, 2 * self.folds.k));
            }
            if s.test == 0 {
                return Err("`data.sample.test` = 0: the sample needs test images".into());
            }
            if !(2..=1103).contains(&s.classes) {
                return Err(format!("`data.sample.classes` = {}: must be between 2 and 1103", s.classes));
            }
        }
        if self.image.max_pixels < 90_000 {
            return Err(format!("`image.max_pixels` = {}: too small for the 300-pixel shortest side", self.image.max_pixels));
        }
        if self.image.prefetch == 0 || self.image.fetch_concurrency == 0 {
            return Err("`image.prefetch` and `image.fetch_concurrency` must be at least 1".into());
        }
        self.image.augment.validate().map_err(|e| format!("`image.augment`: {e}"))?;
        Ok(())
    }

    /// The storage root as a URL (`IMET_ROOT` overrides the spec; plain
    /// paths become `file://` URLs relative to the working directory).
    pub fn root_url(&self) -> Result<String> {
        let raw = std::env::var("IMET_ROOT").unwrap_or_else(|_| self.storage.root.clone());
        root_to_url(&raw)
    }

    /// Opens the experiment's store with its retry and cache settings.
    pub fn open_store(&self) -> Result<Store> {
        let cache = self.storage.cache_dir.as_ref().map(|dir| CacheOptions {
            dir: dir.clone(),
            max_bytes: (self.storage.cache_max_gb * 1e9) as u64,
        });
        Store::open_with(&self.root_url()?, StoreOptions { retry: self.storage.retry.clone(), cache, s3_config: Vec::new() })
    }

    /// The resolved spec as TOML (written beside the outputs).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a parsed spec always serialises back to TOML")
    }

    /// Hash of the parts of the spec the folds depend on (seed, data, folds).
    pub fn folds_hash(&self) -> String {
        hash_parts(&[
            serde_json::to_value(&self.data).expect("spec sections serialise"),
            serde_json::to_value(&self.folds).expect("spec sections serialise"),
        ])
    }

    /// Hash of the whole spec except where its storage lives.
    pub fn hash(&self) -> String {
        let mut v = serde_json::to_value(self).expect("spec serialises");
        if let Some(o) = v.as_object_mut() {
            o.remove("storage");
        }
        hash_parts(&[v])
    }
}

/// sha256 over the canonical JSON of `parts` (first 16 hex characters).
pub fn hash_parts(parts: &[serde_json::Value]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(serde_json::to_vec(p).expect("JSON values serialise"));
        h.update(b"\n");
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// `s3://...`, `file://...`, `memory://` pass through; a plain path becomes
/// an absolute `file://` URL.
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

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "experiment = \"e\"\n[storage]\nroot = \"memory://\"\n[folds]\nk = 5\n";

    #[test]
    fn unknown_fields_are_named() {
        let err = JobSpec::parse("x.toml", &format!("{MINIMAL}kk = 1\n")).unwrap_err().to_string();
        assert!(err.contains("x.toml") && err.contains("kk"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        let err = JobSpec::parse("x.toml", &MINIMAL.replace("k = 5", "k = 41")).unwrap_err().to_string();
        assert!(err.contains("folds.k"), "{err}");
        let err = JobSpec::parse("x.toml", &MINIMAL.replace("\"e\"", "\"../e\"")).unwrap_err().to_string();
        assert!(err.contains("experiment"), "{err}");
    }

    #[test]
    fn hash_ignores_storage_but_not_folds() {
        let a = JobSpec::parse("a", MINIMAL).unwrap();
        let b = JobSpec::parse("b", &MINIMAL.replace("memory://", "s3://x/y")).unwrap();
        let c = JobSpec::parse("c", &MINIMAL.replace("k = 5", "k = 6")).unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        assert_ne!(a.folds_hash(), c.folds_hash());
    }

    #[test]
    fn resolved_spec_round_trips_through_toml() {
        let a = JobSpec::parse("a", MINIMAL).unwrap();
        assert_eq!(JobSpec::parse("again", &a.to_toml()).unwrap(), a);
    }

    #[test]
    fn the_image_section_parses_on_bad_image_and_augmentations() {
        let text = format!("{MINIMAL}[image]\non_bad_image = \"skip\"\naugment = [{{ random_resized_crop = {{ size = 64 }} }}, {{ hflip = {{}} }}]\n");
        let s = JobSpec::parse("x.toml", &text).unwrap();
        assert_eq!(s.image.on_bad_image, crate::image::OnBadImage::Skip);
        assert_eq!(s.image.augment.0.len(), 2);
        assert_eq!(JobSpec::parse("again", &s.to_toml()).unwrap(), s);
        let err = JobSpec::parse("x.toml", &format!("{MINIMAL}[image]\non_bad_image = \"ignore\"\n")).unwrap_err().to_string();
        assert!(err.contains("on_bad_image") || err.contains("ignore"), "{err}");
        let err = JobSpec::parse("x.toml", &format!("{MINIMAL}[image]\naugment = [{{ hflip = {{ p = 2.0 }} }}]\n")).unwrap_err().to_string();
        assert!(err.contains("hflip"), "{err}");
    }

    #[test]
    fn plain_paths_become_file_urls() {
        assert_eq!(root_to_url("/tmp/x").unwrap(), "file:///tmp/x");
        assert!(root_to_url("out").unwrap().starts_with("file:///"));
        assert_eq!(root_to_url("s3://b/p").unwrap(), "s3://b/p");
    }
}
