//! Augmentations (image stage): small composable transforms on RGB u8
//! images, configured from the spec and deterministic for a given seed.
//! Covers every transform the reference recipes name; touches no storage.
//!
//! In a spec a pipeline is a list of one-key tables, e.g.
//!
//! ```toml
//! augment = [
//!   { random_resized_crop = { size = 331, scale = [0.4, 1.0] } },
//!   { hflip = {} },
//!   { one_of = { p = 0.5, of = [{ brightness = { limit = 0.2 } }, { contrast = { limit = 0.2 } }] } },
//! ]
//! ```

use super::geometry::{self, Rect};
use crate::error::{Error, Result};
use ::image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

fn one() -> f32 {
    1.0
}
fn half() -> f32 {
    0.5
}
fn rrc_scale() -> (f32, f32) {
    (0.08, 1.0)
}
fn rrc_ratio() -> (f32, f32) {
    (3.0 / 4.0, 4.0 / 3.0)
}
fn gamma_range() -> (f32, f32) {
    (0.8, 1.2)
}
fn erase_scale() -> (f32, f32) {
    (0.02, 0.33)
}
fn erase_ratio() -> (f32, f32) {
    (0.3, 3.3)
}
fn noise_var() -> (f32, f32) {
    (10.0, 50.0)
}

