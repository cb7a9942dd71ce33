//! Model stage: one entry point for the train and predict stages. Builds
//! the network a [`ModelConfig`] describes (native arch with optional timm
//! weights, or a TorchScript module) from bytes the job fetched, runs it,
//! and serialises it: native models as a safetensors file of every
//! `VarStore` variable (BatchNorm buffers included), TorchScript models as
//! the whole module. Touches no store.

use super::registry::{Arch, ModelConfig};
use super::torchscript::ScriptModel;
use super::weights::{apply_weights, to_safetensors, LoadReport};
use super::Model;
use crate::error::{Error, Result};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// A weights file, checkpoint or TorchScript archive as bytes; `file` names
/// it (its URL or key) in errors.
#[derive(Clone, Copy, Debug)]
pub struct WeightBytes<'a> {
    pub file: &'a str,
    pub bytes: &'a [u8],
}

/// A native model or a TorchScript module, trained through the same
/// `VarStore`.
#[derive(Debug)]
pub enum Network {
    Native(Model),
    Script(ScriptModel),
}

impl Network {
    /// Builds the network of `config` on `vs` and loads `weights` (the
    /// bytes of `config.weights`, which the caller fetched; random native
    /// weights when `None`). Returns the load report of native weights.
    ///
    /// # Errors
    /// [`Error::Spec`] for an invalid config, [`Error::Model`] for a
    /// TorchScript arch without its module, and the errors of
    /// [`apply_weights`] and [`ScriptModel::from_bytes`].
    pub fn open(config: &ModelConfig, vs: &nn::VarStore, weights: Option<WeightBytes<'_>>) -> Result<(Network, Option<LoadReport>)> {
        config.validate("model section")?;
        if config.arch == Arch::Torchscript {
            let w = weights.ok_or_else(|| Error::Model {
                arch: Arch::Torchscript.name().to_string(),
                message: "needs its module: set `weights` to the URL of a torch.jit.script archive".to_string(),
            })?;
            return Ok((Network::Script(ScriptModel::from_bytes(w.file, w.bytes, vs)?), None));
        }
        let model = config.build(vs)?;
        let report = match weights {
            Some(w) => {
                let report = apply_weights(vs, config.arch, w.file, w.bytes)?;
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

    /// Reopens checkpoint bytes written by [`Network::checkpoint`] for
    /// `config`'s arch (its `weights` field is ignored).
    ///
    /// # Errors
    /// As [`apply_weights`] and [`ScriptModel::from_bytes`]; [`Error::Model`]
    /// when the checkpoint was saved for another head.
    pub fn restore(config: &ModelConfig, vs: &nn::VarStore, checkpoint: WeightBytes<'_>) -> Result<Network> {
        if config.arch == Arch::Torchscript {
            return Ok(Network::Script(ScriptModel::from_bytes(checkpoint.file, checkpoint.bytes, vs)?));
        }
        let model = config.build(vs)?;
        let report = apply_weights(vs, config.arch, checkpoint.file, checkpoint.bytes)?;
        if !report.fresh.is_empty() {
            return Err(Error::Model {
                arch: config.arch.name().to_string(),
                message: format!("checkpoint `{}` lacks {:?}; it was saved for another head", checkpoint.file, report.fresh),
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

    #[test]
    fn a_native_checkpoint_restores_the_same_logits() {
        let config = ModelConfig { head: HeadConfig { classes: 4, pool: Pool::AvgMax, dropout: 0.0 }, ..ModelConfig::new(Arch::Densenet121) };
        let vs = nn::VarStore::new(Device::Cpu);
        let (mut net, report) = Network::open(&config, &vs, None).expect("opens");
        assert!(report.is_none());
        let xs = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let _ = net.forward_t(&xs, true).expect("train forward updates BatchNorm statistics");
        let before = tch::no_grad(|| net.forward_t(&xs, false)).expect("forward");
        let bytes = net.checkpoint(&vs).expect("serialises");
        let ckpt = WeightBytes { file: "ckpt.safetensors", bytes: &bytes };
        let vs2 = nn::VarStore::new(Device::Cpu);
        let mut again = Network::restore(&config, &vs2, ckpt).expect("restores");
        let after = tch::no_grad(|| again.forward_t(&xs, false)).expect("forward");
        assert_eq!(before, after);
        let other = ModelConfig { head: HeadConfig { classes: 5, ..config.head }, ..config.clone() };
        let vs3 = nn::VarStore::new(Device::Cpu);
        assert!(Network::restore(&other, &vs3, ckpt).is_err());
    }
}
