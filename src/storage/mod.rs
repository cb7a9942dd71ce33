//! Storage stage: object stores from URLs with retries, the key layout,
//! atomic and conditional writes, job manifests, Parquet reading and writing
//! of every data product, TensorBoard event files of training histories,
//! and a read-through local disk cache for inputs.

pub mod cache;
pub mod keys;
pub mod manifest;
pub mod parquet;
pub mod store;
pub mod tensorboard;

pub use cache::{Cache, CacheOptions};
pub use manifest::{CommitOutcome, JobId, Manifest, OutputEntry};
pub use store::{ObjectInfo, RetryPolicy, Store, StoreOptions};
