//! The synthetic sample (data stage): writes a small, learnable stand-in
//! for the competition data through the store, in the real layout:
//! `data/labels.csv` (the real 1,103-name vocabulary), `data/train.csv`,
//! `data/sample_submission.csv`, `data/train/{id}.png`, `data/test/{id}.png`.
//! Reads nothing from the store; the real vocabulary and the real
//! `train.csv` (for label co-occurrence) are embedded in the binary.
//!
//! Label sets are real `train.csv` rows restricted to the `classes` most
//! frequent attributes (rows left empty are redrawn), so the sample keeps the
//! real co-occurrence. Images come from [`draw::paint`]. `data/train.csv` is
//! written last: its presence marks a complete sample.

pub mod draw;

use super::Vocabulary;
use crate::error::{Error, Result};
use crate::ids::{AttributeId, Group, ImageId};
use serde::{Deserialize, Serialize};
use crate::storage::keys::{self, Split};
use crate::storage::Store;
use futures::stream::{self, TryStreamExt};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::collections::HashSet;
use tracing::info;

/// Input data, and the synthetic sample to generate when it is missing.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Generate the synthetic sample under `data/` when `data/train.csv`
    /// is absent (CI and the README's main command).
    #[serde(default)]
    pub sample: Option<SampleSection>,
}

/// Synthetic sample size and content.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SampleSection {
    pub train: usize,
    pub test: usize,
    /// Number of frequent classes the sample's labels are drawn from.
    #[serde(default = "default_classes")]
    pub classes: usize,
    #[serde(default = "crate::seed::default_master")]
    pub seed: u64,
    /// Fraction of training images whose written labels are another
    /// image's (label noise, for testing cleaning); which ones is recorded
    /// under `truth/`, outside what the pipeline reads.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub noise: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn default_classes() -> usize {
    30
}

impl DataSection {
    /// Range checks; `k` is the spec's fold count.
    pub fn validate(&self, k: u8) -> std::result::Result<(), String> {
        let Some(s) = &self.sample else { return Ok(()) };
        if s.train < 2 * k as usize {
            return Err(format!("`data.sample.train` = {}: needs at least 2 images per fold ({})", s.train, 2 * k));
        }
        if s.test == 0 {
            return Err("`data.sample.test` = 0: the sample needs test images".into());
        }
        if !(2..=1103).contains(&s.classes) {
            return Err(format!("`data.sample.classes` = {}: must be between 2 and 1103", s.classes));
        }
        if !(0.0..0.5).contains(&s.noise) {
            return Err(format!("`data.sample.noise` = {}: must be in [0, 0.5)", s.noise));
        }
        Ok(())
    }
}

/// The competition's `labels.csv`, embedded.
pub const REAL_LABELS: &str = include_str!("../../data/imet2019/labels.csv");
/// The competition's `train.csv`, embedded for its label co-occurrence.
pub const REAL_TRAIN: &str = include_str!("../../data/imet2019/train.csv");
const ORIGIN_LABELS: &str = "<embedded data/imet2019/labels.csv>";
const ORIGIN_TRAIN: &str = "<embedded data/imet2019/train.csv>";

/// One image of the sample and the labels painted into it.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub id: ImageId,
    /// What the image shows.
    pub labels: Vec<AttributeId>,
    /// What `train.csv` says it shows: another image's labels when the
    /// sample injects noise into it, else `labels`.
    pub given: Vec<AttributeId>,
    /// Seed of [`draw::paint`] for this image.
    pub seed: u64,
}

/// The sample's ids and labels, before any pixel is painted.
#[derive(Clone, Debug)]
pub struct Plan {
    pub vocab: Vocabulary,
    /// The frequent attributes labels are drawn from, most frequent first.
    pub classes: Vec<AttributeId>,
    pub train: Vec<Planned>,
    /// Test images carry labels too (not written; used to score models).
    pub test: Vec<Planned>,
}

impl Plan {
    /// The painter's view of `labels`: culture and tag indices among the
    /// sample's classes (attributes outside them are ignored).
    pub fn look(&self, labels: &[AttributeId]) -> draw::Look {
        let mut look = draw::Look::default();
        let (mut ci, mut ti) = (0, 0);
        for c in &self.classes {
            let group = self.vocab.group(*c);
            if labels.contains(c) {
                match group {
                    Group::Culture => look.cultures.push(ci),
                    Group::Tag => look.tags.push(ti),
                }
            }
            match group {
                Group::Culture => ci += 1,
                Group::Tag => ti += 1,
            }
        }
        look
    }

