//! Model stage: one entry point for the train and predict stages. Opens
//! the network a [`ModelConfig`] describes (native arch with optional timm
//! weights, or a TorchScript module), runs it, and saves it: native models
//! as a safetensors file of every `VarStore` variable (BatchNorm buffers
//! included), TorchScript models as the whole module. Reads weight files and
//! modules; writes checkpoints.

use super::registry::{Arch, ModelConfig};
use super::torchscript::ScriptModel;
use super::weights::{apply_weights, load_weights_url, to_safetensors, LoadReport};
use super::Model;
use crate::error::{Error, Result};
use crate::storage::Store;
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// A native model or a TorchScript module, trained through the same
/// `VarStore`.
#[derive(Debug)]
pub enum Network {
    Native(Model),
    Script(ScriptModel),
}

impl Network {
    /// Builds the network of `config` on `vs` and loads `config.weights`
    /// (random native weights when absent). Returns the load report of
    /// native weights.
    ///
    /// # Errors
    /// [`Error::Spec`] for an invalid config, and the errors of
    /// [`load_weights_url`] and [`ScriptModel::load_url`].
    pub async fn open(config: &ModelConfig, vs: &nn::VarStore) -> Result<(Network, Option<LoadReport>)> {
        config.validate("model section")?;
        if config.arch == Arch::Torchscript {
            let url = config.weights.as_deref().unwrap_or_default();
            return Ok((Network::Script(ScriptModel::load_url(url, vs).await?), None));
        }
        let model = config.build(vs)?;
        let report = match &config.weights {
            Some(url) => {
                let report = load_weights_url(url, vs, config.arch).await?;
                tracing::info!(
                    arch = %config.arch,
                    loaded = report.loaded,
                    fresh = ?report.fresh,
                    skipped = report.skipped.len(),
                    "initial weights loaded"
                );
                Some(report)
            }
            None => None,
        };
        Ok((Network::Native(model), report))
    }

    /// Logits for a batch of images.
    ///
    /// # Errors
    /// [`Error::TorchScript`] when a scripted module fails.
    ///
    /// # Shapes
    /// `[batch, 3, h, w] -> [batch, classes]`
    pub fn forward_t(&mut self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Network::Native(model) => Ok(model.forward_t(xs, train)),
            Network::Script(module) => module.forward_t(xs, train),
        }
    }

    /// Freezes or unfreezes the encoder (everything but the head).
    ///
    /// # Errors
    /// [`Error::Model`] for TorchScript modules, whose head is not known.
    pub fn set_backbone_trainable(&self, trainable: bool) -> Result<()> {
        match self {
            Network::Native(model) => {
                model.set_backbone_trainable(trainable);
                Ok(())
            }
            Network::Script(_) => Err(Error::Model {
                arch: Arch::Torchscript.name().to_string(),
                message: "cannot tell the head from the encoder of a TorchScript module; train it whole".to_string(),
            }),
        }
    }

    /// Checkpoint bytes: safetensors of every variable for native models
    /// (reload with [`Network::restore`]), the whole module for TorchScript.
    ///
    /// # Errors
    /// [`Error::Torch`] or [`Error::Io`] when serialising fails.
    pub fn checkpoint(&self, vs: &nn::VarStore) -> Result<Vec<u8>> {
        match self {
            Network::Native(_) => to_safetensors(vs),
            Network::Script(module) => module.to_bytes(),
        }
    }

    /// Writes [`Network::checkpoint`] to `key` of `store`.
    ///
    /// # Errors
    /// As [`Network::checkpoint`] and [`Store::put`].
    pub async fn save(&self, vs: &nn::VarStore, store: &Store, key: &str) -> Result<()> {
        store.put(key, self.checkpoint(vs)?).await
    }

    /// Reopens a checkpoint written by [`Network::save`] for `config`'s arch
    /// (its `weights` field is ignored).
    ///
    /// # Errors
    /// As [`apply_weights`] and [`ScriptModel::load`].
    pub async fn restore(config: &ModelConfig, vs: &nn::VarStore, store: &Store, key: &str) -> Result<Network> {
        if config.arch == Arch::Torchscript {
            return Ok(Network::Script(ScriptModel::load(store, key, vs).await?));
        }
        let model = config.build(vs)?;
        let bytes = store.get(key).await?;
        let file = format!("{}/{}", store.url().trim_end_matches('/'), key);
        let report = apply_weights(vs, config.arch, &file, &bytes)?;
        if !report.fresh.is_empty() {
            return Err(Error::Model {
                arch: config.arch.name().to_string(),
                message: format!("checkpoint `{file}` lacks {:?}; it was saved for another head", report.fresh),
            });
        }
        Ok(Network::Native(model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HeadConfig, Pool};
    use tch::{Device, Kind};

    #[tokio::test]
    async fn a_native_checkpoint_restores_the_same_logits() {
        let config = ModelConfig { head: HeadConfig { classes: 4, pool: Pool::AvgMax, dropout: 0.0 }, ..ModelConfig::new(Arch::Densenet121) };
        let vs = nn::VarStore::new(Device::Cpu);
        let (mut net, report) = Network::open(&config, &vs).await.expect("opens");
        assert!(report.is_none());
        let xs = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let _ = net.forward_t(&xs, true).expect("train forward updates BatchNorm statistics");
        let before = tch::no_grad(|| net.forward_t(&xs, false)).expect("forward");
        let store = Store::memory();
        net.save(&vs, &store, "ckpt.safetensors").await.expect("saved");
        let vs2 = nn::VarStore::new(Device::Cpu);
        let mut again = Network::restore(&config, &vs2, &store, "ckpt.safetensors").await.expect("restores");
        let after = tch::no_grad(|| again.forward_t(&xs, false)).expect("forward");
        assert_eq!(before, after);
        let other = ModelConfig { head: HeadConfig { classes: 5, ..config.head }, ..config.clone() };
        let vs3 = nn::VarStore::new(Device::Cpu);
        assert!(Network::restore(&other, &vs3, &store, "ckpt.safetensors").await.is_err());
    }
}
