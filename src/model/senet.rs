//! Model stage: the SENet family as ported by Cadene's
//! `pretrainedmodels` and kept in timm as `legacy_senet154`,
//! `legacy_seresnext50_32x4d` and `legacy_seresnext101_32x4d`: the exact
//! networks (and ImageNet weights) that recipes R2-R4 fine-tuned. Names
//! follow that `state_dict`: `layer0.{conv1,bn1,...}`,
//! `layer{1..4}.{i}.{conv,bn}{1,2,3}`, `se_module.{fc1,fc2}`,
//! `downsample.{0,1}`. Reads and writes nothing.

use super::layers::{shortcut, BatchNorm2d, Conv2d, ConvOptions, ConvSpec, Projection, SqueezeExcite};
use super::Backbone;
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

/// Which bottleneck and stem an SENet uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeNetConfig {
    pub layers: [usize; 4],
    pub groups: i64,
    /// SE-ResNeXt: `floor(planes * base_width / 64) * groups` channels in
    /// the grouped convolution. SENet154 (`None`): `planes * 2 -> planes * 4`.
    pub base_width: Option<i64>,
    /// Three 3x3 stem convolutions (SENet154) instead of one 7x7.
    pub input_3x3: bool,
    /// Kernel of the downsampling shortcut in stages 2-4 (3 for SENet154).
    pub downsample_kernel: i64,
}

impl SeNetConfig {
    pub const SENET154: Self =
        SeNetConfig { layers: [3, 8, 36, 3], groups: 64, base_width: None, input_3x3: true, downsample_kernel: 3 };
    pub const SE_RESNEXT50_32X4D: Self =
        SeNetConfig { layers: [3, 4, 6, 3], groups: 32, base_width: Some(4), input_3x3: false, downsample_kernel: 1 };
    pub const SE_RESNEXT101_32X4D: Self =
        SeNetConfig { layers: [3, 4, 23, 3], groups: 32, base_width: Some(4), input_3x3: false, downsample_kernel: 1 };
}

const EXPANSION: i64 = 4;
const REDUCTION: i64 = 16;

#[derive(Debug)]
struct SeBottleneck {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
    se: SqueezeExcite,
    downsample: Option<Projection>,
}

