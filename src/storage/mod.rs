//! Storage stage: object stores from URLs with retries, the key layout,
//! atomic and conditional writes, job manifests and leases, Parquet reading and writing
//! of every data product, TensorBoard event files of training histories,
//! a read-through local disk cache for inputs, and the failure record a
//! failed job leaves beside its manifest.

pub mod cache;
pub mod config;
pub mod failure;
pub mod keys;
pub mod lease;
pub mod manifest;
pub mod parquet;
pub mod provenance;
pub mod store;
pub mod tensorboard;

pub use cache::{Cache, CacheOptions};
pub use lease::{Lease, LeasePolicy};
pub use config::{open_file, read_file, root_to_url, StorageSection};
pub use manifest::{CommitOutcome, InputEntry, JobId, JobRef, Manifest, OutputEntry, Ran, Upstream};
pub use store::{ObjectInfo, RetryPolicy, Store, StoreOptions};
