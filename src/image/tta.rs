//! Test-time augmentation views (image stage): the original image, its
//! horizontal mirror and N seeded random crops, each brought to the model's
//! input size. The predict stage averages the views' probabilities; this
//! file only makes the views and touches no storage.

use super::augment::{Pipeline, RandomResizedCrop, Transform};
use super::geometry;
use ::image::RgbImage;
use serde::{Deserialize, Serialize};

/// One view of a test image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum View {
    Original,
    Hflip,
    /// The `n`-th random resized crop (seeded by the image and `n`).
    Crop(u32),
}

/// TTA settings: `hflip` adds the mirror, `crops` random resized crops of
/// area fraction in `scale`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TtaSettings {
    #[serde(default = "yes")]
    pub hflip: bool,
    #[serde(default)]
    pub crops: u32,
    #[serde(default = "crop_scale")]
    pub scale: (f32, f32),
}

fn yes() -> bool {
    true
}
fn crop_scale() -> (f32, f32) {
    (0.4, 1.0)
}

impl Default for TtaSettings {
    fn default() -> Self {
        TtaSettings { hflip: true, crops: 0, scale: crop_scale() }
    }
}

/// Most random crops per image: each is a forward pass.
pub const MAX_CROPS: u32 = 64;

impl TtaSettings {
    /// Range checks; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.crops > MAX_CROPS {
            return Err(format!("crops = {}: at most {MAX_CROPS}", self.crops));
        }
        let (lo, hi) = self.scale;
        if !(lo.is_finite() && hi.is_finite() && 1e-4 <= lo && lo <= hi && hi <= 1.0) {
            return Err(format!("scale = [{lo}, {hi}]: need 0.0001 <= low <= high <= 1"));
        }
        Ok(())
    }

    /// The views in a fixed order: original, mirror, crops.
    pub fn views(&self) -> Vec<View> {
        let mut v = vec![View::Original];
        if self.hflip {
            v.push(View::Hflip);
        }
        v.extend((0..self.crops).map(View::Crop));
        v
    }
}

/// Renders `view` of `img`. `base` brings the image to the model's input
/// (e.g. `resize` or `center_crop_resize`, deterministic); crops are taken
/// from the decoded image and resized to `size`. Deterministic for `seed`.
pub fn render(img: &RgbImage, view: View, base: &Pipeline, size: u32, settings: &TtaSettings, seed: u64) -> RgbImage {
    match view {
        View::Original => base.apply(img.clone(), seed),
        View::Hflip => {
            let mut out = base.apply(img.clone(), seed);
            geometry::hflip(&mut out);
            out
        }
        View::Crop(n) => {
            let t = Transform::RandomResizedCrop(RandomResizedCrop { size, scale: settings.scale, ratio: (3.0 / 4.0, 4.0 / 3.0) });
            Pipeline(vec![t]).apply(img.clone(), crate::seed::tta_view(seed, n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::augment::Side;

    #[test]
    fn settings_refuse_nan_scales_and_endless_crops() {
        assert!(TtaSettings::default().validate().is_ok());
        for bad in [
            TtaSettings { scale: (f32::NAN, 1.0), ..Default::default() },
            TtaSettings { scale: (0.5, 0.4), ..Default::default() },
            TtaSettings { crops: u32::MAX, ..Default::default() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn views_are_original_mirror_then_crops_all_at_the_input_size() {
        let s = TtaSettings { hflip: true, crops: 3, scale: (0.5, 1.0) };
        assert_eq!(s.views(), vec![View::Original, View::Hflip, View::Crop(0), View::Crop(1), View::Crop(2)]);
        let img = RgbImage::from_fn(120, 300, |x, y| ::image::Rgb([x as u8, y as u8, 0]));
        let base = Pipeline(vec![Transform::Resize(Side { size: 32 })]);
        let out: Vec<RgbImage> = s.views().into_iter().map(|v| render(&img, v, &base, 32, &s, 9)).collect();
        assert!(out.iter().all(|o| o.dimensions() == (32, 32)));
        let mut mirrored = out[0].clone();
        geometry::hflip(&mut mirrored);
        assert_eq!(out[1], mirrored);
        assert_ne!(out[2], out[3], "crops differ from each other");
        assert_eq!(out[2], render(&img, View::Crop(0), &base, 32, &s, 9), "and are reproducible");
    }
}
