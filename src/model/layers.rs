//! Model stage, building blocks shared by every backbone: convolution (with
//! optional partial-convolution padding), batch normalisation that keeps
//! PyTorch's `running_mean`/`running_var`/`num_batches_tracked` buffers in
//! the `VarStore` under their `state_dict` names, squeeze-and-excitation, and
//! TensorFlow-style "same" padding. Reads and writes nothing.

use super::partial_conv;
use tch::nn::{self, Init, ModuleT};
use tch::{Kind, Tensor};

/// How convolutions pad their input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvOptions {
    /// Re-weight outputs near the border by the share of the window that
    /// lies inside the image (Liu et al. 2018, "Partial Convolution based
    /// Padding"); weights are unchanged, so pretrained files still load.
    pub partial_padding: bool,
}

/// Padding of a convolution or pooling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Symmetric zero padding `[h, w]`, as `torch.nn.Conv2d(padding=...)`.
    Static([i64; 2]),
    /// TensorFlow "SAME": pad so that the output is `ceil(input / stride)`,
    /// extra pixel on the bottom/right, computed from the input size
    /// (timm's `Conv2dSame` / `MaxPool2dSame`).
    Same,
}

/// The geometry of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    pub in_channels: i64,
    pub out_channels: i64,
    pub kernel: [i64; 2],
    pub stride: i64,
    pub padding: Padding,
    pub groups: i64,
    pub bias: bool,
}

impl ConvSpec {
    /// A square `k x k` convolution with PyTorch's usual `padding = k / 2`
    /// when `pad` is true, no bias, one group.
    pub fn new(in_channels: i64, out_channels: i64, k: i64, stride: i64, pad: i64) -> Self {
        ConvSpec {
            in_channels,
            out_channels,
            kernel: [k, k],
            stride,
            padding: Padding::Static([pad, pad]),
            groups: 1,
            bias: false,
        }
    }

    /// Same geometry with `groups` groups.
    pub fn groups(mut self, groups: i64) -> Self {
        self.groups = groups;
        self
    }

    /// Same geometry with a bias.
    pub fn bias(mut self) -> Self {
        self.bias = true;
        self
    }

    /// Rectangular kernel `[kh, kw]` with padding `[ph, pw]`.
    pub fn rect(mut self, kernel: [i64; 2], padding: [i64; 2]) -> Self {
        self.kernel = kernel;
        self.padding = Padding::Static(padding);
        self
    }

    /// TensorFlow "SAME" padding (static when stride is 1 and the kernel odd).
    pub fn same(mut self) -> Self {
        self.padding = if self.stride == 1 && self.kernel[0] % 2 == 1 && self.kernel[1] % 2 == 1 {
            Padding::Static([self.kernel[0] / 2, self.kernel[1] / 2])
        } else {
            Padding::Same
        };
        self
    }
}

/// A 2-D convolution named like `torch.nn.Conv2d` (`weight`, `bias`).
#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    spec: ConvSpec,
    partial_padding: bool,
}

impl Conv2d {
    /// Creates `weight [out, in / groups, kh, kw]` (and `bias [out]`) under
    /// `vs`, initialised like PyTorch (Kaiming uniform with a = sqrt(5)).
    pub fn new(vs: &nn::Path, spec: ConvSpec, opts: ConvOptions) -> Self {
        let fan_in = spec.in_channels / spec.groups * spec.kernel[0] * spec.kernel[1];
        let weight = vs.var(
            "weight",
            &[spec.out_channels, spec.in_channels / spec.groups, spec.kernel[0], spec.kernel[1]],
            nn::init::DEFAULT_KAIMING_UNIFORM,
        );
        let bias = spec.bias.then(|| {
            let bound = 1.0 / (fan_in as f64).sqrt();
            vs.var("bias", &[spec.out_channels], Init::Uniform { lo: -bound, up: bound })
        });
        let padded = match spec.padding {
            Padding::Static(p) => p != [0, 0],
            Padding::Same => false,
        };
        Conv2d { weight, bias, spec, partial_padding: opts.partial_padding && padded }
    }
}

