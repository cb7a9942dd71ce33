//! Paints one synthetic image from its labels (part of the data stage's
//! sample generator); touches no storage. Each culture is a background
//! palette and texture, each tag a bold outlined motif (shape x fill x
//! colour) at a random position, scale and tilt; small clutter and block
//! noise sit on top, so the labels are learnable but not read off one pixel.

use crate::seed::splitmix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Pixel layout of a painted image (what the PNG will hold).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Rgb,
    Grey,
    Rgba,
}

/// A painted image, row-major, `channels()` bytes per pixel.
#[derive(Clone, Debug)]
pub struct Painted {
    pub width: u32,
    pub height: u32,
    pub mode: Mode,
    pub pixels: Vec<u8>,
}

impl Painted {
    pub fn channels(&self) -> usize {
        match self.mode {
            Mode::Rgb => 3,
            Mode::Grey => 1,
            Mode::Rgba => 4,
        }
    }
}

/// What to paint: indices into the sample's culture and tag lists.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Look {
    pub cultures: Vec<usize>,
    pub tags: Vec<usize>,
}

/// Number of distinct tag motifs (shapes x fills x colours) before they repeat.
pub const DISTINCT_MOTIFS: usize = SHAPES * FILLS * TAG_COLOURS;
const SHAPES: usize = 12;
const FILLS: usize = 2;
const TAG_COLOURS: usize = 10;

/// Shortest side of every image, as in the competition.
pub const SHORT_SIDE: u32 = 300;

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h = h.rem_euclid(1.0) * 6.0;
    let i = h.floor() as i32;
    let f = h - i as f32;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match i {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [r * 255.0, g * 255.0, b * 255.0]
}

/// Aspect ratio long/short: mostly near square, some long strips up to 10.
fn draw_aspect(rng: &mut ChaCha8Rng) -> f32 {
    let u: f32 = rng.random();
    if u < 0.65 {
        rng.random_range(1.0..1.6)
    } else if u < 0.93 {
        rng.random_range(1.6..3.0)
    } else {
        rng.random_range(3.0..10.0)
    }
}

/// Background of one culture (or of none): two colours and a texture.
struct Style {
    a: [f32; 3],
    b: [f32; 3],
    texture: usize,
    period: f32,
    phase: f32,
}

fn culture_style(culture: Option<usize>, rng: &mut ChaCha8Rng) -> Style {
    let period = rng.random_range(16.0f32..30.0);
    let phase = rng.random_range(0.0..period);
    match culture {
        Some(c) => {
            let hue = (c as f32 * 0.618_034 + 0.05).rem_euclid(1.0);
            let jitter = rng.random_range(-0.03f32..0.03);
            Style {
                a: hsv(hue + jitter, 0.55, rng.random_range(0.75..0.95)),
                b: hsv(hue + 0.1 + jitter, 0.75, rng.random_range(0.35..0.55)),
                texture: c % 4,
                period: period * (1.0 + (c / 4 % 3) as f32 * 0.6),
                phase,
            }
        }
        None => {
            let v = rng.random_range(0.45f32..0.8);
            Style { a: hsv(0.0, 0.0, v), b: hsv(0.0, 0.0, v - 0.12), texture: rng.random_range(0..4), period, phase }
        }
    }
}

fn texture_mix(style: &Style, x: f32, y: f32) -> f32 {
    let p = style.period;
    match style.texture {
        0 => ((y + style.phase) / p).fract().round(),
        1 => ((x + y + style.phase) / p).fract().round(),
        2 => {
            let dx = (x + style.phase).rem_euclid(p) - p / 2.0;
            let dy = (y + style.phase).rem_euclid(p) - p / 2.0;
            if dx * dx + dy * dy < p * p / 9.0 {
                1.0
            } else {
                0.0
            }
        }
        _ => ((((x + style.phase) / p).floor() + (y / p).floor()) as i64 & 1) as f32,
    }
}

