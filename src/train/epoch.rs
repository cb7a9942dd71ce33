//! Train stage: one epoch of training (forward, loss, scaled backward,
//! gradient accumulation, clipping, optimiser step, schedule) and one pass
//! of validation (loss, probabilities, F2 at the best global threshold).
//! Works on tensors and the loader; reads and writes no store keys.

use super::amp::GradScaler;
use super::checkpoint::InEpoch;
use super::loss::{loss, per_image};
use super::optim::{clip_grad_norm, Optimizer};
use super::schedule::lr_factor;
use crate::data::metric::LabelSets;
use crate::ids::{AttributeId, Group};
use crate::error::{Error, Result};
use super::config::{LossSpec, MixupSpec, PhaseSpec};
use crate::fold_job::{predict_probs, DeviceSetup};
use crate::image::loader::Epoch;
use crate::image::mix::{mixup, smooth_labels};
use crate::model::Network;
use crate::telemetry::Progress;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Tensor};

/// What one phase trains with.
pub struct PhaseSetup<'a> {
    pub phase: &'a PhaseSpec,
    pub loss: LossSpec,
    /// `[classes]` 0/1 mask of the labels the phase learns (None: all).
    pub mask: Option<Tensor>,
    pub label_smoothing: f64,
    pub mixup: Option<MixupSpec>,
    pub clip_grad_norm: Option<f64>,
    /// Batches per optimiser step.
    pub accumulation: usize,
    /// Record each image's loss (hard negative mining).
    pub track_items: bool,
}

/// Totals of one training epoch.
#[derive(Clone, Debug)]
pub struct TrainTotals {
    pub loss: f64,
    pub images: usize,
    pub seconds: f64,
    /// Learning rate of the epoch's last step (backbone group).
    pub lr: f64,
    /// Optimiser steps skipped by the grad scaler (inf/NaN gradients).
    pub skipped_steps: usize,
    /// `(item index, mean BCE over classes)` of every image visited, when
    /// [`PhaseSetup::track_items`] is set.
    pub item_losses: Vec<(usize, f32)>,
}

/// Where the loop is, for error messages.
pub struct Position<'a> {
    pub job: &'a str,
    /// 0-based epoch over all phases, and within the phase.
    pub epoch: u32,
    /// Epochs of the job, over all phases.
    pub epochs: u32,
    pub epoch_in_phase: u32,
    /// Epochs of the last checkpoint kept.
    pub last_checkpoint: Option<u32>,
    pub seed: u64,
}

/// What writes checkpoints inside an epoch ([`super::fit`] implements it
/// over the job's sink).
pub trait StepCheckpoints {
    /// Whether a checkpoint is due after this optimiser step.
    fn due(&mut self) -> bool;
    /// Writes one: the network, optimiser and scaler as they are after the
    /// step, and where in the epoch that is.
    ///
    /// # Errors
    /// Encoding errors; a stopped writer.
    fn write(&mut self, net: &Network, optimizer: &Optimizer, scaler: &GradScaler, at: InEpoch) -> Result<()>;
}

