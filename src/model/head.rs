//! Model stage: the classifier head that replaces timm's ImageNet
//! classifier. Global pooling (avg, max, or both concatenated), optional
//! dropout, one linear layer to the attribute logits, all under `head.` so
//! weight loading can tell backbone tensors from the freshly initialised
//! head. Reads and writes nothing.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Tensor};

/// Number of iMet 2019 attributes (398 cultures + 705 tags).
pub const DEFAULT_CLASSES: i64 = 1103;

/// Global pooling of the backbone's feature map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lower")]
pub enum Pool {
    /// Spatial mean.
    #[default]
    Avg,
    /// Spatial max.
    Max,
    /// Mean and max concatenated (twice the features).
    AvgMax,
}

impl Pool {
    /// How many times the backbone's channel count the pooled vector holds.
    pub fn multiplier(self) -> i64 {
        match self {
            Pool::Avg | Pool::Max => 1,
            Pool::AvgMax => 2,
        }
    }
}

/// What the head looks like.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    /// Output logits per image.
    #[serde(default = "default_classes")]
    pub classes: i64,
    #[serde(default)]
    pub pool: Pool,
    /// Dropout probability before the linear layer (0 disables it).
    #[serde(default)]
    pub dropout: f64,
}

fn default_classes() -> i64 {
    DEFAULT_CLASSES
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig { classes: DEFAULT_CLASSES, pool: Pool::Avg, dropout: 0.0 }
    }
}

/// Pooling, dropout, and `head.fc` (`weight [classes, features * mult]`,
/// `bias [classes]`).
#[derive(Debug)]
pub struct Head {
    fc: nn::Linear,
    pool: Pool,
    dropout: f64,
}

impl Head {
    /// Creates `fc` under `vs` (normally `root / "head"`) for a backbone
    /// with `features` output channels; PyTorch's `nn.Linear` init.
    pub fn new(vs: &nn::Path, features: i64, config: &HeadConfig) -> Self {
        let fc = nn::linear(vs / "fc", features * config.pool.multiplier(), config.classes, Default::default());
        Head { fc, pool: config.pool, dropout: config.dropout }
    }

    /// Pools a feature map into one vector per image.
    ///
    /// # Shapes
    /// `[batch, features, h, w] -> [batch, features * mult]`
    pub fn pool(&self, features: &Tensor) -> Tensor {
        let avg = || features.mean_dim([2i64, 3].as_slice(), false, None::<Kind>);
        let max = || features.amax([2i64, 3].as_slice(), false);
        match self.pool {
            Pool::Avg => avg(),
            Pool::Max => max(),
            Pool::AvgMax => Tensor::cat(&[avg(), max()], 1),
        }
    }
}

impl ModuleT for Head {
    /// # Shapes
    /// `[batch, features, h, w] -> [batch, classes]`
    fn forward_t(&self, features: &Tensor, train: bool) -> Tensor {
        let pooled = self.pool(features);
        let pooled = if self.dropout > 0.0 { pooled.dropout(self.dropout, train) } else { pooled };
        self.fc.forward(&pooled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn avg_max_concat_doubles_the_linear_input() {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = HeadConfig { classes: 7, pool: Pool::AvgMax, dropout: 0.5 };
        let head = Head::new(&(vs.root() / "head"), 16, &config);
        assert_eq!(vs.variables()["head.fc.weight"].size(), [7, 32]);
        let xs = Tensor::randn([3, 16, 4, 4], (Kind::Float, Device::Cpu));
        assert_eq!(head.forward_t(&xs, true).size(), [3, 7]);
    }

    #[test]
    fn max_pool_picks_the_spatial_maximum() {
        let vs = nn::VarStore::new(Device::Cpu);
        let head = Head::new(&(vs.root() / "head"), 1, &HeadConfig { classes: 1, pool: Pool::Max, dropout: 0.0 });
        let xs = Tensor::from_slice(&[1.0f32, 5.0, -2.0, 3.0]).view([1, 1, 2, 2]);
        assert_eq!(head.pool(&xs).double_value(&[0, 0]), 5.0);
    }

    #[test]
    fn pool_names_parse_in_lowercase() {
        let config: HeadConfig = toml::from_str("pool = \"avgmax\"").expect("valid head config");
        assert_eq!(config.pool, Pool::AvgMax);
        assert_eq!(config.classes, DEFAULT_CLASSES);
        assert!(toml::from_str::<HeadConfig>("pool = \"mean\"").is_err());
    }
}
