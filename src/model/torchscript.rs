//! Model stage: `arch = "torchscript"`. Loads a scripted PyTorch module
//! (`torch.jit.script(model).save(...)`) from the bytes the job fetched, registers its
//! parameters in a `VarStore` so the usual optimizers train it, and saves
//! the whole module back (parameters and BatchNorm buffers; the buffers are
//! not in the `VarStore`, so checkpoints must be whole modules). Touches no
//! store.

use crate::error::{Error, Result};
use tch::{nn, Tensor, TrainableCModule};

/// A trainable TorchScript module whose `forward` maps images to logits.
#[derive(Debug)]
pub struct ScriptModel {
    module: TrainableCModule,
    file: String,
    train: bool,
}

impl ScriptModel {
    /// Loads a module from archive bytes onto `vs`'s device; its
    /// parameters join `vs` (dots in names become `_`, as tch does). Starts
    /// in eval mode. `file` names the archive in errors.
    ///
    /// # Errors
    /// [`Error::TorchScript`] when the bytes are not a TorchScript archive.
    pub fn from_bytes(file: &str, bytes: &[u8], vs: &nn::VarStore) -> Result<ScriptModel> {
        let mut reader = std::io::Cursor::new(bytes);
        let mut module = TrainableCModule::load_data(&mut reader, vs.root()).map_err(|e| Error::TorchScript {
            file: file.to_string(),
            message: format!("{e}; export it with torch.jit.script(model).save(path)"),
        })?;
        module.f_set_eval()?;
        Ok(ScriptModel { module, file: file.to_string(), train: false })
    }

    /// Runs `forward`, switching the module's train/eval mode when needed
    /// (dropout, BatchNorm statistics).
    ///
    /// # Errors
    /// [`Error::TorchScript`] when forward fails or does not return
    /// `[batch, classes]`.
    ///
    /// # Shapes
    /// `[batch, 3, h, w] -> [batch, classes]`
    pub fn forward_t(&mut self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if train != self.train {
            if train {
                self.module.f_set_train()?;
            } else {
                self.module.f_set_eval()?;
            }
            self.train = train;
        }
        let fail = |message: String| Error::TorchScript { file: self.file.clone(), message };
        let logits = self.module.forward_ts(&[xs]).map_err(|e| fail(format!("forward failed: {e}")))?;
        if logits.dim() != 2 || logits.size()[0] != xs.size()[0] {
            return Err(fail(format!(
                "forward returned shape {:?} for a batch of {}; it must return logits [batch, classes]",
                logits.size(),
                xs.size()[0]
            )));
        }
        Ok(logits)
    }

    /// The whole module (parameters, buffers, code) as archive bytes.
    ///
    /// # Errors
    /// [`Error::Torch`] or [`Error::Io`] when the archive cannot be written.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let dir = tempfile::tempdir().map_err(|e| Error::Io { path: std::env::temp_dir(), source: e })?;
        let path = dir.path().join("module.pt");
        self.module.save(&path)?;
        std::fs::read(&path).map_err(|e| Error::Io { path, source: e })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn garbage_is_refused_with_the_file_name() {
        let vs = nn::VarStore::new(Device::Cpu);
        let err = ScriptModel::from_bytes("s3://b/m.pt", b"not a zip", &vs).expect_err("refused");
        assert!(err.to_string().contains("s3://b/m.pt"), "{err}");
    }
}
