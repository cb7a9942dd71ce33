//! Pixel geometry on RGB u8 images (image stage): crop, antialiased resize
//! of a sub-rectangle (SIMD, by `fast_image_resize`), horizontal flip,
//! padding and affine warps. The building blocks of the augmentations;
//! touches no storage.

use ::image::RgbImage;

#[cfg(test)]
#[path = "resize_reference.rs"]
mod resize_reference;

/// A rectangle in pixel coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl Rect {
    pub fn full(img: &RgbImage) -> Rect {
        Rect { x: 0, y: 0, w: img.width(), h: img.height() }
    }
}

/// Copies `r` out of `img`.
///
/// # Panics
/// When `r` is empty or reaches outside `img` (callers compute it inside).
pub fn crop(img: &RgbImage, r: Rect) -> RgbImage {
    assert!(r.w > 0 && r.h > 0 && r.x + r.w <= img.width() && r.y + r.h <= img.height(), "crop {r:?} inside {}x{}", img.width(), img.height());
    let src = img.as_raw();
    let stride = img.width() as usize * 3;
    let mut out = Vec::with_capacity(r.w as usize * r.h as usize * 3);
    for y in r.y..r.y + r.h {
        let start = y as usize * stride + r.x as usize * 3;
        out.extend_from_slice(&src[start..start + r.w as usize * 3]);
    }
    RgbImage::from_raw(r.w, r.h, out).expect("buffer sized to the crop")
}

thread_local! {
    /// One resizer per thread, so its scratch buffers are reused.
    static RESIZER: std::cell::RefCell<fast_image_resize::Resizer> = std::cell::RefCell::new(fast_image_resize::Resizer::new());
}

/// Resizes the region `r` of `img` to `w x h` with an antialiased bilinear
/// filter (Pillow's BILINEAR convolution: a triangle widened by the scale
/// when shrinking), by `fast_image_resize` (SIMD, fixed-point weights, the
/// crop taken during the resize). Only pixels inside `r` are read: the
/// filter is clipped to the region's edges. Within 1 grey level of the
/// previous scalar f32 implementation (`resize_reference.rs`, tested below).
///
/// # Panics
/// When `r` is empty or outside `img`, or `w`/`h` is 0.
pub fn resize_region(img: &RgbImage, r: Rect, w: u32, h: u32) -> RgbImage {
    use fast_image_resize::{images, FilterType, PixelType, ResizeAlg, ResizeOptions};
    assert!(w > 0 && h > 0 && r.w > 0 && r.h > 0 && r.x + r.w <= img.width() && r.y + r.h <= img.height(), "resize {r:?} of {}x{} to {w}x{h}", img.width(), img.height());
    if (r.w, r.h) == (w, h) {
        return crop(img, r);
    }
    let src = images::ImageRef::new(img.width(), img.height(), img.as_raw(), PixelType::U8x3).expect("an RgbImage's buffer is width x height x 3 bytes");
    // A cropped view (not ResizeOptions::crop), so that the filter stops at
    // the region's edges instead of reading the pixels around it.
    let view = images::CroppedImage::new(&src, r.x, r.y, r.w, r.h).expect("region checked inside the image above");
    let mut dst = images::Image::new(w, h, PixelType::U8x3);
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    RESIZER.with(|cell| cell.borrow_mut().resize(&view, &mut dst, &opts)).expect("source and destination are both U8x3 and non-empty");
    RgbImage::from_raw(w, h, dst.into_vec()).expect("buffer sized to the output")
}

/// Resizes the whole image to `w x h`.
pub fn resize(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    resize_region(img, Rect::full(img), w, h)
}

/// Mirrors left and right in place.
pub fn hflip(img: &mut RgbImage) {
    let w = img.width() as usize;
    for row in img.as_mut().chunks_exact_mut(w * 3) {
        for x in 0..w / 2 {
            let (a, b) = (x * 3, (w - 1 - x) * 3);
            for c in 0..3 {
                row.swap(a + c, b + c);
            }
        }
    }
}

/// Pads to at least `w x h`, centring the image on a `fill` background.
pub fn pad_to(img: &RgbImage, w: u32, h: u32, fill: [u8; 3]) -> RgbImage {
    let (nw, nh) = (img.width().max(w), img.height().max(h));
    if (nw, nh) == img.dimensions() {
        return img.clone();
    }
    let mut out = RgbImage::from_pixel(nw, nh, ::image::Rgb(fill));
    let (ox, oy) = ((nw - img.width()) / 2, (nh - img.height()) / 2);
    let (src, stride) = (img.as_raw(), img.width() as usize * 3);
    let dst_stride = nw as usize * 3;
    let dst = out.as_mut();
    for y in 0..img.height() as usize {
        let d = (y + oy as usize) * dst_stride + ox as usize * 3;
        dst[d..d + stride].copy_from_slice(&src[y * stride..(y + 1) * stride]);
    }
    out
}

