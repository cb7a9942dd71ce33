//! Model stage: Inception-ResNet-v2 with timm's `state_dict` names
//! (`conv2d_1a.{conv,bn}`, `mixed_5b.branch{0..3}`, `repeat.{i}` (Block35),
//! `mixed_6a`, `repeat_1.{i}` (Block17), `mixed_7a`, `repeat_2.{i}` and
//! `block8` (Block8), `conv2d_7b`), so `inception_resnet_v2` weights load
//! unchanged (recipe R4). Reads and writes nothing.

use super::layers::{Conv2d, ConvBn, ConvOptions, ConvSpec};
use super::Backbone;
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

const EPS: f64 = 1e-3;

/// A chain of conv-bn-relu units named `0`, `1`, ... (one unit: no index).
#[derive(Debug)]
struct Chain(Vec<ConvBn>);

impl Chain {
    /// `specs` under `vs/0`, `vs/1`, ...; a single spec goes directly under `vs`.
    fn new(vs: &nn::Path, specs: &[ConvSpec], opts: ConvOptions) -> Self {
        if let [spec] = specs {
            return Chain(vec![ConvBn::new(vs, *spec, EPS, true, opts)]);
        }
        Chain(specs.iter().enumerate().map(|(i, s)| ConvBn::new(&(vs / i), *s, EPS, true, opts)).collect())
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs.shallow_clone();
        for unit in &self.0 {
            ys = unit.forward_t(&ys, train);
        }
        ys
    }
}

fn c(i: i64, o: i64, k: i64, s: i64, p: i64) -> ConvSpec {
    ConvSpec::new(i, o, k, s, p)
}

