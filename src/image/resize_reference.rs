//! The scalar antialiased bilinear resize the project used before
//! `fast_image_resize` (f32 taps, one pass per axis, no rounding between
//! passes). Kept only as the reference that the SIMD resize in
//! `geometry.rs` is tested and benchmarked against; not part of the
//! library (included by path from the tests and `examples/bench_resize.rs`).

use ::image::RgbImage;

/// A rectangle in pixel coordinates (as `geometry::Rect`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

fn crop(img: &RgbImage, r: Rect) -> RgbImage {
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

