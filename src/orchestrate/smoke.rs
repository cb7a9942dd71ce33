//! Smoke specs (orchestrate stage): derives from a recipe's spec a tiny
//! experiment that exercises its whole DAG in CI on a CPU: the synthetic
//! sample, at most 3 folds, every model at a tiny input size, one epoch per
//! phase, small batches, few images, random weights, and the largest
//! backbones (over 45M parameters: SENet-154, PNASNet-5-Large,
//! SE-ResNeXt-101, ResNeXt-101, ResNet-101, Inception-ResNet-v2) replaced
//! by ResNet-18, whose construction and checkpoints would otherwise take
//! most of the time and disk (each architecture's logits are checked
//! against timm's by the model tests instead). Every other element of the
//! recipe (stages, augmentations, losses, optimisers, schedules, TTA, the
//! ensembles) is kept. Pure: reads and writes nothing.

use crate::image::augment::{Pipeline, Transform};
use crate::data::sample::SampleSection;
use crate::spec::JobSpec;
use crate::train::config::ScheduleSpec;

/// Training images of the smoke sample.
pub const SMOKE_TRAIN: usize = 60;
/// Test images of the smoke sample.
pub const SMOKE_TEST: usize = 20;
/// Most folds of a smoke run.
pub const SMOKE_MAX_FOLDS: u8 = 3;
/// Smallest input side of a smoke model (the arch's minimum when larger).
pub const SMOKE_SIZE: u32 = 32;
/// Largest training batch of a smoke model.
pub const SMOKE_BATCH: usize = 4;
/// Largest prediction batch of a smoke model.
pub const SMOKE_PREDICT_BATCH: usize = 8;

/// The smoke version of `spec`: experiment `{experiment}-smoke` under the
/// local folder `out/smoke/{experiment}` (the caller may move it), a
/// 60-train / 20-test synthetic sample, `min(k, 3)` folds (test folds kept
/// when they exist), every model at `max(32, arch minimum)` pixels with
/// size-producing augmentations resized to match, one epoch per phase
/// (step milestones dropped, warmup shortened), batch at most 4 (8 to
/// predict), the
/// effective batch at most twice the batch (accumulation still exercised),
/// at most 24 training and 20 predicted images per job, no initial weights.
///
/// The result is validated again, so a recipe element not built yet fails
/// here with the same "not supported yet" message as the recipe itself.
///
/// # Errors
/// The validation message of the derived spec.
pub fn derive(spec: &JobSpec) -> Result<JobSpec, String> {
    let mut s = spec.clone();
    s.experiment = format!("{}-smoke", spec.experiment);
    s.storage.root = format!("out/smoke/{}", spec.experiment);
    s.storage.cache_dir = None;
    let sample_seed = spec.data.sample.as_ref().map_or(7, |x| x.seed);
    let classes = spec.data.sample.as_ref().map_or(30, |x| x.classes.min(30));
    let noise = spec.data.sample.as_ref().map_or(0.0, |x| x.noise);
    s.data.sample = Some(SampleSection { train: SMOKE_TRAIN, test: SMOKE_TEST, classes, seed: sample_seed, noise });
    s.folds.k = spec.folds.k.min(SMOKE_MAX_FOLDS);
    s.image.workers = s.image.workers.min(2);
    let global_size = s.image.augment.output_size();
    if global_size.is_some() {
        // The global pipeline feeds every model without its own list; the
        // smallest size any of them accepts keeps it valid for all.
        let all = s.models.iter().chain(s.stages.iter().flat_map(|st| st.models.iter()));
        let size = all.map(|m| smoke_size(smoke_arch(m.arch))).max().unwrap_or(SMOKE_SIZE);
        resize_pipeline(&mut s.image.augment, size);
    }
    let (k, k_full, augment) = (s.folds.k, spec.folds.k, s.image.augment.clone());
    shrink_models(&mut s.models, k, k_full, global_size.is_some().then_some(&augment));
    if let Some(e) = s.ensemble.as_mut() {
        shrink_ensemble(e, k);
    }
    for st in &mut s.stages {
        shrink_models(&mut st.models, k, k_full, global_size.is_some().then_some(&augment));
        shrink_ensemble(&mut st.ensemble, k);
    }
    s.validate()?;
    Ok(s)
}

