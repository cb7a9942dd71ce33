//! The antialiased bilinear resize, SIMD (`fast_image_resize`, what
//! `imet::image::geometry::resize_region` runs) against the scalar f32
//! reference it replaced (`src/image/resize_reference.rs`), side by side in
//! one run on the sample's decoded PNGs, 1 thread: whole image to 320x320
//! and 224x224, and random regions (RandomResizedCrop's scale 0.08-1,
//! ratio 3/4-4/3) to 320x320. Prints images/s for both and the largest
//! difference between their outputs.
//!
//! ```text
//! imet sample --out /tmp/x --train 600 --test 200
//! cargo run --release --example bench_resize -- /tmp/x [IMAGES]
//! ```

#[path = "../src/image/resize_reference.rs"]
mod reference;

use imet::image::geometry::{resize_region, Rect};
use imet::storage::keys::{self, Split};
use imet::storage::Store;
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn rrc(rng: &mut rand_chacha::ChaCha8Rng, w: u32, h: u32) -> Rect {
    for _ in 0..10 {
        let area = (w * h) as f32 * rng.random_range(0.08..1.0f32);
        let ratio = rng.random_range((0.75f32).ln()..(4.0f32 / 3.0).ln()).exp();
        let cw = (area * ratio).sqrt().round() as u32;
        let ch = (area / ratio).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            return Rect { x: rng.random_range(0..=w - cw), y: rng.random_range(0..=h - ch), w: cw, h: ch };
        }
    }
    Rect { x: 0, y: 0, w, h }
}

#[tokio::main]
async fn main() -> imet::Result<()> {
    let mut args = std::env::args().skip(1);
    let root = args.next().expect("usage: bench_resize SAMPLE_ROOT [IMAGES]");
    let limit: usize = args.next().map(|s| s.parse().expect("IMAGES is a number")).unwrap_or(200);
    let store = Store::open(&imet::storage::root_to_url(&root)?)?;
    let inputs = imet::data::load_inputs(&store).await?;
    let mut imgs = Vec::new();
    for id in inputs.train.ids.iter().take(limit) {
        let key = keys::image(Split::Train, id);
        imgs.push(imet::image::decode(&key, &store.get(&key).await?, u64::MAX)?);
    }
    let px: u64 = imgs.iter().map(|i| i.width() as u64 * i.height() as u64).sum();
    println!("{} images, mean {:.0} kpixels", imgs.len(), px as f64 / imgs.len() as f64 / 1e3);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let cases: Vec<(&str, Vec<(Rect, u32)>)> = vec![
        ("whole image -> 320x320", imgs.iter().map(|i| (Rect::full(i), 320)).collect()),
        ("whole image -> 224x224", imgs.iter().map(|i| (Rect::full(i), 224)).collect()),
        ("random resized crop -> 320x320", imgs.iter().map(|i| (rrc(&mut rng, i.width(), i.height()), 320)).collect()),
    ];
    println!("| resize | scalar f32 (images/s) | fast_image_resize (images/s) | speed-up | max abs diff | values differing |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, work) in &cases {
        let mut best = [0f64; 2];
        for _round in 0..3 {
            let t = Instant::now();
            for (img, &(r, s)) in imgs.iter().zip(work) {
                std::hint::black_box(reference::resize_region(img, reference::Rect { x: r.x, y: r.y, w: r.w, h: r.h }, s, s));
            }
            best[0] = best[0].max(imgs.len() as f64 / t.elapsed().as_secs_f64());
            let t = Instant::now();
            for (img, &(r, s)) in imgs.iter().zip(work) {
                std::hint::black_box(resize_region(img, r, s, s));
            }
            best[1] = best[1].max(imgs.len() as f64 / t.elapsed().as_secs_f64());
        }
        let (mut worst, mut differ, mut total) = (0i32, 0u64, 0u64);
        for (img, &(r, s)) in imgs.iter().zip(work) {
            let a = reference::resize_region(img, reference::Rect { x: r.x, y: r.y, w: r.w, h: r.h }, s, s);
            let b = resize_region(img, r, s, s);
            for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
                let d = (*x as i32 - *y as i32).abs();
                worst = worst.max(d);
                differ += (d != 0) as u64;
                total += 1;
            }
        }
        println!("| {name} | {:.0} | {:.0} | {:.1}x | {worst} | {:.2}% |", best[0], best[1], best[1] / best[0], 100.0 * differ as f64 / total as f64);
    }
    Ok(())
}
