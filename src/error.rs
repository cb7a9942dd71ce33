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

    #[error("`{key}` was made from outputs of `{upstream}` that have been committed again since; rerun what is stale with `imet run --rerun-stale` (or delete `{key}`)")]
    Stale { key: String, upstream: String },

    #[error("`{key}` was written by a different spec (hash {found}, this spec {expected}); rerun what changed with `imet run --rerun-stale` (the old manifest and checkpoints are kept aside), use a new experiment name, or delete the run's outputs")]
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
    // ---- data / image ----------------------------------------------------
    #[error("image `{key}` is {kind}: {reason}; replace the object, or set `image.on_bad_image = \"skip\"` in the spec to train without it")]
    BadImage { key: String, kind: BadImageKind, reason: String },

    #[error(transparent)]
    Shard(#[from] ShardError),

    #[error("augmentation `{transform}`: {message}")]
    Augment { transform: &'static str, message: String },

    // ---- model -----------------------------------------------------------
    #[error("model `{arch}`: {message}")]
    Model { arch: String, message: String },

    #[error("weights `{file}` do not fit `{arch}`: {problems}; re-export them with ci/export_timm.py from timm model `{timm}` (state_dict names unchanged)")]
    WeightsMismatch { file: String, arch: String, timm: String, problems: String },

    #[error("weights `{file}` are not a readable safetensors file: {reason}; re-export them with ci/export_timm.py")]
    WeightsFormat { file: String, reason: String },

    #[error("TorchScript module `{file}`: {message}")]
    TorchScript { file: String, message: String },

    // ---- ensemble --------------------------------------------------------
    #[error("ensemble input `{key}`: {message}")]
    Member { key: String, message: String },

    #[error("ensemble: {0}")]
    Ensemble(String),

    // ---- report ------------------------------------------------------------
    #[error("report: {0}")]
    Report(String),

    // ---- level2 (stacking) ------------------------------------------------
    #[error("level2: {0}")]
    Level2(String),

    // ---- train and predict -----------------------------------------------
    #[error("checkpoint `{key}`: {message}")]
    Checkpoint { key: String, message: String },

    #[error("train {job}: {message}")]
    Train { job: String, message: String },

    #[error("predict {job}: {message}")]
    Predict { job: String, message: String },

    // ---- train numerics (optimiser state) --------------------------------
    #[error("optimiser state: {message}")]
    OptimizerState { message: String },

    // ---- storage: job leases ----------------------------------------------
    #[error("job lease `{key}` was taken over by another runner (this one stopped renewing it in time); this run stopped writing the job's outputs. Run the same command again: it skips the job once the other runner commits it")]
    LeaseLost { key: String },

    // ---- orchestrate: local runner ----------------------------------------
    #[error("experiment `{experiment}`: job(s) {failed:?} failed (logs in {log_dir}); fix the cause and run the same command again: committed jobs are skipped")]
    JobsFailed { experiment: String, failed: Vec<String>, log_dir: String },

    #[error("experiment `{experiment}`: interrupted with {unfinished} job(s) unfinished; run the same command again to finish them")]
    Interrupted { experiment: String, unfinished: usize },

    // ---- batch engines ---------------------------------------------------
    #[error("{engine}: {message}")]
    Engine { engine: &'static str, message: String },
}

/// Why an image could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadImageKind {
    Empty,
    Truncated,
    Corrupt,
    Unsupported,
    TooLarge,
}

impl std::fmt::Display for BadImageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadImageKind::Empty => "empty (zero bytes)",
            BadImageKind::Truncated => "truncated",
            BadImageKind::Corrupt => "corrupt",
            BadImageKind::Unsupported => "not a PNG or JPEG image",
            BadImageKind::TooLarge => "too large",
        })
    }
}

/// What kind of failure ended a command: its exit status, so that a batch
/// engine can retry what may pass on a second attempt (`Transient`) and
/// stop on what will not. The numbers follow `sysexits.h` where it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitKind {
    /// Anything not classified below.
    Failure = 1,
    /// The command or spec is wrong (also clap's status for bad arguments):
    /// fix the command line or the spec.
    Usage = 2,
    /// An input file (CSV, image, Parquet, weights, shard) is bad: fix or
    /// replace the file named.
    BadInput = 3,
    /// The job's own computation failed (NaN loss, a model that cannot be
    /// built, an ensemble without members).
    Job = 4,
    /// `imet run`: one or more jobs failed (their logs say why).
    JobsFailed = 5,
    /// Storage failed for good, or local I/O failed (disk full, permission
    /// denied): `EX_IOERR`.
    Storage = 74,
    /// A network or server fault that outlasted the retries: run the job
    /// again (`EX_TEMPFAIL`).
    Transient = 75,
    /// Stopped by SIGINT or SIGTERM (128 + 2): run the same command again.
    Interrupted = 130,
}