    /// The PNG bytes of `p`.
    ///
    /// # Errors
    /// [`Error::Format`] naming the image key if encoding fails.
    pub fn render(&self, p: &Planned, split: Split) -> Result<Vec<u8>> {
        let img = draw::paint(&self.look(&p.labels), p.seed);
        draw::encode_png(&img).map_err(|reason| Error::Format { key: keys::image(split, &p.id), what: "PNG image", reason })
    }
}

/// The real vocabulary, parsed from the embedded `labels.csv`.
///
/// # Errors
/// Only if the embedded file were corrupt.
pub fn real_vocabulary() -> Result<Vocabulary> {
    Vocabulary::parse(ORIGIN_LABELS, REAL_LABELS.as_bytes())
}

/// Draws ids and label sets for `section`; deterministic by its seed.
///
/// # Errors
/// [`Error::Usage`] when `classes` is outside 2..=1103 or a split is empty.
pub fn plan(section: &SampleSection) -> Result<Plan> {
    let vocab = real_vocabulary()?;
    if !(2..=vocab.len()).contains(&section.classes) {
        return Err(Error::Usage(format!("sample classes = {}: must be between 2 and {}", section.classes, vocab.len())));
    }
    if section.train == 0 || section.test == 0 {
        return Err(Error::Usage("the sample needs at least one training and one test image".into()));
    }
    let real = super::Annotations::parse(ORIGIN_TRAIN, REAL_TRAIN.as_bytes(), &vocab)?;

    // The most frequent attributes (ties by id).
    let mut freq = vec![0usize; vocab.len()];
    for row in &real.labels {
        for a in row {
            freq[a.0 as usize] += 1;
        }
    }
    let mut by_freq: Vec<usize> = (0..vocab.len()).collect();
    by_freq.sort_by_key(|&c| (std::cmp::Reverse(freq[c]), c));
    let classes: Vec<AttributeId> = by_freq[..section.classes].iter().map(|&c| AttributeId(c as u16)).collect();
    let keep: HashSet<AttributeId> = classes.iter().copied().collect();
    let rows: Vec<Vec<AttributeId>> = real
        .labels
        .iter()
        .map(|row| row.iter().copied().filter(|a| keep.contains(a)).collect::<Vec<_>>())
        .filter(|r: &Vec<AttributeId>| !r.is_empty())
        .collect();

    let mut rng = ChaCha8Rng::seed_from_u64(section.seed);
    let mut seen = HashSet::new();
    let mut draw_split = |n: usize, rng: &mut ChaCha8Rng| -> Vec<Planned> {
        (0..n)
            .map(|_| {
                let id = loop {
                    let len = if rng.random_bool(0.85) { 16 } else { rng.random_range(12..16) };
                    let raw: String = (0..len).map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)])).collect();
                    if seen.insert(raw.clone()) {
                        break ImageId::new(&raw).expect("generated ids are 12-16 lowercase hex characters");
                    }
                };
                let labels = rows[rng.random_range(0..rows.len())].clone();
                Planned { id, given: labels.clone(), labels, seed: rng.random() }
            })
            .collect()
    };
    let mut train = draw_split(section.train, &mut rng);
    let test = draw_split(section.test, &mut rng);
    inject_noise(&mut train, &rows, section.noise, section.seed);
    Ok(Plan { vocab, classes, train, test })
}

