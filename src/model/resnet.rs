//! Model stage: ResNet and ResNeXt backbones with timm's `state_dict`
//! names (`conv1`, `bn1`, `layer{1..4}.{i}.conv{1,2,3}`, `bn{1,2,3}`,
//! `downsample.{0,1}`), so `timm.create_model("resnet50")` weights load
//! unchanged. Covers timm `resnet18`, `resnet34` (basic blocks),
//! `resnet50`, `resnet101`, `resnext50_32x4d`, `resnext101_32x8d`
//! (bottlenecks). Reads and writes nothing.

use super::layers::{shortcut, BatchNorm2d, Conv2d, ConvOptions, ConvSpec, Projection};
use super::Backbone;
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

/// Depth and width of a ResNet/ResNeXt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Blocks per stage.
    pub layers: [usize; 4],
    /// Bottleneck blocks (1x1, 3x3, 1x1, expansion 4) or basic blocks
    /// (two 3x3, expansion 1).
    pub bottleneck: bool,
    /// Groups of the 3x3 convolutions (ResNeXt cardinality, 1 for ResNet).
    pub groups: i64,
    /// Channels per group at the first stage (64 for ResNet).
    pub base_width: i64,
}

impl ResNetConfig {
    pub const RESNET18: Self = ResNetConfig { layers: [2, 2, 2, 2], bottleneck: false, groups: 1, base_width: 64 };
    pub const RESNET34: Self = ResNetConfig { layers: [3, 4, 6, 3], bottleneck: false, groups: 1, base_width: 64 };
    pub const RESNET50: Self = ResNetConfig { layers: [3, 4, 6, 3], bottleneck: true, groups: 1, base_width: 64 };
    pub const RESNET101: Self = ResNetConfig { layers: [3, 4, 23, 3], bottleneck: true, groups: 1, base_width: 64 };
    pub const RESNEXT50_32X4D: Self = ResNetConfig { layers: [3, 4, 6, 3], bottleneck: true, groups: 32, base_width: 4 };
    pub const RESNEXT101_32X8D: Self = ResNetConfig { layers: [3, 4, 23, 3], bottleneck: true, groups: 32, base_width: 8 };

    /// Output channels per input plane of a block.
    pub fn expansion(&self) -> i64 {
        if self.bottleneck {
            4
        } else {
            1
        }
    }
}

/// timm's `BasicBlock`: two 3x3 convolutions and the residual.
#[derive(Debug)]
struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    downsample: Option<Projection>,
}

impl BasicBlock {
    fn new(vs: &nn::Path, inplanes: i64, planes: i64, stride: i64, opts: ConvOptions) -> Self {
        BasicBlock {
            conv1: Conv2d::new(&(vs / "conv1"), ConvSpec::new(inplanes, planes, 3, stride, 1), opts),
            bn1: BatchNorm2d::new(&(vs / "bn1"), planes, 1e-5),
            conv2: Conv2d::new(&(vs / "conv2"), ConvSpec::new(planes, planes, 3, 1, 1), opts),
            bn2: BatchNorm2d::new(&(vs / "bn2"), planes, 1e-5),
            downsample: downsample(vs, inplanes, planes, stride, opts),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = self.bn1.forward_t(&self.conv1.forward(xs), train).relu_();
        let mut ys = self.bn2.forward_t(&self.conv2.forward(&ys), train);
        ys += shortcut(&self.downsample, xs, train);
        ys.relu_()
    }
}

/// A 1x1 projection shortcut when the block changes resolution or width.
fn downsample(vs: &nn::Path, inplanes: i64, out: i64, stride: i64, opts: ConvOptions) -> Option<Projection> {
    (stride != 1 || inplanes != out).then(|| Projection::new(vs, inplanes, out, 1, stride, opts))
}

#[derive(Debug)]
struct Bottleneck {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
    downsample: Option<Projection>,
}

impl Bottleneck {
    fn new(vs: &nn::Path, inplanes: i64, planes: i64, stride: i64, config: &ResNetConfig, opts: ConvOptions) -> Self {
        let width = planes * config.base_width / 64 * config.groups;
        let out = planes * config.expansion();
        Bottleneck {
            conv1: Conv2d::new(&(vs / "conv1"), ConvSpec::new(inplanes, width, 1, 1, 0), opts),
            bn1: BatchNorm2d::new(&(vs / "bn1"), width, 1e-5),
            conv2: Conv2d::new(&(vs / "conv2"), ConvSpec::new(width, width, 3, stride, 1).groups(config.groups), opts),
            bn2: BatchNorm2d::new(&(vs / "bn2"), width, 1e-5),
            conv3: Conv2d::new(&(vs / "conv3"), ConvSpec::new(width, out, 1, 1, 0), opts),
            bn3: BatchNorm2d::new(&(vs / "bn3"), out, 1e-5),
            downsample: downsample(vs, inplanes, out, stride, opts),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        // In-place ReLU and residual add, as timm: BatchNorm's backward needs
        // its input, not its output, so overwriting the output is safe.
        let ys = self.bn1.forward_t(&self.conv1.forward(xs), train).relu_();
        let ys = self.bn2.forward_t(&self.conv2.forward(&ys), train).relu_();
        let mut ys = self.bn3.forward_t(&self.conv3.forward(&ys), train);
        ys += shortcut(&self.downsample, xs, train);
        ys.relu_()
    }
}

#[derive(Debug)]
enum Block {
    Basic(BasicBlock),
    Bottleneck(Bottleneck),
}

impl Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            Block::Basic(b) => b.forward_t(xs, train),
            Block::Bottleneck(b) => b.forward_t(xs, train),
        }
    }
}