impl ExitKind {
    /// Every kind, for documentation and tests.
    pub const ALL: [ExitKind; 8] =
        [ExitKind::Failure, ExitKind::Usage, ExitKind::BadInput, ExitKind::Job, ExitKind::JobsFailed, ExitKind::Storage, ExitKind::Transient, ExitKind::Interrupted];

    /// The exit status.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The kind an exit status stands for, if it is one of these.
    pub fn from_code(code: i32) -> Option<ExitKind> {
        ExitKind::ALL.into_iter().find(|k| i32::from(k.code()) == code)
    }

    /// A few words for a person.
    pub fn describe(self) -> &'static str {
        match self {
            ExitKind::Failure => "failed",
            ExitKind::Usage => "the command or spec is wrong",
            ExitKind::BadInput => "an input file is bad",
            ExitKind::Job => "the job's computation failed",
            ExitKind::JobsFailed => "jobs failed",
            ExitKind::Storage => "storage or local I/O failed",
            ExitKind::Transient => "a transient storage fault outlasted the retries; running it again may pass",
            ExitKind::Interrupted => "interrupted",
        }
    }
}

impl Error {
    /// The kind of failure this error ends a command with.
    pub fn exit_kind(&self) -> ExitKind {
        use Error as E;
        match self {
            E::Store { .. } if self.is_transient() => ExitKind::Transient,
            E::LeaseLost { .. } => ExitKind::Transient,
            E::Store { .. } | E::Cache { .. } | E::Io { .. } => ExitKind::Storage,
            E::StoreUrl { .. } | E::Spec { .. } | E::Usage(_) | E::Stale { .. } | E::SpecChanged { .. } | E::AlreadyExists { .. } => ExitKind::Usage,
            E::NotFound { .. }
            | E::Input { .. }
            | E::Format { .. }
            | E::BadImage { .. }
            | E::Shard(_)
            | E::WeightsMismatch { .. }
            | E::WeightsFormat { .. }
            | E::TorchScript { .. }
            | E::Member { .. }
            | E::Arrow(_)
            | E::Parquet(_)
            | E::Json(_) => ExitKind::BadInput,
            E::Augment { .. }
            | E::Model { .. }
            | E::Ensemble(_)
            | E::Report(_)
            | E::Checkpoint { .. }
            | E::Train { .. }
            | E::Predict { .. }
            | E::OptimizerState { .. }
            | E::Level2(_)
            | E::Torch(_) => ExitKind::Job,
            E::JobsFailed { .. } => ExitKind::JobsFailed,
            E::Interrupted { .. } => ExitKind::Interrupted,
            E::Join(_) | E::Engine { .. } => ExitKind::Failure,
        }
    }

    /// A parse error at `file:line`.
    pub fn input(file: impl Into<String>, line: usize, message: impl Into<String>) -> Self {
        Error::Input { file: file.into(), line, message: message.into() }
    }

    /// True for errors worth retrying: network faults, timeouts, 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store { source, .. } => is_transient(source),
            _ => false,
        }
    }
}