/// Test folds the smoke run lacks dropped; fewer rows for blend weights.
fn shrink_ensemble(e: &mut crate::ensemble::EnsembleSection, k: u8) {
    if let Some(tf) = e.test_folds.take() {
        let kept: Vec<u8> = tf.into_iter().filter(|&f| f < k).collect();
        e.test_folds = if kept.is_empty() { None } else { Some(kept) };
    }
    e.weight_rows = e.weight_rows.min(SMOKE_TRAIN).max(10);
}

/// Every model at its smoke size, batch, epochs and image counts; fold
/// subsets of a `k_full`-fold split mapped onto the smoke run's `k` folds
/// (fold `f` becomes `f * k / k_full`), so members keep their share.
fn shrink_models(models: &mut [crate::spec::ModelSpec], k: u8, k_full: u8, global: Option<&Pipeline>) {
    for m in models {
        m.arch = smoke_arch(m.arch);
        let size = smoke_size(m.arch);
        m.size = size;
        m.weights = None;
        if let Some(p) = m.augment.as_mut() {
            resize_pipeline(p, size);
        } else if let Some(g) = global {
            let mut p = g.clone();
            resize_pipeline(&mut p, size);
            m.augment = Some(p);
        }
        if m.folds.is_some() && k < k_full {
            let mut mapped: Vec<u8> = m.fold_list(k_full).into_iter().map(|f| (f as u32 * k as u32 / k_full as u32) as u8).collect();
            mapped.dedup();
            m.folds = Some(mapped.into_iter().map(crate::spec::FoldItem::One).collect());
        }
        let t = &mut m.train;
        t.batch_size = t.batch_size.clamp(1, SMOKE_BATCH);
        t.effective_batch = t.effective_batch.map(|e| e.min(2 * t.batch_size).max(t.batch_size) / t.batch_size * t.batch_size);
        t.limit_images = Some(t.limit_images.map_or(24, |l| l.min(24)));
        for p in &mut t.phases {
            p.epochs = 1;
            match &mut p.schedule {
                ScheduleSpec::Step { milestones, .. } => milestones.clear(),
                ScheduleSpec::Cosine { warmup_epochs, .. } => *warmup_epochs = warmup_epochs.min(0.5),
                ScheduleSpec::Constant => {}
            }
        }
        m.predict.batch_size = Some(m.predict.batch_size.unwrap_or(SMOKE_PREDICT_BATCH).min(SMOKE_PREDICT_BATCH));
        m.predict.limit_images = Some(m.predict.limit_images.map_or(SMOKE_TEST, |l| l.min(SMOKE_TEST)));
        // Checkpoints only serve a resume; a committed smoke job needs none.
        t.checkpoints.after_commit = crate::train::config::KeepAfterCommit::None;
        m.resources.time_limit = "30m".into();
        m.resources.predict_time_limit = "15m".into();
    }
}

/// The backbone a smoke run trains in place of `arch`: ResNet-18 for the
/// largest ones, the same otherwise.
pub fn smoke_arch(arch: crate::model::Arch) -> crate::model::Arch {
    use crate::model::Arch;
    match arch {
        Arch::Senet154 | Arch::Pnasnet5large | Arch::Seresnext101_32x4d | Arch::Resnext101_32x8d | Arch::Resnet101 | Arch::InceptionResnetV2 => Arch::Resnet18,
        a => a,
    }
}

/// The input side of a smoke model.
pub fn smoke_size(arch: crate::model::Arch) -> u32 {
    (arch.min_input_size().max(0) as u32).max(SMOKE_SIZE)
}

/// Sets every size-producing transform of `p` to `size` (crop windows
/// scaled alike).
fn resize_pipeline(p: &mut Pipeline, size: u32) {
    for t in &mut p.0 {
        resize_transform(t, size);
    }
}

