//! Criterion bench of the image hot path on synthetic-sample PNGs (the
//! same generator as `imet sample`, seed 7): decode only, and decode +
//! RandomResizedCrop(320) + hflip + normalise to CHW f32, per image on one
//! thread. `examples/bench_decode.rs` prints images/s for the side-by-side
//! comparison with Python.
//!
//! cargo bench --bench decode

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imet::data::sample::plan;
use imet::image::augment::{Prob, RandomResizedCrop, Transform};
use imet::image::{decode, Normalize, Pipeline};
use imet::data::sample::SampleSection;
use imet::storage::keys::Split;

fn bench(c: &mut Criterion) {
    let p = plan(&SampleSection { train: 32, test: 1, classes: 30, seed: 7, noise: 0.0 }).expect("sample plan");
    let pngs: Vec<Vec<u8>> = p.train.iter().map(|r| p.render(r, Split::Train).expect("render")).collect();
    let pipe = Pipeline(vec![
        Transform::RandomResizedCrop(RandomResizedCrop { size: 320, scale: (0.08, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0) }),
        Transform::Hflip(Prob { p: 0.5 }),
    ]);
    let norm = Normalize::default();
    let mut g = c.benchmark_group("image");
    g.throughput(Throughput::Elements(pngs.len() as u64));
    g.sample_size(10);
    g.bench_function("decode", |b| {
        b.iter(|| {
            for png in &pngs {
                std::hint::black_box(decode("bench.png", png, u64::MAX).expect("decodes"));
            }
        })
    });
    g.bench_function("decode_rrc320_flip_normalise", |b| {
        let mut out = vec![0f32; 3 * 320 * 320];
        b.iter(|| {
            for (i, png) in pngs.iter().enumerate() {
                let img = pipe.apply(decode("bench.png", png, u64::MAX).expect("decodes"), i as u64);
                norm.write_chw(&img, &mut out);
                std::hint::black_box(&out);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
