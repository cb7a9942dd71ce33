//! Train stage: the order training images are visited in. `shuffle` is a
//! seeded permutation per epoch; `log_class_weights` (recipe R2) draws
//! images with replacement, an image weighing the largest `ln(N / n_c)` over
//! its classes, so rare classes are seen more often. Either can be cut to a
//! number of images per epoch (smoke runs). Reads and writes nothing.

use crate::data::sample::draw::splitmix;
use crate::data::AttributeId;
use crate::image::loader::{Sampler, Shuffle};
use crate::spec::Sampling;
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

/// Draws with replacement by per-image weights.
pub struct Weighted {
    seed: u64,
    weights: Vec<f64>,
}

impl Weighted {
    /// Weights from label sets: `max_c ln(N / n_c)` over the image's
    /// classes, floored at 0.05 so no image is never drawn.
    pub fn log_class(labels: &[Vec<AttributeId>], classes: usize, seed: u64) -> Weighted {
        let mut counts = vec![0u32; classes];
        for row in labels {
            for a in row {
                counts[a.0 as usize] += 1;
            }
        }
        let n = labels.len().max(1) as f64;
        let weights = labels
            .iter()
            .map(|row| row.iter().map(|a| (n / counts[a.0 as usize] as f64).ln()).fold(0.05f64, f64::max))
            .collect();
        Weighted { seed, weights }
    }
}

impl Sampler for Weighted {
    fn order(&self, epoch: u64, n: usize) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(splitmix(self.seed ^ splitmix(epoch)));
        match WeightedIndex::new(&self.weights[..n.min(self.weights.len())]) {
            Ok(dist) => (0..n).map(|_| dist.sample(&mut rng)).collect(),
            Err(_) => (0..n).collect(),
        }
    }
}

/// Another sampler's order cut to at most `limit` images.
pub struct Limited {
    pub inner: Arc<dyn Sampler>,
    pub limit: usize,
}

impl Sampler for Limited {
    fn order(&self, epoch: u64, n: usize) -> Vec<usize> {
        let mut v = self.inner.order(epoch, n);
        v.truncate(self.limit);
        v
    }
}

/// The sampler a model's `train.sampling` and `train.limit_images` ask for.
pub fn sampler(kind: Sampling, labels: &[Vec<AttributeId>], classes: usize, limit: Option<usize>, seed: u64) -> Arc<dyn Sampler> {
    let inner: Arc<dyn Sampler> = match kind {
        Sampling::Shuffle => Arc::new(Shuffle { seed }),
        Sampling::LogClassWeights => Arc::new(Weighted::log_class(labels, classes, seed)),
    };
    match limit {
        Some(limit) => Arc::new(Limited { inner, limit }),
        None => inner,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rare_classes_are_drawn_more_often_and_draws_are_seeded() {
        // 90 images of class 0, 10 of class 1.
        let labels: Vec<Vec<AttributeId>> = (0..100).map(|i| vec![AttributeId(if i < 90 { 0 } else { 1 })]).collect();
        let s = Weighted::log_class(&labels, 2, 7);
        let order = s.order(0, 100);
        assert_eq!(order.len(), 100);
        let rare = order.iter().filter(|&&i| i >= 90).count();
        // Weights ln(100/90) = 0.105 vs ln(100/10) = 2.30: ~70% rare draws.
        assert!(rare > 50, "rare images drawn {rare} times of 100");
        assert_eq!(order, s.order(0, 100));
        assert_ne!(order, s.order(1, 100));
    }

    #[test]
    fn a_limit_cuts_every_epoch() {
        let s = sampler(Sampling::Shuffle, &[], 0, Some(5), 1);
        assert_eq!(s.order(3, 20).len(), 5);
        let full = sampler(Sampling::Shuffle, &[], 0, None, 1).order(3, 20);
        assert_eq!(&full[..5], &s.order(3, 20)[..]);
    }
}
