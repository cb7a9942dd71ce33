//! Fold assignment (data stage). Reads `data/labels.csv` and
//! `data/train.csv`, writes `runs/{experiment}/folds.parquet` and its
//! manifest `runs/{experiment}/_FOLDS_SUCCESS.json`.
//!
//! The split is multi-label iterative stratification (Sechidis, Tsoumakas
//! and Vlahavas, 2011), the algorithm of the `iterative-stratification`
//! package's `MultilabelStratifiedKFold(shuffle=True)`: rows are shuffled by
//! the seed, then the rarest label still present among unassigned rows is
//! taken, and each of its rows goes to the fold that most wants that label
//! (ties: the fold that wants the most rows, then a seeded draw). Rows with
//! no label left go to the emptiest fold. On small data sets a last pass
//! moves a few rows so fold sizes end within 1% (a no-op on the real data).
//! An inverted index makes it O(labels x (labels + k) + label entries)
//! instead of the package's O(rows x labels) per step.

use super::{Annotations, Inputs};
use crate::error::{Error, Result};
use crate::ids::Fold;
use crate::storage::parquet::{write_folds, FoldsMeta};
use crate::storage::{keys, JobId, JobRef, Ran, Store};
use serde::{Deserialize, Serialize};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::info;

/// Cross-validation folds.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FoldsSection {
    /// Number of folds, 2 to 40.
    pub k: u8,
    #[serde(default = "crate::seed::default_master")]
    pub seed: u64,
}

impl FoldsSection {
    /// Range checks; messages name the field as `folds.k`.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(2..=40).contains(&self.k) {
            return Err(format!("`folds.k` = {}: must be between 2 and 40", self.k));
        }
        Ok(())
    }
}

/// The `method` recorded in `folds.parquet`.
pub const METHOD: &str = "iterative-stratification";

/// Assigns each image of `annotations` to one of `k` folds.
///
/// `classes` is the vocabulary size (attribute ids must be below it).
/// Deterministic for a given `seed`.
///
/// # Errors
/// [`Error::Usage`] when `k` is outside 2..=40 or larger than the number of
/// images, or an attribute id is not below `classes`.
pub fn assign(annotations: &Annotations, classes: usize, k: u8, seed: u64) -> Result<Vec<Fold>> {
    let n = annotations.len();
    if !(2..=40).contains(&k) {
        return Err(Error::Usage(format!("k = {k}: the number of folds must be between 2 and 40")));
    }
    if n < k as usize {
        return Err(Error::Usage(format!("k = {k} folds but only {n} training images; lower k")));
    }
    if let Some((r, a)) = annotations
        .labels
        .iter()
        .enumerate()
        .find_map(|(r, row)| row.iter().find(|a| a.0 as usize >= classes).map(|a| (r, a)))
    {
        return Err(Error::Usage(format!(
            "image `{}` has attribute id {} but the vocabulary has {classes} classes",
            annotations.ids[r], a.0
        )));
    }
    let k = k as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);

    // Shuffled processing order (the package's `shuffle=True`).
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);

    // Inverted index: rows of each label, in processing order.
    let mut rows_of: Vec<Vec<u32>> = vec![Vec::new(); classes];
    for &r in &order {
        for a in &annotations.labels[r] {
            rows_of[a.0 as usize].push(r as u32);
        }
    }
    let totals: Vec<usize> = rows_of.iter().map(Vec::len).collect();

    // Desired rows per fold and desired rows of each label per fold.
    let mut want_rows = vec![n as f64 / k as f64; k];
    let mut want_label: Vec<f64> = Vec::with_capacity(k * classes);
    for _ in 0..k {
        want_label.extend(totals.iter().map(|&t| t as f64 / k as f64));
    }
    let want = |f: usize, c: usize| f * classes + c;

    let mut remaining = totals.clone();
    let mut fold_of: Vec<Option<u8>> = vec![None; n];
    let mut ties: Vec<usize> = Vec::with_capacity(classes.max(k));

    // Rarest label still present among unassigned rows (seeded ties).
    while let Some(min) = remaining.iter().copied().filter(|&c| c > 0).min() {
        ties.clear();
        ties.extend((0..classes).filter(|&c| remaining[c] == min));
        let label = if ties.len() > 1 { ties[rng.random_range(0..ties.len())] } else { ties[0] };

        for &r in &rows_of[label] {
            let r = r as usize;
            if fold_of[r].is_some() {
                continue;
            }
            // The fold that most wants this label, then the most rows.
            let best = (0..k).map(|f| want_label[want(f, label)]).fold(f64::NEG_INFINITY, f64::max);
            ties.clear();
            ties.extend((0..k).filter(|&f| want_label[want(f, label)] == best));
            if ties.len() > 1 {
                let most = ties.iter().map(|&f| want_rows[f]).fold(f64::NEG_INFINITY, f64::max);
                ties.retain(|&f| want_rows[f] == most);
            }
            let f = if ties.len() > 1 { ties[rng.random_range(0..ties.len())] } else { ties[0] };
            fold_of[r] = Some(f as u8);
            want_rows[f] -= 1.0;
            for a in &annotations.labels[r] {
                let c = a.0 as usize;
                want_label[want(f, c)] -= 1.0;
                remaining[c] -= 1;
            }
        }
    }

    // Rows without any label: the emptiest fold, ties drawn.
    for &r in &order {
        if fold_of[r].is_none() {
            let most = want_rows.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            ties.clear();
            ties.extend((0..k).filter(|&f| want_rows[f] == most));
            let f = if ties.len() > 1 { ties[rng.random_range(0..ties.len())] } else { ties[0] };
            fold_of[r] = Some(f as u8);
            want_rows[f] -= 1.0;
        }
    }
    let mut folds: Vec<Fold> = fold_of.into_iter().map(|f| Fold(f.expect("every row is assigned by the two passes above"))).collect();
    rebalance(annotations, classes, k, &order, &mut folds);
    Ok(folds)
}