/// Gives `round(noise * n)` training images, chosen by their own seeded
/// stream, the labels of another real row that shares none of theirs.
fn inject_noise(train: &mut [Planned], rows: &[Vec<AttributeId>], noise: f64, seed: u64) {
    let n = ((train.len() as f64) * noise).round() as usize;
    if n == 0 {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(crate::seed::splitmix(seed ^ 0x6e6f_6973_65));
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut rng);
    for &i in &order[..n] {
        let p = &mut train[i];
        for _ in 0..1000 {
            let other = &rows[rng.random_range(0..rows.len())];
            if other.iter().all(|a| !p.labels.contains(a)) {
                p.given = other.clone();
                break;
            }
        }
    }
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SampleSummary {
    pub train: usize,
    pub test: usize,
    pub classes: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// Images painted and encoded per batch (bounds memory).
const CHUNK: usize = 64;
/// Concurrent uploads.
const UPLOADS: usize = 16;

/// Writes the whole sample for `section` into `store` (overwriting any
/// earlier sample files with the same keys). Paints on the rayon pool,
/// uploads with bounded concurrency, and writes `data/train.csv` last.
///
/// # Errors
/// [`Error::Usage`] for bad sizes; storage errors naming the key.
pub async fn generate(store: &Store, section: &SampleSection) -> Result<SampleSummary> {
    let t = std::time::Instant::now();
    let plan = std::sync::Arc::new(tokio::task::spawn_blocking({
        let section = section.clone();
        move || plan(&section)
    })
    .await??);
    let progress = crate::telemetry::Progress::with_unit("sample images", (plan.train.len() + plan.test.len()) as u64, "images");
    let mut bytes = 0u64;
    for split in [Split::Test, Split::Train] {
        let n = match split {
            Split::Train => plan.train.len(),
            Split::Test => plan.test.len(),
        };
        for start in (0..n).step_by(CHUNK) {
            let end = (start + CHUNK).min(n);
            let encoded: Vec<(String, Vec<u8>)> = tokio::task::spawn_blocking({
                let plan = plan.clone();
                move || -> Result<Vec<(String, Vec<u8>)>> {
                    let items = match split {
                        Split::Train => &plan.train[start..end],
                        Split::Test => &plan.test[start..end],
                    };
                    items.par_iter().map(|p| Ok((keys::image(split, &p.id), plan.render(p, split)?))).collect()
                }
            })
            .await??;
            bytes += encoded.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
            stream::iter(encoded.into_iter().map(Ok))
                .try_for_each_concurrent(UPLOADS, |(key, png)| async move { store.put(&key, png).await })
                .await?;
            progress.inc((end - start) as u64);
        }
    }
    let labels = REAL_LABELS.to_string();
    let mut train_csv = String::from("id,attribute_ids\n");
    for p in &plan.train {
        train_csv.push_str(&format!("{},{}\n", p.id, attribute_ids(&p.given)));
    }
    let submission = super::TestIds { ids: plan.test.iter().map(|p| p.id.clone()).collect() }.to_csv();
    bytes += (labels.len() + train_csv.len() + submission.len()) as u64;
    for (name, text) in truth_files(&plan) {
        store.put(&keys::truth(name), text).await?;
    }
    store.put(keys::LABELS, labels).await?;
    store.put(keys::SAMPLE_SUBMISSION, submission).await?;
    store.put(keys::TRAIN, train_csv).await?;
    let summary = SampleSummary {
        train: plan.train.len(),
        test: plan.test.len(),
        classes: plan.classes.len(),
        bytes,
        seconds: t.elapsed().as_secs_f64(),
    };
    info!(train = summary.train, test = summary.test, classes = summary.classes, bytes, seconds = summary.seconds, "sample written");
    Ok(summary)
}

fn attribute_ids(labels: &[AttributeId]) -> String {
    labels.iter().map(|a| a.0.to_string()).collect::<Vec<_>>().join(" ")
}

/// What the sample knows and the pipeline must not read, as `truth/` files
/// in the `train.csv` format: `test.csv` (the test images' labels, for
/// `imet eval`), `train.csv` (the training images' real labels) and
/// `noisy.csv` (`id,given,real` of every image whose labels were replaced).
pub fn truth_files(plan: &Plan) -> Vec<(&'static str, String)> {
    let mut test = String::from("id,attribute_ids\n");
    for p in &plan.test {
        test.push_str(&format!("{},{}\n", p.id, attribute_ids(&p.labels)));
    }
    let mut train = String::from("id,attribute_ids\n");
    let mut noisy = String::from("id,given,real\n");
    for p in &plan.train {
        train.push_str(&format!("{},{}\n", p.id, attribute_ids(&p.labels)));
        if p.given != p.labels {
            noisy.push_str(&format!("{},{},{}\n", p.id, attribute_ids(&p.given), attribute_ids(&p.labels)));
        }
    }
    vec![("test.csv", test), ("train.csv", train), ("noisy.csv", noisy)]
}

/// Generates the spec's `[data.sample]` when `data/train.csv` is absent
/// (what `imet run` does first); `None` when there is nothing to do.
///
/// # Errors
/// As [`generate`].
pub async fn ensure(store: &Store, data: &DataSection) -> Result<Option<SampleSummary>> {
    let Some(section) = &data.sample else { return Ok(None) };
    if store.exists(keys::TRAIN).await? {
        return Ok(None);
    }
    generate(store, section).await.map(Some)
}

/// [`generate`] into the store at `root` (a URL or a path).
///
/// # Errors
/// As [`generate`], plus an unusable root.
pub async fn generate_at(root: &str, section: &SampleSection) -> Result<SampleSummary> {
    let store = Store::open(&crate::storage::root_to_url(root)?)?;
    generate(&store, section).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(train: usize, test: usize, classes: usize, seed: u64) -> SampleSection {
        SampleSection { train, test, classes, seed, noise: 0.0 }
    }

    #[test]
    fn noise_replaces_the_labels_of_a_known_fraction_and_keeps_the_rest() {
        let clean = plan(&section(200, 10, 30, 4)).unwrap();
        let noisy = plan(&SampleSection { noise: 0.15, ..section(200, 10, 30, 4) }).unwrap();
        let changed: Vec<&Planned> = noisy.train.iter().filter(|p| p.given != p.labels).collect();
        assert_eq!(changed.len(), 30);
        for p in &changed {
            assert!(p.given.iter().all(|a| !p.labels.contains(a)), "a noisy image shares no label with what it shows");
        }
        // Same ids, images and real labels as the clean sample.
        for (a, b) in clean.train.iter().zip(&noisy.train) {
            assert_eq!((&a.id, &a.labels, a.seed), (&b.id, &b.labels, b.seed));
        }
        let truth = truth_files(&noisy);
        assert_eq!(truth[2].1.lines().count(), 31);
    }

    #[test]
    fn plans_are_deterministic_by_seed() {
        let a = plan(&section(50, 10, 30, 1)).unwrap();
        let b = plan(&section(50, 10, 30, 1)).unwrap();
        let c = plan(&section(50, 10, 30, 2)).unwrap();
        assert_eq!(a.train, b.train);
        assert_eq!(a.test, b.test);
        assert_ne!(a.train, c.train);
    }

    #[test]
    fn labels_come_from_the_frequent_classes_of_both_groups() {
        let p = plan(&section(300, 10, 30, 3)).unwrap();
        assert_eq!(p.classes.len(), 30);
        assert_eq!(p.vocab.len(), 1103);
        // tag::men, tag::women, culture::french lead the real data.
        let names: Vec<&str> = p.classes.iter().take(3).map(|c| p.vocab.name(*c)).collect();
        assert_eq!(names, ["tag::men", "tag::women", "culture::french"]);
        assert!(p.classes.iter().any(|c| p.vocab.group(*c) == Group::Culture));
        assert!(p.classes.iter().any(|c| p.vocab.group(*c) == Group::Tag));
        for row in p.train.iter().chain(&p.test) {
            assert!(!row.labels.is_empty());
            assert!(row.labels.iter().all(|a| p.classes.contains(a)));
        }
        let ids: HashSet<&ImageId> = p.train.iter().chain(&p.test).map(|r| &r.id).collect();
        assert_eq!(ids.len(), 310);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(plan(&section(10, 10, 1, 0)).is_err());
        assert!(plan(&section(10, 0, 30, 0)).is_err());
    }

    #[tokio::test]
    async fn ensure_generates_only_when_train_csv_is_missing() {
        let data = DataSection { sample: Some(section(10, 2, 5, 42)) };
        let store = Store::memory();
        assert_eq!(ensure(&store, &data).await.unwrap().map(|s| s.train), Some(10));
        assert!(ensure(&store, &data).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_generated_sample_passes_input_validation() {
        let store = Store::memory();
        let s = generate(&store, &section(12, 4, 10, 5)).await.unwrap();
        assert_eq!((s.train, s.test), (12, 4));
        let inputs = crate::data::load_inputs(&store).await.unwrap();
        assert_eq!(inputs.vocab.len(), 1103);
        assert_eq!(inputs.train.len(), 12);
        for id in &inputs.test.ids {
            let png = store.get(&keys::image(Split::Test, id)).await.unwrap();
            let img = image::load_from_memory(&png).unwrap();
            assert_eq!(img.width().min(img.height()), draw::SHORT_SIDE);
        }
    }
}
