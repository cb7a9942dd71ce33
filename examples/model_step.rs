//! Times one training step (forward in train mode, BCE-with-logits loss,
//! backward) per native architecture on CPU, the Rust half of
//! ci/bench/model_step.sh (the Python half is ci/bench/model_step.py).
//!
//! cargo run --release --example model_step -- [--batch 2] [--size 96] [--iters 5] [--threads 2] [ARCH...]
//!
//! Prints one JSON object per arch: arch, params, median_s, min_s (wall
//! clock per step) and cpu_s (process CPU time per step, from
//! /proc/self/stat; robust to other load on the machine when --threads 1).

use imet::model::{parameter_count, Arch, ModelConfig};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Reduction, Tensor};

fn main() -> anyhow::Result<()> {
    let mut batch = 2i64;
    let mut size = 96i64;
    let mut iters = 5usize;
    let mut threads = 2i32;
    let mut archs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("{a} needs a value"));
        match a.as_str() {
            "--batch" => batch = value()?.parse()?,
            "--size" => size = value()?.parse()?,
            "--iters" => iters = value()?.parse()?,
            "--threads" => threads = value()?.parse()?,
            name => archs.push(
                <Arch as clap::ValueEnum>::from_str(name, false).map_err(|e| anyhow::anyhow!("arch `{name}`: {e}"))?,
            ),
        }
    }
    if archs.is_empty() {
        archs = Arch::NATIVE.to_vec();
    }
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    for arch in archs {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = ModelConfig::new(arch).build(&vs)?;
        let params = parameter_count(&vs);
        let xs = Tensor::randn([batch, 3, size, size], (Kind::Float, Device::Cpu));
        let targets = Tensor::rand([batch, 1103], (Kind::Float, Device::Cpu)).lt(0.05).to_kind(Kind::Float);
        let mut times = Vec::with_capacity(iters);
        let mut cpu_start = 0.0;
        for i in 0..iters + 2 {
            if i == 2 {
                cpu_start = cpu_seconds();
            }
            let start = std::time::Instant::now();
            let logits = model.forward_t(&xs, true);
            let loss = logits.binary_cross_entropy_with_logits::<Tensor>(&targets, None, None, Reduction::Mean);
            loss.backward();
            for t in vs.trainable_variables() {
                let mut g = t.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            if i >= 2 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        let cpu_s = (cpu_seconds() - cpu_start) / iters as f64;
        times.sort_by(f64::total_cmp);
        println!(
            "{}",
            serde_json::json!({"arch": arch.name(), "params": params.backbone + params.head,
                               "median_s": times[times.len() / 2], "min_s": times[0], "cpu_s": cpu_s})
        );
    }
    Ok(())
}

/// User + system CPU seconds of this process (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // rest starts at field 3 (state), so field n is rest[n - 3]; USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}