/// True for faults worth retrying: connection errors, timeouts, 5xx, 429.
pub fn is_transient(err: &object_store::Error) -> bool {
    use object_store::Error as E;
    match err {
        E::NotFound { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotModified { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::UnknownConfigurationKey { .. } => false,
        E::Generic { source, .. } => {
            // Local file-system faults (a full disk, a read-only or
            // forbidden path) stay until a person acts: by their kind.
            if let Some(kind) = find_in_chain::<std::io::Error>(source.as_ref()).map(std::io::Error::kind) {
                use std::io::ErrorKind as K;
                if matches!(
                    kind,
                    K::StorageFull
                        | K::QuotaExceeded
                        | K::ReadOnlyFilesystem
                        | K::PermissionDenied
                        | K::FileTooLarge
                        | K::IsADirectory
                        | K::NotADirectory
                        | K::DirectoryNotEmpty
                        | K::InvalidFilename
                ) {
                    return false;
                }
            }
            // A fault of the connection itself (connect, send, timeout,
            // aborted or undecodable response): by object_store's kind.
            if let Some(kind) = find_in_chain::<object_store::client::HttpError>(source.as_ref()).map(|h| h.kind()) {
                use object_store::client::HttpErrorKind as H;
                match kind {
                    H::Connect | H::Request | H::Timeout | H::Interrupted | H::Decode => return true,
                    _ => {}
                }
            }
            // An answer with a status: object_store does not export the
            // type that carries it, so the status is read from its message.
            let text = format!("{source:?} {source}").to_ascii_lowercase();
            // A 4xx other than 408/429 is the caller's fault, not the network's.
            let client_error = ["status: 400", "status: 403", "status: 404", "status: 409", "status: 412"]
                .iter()
                .any(|s| text.contains(s));
            let local_io = text.contains("unable to open file") || text.contains("permission denied");
            !(client_error || local_io)
        }
        _ => true,
    }
}

/// The first error of type `T` in `err`'s source chain (`err` included).
fn find_in_chain<'a, T: std::error::Error + 'static>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

/// Why a shard set cannot be used. Every variant names the object and the
/// image at fault; none of them is ever skipped silently.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard `{shard}` is truncated: the index says {expected} bytes, the store has {found}; image `{id}` lies past the end; rebuild the shard set (the shard's images are still under data/) or restore the object")]
    Truncated { shard: String, expected: u64, found: u64, id: String },

    #[error("shard `{shard}`: the bytes of image `{id}` (offset {offset}, {length} bytes) have CRC32C {found:08x}, index `{index}` says {expected:08x}; the shard and its index disagree: rebuild the shard set")]
    Checksum { index: String, shard: String, id: String, offset: u64, length: u64, expected: u32, found: u32 },

    #[error("shard `{shard}` has sha256 {found}, index `{index}` says {expected}; the shard was changed after the set was built: rebuild the shard set")]
    ShardHash { index: String, shard: String, expected: String, found: String },

    #[error("image `{id}` is not in shard set `{index}` ({missing} of the requested ids are missing); build the shard set from the same data/train.csv and data/sample_submission.csv as the spec")]
    MissingId { index: String, id: String, missing: usize },

    #[error("shard set `{index}` was built from `{file}` with sha256 {built}, but the store's `{file}` has sha256 {found}; a shard set built from other data is never used: rebuild it for this data")]
    OtherData { index: String, file: String, built: String, found: String },

    #[error("`{key}` is not a valid shard index: {reason}; rebuild the shard set")]
    BadIndex { key: String, reason: String },
}

#[cfg(test)]
mod exit_tests {
    use super::*;

    #[test]
    fn each_failure_kind_has_its_own_exit_status() {
        let codes: std::collections::HashSet<u8> = ExitKind::ALL.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), ExitKind::ALL.len());
        assert!(!codes.contains(&0));
        let io = Error::Io { path: "/x".into(), source: std::io::Error::from(std::io::ErrorKind::StorageFull) };
        assert_eq!(io.exit_kind(), ExitKind::Storage);
        assert_eq!(Error::Spec { path: "s.toml".into(), message: "m".into() }.exit_kind(), ExitKind::Usage);
        assert_eq!(Error::input("train.csv", 3, "bad id").exit_kind(), ExitKind::BadInput);
        let busy = Error::Store { op: "get", key: "k".into(), attempts: 5, source: object_store::Error::Generic { store: "S3", source: "503 Service Unavailable".into() } };
        assert_eq!(busy.exit_kind(), ExitKind::Transient);
        let missing = Error::Store { op: "get", key: "k".into(), attempts: 1, source: object_store::Error::NotFound { path: "k".into(), source: "gone".into() } };
        assert_eq!(missing.exit_kind(), ExitKind::Storage);
        assert_eq!(ExitKind::from_code(75), Some(ExitKind::Transient));
        // A full local disk is not retried: its kind says so.
        let full = Error::Store {
            op: "put",
            key: "k".into(),
            attempts: 1,
            source: object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(std::io::Error::from(std::io::ErrorKind::StorageFull)) },
        };
        assert!(!full.is_transient());
        assert_eq!(full.exit_kind(), ExitKind::Storage);
        // Connection faults by object_store's kind.
        use object_store::client::{HttpError, HttpErrorKind};
        let wrapped = |kind| object_store::Error::Generic { store: "S3", source: Box::new(HttpError::new(kind, std::io::Error::other("peer went away"))) };
        for kind in [HttpErrorKind::Connect, HttpErrorKind::Request, HttpErrorKind::Timeout, HttpErrorKind::Interrupted, HttpErrorKind::Decode] {
            assert!(is_transient(&wrapped(kind)), "{kind:?}");
        }
        assert_eq!(ExitKind::from_code(9), None);
    }
}
