//! The image configuration of a spec: the `[image]` section, and how
//! validation and test images reach a model's input size.

use super::augment::{CenterCropResize, Geometry, Pipeline, RandomCrop, Side, Transform};
use super::decode::{OnBadImage, DEFAULT_MAX_PIXELS};
use super::source::{ImageSource, ShardsSection};
use super::tta::TtaSettings;
use serde::{Deserialize, Serialize};

/// The spec's `[image]` section: decoding, augmentation and loading.
/// Models may override `augment` and `tta` with their own.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    /// `"fail"` stops the job at the first bad image; `"skip"` counts, logs
    /// and lists it in the job's outputs.
    #[serde(default)]
    pub on_bad_image: OnBadImage,
    /// Largest accepted width x height (decompression-bomb guard).
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// Decode and augment threads; 0 = all cores.
    #[serde(default)]
    pub workers: usize,
    /// Batches the loader prepares ahead of training.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Concurrent object reads.
    #[serde(default = "default_fetch_concurrency")]
    pub fetch_concurrency: usize,
    /// Training augmentations (a list of one-key tables; see `image::augment`).
    #[serde(default)]
    pub augment: Pipeline,
    /// Test-time views.
    #[serde(default)]
    pub tta: TtaSettings,
    /// `"objects"` (one object per image) or `"shards"` (the shard sets of
    /// `imet shard`).
    #[serde(default, skip_serializing_if = "ImageSource::is_default")]
    pub source: ImageSource,
    /// How shard sets are built and read (`[image.shards]`).
    #[serde(default, skip_serializing_if = "ShardsSection::is_default")]
    pub shards: ShardsSection,
}

impl Default for ImageSection {
    fn default() -> Self {
        ImageSection {
            on_bad_image: Default::default(),
            max_pixels: DEFAULT_MAX_PIXELS,
            workers: 0,
            prefetch: default_prefetch(),
            fetch_concurrency: default_fetch_concurrency(),
            augment: Default::default(),
            tta: Default::default(),
            source: Default::default(),
            shards: Default::default(),
        }
    }
}

fn default_max_pixels() -> u64 {
    DEFAULT_MAX_PIXELS
}
fn default_prefetch() -> usize {
    2
}
fn default_fetch_concurrency() -> usize {
    16
}

impl ImageSection {
    /// Range checks; messages name the field as `image.field`.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_pixels < 90_000 {
            return Err(format!("`image.max_pixels` = {}: too small for the 300-pixel shortest side", self.max_pixels));
        }
        if !(1..=64).contains(&self.prefetch) || !(1..=1024).contains(&self.fetch_concurrency) || self.workers > 1024 {
            return Err(format!(
                "`image.prefetch` = {}, `image.fetch_concurrency` = {}, `image.workers` = {}: need 1-64, 1-1024 and 0-1024 (0: all cores)",
                self.prefetch, self.fetch_concurrency, self.workers
            ));
        }
        self.tta.validate().map_err(|e| format!("`image.tta`: {e}"))?;
        self.shards.validate()?;
        self.augment.validate().map_err(|e| format!("`image.augment`: {e}"))
    }
}

/// The deterministic resize of validation and test images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EvalResize {
    /// Whole image resized to `size` x `size`.
    #[default]
    Resize,
    /// Centre crop of at most `2 x size`, then resize (matches training
    /// that crops before resizing: `crop_if_needed`).
    CenterCrop,
    /// Centre `size x size` crop at native scale, padded when smaller
    /// (matches `random_crop`).
    PadCenterCrop,
}


impl EvalResize {
    /// The deterministic pipeline that brings validation and test images
    /// to `size` x `size`.
    pub fn pipeline(self, size: u32) -> Pipeline {
        Pipeline(vec![match self {
            EvalResize::Resize => Transform::Resize(Side { size }),
            EvalResize::CenterCrop => Transform::CenterCropResize(CenterCropResize { crop: 2 * size, size }),
            EvalResize::PadCenterCrop => Transform::PadCenterCrop(RandomCrop { size, fill: [0; 3] }),
        }])
    }

    /// The evaluation geometry that mirrors training geometry `train`.
    pub fn matching(train: Geometry) -> EvalResize {
        match train {
            Geometry::Whole => EvalResize::Resize,
            Geometry::CropThenResize => EvalResize::CenterCrop,
            Geometry::NativeScale => EvalResize::PadCenterCrop,
        }
    }

    /// The spec's name of this mode.
    pub fn name(self) -> &'static str {
        match self {
            EvalResize::Resize => "resize",
            EvalResize::CenterCrop => "center_crop",
            EvalResize::PadCenterCrop => "pad_center_crop",
        }
    }
}
