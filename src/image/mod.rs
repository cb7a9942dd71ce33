//! Image stage: decoding stored images into RGB u8 ([`decode`]), pixel
//! geometry ([`geometry`]), the recipes' augmentations ([`augment`]),
//! test-time views ([`tta`]), batch-level MixUp and label smoothing
//! ([`mix`]), the prefetching batch loader ([`loader`]) and where it reads
//! bytes from ([`source`]). Reads image objects through the store's cache
//! (or shards, through `shards::source`); writes nothing.

pub mod augment;
pub mod config;
pub mod decode;
pub mod geometry;
pub mod loader;
pub mod mix;
pub mod source;
pub mod tta;

pub use augment::{Normalize, Pipeline, Transform};
pub use config::{EvalResize, ImageSection};
pub use decode::{decode, BadImageKind, OnBadImage};
pub use loader::{Batch, Item, Loader, LoaderOptions, Output, Render, Sampler, Sequential, Shuffle, Skipped};
pub use source::{ImageSource, ShardRecode, ShardsSection, Source};
pub use tta::{TtaSettings, View};
