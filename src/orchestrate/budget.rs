//! Inference budget (orchestrate stage): estimates the test-time cost of
//! every ensemble member (test images x TTA views x folds used / measured
//! throughput) and says which members fit a budget such as the
//! competition's 9 GPU hours. Throughput comes from the `predict_stats.json`
//! of earlier runs when the store has them, else from a short calibration:
//! the member's network with random weights at its input size, a few
//! forward batches on this machine's device. Reads the store's
//! `data/sample_submission.csv` and predict stats; writes nothing.

use crate::ids::Fold;
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::spec::{JobSpec, ModelSpec};
use crate::storage::{keys, Store};
use serde::Serialize;
use std::time::Instant;

/// What a budget estimate may use.
#[derive(Clone, Debug, Default)]
pub struct BudgetOptions {
    /// Test images to predict; the rows of `data/sample_submission.csv`
    /// in the store when unset.
    pub test_images: Option<usize>,
    /// Calibrate even when earlier runs left throughput measurements.
    pub force_calibration: bool,
    /// Forward batches timed per calibrated member (after one warm-up).
    pub calibration_batches: usize,
}

/// Where a member's throughput comes from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum ThroughputSource {
    /// `predict_stats.json` of earlier predict jobs (`folds` files).
    History { folds: usize, device: String },
    /// Timed forward passes of a randomly initialised network here
    /// (network only: decoding and augmentation are not counted).
    Calibration { device: String, batch: usize, batches: usize },
}

impl ThroughputSource {
    fn describe(&self) -> String {
        match self {
            ThroughputSource::History { folds, device } => format!("history ({folds} fold runs, {device})"),
            ThroughputSource::Calibration { device, batch, batches } => {
                format!("calibration ({device}, {batches} x {batch} images, forward only)")
            }
        }
    }
}

/// One member's estimate.
#[derive(Clone, Debug, Serialize)]
pub struct MemberBudget {
    pub model: String,
    pub arch: String,
    pub size: u32,
    pub test_images: usize,
    /// TTA views per image.
    pub views: usize,
    /// Fold models whose test predictions are used.
    pub folds: usize,
    /// Image views per second through one fold model.
    pub views_per_sec: f64,
    pub source: ThroughputSource,
    pub hours: f64,
    /// Hours of this member and every earlier member that fits.
    pub cumulative_hours: f64,
    pub fits: bool,
}

/// The estimate for every member, in ensemble order.
#[derive(Clone, Debug, Serialize)]
pub struct BudgetReport {
    pub experiment: String,
    pub budget_hours: f64,
    pub members: Vec<MemberBudget>,
    /// Hours of the members that fit.
    pub total_hours: f64,
    /// Hours of every member.
    pub all_hours: f64,
}

impl BudgetReport {
    /// A table of the members and a line naming the ones that fit.
    pub fn render(&self) -> String {
        let width = self.members.iter().map(|m| m.model.len()).max().unwrap_or(6).max(6);
        let mut out = format!(
            "inference budget of `{}`: {:.2} h\n{:<width$}  {:<20} {:>5} {:>8} {:>5} {:>5} {:>10} {:>8} {:>8}  fits  source\n",
            self.experiment, self.budget_hours, "member", "arch", "size", "images", "views", "folds", "views/s", "hours", "cum. h"
        );
        for m in &self.members {
            out.push_str(&format!(
                "{:<width$}  {:<20} {:>5} {:>8} {:>5} {:>5} {:>10.1} {:>8.2} {:>8.2}  {:<4}  {}\n",
                m.model,
                m.arch,
                m.size,
                m.test_images,
                m.views,
                m.folds,
                m.views_per_sec,
                m.hours,
                m.cumulative_hours,
                if m.fits { "yes" } else { "no" },
                m.source.describe()
            ));
        }
        let fit: Vec<&str> = self.members.iter().filter(|m| m.fits).map(|m| m.model.as_str()).collect();
        let left: Vec<&str> = self.members.iter().filter(|m| !m.fits).map(|m| m.model.as_str()).collect();
        out.push_str(&format!(
            "fit in {:.2} h: {} ({:.2} h of {:.2} h for all members)",
            self.budget_hours,
            if fit.is_empty() { "none".to_string() } else { fit.join(", ") },
            self.total_hours,
            self.all_hours
        ));
        if !left.is_empty() {
            out.push_str(&format!("; left out: {}", left.join(", ")));
        }
        out.push('\n');
        out
    }
}


