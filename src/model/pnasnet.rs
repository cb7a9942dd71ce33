//! Model stage: PNASNet-5-Large (recipes R1, R2, R4) with timm's
//! `pnasnet5large` `state_dict` names (`conv_0.{conv,bn}`,
//! `cell_stem_{0,1}`, `cell_{0..11}`, each with `conv_1x1`,
//! `conv_prev_1x1`, `comb_iter_{0..4}_{left,right}`, ...) and timm's
//! TensorFlow "SAME" padding for strided convolutions and max pools, so the
//! ported TF weights load unchanged. Reads and writes nothing.

use super::layers::{max_pool_same, BatchNorm2d, Conv2d, ConvOptions, ConvSpec};
use super::Backbone;
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

const EPS: f64 = 1e-3;

/// ReLU, depthwise + pointwise, BN, ReLU, depthwise + pointwise, BN.
#[derive(Debug)]
struct BranchSeparables {
    dw1: Conv2d,
    pw1: Conv2d,
    bn1: BatchNorm2d,
    dw2: Conv2d,
    pw2: Conv2d,
    bn2: BatchNorm2d,
}

impl BranchSeparables {
    fn new(vs: &nn::Path, cin: i64, cout: i64, k: i64, stride: i64, stem_cell: bool, opts: ConvOptions) -> Self {
        let mid = if stem_cell { cout } else { cin };
        let s1 = vs / "separable_1";
        let s2 = vs / "separable_2";
        BranchSeparables {
            dw1: Conv2d::new(&(&s1 / "depthwise_conv2d"), ConvSpec::new(cin, cin, k, stride, 0).groups(cin).same(), opts),
            pw1: Conv2d::new(&(&s1 / "pointwise_conv2d"), ConvSpec::new(cin, mid, 1, 1, 0), opts),
            bn1: BatchNorm2d::new(&(vs / "bn_sep_1"), mid, EPS),
            dw2: Conv2d::new(&(&s2 / "depthwise_conv2d"), ConvSpec::new(mid, mid, k, 1, 0).groups(mid).same(), opts),
            pw2: Conv2d::new(&(&s2 / "pointwise_conv2d"), ConvSpec::new(mid, cout, 1, 1, 0), opts),
            bn2: BatchNorm2d::new(&(vs / "bn_sep_2"), cout, EPS),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = self.bn1.forward_t(&self.pw1.forward(&self.dw1.forward(&xs.relu())), train);
        self.bn2.forward_t(&self.pw2.forward(&self.dw2.forward(&ys.relu())), train)
    }
}

/// ReLU, convolution, BN.
#[derive(Debug)]
struct ActConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ActConvBn {
    fn new(vs: &nn::Path, cin: i64, cout: i64, stride: i64, opts: ConvOptions) -> Self {
        ActConvBn {
            conv: Conv2d::new(&(vs / "conv"), ConvSpec::new(cin, cout, 1, stride, 0).same(), opts),
            bn: BatchNorm2d::new(&(vs / "bn"), cout, EPS),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.bn.forward_t(&self.conv.forward(&xs.relu()), train)
    }
}

/// Halves the resolution with two shifted 1x1 paths (`path_1`, `path_2`).
#[derive(Debug)]
struct FactorizedReduction {
    conv1: Conv2d,
    conv2: Conv2d,
    bn: BatchNorm2d,
}

impl FactorizedReduction {
    fn new(vs: &nn::Path, cin: i64, cout: i64, opts: ConvOptions) -> Self {
        FactorizedReduction {
            conv1: Conv2d::new(&(vs / "path_1" / "conv"), ConvSpec::new(cin, cout / 2, 1, 1, 0), opts),
            conv2: Conv2d::new(&(vs / "path_2" / "conv"), ConvSpec::new(cin, cout / 2, 1, 1, 0), opts),
            bn: BatchNorm2d::new(&(vs / "final_path_bn"), cout, EPS),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let xs = xs.relu();
        let subsample = |t: &Tensor| t.slice(2, 0, None, 2).slice(3, 0, None, 2);
        let p1 = self.conv1.forward(&subsample(&xs));
        // ZeroPad2d((-1, 1, -1, 1)): drop the first row/column, add zeros at the end.
        let shifted = xs.slice(2, 1, None, 1).slice(3, 1, None, 1).constant_pad_nd([0, 1, 0, 1]);
        let p2 = self.conv2.forward(&subsample(&shifted));
        self.bn.forward_t(&Tensor::cat(&[p1, p2], 1), train)
    }
}

#[derive(Debug)]
enum Prev {
    Conv(ActConvBn),
    Factorized(FactorizedReduction),
}

/// One PNAS cell (`CellStem0` when `prev` is `None`).
#[derive(Debug)]
struct Cell {
    prev: Option<Prev>,
    conv_1x1: ActConvBn,
    c0_left: BranchSeparables,
    /// Stem cell only: max pool, then this 1x1 conv + BN.
    c0_right_conv: Option<(Conv2d, BatchNorm2d)>,
    c1_left: BranchSeparables,
    c2_left: BranchSeparables,
    c2_right: BranchSeparables,
    c3_left: BranchSeparables,
    c4_left: BranchSeparables,
    c4_right: Option<ActConvBn>,
    stride: i64,
}

/// Channels of one cell.
struct Dims {
    in_left: i64,
    out_left: i64,
    in_right: i64,
    out_right: i64,
}

impl Cell {
    fn stem0(vs: &nn::Path, d: Dims, opts: ConvOptions) -> Self {
        let r = d.out_right;
        let c0r = vs / "comb_iter_0_right";
        Cell {
            prev: None,
            conv_1x1: ActConvBn::new(&(vs / "conv_1x1"), d.in_right, r, 1, opts),
            c0_left: BranchSeparables::new(&(vs / "comb_iter_0_left"), d.in_left, d.out_left, 5, 2, true, opts),
            c0_right_conv: Some((
                Conv2d::new(&(&c0r / "conv"), ConvSpec::new(d.in_left, d.out_left, 1, 1, 0), opts),
                BatchNorm2d::new(&(&c0r / "bn"), d.out_left, EPS),
            )),
            c1_left: BranchSeparables::new(&(vs / "comb_iter_1_left"), r, r, 7, 2, false, opts),
            c2_left: BranchSeparables::new(&(vs / "comb_iter_2_left"), r, r, 5, 2, false, opts),
            c2_right: BranchSeparables::new(&(vs / "comb_iter_2_right"), r, r, 3, 2, false, opts),
            c3_left: BranchSeparables::new(&(vs / "comb_iter_3_left"), r, r, 3, 1, false, opts),
            c4_left: BranchSeparables::new(&(vs / "comb_iter_4_left"), d.in_right, r, 3, 2, true, opts),
            c4_right: Some(ActConvBn::new(&(vs / "comb_iter_4_right"), r, r, 2, opts)),
            stride: 2,
        }
    }

