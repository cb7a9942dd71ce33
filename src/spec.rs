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

mod cluster;
mod models;
pub use cluster::{is_dns_label, is_dns_subdomain, AwsBatchSettings, AwsSecret, ClusterSection, KubernetesSettings, SlurmSettings};
pub use models::{
    parse_duration, EvalResize, LabelScope, LossSpec, MixupSpec, ModelSpec, OptimizerSpec, PhaseSpec, Precision,
    PredictSection, Resources, Sampling, ScheduleSpec, Trainable, TrainSection,
};

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
    /// Blending, thresholds and the submission (`imet ensemble`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<EnsembleSection>,
    #[serde(default)]
    pub image: ImageSection,
    /// The models trained per fold (`[[models]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelSpec>,
    /// How batch engines run the jobs (`imet submit`, `imet render`).
    #[serde(default, skip_serializing_if = "ClusterSection::is_default")]
    pub cluster: ClusterSection,
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

/// The ensemble: which models to blend, how, and how to threshold.
/// Every member's folds come from `[folds] k`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleSection {
    /// Model names (`runs/{experiment}/models/{model}/`) to blend.
    pub members: Vec<String>,
    /// `mean`, `weighted` (weights fitted on OOF F2), `rank` or `geometric`.
    #[serde(default = "defaults::blend")]
    pub blend: crate::ensemble::BlendKind,
    /// Divide each image's blended probabilities by their maximum (R1).
    #[serde(default)]
    pub normalize_max: bool,
    /// Folds whose test predictions are averaged (R1 uses 9 of 10); all when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_folds: Option<Vec<u8>>,
    /// Threshold strategies to fit; the best cross-validated one is used.
    #[serde(default = "defaults::strategies")]
    pub strategies: Vec<crate::ensemble::threshold::StrategyKind>,
    /// Candidate thresholds are `j / threshold_bins`.
    #[serde(default = "defaults::threshold_bins")]
    pub threshold_bins: usize,
    /// Labels per image, overall: `[min, max]` (max 0 = unbounded).
    #[serde(default = "defaults::total_labels")]
    pub labels: [u32; 2],
    /// Culture labels per image for the `*_limits` strategies (R2: 0-3).
    #[serde(default = "defaults::culture_labels")]
    pub culture_labels: [u32; 2],
    /// Tag labels per image for the `*_limits` strategies (R2: 1-8).
    #[serde(default = "defaults::tag_labels")]
    pub tag_labels: [u32; 2],
    /// Pseudo-count shrinking per-class thresholds to their group's.
    #[serde(default = "defaults::class_shrink")]
    pub class_shrink: f64,
    /// `r` of the `ratio_default` strategy (keep `p >= max / r`, R4: 7).
    #[serde(default = "defaults::ratio")]
    pub ratio: f32,
    /// Most labels per image of the ratio strategies (R4: 10).
    #[serde(default = "defaults::ratio_max_labels")]
    pub ratio_max_labels: u32,
    /// Mean labels per image the `target_count` strategy aims for on test;
    /// unset: the global strategy's mean count on OOF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_label_count: Option<f64>,
    /// OOF rows used to fit blend weights (held quantised to bytes).
    #[serde(default = "defaults::weight_rows")]
    pub weight_rows: usize,
    /// A second-level model over the members' predictions (R2 stage 5,
    /// LightGBM stacking). Not built yet: refused by validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level2: Option<Level2Spec>,
    /// k-NN "tag relevance" over embeddings added to the blend (4th place).
    /// Not built yet: refused by validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_tag_relevance: Option<KnnTagRelevance>,
    /// Folds each member is trained on when not all of `folds.k` (R4: 10,
    /// 5 and 5 fold-models of a 40-fold split). Not built yet: refused by
    /// validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_folds: Option<std::collections::BTreeMap<String, Vec<u8>>>,
}

/// A second-level (stacking) model fitted on OOF predictions.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Level2Spec {
    /// `pair_classifier`: a binary classifier on (image, class) rows with
    /// the members' probabilities as features (R2); `lightgbm`: gradient
    /// boosted trees on the same rows.
    pub kind: Level2Kind,
    /// Extra per-row features, e.g. `"class_frequency"`, `"rank_in_image"`.
    #[serde(default)]
    pub features: Vec<String>,
}

/// The model family of a second-level model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level2Kind {
    PairClassifier,
    Lightgbm,
}

/// k-NN tag relevance: neighbours' labels, weighted by similarity, added
/// to the blended tag probabilities.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KnnTagRelevance {
    pub k: usize,
    /// Weight of the neighbours' vote in the sum.
    pub weight: f64,
}

