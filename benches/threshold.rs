//! Threshold fitting on a fold-sized matrix (21,847 x 1,103, one fold of
//! five of the competition's train set): the fitting tables, and the fit of
//! a global, a group and a per-class rule.
//!
//! cargo bench --bench threshold

use criterion::{criterion_group, criterion_main, Criterion};
use imet::ensemble::metric::LabelSets;
use imet::ensemble::threshold::{fit, FitConfig, Matrix, StrategyKind, Tables};
use rand::{Rng, SeedableRng};
use std::hint::black_box;

const ROWS: usize = 21_847;
const CLASSES: usize = 1103;

fn data() -> (Vec<f32>, LabelSets, Vec<u8>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let group: Vec<u8> = (0..CLASSES).map(|k| (k >= 398) as u8).collect();
    let prior: Vec<f32> = (0..CLASSES).map(|_| rng.random_range(-9.0f32..-3.0)).collect();
    let mut probs = vec![0f32; ROWS * CLASSES];
    let mut rows = Vec::with_capacity(ROWS);
    for i in 0..ROWS {
        let labels: Vec<u16> = (0..3).map(|_| rng.random_range(0..CLASSES as u16)).collect();
        for k in 0..CLASSES {
            let mut z = prior[k] + rng.random_range(-1.5f32..1.5);
            if labels.contains(&(k as u16)) {
                z += rng.random_range(3.0f32..9.0);
            }
            probs[i * CLASSES + k] = 1.0 / (1.0 + (-z).exp());
        }
        rows.push(labels);
    }
    (probs, LabelSets::from_rows(CLASSES, rows), group)
}

fn bench(c: &mut Criterion) {
    let (probs, truth, group) = data();
    let m = Matrix { probs: &probs, classes: CLASSES, group: &group };
    let cfg = FitConfig::default();
    let all: Vec<u32> = (0..ROWS as u32).collect();
    let mut g = c.benchmark_group("threshold");
    g.sample_size(10);
    g.bench_function("tables_21847x1103", |b| b.iter(|| black_box(Tables::build(m, &truth, cfg.bins))));
    let tables = Tables::build(m, &truth, cfg.bins);
    for kind in [StrategyKind::Global, StrategyKind::GroupLimits, StrategyKind::Class] {
        g.bench_function(format!("fit_{}_21847x1103", kind.as_str()), |b| {
            b.iter(|| black_box(fit(kind, m, &truth, &tables, &all, &cfg)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
