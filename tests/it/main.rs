//! Every integration test, as one test binary (each binary links libtorch
//! again, so one binary builds much faster than one per file). One module
//! per feature; `common` and `model_support` hold the shared fixtures.
//! `hostile_inputs` installs the binary's global allocator: `System`, with
//! the largest allocation recorded while one of its measurements runs.

mod common;
mod model_support;

mod chaos;
mod cli;
mod cli_docs;
mod container_image;
mod data_cli;
mod ensemble_end_to_end;
mod failure_records;
mod fault_proxy;
mod gpu_check_script;
mod gpu_run;
mod folds_real;
mod full_disk;
mod hostile_inputs;
mod image_decode;
mod layers;
mod metric_parity;
mod model_parity;
mod model_weights;
mod offline_package;
mod progress;
mod recipes;
mod render;
mod repo_paths;
mod report;
mod run_local;
mod runners;
mod sample_learnable;
mod sample_run;
mod schemas;
mod secrets;
mod shard_runs;
mod shards;
mod slurm;
mod spec_hashes;
mod spec_overrides;
mod spec_schema;
mod stages;
mod storage_s3;
mod tensorboard;
mod train_jobs;
mod train_parity;
