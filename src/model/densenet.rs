//! Model stage: DenseNet backbones with timm's `state_dict` names
//! (`features.conv0`, `features.norm0`, `features.denseblock{b}.denselayer{l}.
//! {norm1,conv1,norm2,conv2}`, `features.transition{b}.{norm,conv}`,
//! `features.norm5`): timm `densenet121` and `densenet161`, plus recipe R3's
//! SE-DenseNet-161, which adds a squeeze-and-excitation block after each
//! dense block as `features.se{b}.{fc1,fc2}` (absent from timm's weights, so
//! freshly initialised when loading ImageNet DenseNet-161 weights). Reads
//! and writes nothing.

use super::layers::{BatchNorm2d, Conv2d, ConvOptions, ConvSpec, SqueezeExcite};
use super::Backbone;
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

/// Growth and depth of a DenseNet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenseNetConfig {
    pub growth_rate: i64,
    pub blocks: [usize; 4],
    pub init_features: i64,
    /// Squeeze-and-excitation after each dense block (R3's SE-DenseNet).
    pub squeeze_excite: bool,
}

impl DenseNetConfig {
    pub const DENSENET121: Self =
        DenseNetConfig { growth_rate: 32, blocks: [6, 12, 24, 16], init_features: 64, squeeze_excite: false };
    pub const DENSENET161: Self =
        DenseNetConfig { growth_rate: 48, blocks: [6, 12, 36, 24], init_features: 96, squeeze_excite: false };
    pub const SE_DENSENET161: Self = DenseNetConfig { squeeze_excite: true, ..Self::DENSENET161 };
}

const BN_SIZE: i64 = 4;
/// SE reduction of the DenseNet variant.
pub const SE_REDUCTION: i64 = 16;

#[derive(Debug)]
struct DenseLayer {
    norm1: BatchNorm2d,
    conv1: Conv2d,
    norm2: BatchNorm2d,
    conv2: Conv2d,
}

#[derive(Debug)]
struct Transition {
    norm: BatchNorm2d,
    conv: Conv2d,
}

#[derive(Debug)]
struct Stage {
    layers: Vec<DenseLayer>,
    se: Option<SqueezeExcite>,
    transition: Option<Transition>,
}

/// timm's `DenseNet` without its classifier (ends with `norm5` + ReLU).
#[derive(Debug)]
pub struct DenseNet {
    conv0: Conv2d,
    norm0: BatchNorm2d,
    stages: Vec<Stage>,
    norm5: BatchNorm2d,
    num_features: i64,
}

impl DenseNet {
    /// Builds the backbone under `vs` (the model's root path).
    pub fn new(vs: &nn::Path, config: DenseNetConfig, opts: ConvOptions) -> Self {
        let f = vs / "features";
        let growth = config.growth_rate;
        let mut channels = config.init_features;
        let mut stages = Vec::with_capacity(4);
        for (b, &n) in config.blocks.iter().enumerate() {
            let block = &f / format!("denseblock{}", b + 1);
            let layers = (0..n)
                .map(|l| {
                    let p = &block / format!("denselayer{}", l + 1);
                    let input = channels + l as i64 * growth;
                    DenseLayer {
                        norm1: BatchNorm2d::new(&(&p / "norm1"), input, 1e-5),
                        conv1: Conv2d::new(&(&p / "conv1"), ConvSpec::new(input, BN_SIZE * growth, 1, 1, 0), opts),
                        norm2: BatchNorm2d::new(&(&p / "norm2"), BN_SIZE * growth, 1e-5),
                        conv2: Conv2d::new(&(&p / "conv2"), ConvSpec::new(BN_SIZE * growth, growth, 3, 1, 1), opts),
                    }
                })
                .collect();
            channels += n as i64 * growth;
            let se = config
                .squeeze_excite
                .then(|| SqueezeExcite::new(&(&f / format!("se{}", b + 1)), channels, SE_REDUCTION));
            let transition = (b + 1 < config.blocks.len()).then(|| {
                let t = &f / format!("transition{}", b + 1);
                let tr = Transition {
                    norm: BatchNorm2d::new(&(&t / "norm"), channels, 1e-5),
                    conv: Conv2d::new(&(&t / "conv"), ConvSpec::new(channels, channels / 2, 1, 1, 0), opts),
                };
                channels /= 2;
                tr
            });
            stages.push(Stage { layers, se, transition });
        }
        DenseNet {
            conv0: Conv2d::new(&(&f / "conv0"), ConvSpec::new(3, config.init_features, 7, 2, 3), opts),
            norm0: BatchNorm2d::new(&(&f / "norm0"), config.init_features, 1e-5),
            stages,
            norm5: BatchNorm2d::new(&(&f / "norm5"), channels, 1e-5),
            num_features: channels,
        }
    }
}

impl Backbone for DenseNet {
    fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = self.norm0.forward_t(&self.conv0.forward(xs), train).relu();
        ys = ys.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for stage in &self.stages {
            let mut features = vec![ys];
            for layer in &stage.layers {
                let cat = Tensor::cat(&features, 1);
                let h = layer.conv1.forward(&layer.norm1.forward_t(&cat, train).relu());
                let h = layer.conv2.forward(&layer.norm2.forward_t(&h, train).relu());
                features.push(h);
            }
            ys = Tensor::cat(&features, 1);
            if let Some(se) = &stage.se {
                ys = se.forward(&ys);
            }
            if let Some(t) = &stage.transition {
                ys = t.conv.forward(&t.norm.forward_t(&ys, train).relu());
                ys = ys.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None);
            }
        }
        self.norm5.forward_t(&ys, train).relu()
    }

    fn num_features(&self) -> i64 {
        self.num_features
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn densenet161_ends_with_2208_features_and_se_adds_only_se_tensors() {
        let plain = nn::VarStore::new(Device::Cpu);
        let net = DenseNet::new(&plain.root(), DenseNetConfig::DENSENET161, ConvOptions::default());
        assert_eq!(net.num_features(), 2208);
        let se = nn::VarStore::new(Device::Cpu);
        let _ = DenseNet::new(&se.root(), DenseNetConfig::SE_DENSENET161, ConvOptions::default());
        let plain_vars = plain.variables();
        let extra: Vec<String> = se.variables().into_keys().filter(|k| !plain_vars.contains_key(k)).collect();
        assert_eq!(extra.len(), 16);
        assert!(extra.iter().all(|k| k.starts_with("features.se")));
    }
}