/// Trains one epoch over `batches` (of which there are `batch_count`,
/// holding `images` images), showing its progress (images/s, running
/// loss, ETAs). With `resume`, `batches` are the rest of an epoch begun
/// before ([`crate::image::loader::Loader::epoch_from`]) and the totals go
/// on from the checkpoint's. `checkpoints` is asked after every optimiser
/// step but the epoch's last. Randomness is a function of the batch's
/// place (MixUp) and of the step (libtorch's generator is reseeded before
/// each), so the epoch is the same whether and where it was interrupted.
///
/// # Errors
/// Loader errors; [`Error::Train`] when the loss is NaN or infinite (the
/// previous checkpoint is kept).
#[allow(clippy::too_many_arguments)]
pub fn train_epoch(
    net: &mut Network,
    dev: &DeviceSetup,
    setup: &PhaseSetup<'_>,
    optimizer: &mut Optimizer,
    scaler: &mut GradScaler,
    batches: Epoch,
    batch_count: usize,
    images_total: usize,
    pos: &Position<'_>,
    resume: Option<&InEpoch>,
    mut checkpoints: Option<&mut dyn StepCheckpoints>,
) -> Result<TrainTotals> {
    let start = std::time::Instant::now();
    let rest = images_total.saturating_sub(resume.map_or(0, |r| r.images));
    let progress = Progress::with_unit(format!("train {} epoch {}/{}", pos.job, pos.epoch + 1, pos.epochs), rest as u64, "images");
    let steps_per_epoch = batch_count.div_ceil(setup.accumulation).max(1);
    let base_lr = setup.phase.optimizer.lr();
    let (mut loss_sum, mut images, mut micro, mut step, mut skipped) = (0.0f64, 0usize, 0usize, 0usize, 0usize);
    let mut lr = base_lr;
    let mut item_losses = Vec::new();
    let mut seconds_before = 0.0;
    if let Some(r) = resume {
        (loss_sum, images, step, skipped, lr, seconds_before) = (f64::from_bits(r.loss_sum), r.images, r.steps, r.skipped_steps, f64::from_bits(r.lr), r.seconds);
        item_losses = r.item_losses.iter().map(|&(i, l)| (i, f32::from_bits(l))).collect();
    }
    optimizer.zero_grad();
    for batch in batches {
        let batch = batch?;
        let b = batch.position;
        let n = batch.ids.len();
        if micro == 0 {
            tch::manual_seed(crate::seed::torch_step(pos.seed, pos.epoch, step));
        }
        let mut xs = dev.images(&batch.images);
        let mut ys = batch.targets.to_device(dev.device);
        if setup.label_smoothing > 0.0 {
            ys = smooth_labels(&ys, setup.label_smoothing);
        }
        if let Some(m) = setup.mixup {
            let mut rng = ChaCha8Rng::seed_from_u64(crate::seed::mixup(pos.seed, pos.epoch, b));
            let mix_seed: u64 = rng.random();
            if rng.random::<f64>() < m.p {
                let (mx, my, _) = mixup(&xs, &ys, m.alpha, mix_seed);
                xs = mx;
                ys = my;
            }
        }
        let logits = dev.forward(net, &xs, true)?;
        if setup.track_items {
            // Hard examples are ranked by the loss being trained.
            let per_image = tch::no_grad(|| per_image(&setup.loss, &logits, &ys, setup.mask.as_ref()));
            let per_image = Vec::<f32>::try_from(&per_image.to_device(Device::Cpu))?;
            item_losses.extend(batch.indices.iter().copied().zip(per_image));
        }
        let l = loss(&setup.loss, &logits, &ys, setup.mask.as_ref());
        let value = l.double_value(&[]);
        ensure_finite(value, pos, b)?;
        scaler.scale(&(l / setup.accumulation as f64)).backward();
        loss_sum += value * n as f64;
        images += n;
        progress.inc_loss(n as u64, value);
        micro += 1;
        let last = b + 1 >= batch_count;
        if micro == setup.accumulation || last {
            lr = base_lr * lr_factor(&setup.phase.schedule, setup.phase.epochs, pos.epoch_in_phase, step, steps_per_epoch);
            let finite = scaler.unscale(optimizer.params());
            if finite {
                if let Some(c) = setup.clip_grad_norm {
                    clip_grad_norm(optimizer.params(), c);
                }
                optimizer.step(lr, lr * setup.phase.head_lr_factor);
                crate::fault::point("train.step");
            } else {
                skipped += 1;
            }
            scaler.update(!finite);
            optimizer.zero_grad();
            micro = 0;
            step += 1;
            if let Some(c) = checkpoints.as_deref_mut().filter(|_| !last) {
                if c.due() {
                    let at = InEpoch {
                        batches: b + 1,
                        steps: step,
                        loss_sum: loss_sum.to_bits(),
                        images,
                        skipped_steps: skipped,
                        lr: lr.to_bits(),
                        seconds: seconds_before + start.elapsed().as_secs_f64(),
                        item_losses: item_losses.iter().map(|&(i, l)| (i, l.to_bits())).collect(),
                    };
                    c.write(net, optimizer, scaler, at)?;
                }
            }
        }
    }
    Ok(TrainTotals {
        loss: loss_sum / images.max(1) as f64,
        images,
        seconds: seconds_before + start.elapsed().as_secs_f64(),
        lr,
        skipped_steps: skipped,
        item_losses,
    })
}

/// Stops the job on a NaN or infinite loss.
///
/// # Errors
/// [`Error::Train`] naming the epoch, batch and the checkpoint kept.
pub fn ensure_finite(value: f64, pos: &Position<'_>, batch: usize) -> Result<()> {
    if value.is_finite() {
        return Ok(());
    }
    let kept = match pos.last_checkpoint {
        Some(e) => format!("the checkpoint of epoch {e} is kept and a rerun resumes from it"),
        None => "no checkpoint was written yet".to_string(),
    };
    Err(Error::Train {
        job: pos.job.to_string(),
        message: format!(
            "the loss became {value} at epoch {} (batch {batch}); {kept}. Lower the learning rate, set train.clip_grad_norm, or check the inputs",
            pos.epoch
        ),
    })
}

/// Validation results.
#[derive(Clone, Debug)]
pub struct Validation {
    /// Mean binary cross-entropy over images and classes.
    pub loss: f64,
    pub f2: f64,
    pub threshold: f64,
    /// F2 at the best global threshold over the culture attributes alone,
    /// and over the tags alone.
    pub f2_culture: f64,
    pub f2_tag: f64,
    /// Row-major `[images, classes]` probabilities, in loader order.
    pub probs: Vec<f32>,
}


