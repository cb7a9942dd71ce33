//! Model stage: the closed set of architectures a spec may name, the
//! model section of a spec, and building a [`Model`] from them. A misspelt
//! `arch` fails when the spec is parsed. Reads and writes nothing.

use super::densenet::{DenseNet, DenseNetConfig};
use super::head::HeadConfig;
use super::inception_resnet::InceptionResnetV2;
use super::layers::ConvOptions;
use super::pnasnet::PnasNet5Large;
use super::resnet::{ResNet, ResNetConfig};
use super::senet::{SeNet, SeNetConfig};
use super::{Backbone, Model};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::nn;

/// Every architecture a spec can name. Native ones keep timm's variable
/// names ([`Arch::timm_name`] gives the timm model to export weights from).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, clap::ValueEnum, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lower")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
    #[serde(rename = "resnext50_32x4d")]
    #[value(name = "resnext50_32x4d")]
    Resnext50_32x4d,
    #[serde(rename = "resnext101_32x8d")]
    #[value(name = "resnext101_32x8d")]
    Resnext101_32x8d,
    /// Cadene's SE-ResNeXt-50 (timm `legacy_seresnext50_32x4d`).
    #[serde(rename = "seresnext50_32x4d")]
    #[value(name = "seresnext50_32x4d")]
    Seresnext50_32x4d,
    /// Cadene's SE-ResNeXt-101 (timm `legacy_seresnext101_32x4d`).
    #[serde(rename = "seresnext101_32x4d")]
    #[value(name = "seresnext101_32x4d")]
    Seresnext101_32x4d,
    /// Cadene's SENet-154 (timm `legacy_senet154`).
    Senet154,
    Densenet121,
    Densenet161,
    /// DenseNet-161 with squeeze-and-excitation after each dense block
    /// (recipe R3); loads timm `densenet161` weights, SE blocks fresh.
    Sedensenet161,
    #[serde(rename = "inception_resnet_v2")]
    #[value(name = "inception_resnet_v2")]
    InceptionResnetV2,
    Pnasnet5large,
    /// A TorchScript module from a URL (see [`super::torchscript`]).
    Torchscript,
}

impl Arch {
    /// Every native architecture (all but `torchscript`).
    pub const NATIVE: [Arch; 14] = [
        Arch::Resnet18,
        Arch::Resnet34,
        Arch::Resnet50,
        Arch::Resnet101,
        Arch::Resnext50_32x4d,
        Arch::Resnext101_32x8d,
        Arch::Seresnext50_32x4d,
        Arch::Seresnext101_32x4d,
        Arch::Senet154,
        Arch::Densenet121,
        Arch::Densenet161,
        Arch::Sedensenet161,
        Arch::InceptionResnetV2,
        Arch::Pnasnet5large,
    ];

