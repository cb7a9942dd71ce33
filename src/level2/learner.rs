//! The learner of the second-level model: LightGBM 4.7 (gradient-boosted
//! trees, binary log-loss) through the `lightgbm3` crate, which compiles
//! the LightGBM C++ sources it ships (cmake and libclang at build time,
//! nothing downloaded). Trains on a pair-major feature matrix and predicts
//! probabilities; reads and writes nothing.
//!
//! Why LightGBM through `lightgbm3` (evidence and commands in
//! `docs/bench/level2.md`, measured on the same pair table):
//! - Accuracy: it runs the same C++ code as the Python package the
//!   reference solution used, so with the same parameters it reproduces
//!   Python LightGBM's held-out AUC and F2. The pure-Rust `perpetual`
//!   booster (budget 1.0, no tuning) scored 0.002 AUC lower on the same
//!   fold (0.9660 vs 0.9680).
//! - Speed: `perpetual` took several times longer on that fold (2 threads
//!   against LightGBM's 1).
//! - Build: a clean build compiles LightGBM's C++ (about 600 CPU-seconds,
//!   ~5 minutes on 2 idle cores) and needs CMake >= 3.28 and libclang
//!   (`ci/setup-lightgbm.sh`); `perpetual` builds in ~95 CPU-seconds but
//!   every stable release (up to 2.3.0) needs a nightly compiler
//!   (`#![feature(array_ptr_get)]`), and only a 3.0 release candidate
//!   builds on stable Rust.
//! - Maintenance: LightGBM is the most used GBDT library; `lightgbm3`
//!   (11 releases since 2024-08, 1.0.11 in 2026-09) ships LightGBM 4.7.0,
//!   the current Python release.
//!
//! LightGBM is built without OpenMP (the crate's default): each fold
//! model runs on one thread and folds run in parallel
//! ([`super::Level2Config::parallel_folds`]). That keeps a second OpenMP
//! runtime out of a process that also links libtorch, and with
//! `deterministic = true` and a fixed seed the same inputs give the same
//! trees bit for bit. Datasets are built with LightGBM's default binning
//! (255 bins per feature, bins fitted on a 200,000-row sample drawn with
//! seed 1), exactly as the Python package does by default.

use super::Level2Config;
use crate::error::{Error, Result};
use lightgbm3::{Booster, Dataset, ImportanceType};

/// A trained fold model.
pub struct Model {
    booster: Booster,
    features: usize,
}

/// LightGBM parameters for `cfg` (the same names the Python package takes).
pub fn params(cfg: &Level2Config) -> serde_json::Value {
    serde_json::json!({
        "objective": "binary",
        "num_iterations": cfg.rounds,
        "learning_rate": cfg.learning_rate,
        "num_leaves": cfg.num_leaves,
        "max_depth": if cfg.max_depth == 0 { -1 } else { cfg.max_depth as i64 },
        "min_data_in_leaf": cfg.min_data_in_leaf,
        "feature_fraction": cfg.feature_fraction,
        "bagging_fraction": cfg.bagging_fraction,
        "bagging_freq": if cfg.bagging_fraction < 1.0 { 1 } else { 0 },
        "lambda_l2": cfg.lambda_l2,
        "seed": cfg.seed,
        "deterministic": true,
        "force_col_wise": true,
        "num_threads": 1,
        "verbosity": -1,
    })
}

fn lgbm(what: &str, e: lightgbm3::Error) -> Error {
    Error::Level2(format!("LightGBM {what}: {e}"))
}

/// Trains one model on `x` (pair-major `[pairs, features]`) and the 0/1
/// targets `y`.
///
/// # Errors
/// [`Error::Level2`] when the shapes disagree or LightGBM refuses the data.
pub fn train(x: &[f32], y: &[f32], features: usize, cfg: &Level2Config) -> Result<Model> {
    if features == 0 || x.len() != y.len() * features {
        return Err(Error::Level2(format!(
            "training matrix has {} values for {} targets and {features} features; it needs targets x features",
            x.len(),
            y.len()
        )));
    }
    if y.len() > i32::MAX as usize {
        return Err(Error::Level2(format!("{} training pairs exceed LightGBM's limit of {}; lower level2.top_k", y.len(), i32::MAX)));
    }
    let data = Dataset::from_slice(x, y, features as i32, true).map_err(|e| lgbm("dataset", e))?;
    let booster = Booster::train(data, &params(cfg)).map_err(|e| lgbm("training", e))?;
    Ok(Model { booster, features })
}