fn max_pool(xs: &Tensor) -> Tensor {
    xs.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// A residual block: branches concatenated, a 1x1 `conv2d` with bias back
/// to the input width, scaled and added, ReLU unless `no_relu`.
#[derive(Debug)]
struct Residual {
    branches: Vec<Chain>,
    conv2d: Conv2d,
    scale: f64,
    relu: bool,
}

impl Residual {
    fn new(vs: &nn::Path, branches: &[&[ConvSpec]], width: i64, scale: f64, relu: bool, opts: ConvOptions) -> Self {
        let cat: i64 = branches.iter().map(|b| b.last().map_or(0, |s| s.out_channels)).sum();
        Residual {
            branches: branches
                .iter()
                .enumerate()
                .map(|(i, b)| Chain::new(&(vs / format!("branch{i}")), b, opts))
                .collect(),
            conv2d: Conv2d::new(&(vs / "conv2d"), c(cat, width, 1, 1, 0).bias(), opts),
            scale,
            relu,
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let outs: Vec<Tensor> = self.branches.iter().map(|b| b.forward_t(xs, train)).collect();
        let ys = self.conv2d.forward(&Tensor::cat(&outs, 1)) * self.scale + xs;
        if self.relu {
            ys.relu()
        } else {
            ys
        }
    }
}

fn block35(vs: &nn::Path, opts: ConvOptions) -> Residual {
    let b0 = [c(320, 32, 1, 1, 0)];
    let b1 = [c(320, 32, 1, 1, 0), c(32, 32, 3, 1, 1)];
    let b2 = [c(320, 32, 1, 1, 0), c(32, 48, 3, 1, 1), c(48, 64, 3, 1, 1)];
    Residual::new(vs, &[&b0, &b1, &b2], 320, 0.17, true, opts)
}

fn block17(vs: &nn::Path, opts: ConvOptions) -> Residual {
    let b0 = [c(1088, 192, 1, 1, 0)];
    let b1 = [c(1088, 128, 1, 1, 0), c(128, 160, 1, 1, 0).rect([1, 7], [0, 3]), c(160, 192, 1, 1, 0).rect([7, 1], [3, 0])];
    Residual::new(vs, &[&b0, &b1], 1088, 0.10, true, opts)
}

fn block8(vs: &nn::Path, scale: f64, relu: bool, opts: ConvOptions) -> Residual {
    let b0 = [c(2080, 192, 1, 1, 0)];
    let b1 = [c(2080, 192, 1, 1, 0), c(192, 224, 1, 1, 0).rect([1, 3], [0, 1]), c(224, 256, 1, 1, 0).rect([3, 1], [1, 0])];
    Residual::new(vs, &[&b0, &b1], 2080, scale, relu, opts)
}

/// timm's `InceptionResnetV2` without its classifier.
#[derive(Debug)]
pub struct InceptionResnetV2 {
    stem: [ConvBn; 5],
    mixed_5b: [Chain; 4],
    repeat: Vec<Residual>,
    mixed_6a: [Chain; 2],
    repeat_1: Vec<Residual>,
    mixed_7a: [Chain; 3],
    repeat_2: Vec<Residual>,
    block8: Residual,
    conv2d_7b: ConvBn,
}

impl InceptionResnetV2 {
    /// Builds the backbone under `vs` (the model's root path).
    pub fn new(vs: &nn::Path, opts: ConvOptions) -> Self {
        let cb = |name: &str, spec| ConvBn::new(&(vs / name), spec, EPS, true, opts);
        let stem = [
            cb("conv2d_1a", c(3, 32, 3, 2, 0)),
            cb("conv2d_2a", c(32, 32, 3, 1, 0)),
            cb("conv2d_2b", c(32, 64, 3, 1, 1)),
            cb("conv2d_3b", c(64, 80, 1, 1, 0)),
            cb("conv2d_4a", c(80, 192, 3, 1, 0)),
        ];
        let m5 = vs / "mixed_5b";
        let mixed_5b = [
            Chain::new(&(&m5 / "branch0"), &[c(192, 96, 1, 1, 0)], opts),
            Chain::new(&(&m5 / "branch1"), &[c(192, 48, 1, 1, 0), c(48, 64, 5, 1, 2)], opts),
            Chain::new(&(&m5 / "branch2"), &[c(192, 64, 1, 1, 0), c(64, 96, 3, 1, 1), c(96, 96, 3, 1, 1)], opts),
            // branch3 is (AvgPool2d, BasicConv2d): the conv is module `1`.
            Chain(vec![ConvBn::new(&(&m5 / "branch3" / "1"), c(192, 64, 1, 1, 0), EPS, true, opts)]),
        ];
        let m6 = vs / "mixed_6a";
        let mixed_6a = [
            Chain::new(&(&m6 / "branch0"), &[c(320, 384, 3, 2, 0)], opts),
            Chain::new(&(&m6 / "branch1"), &[c(320, 256, 1, 1, 0), c(256, 256, 3, 1, 1), c(256, 384, 3, 2, 0)], opts),
        ];
        let m7 = vs / "mixed_7a";
        let mixed_7a = [
            Chain::new(&(&m7 / "branch0"), &[c(1088, 256, 1, 1, 0), c(256, 384, 3, 2, 0)], opts),
            Chain::new(&(&m7 / "branch1"), &[c(1088, 256, 1, 1, 0), c(256, 288, 3, 2, 0)], opts),
            Chain::new(&(&m7 / "branch2"), &[c(1088, 256, 1, 1, 0), c(256, 288, 3, 1, 1), c(288, 320, 3, 2, 0)], opts),
        ];
        InceptionResnetV2 {
            stem,
            mixed_5b,
            repeat: (0..10).map(|i| block35(&(vs / "repeat" / i), opts)).collect(),
            mixed_6a,
            repeat_1: (0..20).map(|i| block17(&(vs / "repeat_1" / i), opts)).collect(),
            mixed_7a,
            repeat_2: (0..9).map(|i| block8(&(vs / "repeat_2" / i), 0.20, true, opts)).collect(),
            block8: block8(&(vs / "block8"), 1.0, false, opts),
            conv2d_7b: cb("conv2d_7b", c(2080, 1536, 1, 1, 0)),
        }
    }
}

impl Backbone for InceptionResnetV2 {
    fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let [c1a, c2a, c2b, c3b, c4a] = &self.stem;
        let mut ys = c2b.forward_t(&c2a.forward_t(&c1a.forward_t(xs, train), train), train);
        ys = max_pool(&ys);
        ys = max_pool(&c4a.forward_t(&c3b.forward_t(&ys, train), train));
        let pooled = ys.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None);
        let [m0, m1, m2, m3] = &self.mixed_5b;
        ys = Tensor::cat(&[m0.forward_t(&ys, train), m1.forward_t(&ys, train), m2.forward_t(&ys, train), m3.forward_t(&pooled, train)], 1);
        for block in &self.repeat {
            ys = block.forward_t(&ys, train);
        }
        let [m0, m1] = &self.mixed_6a;
        ys = Tensor::cat(&[m0.forward_t(&ys, train), m1.forward_t(&ys, train), max_pool(&ys)], 1);
        for block in &self.repeat_1 {
            ys = block.forward_t(&ys, train);
        }
        let [m0, m1, m2] = &self.mixed_7a;
        ys = Tensor::cat(&[m0.forward_t(&ys, train), m1.forward_t(&ys, train), m2.forward_t(&ys, train), max_pool(&ys)], 1);
        for block in &self.repeat_2 {
            ys = block.forward_t(&ys, train);
        }
        ys = self.block8.forward_t(&ys, train);
        self.conv2d_7b.forward_t(&ys, train)
    }

    fn num_features(&self) -> i64 {
        1536
    }
}