/// Whether local point (u, v) in [-1, 1]^2 lies inside `shape`.
fn inside(shape: usize, u: f32, v: f32) -> bool {
    let r2 = u * u + v * v;
    match shape {
        0 => r2 <= 1.0,
        1 => u.abs() <= 0.8 && v.abs() <= 0.8,
        2 => (-0.9..=0.7).contains(&v) && u.abs() <= 0.9 * (v + 0.9) / 1.6,
        3 => (u.abs() <= 0.3 && v.abs() <= 0.95) || (v.abs() <= 0.3 && u.abs() <= 0.95),
        4 => (0.3..=1.0).contains(&r2),
        5 => u.abs() + v.abs() <= 1.0,
        6 => {
            let t = v.atan2(u);
            r2.sqrt() <= 0.45 + 0.5 * (0.5 + 0.5 * (5.0 * t).cos()).powi(2)
        }
        7 => r2 <= 1.0 && (u - 0.5) * (u - 0.5) + v * v > 0.55,
        8 => u.abs() <= 1.0 && v.abs() <= 0.35,
        9 => v.abs() <= 0.9 && u.abs() <= v.abs(),
        10 => {
            let m = u.abs().max(v.abs());
            (0.55..=0.9).contains(&m)
        }
        _ => r2 <= 1.0 && v >= 0.0,
    }
}

struct Motif {
    shape: usize,
    striped: bool,
    colour: [f32; 3],
}

fn motif(tag: usize) -> Motif {
    let m = tag % DISTINCT_MOTIFS;
    let shape = m % SHAPES;
    let striped = (m / SHAPES) % FILLS == 1;
    let c = (m / (SHAPES * FILLS) + m * 3) % TAG_COLOURS;
    let colour = if c.is_multiple_of(2) { hsv(c as f32 / TAG_COLOURS as f32, 0.95, 1.0) } else { hsv(c as f32 / TAG_COLOURS as f32, 0.9, 0.3) };
    Motif { shape, striped, colour }
}

#[allow(clippy::too_many_arguments)]
/// Draws `m` centred at (cx, cy) with radius `r` and tilt `angle` (radians)
/// into an RGB f32 canvas: a dark outline, then the fill.
fn draw_motif(canvas: &mut [[f32; 3]], w: usize, h: usize, m: &Motif, cx: f32, cy: f32, r: f32, angle: f32) {
    let (s, c) = angle.sin_cos();
    let outline = (3.0 / r).min(0.3);
    let x0 = ((cx - r * 1.05).floor().max(0.0)) as usize;
    let x1 = ((cx + r * 1.05).ceil() as usize).min(w);
    let y0 = ((cy - r * 1.05).floor().max(0.0)) as usize;
    let y1 = ((cy + r * 1.05).ceil() as usize).min(h);
    for y in y0..y1 {
        for x in x0..x1 {
            let dx = (x as f32 + 0.5 - cx) / r;
            let dy = (y as f32 + 0.5 - cy) / r;
            let u = c * dx + s * dy;
            let v = -s * dx + c * dy;
            if !inside(m.shape, u, v) {
                continue;
            }
            let k = 1.0 / (1.0 - outline);
            let px = &mut canvas[y * w + x];
            if !inside(m.shape, u * k, v * k) {
                *px = [20.0, 20.0, 20.0];
            } else if m.striped && ((u + 1.0) / 0.3).floor() as i32 % 2 == 1 {
                *px = [240.0, 240.0, 240.0];
            } else {
                *px = m.colour;
            }
        }
    }
}

