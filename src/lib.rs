//! imet: train, predict and ensemble multi-label classifiers for the iMet
//! Collection 2019 task (1,103 attributes: 398 cultures, 705 tags, scored
//! by F2), as stateless jobs over an object store.
//!
//! ```text
//!  labels.csv  train.csv  sample_submission.csv  train/{id}.png  test/{id}.png
//!       |          |              |                    |              |
//!   [folds] ---> folds.parquet    |                    |              |
//!                     |           |                    |              |
//!         [train  model=M fold=k] --> checkpoints/, model.safetensors, history.parquet
//!                     |
//!         [predict model=M fold=k] --> oof.parquet (fold k rows), test.parquet (TTA)
//!                     |
//!         [ensemble] --> thresholds.json, report.json, plots/*.png, submission.csv
//! ```
//!
//! Modules in data-flow order; a stage may call earlier stages, never later
//! ones.

pub mod error;
pub mod spec;
pub mod telemetry;

pub mod storage;
pub mod data;
pub mod image;
pub mod model;
pub mod train;
pub mod predict;
pub mod ensemble;
pub mod level2;
pub mod orchestrate;

pub use error::{Error, Result};
pub use spec::JobSpec;

/// What this build of libtorch can use.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    pub cuda_available: bool,
    pub cuda_devices: i64,
    pub cudnn_available: bool,
    pub threads: i32,
}

/// Reports the devices libtorch sees (CUDA needs `libtorch_cuda` linked;
/// `build.rs` keeps it).
pub fn device_info() -> DeviceInfo {
    DeviceInfo {
        cuda_available: tch::Cuda::is_available(),
        cuda_devices: tch::Cuda::device_count(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        threads: tch::get_num_threads(),
    }
}
