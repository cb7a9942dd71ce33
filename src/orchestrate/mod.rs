//! Orchestration stage: turns an experiment spec into its jobs and runs
//! them. Reads the spec, calls every earlier stage, writes what they write.

pub mod budget;
pub mod gc;
pub mod gpus;
pub mod local;
pub mod plan;
pub mod smoke;
pub mod status;
pub mod show;
pub mod slurm;
pub mod k8s;
pub mod batch;
pub mod package;
