//! Training losses (train stage): turns a batch's logits and targets into
//! the scalar the optimiser minimises. Reads and writes nothing; pure
//! tensor maths with autograd, so `loss(..).backward()` gives the logits'
//! gradients.
//!
//! Targets may be soft (label smoothing, MixUp, distillation), and a class
//! mask restricts a phase to part of the vocabulary (R2 stage 4 / R3 train
//! the tags only): masked classes contribute neither to the value nor to
//! the gradient.

use super::config::LossSpec;
use tch::{Kind, Reduction, Tensor};

/// Added to the soft-F2 denominator so an image without labels and with
/// all probabilities at 0 does not divide by zero.
const SOFT_F2_EPS: f64 = 1e-8;

/// Scalar mean loss of a batch.
///
/// `Bce` is `binary_cross_entropy_with_logits`; `Focal` multiplies it by
/// `(1 - p_t)^gamma` with `p_t = exp(-bce)` (exact for soft targets too)
/// and, when `alpha` is set, by `alpha_t = alpha y + (1 - alpha)(1 - y)`;
/// `SoftF2` is `1 - mean over images of 5 tp / (4 sum(y) + sum(p) + 1e-8)`
/// with `p = sigmoid(logits)` and `tp = sum(p y)`; `BceSoftF2` is
/// `bce + weight * soft_f2`.
///
/// With a mask, the element-wise losses are averaged over images x
/// unmasked classes, and soft-F2's sums run over the unmasked classes of
/// each image. A mask of all zeros gives NaN.
///
/// The loss is computed in f32 whatever the logits' kind (autocast may
/// hand over f16 logits).
///
/// # Shapes
/// `logits`, `targets`: `[batch, classes]`; `mask`: `[classes]` of 0/1;
/// result: `[]` (0-dim, f32). Mismatched shapes panic inside libtorch,
/// as any shape bug in the training loop should.
pub fn loss(spec: &LossSpec, logits: &Tensor, targets: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let logits = logits.to_kind(Kind::Float);
    let targets = targets.to_kind(Kind::Float);
    let mask = mask.map(|m| m.to_kind(Kind::Float));
    match *spec {
        LossSpec::Bce => masked_mean(&bce(&logits, &targets), mask.as_ref()),
        LossSpec::Focal { gamma, alpha } => masked_mean(&focal(&logits, &targets, gamma, alpha), mask.as_ref()),
        LossSpec::SoftF2 => soft_f2(&logits, &targets, mask.as_ref()),
        LossSpec::BceSoftF2 { weight } => {
            masked_mean(&bce(&logits, &targets), mask.as_ref()) + soft_f2(&logits, &targets, mask.as_ref()) * weight
        }
    }
}

/// Each image's loss: what [`loss`] averages over images (hard negative
/// mining ranks images by the loss being trained).
///
/// # Shapes
/// `logits`, `targets`: `[batch, classes]`; `mask`: `[classes]`; result:
/// `[batch]` (f32).
pub fn per_image(spec: &LossSpec, logits: &Tensor, targets: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let logits = logits.to_kind(Kind::Float);
    let targets = targets.to_kind(Kind::Float);
    let mask = mask.map(|m| m.to_kind(Kind::Float));
    match *spec {
        LossSpec::Bce => row_mean(&bce(&logits, &targets), mask.as_ref()),
        LossSpec::Focal { gamma, alpha } => row_mean(&focal(&logits, &targets, gamma, alpha), mask.as_ref()),
        LossSpec::SoftF2 => soft_f2_rows(&logits, &targets, mask.as_ref()).neg() + 1.0,
        LossSpec::BceSoftF2 { weight } => {
            row_mean(&bce(&logits, &targets), mask.as_ref()) + (soft_f2_rows(&logits, &targets, mask.as_ref()).neg() + 1.0) * weight
        }
    }
}

/// Each row's mean over its unmasked classes, `[batch]`.
fn row_mean(elements: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let dims: &[i64] = &[1];
    match mask {
        None => elements.mean_dim(dims, false, Kind::Float),
        Some(mask) => (elements * mask).sum_dim_intlist(dims, false, Kind::Float) / mask.sum(Kind::Float),
    }
}

/// Element-wise binary cross-entropy on logits, `[batch, classes]`.
fn bce(logits: &Tensor, targets: &Tensor) -> Tensor {
    logits.binary_cross_entropy_with_logits::<Tensor>(targets, None, None, Reduction::None)
}

/// Element-wise focal loss, `[batch, classes]`.
fn focal(logits: &Tensor, targets: &Tensor, gamma: f64, alpha: Option<f64>) -> Tensor {
    let bce = bce(logits, targets);
    let out = if gamma == 0.0 {
        bce
    } else {
        let p_t = bce.neg().exp();
        // 1 - p_t via rsub keeps it one kernel; pow's backward handles gamma < 1 at p_t = 1 poorly,
        // which is PyTorch's behaviour too.
        (p_t.neg() + 1.0).pow_tensor_scalar(gamma) * &bce
    };
    match alpha {
        // alpha y + (1 - alpha)(1 - y) = (1 - alpha) + (2 alpha - 1) y
        Some(alpha) => out * (targets * (2.0 * alpha - 1.0) + (1.0 - alpha)),
        None => out,
    }
}