/// Evens out fold sizes on small data sets, where iterative stratification
/// balances sizes only through tie-breaks: while the largest and smallest
/// folds differ by more than 1% of the mean size (at least 1 row), moves the
/// row from the largest to the smallest fold that least worsens the
/// per-label balance, never taking a class's last row out of a fold when the
/// class has at least `k` rows. A no-op when sizes are already within 1%
/// (as on the real data), so the assignment stays the package's there.
fn rebalance(annotations: &Annotations, classes: usize, k: usize, order: &[usize], folds: &mut [Fold]) {
    let n = folds.len();
    let mut sizes = vec![0i64; k];
    let mut counts = vec![0i64; classes * k];
    let mut totals = vec![0i64; classes];
    for (row, f) in annotations.labels.iter().zip(folds.iter()) {
        sizes[f.0 as usize] += 1;
        for a in row {
            counts[a.0 as usize * k + f.0 as usize] += 1;
            totals[a.0 as usize] += 1;
        }
    }
    let tolerance = ((n as f64 / k as f64) * 0.01).floor().max(1.0) as i64;
    for _ in 0..n {
        let big = (0..k).max_by_key(|&f| (sizes[f], std::cmp::Reverse(f))).expect("k >= 2");
        let small = (0..k).min_by_key(|&f| (sizes[f], f)).expect("k >= 2");
        if sizes[big] - sizes[small] <= tolerance {
            break;
        }
        let mut best: Option<(f64, usize)> = None;
        for &r in order {
            if folds[r].0 as usize != big {
                continue;
            }
            let mut delta = 0.0;
            let mut allowed = true;
            for a in &annotations.labels[r] {
                let c = a.0 as usize;
                let want = totals[c] as f64 / k as f64;
                let (cb, cs) = (counts[c * k + big] as f64, counts[c * k + small] as f64);
                if counts[c * k + big] == 1 && totals[c] >= k as i64 {
                    allowed = false;
                    break;
                }
                delta += (cb - 1.0 - want).abs() + (cs + 1.0 - want).abs() - (cb - want).abs() - (cs - want).abs();
            }
            if allowed && best.is_none_or(|(d, _)| delta < d) {
                best = Some((delta, r));
            }
        }
        let Some((_, r)) = best else { break };
        folds[r] = Fold(small as u8);
        sizes[big] -= 1;
        sizes[small] += 1;
        for a in &annotations.labels[r] {
            counts[a.0 as usize * k + big] -= 1;
            counts[a.0 as usize * k + small] += 1;
        }
    }
}