    fn new(vs: &nn::Path, d: Dims, reduction: bool, match_prev: bool, opts: ConvOptions) -> Self {
        let s = if reduction { 2 } else { 1 };
        let (l, r) = (d.out_left, d.out_right);
        let prev = if match_prev {
            Prev::Factorized(FactorizedReduction::new(&(vs / "conv_prev_1x1"), d.in_left, l, opts))
        } else {
            Prev::Conv(ActConvBn::new(&(vs / "conv_prev_1x1"), d.in_left, l, 1, opts))
        };
        Cell {
            prev: Some(prev),
            conv_1x1: ActConvBn::new(&(vs / "conv_1x1"), d.in_right, r, 1, opts),
            c0_left: BranchSeparables::new(&(vs / "comb_iter_0_left"), l, l, 5, s, false, opts),
            c0_right_conv: None,
            c1_left: BranchSeparables::new(&(vs / "comb_iter_1_left"), r, r, 7, s, false, opts),
            c2_left: BranchSeparables::new(&(vs / "comb_iter_2_left"), r, r, 5, s, false, opts),
            c2_right: BranchSeparables::new(&(vs / "comb_iter_2_right"), r, r, 3, s, false, opts),
            c3_left: BranchSeparables::new(&(vs / "comb_iter_3_left"), r, r, 3, 1, false, opts),
            c4_left: BranchSeparables::new(&(vs / "comb_iter_4_left"), l, l, 3, s, false, opts),
            c4_right: reduction.then(|| ActConvBn::new(&(vs / "comb_iter_4_right"), r, r, s, opts)),
            stride: s,
        }
    }