/// Mean of `[batch, classes]` element losses over images x unmasked classes.
fn masked_mean(elements: &Tensor, mask: Option<&Tensor>) -> Tensor {
    match mask {
        None => elements.mean(Kind::Float),
        Some(mask) => {
            let batch = elements.size()[0] as f64;
            (elements * mask).sum(Kind::Float) / (mask.sum(Kind::Float) * batch)
        }
    }
}

/// `1 - mean over images of soft F2`, over unmasked classes.
fn soft_f2(logits: &Tensor, targets: &Tensor, mask: Option<&Tensor>) -> Tensor {
    // Not `*=`: that would scale the caller's targets in place.
    let (probs, targets) = match mask {
        Some(mask) => (logits.sigmoid() * mask, targets * mask),
        None => (logits.sigmoid(), targets.shallow_clone()),
    };
    soft_f2_of(&probs, &targets).mean(Kind::Float).neg() + 1.0
}

/// Each image's soft F2 over its unmasked classes, `[batch]`.
fn soft_f2_rows(logits: &Tensor, targets: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let (probs, targets) = match mask {
        Some(mask) => (logits.sigmoid() * mask, targets * mask),
        None => (logits.sigmoid(), targets.shallow_clone()),
    };
    soft_f2_of(&probs, &targets)
}

