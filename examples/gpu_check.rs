//! The Rust side of ci/gpu-check.sh (its `--checker` binary), in three modes.
//!
//! ```text
//! gpu_check step [--device cuda|cpu] [--arch seresnext50_32x4d] [--size 320] [--batch 64]
//!     [--iters 20] [--warmup 5] [--precision fp16|fp32] [--channels-last true|false]
//!     [--cudnn-benchmark true|false] [--threads N]
//! gpu_check loader --spec SPEC --model M [--fold 0] [--epochs 2]
//! gpu_check compare DIR_A DIR_B
//! ```
//! (`cargo run --release --example gpu_check -- step ...`.)
//!
//! `step` times one training step the way imet's train loop runs it, the
//! imet half of ci/bench/train_step.py: channels-last input, forward under
//! fp16 autocast ([`DeviceSetup`]), BCE-with-logits over 1,103 classes, the
//! loss read back to the host (the loop's NaN check), scaled backward,
//! unscale ([`GradScaler`]), SGD step (momentum 0.9, imet's [`Optimizer`]),
//! scaler update, zero_grad. On CUDA every step ends with a synchronise, so
//! the wall time is the device time. Prints one JSON object: median_s,
//! min_s, images_per_s, fwd_bwd_median_s (the step without unscale,
//! optimiser and update), and the settings.
//!
//! `loader` builds the loader `imet train --spec SPEC --model M --fold K`
//! builds (same store, images, augmentations, batch size and workers, u8
//! output as on CUDA) and drains `--epochs` epochs with no model, printing
//! one JSON object per epoch with its images per second: how fast the
//! loader alone can feed the train loop.
//!
//! `compare` compares two trained fold folders (`model.safetensors`,
//! `oof.parquet`, `test.parquet`, as `imet train` + `imet predict` leave
//! them in a local store) and prints whether each is identical and the
//! largest absolute difference of any weight and any probability.

use imet::fold_job::{fold_inputs, to_channels_last, DeviceSetup, Precision};
use imet::ids::Fold;
use imet::image::loader::{Loader, LoaderOptions, Sequential};
use imet::model::{parameter_count, Arch, ModelConfig, Network};
use imet::spec::JobSpec;
use imet::train::amp::GradScaler;
use imet::train::config::{LossSpec, OptimizerSpec};
use imet::train::loss::loss;
use imet::train::optim::Optimizer;
use std::path::Path;
use std::sync::Arc;
use tch::nn;
use tch::{Device, Kind, Tensor};

/// `--flag value` pairs after the mode.
fn flags(args: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    anyhow::ensure!(args.len().is_multiple_of(2), "flags come in `--flag value` pairs: {args:?}");
    Ok(args.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect())
}