/// Paints the image for `look`; deterministic for `seed`.
pub fn paint(look: &Look, seed: u64) -> Painted {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let aspect = draw_aspect(&mut rng);
    let long = (SHORT_SIDE as f32 * aspect).round() as u32;
    let (width, height) = if rng.random_bool(0.5) { (long, SHORT_SIDE) } else { (SHORT_SIDE, long) };
    let (w, h) = (width as usize, height as usize);

    // Background: each culture owns a band along the long side.
    let styles: Vec<Style> = if look.cultures.is_empty() {
        vec![culture_style(None, &mut rng)]
    } else {
        look.cultures.iter().map(|&c| culture_style(Some(c), &mut rng)).collect()
    };
    let mut canvas = vec![[0f32; 3]; w * h];
    let bands = styles.len();
    for y in 0..h {
        for x in 0..w {
            let along = if w >= h { x * bands / w } else { y * bands / h };
            let st = &styles[along];
            let t = texture_mix(st, x as f32, y as f32);
            canvas[y * w + x] = [
                st.a[0] + (st.b[0] - st.a[0]) * t,
                st.a[1] + (st.b[1] - st.a[1]) * t,
                st.a[2] + (st.b[2] - st.a[2]) * t,
            ];
        }
    }

    // Clutter below the motifs: small discs and thin bars in random colours.
    let short = SHORT_SIDE as f32;
    for _ in 0..rng.random_range(3..9) {
        let r = short * rng.random_range(0.02..0.05);
        let m = Motif {
            shape: if rng.random_bool(0.5) { 0 } else { 8 },
            striped: false,
            colour: hsv(rng.random(), rng.random_range(0.2..0.8), rng.random_range(0.3..0.9)),
        };
        let (cx, cy) = (rng.random_range(0.0..w as f32), rng.random_range(0.0..h as f32));
        let angle = rng.random_range(0.0..std::f32::consts::PI);
        draw_motif(&mut canvas, w, h, &m, cx, cy, r, angle);
    }

    // Tag motifs: one or two of each, big and bold.
    for &t in &look.tags {
        let m = motif(t);
        let copies = if rng.random_bool(0.3) { 2 } else { 1 };
        for _ in 0..copies {
            let r = short * rng.random_range(0.13..0.24);
            let cx = rng.random_range(r..(w as f32 - r).max(r + 1.0));
            let cy = rng.random_range(r..(h as f32 - r).max(r + 1.0));
            let angle = rng.random_range(-0.35f32..0.35);
            draw_motif(&mut canvas, w, h, &m, cx, cy, r, angle);
        }
    }

    // Global brightness jitter and 3x3 block noise (compresses better than
    // per-pixel noise while still defeating exact colour matching).
    let gain = rng.random_range(0.85f32..1.15);
    let noise_seed: u64 = rng.random();
    let mode = match rng.random_range(0..100) {
        0..=3 => Mode::Grey,
        4..=7 => Mode::Rgba,
        _ => Mode::Rgb,
    };
    let channels = match mode {
        Mode::Rgb => 3,
        Mode::Grey => 1,
        Mode::Rgba => 4,
    };
    let mut pixels = Vec::with_capacity(w * h * channels);
    for y in 0..h {
        for x in 0..w {
            let block = ((y / 3) as u64) << 32 | (x / 3) as u64;
            let n = ((splitmix(noise_seed ^ block) >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 20.0;
            let p = canvas[y * w + x];
            let q = |v: f32| (v * gain + n).clamp(0.0, 255.0) as u8;
            match mode {
                Mode::Rgb => pixels.extend_from_slice(&[q(p[0]), q(p[1]), q(p[2])]),
                Mode::Grey => pixels.push(q(0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2])),
                Mode::Rgba => {
                    let alpha = if x < w / 8 { 128 } else { 255 };
                    pixels.extend_from_slice(&[q(p[0]), q(p[1]), q(p[2]), alpha]);
                }
            }
        }
    }
    Painted { width, height, mode, pixels }
}

/// Encodes `img` as PNG with fast compression.
///
/// # Errors
/// The encoder's message (only on an internal size mismatch).
pub fn encode_png(img: &Painted) -> Result<Vec<u8>, String> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::{ExtendedColorType, ImageEncoder};
    let mut out = Vec::with_capacity(img.pixels.len() / 2);
    let colour = match img.mode {
        Mode::Rgb => ExtendedColorType::Rgb8,
        Mode::Grey => ExtendedColorType::L8,
        Mode::Rgba => ExtendedColorType::Rgba8,
    };
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
        .write_image(&img.pixels, img.width, img.height, colour)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn painting_is_deterministic_and_keeps_the_short_side() {
        let look = Look { cultures: vec![1], tags: vec![0, 5] };
        for seed in 0..20 {
            let a = paint(&look, seed);
            let b = paint(&look, seed);
            assert_eq!(a.pixels, b.pixels);
            assert_eq!(a.width.min(a.height), SHORT_SIDE);
            assert!(a.width.max(a.height) <= SHORT_SIDE * 10);
            assert_eq!(a.pixels.len(), (a.width * a.height) as usize * a.channels());
        }
    }

    #[test]
    fn the_first_motifs_are_all_distinct() {
        let keys: std::collections::HashSet<(usize, bool, [i32; 3])> = (0..DISTINCT_MOTIFS)
            .map(|t| {
                let m = motif(t);
                (m.shape, m.striped, m.colour.map(|c| c as i32))
            })
            .collect();
        assert_eq!(keys.len(), DISTINCT_MOTIFS);
    }

    #[test]
    fn a_tag_changes_the_image() {
        let a = paint(&Look { cultures: vec![0], tags: vec![] }, 3);
        let b = paint(&Look { cultures: vec![0], tags: vec![2] }, 3);
        assert_ne!(a.pixels, b.pixels);
    }

    #[test]
    fn png_encoding_round_trips() {
        let img = paint(&Look { cultures: vec![2], tags: vec![1] }, 9);
        let png = encode_png(&img).unwrap();
        let back = image::load_from_memory(&png).unwrap();
        assert_eq!((back.width(), back.height()), (img.width, img.height));
    }
}