impl Model {
    /// Probabilities of the pairs of `x` (`[pairs, features]`).
    ///
    /// # Errors
    /// [`Error::Level2`] when `x` has another feature count.
    pub fn predict(&self, x: &[f32]) -> Result<Vec<f32>> {
        if x.is_empty() {
            return Ok(Vec::new());
        }
        if !x.len().is_multiple_of(self.features) {
            return Err(Error::Level2(format!("prediction matrix of {} values is not a whole number of {}-feature rows", x.len(), self.features)));
        }
        let p = self.booster.predict(x, self.features as i32, true).map_err(|e| lgbm("prediction", e))?;
        Ok(p.into_iter().map(|v| v as f32).collect())
    }

    /// Total split gain of each feature.
    ///
    /// # Errors
    /// [`Error::Level2`] when LightGBM fails to report it.
    pub fn gain(&self) -> Result<Vec<f64>> {
        self.booster.feature_importance(ImportanceType::Gain).map_err(|e| lgbm("importance", e))
    }

    /// Features per pair the model was fitted on.
    pub fn features(&self) -> usize {
        self.features
    }

    /// Trees in the model.
    pub fn trees(&self) -> usize {
        self.booster.num_iterations().max(0) as usize
    }

    /// A model saved by [`Model::to_text`] (test-time inference).
    ///
    /// # Errors
    /// [`Error::Level2`] when LightGBM cannot read the text.
    pub fn from_text(text: &str) -> Result<Model> {
        let booster = Booster::from_string(text).map_err(|e| lgbm("model text", e))?;
        let features = booster.num_features().max(0) as usize;
        Ok(Model { booster, features })
    }

    /// The model in LightGBM's text format (loadable by the Python package).
    ///
    /// # Errors
    /// [`Error::Level2`] when LightGBM fails to write it.
    pub fn to_text(&self) -> Result<String> {
        self.booster.save_string().map_err(|e| lgbm("model text", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pairs whose target is 1 when `x0 + 0.5 x1` plus a little noise passes 0.7.
    fn toy(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut x = Vec::with_capacity(n * 3);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let (a, b, c): (f32, f32, f32) = (rng.random(), rng.random(), rng.random());
            x.extend([a, b, c]);
            y.push(((a + 0.5 * b + 0.2 * (rng.random::<f32>() - 0.5)) > 0.7) as u8 as f32);
        }
        (x, y)
    }

    fn small() -> Level2Config {
        Level2Config { rounds: 30, num_leaves: 8, min_data_in_leaf: 5, bagging_fraction: 0.8, feature_fraction: 0.7, ..Level2Config::default() }
    }

    #[test]
    fn learns_a_simple_rule_and_ranks_the_informative_feature_first() {
        let (x, y) = toy(4000, 1);
        let m = train(&x, &y, 3, &small()).unwrap();
        let (xt, yt) = toy(1000, 2);
        let p = m.predict(&xt).unwrap();
        let acc = p.iter().zip(&yt).filter(|(p, y)| ((**p > 0.5) as u8 as f32) == **y).count() as f64 / yt.len() as f64;
        assert!(acc > 0.9, "accuracy {acc}");
        let g = m.gain().unwrap();
        assert!(g[0] > g[1] && g[1] > g[2], "gains {g:?}");
        assert_eq!(m.trees(), 30);
    }

    #[test]
    fn the_same_seed_gives_the_same_model_and_another_seed_another() {
        let (x, y) = toy(3000, 3);
        let a = train(&x, &y, 3, &small()).unwrap().to_text().unwrap();
        let b = train(&x, &y, 3, &small()).unwrap().to_text().unwrap();
        assert_eq!(a, b);
        let c = train(&x, &y, 3, &Level2Config { seed: 7, ..small() }).unwrap().to_text().unwrap();
        assert_ne!(a, c, "bagging with another seed draws other rows");
    }

    #[test]
    fn mismatched_shapes_are_refused_with_the_counts() {
        let err = train(&[0.0; 10], &[0.0; 3], 3, &small()).err().unwrap().to_string();
        assert!(err.contains("10 values for 3 targets and 3 features"), "{err}");
        let (x, y) = toy(500, 4);
        let m = train(&x, &y, 3, &small()).unwrap();
        let err = m.predict(&[0.0; 4]).unwrap_err().to_string();
        assert!(err.contains("3-feature"), "{err}");
    }
}