/// `i` reflected into `0..n` without repeating the edge (OpenCV's
/// BORDER_REFLECT_101, albumentations' default).
fn reflect101(mut i: i64, n: i64) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    i = i.rem_euclid(period);
    (if i >= n { period - i } else { i }) as usize
}

/// Warps `img` by the affine map that rotates by `angle_deg` and scales by
/// `scale` about the centre, then shifts by (`dx`, `dy`) pixels; bilinear
/// sampling, reflected borders. Same size as the input.
pub fn shift_scale_rotate(img: &RgbImage, angle_deg: f32, scale: f32, dx: f32, dy: f32) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let (s, c) = angle_deg.to_radians().sin_cos();
    // Inverse map: output -> input.
    let (ic, is) = (c / scale, s / scale);
    let src = img.as_raw();
    let mut out = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let (ux, uy) = (x as f32 + 0.5 - cx - dx, y as f32 + 0.5 - cy - dy);
            let sx = ic * ux + is * uy + cx - 0.5;
            let sy = -is * ux + ic * uy + cy - 0.5;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let xs = [reflect101(x0, w as i64), reflect101(x0 + 1, w as i64)];
            let ys = [reflect101(y0, h as i64), reflect101(y0 + 1, h as i64)];
            let d = (y * w + x) * 3;
            for ch in 0..3 {
                let p = |xx: usize, yy: usize| src[(yy * w + xx) * 3 + ch] as f32;
                let top = p(xs[0], ys[0]) * (1.0 - fx) + p(xs[1], ys[0]) * fx;
                let bot = p(xs[0], ys[1]) * (1.0 - fx) + p(xs[1], ys[1]) * fx;
                out[d + ch] = (top * (1.0 - fy) + bot * fy + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }
    RgbImage::from_raw(w as u32, h as u32, out).expect("buffer sized to the input")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| ::image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]))
    }

    #[test]
    fn crop_takes_the_requested_rectangle() {
        let c = crop(&ramp(10, 8), Rect { x: 2, y: 3, w: 4, h: 2 });
        assert_eq!(c.dimensions(), (4, 2));
        assert_eq!(c.get_pixel(0, 0).0, [2, 3, 128]);
        assert_eq!(c.get_pixel(3, 1).0, [5, 4, 128]);
    }

    #[test]
    fn resize_keeps_flat_colours_and_smooth_ramps() {
        let flat = RgbImage::from_pixel(37, 91, ::image::Rgb([10, 200, 33]));
        let r = resize(&flat, 20, 20);
        assert!(r.pixels().all(|p| p.0 == [10, 200, 33]));
        let big = resize(&ramp(100, 100), 50, 50);
        assert_eq!(big.dimensions(), (50, 50));
        // Output pixel x covers input 2x..2x+2, centre 2x+1 -> value ~2x+0.5.
        for x in [5u32, 20, 40] {
            assert!((big.get_pixel(x, 10)[0] as i32 - (2 * x) as i32).abs() <= 1, "x={x}: {:?}", big.get_pixel(x, 10));
        }
        let up = resize(&ramp(10, 10), 40, 30);
        assert_eq!(up.dimensions(), (40, 30));
    }

    #[test]
    fn tall_regions_shrink_vertically_first_with_the_same_result() {
        // Channel 0 = x, channel 1 = y / 4: both ramps survive either pass order.
        let img = RgbImage::from_fn(60, 1000, |x, y| ::image::Rgb([x as u8, (y / 4) as u8, 50]));
        let r = Rect { x: 10, y: 100, w: 20, h: 800 };
        let out = resize_region(&img, r, 10, 20);
        for ox in 0..10u32 {
            for oy in 0..20u32 {
                let p = out.get_pixel(ox, oy).0;
                let want_x = 10.0 + 2.0 * ox as f32 + 0.5;
                let want_y = (100.0 + 40.0 * oy as f32 + 20.0) / 4.0;
                assert!((p[0] as f32 - want_x).abs() <= 1.0, "x at ({ox},{oy}): {p:?}");
                assert!((p[1] as f32 - want_y).abs() <= 1.0, "y at ({ox},{oy}): {p:?}");
                assert_eq!(p[2], 50);
            }
        }
    }

    #[test]
    fn resize_of_a_region_only_reads_that_region() {
        let mut img = RgbImage::from_pixel(40, 40, ::image::Rgb([0, 0, 0]));
        for y in 10..30 {
            for x in 10..30 {
                img.put_pixel(x, y, ::image::Rgb([255, 255, 255]));
            }
        }
        let r = resize_region(&img, Rect { x: 10, y: 10, w: 20, h: 20 }, 7, 7);
        assert!(r.pixels().all(|p| p.0 == [255, 255, 255]));
    }

    #[test]
    fn hflip_mirrors_and_twice_is_identity() {
        let img = ramp(7, 3);
        let mut f = img.clone();
        hflip(&mut f);
        assert_eq!(f.get_pixel(0, 1).0, img.get_pixel(6, 1).0);
        hflip(&mut f);
        assert_eq!(f, img);
    }

    #[test]
    fn pad_centres_the_image() {
        let p = pad_to(&ramp(4, 2), 8, 6, [9, 9, 9]);
        assert_eq!(p.dimensions(), (8, 6));
        assert_eq!(p.get_pixel(0, 0).0, [9, 9, 9]);
        assert_eq!(p.get_pixel(2, 2).0, [0, 0, 128]);
        assert_eq!(pad_to(&ramp(10, 10), 5, 5, [0; 3]).dimensions(), (10, 10));
    }

    #[test]
    fn identity_warp_is_lossless_and_a_half_turn_reverses() {
        let img = ramp(9, 5);
        assert_eq!(shift_scale_rotate(&img, 0.0, 1.0, 0.0, 0.0), img);
        let r = shift_scale_rotate(&img, 180.0, 1.0, 0.0, 0.0);
        assert_eq!(r.get_pixel(0, 0).0, img.get_pixel(8, 4).0);
        let s = shift_scale_rotate(&img, 0.0, 1.0, 2.0, 0.0);
        assert_eq!(s.get_pixel(5, 2).0, img.get_pixel(3, 2).0);
    }

    /// Images like the ones the loader sees: the synthetic sample's PNGs
    /// (painted shapes, 3x3 block noise, strips up to 1:10, grey and RGBA
    /// sources) and photo-like pictures of varied sizes (smooth light,
    /// hard edges, fine texture, sensor-like noise).
    fn real_like() -> Vec<RgbImage> {
        use crate::seed::splitmix;
        let p = crate::data::sample::plan(&crate::data::sample::SampleSection { train: 10, test: 1, classes: 30, seed: 7, noise: 0.0 }).unwrap();
        let mut out: Vec<RgbImage> =
            p.train.iter().map(|r| crate::image::decode(&r.id.to_string(), &p.render(r, crate::storage::keys::Split::Train).unwrap(), u64::MAX).unwrap()).collect();
        for (i, &(w, h)) in [(37u32, 91u32), (300, 300), (640, 480), (1200, 300), (257, 1999), (1024, 683), (5, 3)].iter().enumerate() {
            out.push(RgbImage::from_fn(w, h, |x, y| {
                let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
                let light = 90.0 + 120.0 * (fx * 2.1 + i as f32).sin() * (fy * 1.3).cos();
                let edge = if (x as i64 - w as i64 / 3).abs() < (w / 8) as i64 && y > h / 2 { 70.0 } else { 0.0 };
                let texture = if (x / 2 + y / 3) % 2 == 0 { 18.0 } else { -18.0 };
                let noise = (splitmix((i as u64) << 40 | (y as u64) << 20 | x as u64) % 31) as f32 - 15.0;
                let v = |c: f32| (light * c + edge + texture + noise).clamp(0.0, 255.0) as u8;
                ::image::Rgb([v(1.0), v(0.8), v(0.6)])
            }));
        }
        out
    }

    #[test]
    fn the_simd_resize_is_within_one_grey_level_of_the_scalar_reference() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (mut cases, mut values, mut off_by_one, mut worst) = (0usize, 0usize, 0usize, 0i32);
        for img in real_like() {
            let (iw, ih) = img.dimensions();
            for k in 0..40 {
                // Whole image, then random regions (as RandomResizedCrop and centre crops take them).
                let r = if k == 0 {
                    Rect::full(&img)
                } else {
                    let w = rng.random_range(1..=iw);
                    let h = rng.random_range(1..=ih);
                    Rect { x: rng.random_range(0..=iw - w), y: rng.random_range(0..=ih - h), w, h }
                };
                let sizes = [(224u32, 224u32), (320, 320), (1, 1), (r.w.div_ceil(3), r.h.div_ceil(7)), (rng.random_range(1..700), rng.random_range(1..700))];
                let (ow, oh) = sizes[k % sizes.len()];
                let new = resize_region(&img, r, ow, oh);
                let old = resize_reference::resize_region(&img, resize_reference::Rect { x: r.x, y: r.y, w: r.w, h: r.h }, ow, oh);
                assert_eq!(new.dimensions(), old.dimensions());
                for (a, b) in new.as_raw().iter().zip(old.as_raw()) {
                    let d = (*a as i32 - *b as i32).abs();
                    worst = worst.max(d);
                    off_by_one += (d == 1) as usize;
                    assert!(d <= 1, "{iw}x{ih} region {r:?} -> {ow}x{oh}: values {a} and {b}");
                }
                values += new.as_raw().len();
                cases += 1;
            }
        }
        eprintln!("{cases} resizes, {values} values, {off_by_one} differ by 1 ({:.3}%), max |diff| {worst}", 100.0 * off_by_one as f64 / values as f64);
    }
}