/// timm's `ResNet`, without its classifier.
#[derive(Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    stages: Vec<Vec<Block>>,
    features: i64,
}

impl ResNet {
    /// Builds the backbone under `vs` (the model's root path).
    pub fn new(vs: &nn::Path, config: ResNetConfig, opts: ConvOptions) -> Self {
        let mut inplanes = 64;
        let mut stages = Vec::with_capacity(4);
        for (i, (&blocks, planes)) in config.layers.iter().zip([64, 128, 256, 512]).enumerate() {
            let layer = vs / format!("layer{}", i + 1);
            let stride = if i == 0 { 1 } else { 2 };
            let mut stage = Vec::with_capacity(blocks);
            for b in 0..blocks {
                let s = if b == 0 { stride } else { 1 };
                let path = &layer / b;
                stage.push(if config.bottleneck {
                    Block::Bottleneck(Bottleneck::new(&path, inplanes, planes, s, &config, opts))
                } else {
                    Block::Basic(BasicBlock::new(&path, inplanes, planes, s, opts))
                });
                inplanes = planes * config.expansion();
            }
            stages.push(stage);
        }
        ResNet {
            conv1: Conv2d::new(&(vs / "conv1"), ConvSpec::new(3, 64, 7, 2, 3), opts),
            bn1: BatchNorm2d::new(&(vs / "bn1"), 64, 1e-5),
            stages,
            features: 512 * config.expansion(),
        }
    }
}

impl Backbone for ResNet {
    fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = self.bn1.forward_t(&self.conv1.forward(xs), train).relu_();
        ys = ys.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for stage in &self.stages {
            for block in stage {
                ys = block.forward_t(&ys, train);
            }
        }
        ys
    }

    fn num_features(&self) -> i64 {
        self.features
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn resnext_uses_grouped_3x3_convolutions_with_timm_names() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = ResNet::new(&vs.root(), ResNetConfig::RESNEXT50_32X4D, ConvOptions::default());
        let vars = vs.variables();
        assert_eq!(vars["layer1.0.conv2.weight"].size(), [128, 4, 3, 3]);
        assert_eq!(vars["layer4.2.bn3.running_var"].size(), [2048]);
        assert!(vars.contains_key("layer2.0.downsample.1.num_batches_tracked"));
        assert!(!vars.contains_key("layer2.1.downsample.0.weight"));
        let xs = Tensor::randn([1, 3, 64, 64], (Kind::Float, Device::Cpu));
        assert_eq!(net.features_t(&xs, false).size(), [1, 2048, 2, 2]);
    }

    #[test]
    fn resnet18_uses_basic_blocks_with_timm_names() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = ResNet::new(&vs.root(), ResNetConfig::RESNET18, ConvOptions::default());
        let vars = vs.variables();
        assert_eq!(vars["layer1.0.conv2.weight"].size(), [64, 64, 3, 3]);
        assert!(!vars.contains_key("layer1.0.conv3.weight"));
        assert!(!vars.contains_key("layer1.0.downsample.0.weight"));
        assert_eq!(vars["layer2.0.downsample.0.weight"].size(), [128, 64, 1, 1]);
        let xs = Tensor::randn([1, 3, 64, 64], (Kind::Float, Device::Cpu));
        assert_eq!(net.features_t(&xs, false).size(), [1, 512, 2, 2]);
        assert_eq!(net.num_features(), 512);
    }
}