/// Estimates each ensemble member's test-time hours (every model when the
/// spec has no ensemble) and which fit `budget_s`, taken greedily in
/// member order: a member that does not fit in what is left is left out
/// and later ones may still fit.
///
/// # Errors
/// [`Error::Usage`] when the number of test images is unknown (no
/// `data/sample_submission.csv` in the store and no `test_images`) or the
/// spec names no model; store and torch errors.
pub async fn estimate(spec: &JobSpec, store: Option<&Store>, budget_s: u64, options: &BudgetOptions) -> Result<BudgetReport> {
    let test_images = match (options.test_images, store) {
        (Some(n), _) => n,
        (None, Some(store)) => count_test_images(store).await?,
        (None, None) => {
            return Err(Error::Usage("the number of test images is unknown: pass --test-images N or a store with data/sample_submission.csv".into()))
        }
    };
    let members: Vec<&ModelSpec> = match &spec.ensemble {
        Some(e) => e.members.iter().map(|m| spec.model(m)).collect::<Result<_>>()?,
        None => spec.models.iter().collect(),
    };
    if members.is_empty() {
        return Err(Error::Usage(format!("spec of `{}` has no [[models]] to estimate", spec.experiment)));
    }
    let folds = spec.ensemble.as_ref().and_then(|e| e.test_folds.as_ref()).map_or(spec.folds.k as usize, |f| f.len());
    let budget_hours = budget_s as f64 / 3600.0;
    let mut out = Vec::with_capacity(members.len());
    let mut cumulative = 0.0;
    let mut all = 0.0;
    for m in members {
        let views = m.tta.as_ref().unwrap_or(&spec.image.tta).views().len();
        let history = match (store, options.force_calibration) {
            (Some(store), false) => history(store, &spec.experiment, m, spec.folds.k).await?,
            _ => None,
        };
        let (views_per_sec, source) = match history {
            Some(h) => h,
            None => calibrate(m, options.calibration_batches.max(1)).await?,
        };
        let hours = (test_images * views * folds) as f64 / views_per_sec.max(1e-9) / 3600.0;
        all += hours;
        let fits = cumulative + hours <= budget_hours;
        if fits {
            cumulative += hours;
        }
        out.push(MemberBudget {
            model: m.name.clone(),
            arch: m.arch.name().into(),
            size: m.size,
            test_images,
            views,
            folds,
            views_per_sec,
            source,
            hours,
            cumulative_hours: cumulative,
            fits,
        });
    }
    Ok(BudgetReport { experiment: spec.experiment.clone(), budget_hours, members: out, total_hours: cumulative, all_hours: all })
}

/// `imet budget`: parses `budget` (`"9h"`, `"1h30m"`), opens the spec's
/// store and runs [`estimate`].
///
/// # Errors
/// [`Error::Usage`] for a budget that is not a duration, and the errors of
/// [`estimate`].
pub async fn estimate_spec(
    spec: &JobSpec,
    budget: &str,
    test_images: Option<usize>,
    force_calibration: bool,
    calibration_batches: usize,
) -> Result<BudgetReport> {
    let budget_s = crate::spec::parse_duration(budget).map_err(|e| Error::Usage(format!("--budget: {e}")))?;
    let store = spec.open_store()?;
    let options = BudgetOptions { test_images, force_calibration, calibration_batches };
    estimate(spec, Some(&store), budget_s, &options).await
}

/// Rows of `data/sample_submission.csv` (header excluded).
///
/// # Errors
/// [`Error::NotFound`] when the store has no such file.
pub async fn count_test_images(store: &Store) -> Result<usize> {
    let bytes = store.get(keys::SAMPLE_SUBMISSION).await?;
    let rows = bytes.split(|&b| b == b'\n').filter(|l| !l.iter().all(|b| b.is_ascii_whitespace())).count();
    Ok(rows.saturating_sub(1))
}

/// Image views per second through one fold model, from the fold jobs'
/// `predict_stats.json`: total views over total seconds.
async fn history(store: &Store, experiment: &str, m: &ModelSpec, k: u8) -> Result<Option<(f64, ThroughputSource)>> {
    let (mut views, mut seconds, mut runs) = (0.0, 0.0, 0usize);
    let mut device = String::new();
    for fold in 0..k {
        let key = keys::predict_stats(experiment, &m.name, Fold(fold));
        let Some(bytes) = store.get_opt(&key).await? else { continue };
        let s: crate::predict::PredictStats = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Format { key: key.clone(), what: "predict stats", reason: e.to_string() })?;
        if s.seconds > 0.0 && s.images > 0 {
            views += (s.images * s.views.max(1)) as f64;
            seconds += s.seconds;
            runs += 1;
            device = s.device;
        }
    }
    if runs == 0 {
        return Ok(None);
    }
    Ok(Some((views / seconds, ThroughputSource::History { folds: runs, device })))
}

/// Times `batches` forward passes (after one warm-up) of `m`'s network
/// with random weights at its input size on the best device here.
async fn calibrate(m: &ModelSpec, batches: usize) -> Result<(f64, ThroughputSource)> {
    let m = m.clone();
    tokio::task::spawn_blocking(move || calibrate_blocking(&m, batches)).await?
}

