//! Model stage: the architecture registry, native backbones whose variable
//! names equal timm's `state_dict` keys (so weights exported from PyTorch
//! load unchanged), the classifier head, safetensors weight loading from any
//! store URL, and TorchScript import. Reads weight files; writes TorchScript
//! checkpoints.
//!
//! ```text
//!  images [batch, 3, h, w] --backbone (timm names)--> features [batch, F, h', w']
//!                          --head. (pool, dropout, fc)--> logits [batch, classes]
//! ```

pub mod densenet;
pub mod head;
pub mod inception_resnet;
pub mod layers;
pub mod network;
pub mod partial_conv;
pub mod pnasnet;
pub mod registry;
pub mod resnet;
pub mod senet;
pub mod torchscript;
pub mod weights;

pub use head::{Head, HeadConfig, Pool, DEFAULT_CLASSES};
pub use layers::ConvOptions;
pub use network::{Network, WeightBytes};
pub use registry::{Arch, ModelConfig};
pub use torchscript::ScriptModel;
pub use weights::{apply_weights, LoadReport};

use tch::nn::{self, ModuleT};
use tch::Tensor;

/// A feature extractor: everything of a timm model before its global pool.
pub trait Backbone: std::fmt::Debug + Send {
    /// # Shapes
    /// `[batch, 3, h, w] -> [batch, num_features, h', w']`
    fn features_t(&self, xs: &Tensor, train: bool) -> Tensor;
    /// Channels of the feature map.
    fn num_features(&self) -> i64;
}

/// Variable-name prefix of the classifier head.
pub const HEAD_PREFIX: &str = "head.";

/// A native network: a backbone with timm names at the `VarStore` root and
/// a [`Head`] under `head.`.
#[derive(Debug)]
pub struct Model {
    arch: Arch,
    backbone: Box<dyn Backbone>,
    head: Head,
    /// Trainable backbone variables, for freezing the encoder.
    backbone_params: Vec<(String, Tensor)>,
}

impl Model {
    /// Assembles a model whose backbone was built at `vs.root()`; adds the
    /// head under `head.`.
    pub(crate) fn new(arch: Arch, vs: &nn::VarStore, backbone: Box<dyn Backbone>, head: &HeadConfig) -> Self {
        let mut backbone_params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(name, t)| t.requires_grad() && !name.starts_with(HEAD_PREFIX))
            .collect();
        backbone_params.sort_by(|a, b| a.0.cmp(&b.0));
        let head = Head::new(&(vs.root() / "head"), backbone.num_features(), head);
        Model { arch, backbone, head, backbone_params }
    }

    /// The architecture this model was built as.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The backbone alone.
    pub fn backbone(&self) -> &dyn Backbone {
        self.backbone.as_ref()
    }

    /// The head alone.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Feature map before pooling.
    ///
    /// # Shapes
    /// `[batch, 3, h, w] -> [batch, F, h', w']`
    pub fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.backbone.features_t(xs, train)
    }

    /// Names of the trainable backbone variables (everything not under `head.`
    /// except BatchNorm buffers).
    pub fn backbone_parameter_names(&self) -> Vec<&str> {
        self.backbone_params.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Freezes (`false`) or unfreezes (`true`) every backbone parameter; the
    /// head stays trainable. Recipe R3 trains the head alone first. Frozen
    /// parameters get no gradient; BatchNorm still updates its running
    /// statistics when run with `train = true`.
    pub fn set_backbone_trainable(&self, trainable: bool) {
        for (_, t) in &self.backbone_params {
            let _ = t.set_requires_grad(trainable);
        }
    }
}

impl ModuleT for Model {
    /// # Shapes
    /// `[batch, 3, h, w] -> [batch, classes]`
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.head.forward_t(&self.backbone.features_t(xs, train), train)
    }
}

/// Parameters (trainable variables) and their element count per group.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ParameterCount {
    pub backbone: i64,
    pub head: i64,
}

/// Counts trainable elements in `vs`, backbone and head apart.
pub fn parameter_count(vs: &nn::VarStore) -> ParameterCount {
    let mut count = ParameterCount { backbone: 0, head: 0 };
    for (name, t) in vs.variables() {
        if !t.is_floating_point() || name.ends_with("running_mean") || name.ends_with("running_var") {
            continue;
        }
        let n = t.numel() as i64;
        if name.starts_with(HEAD_PREFIX) {
            count.head += n;
        } else {
            count.backbone += n;
        }
    }
    count
}
