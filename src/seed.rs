//! Ground floor: every seed the project derives, by name. A job's seed
//! comes from the spec's master seed, the model's name and the fold; each
//! random stream inside the job (weight init, per-epoch torch state, shuffle,
//! augmentation, MixUp, hard-example order, TTA crops) derives its own seed
//! from the job's through one function here, so no two streams share a seed
//! by accident and a resumed epoch draws what the uninterrupted one drew.
//! Imports no stage.
//!
//! The salts are part of the outputs' identity: changing one changes the
//! bytes of every experiment that uses it.

/// The master seed of a spec (and of its folds and sample) that sets none.
pub fn default_master() -> u64 {
    42
}

/// A well-mixed 64-bit hash (SplitMix64 finaliser).
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a name, so a model's seed depends on its name.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// The seed of one fold job: the experiment's master seed mixed with the
/// model's name and the fold.
pub fn fold_job(master: u64, model: &str, fold: u8) -> u64 {
    splitmix(master ^ splitmix(name_hash(model)) ^ splitmix(fold as u64 + 1))
}

/// libtorch's global seed before the network is built (weight
/// initialisation of fresh layers).
pub fn torch_init(job: u64) -> i64 {
    splitmix(job ^ 0x1417) as i64
}

/// libtorch's global seed before optimiser step `step` (0-based within the
/// epoch) of epoch `epoch` (0-based): dropout and other torch randomness
/// restart at every step, so a job resumed at any step (tch cannot save the
/// generator's state) draws what the uninterrupted one drew.
pub fn torch_step(job: u64, epoch: u32, step: usize) -> i64 {
    splitmix(job ^ splitmix(epoch as u64 + 1) ^ splitmix(0x7374_6570_0000 + step as u64)) as i64
}

/// The order of an epoch's images (shuffling and weighted sampling).
pub fn epoch_order(job: u64, epoch: u64) -> u64 {
    splitmix(job ^ splitmix(epoch))
}

/// The augmentation draws of the `index`-th image of epoch `epoch`.
pub fn augment(loader: u64, epoch: u64, index: usize) -> u64 {
    splitmix(loader ^ splitmix(epoch.wrapping_add(1)) ^ splitmix(index as u64 + 0x51))
}

/// Where an epoch's hard examples are slotted among the regular ones.
pub fn hard_examples(job: u64, epoch: u64) -> u64 {
    splitmix(job ^ 0x6861_7264 ^ splitmix(epoch))
}

/// MixUp's partner and mixing-weight draws of the batch at `position`
/// (0-based) of epoch `epoch`: a pure function of the batch's place, so a
/// job resumed mid-epoch draws what the uninterrupted one drew.
pub fn mixup(job: u64, epoch: u32, position: usize) -> u64 {
    splitmix(job ^ 0x6d69_7875_70 ^ splitmix(epoch as u64) ^ splitmix(0x6261_7463_6800 + position as u64))
}

/// The draws of a shard-set epoch: `stage` 0 orders the shards, 1 the
/// shuffle buffer.
pub fn shard_epoch(seed: u64, epoch: u64, stage: u64) -> u64 {
    splitmix(seed ^ splitmix(epoch ^ splitmix(0x5ba2_d000 + stage)))
}

/// The draws of the `n`-th random test-time view (1-based).
pub fn tta_view(seed: u64, n: u32) -> u64 {
    splitmix(seed ^ (n as u64 + 1).wrapping_mul(0x9E37))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivations_keep_their_values() {
        // Pinned: a change here changes the bytes of existing experiments.
        assert_eq!(splitmix(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(fold_job(42, "resnet34", 0), splitmix(42 ^ splitmix(name_hash("resnet34")) ^ splitmix(1)));
        assert_ne!(fold_job(42, "a", 0), fold_job(42, "b", 0));
        assert_ne!(fold_job(42, "a", 0), fold_job(42, "a", 1));
    }

    #[test]
    fn streams_of_one_job_differ() {
        let j = fold_job(7, "m", 2);
        let all = [epoch_order(j, 0), hard_examples(j, 0), mixup(j, 0, 0), augment(j, 0, 0), torch_init(j) as u64, torch_step(j, 0, 0) as u64];
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
    }
}
