//! Fold assignment on the real competition train.csv (109,237 images x
//! 1,103 classes): the invariants the issue asks for, determinism, speed,
//! and the folds job's outputs, manifest and skip-on-rerun.

use crate::common;

use imet::data::folds::{self, quality};
use imet::data::{Annotations, Vocabulary};
use imet::storage::{keys, Manifest, Store};

fn real() -> (Vocabulary, Annotations) {
    let dir = common::real_data_dir();
    let labels = std::fs::read(dir.join("labels.csv")).unwrap();
    let train = std::fs::read(dir.join("train.csv")).unwrap();
    let vocab = Vocabulary::parse("labels.csv", &labels).unwrap();
    let ann = Annotations::parse("train.csv", &train, &vocab).unwrap();
    (vocab, ann)
}

#[test]
fn five_folds_on_the_real_train_csv_keep_every_class_and_balance_sizes() {
    let (vocab, ann) = real();
    assert_eq!(ann.len(), 109_237);
    let t = std::time::Instant::now();
    let f = folds::assign(&ann, vocab.len(), 5, 42).unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(secs < 10.0, "took {secs:.1}s; it should take well under a second");
    let q = quality(&ann, vocab.len(), 5, &f);
    eprintln!("k=5: {secs:.3}s {q:?}");
    assert_eq!(q.classes_missing_a_fold, 0, "{q:?}");
    assert!(q.size_spread <= 0.01, "fold sizes differ by more than 1%: {q:?}");
    // iterative-stratification 0.1.9 on the same data and seed reaches a mean
    // per-class share deviation of 0.0205838 and a size spread of 1.32%
    // (ci/bench/folds_iterstrat.py, BENCHMARKS.md, data section; two minutes of Python,
    // so measured once rather than in CI). Ours must be no worse.
    assert!(q.mean_share_deviation <= 0.0205838, "{q:?}");
    assert!(q.max_share_deviation <= 0.8 + 1e-9, "{q:?}");
    assert_eq!(f, folds::assign(&ann, vocab.len(), 5, 42).unwrap(), "same seed, same folds");
    assert_ne!(f, folds::assign(&ann, vocab.len(), 5, 43).unwrap(), "another seed, other folds");
}

#[test]
fn forty_folds_on_the_real_train_csv_keep_every_class_with_forty_images() {
    let (vocab, ann) = real();
    let f = folds::assign(&ann, vocab.len(), 40, 1).unwrap();
    let q = quality(&ann, vocab.len(), 40, &f);
    eprintln!("k=40: {q:?}");
    assert_eq!(q.sizes.len(), 40);
    assert_eq!(q.classes_missing_a_fold, 0, "{q:?}");
    assert!(q.size_spread <= 0.01, "{q:?}");
}

#[tokio::test]
async fn the_folds_job_writes_parquet_and_a_manifest_then_skips() {
    let dir = common::real_data_dir();
    let store = Store::memory();
    for (key, file) in [(keys::LABELS, "labels.csv"), (keys::TRAIN, "train.csv"), (keys::SAMPLE_SUBMISSION, "sample_submission.csv")] {
        store.put(key, std::fs::read(dir.join(file)).unwrap()).await.unwrap();
    }
    let spec = imet::jobs::folds_job(&imet::JobSpec::adhoc_folds("memory://", "exp", 5, 42).unwrap());
    let first = folds::run(&store, &spec).await.unwrap();
    assert!(first.computed);
    let (ids, f, meta) = imet::storage::parquet::read_folds(&store, &keys::folds("exp")).await.unwrap();
    assert_eq!(ids.len(), 109_237);
    assert_eq!((meta.k, meta.seed, meta.method.as_str()), (5, 42, folds::METHOD));
    let (vocab, ann) = real();
    assert_eq!(ids, ann.ids);
    assert_eq!(f, folds::assign(&ann, vocab.len(), 5, 42).unwrap());
    let m = Manifest::committed(&store, &keys::folds_success("exp"), &spec.spec_hash).await.unwrap().unwrap();
    assert_eq!(m.outputs[0].key, keys::folds("exp"));
    let second = folds::run(&store, &spec).await.unwrap();
    assert!(!second.computed, "a committed folds job is skipped");
    let other = imet::jobs::folds_job(&imet::JobSpec::adhoc_folds("memory://", "exp", 6, 42).unwrap());
    assert!(folds::run(&store, &other).await.is_err(), "other folds settings under the same experiment are refused");
}