/// How well a fold assignment stratifies the labels.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FoldQuality {
    /// Rows per fold.
    pub sizes: Vec<usize>,
    /// (largest - smallest) / mean fold size.
    pub size_spread: f64,
    /// Mean over classes with at least one image of the mean over folds of
    /// |share of the class's images in the fold - 1/k|.
    pub mean_share_deviation: f64,
    /// Largest |share - 1/k| over classes and folds.
    pub max_share_deviation: f64,
    /// Classes with at least `k` images that are missing from some fold.
    pub classes_missing_a_fold: usize,
}

/// Measures `folds` against the labels of `annotations`.
///
/// # Panics
/// When `folds` and `annotations` differ in length or a fold is `>= k`
/// (callers pass the output of [`assign`]).
pub fn quality(annotations: &Annotations, classes: usize, k: u8, folds: &[Fold]) -> FoldQuality {
    assert_eq!(annotations.len(), folds.len(), "one fold per image");
    let k = k as usize;
    let mut sizes = vec![0usize; k];
    let mut counts = vec![0usize; classes * k];
    for (row, f) in annotations.labels.iter().zip(folds) {
        let f = f.0 as usize;
        sizes[f] += 1;
        for a in row {
            counts[a.0 as usize * k + f] += 1;
        }
    }
    let mean = annotations.len() as f64 / k as f64;
    let size_spread = (*sizes.iter().max().unwrap_or(&0) as f64 - *sizes.iter().min().unwrap_or(&0) as f64) / mean;
    let (mut sum, mut present, mut max, mut missing) = (0.0, 0usize, 0.0f64, 0usize);
    for c in 0..classes {
        let per = &counts[c * k..(c + 1) * k];
        let total: usize = per.iter().sum();
        if total == 0 {
            continue;
        }
        present += 1;
        let mut dev = 0.0;
        for &x in per {
            let d = (x as f64 / total as f64 - 1.0 / k as f64).abs();
            dev += d;
            max = max.max(d);
        }
        sum += dev / k as f64;
        if total >= k && per.contains(&0) {
            missing += 1;
        }
    }
    FoldQuality {
        sizes,
        size_spread,
        mean_share_deviation: if present > 0 { sum / present as f64 } else { 0.0 },
        max_share_deviation: max,
        classes_missing_a_fold: missing,
    }
}

/// What a folds job did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FoldsOutcome {
    pub key: String,
    /// False when an earlier run had already committed the same folds.
    pub computed: bool,
    pub quality: Option<FoldQuality>,
}

/// The folds job of one experiment.
#[derive(Clone, Debug)]
pub struct FoldsJob {
    pub experiment: String,
    pub folds: FoldsSection,
    /// Hash of what the folds depend on (data and fold settings).
    pub spec_hash: String,
}

impl FoldsJob {
    /// The job as the store sees it.
    pub fn job_ref(&self) -> JobRef {
        JobRef {
            id: JobId { kind: "folds".into(), experiment: self.experiment.clone(), model: None, fold: None },
            manifest: keys::folds_success(&self.experiment),
            spec_hash: self.spec_hash.clone(),
            inputs: Vec::new(),
        }
    }
}

