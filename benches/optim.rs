//! One optimiser update over resnet50's trainable tensors (1,103-class
//! head) on CPU: SGD (momentum 0.9, nesterov, weight decay), Adam (weight
//! decay) and AdamW; and the per-step helpers clip_grad_norm and
//! GradScaler::unscale. ci/bench/optim_step.py times torch.optim on the
//! same shapes (single-tensor and foreach).
//!
//! cargo bench --bench optim

use criterion::{criterion_group, criterion_main, Criterion};
use imet::model::{Arch, ModelConfig};
use imet::train::config::OptimizerSpec;
use imet::train::amp::GradScaler;
use imet::train::optim::{clip_grad_norm, Optimizer};
use std::hint::black_box;
use tch::{nn, Device, Kind, Tensor};

/// resnet50's trainable tensors by name, each with a grad of 1e-3.
fn params() -> Vec<(String, Tensor)> {
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = ModelConfig::new(Arch::Resnet50).build(&vs).expect("resnet50 builds");
    let mut params: Vec<(String, Tensor)> =
        vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let total = params.iter().map(|(_, p)| p.sum(Kind::Float) * 1e-3).fold(Tensor::from(0f32), |a, b| a + b);
    total.backward();
    let count: i64 = params.iter().map(|(_, p)| p.numel() as i64).sum();
    eprintln!("{} tensors, {count} parameters, {} threads", params.len(), tch::get_num_threads());
    params
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("optim_resnet50");
    g.sample_size(10);
    let specs = [
        ("sgd_nesterov_wd", OptimizerSpec::Sgd { lr: 0.01, momentum: 0.9, nesterov: true, weight_decay: 1e-4 }),
        ("adam_wd", OptimizerSpec::Adam { lr: 1e-4, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 1e-4 }),
        ("adamw", OptimizerSpec::Adamw { lr: 1e-4, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 }),
    ];
    for (name, spec) in specs {
        let mut opt = Optimizer::new(&spec, params());
        opt.step(1e-4, 1e-3); // state created outside the timing
        g.bench_function(format!("step_{name}"), |b| b.iter(|| opt.step(1e-4, 1e-3)));
    }
    let ps = params();
    g.bench_function("clip_grad_norm", |b| b.iter(|| black_box(clip_grad_norm(&ps, 1e9))));
    let mut scaler = GradScaler::new(true);
    g.bench_function("grad_scaler_unscale", |b| {
        b.iter(|| {
            scaler.restore(1.0, 0); // dividing by 1 keeps the grads finite across iterations
            black_box(scaler.unscale(&ps))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