fn calibrate_blocking(m: &ModelSpec, batches: usize) -> Result<(f64, ThroughputSource)> {
    let device = crate::fold_job::device();
    let batch = if device.is_cuda() { m.predict_batch() } else { m.predict_batch().min(4) };
    let mut config: ModelConfig = m.network(crate::model::DEFAULT_CLASSES);
    config.weights = None;
    if config.arch == crate::model::Arch::Torchscript {
        return Err(Error::Usage(format!(
            "model `{}` is a TorchScript module: run its predict job once so predict_stats.json gives its throughput",
            m.name
        )));
    }
    let vs = tch::nn::VarStore::new(device);
    let model = config.build(&vs)?;
    let size = m.size as i64;
    let xs = tch::Tensor::randn([batch as i64, 3, size, size], (tch::Kind::Float, device));
    let _guard = tch::no_grad_guard();
    let run = |model: &crate::model::Model| {
        let y = tch::nn::ModuleT::forward_t(model, &xs, false);
        let _ = y.sum(tch::Kind::Float).double_value(&[]);
    };
    run(&model);
    let start = Instant::now();
    for _ in 0..batches {
        run(&model);
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let name = if device.is_cuda() { "cuda:0".to_string() } else { format!("cpu ({} threads)", tch::get_num_threads()) };
    Ok(((batch * batches) as f64 / secs, ThroughputSource::Calibration { device: name, batch, batches }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
experiment = "b"
[storage]
root = "memory://"
[folds]
k = 4
[[models]]
name = "big"
arch = "resnet18"
size = 32
train = { batch_size = 4, phases = [{ epochs = 1, optimizer = { kind = "sgd", lr = 0.1 } }] }
[[models]]
name = "small"
arch = "resnet18"
size = 32
tta = { hflip = false }
train = { batch_size = 4, phases = [{ epochs = 1, optimizer = { kind = "sgd", lr = 0.1 } }] }
[ensemble]
members = ["big", "small"]
test_folds = [0, 1, 2]
"#;

    async fn stats(store: &Store, model: &str, fold: u8, images: u64, views: u64, seconds: f64) {
        let body = serde_json::json!({ "images": images, "views": views, "seconds": seconds, "images_per_sec": images as f64 / seconds, "device": "cuda:0" });
        store.put(&keys::predict_stats("b", model, Fold(fold)), body.to_string()).await.unwrap();
    }

    #[tokio::test]
    async fn history_gives_hours_and_members_are_taken_greedily() {
        let spec = JobSpec::parse("b.toml", SPEC).unwrap();
        let store = Store::memory();
        store.put(keys::SAMPLE_SUBMISSION, "id,attribute_ids\na,0\nb,0\nc,0\n").await.unwrap();
        // big: 2 views, 100 views/s; small: 1 view, 10 views/s.
        stats(&store, "big", 0, 1000, 2, 10.0).await;
        stats(&store, "big", 1, 500, 2, 10.0).await;
        stats(&store, "small", 0, 100, 1, 10.0).await;
        let options = BudgetOptions { test_images: Some(36_000), ..Default::default() };
        let r = estimate(&spec, Some(&store), 3 * 3600, &options).await.unwrap();
        let big = &r.members[0];
        assert_eq!((big.views, big.folds, big.views_per_sec), (2, 3, 150.0));
        assert!((big.hours - 36_000.0 * 6.0 / 150.0 / 3600.0).abs() < 1e-9, "{}", big.hours);
        assert!(big.fits);
        let small = &r.members[1];
        assert_eq!((small.views, small.views_per_sec), (1, 10.0));
        assert!((small.hours - 3.0).abs() < 1e-9);
        assert!(!small.fits, "0.4 h + 3 h exceed 3 h");
        assert!(matches!(small.source, ThroughputSource::History { folds: 1, .. }));
        assert!(r.render().contains("left out: small"), "{}", r.render());
        let rows = count_test_images(&store).await.unwrap();
        assert_eq!(rows, 3);
    }

    #[tokio::test]
    async fn without_history_a_calibration_run_measures_the_network() {
        let spec = JobSpec::parse("b.toml", SPEC).unwrap();
        let options = BudgetOptions { test_images: Some(100), calibration_batches: 1, ..Default::default() };
        let r = estimate(&spec, None, 3600, &options).await.unwrap();
        for m in &r.members {
            assert!(m.views_per_sec > 0.0);
            assert!(matches!(m.source, ThroughputSource::Calibration { batches: 1, .. }), "{:?}", m.source);
        }
        assert!(r.render().contains("calibration"));
    }

    #[tokio::test]
    async fn an_unknown_test_set_size_is_refused() {
        let spec = JobSpec::parse("b.toml", SPEC).unwrap();
        let err = estimate(&spec, None, 3600, &BudgetOptions::default()).await.unwrap_err().to_string();
        assert!(err.contains("--test-images"), "{err}");
    }
}