    /// `x_left` is the output two cells back, `x_right` the previous one
    /// (the stem cell takes one input and derives `x_right` from it).
    fn forward_t(&self, x_left: &Tensor, x_right: &Tensor, train: bool) -> Tensor {
        let x_left = match &self.prev {
            Some(Prev::Conv(p)) => p.forward_t(x_left, train),
            Some(Prev::Factorized(p)) => p.forward_t(x_left, train),
            None => x_left.shallow_clone(),
        };
        let x_right = self.conv_1x1.forward_t(x_right, train);
        let pool = |t: &Tensor| max_pool_same(t, 3, self.stride);
        let c0_right = match &self.c0_right_conv {
            Some((conv, bn)) => bn.forward_t(&conv.forward(&pool(&x_left)), train),
            None => pool(&x_left),
        };
        let c0 = self.c0_left.forward_t(&x_left, train) + c0_right;
        let c1 = self.c1_left.forward_t(&x_right, train) + pool(&x_right);
        let c2 = self.c2_left.forward_t(&x_right, train) + self.c2_right.forward_t(&x_right, train);
        let c3 = self.c3_left.forward_t(&c2, train) + pool(&x_right);
        let c4_right = match &self.c4_right {
            Some(p) => p.forward_t(&x_right, train),
            None => x_right.shallow_clone(),
        };
        let c4 = self.c4_left.forward_t(&x_left, train) + c4_right;
        Tensor::cat(&[c0, c1, c2, c3, c4], 1)
    }
}

/// timm's `PNASNet5Large` without its classifier.
#[derive(Debug)]
pub struct PnasNet5Large {
    conv_0: Conv2d,
    bn_0: BatchNorm2d,
    stem_0: Cell,
    cells: Vec<Cell>,
}

impl PnasNet5Large {
    /// Builds the backbone under `vs` (the model's root path).
    pub fn new(vs: &nn::Path, opts: ConvOptions) -> Self {
        let d = |in_left, out_left, in_right, out_right| Dims { in_left, out_left, in_right, out_right };
        // (in_left, out_left, in_right, out_right, reduction, match_prev) for cell_stem_1, cell_0..cell_11.
        let plan: [(Dims, bool, bool); 13] = [
            (d(96, 108, 270, 108), true, true),
            (d(270, 216, 540, 216), false, true),
            (d(540, 216, 1080, 216), false, false),
            (d(1080, 216, 1080, 216), false, false),
            (d(1080, 216, 1080, 216), false, false),
            (d(1080, 432, 1080, 432), true, false),
            (d(1080, 432, 2160, 432), false, true),
            (d(2160, 432, 2160, 432), false, false),
            (d(2160, 432, 2160, 432), false, false),
            (d(2160, 864, 2160, 864), true, false),
            (d(2160, 864, 4320, 864), false, true),
            (d(4320, 864, 4320, 864), false, false),
            (d(4320, 864, 4320, 864), false, false),
        ];
        let cells = plan
            .into_iter()
            .enumerate()
            .map(|(i, (dims, reduction, match_prev))| {
                let name = if i == 0 { "cell_stem_1".to_string() } else { format!("cell_{}", i - 1) };
                Cell::new(&(vs / name), dims, reduction, match_prev, opts)
            })
            .collect();
        PnasNet5Large {
            conv_0: Conv2d::new(&(vs / "conv_0" / "conv"), ConvSpec::new(3, 96, 3, 2, 0), opts),
            bn_0: BatchNorm2d::new(&(vs / "conv_0" / "bn"), 96, EPS),
            stem_0: Cell::stem0(&(vs / "cell_stem_0"), d(96, 54, 96, 54), opts),
            cells,
        }
    }
}

impl Backbone for PnasNet5Large {
    fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let x0 = self.bn_0.forward_t(&self.conv_0.forward(xs), train);
        let x1 = self.stem_0.forward_t(&x0, &x0, train);
        let (mut prev, mut cur) = (x0, x1);
        for cell in &self.cells {
            let next = cell.forward_t(&prev, &cur, train);
            prev = cur;
            cur = next;
        }
        cur.relu()
    }

    fn num_features(&self) -> i64 {
        4320
    }
}