impl EnsembleSection {
    fn validate(&self, k: u8) -> std::result::Result<(), String> {
        if self.members.is_empty() {
            return Err("`ensemble.members` is empty: name at least one model".into());
        }
        let mut seen = std::collections::HashSet::new();
        for m in &self.members {
            let ok = !m.is_empty() && m.len() <= 64 && m.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) && !m.starts_with('.');
            if !ok {
                return Err(format!("`ensemble.members` entry {m:?}: use 1-64 characters from a-z, A-Z, 0-9, '-', '_', '.'"));
            }
            if !seen.insert(m) {
                return Err(format!("`ensemble.members` lists {m:?} twice"));
            }
        }
        if let Some(tf) = &self.test_folds {
            if tf.is_empty() {
                return Err("`ensemble.test_folds` is empty: leave it out to use every fold".into());
            }
            if let Some(f) = tf.iter().find(|&&f| f >= k) {
                return Err(format!("`ensemble.test_folds` has fold {f} but `folds.k` = {k}"));
            }
        }
        if self.strategies.is_empty() {
            return Err("`ensemble.strategies` is empty: leave it out to fit every strategy".into());
        }
        if !(2..=250).contains(&self.threshold_bins) {
            return Err(format!("`ensemble.threshold_bins` = {}: must be between 2 and 250", self.threshold_bins));
        }
        let lim = crate::ensemble::threshold::MAX_LIMIT;
        for (name, [lo, hi]) in [("labels", self.labels), ("culture_labels", self.culture_labels), ("tag_labels", self.tag_labels)] {
            if lo > lim || hi > lim || (hi != 0 && hi < lo) {
                return Err(format!("`ensemble.{name}` = [{lo}, {hi}]: need min <= max <= {lim} (max 0 = unbounded)"));
            }
        }
        if !(self.class_shrink >= 0.0) {
            return Err(format!("`ensemble.class_shrink` = {}: must be >= 0", self.class_shrink));
        }
        if !(self.ratio > 1.0) {
            return Err(format!("`ensemble.ratio` = {}: must be above 1", self.ratio));
        }
        if self.ratio_max_labels == 0 || self.ratio_max_labels > lim {
            return Err(format!("`ensemble.ratio_max_labels` = {}: must be 1 to {lim}", self.ratio_max_labels));
        }
        if let Some(t) = self.target_label_count {
            if !(t > 0.0 && t < 1103.0) {
                return Err(format!("`ensemble.target_label_count` = {t}: must be positive"));
            }
        }
        if self.weight_rows < 10 {
            return Err(format!("`ensemble.weight_rows` = {}: use at least 10", self.weight_rows));
        }
        if self.member_folds.is_some() {
            return Err("`ensemble.member_folds`: not supported yet: training a member on a subset of the folds".into());
        }
        if self.level2.is_some() {
            return Err("`ensemble.level2`: not supported yet: a second-level model over the members' predictions".into());
        }
        if self.knn_tag_relevance.is_some() {
            return Err("`ensemble.knn_tag_relevance`: not supported yet: k-NN tag relevance over embeddings".into());
        }
        Ok(())
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
    pub fn blend() -> crate::ensemble::BlendKind {
        crate::ensemble::BlendKind::Mean
    }
    pub fn strategies() -> Vec<crate::ensemble::threshold::StrategyKind> {
        crate::ensemble::threshold::StrategyKind::ALL.to_vec()
    }
    pub fn threshold_bins() -> usize {
        100
    }
    pub fn total_labels() -> [u32; 2] {
        [1, 0]
    }
    pub fn culture_labels() -> [u32; 2] {
        [0, 3]
    }
    pub fn tag_labels() -> [u32; 2] {
        [1, 8]
    }
    pub fn class_shrink() -> f64 {
        20.0
    }
    pub fn ratio() -> f32 {
        7.0
    }
    pub fn ratio_max_labels() -> u32 {
        10
    }
    pub fn weight_rows() -> usize {
        20_000
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
        let mut names = std::collections::HashSet::new();
        for m in &self.models {
            m.validate()?;
            if !names.insert(m.name.as_str()) {
                return Err(format!("`models`: two models are named {:?}", m.name));
            }
        }
        if let Some(e) = &self.ensemble {
            e.validate(self.folds.k)?;
            if !self.models.is_empty() {
                if let Some(m) = e.members.iter().find(|m| !names.contains(m.as_str())) {
                    return Err(format!("`ensemble.members` names {m:?}, which is not a `[[models]]` name ({names:?})"));
                }
            }
        }
        if self.image.max_pixels < 90_000 {
            return Err(format!("`image.max_pixels` = {}: too small for the 300-pixel shortest side", self.image.max_pixels));
        }
        if !(1..=64).contains(&self.image.prefetch) || !(1..=1024).contains(&self.image.fetch_concurrency) || self.image.workers > 1024 {
            return Err(format!(
                "`image.prefetch` = {}, `image.fetch_concurrency` = {}, `image.workers` = {}: need 1-64, 1-1024 and 0-1024 (0: all cores)",
                self.image.prefetch, self.image.fetch_concurrency, self.image.workers
            ));
        }
        self.image.tta.validate().map_err(|e| format!("`image.tta`: {e}"))?;
        self.image.augment.validate().map_err(|e| format!("`image.augment`: {e}"))?;
        self.cluster.validate()?;
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

    /// The model called `name`.
    ///
    /// # Errors
    /// [`Error::Usage`] listing the spec's model names.
    pub fn model(&self, name: &str) -> Result<&ModelSpec> {
        self.models.iter().find(|m| m.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
            Error::Usage(format!("the spec has no model {name:?}; its models are {names:?}"))
        })
    }

