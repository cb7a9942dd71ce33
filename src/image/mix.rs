//! Batch-level target mixing (image stage): MixUp and label smoothing.
//! Both produce soft float targets, which is why batches carry `f32`
//! targets. Touches no storage.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

/// Binary label smoothing: `y * (1 - eps) + eps / 2` for every target.
///
/// # Shapes
/// `[batch, classes] -> [batch, classes]`.
pub fn smooth_labels(targets: &Tensor, eps: f64) -> Tensor {
    targets * (1.0 - eps) + eps / 2.0
}

/// A Gamma(shape, 1) draw (Marsaglia and Tsang).
fn gamma(shape: f64, rng: &mut ChaCha8Rng) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        return gamma(shape + 1.0, rng) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = super::augment::normal(rng) as f64;
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// A Beta(alpha, alpha) draw.
pub fn beta(alpha: f64, rng: &mut ChaCha8Rng) -> f64 {
    let a = gamma(alpha, rng);
    let b = gamma(alpha, rng);
    a / (a + b)
}

/// MixUp (Zhang et al. 2018): mixes each image and its targets with those
/// of a seeded random partner in the batch, with weight `lambda ~
/// Beta(alpha, alpha)` (one per batch). Returns the mixed images, targets
/// and lambda.
///
/// # Shapes
/// images `[batch, 3, h, w]` (float), targets `[batch, classes]` -> same shapes.
pub fn mixup(images: &Tensor, targets: &Tensor, alpha: f64, seed: u64) -> (Tensor, Tensor, f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let lambda = beta(alpha, &mut rng);
    let n = images.size()[0];
    let mut perm: Vec<i64> = (0..n).collect();
    rand::seq::SliceRandom::shuffle(perm.as_mut_slice(), &mut rng);
    let index = Tensor::from_slice(&perm).to_device(images.device());
    let images = images.to_kind(Kind::Float);
    let targets = targets.to_kind(Kind::Float);
    let mixed = &images * lambda + images.index_select(0, &index) * (1.0 - lambda);
    let mixed_targets = &targets * lambda + targets.index_select(0, &index) * (1.0 - lambda);
    (mixed, mixed_targets, lambda)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_smoothing_pulls_targets_towards_one_half() {
        let t = Tensor::from_slice(&[0f32, 1.0]).view([1, 2]);
        let s = Vec::<f32>::try_from(smooth_labels(&t, 0.1).view([-1])).unwrap();
        assert!((s[0] - 0.05).abs() < 1e-6 && (s[1] - 0.95).abs() < 1e-6);
    }

    #[test]
    fn beta_draws_have_the_right_mean_and_spread() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let draws: Vec<f64> = (0..4000).map(|_| beta(0.4, &mut rng)).collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.03, "{mean}");
        // Var of Beta(a, a) = 1 / (4 (2a + 1)) = 0.1389 for a = 0.4.
        assert!((var - 0.1389).abs() < 0.015, "{var}");
        assert!(draws.iter().all(|d| (0.0..=1.0).contains(d)));
    }

    #[test]
    fn mixup_mixes_images_and_targets_with_the_same_weight() {
        let images = Tensor::from_slice(&[0f32, 0.0, 10.0, 10.0]).view([2, 1, 1, 2]);
        let targets = Tensor::from_slice(&[1f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let (mi, mt, lambda) = mixup(&images, &targets, 1.0, 3);
        let (mi, mt) = (Vec::<f32>::try_from(mi.view([-1])).unwrap(), Vec::<f32>::try_from(mt.view([-1])).unwrap());
        // Each row's target mass stays 1; image value = 10 * weight of row 1.
        for r in 0..2 {
            assert!((mt[2 * r] + mt[2 * r + 1] - 1.0).abs() < 1e-5);
            assert!((mi[2 * r] - 10.0 * mt[2 * r + 1]).abs() < 1e-4);
        }
        assert!((0.0..=1.0).contains(&lambda));
        let (again, _, l2) = mixup(&images, &targets, 1.0, 3);
        assert_eq!(l2, lambda);
        assert_eq!(Vec::<f32>::try_from(again.view([-1])).unwrap(), mi);
    }
}