impl nn::Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let s = self.spec.stride;
        match self.spec.padding {
            Padding::Same => {
                let xs = pad_same(xs, self.spec.kernel, s, 0.0);
                xs.conv2d(&self.weight, self.bias.as_ref(), [s, s], [0, 0], [1, 1], self.spec.groups)
            }
            Padding::Static(p) if self.partial_padding => {
                let raw = xs.conv2d::<&Tensor>(&self.weight, None, [s, s], p, [1, 1], self.spec.groups);
                let (h, w) = (xs.size()[2], xs.size()[3]);
                let ratio = partial_conv::mask_ratio(h, w, self.spec.kernel, s, p, xs.device())
                    .to_kind(raw.kind());
                let out = raw * ratio;
                match &self.bias {
                    Some(b) => out + b.view([1, -1, 1, 1]),
                    None => out,
                }
            }
            Padding::Static(p) => {
                xs.conv2d(&self.weight, self.bias.as_ref(), [s, s], p, [1, 1], self.spec.groups)
            }
        }
    }
}

/// Pads `xs [n, c, h, w]` so that a `kernel` window with `stride` gives
/// `ceil(h / stride)` outputs (TensorFlow "SAME"), with `value`.
///
/// # Shapes
/// `[n, c, h, w] -> [n, c, h + ph, w + pw]`
pub fn pad_same(xs: &Tensor, kernel: [i64; 2], stride: i64, value: f64) -> Tensor {
    let size = xs.size();
    let pad = |x: i64, k: i64| (((x + stride - 1) / stride - 1) * stride + k - x).max(0);
    let (ph, pw) = (pad(size[2], kernel[0]), pad(size[3], kernel[1]));
    if ph == 0 && pw == 0 {
        return xs.shallow_clone();
    }
    xs.pad([pw / 2, pw - pw / 2, ph / 2, ph - ph / 2], "constant", value)
}

/// Max pooling with TensorFlow "SAME" padding (pads with -inf), as timm's
/// `MaxPool2dSame`.
pub fn max_pool_same(xs: &Tensor, k: i64, stride: i64) -> Tensor {
    let xs = pad_same(xs, [k, k], stride, f64::NEG_INFINITY);
    xs.max_pool2d([k, k], [stride, stride], [0, 0], [1, 1], false)
}

/// Batch normalisation with PyTorch's parameter and buffer names:
/// `weight`, `bias` (trainable), `running_mean`, `running_var` and the
/// int64 scalar `num_batches_tracked` (buffers, not trainable).
#[derive(Debug)]
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    /// PyTorch defaults: weight 1, bias 0, momentum 0.1, the given `eps`.
    pub fn new(vs: &nn::Path, channels: i64, eps: f64) -> Self {
        BatchNorm2d {
            weight: vs.var("weight", &[channels], Init::Const(1.0)),
            bias: vs.var("bias", &[channels], Init::Const(0.0)),
            running_mean: vs.zeros_no_train("running_mean", &[channels]),
            running_var: vs.ones_no_train("running_var", &[channels]),
            num_batches_tracked: vs.add(
                "num_batches_tracked",
                Tensor::zeros([], (Kind::Int64, vs.device())),
                false,
            ),
            eps,
            momentum: 0.1,
        }
    }
}

impl ModuleT for BatchNorm2d {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if train {
            tch::no_grad(|| {
                let _ = self.num_batches_tracked.shallow_clone().f_add_scalar_(1);
            });
        }
        Tensor::batch_norm(
            xs,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            self.momentum,
            self.eps,
            true,
        )
    }
}

/// Convolution followed by batch normalisation and an optional ReLU, with
/// timm's `ConvNormAct` / Inception `BasicConv2d` names (`conv`, `bn`).
#[derive(Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
    relu: bool,
}

impl ConvBn {
    /// `conv` and `bn` under `vs`; `eps` for the batch norm.
    pub fn new(vs: &nn::Path, spec: ConvSpec, eps: f64, relu: bool, opts: ConvOptions) -> Self {
        ConvBn {
            conv: Conv2d::new(&(vs / "conv"), spec, opts),
            bn: BatchNorm2d::new(&(vs / "bn"), spec.out_channels, eps),
            relu,
        }
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = self.bn.forward_t(&nn::Module::forward(&self.conv, xs), train);
        if self.relu {
            ys.relu()
        } else {
            ys
        }
    }
}

