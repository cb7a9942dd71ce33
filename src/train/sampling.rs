//! Train stage: the order training images are visited in. `shuffle` is a
//! seeded permutation per epoch; `log_class_weights` (recipe R2) draws
//! images with replacement, an image weighing the largest `ln(N / n_c)` over
//! its classes, so rare classes are seen more often. Either can be cut to a
//! number of images per epoch (smoke runs), and hard negative mining (R2)
//! adds the images with the highest loss of the previous epoch once more.
//! Reads and writes nothing.

use crate::ids::AttributeId;
use crate::image::loader::{Sampler, Shuffle};
use super::config::Sampling;
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
        let mut rng = ChaCha8Rng::seed_from_u64(crate::seed::epoch_order(self.seed, epoch));
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

/// Another sampler's order plus the hardest images of the previous epoch
/// (set with [`HardMining::set_hard`] before each epoch), shuffled together
/// with a seed of the epoch.
pub struct HardMining {
    pub inner: Arc<dyn Sampler>,
    pub seed: u64,
    hard: std::sync::Mutex<Vec<usize>>,
}

impl HardMining {
    pub fn new(inner: Arc<dyn Sampler>, seed: u64) -> HardMining {
        HardMining { inner, seed, hard: std::sync::Mutex::new(Vec::new()) }
    }

    /// The item indices the next epoch visits once more.
    pub fn set_hard(&self, hard: Vec<usize>) {
        if let Ok(mut h) = self.hard.lock() {
            *h = hard;
        }
    }
}

impl Sampler for HardMining {
    fn order(&self, epoch: u64, n: usize) -> Vec<usize> {
        let mut v = self.inner.order(epoch, n);
        let hard = self.hard.lock().map(|h| h.clone()).unwrap_or_default();
        if hard.is_empty() {
            return v;
        }
        v.extend(hard.into_iter().filter(|&i| i < n));
        rand::seq::SliceRandom::shuffle(&mut v[..], &mut ChaCha8Rng::seed_from_u64(crate::seed::hard_examples(self.seed, epoch)));
        v
    }
}

/// The `fraction` of items with the highest loss (at least one), highest
/// first; ties go to the lower index.
pub fn hardest(losses: &[(usize, f32)], fraction: f64, items: usize) -> Vec<usize> {
    let k = ((items as f64 * fraction).ceil() as usize).max(1);
    let mut v: Vec<(usize, f32)> = losses.iter().copied().filter(|(_, l)| l.is_finite()).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.dedup_by_key(|x| x.0);
    v.truncate(k);
    v.into_iter().map(|(i, _)| i).collect()
}

/// `inner` cut to `limit` images per epoch when set.
pub fn limited(inner: Arc<dyn Sampler>, limit: Option<usize>) -> Arc<dyn Sampler> {
    match limit {
        Some(limit) => Arc::new(Limited { inner, limit }),
        None => inner,
    }
}

/// The sampler a model's `train.sampling` and `train.limit_images` ask for.
pub fn sampler(kind: Sampling, labels: &[Vec<AttributeId>], classes: usize, limit: Option<usize>, seed: u64) -> Arc<dyn Sampler> {
    let inner: Arc<dyn Sampler> = match kind {
        Sampling::Shuffle => Arc::new(Shuffle { seed }),
        Sampling::LogClassWeights => Arc::new(Weighted::log_class(labels, classes, seed)),
    };
    limited(inner, limit)
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
    fn hard_mining_visits_the_hardest_images_once_more() {
        let base: Arc<dyn Sampler> = Arc::new(Shuffle { seed: 1 });
        let s = HardMining::new(base.clone(), 9);
        assert_eq!(s.order(2, 10), base.order(2, 10), "nothing hard before the first epoch");
        let losses: Vec<(usize, f32)> = (0..10).map(|i| (i, i as f32)).collect();
        let hard = hardest(&losses, 0.2, 10);
        assert_eq!(hard, [9, 8]);
        s.set_hard(hard);
        let order = s.order(3, 10);
        assert_eq!(order.len(), 12);
        assert_eq!(order.iter().filter(|&&i| i == 9).count(), 2);
        assert_eq!(order, s.order(3, 10), "seeded");
        assert_eq!(hardest(&[(0, f32::NAN), (1, 0.5)], 0.05, 10), [1]);
    }

    #[test]
    fn a_limit_cuts_every_epoch() {
        let s = sampler(Sampling::Shuffle, &[], 0, Some(5), 1);
        assert_eq!(s.order(3, 20).len(), 5);
        let full = sampler(Sampling::Shuffle, &[], 0, None, 1).order(3, 20);
        assert_eq!(&full[..5], &s.order(3, 20)[..]);
    }
}
