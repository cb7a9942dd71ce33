//! What train and predict share: a fold job's identity, its inputs (the
//! images on each side of the fold), where it reads them from (objects or
//! shard sets), its device set-up, the model's weight bytes, and the
//! prediction loop. Reads `data/*.csv`, `runs/{exp}/folds.parquet`, shard
//! manifests and indexes, and weight files; writes nothing.

pub mod device;
pub mod images;
pub mod inputs;

pub use device::{device, predict_probs, predict_views, to_channels_last, DeviceSetup, Precision};
pub use images::{FoldImages, ShardReads};
pub use inputs::{fold_inputs, parse_fold, DataEdits, FoldInputs, FOLDS_ENV, FOLD_ENV};

use crate::error::Result;
use crate::ids::Fold;
use crate::storage::keys::Scope;
use crate::storage::JobId;

/// Which fold job: the experiment, its stage, the model and the fold, with
/// the hash of the spec parts the job depends on and the stage's edits of
/// its training data.
#[derive(Clone, Debug, PartialEq)]
pub struct FoldJob {
    pub experiment: String,
    /// `None` for the first stage.
    pub stage: Option<String>,
    pub model: String,
    pub fold: Fold,
    /// Folds of the experiment (`folds.k`).
    pub k: u8,
    pub spec_hash: String,
    pub edits: DataEdits,
    /// The upstream jobs the job reads (the stage's data edits, a source
    /// fold model).
    pub inputs: Vec<crate::storage::Upstream>,
}

impl FoldJob {
    /// `{model} fold {k}` (`{stage}/{model} fold {k}` in later stages), as
    /// errors and logs name the job.
    pub fn label(&self) -> String {
        match &self.stage {
            None => format!("{} fold {}", self.model, self.fold.0),
            Some(s) => format!("{s}/{} fold {}", self.model, self.fold.0),
        }
    }

    /// The command line of this fold job as `verb` (`train`, `predict`),
    /// for messages.
    pub fn command(&self, verb: &str) -> String {
        let stage = self.stage.as_ref().map(|s| format!(" --stage {s}")).unwrap_or_default();
        format!("imet {verb} --spec <spec> --model {} --fold {}{stage}", self.model, self.fold.0)
    }

    /// Where the job's outputs live.
    pub fn scope(&self) -> Scope<'_> {
        Scope { experiment: &self.experiment, stage: self.stage.as_deref() }
    }

    /// The manifest identity of this job as `kind` (`train`, `predict`).
    pub fn job_id(&self, kind: &str) -> JobId {
        JobId { kind: kind.into(), experiment: self.experiment.clone(), model: Some(self.model.clone()), fold: Some(self.fold.0) }
    }
}

/// The bytes of a weights file or module named by path or store URL.
///
/// # Errors
/// [`crate::Error::StoreUrl`] for a URL without a file name,
/// [`crate::Error::NotFound`] when the file is missing.
pub async fn fetch_weights(url: &str) -> Result<bytes::Bytes> {
    crate::storage::read_file(url).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn weights_are_fetched_from_a_url_and_a_missing_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("w.safetensors"), b"bytes").expect("write");
        let url = format!("file://{}/w.safetensors", dir.path().display());
        assert_eq!(&fetch_weights(&url).await.unwrap()[..], b"bytes");
        let missing = format!("file://{}/nope.safetensors", dir.path().display());
        let err = fetch_weights(&missing).await.unwrap_err().to_string();
        assert!(err.contains("nope.safetensors"), "{err}");
        assert!(fetch_weights("s3://bucket/").await.is_err());
    }
}
