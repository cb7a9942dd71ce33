//! Image stage: decoding stored images into RGB u8 ([`decode`]), pixel
//! geometry ([`geometry`]), the recipes' augmentations ([`augment`]),
//! test-time views ([`tta`]), batch-level MixUp and label smoothing
//! ([`mix`]), and the prefetching batch loader ([`loader`]). Reads image
//! objects through the store's cache; writes nothing.

pub mod augment;
pub mod config;
pub mod decode;
pub mod geometry;
pub mod loader;
pub mod mix;
pub mod tta;

pub use augment::{Normalize, Pipeline, Transform};
pub use config::{EvalResize, ImageSection};
pub use decode::{decode, BadImageKind, OnBadImage};
pub use loader::{Batch, Item, Loader, LoaderOptions, Output, Sampler, Sequential, Shuffle, Skipped};
pub use tta::{TtaSettings, View};