    /// The name in specs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::Resnet101 => "resnet101",
            Arch::Resnext50_32x4d => "resnext50_32x4d",
            Arch::Resnext101_32x8d => "resnext101_32x8d",
            Arch::Seresnext50_32x4d => "seresnext50_32x4d",
            Arch::Seresnext101_32x4d => "seresnext101_32x4d",
            Arch::Senet154 => "senet154",
            Arch::Densenet121 => "densenet121",
            Arch::Densenet161 => "densenet161",
            Arch::Sedensenet161 => "sedensenet161",
            Arch::InceptionResnetV2 => "inception_resnet_v2",
            Arch::Pnasnet5large => "pnasnet5large",
            Arch::Torchscript => "torchscript",
        }
    }

    /// The `timm.create_model` name whose `state_dict` this architecture
    /// loads (`None` for TorchScript). SE-DenseNet-161 loads DenseNet-161's.
    pub fn timm_name(self) -> Option<&'static str> {
        Some(match self {
            Arch::Seresnext50_32x4d => "legacy_seresnext50_32x4d",
            Arch::Seresnext101_32x4d => "legacy_seresnext101_32x4d",
            Arch::Senet154 => "legacy_senet154",
            Arch::Sedensenet161 => "densenet161",
            Arch::Torchscript => return None,
            other => other.name(),
        })
    }

    /// Smallest square input (pixels) the network accepts.
    pub fn min_input_size(self) -> i64 {
        match self {
            Arch::InceptionResnetV2 => 75,
            _ => 32,
        }
    }

    /// Variables this architecture adds to its timm `state_dict`: missing
    /// from a timm file, they are initialised fresh (besides `head.`).
    pub fn is_extra_variable(self, name: &str) -> bool {
        match self {
            Arch::Sedensenet161 => name.starts_with("features.se"),
            _ => false,
        }
    }

    /// Builds the native network at `vs.root()` with a head under `head.`.
    ///
    /// # Errors
    /// [`Error::Model`] for `torchscript`, which loads through
    /// [`super::ScriptModel`] instead.
    ///
    /// # Shapes
    /// The model maps `[batch, 3, h, w] -> [batch, head.classes]`.
    pub fn build(self, vs: &nn::VarStore, head: &HeadConfig, opts: ConvOptions) -> Result<Model> {
        let root = vs.root();
        let backbone: Box<dyn Backbone> = match self {
            Arch::Resnet18 => Box::new(ResNet::new(&root, ResNetConfig::RESNET18, opts)),
            Arch::Resnet34 => Box::new(ResNet::new(&root, ResNetConfig::RESNET34, opts)),
            Arch::Resnet50 => Box::new(ResNet::new(&root, ResNetConfig::RESNET50, opts)),
            Arch::Resnet101 => Box::new(ResNet::new(&root, ResNetConfig::RESNET101, opts)),
            Arch::Resnext50_32x4d => Box::new(ResNet::new(&root, ResNetConfig::RESNEXT50_32X4D, opts)),
            Arch::Resnext101_32x8d => Box::new(ResNet::new(&root, ResNetConfig::RESNEXT101_32X8D, opts)),
            Arch::Seresnext50_32x4d => Box::new(SeNet::new(&root, SeNetConfig::SE_RESNEXT50_32X4D, opts)),
            Arch::Seresnext101_32x4d => Box::new(SeNet::new(&root, SeNetConfig::SE_RESNEXT101_32X4D, opts)),
            Arch::Senet154 => Box::new(SeNet::new(&root, SeNetConfig::SENET154, opts)),
            Arch::Densenet121 => Box::new(DenseNet::new(&root, DenseNetConfig::DENSENET121, opts)),
            Arch::Densenet161 => Box::new(DenseNet::new(&root, DenseNetConfig::DENSENET161, opts)),
            Arch::Sedensenet161 => Box::new(DenseNet::new(&root, DenseNetConfig::SE_DENSENET161, opts)),
            Arch::InceptionResnetV2 => Box::new(InceptionResnetV2::new(&root, opts)),
            Arch::Pnasnet5large => Box::new(PnasNet5Large::new(&root, opts)),
            Arch::Torchscript => {
                return Err(Error::Model {
                    arch: self.name().to_string(),
                    message: "a TorchScript module is loaded from its archive (ScriptModel::from_bytes), not built"
                        .to_string(),
                })
            }
        };
        Ok(Model::new(self, vs, backbone, head))
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The network part of a model spec (`[model]`-like table; the training
/// spec embeds it).
///
/// ```toml
/// arch = "seresnext50_32x4d"
/// weights = "s3://imet/weights/legacy_seresnext50_32x4d.safetensors"
/// partial_conv = true
/// head = { pool = "avgmax", dropout = 0.2 }
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub arch: Arch,
    /// Initial weights: a safetensors file with timm names for native
    /// archs (random init when absent), the scripted module for
    /// `torchscript` (required). Any store URL.
    #[serde(default)]
    pub weights: Option<String>,
    /// Partial-convolution padding in every padded convolution (R3).
    #[serde(default)]
    pub partial_conv: bool,
    /// Pooling, dropout and the number of logits.
    #[serde(default)]
    pub head: HeadConfig,
}

impl ModelConfig {
    /// A config with defaults for `arch`.
    pub fn new(arch: Arch) -> Self {
        ModelConfig { arch, weights: None, partial_conv: false, head: HeadConfig::default() }
    }

    /// The convolution options.
    pub fn conv_options(&self) -> ConvOptions {
        ConvOptions { partial_padding: self.partial_conv }
    }

    /// Checks ranges and combinations; `origin` names the spec in errors.
    ///
    /// # Errors
    /// [`Error::Spec`] naming the field and the allowed values.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let fail = |message: String| Err(Error::Spec { path: origin.to_string(), message });
        if self.head.classes < 1 {
            return fail(format!("model.head.classes = {} must be at least 1", self.head.classes));
        }
        if !(0.0..1.0).contains(&self.head.dropout) {
            return fail(format!("model.head.dropout = {} must be in [0, 1)", self.head.dropout));
        }
        if self.arch == Arch::Torchscript {
            if self.weights.is_none() {
                return fail("model.arch = \"torchscript\" needs model.weights = the module's URL".to_string());
            }
            if self.partial_conv {
                return fail("model.partial_conv applies to native archs only, not torchscript".to_string());
            }
        }
        Ok(())
    }

    /// Builds the native network described here (weights not loaded).
    ///
    /// # Errors
    /// As [`Arch::build`].
    pub fn build(&self, vs: &nn::VarStore) -> Result<Model> {
        self.arch.build(vs, &self.head, self.conv_options())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DEFAULT_CLASSES;
    use clap::ValueEnum;
    use tch::nn::ModuleT;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn spec_and_command_line_names_agree_for_every_arch() {
        for arch in Arch::value_variants() {
            let serde_name = serde_json::to_string(arch).expect("serialisable");
            assert_eq!(serde_name, format!("\"{}\"", arch.name()));
            let clap_name = arch.to_possible_value().expect("visible").get_name().to_string();
            assert_eq!(clap_name, arch.name());
            assert_eq!(Arch::from_str(arch.name(), false).ok(), Some(*arch));
        }
    }

    #[test]
    fn a_misspelt_arch_fails_at_parse_time() {
        let err = toml::from_str::<ModelConfig>("arch = \"resnet5\"").expect_err("unknown arch");
        assert!(err.to_string().contains("resnet5"), "{err}");
        let ok: ModelConfig = toml::from_str("arch = \"inception_resnet_v2\"\nhead = { pool = \"avgmax\" }").expect("valid");
        assert_eq!(ok.arch, Arch::InceptionResnetV2);
        assert!(toml::from_str::<ModelConfig>("arch = \"resnet50\"\nheads = 2").is_err());
    }

    #[test]
    fn torchscript_needs_a_weights_url() {
        let config = ModelConfig::new(Arch::Torchscript);
        let err = config.validate("jobs/x.toml").expect_err("no url");
        assert!(err.to_string().contains("model.weights"), "{err}");
        assert!(config.build(&nn::VarStore::new(Device::Cpu)).is_err());
    }

    #[test]
    fn every_native_arch_maps_images_to_1103_logits() {
        let _guard = tch::no_grad_guard();
        for arch in Arch::NATIVE {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = ModelConfig::new(arch).build(&vs).expect("native arch builds");
            let size = arch.min_input_size();
            let xs = Tensor::randn([1, 3, size, size], (Kind::Float, Device::Cpu));
            assert_eq!(model.forward_t(&xs, false).size(), [1, DEFAULT_CLASSES], "{arch}");
        }
    }

    #[test]
    fn freezing_the_backbone_leaves_only_the_head_trainable() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = ModelConfig::new(Arch::Resnet50).build(&vs).expect("builds");
        model.set_backbone_trainable(false);
        let trainable: Vec<String> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).map(|(n, _)| n).collect();
        let mut trainable = trainable;
        trainable.sort();
        assert_eq!(trainable, ["head.fc.bias", "head.fc.weight"]);
        model.set_backbone_trainable(true);
        assert!(vs.variables()["conv1.weight"].requires_grad());
        assert!(!vs.variables()["bn1.running_mean"].requires_grad());
    }
}