/// A residual block's projection shortcut under `downsample`: `0` a
/// convolution (kernel `k`, padding `k / 2`, no bias), `1` a batch norm.
#[derive(Debug)]
pub struct Projection {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl Projection {
    /// The projection of block `vs` from `inplanes` to `out` channels.
    pub fn new(vs: &nn::Path, inplanes: i64, out: i64, kernel: i64, stride: i64, opts: ConvOptions) -> Self {
        let ds = vs / "downsample";
        Projection {
            conv: Conv2d::new(&(&ds / "0"), ConvSpec::new(inplanes, out, kernel, stride, kernel / 2), opts),
            bn: BatchNorm2d::new(&(&ds / "1"), out, 1e-5),
        }
    }
}

/// What a residual block adds to its output: the projection of `xs` when
/// the block has one, else `xs` itself.
pub fn shortcut(projection: &Option<Projection>, xs: &Tensor, train: bool) -> Tensor {
    match projection {
        Some(p) => p.bn.forward_t(&nn::Module::forward(&p.conv, xs), train),
        None => xs.shallow_clone(),
    }
}

/// Squeeze-and-excitation as in Cadene's SENet (`fc1`, `fc2`: 1x1
/// convolutions with bias): `x * sigmoid(fc2(relu(fc1(mean_hw(x)))))`.
#[derive(Debug)]
pub struct SqueezeExcite {
    fc1: Conv2d,
    fc2: Conv2d,
}

impl SqueezeExcite {
    /// `channels -> channels / reduction -> channels`.
    pub fn new(vs: &nn::Path, channels: i64, reduction: i64) -> Self {
        let opts = ConvOptions::default();
        let squeezed = channels / reduction;
        SqueezeExcite {
            fc1: Conv2d::new(&(vs / "fc1"), ConvSpec::new(channels, squeezed, 1, 1, 0).bias(), opts),
            fc2: Conv2d::new(&(vs / "fc2"), ConvSpec::new(squeezed, channels, 1, 1, 0).bias(), opts),
        }
    }
}

impl nn::Module for SqueezeExcite {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let s = xs.mean_dim([2i64, 3].as_slice(), true, None::<Kind>);
        let s = self.fc2.forward(&self.fc1.forward(&s).relu()).sigmoid();
        xs * s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::Module;
    use tch::Device;

    #[test]
    fn batch_norm_keeps_pytorch_buffer_names_and_counts_training_batches() {
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = BatchNorm2d::new(&(vs.root() / "bn1"), 4, 1e-5);
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(
            names,
            ["bn1.bias", "bn1.num_batches_tracked", "bn1.running_mean", "bn1.running_var", "bn1.weight"]
        );
        assert_eq!(vs.trainable_variables().len(), 2);
        let xs = Tensor::randn([2, 4, 3, 3], (Kind::Float, Device::Cpu));
        let _ = bn.forward_t(&xs, true);
        let _ = bn.forward_t(&xs, true);
        assert_eq!(bn.num_batches_tracked.int64_value(&[]), 2);
        assert!(bn.running_mean.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn same_padding_gives_ceil_of_input_over_stride() {
        let xs = Tensor::ones([1, 1, 7, 8], (Kind::Float, Device::Cpu));
        let ys = max_pool_same(&xs, 3, 2);
        assert_eq!(ys.size(), [1, 1, 4, 4]);
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = Conv2d::new(&vs.root(), ConvSpec::new(1, 2, 5, 2, 0).same(), ConvOptions::default());
        assert_eq!(conv.forward(&xs).size(), [1, 2, 4, 4]);
    }

    #[test]
    fn squeeze_excite_keeps_shape() {
        let vs = nn::VarStore::new(Device::Cpu);
        let se = SqueezeExcite::new(&(vs.root() / "se"), 32, 16);
        let xs = Tensor::randn([2, 32, 5, 5], (Kind::Float, Device::Cpu));
        assert_eq!(se.forward(&xs).size(), [2, 32, 5, 5]);
        assert!(vs.variables().contains_key("se.fc1.bias"));
    }
}