fn bool_of(flag: &str, v: &str) -> anyhow::Result<bool> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => anyhow::bail!("{flag} takes true or false, not {v}"),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("step") => step_mode(&flags(&args[1..])?),
        Some("loader") => loader_mode(&flags(&args[1..])?),
        Some("compare") if args.len() == 3 => compare_mode(Path::new(&args[1]), Path::new(&args[2])),
        _ => anyhow::bail!("usage: gpu_check step [--flag value ...] | loader --spec S --model M [--fold K] [--epochs N] | compare DIR_A DIR_B"),
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn step_mode(flags: &[(String, String)]) -> anyhow::Result<()> {
    let mut device = Device::cuda_if_available();
    let (mut arch, mut size, mut batch, mut iters, mut warmup) = (Arch::Seresnext50_32x4d, 320i64, 64i64, 20usize, 5usize);
    let (mut precision, mut channels_last, mut benchmark) = (Precision::Fp16, true, false);
    for (flag, v) in flags {
        match flag.as_str() {
            "--device" => {
                device = match v.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda(0),
                    _ => anyhow::bail!("--device takes cpu or cuda, not {v}"),
                }
            }
            "--arch" => arch = <Arch as clap::ValueEnum>::from_str(v, false).map_err(|e| anyhow::anyhow!("--arch {v}: {e}"))?,
            "--size" => size = v.parse()?,
            "--batch" => batch = v.parse()?,
            "--iters" => iters = v.parse()?,
            "--warmup" => warmup = v.parse()?,
            "--precision" => {
                precision = match v.as_str() {
                    "fp16" => Precision::Fp16,
                    "fp32" => Precision::Fp32,
                    _ => anyhow::bail!("--precision takes fp16 or fp32, not {v}"),
                }
            }
            "--channels-last" => channels_last = bool_of(flag, v)?,
            "--cudnn-benchmark" => benchmark = bool_of(flag, v)?,
            "--threads" => tch::set_num_threads(v.parse()?),
            _ => anyhow::bail!("step: unknown flag {flag}"),
        }
    }
    anyhow::ensure!(iters > 0, "--iters must be at least 1");
    anyhow::ensure!(device == Device::Cpu || tch::Cuda::is_available(), "--device cuda but libtorch sees no CUDA device");
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(benchmark);
    }
    tch::manual_seed(0);
    let dev = DeviceSetup::new(device, precision, channels_last);
    let vs = nn::VarStore::new(device);
    let mut net = Network::Native(ModelConfig::new(arch).build(&vs)?);
    dev.place_weights(&vs);
    let params = parameter_count(&vs);
    let mut scaler = GradScaler::new(dev.autocast);
    let trainable: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    let mut opt = Optimizer::new(&OptimizerSpec::Sgd { lr: 1e-3, momentum: 0.9, nesterov: false, weight_decay: 0.0 }, trainable);
    let xs = Tensor::randn([batch, 3, size, size], (Kind::Float, device));
    let xs = if dev.channels_last { to_channels_last(&xs) } else { xs };
    let ys = Tensor::rand([batch, 1103], (Kind::Float, device)).lt(0.05).to_kind(Kind::Float);

    let mut step = |full: bool| -> anyhow::Result<()> {
        let logits = dev.forward(&mut net, &xs, true)?;
        let l = loss(&LossSpec::Bce, &logits, &ys, None);
        // The train loop reads every batch's loss back (NaN check, totals).
        let _ = l.double_value(&[]);
        scaler.scale(&l).backward();
        if full {
            let finite = scaler.unscale(opt.params());
            if finite {
                opt.step(1e-3, 1e-3);
            }
            scaler.update(!finite);
        }
        opt.zero_grad();
        Ok(())
    };
    let mut timed = |full: bool| -> anyhow::Result<Vec<f64>> {
        for _ in 0..warmup {
            step(full)?;
        }
        sync(device);
        let mut times = Vec::with_capacity(iters);
        for _ in 0..iters {
            let start = std::time::Instant::now();
            step(full)?;
            sync(device);
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        Ok(times)
    };
    let fwd_bwd = timed(false)?;
    let full = timed(true)?;
    let median = full[full.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "impl": "imet", "arch": arch.name(), "device": format!("{device:?}"), "size": size, "batch": batch,
            "amp": dev.autocast, "channels_last": dev.channels_last, "cudnn_benchmark": benchmark,
            "params": params.backbone + params.head, "iters": iters,
            "median_s": median, "min_s": full[0], "images_per_s": batch as f64 / median,
            "fwd_bwd_median_s": fwd_bwd[fwd_bwd.len() / 2],
        })
    );
    Ok(())
}

