//! The crate's error type. Every message names the object, file, line or
//! field at fault, what was expected, and what to do next.

use std::path::PathBuf;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- storage -------------------------------------------------------
    #[error("store URL `{url}` is not usable: {reason}; use file:///abs/path, s3://bucket/prefix or memory://")]
    StoreUrl { url: String, reason: String },

    #[error("`{key}` does not exist in store `{store}`; {hint}")]
    NotFound { store: String, key: String, hint: String },

    #[error("`{key}` already exists in store `{store}`; refusing to overwrite it")]
    AlreadyExists { store: String, key: String },

    #[error("storage operation `{op}` on `{key}` failed after {attempts} attempt(s): {source}")]
    Store {
        op: &'static str,
        key: String,
        attempts: u32,
        #[source]
        source: object_store::Error,
    },

    #[error("local cache at `{path}`: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{key}` is not a valid {what}: {reason}")]
    Format { key: String, what: &'static str, reason: String },

    #[error("manifest `{key}` was committed by a different spec (hash {found}, this spec {expected}); use a new experiment name or delete the run's outputs")]
    SpecChanged { key: String, expected: String, found: String },

    // ---- inputs ----------------------------------------------------------
    #[error("{file}:{line}: {message}")]
    Input { file: String, line: usize, message: String },

    #[error("spec `{path}`: {message}")]
    Spec { path: String, message: String },

    #[error("{0}")]
    Usage(String),

    // ---- libraries -------------------------------------------------------
    #[error("I/O on `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),

    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),

    #[error(transparent)]
    Json(#[from] serde_json::Error),

    #[error(transparent)]
    Torch(#[from] tch::TchError),

    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    // ---- data / image (issue 3) ------------------------------------------
    #[error("image `{key}` is {kind}: {reason}; replace the object, or set `image.on_bad_image = \"skip\"` in the spec to train without it")]
    BadImage { key: String, kind: crate::image::BadImageKind, reason: String },

    #[error("augmentation `{transform}`: {message}")]
    Augment { transform: &'static str, message: String },

    // ---- model (issue 4) -------------------------------------------------
    #[error("model `{arch}`: {message}")]
    Model { arch: String, message: String },

    #[error("weights `{file}` do not fit `{arch}`: {problems}; re-export them with ci/export_timm.py from timm model `{timm}` (state_dict names unchanged)")]
    WeightsMismatch { file: String, arch: String, timm: String, problems: String },

    #[error("weights `{file}` are not a readable safetensors file: {reason}; re-export them with ci/export_timm.py")]
    WeightsFormat { file: String, reason: String },

    #[error("TorchScript module `{file}`: {message}")]
    TorchScript { file: String, message: String },

    // ---- ensemble (issue 6) ----------------------------------------------
    #[error("ensemble input `{key}`: {message}")]
    Member { key: String, message: String },

    #[error("ensemble: {0}")]
    Ensemble(String),

    // ---- level2 (stacking) ------------------------------------------------
    #[error("level2: {0}")]
    Level2(String),

    // ---- train and predict (issue 5) -------------------------------------
    #[error("checkpoint `{key}`: {message}")]
    Checkpoint { key: String, message: String },

    #[error("train {job}: {message}")]
    Train { job: String, message: String },

    #[error("predict {job}: {message}")]
    Predict { job: String, message: String },

    // ---- train numerics (optimiser state) --------------------------------
    #[error("optimiser state: {message}")]
    OptimizerState { message: String },

    // ---- orchestrate: local runner (issue 7) ------------------------------
    #[error("experiment `{experiment}`: job(s) {failed:?} failed (logs in {log_dir}); fix the cause and run the same command again: committed jobs are skipped")]
    JobsFailed { experiment: String, failed: Vec<String>, log_dir: String },

    #[error("experiment `{experiment}`: interrupted with {unfinished} job(s) unfinished; run the same command again to finish them")]
    Interrupted { experiment: String, unfinished: usize },

    // ---- batch engines (issue 7) -----------------------------------------
    #[error("{engine}: {message}")]
    Engine { engine: &'static str, message: String },
}

impl Error {
    /// A parse error at `file:line`.
    pub fn input(file: impl Into<String>, line: usize, message: impl Into<String>) -> Self {
        Error::Input { file: file.into(), line, message: message.into() }
    }

    /// True for errors worth retrying: network faults, timeouts, 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store { source, .. } => crate::storage::store::is_transient(source),
            _ => false,
        }
    }
}