impl SeBottleneck {
    #[allow(clippy::too_many_arguments)]
    fn new(
        vs: &nn::Path,
        inplanes: i64,
        planes: i64,
        stride: i64,
        downsample: Option<i64>,
        config: &SeNetConfig,
        opts: ConvOptions,
    ) -> Self {
        let out = planes * EXPANSION;
        let (c1, c2) = match config.base_width {
            Some(bw) => {
                let width = planes * bw / 64 * config.groups;
                (width, width)
            }
            None => (planes * 2, planes * 4),
        };
        let downsample = downsample.map(|k| Projection::new(vs, inplanes, out, k, stride, opts));
        SeBottleneck {
            conv1: Conv2d::new(&(vs / "conv1"), ConvSpec::new(inplanes, c1, 1, 1, 0), opts),
            bn1: BatchNorm2d::new(&(vs / "bn1"), c1, 1e-5),
            conv2: Conv2d::new(&(vs / "conv2"), ConvSpec::new(c1, c2, 3, stride, 1).groups(config.groups), opts),
            bn2: BatchNorm2d::new(&(vs / "bn2"), c2, 1e-5),
            conv3: Conv2d::new(&(vs / "conv3"), ConvSpec::new(c2, out, 1, 1, 0), opts),
            bn3: BatchNorm2d::new(&(vs / "bn3"), out, 1e-5),
            se: SqueezeExcite::new(&(vs / "se_module"), out, REDUCTION),
            downsample,
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        // In-place ReLU and residual add, as timm: BatchNorm's backward needs
        // its input, not its output, so overwriting the output is safe.
        let ys = self.bn1.forward_t(&self.conv1.forward(xs), train).relu_();
        let ys = self.bn2.forward_t(&self.conv2.forward(&ys), train).relu_();
        let ys = self.bn3.forward_t(&self.conv3.forward(&ys), train);
        let mut ys = self.se.forward(&ys);
        ys += shortcut(&self.downsample, xs, train);
        ys.relu_()
    }
}

/// Cadene's `SENet` without its classifier.
#[derive(Debug)]
pub struct SeNet {
    stem: Vec<(Conv2d, BatchNorm2d)>,
    stages: Vec<Vec<SeBottleneck>>,
}

impl SeNet {
    /// Builds the backbone under `vs` (the model's root path).
    pub fn new(vs: &nn::Path, config: SeNetConfig, opts: ConvOptions) -> Self {
        let l0 = vs / "layer0";
        let stem_specs = if config.input_3x3 {
            vec![ConvSpec::new(3, 64, 3, 2, 1), ConvSpec::new(64, 64, 3, 1, 1), ConvSpec::new(64, 128, 3, 1, 1)]
        } else {
            vec![ConvSpec::new(3, 64, 7, 2, 3)]
        };
        let stem = stem_specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                (
                    Conv2d::new(&(&l0 / format!("conv{}", i + 1)), spec, opts),
                    BatchNorm2d::new(&(&l0 / format!("bn{}", i + 1)), spec.out_channels, 1e-5),
                )
            })
            .collect();
        let mut inplanes = if config.input_3x3 { 128 } else { 64 };
        let mut stages = Vec::with_capacity(4);
        for (i, (&blocks, planes)) in config.layers.iter().zip([64, 128, 256, 512]).enumerate() {
            let layer = vs / format!("layer{}", i + 1);
            let (stride, ds_kernel) = if i == 0 { (1, 1) } else { (2, config.downsample_kernel) };
            let mut stage = Vec::with_capacity(blocks);
            for b in 0..blocks {
                let s = if b == 0 { stride } else { 1 };
                let downsample = (b == 0 && (s != 1 || inplanes != planes * EXPANSION)).then_some(ds_kernel);
                stage.push(SeBottleneck::new(&(&layer / b), inplanes, planes, s, downsample, &config, opts));
                inplanes = planes * EXPANSION;
            }
            stages.push(stage);
        }
        SeNet { stem, stages }
    }
}

impl Backbone for SeNet {
    fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs.shallow_clone();
        for (conv, bn) in &self.stem {
            ys = bn.forward_t(&conv.forward(&ys), train).relu_();
        }
        ys = ys.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], true);
        for stage in &self.stages {
            for block in stage {
                ys = block.forward_t(&ys, train);
            }
        }
        ys
    }

    fn num_features(&self) -> i64 {
        512 * EXPANSION
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn senet154_has_a_three_conv_stem_and_3x3_shortcuts() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = SeNet::new(&vs.root(), SeNetConfig::SENET154, ConvOptions::default());
        let vars = vs.variables();
        assert_eq!(vars["layer0.conv3.weight"].size(), [128, 64, 3, 3]);
        assert_eq!(vars["layer1.0.downsample.0.weight"].size(), [256, 128, 1, 1]);
        assert_eq!(vars["layer2.0.downsample.0.weight"].size(), [512, 256, 3, 3]);
        assert_eq!(vars["layer1.0.conv2.weight"].size(), [256, 2, 3, 3]);
        assert_eq!(vars["layer4.2.se_module.fc1.weight"].size(), [128, 2048, 1, 1]);
    }

    #[test]
    fn se_resnext50_matches_cadene_widths() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = SeNet::new(&vs.root(), SeNetConfig::SE_RESNEXT50_32X4D, ConvOptions::default());
        let vars = vs.variables();
        assert_eq!(vars["layer1.0.conv1.weight"].size(), [128, 64, 1, 1]);
        assert_eq!(vars["layer2.0.conv2.weight"].size(), [256, 8, 3, 3]);
        assert_eq!(vars["layer1.0.se_module.fc2.bias"].size(), [256]);
    }
}