/// The folds job: reads the inputs from `store`, assigns `job.folds.k`
/// folds with `job.folds.seed`, writes `folds.parquet` and commits its
/// manifest. Skips the work when the manifest for this spec exists.
///
/// # Errors
/// Input errors from [`super::load_inputs`]; [`Error::SpecChanged`] when the
/// folds were committed by a spec with other data or fold settings; storage
/// errors.
pub async fn run(store: &Store, job: &FoldsJob) -> Result<FoldsOutcome> {
    let key = keys::folds(&job.experiment);
    let job_ref = job.job_ref();
    let ran = job_ref.run_once(store, || async {
        let Inputs { vocab, train, .. } = super::load_inputs(store).await?;
        let (k, seed) = (job.folds.k, job.folds.seed);
        let t = std::time::Instant::now();
        let (ids, folds, q) = tokio::task::spawn_blocking({
            let classes = vocab.len();
            move || -> Result<_> {
                let folds = assign(&train, classes, k, seed)?;
                let q = quality(&train, classes, k, &folds);
                Ok((train.ids, folds, q))
            }
        })
        .await??;
        info!(
            k,
            seed,
            seconds = t.elapsed().as_secs_f64(),
            size_spread = q.size_spread,
            mean_share_deviation = q.mean_share_deviation,
            max_share_deviation = q.max_share_deviation,
            classes_missing_a_fold = q.classes_missing_a_fold,
            "folds assigned"
        );
        let entry = write_folds(store, &key, &ids, &folds, &FoldsMeta { k, seed, method: METHOD.into() }).await?;
        Ok((q, vec![entry]))
    });
    Ok(match ran.await? {
        Ran::Skipped(_) => FoldsOutcome { key, computed: false, quality: None },
        Ran::Done { outcome, .. } => FoldsOutcome { key, computed: true, quality: Some(outcome) },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AttributeId, ImageId};

    fn synthetic(n: usize, classes: usize, seed: u64) -> Annotations {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut ids = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            ids.push(ImageId::new(&format!("{:012x}", i + 1)).unwrap());
            // Zipf-like: low ids frequent.
            let m = rng.random_range(1..=4);
            let mut row: Vec<AttributeId> = (0..m)
                .map(|_| {
                    let u: f64 = rng.random();
                    AttributeId(((u * u * u) * classes as f64) as u16)
                })
                .collect();
            row.sort_unstable();
            row.dedup();
            labels.push(row);
        }
        Annotations { ids, labels }
    }

    #[test]
    fn same_seed_gives_the_same_folds_and_another_seed_differs() {
        let a = synthetic(2000, 50, 1);
        let f1 = assign(&a, 50, 5, 7).unwrap();
        assert_eq!(f1, assign(&a, 50, 5, 7).unwrap());
        assert_ne!(f1, assign(&a, 50, 5, 8).unwrap());
    }

    #[test]
    fn folds_are_balanced_and_every_frequent_class_reaches_every_fold() {
        let a = synthetic(3000, 60, 3);
        for k in [2u8, 5, 10] {
            let f = assign(&a, 60, k, 1).unwrap();
            assert!(f.iter().all(|x| x.0 < k));
            let q = quality(&a, 60, k, &f);
            // At most 1% of the mean fold size apart (rounded down, at least 1 row).
            let mean = 3000 / k as usize;
            let allowed = ((mean as f64 * 0.01).floor().max(1.0)) / mean as f64;
            assert!(q.size_spread <= allowed + 1e-9, "k={k}: {q:?}");
            assert_eq!(q.classes_missing_a_fold, 0, "k={k}: {q:?}");
            assert!(q.mean_share_deviation < 0.02, "k={k}: {q:?}");
        }
    }

    #[test]
    fn forty_folds_work_and_k_out_of_range_is_refused() {
        let a = synthetic(400, 20, 5);
        let f = assign(&a, 20, 40, 0).unwrap();
        assert_eq!(f.iter().map(|x| x.0).max(), Some(39));
        assert!(assign(&a, 20, 1, 0).unwrap_err().to_string().contains("between 2 and 40"));
        assert!(assign(&a, 20, 41, 0).is_err());
        let tiny = synthetic(3, 5, 1);
        assert!(assign(&tiny, 5, 4, 0).unwrap_err().to_string().contains("only 3"));
    }

    #[test]
    fn an_attribute_outside_the_vocabulary_is_named() {
        let a = synthetic(10, 5, 1);
        let err = assign(&a, 2, 2, 0).unwrap_err().to_string();
        assert!(err.contains("vocabulary has 2 classes"), "{err}");
    }
}
