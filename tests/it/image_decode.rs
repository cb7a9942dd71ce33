//! Every image of a generated sample (RGB, grey and RGBA PNGs, strips up to
//! 1:10) decodes to RGB with its header size, and the loader reads them from
//! a local file store through the read-through cache into NCHW batches.

use imet::data::sample::plan;
use imet::image::augment::{Prob, RandomResizedCrop, Transform};
use imet::image::{decode, Item, Loader, LoaderOptions, OnBadImage, Pipeline, Shuffle};
use imet::data::sample::SampleSection;
use imet::storage::keys::{self, Split};
use imet::storage::{CacheOptions, Store, StoreOptions};
use std::sync::Arc;

#[test]
fn every_sample_png_decodes_to_rgb_with_its_header_size() {
    let p = plan(&SampleSection { train: 120, test: 1, classes: 30, seed: 21, noise: 0.0 }).unwrap();
    let mut colour_types = std::collections::HashSet::new();
    for r in &p.train {
        let png = p.render(r, Split::Train).unwrap();
        colour_types.insert(png[25]); // IHDR colour type: 0 grey, 2 RGB, 6 RGBA
        let key = keys::image(Split::Train, &r.id);
        let (w, h) = imet::image::decode::dimensions(&key, &png).unwrap();
        let img = decode(&key, &png, imet::image::decode::DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(img.dimensions(), (w, h));
        assert_eq!(w.min(h), 300);
    }
    assert_eq!(colour_types, [0u8, 2, 6].into_iter().collect(), "the sample holds grey, RGB and RGBA PNGs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loader_reads_a_file_store_through_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let root = format!("file://{}", dir.path().join("root").display());
    let section = SampleSection { train: 40, test: 2, classes: 10, seed: 4, noise: 0.0 };
    imet::data::sample::generate(&Store::open(&root).unwrap(), &section).await.unwrap();
    // Corrupt one image to exercise skipping.
    let inputs = imet::data::load_inputs(&Store::open(&root).unwrap()).await.unwrap();
    let bad = keys::image(Split::Train, &inputs.train.ids[3]);
    std::fs::write(dir.path().join("root").join(&bad), b"\x89PNG\r\n\x1a\nbroken").unwrap();

    let cache = CacheOptions { dir: dir.path().join("cache"), max_bytes: 1 << 30 };
    let store = Store::open_with(&root, StoreOptions { cache: Some(cache), ..Default::default() }).unwrap();
    let items: Vec<Item> = inputs.train.ids.iter().zip(&inputs.train.labels).map(|(id, l)| Item::new(keys::image(Split::Train, id), id.clone(), l.clone())).collect();
    let pipe = Pipeline(vec![
        Transform::RandomResizedCrop(RandomResizedCrop { size: 64, scale: (0.4, 1.0), ratio: (0.75, 4.0 / 3.0) }),
        Transform::Hflip(Prob { p: 0.5 }),
    ]);
    let opts = LoaderOptions { batch_size: 16, workers: 2, prefetch: 1, on_bad_image: OnBadImage::Skip, ..Default::default() };
    let loader = Arc::new(Loader::new(store, items, pipe, opts, Arc::new(Shuffle { seed: 3 })).unwrap());
    let l = loader.clone();
    let sizes = tokio::task::spawn_blocking(move || {
        (0..2u64)
            .map(|e| {
                l.epoch(e)
                    .map(|b| {
                        let b = b.unwrap();
                        assert_eq!(&b.images.size()[1..], &[3, 64, 64]);
                        assert_eq!(b.targets.size()[1], 1103);
                        b.ids.len()
                    })
                    .sum::<usize>()
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(sizes, vec![39, 39]);
    let skipped = loader.skipped();
    assert_eq!(skipped.len(), 2, "skipped once per epoch: {skipped:?}");
    assert!(skipped.iter().all(|s| s.key == bad));
    assert!(std::fs::read_dir(dir.path().join("cache")).unwrap().count() > 0, "reads went through the cache");
}