/// One transform. Every field with a probability `p` applies the transform
/// with that probability (default 1 unless noted).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Transform {
    /// torchvision `RandomResizedCrop(size, scale, ratio)`: a random crop of
    /// area fraction in `scale` and aspect ratio in `ratio`, resized to
    /// `size x size`.
    RandomResizedCrop(RandomResizedCrop),
    /// First place's crop: a random crop of at most `2 * size` on each side
    /// (smaller sides kept whole), then resize to `size x size`.
    CropIfNeeded(Side),
    /// A random `size x size` crop, padding (centred, `fill`) smaller images first.
    RandomCrop(RandomCrop),
    /// The centre `size x size` crop at native scale, padding (centred,
    /// `fill`) smaller images first: the evaluation view of `random_crop`.
    PadCenterCrop(RandomCrop),
    /// Centre crop of at most `crop x crop`, then resize to `size x size`.
    CenterCropResize(CenterCropResize),
    /// Resize the whole image to `size x size`.
    Resize(Side),
    /// Horizontal flip with probability `p` (default 0.5).
    Hflip(Prob),
    /// Add `b * 255` with `b` uniform in `[-limit, limit]`.
    Brightness(Limit),
    /// Scale deviations from the mean grey by `a` uniform in `[1 - limit, 1 + limit]`.
    Contrast(Limit),
    /// `255 * (v / 255)^g` with `g` uniform in `gamma`.
    Gamma(Gamma),
    /// Picks one of `of` uniformly and applies it (with probability `p`).
    OneOf(OneOf),
    /// Affine warp: shift by up to `shift_limit` of the size, scale by
    /// `1 + U(-scale_limit, scale_limit)`, rotate by up to `rotate_limit` degrees.
    ShiftScaleRotate(ShiftScaleRotate),
    /// Adds N(0, var) noise per sample, `var` uniform in `var_limit` (in u8 units squared).
    GaussianNoise(GaussianNoise),
    /// torchvision `RandomErasing`: fills a random rectangle of area fraction
    /// in `scale` and ratio in `ratio` with random values (default p 0.5).
    RandomErasing(RandomErasing),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RandomResizedCrop {
    pub size: u32,
    #[serde(default = "rrc_scale")]
    pub scale: (f32, f32),
    #[serde(default = "rrc_ratio")]
    pub ratio: (f32, f32),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Side {
    pub size: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RandomCrop {
    pub size: u32,
    #[serde(default)]
    pub fill: [u8; 3],
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CenterCropResize {
    pub crop: u32,
    pub size: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Prob {
    #[serde(default = "half")]
    pub p: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub limit: f32,
    #[serde(default = "one")]
    pub p: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gamma {
    #[serde(default = "gamma_range")]
    pub gamma: (f32, f32),
    #[serde(default = "one")]
    pub p: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OneOf {
    pub of: Vec<Transform>,
    #[serde(default = "one")]
    pub p: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShiftScaleRotate {
    #[serde(default = "shift_limit")]
    pub shift_limit: f32,
    #[serde(default = "scale_limit")]
    pub scale_limit: f32,
    #[serde(default = "rotate_limit")]
    pub rotate_limit: f32,
    #[serde(default = "half")]
    pub p: f32,
}
fn shift_limit() -> f32 {
    0.0625
}
fn scale_limit() -> f32 {
    0.1
}
fn rotate_limit() -> f32 {
    45.0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GaussianNoise {
    #[serde(default = "noise_var")]
    pub var_limit: (f32, f32),
    #[serde(default = "half")]
    pub p: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RandomErasing {
    #[serde(default = "erase_scale")]
    pub scale: (f32, f32),
    #[serde(default = "erase_ratio")]
    pub ratio: (f32, f32),
    #[serde(default = "half")]
    pub p: f32,
}

fn check_p(name: &'static str, p: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::Augment { transform: name, message: format!("p = {p}: must be between 0 and 1") });
    }
    Ok(())
}

fn check_range(name: &'static str, field: &str, (lo, hi): (f32, f32), min: f32, max: f32) -> Result<()> {
    if !(lo.is_finite() && hi.is_finite() && min <= lo && lo <= hi && hi <= max) {
        return Err(Error::Augment { transform: name, message: format!("{field} = [{lo}, {hi}]: need {min} <= low <= high <= {max}") });
    }
    Ok(())
}

fn check_size(name: &'static str, size: u32) -> Result<()> {
    if !(8..=4096).contains(&size) {
        return Err(Error::Augment { transform: name, message: format!("size = {size}: must be between 8 and 4096") });
    }
    Ok(())
}

fn lut(f: impl Fn(f32) -> f32) -> [u8; 256] {
    let mut t = [0u8; 256];
    for (i, v) in t.iter_mut().enumerate() {
        *v = f(i as f32).round().clamp(0.0, 255.0) as u8;
    }
    t
}

fn apply_lut(img: &mut RgbImage, t: &[u8; 256]) {
    img.as_mut().iter_mut().for_each(|v| *v = t[*v as usize]);
}

/// A standard normal draw (Box-Muller).
pub(crate) fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// torchvision's RandomResizedCrop window.
pub fn rrc_window(w: u32, h: u32, scale: (f32, f32), ratio: (f32, f32), rng: &mut impl Rng) -> Rect {
    let area = (w * h) as f32;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale.0..=scale.1);
        let ar = rng.random_range(lr0..=lr1).exp();
        let cw = (target * ar).sqrt().round() as u32;
        let ch = (target / ar).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            return Rect { x: rng.random_range(0..=w - cw), y: rng.random_range(0..=h - ch), w: cw, h: ch };
        }
    }
    // Fallback: centre crop clamped to the ratio range.
    let in_ratio = w as f32 / h as f32;
    let (cw, ch) = if in_ratio < ratio.0 {
        (w, ((w as f32 / ratio.0).round() as u32).clamp(1, h))
    } else if in_ratio > ratio.1 {
        (((h as f32 * ratio.1).round() as u32).clamp(1, w), h)
    } else {
        (w, h)
    };
    Rect { x: (w - cw) / 2, y: (h - ch) / 2, w: cw, h: ch }
}

impl Transform {
    /// The transform's name as written in specs.
    pub fn name(&self) -> &'static str {
        match self {
            Transform::RandomResizedCrop(_) => "random_resized_crop",
            Transform::CropIfNeeded(_) => "crop_if_needed",
            Transform::RandomCrop(_) => "random_crop",
            Transform::PadCenterCrop(_) => "pad_center_crop",
            Transform::CenterCropResize(_) => "center_crop_resize",
            Transform::Resize(_) => "resize",
            Transform::Hflip(_) => "hflip",
            Transform::Brightness(_) => "brightness",
            Transform::Contrast(_) => "contrast",
            Transform::Gamma(_) => "gamma",
            Transform::OneOf(_) => "one_of",
            Transform::ShiftScaleRotate(_) => "shift_scale_rotate",
            Transform::GaussianNoise(_) => "gaussian_noise",
            Transform::RandomErasing(_) => "random_erasing",
        }
    }

    /// Range checks, naming the transform and the field.
    ///
    /// # Errors
    /// [`Error::Augment`].
    pub fn validate(&self) -> Result<()> {
        let n = self.name();
        match self {
            Transform::RandomResizedCrop(t) => {
                check_size(n, t.size)?;
                check_range(n, "scale", t.scale, 1e-4, 1.0)?;
                check_range(n, "ratio", t.ratio, 1e-2, 100.0)
            }
            Transform::CropIfNeeded(t) | Transform::Resize(t) => check_size(n, t.size),
            Transform::RandomCrop(t) | Transform::PadCenterCrop(t) => check_size(n, t.size),
            Transform::CenterCropResize(t) => {
                check_size(n, t.size)?;
                check_size(n, t.crop)
            }
            Transform::Hflip(t) => check_p(n, t.p),
            Transform::Brightness(t) | Transform::Contrast(t) => {
                check_p(n, t.p)?;
                check_range(n, "limit", (0.0, t.limit), 0.0, 1.0)
            }
            Transform::Gamma(t) => {
                check_p(n, t.p)?;
                check_range(n, "gamma", t.gamma, 0.05, 20.0)
            }
            Transform::OneOf(t) => {
                check_p(n, t.p)?;
                if t.of.is_empty() {
                    return Err(Error::Augment { transform: n, message: "`of` is empty; list at least one transform".into() });
                }
                t.of.iter().try_for_each(Transform::validate)
            }
            Transform::ShiftScaleRotate(t) => {
                check_p(n, t.p)?;
                check_range(n, "shift_limit", (0.0, t.shift_limit), 0.0, 1.0)?;
                check_range(n, "scale_limit", (0.0, t.scale_limit), 0.0, 0.9)?;
                check_range(n, "rotate_limit", (0.0, t.rotate_limit), 0.0, 180.0)
            }
            Transform::GaussianNoise(t) => {
                check_p(n, t.p)?;
                check_range(n, "var_limit", t.var_limit, 0.0, 65025.0)
            }
            Transform::RandomErasing(t) => {
                check_p(n, t.p)?;
                check_range(n, "scale", t.scale, 1e-4, 1.0)?;
                check_range(n, "ratio", t.ratio, 1e-2, 100.0)
            }
        }
    }

    /// Applies the transform, drawing from `rng`.
    pub fn apply(&self, mut img: RgbImage, rng: &mut ChaCha8Rng) -> RgbImage {
        let (w, h) = img.dimensions();
        match self {
            Transform::RandomResizedCrop(t) => {
                let r = rrc_window(w, h, t.scale, t.ratio, rng);
                geometry::resize_region(&img, r, t.size, t.size)
            }
            Transform::CropIfNeeded(t) => {
                let (cw, ch) = (w.min(2 * t.size), h.min(2 * t.size));
                let r = Rect { x: rng.random_range(0..=w - cw), y: rng.random_range(0..=h - ch), w: cw, h: ch };
                geometry::resize_region(&img, r, t.size, t.size)
            }
            Transform::RandomCrop(t) => {
                let img = geometry::pad_to(&img, t.size, t.size, t.fill);
                let (w, h) = img.dimensions();
                let r = Rect { x: rng.random_range(0..=w - t.size), y: rng.random_range(0..=h - t.size), w: t.size, h: t.size };
                geometry::crop(&img, r)
            }
            Transform::PadCenterCrop(t) => {
                let img = geometry::pad_to(&img, t.size, t.size, t.fill);
                let (w, h) = img.dimensions();
                geometry::crop(&img, Rect { x: (w - t.size) / 2, y: (h - t.size) / 2, w: t.size, h: t.size })
            }
            Transform::CenterCropResize(t) => {
                let (cw, ch) = (w.min(t.crop), h.min(t.crop));
                geometry::resize_region(&img, Rect { x: (w - cw) / 2, y: (h - ch) / 2, w: cw, h: ch }, t.size, t.size)
            }
            Transform::Resize(t) => geometry::resize(&img, t.size, t.size),
            Transform::Hflip(t) => {
                if rng.random::<f32>() < t.p {
                    geometry::hflip(&mut img);
                }
                img
            }
            Transform::Brightness(t) => {
                if rng.random::<f32>() < t.p {
                    let b = rng.random_range(-t.limit..=t.limit) * 255.0;
                    apply_lut(&mut img, &lut(|v| v + b));
                }
                img
            }
            Transform::Contrast(t) => {
                if rng.random::<f32>() < t.p {
                    let a = rng.random_range(1.0 - t.limit..=1.0 + t.limit);
                    let raw = img.as_raw();
                    let mean = raw.iter().map(|&v| v as u64).sum::<u64>() as f32 / raw.len().max(1) as f32;
                    apply_lut(&mut img, &lut(|v| (v - mean) * a + mean));
                }
                img
            }
            Transform::Gamma(t) => {
                if rng.random::<f32>() < t.p {
                    let g = rng.random_range(t.gamma.0..=t.gamma.1);
                    apply_lut(&mut img, &lut(|v| 255.0 * (v / 255.0).powf(g)));
                }
                img
            }
            Transform::OneOf(t) => {
                if rng.random::<f32>() < t.p {
                    let pick = rng.random_range(0..t.of.len());
                    return t.of[pick].apply(img, rng);
                }
                img
            }
            Transform::ShiftScaleRotate(t) => {
                if rng.random::<f32>() < t.p {
                    let angle = rng.random_range(-t.rotate_limit..=t.rotate_limit);
                    let scale = 1.0 + rng.random_range(-t.scale_limit..=t.scale_limit);
                    let dx = rng.random_range(-t.shift_limit..=t.shift_limit) * w as f32;
                    let dy = rng.random_range(-t.shift_limit..=t.shift_limit) * h as f32;
                    return geometry::shift_scale_rotate(&img, angle, scale, dx, dy);
                }
                img
            }
            Transform::GaussianNoise(t) => {
                if rng.random::<f32>() < t.p {
                    let sigma = rng.random_range(t.var_limit.0..=t.var_limit.1).sqrt();
                    let mut noise = ChaCha8Rng::seed_from_u64(rng.random());
                    img.as_mut().iter_mut().for_each(|v| *v = (*v as f32 + sigma * normal(&mut noise)).round().clamp(0.0, 255.0) as u8);
                }
                img
            }
            Transform::RandomErasing(t) => {
                if rng.random::<f32>() < t.p {
                    let area = (w * h) as f32;
                    for _ in 0..10 {
                        let target = area * rng.random_range(t.scale.0..=t.scale.1);
                        let ar = rng.random_range(t.ratio.0.ln()..=t.ratio.1.ln()).exp();
                        let (ew, eh) = ((target * ar).sqrt().round() as u32, (target / ar).sqrt().round() as u32);
                        if ew == 0 || eh == 0 || ew >= w || eh >= h {
                            continue;
                        }
                        let (x0, y0) = (rng.random_range(0..=w - ew), rng.random_range(0..=h - eh));
                        let stride = w as usize * 3;
                        let buf = img.as_mut();
                        for y in y0..y0 + eh {
                            let row = &mut buf[y as usize * stride + x0 as usize * 3..y as usize * stride + (x0 + ew) as usize * 3];
                            rng.fill(row);
                        }
                        break;
                    }
                }
                img
            }
        }
    }
}

/// A list of transforms applied in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Pipeline(pub Vec<Transform>);

impl Pipeline {
    /// # Errors
    /// [`Error::Augment`] for the first invalid transform.
    pub fn validate(&self) -> Result<()> {
        self.0.iter().try_for_each(Transform::validate)
    }

    /// Applies every transform with a generator seeded by `seed`.
    pub fn apply(&self, img: RgbImage, seed: u64) -> RgbImage {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        self.0.iter().fold(img, |img, t| t.apply(img, &mut rng))
    }

    /// The geometry of the pipeline's last sizing transform: how a training
    /// image reaches the model's size, which evaluation should mirror.
    pub fn geometry(&self) -> Option<Geometry> {
        self.0.iter().rev().find_map(|t| match t {
            Transform::RandomResizedCrop(_) | Transform::Resize(_) => Some(Geometry::Whole),
            Transform::CropIfNeeded(_) | Transform::CenterCropResize(_) => Some(Geometry::CropThenResize),
            Transform::RandomCrop(_) | Transform::PadCenterCrop(_) => Some(Geometry::NativeScale),
            _ => None,
        })
    }

    /// The output side when the pipeline ends in a fixed-size transform.
    pub fn output_size(&self) -> Option<u32> {
        self.0.iter().rev().find_map(|t| match t {
            Transform::RandomResizedCrop(t) => Some(t.size),
            Transform::CropIfNeeded(t) | Transform::Resize(t) => Some(t.size),
            Transform::RandomCrop(t) | Transform::PadCenterCrop(t) => Some(t.size),
            Transform::CenterCropResize(t) => Some(t.size),
            _ => None,
        })
    }
}

/// How a pipeline brings an image to its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Geometry {
    /// The whole image (or a large random part of it) resized.
    Whole,
    /// A crop of at most twice the size, then resized (R2, R3).
    CropThenResize,
    /// A size x size crop at native scale, padded when small (R4).
    NativeScale,
}

/// Per-channel normalisation `(v / 255 - mean) / std` into planar CHW f32.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Normalize {
    /// ImageNet statistics, as the pretrained backbones expect.
    fn default() -> Self {
        Normalize { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
    }
}

impl Normalize {
    /// Writes `img` as `[3, h, w]` into `out` (length `3 * h * w`).
    ///
    /// # Panics
    /// When `out` has the wrong length.
    pub fn write_chw(&self, img: &RgbImage, out: &mut [f32]) {
        let plane = (img.width() * img.height()) as usize;
        assert_eq!(out.len(), 3 * plane, "output holds 3 planes of the image");
        let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * self.std[c]));
        let shift: [f32; 3] = std::array::from_fn(|c| -self.mean[c] / self.std[c]);
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, p) in img.as_raw().chunks_exact(3).enumerate() {
            r[i] = p[0] as f32 * scale[0] + shift[0];
            g[i] = p[1] as f32 * scale[1] + shift[1];
            b[i] = p[2] as f32 * scale[2] + shift[2];
        }
    }
}