/// Validation: probabilities, loss, F2 at the best global threshold (the
/// ensemble's definition: [`crate::data::metric::best_global_f2`]); its
/// progress shows as `what`.
///
/// # Errors
/// As [`predict_probs`].
pub fn validate(net: &mut Network, dev: &DeviceSetup, batches: Epoch, labels: &[Vec<AttributeId>], groups: &[Group], what: &str) -> Result<Validation> {
    let classes = groups.len();
    let progress = Progress::with_unit(what, labels.len() as u64, "images");
    let (probs, loss) = predict_probs(net, dev, batches, &progress)?;
    let (f2, threshold) = best_global_f2(&probs, classes, labels);
    let f2_culture = group_f2(&probs, labels, groups, Group::Culture);
    let f2_tag = group_f2(&probs, labels, groups, Group::Tag);
    Ok(Validation { loss, f2, threshold, f2_culture, f2_tag, probs })
}

/// F2 at the best global threshold over the attributes of `group` alone.
pub fn group_f2(probs: &[f32], labels: &[Vec<AttributeId>], groups: &[Group], group: Group) -> f64 {
    let columns: Vec<usize> = (0..groups.len()).filter(|&c| groups[c] == group).collect();
    if columns.is_empty() || labels.is_empty() {
        return f64::NAN;
    }
    let mut position = vec![u16::MAX; groups.len()];
    for (i, &c) in columns.iter().enumerate() {
        position[c] = i as u16;
    }
    let classes = groups.len();
    let sub: Vec<f32> = probs.chunks(classes).flat_map(|row| columns.iter().map(move |&c| row[c])).collect();
    let sub_labels: Vec<Vec<AttributeId>> =
        labels.iter().map(|r| r.iter().filter(|a| position[a.0 as usize] != u16::MAX).map(|a| AttributeId(position[a.0 as usize])).collect()).collect();
    best_global_f2(&sub, columns.len(), &sub_labels).0
}

/// Candidate thresholds of validation: `j / 100`.
const STEPS: usize = 100;

/// Mean per-image F2 over `labels` at the best global threshold `j / 100`,
/// and that threshold.
pub fn best_global_f2(probs: &[f32], classes: usize, labels: &[Vec<AttributeId>]) -> (f64, f64) {
    if labels.is_empty() || classes == 0 {
        return (0.0, 0.5);
    }
    let truth = LabelSets::from_rows(classes, labels.iter().map(|r| r.iter().map(|a| a.0).collect::<Vec<u16>>()));
    let (j, f2) = crate::data::metric::best_global_f2(probs, classes, &truth, STEPS);
    (f2, j as f64 / STEPS as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::metric::f2_counts;

    #[test]
    fn the_best_global_threshold_matches_a_direct_scan() {
        let classes = 6;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let labels: Vec<Vec<AttributeId>> =
            (0..40).map(|i| (0..classes as u16).filter(|c| (i + *c as usize) % 3 == 0).map(AttributeId).collect()).collect();
        let probs: Vec<f32> = (0..40 * classes)
            .map(|k| {
                let (i, c) = (k / classes, (k % classes) as u16);
                let y = labels[i].contains(&AttributeId(c));
                (if y { 0.5 } else { 0.0 }) + rng.random::<f32>() * 0.6
            })
            .collect();
        let (f2, t) = best_global_f2(&probs, classes, &labels);
        // Direct scan with the metric's own F2.
        let direct = |t: f64| {
            labels
                .iter()
                .enumerate()
                .map(|(i, truth)| {
                    let row = &probs[i * classes..(i + 1) * classes];
                    let mut pred: Vec<u16> = (0..classes as u16).filter(|&c| row[c as usize] as f64 >= t - 1e-9).collect();
                    if pred.is_empty() {
                        let top = (0..classes).fold(0, |b, c| if row[c] > row[b] { c } else { b });
                        pred.push(top as u16);
                    }
                    let tp = pred.iter().filter(|c| truth.contains(&AttributeId(**c))).count();
                    f2_counts(tp as u32, truth.len() as u32, pred.len() as u32)
                })
                .sum::<f64>()
                / labels.len() as f64
        };
        let best_direct = (1..=100).map(|t| direct(t as f64 / 100.0)).fold(f64::MIN, f64::max);
        assert!((f2 - best_direct).abs() < 1e-9, "{f2} vs {best_direct}");
        assert!((direct(t) - f2).abs() < 1e-3, "threshold {t} gives {}", direct(t));
        assert!(f2 > 0.8, "separable data scores high: {f2}");
    }

    #[test]
    fn a_nan_loss_names_the_epoch_and_the_checkpoint_kept() {
        let pos = Position { job: "m fold 0", epoch: 3, epochs: 5, epoch_in_phase: 1, last_checkpoint: Some(3), seed: 0 };
        assert!(ensure_finite(0.5, &pos, 0).is_ok());
        let err = ensure_finite(f64::NAN, &pos, 7).unwrap_err().to_string();
        assert!(err.contains("NaN at epoch 3 (batch 7)") && err.contains("checkpoint of epoch 3 is kept"), "{err}");
    }
}
