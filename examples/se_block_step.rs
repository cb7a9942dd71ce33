//! Times forward + backward of the pieces of an SE-ResNeXt-50 one at a
//! time, on CPU, at the shapes each stage sees in a batch-2, 96 px training
//! step: the squeeze-and-excitation module alone, one SE bottleneck, the
//! same bottleneck without SE, and the first (projecting, strided) block of
//! each stage. The Rust half of ci/bench/se_block_step.sh (the Python half,
//! timm's classes, is ci/bench/se_block_step.py).
//!
//! cargo run --release --example se_block_step -- [--min-cpu 0.5] [--threads 1] [CASE...]
//!
//! CASE is `KIND@STAGE` with KIND one of `se`, `se_block`, `block`,
//! `first_se_block` and STAGE 1-4 (all 16 when none is given). The blocks
//! are built from the same layers (`model::layers`) and in the same order as
//! `model::senet`'s bottleneck. Each case runs 3 warm-up steps, then steps
//! until `--min-cpu` process CPU seconds have passed; a step is forward,
//! `loss = sum(y * g)` for a fixed random `g`, backward (weights and input
//! take gradients) and zeroing the gradients. Prints one JSON object per
//! case: case, iters, cpu_s, user_s, sys_s (per step, from getrusage) and
//! minflt (minor page faults per step).

use imet::model::layers::{shortcut, BatchNorm2d, Conv2d, ConvOptions, ConvSpec, Projection, SqueezeExcite};
use tch::nn::{self, Module, ModuleT};
use tch::{Device, Kind, Tensor};

/// One stage of SE-ResNeXt-50 at 96 px: spatial size of its output,
/// input channels of its first block, `planes`, stride of its first block.
const STAGES: [(i64, i64, i64, i64); 4] = [(24, 64, 64, 1), (12, 256, 128, 2), (6, 512, 256, 2), (3, 1024, 512, 2)];
const KINDS: [&str; 4] = ["se", "se_block", "block", "first_se_block"];

/// The piece under test: input to output.
type Step = Box<dyn Fn(&Tensor) -> Tensor>;

/// A SE-ResNeXt bottleneck (32 groups, base width 4), SE optional, with the
/// forward of `model::senet`'s block.
struct Block {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
    se: Option<SqueezeExcite>,
    downsample: Option<Projection>,
}

impl Block {
    fn new(vs: &nn::Path, inplanes: i64, planes: i64, stride: i64, se: bool) -> Self {
        let opts = ConvOptions::default();
        let width = planes * 4 / 64 * 32;
        let out = planes * 4;
        let downsample = (stride != 1 || inplanes != out).then(|| Projection::new(vs, inplanes, out, 1, stride, opts));
        Block {
            conv1: Conv2d::new(&(vs / "conv1"), ConvSpec::new(inplanes, width, 1, 1, 0), opts),
            bn1: BatchNorm2d::new(&(vs / "bn1"), width, 1e-5),
            conv2: Conv2d::new(&(vs / "conv2"), ConvSpec::new(width, width, 3, stride, 1).groups(32), opts),
            bn2: BatchNorm2d::new(&(vs / "bn2"), width, 1e-5),
            conv3: Conv2d::new(&(vs / "conv3"), ConvSpec::new(width, out, 1, 1, 0), opts),
            bn3: BatchNorm2d::new(&(vs / "bn3"), out, 1e-5),
            se: se.then(|| SqueezeExcite::new(&(vs / "se_module"), out, 16)),
            downsample,
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let ys = self.bn1.forward_t(&self.conv1.forward(xs), true).relu_();
        let ys = self.bn2.forward_t(&self.conv2.forward(&ys), true).relu_();
        let ys = self.bn3.forward_t(&self.conv3.forward(&ys), true);
        let mut ys = match &self.se {
            Some(se) => se.forward(&ys),
            None => ys,
        };
        ys += shortcut(&self.downsample, xs, true);
        ys.relu_()
    }
}

fn main() -> anyhow::Result<()> {
    let mut min_cpu = 0.5f64;
    let mut threads = 1i32;
    let mut cases = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("{a} needs a value"));
        match a.as_str() {
            "--min-cpu" => min_cpu = value()?.parse()?,
            "--threads" => threads = value()?.parse()?,
            case => cases.push(case.to_string()),
        }
    }
    if cases.is_empty() {
        for stage in 1..=4 {
            for kind in KINDS {
                cases.push(format!("{kind}@{stage}"));
            }
        }
    }
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    for case in cases {
        let (kind, stage) = case.split_once('@').ok_or_else(|| anyhow::anyhow!("case `{case}`: want KIND@STAGE"))?;
        let stage: usize = stage.parse().map_err(|e| anyhow::anyhow!("case `{case}`: stage: {e}"))?;
        let &(size, first_in, planes, stride) =
            STAGES.get(stage.wrapping_sub(1)).ok_or_else(|| anyhow::anyhow!("case `{case}`: stage is 1-4"))?;
        let out = planes * 4;
        let vs = nn::VarStore::new(Device::Cpu);
        let (step, in_shape): (Step, [i64; 4]) = match kind {
            "se" => {
                let se = SqueezeExcite::new(&(vs.root() / "se_module"), out, 16);
                (Box::new(move |xs| se.forward(xs)), [2, out, size, size])
            }
            "se_block" | "block" => {
                let block = Block::new(&vs.root(), out, planes, 1, kind == "se_block");
                (Box::new(move |xs| block.forward(xs)), [2, out, size, size])
            }
            "first_se_block" => {
                let block = Block::new(&vs.root(), first_in, planes, stride, true);
                let s = size * stride;
                (Box::new(move |xs| block.forward(xs)), [2, first_in, s, s])
            }
            _ => anyhow::bail!("case `{case}`: kind is one of {KINDS:?}"),
        };
        // Inputs of a block are ReLU outputs that need a gradient.
        let xs = Tensor::randn(in_shape, (Kind::Float, Device::Cpu)).relu().set_requires_grad(true);
        let g = Tensor::randn(step(&xs).size(), (Kind::Float, Device::Cpu));
        let mut params = vs.trainable_variables();
        params.push(xs.shallow_clone());
        let run = || {
            let loss = (step(&xs) * &g).sum(Kind::Float);
            loss.backward();
            for t in &params {
                let mut grad = t.grad();
                if grad.defined() {
                    let _ = grad.zero_();
                }
            }
        };
        for _ in 0..3 {
            run();
        }
        let start = usage();
        let mut iters = 0u32;
        while iters < 5 || usage().cpu() - start.cpu() < min_cpu {
            run();
            iters += 1;
        }
        let end = usage();
        let per = |x: f64| x / f64::from(iters);
        println!(
            "{}",
            serde_json::json!({
                "case": case, "iters": iters, "cpu_s": per(end.cpu() - start.cpu()),
                "user_s": per(end.user - start.user), "sys_s": per(end.sys - start.sys),
                "minflt": per(end.minflt - start.minflt),
            })
        );
    }
    Ok(())
}

struct Usage {
    user: f64,
    sys: f64,
    minflt: f64,
}

impl Usage {
    fn cpu(&self) -> f64 {
        self.user + self.sys
    }
}

/// This process's user and system CPU seconds and minor page faults.
fn usage() -> Usage {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Usage { user: secs(ru.ru_utime), sys: secs(ru.ru_stime), minflt: ru.ru_minflt as f64 }
}