fn soft_f2_of(probs: &Tensor, targets: &Tensor) -> Tensor {
    let dims: &[i64] = &[1];
    let tp = (probs * targets).sum_dim_intlist(dims, false, Kind::Float);
    let positives = targets.sum_dim_intlist(dims, false, Kind::Float);
    let predicted = probs.sum_dim_intlist(dims, false, Kind::Float);
    tp * 5.0 / (positives * 4.0 + predicted + SOFT_F2_EPS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[&[f32]]) -> Tensor {
        let cols = rows[0].len() as i64;
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, cols])
    }

    fn value(spec: LossSpec, logits: &Tensor, targets: &Tensor, mask: Option<&Tensor>) -> f64 {
        loss(&spec, logits, targets, mask).double_value(&[])
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-6, "{a} != {b}");
    }

    const LN2: f64 = std::f64::consts::LN_2;

    #[test]
    fn per_image_losses_average_to_the_batch_loss() {
        let logits = t(&[&[2.0, -1.0, 0.5], &[-3.0, 1.0, 0.0]]);
        let targets = t(&[&[1.0, 0.0, 1.0], &[0.0, 0.0, 1.0]]);
        let mask = Tensor::from_slice(&[1.0f32, 0.0, 1.0]);
        for spec in [LossSpec::Bce, LossSpec::Focal { gamma: 2.0, alpha: Some(0.25) }, LossSpec::SoftF2, LossSpec::BceSoftF2 { weight: 0.5 }] {
            for m in [None, Some(&mask)] {
                let rows = per_image(&spec, &logits, &targets, m);
                assert_eq!(rows.size(), [2]);
                close(rows.mean(Kind::Float).double_value(&[]), value(spec, &logits, &targets, m));
            }
        }
        // Focal ranks differently from plain BCE: a confident right answer
        // weighs almost nothing.
        let f = per_image(&LossSpec::Focal { gamma: 2.0, alpha: None }, &logits, &targets, None);
        let b = per_image(&LossSpec::Bce, &logits, &targets, None);
        assert!(f.double_value(&[0]) < b.double_value(&[0]));
    }

    #[test]
    fn bce_of_zero_logits_is_ln2_whatever_the_targets() {
        let logits = t(&[&[0.0, 0.0], &[0.0, 0.0]]);
        close(value(LossSpec::Bce, &logits, &t(&[&[1.0, 0.0], &[0.0, 1.0]]), None), LN2);
        close(value(LossSpec::Bce, &logits, &t(&[&[0.3, 0.5], &[0.9, 0.1]]), None), LN2);
    }

    #[test]
    fn bce_matches_the_hand_computed_value_for_a_confident_logit() {
        // log(1 + e^-2) for a positive with logit 2, log(1 + e^2) for a negative with logit 2.
        let logits = t(&[&[2.0, 2.0]]);
        let expected = ((1.0 + (-2.0f64).exp()).ln() + (1.0 + 2.0f64.exp()).ln()) / 2.0;
        close(value(LossSpec::Bce, &logits, &t(&[&[1.0, 0.0]]), None), expected);
    }

    #[test]
    fn masked_classes_change_neither_the_value_nor_get_a_gradient() {
        let logits = t(&[&[0.0, 9.0], &[0.0, -9.0]]).set_requires_grad(true);
        let targets = t(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let mask = Tensor::from_slice(&[1.0f32, 0.0]);
        for spec in [
            LossSpec::Bce,
            LossSpec::Focal { gamma: 2.0, alpha: Some(0.25) },
            LossSpec::SoftF2,
            LossSpec::BceSoftF2 { weight: 0.5 },
        ] {
            let masked = loss(&spec, &logits, &targets, Some(&mask));
            let first = logits.narrow(1, 0, 1);
            let only_first = loss(&spec, &first, &targets.narrow(1, 0, 1), None);
            close(masked.double_value(&[]), only_first.double_value(&[]));
            let grad = Tensor::run_backward(&[&masked], &[&logits], false, false).remove(0);
            close(grad.narrow(1, 1, 1).abs().sum(Kind::Float).double_value(&[]), 0.0);
            assert!(grad.narrow(1, 0, 1).abs().sum(Kind::Float).double_value(&[]) > 0.0, "{spec:?}");
        }
    }

    #[test]
    fn focal_with_gamma_two_scales_bce_by_the_squared_miss() {
        // logit 0: p_t = 1/2 so the factor is 1/4.
        let logits = t(&[&[0.0]]);
        let y = t(&[&[1.0]]);
        close(value(LossSpec::Focal { gamma: 2.0, alpha: None }, &logits, &y, None), LN2 / 4.0);
        // alpha weights positives by alpha and negatives by 1 - alpha.
        close(value(LossSpec::Focal { gamma: 2.0, alpha: Some(0.25) }, &logits, &y, None), 0.25 * LN2 / 4.0);
        close(value(LossSpec::Focal { gamma: 2.0, alpha: Some(0.25) }, &logits, &t(&[&[0.0]]), None), 0.75 * LN2 / 4.0);
    }

    #[test]
    fn focal_with_gamma_zero_and_no_alpha_is_bce() {
        let logits = t(&[&[1.5, -0.3, 4.0]]);
        let y = t(&[&[1.0, 0.2, 0.0]]);
        close(
            value(LossSpec::Focal { gamma: 0.0, alpha: None }, &logits, &y, None),
            value(LossSpec::Bce, &logits, &y, None),
        );
    }

    #[test]
    fn focal_with_soft_targets_uses_the_exact_p_t() {
        // y = 0.5, logit 0: bce = ln2, p_t = 1/2, alpha_t = 0.5 for any alpha.
        let v = value(LossSpec::Focal { gamma: 2.0, alpha: Some(0.25) }, &t(&[&[0.0]]), &t(&[&[0.5]]), None);
        close(v, 0.5 * LN2 / 4.0);
    }

    #[test]
    fn soft_f2_of_half_probabilities_matches_the_formula() {
        // p = 0.5 on two classes, one positive: tp 0.5, 5*0.5 / (4 + 1) = 0.5.
        close(value(LossSpec::SoftF2, &t(&[&[0.0, 0.0]]), &t(&[&[1.0, 0.0]]), None), 0.5);
        // Two images average: second has both positive: 5*1 / (8 + 1).
        let v = value(LossSpec::SoftF2, &t(&[&[0.0, 0.0], &[0.0, 0.0]]), &t(&[&[1.0, 0.0], &[1.0, 1.0]]), None);
        close(v, 1.0 - (0.5 + 5.0 / 9.0) / 2.0);
    }

    #[test]
    fn soft_f2_is_near_zero_for_confident_correct_logits() {
        let v = value(LossSpec::SoftF2, &t(&[&[30.0, -30.0]]), &t(&[&[1.0, 0.0]]), None);
        assert!(v.abs() < 1e-6, "{v}");
    }

    #[test]
    fn bce_soft_f2_adds_the_weighted_soft_f2() {
        let logits = t(&[&[0.7, -1.2, 0.1]]);
        let y = t(&[&[1.0, 0.0, 1.0]]);
        let expected = value(LossSpec::Bce, &logits, &y, None) + 0.3 * value(LossSpec::SoftF2, &logits, &y, None);
        close(value(LossSpec::BceSoftF2 { weight: 0.3 }, &logits, &y, None), expected);
    }

    #[test]
    fn the_callers_targets_are_left_unchanged() {
        let targets = t(&[&[1.0, 1.0]]);
        let mask = Tensor::from_slice(&[1.0f32, 0.0]);
        let _ = loss(&LossSpec::BceSoftF2 { weight: 1.0 }, &t(&[&[0.5, -0.5]]), &targets, Some(&mask));
        assert_eq!(Vec::<f32>::try_from(targets.view([-1])).expect("f32"), vec![1.0, 1.0]);
    }

    #[test]
    fn half_precision_logits_give_an_f32_loss() {
        let logits = t(&[&[0.0, 0.0]]).to_kind(Kind::Half);
        let out = loss(&LossSpec::Bce, &logits, &t(&[&[1.0, 0.0]]), None);
        assert_eq!(out.kind(), Kind::Float);
        assert_eq!(out.size(), Vec::<i64>::new());
    }
}
