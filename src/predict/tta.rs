//! Predict stage: each test-time view of `image::tta` as a loader
//! pipeline: the original (the model's deterministic eval resize), its
//! mirror, and seeded random resized crops, all at the model's input size;
//! and the one loader that renders them all from each decoded image.
//! Touches no storage.

use crate::error::Result;
use crate::image::augment::{Pipeline, Prob, RandomResizedCrop, Transform};
use crate::image::loader::{Item, Loader, LoaderOptions, Output, Render, Sequential};
use crate::image::{ImageSection, TtaSettings, View};
use crate::storage::Store;
use std::sync::Arc;

/// One view, as the loader runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewPipeline {
    pub view: View,
    pub pipeline: Pipeline,
    /// Loader seed and epoch: random crops differ per view and are
    /// reproducible.
    pub seed: u64,
    pub epoch: u64,
}

/// The views of `settings` built on `base` (which ends at `size`).
pub fn views(base: &Pipeline, size: u32, settings: &TtaSettings) -> Vec<ViewPipeline> {
    settings
        .views()
        .into_iter()
        .map(|view| {
            let (pipeline, epoch) = match view {
                View::Original => (base.clone(), 0),
                View::Hflip => {
                    let mut p = base.clone();
                    p.0.push(Transform::Hflip(Prob { p: 1.0 }));
                    (p, 0)
                }
                View::Crop(n) => (
                    Pipeline(vec![Transform::RandomResizedCrop(RandomResizedCrop { size, scale: settings.scale, ratio: (3.0 / 4.0, 4.0 / 3.0) })]),
                    n as u64 + 1,
                ),
            };
            ViewPipeline { view, pipeline, seed: 0x7474_6100, epoch }
        })
        .collect()
}

/// The views as the loader renders them: view `v`'s random choices for
/// item `i` draw from `seed::augment(v.seed, v.epoch, i)`, as a loader of
/// that one view with seed `v.seed` reading epoch `v.epoch` would.
pub fn renders(views: &[ViewPipeline]) -> Vec<Render> {
    views.iter().map(|v| Render { pipeline: v.pipeline.clone(), seed: Some((v.seed, v.epoch)) }).collect()
}

/// A sequential loader over `items` that reads and decodes each image once
/// and renders every view of `views` from it (call inside a runtime).
///
/// # Errors
/// As [`Loader::with_views`].
pub fn loader(store: Store, items: Vec<Item>, views: &[ViewPipeline], image: &ImageSection, batch_size: usize, classes: usize, output: Output) -> Result<Loader> {
    let opts = LoaderOptions::from_section(image, batch_size, classes, 0, output);
    Loader::with_views(store, items, renders(views), opts, Arc::new(Sequential))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::augment::Side;

    #[test]
    fn views_are_the_base_its_mirror_and_seeded_crops_at_the_input_size() {
        let base = Pipeline(vec![Transform::Resize(Side { size: 32 })]);
        let s = TtaSettings { hflip: true, crops: 2, scale: (0.5, 1.0) };
        let v = views(&base, 32, &s);
        assert_eq!(v.iter().map(|v| v.view).collect::<Vec<_>>(), [View::Original, View::Hflip, View::Crop(0), View::Crop(1)]);
        assert!(v.iter().all(|v| v.pipeline.output_size() == Some(32)));
        assert_eq!(v[1].pipeline.0.last(), Some(&Transform::Hflip(Prob { p: 1.0 })));
        assert_ne!(v[2].epoch, v[3].epoch);
        let plain = views(&base, 32, &TtaSettings { hflip: false, crops: 0, scale: (0.4, 1.0) });
        assert_eq!(plain.len(), 1);
    }
}