    /// Hash of what one model's fold jobs depend on: seed, data, folds,
    /// image settings and that model's table (not the other models, not the
    /// ensemble).
    pub fn model_hash(&self, model: &ModelSpec) -> String {
        hash_parts(&[
            serde_json::json!(self.seed),
            serde_json::to_value(&self.data).expect("spec sections serialise"),
            serde_json::to_value(&self.folds).expect("spec sections serialise"),
            serde_json::to_value(&self.image).expect("spec sections serialise"),
            serde_json::to_value(model).expect("spec sections serialise"),
        ])
    }

    /// Hash of the whole spec except where its storage lives and how jobs
    /// are scheduled (`[cluster]`).
    pub fn hash(&self) -> String {
        let mut v = serde_json::to_value(self).expect("spec serialises");
        if let Some(o) = v.as_object_mut() {
            o.remove("storage");
            // Where and how jobs are scheduled does not change their outputs.
            o.remove("cluster");
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
    fn ensemble_section_has_defaults_and_checks_its_ranges() {
        let a = JobSpec::parse("a", &format!("{MINIMAL}[ensemble]\nmembers = [\"resnet34\"]\n")).unwrap();
        let e = a.ensemble.as_ref().unwrap();
        assert_eq!((e.threshold_bins, e.labels, e.tag_labels, e.strategies.len()), (100, [1, 0], [1, 8], 8));
        assert_eq!(JobSpec::parse("again", &a.to_toml()).unwrap(), a);
        for (bad, field) in [
            ("members = []", "ensemble.members"),
            ("members = [\"a\", \"a\"]", "twice"),
            ("members = [\"a\"]\ntest_folds = [5]", "ensemble.test_folds"),
            ("members = [\"a\"]\ntag_labels = [4, 2]", "ensemble.tag_labels"),
            ("members = [\"a\"]\nratio = 1.0", "ensemble.ratio"),
            ("members = [\"a\"]\nblend = \"median\"", "median"),
            ("members = [\"a\"]\nstrategies = [\"global\", \"magic\"]", "magic"),
        ] {
            let err = JobSpec::parse("x.toml", &format!("{MINIMAL}[ensemble]\n{bad}\n")).unwrap_err().to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
    }

    #[test]
    fn ensemble_elements_not_built_yet_are_refused_by_name() {
        for (line, element) in [
            ("level2 = { kind = \"lightgbm\" }", "`ensemble.level2`: not supported yet: a second-level model"),
            ("knn_tag_relevance = { k = 10, weight = 0.5 }", "`ensemble.knn_tag_relevance`: not supported yet: k-NN tag relevance"),
            ("member_folds = { a = [0, 1] }", "`ensemble.member_folds`: not supported yet: training a member on a subset"),
        ] {
            let err = JobSpec::parse("x.toml", &format!("{MINIMAL}[ensemble]\nmembers = [\"a\"]\n{line}\n")).unwrap_err().to_string();
            assert!(err.contains(element), "{line}: {err}");
        }
    }

    #[test]
    fn plain_paths_become_file_urls() {
        assert_eq!(root_to_url("/tmp/x").unwrap(), "file:///tmp/x");
        assert!(root_to_url("out").unwrap().starts_with("file:///"));
        assert_eq!(root_to_url("s3://b/p").unwrap(), "s3://b/p");
    }
}
