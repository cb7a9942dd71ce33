//! Orchestration stage: turns an experiment spec into its jobs and runs
//! them. Reads the spec, calls every earlier stage, writes what they write.

pub mod local;
pub mod plan;
pub mod show;
pub mod slurm;
pub mod k8s;
pub mod batch;