fn resize_transform(t: &mut Transform, size: u32) {
    match t {
        Transform::RandomResizedCrop(x) => x.size = size,
        Transform::CropIfNeeded(x) | Transform::Resize(x) => x.size = size,
        Transform::RandomCrop(x) => x.size = size,
        Transform::CenterCropResize(x) => {
            let ratio = x.crop as f64 / x.size.max(1) as f64;
            x.size = size;
            x.crop = ((size as f64 * ratio).round() as u32).max(size);
        }
        Transform::OneOf(x) => x.of.iter_mut().for_each(|t| resize_transform(t, size)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = r#"
experiment = "r"
[storage]
root = "s3://bucket/prefix"
[folds]
k = 10
[[models]]
name = "p"
arch = "pnasnet5large"
size = 331
weights = "s3://w/pnasnet.safetensors"
augment = [{ random_resized_crop = { size = 331, scale = [0.4, 1.0] } }, { hflip = {} }]
[models.train]
batch_size = 32
effective_batch = 1024
phases = [{ epochs = 10, optimizer = { kind = "adam", lr = 1e-4 }, schedule = { kind = "step", milestones = [7, 9], factor = 0.5 } }]
[[models]]
name = "i"
arch = "inception_resnet_v2"
size = 320
augment = [{ one_of = { of = [{ center_crop_resize = { crop = 640, size = 320 } }, { resize = { size = 320 } }] } }]
[models.train]
batch_size = 16
phases = [{ epochs = 5, optimizer = { kind = "sgd", lr = 1e-3 }, schedule = { kind = "cosine", warmup_epochs = 1.0 } }]
[ensemble]
members = ["p", "i"]
test_folds = [0, 1, 2, 3, 4, 5, 6, 7, 8]
"#;

    #[test]
    fn a_smoke_spec_keeps_the_recipe_but_shrinks_every_size() {
        let spec = JobSpec::parse("r.toml", RECIPE).unwrap();
        let s = derive(&spec).unwrap();
        assert_eq!(s.experiment, "r-smoke");
        assert_eq!(s.storage.root, "out/smoke/r");
        assert_eq!(s.folds.k, 3);
        assert_eq!(s.data.sample.as_ref().map(|x| (x.train, x.test)), Some((60, 20)));
        let e = s.ensemble.as_ref().unwrap();
        assert_eq!(e.test_folds.as_deref(), Some(&[0u8, 1, 2][..]));
        let p = &s.models[0];
        assert_eq!((p.size, p.weights.as_deref(), p.train.batch_size, p.train.effective_batch), (32, None, 4, Some(8)));
        assert_eq!(p.augment.as_ref().unwrap().output_size(), Some(32));
        assert_eq!(p.train.phases[0].epochs, 1);
        assert_eq!(p.train.phases[0].schedule, ScheduleSpec::Step { milestones: vec![], factor: 0.5 });
        assert_eq!((p.train.limit_images, p.predict.limit_images), (Some(24), Some(20)));
        assert_eq!(p.arch, crate::model::Arch::Resnet18, "pnasnet5large is replaced by resnet18");
        assert_eq!(p.train.checkpoints.after_commit, crate::train::config::KeepAfterCommit::None);
        let i = &s.models[1];
        assert_eq!((i.arch, i.size), (crate::model::Arch::Resnet18, 32), "inception_resnet_v2 is replaced by resnet18");
        let Transform::OneOf(o) = &i.augment.as_ref().unwrap().0[0] else { panic!("one_of kept") };
        assert_eq!(o.of[0], Transform::CenterCropResize(crate::image::augment::CenterCropResize { crop: 64, size: 32 }));
        assert_eq!(smoke_arch(crate::model::Arch::Seresnext50_32x4d), crate::model::Arch::Seresnext50_32x4d, "mid-sized backbones stay");
        assert_eq!(i.train.phases[0].schedule, ScheduleSpec::Cosine { warmup_epochs: 0.5, min_factor: 0.0 });
        assert_eq!(i.train.effective_batch, None);
        assert_eq!(JobSpec::parse("again", &s.to_toml()).unwrap(), s);
    }

    #[test]
    fn folds_the_smoke_run_lacks_leave_test_folds_unset() {
        let spec = JobSpec::parse("r.toml", &RECIPE.replace("[0, 1, 2, 3, 4, 5, 6, 7, 8]", "[7, 8]")).unwrap();
        let s = derive(&spec).unwrap();
        assert_eq!(s.ensemble.as_ref().unwrap().test_folds, None);
        assert_eq!(s.folds.k, 3);
    }
}