fn loader_mode(flags: &[(String, String)]) -> anyhow::Result<()> {
    let (mut spec_path, mut name, mut fold, mut epochs) = (None, None, 0u8, 2u64);
    for (flag, v) in flags {
        match flag.as_str() {
            "--spec" => spec_path = Some(v.clone()),
            "--model" => name = Some(v.clone()),
            "--fold" => fold = v.parse()?,
            "--epochs" => epochs = v.parse()?,
            _ => anyhow::bail!("loader: unknown flag {flag}"),
        }
    }
    let spec = JobSpec::load(Path::new(&spec_path.ok_or_else(|| anyhow::anyhow!("loader needs --spec"))?))?;
    let name = name.ok_or_else(|| anyhow::anyhow!("loader needs --model"))?;
    // The train job `imet train --spec SPEC --model M --fold K` runs.
    let job = imet::jobs::train_job(&spec, None, &name, Fold(fold))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let store = spec.open_store()?;
    let data = rt.block_on(fold_inputs(&store, &job.fold))?;
    let classes = data.inputs.vocab.len();
    // What the loader hands the train loop on this job's device (u8 on CUDA).
    let dev = DeviceSetup::new(imet::fold_job::device(), job.train.precision, job.train.channels_last);
    let opts = LoaderOptions::from_section(&job.image, job.train.batch_size, classes, job.seed, dev.loader_output());
    let workers = opts.workers;
    let n = data.train.len();
    let _rt = rt.enter();
    let loader = Loader::new(store, data.train, job.pipeline()?, opts, Arc::new(Sequential))?;
    for e in 0..epochs {
        let start = std::time::Instant::now();
        let mut images = 0usize;
        for batch in loader.epoch(e) {
            images += batch?.ids.len();
        }
        let s = start.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({"impl": "imet-loader", "model": name, "epoch": e + 1, "images": images, "train_images": n,
                               "batch": job.train.batch_size, "size": job.size, "workers": workers, "seconds": s,
                               "images_per_s": images as f64 / s})
        );
    }
    Ok(())
}

/// Every value of a safetensors tensor as f64 (the dtypes imet writes).
fn values(t: &safetensors::tensor::TensorView<'_>) -> anyhow::Result<Vec<f64>> {
    use safetensors::Dtype;
    let d = t.data();
    Ok(match t.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect(),
        Dtype::F64 => d.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect(),
        Dtype::I64 => d.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64).collect(),
        Dtype::F16 => d.chunks_exact(2).map(|b| half_to_f64(u16::from_le_bytes([b[0], b[1]]))).collect(),
        other => anyhow::bail!("tensor dtype {other:?} is not compared"),
    })
}

fn half_to_f64(h: u16) -> f64 {
    let sign = if h >> 15 == 1 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1.0 + frac / 1024.0) * 2f64.powi(exp - 15),
    }
}

fn compare_mode(a: &Path, b: &Path) -> anyhow::Result<()> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()));
    let (wa, wb) = (read(&a.join("model.safetensors"))?, read(&b.join("model.safetensors"))?);
    let (ta, tb) = (safetensors::SafeTensors::deserialize(&wa)?, safetensors::SafeTensors::deserialize(&wb)?);
    let mut names: Vec<String> = ta.names().into_iter().cloned().collect();
    names.sort();
    let mut names_b: Vec<String> = tb.names().into_iter().cloned().collect();
    names_b.sort();
    anyhow::ensure!(names == names_b, "the two weight files hold different tensors");
    let (mut max_diff, mut differing, mut worst) = (0.0f64, 0usize, String::new());
    for n in &names {
        let (x, y) = (ta.tensor(n)?, tb.tensor(n)?);
        anyhow::ensure!(x.shape() == y.shape() && x.dtype() == y.dtype(), "tensor {n} differs in shape or dtype");
        if x.data() == y.data() {
            continue;
        }
        differing += 1;
        let d = values(&x)?.iter().zip(values(&y)?).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        if d > max_diff || worst.is_empty() {
            max_diff = d;
            worst = n.clone();
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let probs = |dir: &Path, key: &str| -> anyhow::Result<imet::storage::parquet::Predictions> {
        let store = imet::storage::Store::open(&format!("file://{}", std::fs::canonicalize(dir)?.display()))?;
        Ok(rt.block_on(imet::storage::parquet::read_predictions(&store, key))?)
    };
    let mut report = serde_json::json!({
        "weights_identical": wa == wb, "tensors": names.len(), "tensors_differing": differing,
        "weights_max_abs_diff": max_diff, "worst_tensor": worst,
    });
    for key in ["oof", "test"] {
        let file = format!("{key}.parquet");
        let (pa, pb) = (probs(a, &file)?, probs(b, &file)?);
        anyhow::ensure!(pa.ids == pb.ids, "{file}: the two files list different images");
        let d = pa.probs.iter().zip(&pb.probs).map(|(p, q)| (p - q).abs() as f64).fold(0.0, f64::max);
        report[format!("{key}_identical")] = serde_json::json!(pa.probs == pb.probs);
        report[format!("{key}_max_abs_diff")] = serde_json::json!(d);
    }
    println!("{report}");
    Ok(())
}
