//! Pixel geometry on RGB u8 images (image stage): crop, antialiased resize
//! of a sub-rectangle, horizontal flip, padding and affine warps. The
//! building blocks of the augmentations; touches no storage.

use ::image::RgbImage;

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

/// Per-output-sample taps of a triangle (bilinear) filter widened by the
/// scale when shrinking (antialiasing, as Pillow's BILINEAR).
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<f32>,
    max: usize,
}

fn taps(offset: u32, in_len: u32, out_len: u32) -> Taps {
    let scale = in_len as f32 / out_len as f32;
    let fscale = scale.max(1.0);
    let support = fscale;
    let max = (support.ceil() as usize) * 2 + 1;
    let mut t = Taps { start: Vec::with_capacity(out_len as usize), len: Vec::with_capacity(out_len as usize), weights: vec![0.0; out_len as usize * max], max };
    for o in 0..out_len as usize {
        let centre = (o as f32 + 0.5) * scale;
        let lo = ((centre - support).floor().max(0.0)) as usize;
        let hi = ((centre + support).ceil() as usize).min(in_len as usize);
        let w = &mut t.weights[o * max..(o + 1) * max];
        let mut sum = 0.0;
        let n = (hi - lo).min(max);
        for (k, wk) in w.iter_mut().enumerate().take(n) {
            let d = ((lo + k) as f32 + 0.5 - centre) / fscale;
            *wk = (1.0 - d.abs()).max(0.0);
            sum += *wk;
        }
        if sum > 0.0 {
            w.iter_mut().take(n).for_each(|v| *v /= sum);
        } else {
            w[0] = 1.0;
        }
        t.start.push(lo + offset as usize);
        t.len.push(n.max(1));
    }
    t
}

/// One horizontal filtering pass of an interleaved RGB row.
fn h_pass<T: Copy + Into<f32>>(tx: &Taps, s: &[T], d: &mut [f32]) {
    for (o, px) in d.chunks_exact_mut(3).enumerate() {
        let (st, n) = (tx.start[o], tx.len[o]);
        let wt = &tx.weights[o * tx.max..o * tx.max + n];
        let taps = &s[st * 3..(st + n) * 3];
        let (mut a, mut b, mut c) = (0f32, 0f32, 0f32);
        for (&wk, p) in wt.iter().zip(taps.chunks_exact(3)) {
            a += wk * p[0].into();
            b += wk * p[1].into();
            c += wk * p[2].into();
        }
        px[0] = a;
        px[1] = b;
        px[2] = c;
    }
}

/// Resizes the region `r` of `img` to `w x h` with an antialiased bilinear
/// filter (one pass per axis).
///
/// # Panics
/// When `r` is empty or outside `img`, or `w`/`h` is 0.
pub fn resize_region(img: &RgbImage, r: Rect, w: u32, h: u32) -> RgbImage {
    assert!(w > 0 && h > 0 && r.w > 0 && r.h > 0 && r.x + r.w <= img.width() && r.y + r.h <= img.height(), "resize {r:?} of {}x{} to {w}x{h}", img.width(), img.height());
    if (r.w, r.h) == (w, h) {
        return crop(img, r);
    }
    let src = img.as_raw();
    let stride = img.width() as usize * 3;
    let tx = taps(r.x, r.w, w);
    let ty = taps(r.y, r.h, h);
    let (w, h) = (w as usize, h as usize);
    let (rw, rh) = (r.w as usize, r.h as usize);
    // Run the pass that shrinks more first (tall strips: vertical first).
    let cost_h_first = rh * w * tx.max + h * w * ty.max;
    let cost_v_first = h * rw * ty.max + h * w * tx.max;
    let mut out = vec![0u8; w * h * 3];
    if cost_h_first <= cost_v_first {
        let mut tmp = vec![0f32; rh * w * 3];
        for row in 0..rh {
            let s = &src[(row + r.y as usize) * stride..(row + r.y as usize + 1) * stride];
            h_pass(&tx, s, &mut tmp[row * w * 3..(row + 1) * w * 3]);
        }
        let mut acc = vec![0f32; w * 3];
        for o in 0..h {
            let (st, n) = (ty.start[o] - r.y as usize, ty.len[o]);
            acc.iter_mut().for_each(|v| *v = 0.0);
            for (k, &wk) in ty.weights[o * ty.max..o * ty.max + n].iter().enumerate() {
                for (a, &v) in acc.iter_mut().zip(&tmp[(st + k) * w * 3..(st + k + 1) * w * 3]) {
                    *a += wk * v;
                }
            }
            for (d, &a) in out[o * w * 3..(o + 1) * w * 3].iter_mut().zip(&acc) {
                *d = (a + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    } else {
        let x0 = r.x as usize * 3;
        let mut col = vec![0f32; rw * 3];
        let mut line = vec![0f32; w * 3];
        // Shift horizontal taps to the region's own coordinates.
        let tx = Taps { start: tx.start.iter().map(|s| s - r.x as usize).collect(), len: tx.len, weights: tx.weights, max: tx.max };
        for o in 0..h {
            let (st, n) = (ty.start[o], ty.len[o]);
            col.iter_mut().for_each(|v| *v = 0.0);
            for (k, &wk) in ty.weights[o * ty.max..o * ty.max + n].iter().enumerate() {
                let srow = &src[(st + k) * stride + x0..(st + k) * stride + x0 + rw * 3];
                for (a, &v) in col.iter_mut().zip(srow) {
                    *a += wk * v as f32;
                }
            }
            h_pass(&tx, &col, &mut line);
            for (d, &a) in out[o * w * 3..(o + 1) * w * 3].iter_mut().zip(&line) {
                *d = (a + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }
    RgbImage::from_raw(w as u32, h as u32, out).expect("buffer sized to the output")
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
}
