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
//!                     |
//!         [report] --> report/curves-{model}.png, curves.json (from every history.parquet)
//! ```
//!
//! Modules in layers, bottom to top. A module may use its own layer's
//! module and any module of a lower layer, never a higher one, and never a
//! sibling of its own layer (`train` and `predict` share code through
//! `fold_job`, not through each other). `tests/it/layers.rs` checks every
//! `crate::` path of `src/` against this table.
//!
//! | layer | modules | what they are |
//! | --- | --- | --- |
//! | 0 | `error`, `fault`, `ids`, `seed`, `telemetry` | the ground floor: the error type, fault-injection points, identifiers, named seeds, logging |
//! | 1 | `storage` | stores, keys, manifests, Parquet, cache |
//! | 2 | `data` | vocabulary, annotations, folds, the synthetic sample, F2 |
//! | 3 | `image` | decode, augment, load |
//! | 4 | `model`, `shards` | networks from bytes; image shards for cloud reads |
//! | 5 | `fold_job` | what train and predict share |
//! | 6 | `train`, `predict`, `level2` | the fold jobs; the second-level model over the members' predictions |
//! | 7 | `ensemble` | blends, thresholds, submission |
//! | 8 | `curate` | a later stage's data edits from an earlier stage's ensemble |
//! | 9 | `spec` | the experiment spec, composing every stage's configuration |
//! | 10 | `jobs` | job kinds: spec in, one stage run |
//! | 11 | `orchestrate`, `report` | the DAG and its executors; learning curves of an experiment |

// Layer 0: the ground floor. Every stage may use these; they import no stage.
pub mod error;
pub mod fault;
pub mod ids;
pub mod seed;
pub mod telemetry;

pub mod storage;
pub mod data;
pub mod image;
pub mod model;
pub mod shards;
pub mod fold_job;
pub mod train;
pub mod predict;
pub mod ensemble;
pub mod level2;
pub mod curate;
pub mod spec;
pub mod jobs;
pub mod orchestrate;
pub mod report;

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
