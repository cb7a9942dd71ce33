//! Writes the ensemble scale benchmark's inputs into a local store: the real
//! competition CSVs, `folds.parquet` (K folds), and for each of M models and
//! K folds an `oof.parquet` (that fold's train images) and a `test.parquet`
//! (every sample_submission image), with synthetic probabilities correlated
//! with the real labels of train.csv (test images borrow the labels of a
//! random train image). Also writes `bench.toml`, the spec `imet ensemble`
//! and `ci/bench/ensemble_reference.py` run against it.
//!
//! cargo run --release --example make_bench_preds -- SRC_DIR OUT_DIR [MODELS] [K] [TRAIN_ROWS]
//!
//! SRC_DIR holds labels.csv, train.csv and sample_submission.csv (the
//! repository's data/imet2019). TRAIN_ROWS keeps only the first rows of
//! train.csv (default: all 109,237).

use imet::data::{Annotations, TestIds, Vocabulary};
use imet::ids::Fold;
use imet::storage::parquet::{write_folds, write_predictions, FoldsMeta, PredictionKind, PredictionMeta, Predictions};
use imet::storage::{keys, Store};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::path::PathBuf;

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> imet::Error + '_ {
    move |source| imet::Error::Io { path: path.to_path_buf(), source }
}

/// Roughly standard normal: a centred sum of four uniforms.
fn normal(rng: &mut impl Rng) -> f32 {
    let s: f32 = (0..4).map(|_| rng.random::<f32>()).sum();
    (s - 2.0) * 1.732
}

/// One row of a model's probabilities for an image with `labels`: logits
/// share an image-level noise term across models (`shared` seed) plus the
/// model's own noise, so blending helps but does not make the task trivial.
fn row(out: &mut [f32], labels: &[u16], prior: &[f32], model: usize, shared: u64, seed: u64) {
    let mut common = rand_chacha::ChaCha8Rng::seed_from_u64(shared);
    let mut own = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let skill = 0.3 * model as f32;
    for (k, p) in out.iter_mut().enumerate() {
        let z = prior[k] + 1.2 * normal(&mut common) + 0.8 * normal(&mut own);
        *p = 1.0 / (1.0 + (-z).exp());
    }
    for &c in labels {
        let z = -0.6 + skill + 1.4 * normal(&mut common) + 1.0 * normal(&mut own);
        out[c as usize] = 1.0 / (1.0 + (-z).exp());
    }
}

#[tokio::main]
async fn main() -> imet::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: make_bench_preds SRC_DIR OUT_DIR [MODELS] [K] [TRAIN_ROWS]";
    let src = PathBuf::from(args.next().ok_or_else(|| imet::Error::Usage(usage.into()))?);
    let out = PathBuf::from(args.next().ok_or_else(|| imet::Error::Usage(usage.into()))?);
    let models: usize = args.next().map(|s| s.parse().unwrap_or(3)).unwrap_or(3);
    let k: u8 = args.next().map(|s| s.parse().unwrap_or(5)).unwrap_or(5);
    let keep: usize = args.next().map(|s| s.parse().unwrap_or(usize::MAX)).unwrap_or(usize::MAX);
    std::fs::create_dir_all(&out).map_err(io(&out))?;
    let store = Store::open(&format!("file://{}", std::fs::canonicalize(&out).map_err(io(&out))?.display()))?;

    let read = |name: &str| {
        let p = src.join(name);
        std::fs::read(&p).map_err(io(&p))
    };
    let labels_csv = read("labels.csv")?;
    let vocab = Vocabulary::parse("labels.csv", &labels_csv)?;
    let mut train = Annotations::parse("train.csv", &read("train.csv")?, &vocab)?;
    train.ids.truncate(keep);
    train.labels.truncate(keep);
    let test = TestIds::parse("sample_submission.csv", &read("sample_submission.csv")?)?;
    store.put(keys::LABELS, labels_csv).await?;
    store.put(keys::TRAIN, train.to_csv()).await?;
    store.put(keys::SAMPLE_SUBMISSION, test.to_csv()).await?;
    let (n, nt, c) = (train.len(), test.ids.len(), vocab.len());
    let exp = "bench";

    // Folds: a fixed pseudo-random assignment.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let folds: Vec<Fold> = (0..n).map(|_| Fold(rng.random_range(0..k))).collect();
    write_folds(&store, &keys::folds(exp), &train.ids, &folds, &FoldsMeta { k, seed: 7, method: "random".into() }).await?;

    // Class priors: log-odds of each class's frequency.
    let mut freq = vec![1u32; c];
    for l in &train.labels {
        for a in l {
            freq[a.0 as usize] += 1;
        }
    }
    let prior: Vec<f32> = freq.iter().map(|&f| ((f as f32 / n as f32) / (1.0 - f as f32 / n as f32)).ln() - 1.0).collect();
    let labels: Vec<Vec<u16>> = train.labels.iter().map(|l| l.iter().map(|a| a.0).collect()).collect();
    let test_labels: Vec<&Vec<u16>> = (0..nt).map(|_| &labels[rng.random_range(0..n)]).collect();
    let members: Vec<String> = (0..models).map(|m| format!("model{m}")).collect();
    for (mi, model) in members.iter().enumerate() {
        for f in 0..k {
            let rows: Vec<usize> = (0..n).filter(|&i| folds[i].0 == f).collect();
            let mut probs = vec![0f32; rows.len() * c];
            probs.par_chunks_mut(c).zip(rows.par_iter()).for_each(|(o, &i)| {
                row(o, &labels[i], &prior, mi, i as u64, 1 << 62 | (mi as u64) << 40 | i as u64)
            });
            let meta = |kind| PredictionMeta {
                experiment: exp.into(),
                model: model.clone(),
                fold: Some(Fold(f)),
                kind,
                tta: 2,
                spec_hash: "bench".into(),
                class_count: c,
                vocabulary_hash: vocab.hash(),
            };
            let oof = Predictions { ids: rows.iter().map(|&i| train.ids[i].clone()).collect(), probs, meta: meta(PredictionKind::Oof) };
            write_predictions(&store, &keys::oof(exp, model, Fold(f)), &oof).await?;
            drop(oof);
            let mut tp = vec![0f32; nt * c];
            tp.par_chunks_mut(c).enumerate().for_each(|(i, o)| {
                row(o, test_labels[i], &prior, mi, 1 << 60 | i as u64, 1 << 61 | (mi as u64) << 40 | (f as u64) << 32 | i as u64)
            });
            let t = Predictions { ids: test.ids.clone(), probs: tp, meta: meta(PredictionKind::Test) };
            write_predictions(&store, &keys::test_predictions(exp, model, Fold(f)), &t).await?;
            eprintln!("wrote {model} fold {f}");
        }
    }
    let root = std::fs::canonicalize(&out).map_err(io(&out))?;
    let quoted: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
    let spec = format!(
        "experiment = \"{exp}\"\n\n[storage]\nroot = \"{}\"\n\n[folds]\nk = {k}\n\n[ensemble]\nmembers = [{}]\nblend = \"mean\"\n",
        root.display(),
        quoted.join(", ")
    );
    let p = out.join("bench.toml");
    std::fs::write(&p, spec).map_err(io(&p))?;
    println!("{} train x {c} classes, {nt} test, {models} models x {k} folds under {}", n, root.display());
    Ok(())
}