/// Writes `img` as planar `[3, h, w]` u8 into `out` (for GPU-side normalisation).
///
/// # Panics
/// When `out` has the wrong length.
pub fn write_chw_u8(img: &RgbImage, out: &mut [u8]) {
    let plane = (img.width() * img.height()) as usize;
    assert_eq!(out.len(), 3 * plane, "output holds 3 planes of the image");
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, p) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = p[0];
        g[i] = p[1];
        b[i] = p[2];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| ::image::Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, ((x + y) % 256) as u8]))
    }

    fn parse(toml_text: &str) -> Pipeline {
        #[derive(Deserialize)]
        struct W {
            augment: Pipeline,
        }
        let p = toml::from_str::<W>(toml_text).unwrap().augment;
        p.validate().unwrap();
        p
    }

    #[test]
    fn every_transform_parses_from_toml_and_unknown_fields_are_refused() {
        let p = parse(
            r#"augment = [
              { random_resized_crop = { size = 64, scale = [0.4, 1.0] } },
              { crop_if_needed = { size = 64 } },
              { random_crop = { size = 64 } },
              { center_crop_resize = { crop = 640, size = 320 } },
              { resize = { size = 32 } },
              { hflip = {} },
              { one_of = { p = 0.9, of = [{ brightness = { limit = 0.2 } }, { contrast = { limit = 0.2 } }] } },
              { gamma = { gamma = [0.8, 1.2] } },
              { shift_scale_rotate = { rotate_limit = 20.0 } },
              { gaussian_noise = { p = 1.0 } },
              { random_erasing = {} },
            ]"#,
        );
        assert_eq!(p.0.len(), 11);
        assert_eq!(p.output_size(), Some(32));
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct W {
            augment: Pipeline,
        }
        let err = toml::from_str::<W>("augment = [{ hflip = { q = 1 } }]").unwrap_err().to_string();
        assert!(err.contains('q'), "{err}");
        assert!(toml::from_str::<W>("augment = [{ hflipp = {} }]").is_err());
    }

    #[test]
    fn out_of_range_settings_name_the_transform_and_field() {
        let t = Transform::RandomResizedCrop(RandomResizedCrop { size: 32, scale: (0.9, 0.1), ratio: rrc_ratio() });
        let e = t.validate().unwrap_err().to_string();
        assert!(e.contains("random_resized_crop") && e.contains("scale"), "{e}");
        assert!(Transform::Hflip(Prob { p: 1.5 }).validate().is_err());
        assert!(Transform::OneOf(OneOf { of: vec![], p: 1.0 }).validate().is_err());
    }

    #[test]
    fn geometry_of_every_sizing_transform() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        type Case = (Transform, (u32, u32), (u32, u32));
        let cases: Vec<Case> = vec![
            (Transform::RandomResizedCrop(RandomResizedCrop { size: 48, scale: (0.4, 1.0), ratio: rrc_ratio() }), (300, 900), (48, 48)),
            (Transform::CropIfNeeded(Side { size: 40 }), (300, 50), (40, 40)),
            (Transform::RandomCrop(RandomCrop { size: 64, fill: [0; 3] }), (50, 200), (64, 64)),
            (Transform::CenterCropResize(CenterCropResize { crop: 64, size: 32 }), (300, 100), (32, 32)),
            (Transform::Resize(Side { size: 20 }), (300, 3000), (20, 20)),
            (Transform::ShiftScaleRotate(ShiftScaleRotate { shift_limit: 0.1, scale_limit: 0.1, rotate_limit: 30.0, p: 1.0 }), (40, 70), (40, 70)),
            (Transform::RandomErasing(RandomErasing { scale: erase_scale(), ratio: erase_ratio(), p: 1.0 }), (40, 70), (40, 70)),
        ];
        for (t, (w, h), want) in cases {
            for _ in 0..20 {
                assert_eq!(t.apply(img(w, h), &mut rng).dimensions(), want, "{t:?}");
            }
        }
    }

    #[test]
    fn rrc_windows_respect_scale_and_ratio() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..500 {
            let r = rrc_window(400, 300, (0.4, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(r.x + r.w <= 400 && r.y + r.h <= 300);
            let frac = (r.w * r.h) as f32 / 120_000.0;
            let ratio = r.w as f32 / r.h as f32;
            let fallback = (r.w, r.h) == (400, 300);
            assert!(fallback || ((0.39..=1.01).contains(&frac) && (0.73..=1.36).contains(&ratio)), "{r:?}");
        }
        // A 1:10 strip falls back to a centre crop clamped to the ratio range.
        let mut never = ChaCha8Rng::seed_from_u64(0);
        let r = rrc_window(3000, 300, (0.99, 1.0), (0.75, 4.0 / 3.0), &mut never);
        assert_eq!((r.w, r.h), (400, 300));
        assert_eq!(r.x, 1300);
    }

    #[test]
    fn crop_if_needed_keeps_small_sides_whole() {
        // 600x600 from 500x300 -> the whole image; from 500x900 -> 500x600.
        let t = Transform::CropIfNeeded(Side { size: 300 });
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let small = img(500, 300);
        let direct = geometry::resize(&small, 300, 300);
        assert_eq!(t.apply(small, &mut rng), direct);
        let tall = img(500, 900);
        let out = t.apply(tall.clone(), &mut rng);
        let found = (0..=300).any(|y| geometry::resize_region(&tall, Rect { x: 0, y, w: 500, h: 600 }, 300, 300) == out);
        assert!(found, "the output is a 500x600 window of the input, resized");
    }

    #[test]
    fn random_crop_pads_small_images_and_center_crop_takes_the_middle() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let out = Transform::RandomCrop(RandomCrop { size: 10, fill: [1, 2, 3] }).apply(img(4, 4), &mut rng);
        assert_eq!(out.get_pixel(0, 0).0, [1, 2, 3]);
        assert_eq!(out.get_pixel(3, 3).0, img(4, 4).get_pixel(0, 0).0);
        let src = img(100, 60);
        let c = Transform::CenterCropResize(CenterCropResize { crop: 20, size: 20 }).apply(src.clone(), &mut rng);
        assert_eq!(c, geometry::crop(&src, Rect { x: 40, y: 20, w: 20, h: 20 }));
    }

    #[test]
    fn photometric_transforms_move_values_the_right_way() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let grey = RgbImage::from_pixel(8, 8, ::image::Rgb([100, 100, 100]));
        let b = Transform::Brightness(Limit { limit: 0.2, p: 1.0 }).apply(grey.clone(), &mut rng);
        let d = b.get_pixel(0, 0)[0] as i32 - 100;
        assert!(d.abs() <= 51 && b.pixels().all(|p| p.0 == b.get_pixel(0, 0).0));
        let two = RgbImage::from_fn(2, 1, |x, _| ::image::Rgb([if x == 0 { 50 } else { 150 }; 3]));
        let c = Transform::Contrast(Limit { limit: 0.5, p: 1.0 }).apply(two, &mut rng);
        assert_eq!(c.get_pixel(0, 0)[0] as i32 + c.get_pixel(1, 0)[0] as i32, 200, "contrast keeps the mean");
        let g = Transform::Gamma(Gamma { gamma: (2.0, 2.0), p: 1.0 }).apply(grey.clone(), &mut rng);
        assert_eq!(g.get_pixel(0, 0)[0], (255.0f32 * (100.0f32 / 255.0).powi(2)).round() as u8);
        let n = Transform::GaussianNoise(GaussianNoise { var_limit: (100.0, 100.0), p: 1.0 }).apply(RgbImage::from_pixel(64, 64, ::image::Rgb([128; 3])), &mut rng);
        let vals: Vec<f32> = n.as_raw().iter().map(|&v| v as f32 - 128.0).collect();
        let var = vals.iter().map(|v| v * v).sum::<f32>() / vals.len() as f32;
        assert!((70.0..130.0).contains(&var), "noise variance {var}");
        let e = Transform::RandomErasing(RandomErasing { scale: (0.1, 0.1), ratio: (1.0, 1.0), p: 1.0 }).apply(grey.clone(), &mut rng);
        assert!(e.pixels().any(|p| p.0 != [100, 100, 100]));
        let p0 = Transform::Brightness(Limit { limit: 0.2, p: 0.0 }).apply(grey.clone(), &mut rng);
        assert_eq!(p0, grey, "p = 0 never applies");
    }

    #[test]
    fn one_of_applies_exactly_one_choice() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let t = Transform::OneOf(OneOf { of: vec![Transform::Resize(Side { size: 10 }), Transform::Resize(Side { size: 20 })], p: 1.0 });
        let sizes: std::collections::HashSet<u32> = (0..40).map(|_| t.apply(img(30, 30), &mut rng).width()).collect();
        assert_eq!(sizes, [10, 20].into_iter().collect());
    }

    #[test]
    fn pipelines_are_deterministic_by_seed() {
        let p = parse(
            r#"augment = [
              { random_resized_crop = { size = 32 } }, { hflip = {} }, { shift_scale_rotate = {} },
              { gaussian_noise = {} }, { random_erasing = {} }, { brightness = { limit = 0.2 } },
            ]"#,
        );
        let a = p.apply(img(120, 90), 77);
        assert_eq!(a, p.apply(img(120, 90), 77));
        assert!((0..5).any(|s| p.apply(img(120, 90), s) != a));
    }

    #[test]
    fn normalisation_writes_planes_in_chw_order() {
        let im = RgbImage::from_fn(2, 1, |x, _| ::image::Rgb([if x == 0 { 255 } else { 0 }, 0, 51]));
        let n = Normalize { mean: [0.5, 0.0, 0.0], std: [0.5, 1.0, 0.2] };
        let mut out = vec![0f32; 6];
        n.write_chw(&im, &mut out);
        let want = [1.0, -1.0, 0.0, 0.0, 1.0, 1.0];
        assert!(out.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5), "{out:?}");
        let mut u = vec![0u8; 6];
        write_chw_u8(&im, &mut u);
        assert_eq!(u, [255, 0, 0, 0, 51, 51]);
    }
}
