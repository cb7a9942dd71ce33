//! Learning curves of an experiment: reads `history.parquet` of every
//! fold of every model from the store, summarises each fold (epochs, best
//! epoch and F2, last losses, speed), draws `runs/{exp}/report/curves-{model}.png`
//! per model and stores the summary as `runs/{exp}/report/curves.json`.
//! A fold without history is reported as missing; a history that does not
//! read is reported with its error; neither stops the report.

use super::plot;
use crate::error::{Error, Result};
use crate::spec::JobSpec;
use crate::storage::parquet::{read_history, EpochRecord};
use crate::storage::keys::{self, Scope};
use crate::storage::Store;
use crate::ids::Fold;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where a fold's training stands, from the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum FoldState {
    /// `_TRAINED.json` is committed.
    Trained,
    /// A history exists but the job has not committed (running, or stopped
    /// and resumable).
    Training,
    /// No history yet: the fold has not finished an epoch.
    Missing,
    /// The history exists but does not read (the reason says why).
    Unreadable(String),
}

impl FoldState {
    fn label(&self) -> &'static str {
        match self {
            FoldState::Trained => "trained",
            FoldState::Training => "training",
            FoldState::Missing => "missing",
            FoldState::Unreadable(_) => "unreadable",
        }
    }
}

/// One fold of one model: its history and summary.
#[derive(Clone, Debug, Serialize)]
pub struct FoldCurve {
    pub fold: u8,
    #[serde(flatten)]
    pub state: FoldState,
    /// The history's key in the store.
    pub history_key: String,
    pub epochs: usize,
    /// Epoch (1-based) with the highest validation F2, and that F2.
    pub best_epoch: Option<u32>,
    pub best_f2: Option<f64>,
    pub last_train_loss: Option<f64>,
    pub last_valid_loss: Option<f64>,
    /// Mean training images per second over the epochs.
    pub images_per_sec: Option<f64>,
    /// Wall seconds of all epochs.
    pub seconds: f64,
    /// Every epoch, as in `history.parquet`.
    pub history: Vec<EpochRecord>,
}

impl FoldCurve {
    /// Summarises `history` of fold `fold`.
    pub fn new(fold: u8, state: FoldState, history_key: String, history: Vec<EpochRecord>) -> FoldCurve {
        let best = history
            .iter()
            .filter(|r| r.valid_f2.is_finite())
            .fold(None::<&EpochRecord>, |b, r| if b.is_none_or(|b| r.valid_f2 > b.valid_f2) { Some(r) } else { b });
        let speeds: Vec<f64> = history.iter().map(|r| r.train_images_per_sec).filter(|v| v.is_finite()).collect();
        FoldCurve {
            fold,
            state,
            history_key,
            epochs: history.len(),
            best_epoch: best.map(|r| r.epoch),
            best_f2: best.map(|r| r.valid_f2),
            last_train_loss: history.last().map(|r| r.train_loss),
            last_valid_loss: history.last().map(|r| r.valid_loss),
            images_per_sec: (!speeds.is_empty()).then(|| speeds.iter().sum::<f64>() / speeds.len() as f64),
            seconds: history.iter().map(|r| r.seconds).filter(|s| s.is_finite()).sum(),
            history,
        }
    }
}

/// Every fold of one model.
#[derive(Clone, Debug, Serialize)]
pub struct ModelCurves {
    pub model: String,
    pub folds: Vec<FoldCurve>,
    /// Mean of the folds' best F2, over folds with a history.
    pub mean_best_f2: Option<f64>,
    /// Where the PNG went (store location), when the model has any history.
    pub plot: Option<String>,
}

impl ModelCurves {
    /// Gathers `folds` of `model` and their mean best F2.
    pub fn new(model: &str, folds: Vec<FoldCurve>) -> ModelCurves {
        let best: Vec<f64> = folds.iter().filter_map(|f| f.best_f2).collect();
        ModelCurves {
            model: model.to_string(),
            mean_best_f2: (!best.is_empty()).then(|| best.iter().sum::<f64>() / best.len() as f64),
            folds,
            plot: None,
        }
    }

    /// Folds with at least one epoch.
    pub fn folds_with_history(&self) -> usize {
        self.folds.iter().filter(|f| f.epochs > 0).count()
    }
}

/// `imet report`: every model's curves, what is missing, where the plots are.
#[derive(Clone, Debug, Serialize)]
pub struct CurvesReport {
    pub experiment: String,
    /// The store's URL.
    pub store: String,
    pub k: u8,
    pub models: Vec<ModelCurves>,
    /// `model fold k` of folds without a readable history.
    pub missing: Vec<String>,
    /// Locations of the ensemble's plots (`runs/{exp}/ensemble/plots/*.png`), when it has run.
    pub ensemble_plots: Vec<String>,
    /// Locations this report wrote (store, and `--out` files).
    pub written: Vec<String>,
}

/// What `imet report` does besides reading.
#[derive(Clone, Debug, Default)]
pub struct ReportOptions {
    /// Also copy the PNGs and `curves.json` into this local folder.
    pub out: Option<PathBuf>,
}

/// Where `key` of `store` is, for a person: a local path for `file://`
/// stores, the URL otherwise.
pub fn location(store: &Store, key: &str) -> String {
    let url = store.url();
    let base = url.strip_prefix("file://").unwrap_or(url);
    if base.ends_with('/') {
        format!("{base}{key}")
    } else {
        format!("{base}/{key}")
    }
}

/// Reads every fold's history of every model of every stage of `spec`
/// (the folds each model trains); a later stage's models are named
/// `{stage}/{model}`.
///
/// # Errors
/// Store errors other than a missing object (a missing history is a
/// [`FoldState::Missing`] fold; an unreadable one an [`FoldState::Unreadable`] fold).
pub async fn gather(store: &Store, spec: &JobSpec) -> Result<Vec<ModelCurves>> {
    let exp = spec.experiment.as_str();
    let mut members = Vec::new();
    for stage in spec.stages() {
        let later = stage.spec.is_some();
        for m in stage.models {
            let label = if later { format!("{}/{}", stage.name, m.name) } else { m.name.clone() };
            let scope = Scope { experiment: exp, stage: later.then_some(stage.name) };
            members.push((label, scope, m.name.clone(), m.fold_list(spec.folds.k)));
        }
    }
    let jobs = members.iter().flat_map(|(label, scope, model, folds)| folds.iter().map(move |&f| (label, *scope, model, Fold(f))));
    let folds = futures::future::try_join_all(jobs.map(|(label, scope, model, fold)| async move {
        let key = keys::history(scope, model, fold);
        let curve = if !store.exists(&key).await? {
            FoldCurve::new(fold.0, FoldState::Missing, key, Vec::new())
        } else {
            match read_history(store, &key).await {
                Ok(history) => {
                    let trained = store.exists(&keys::trained(scope, model, fold)).await?;
                    FoldCurve::new(fold.0, if trained { FoldState::Trained } else { FoldState::Training }, key, history)
                }
                Err(e @ (Error::Format { .. } | Error::Parquet(_) | Error::Arrow(_))) => {
                    FoldCurve::new(fold.0, FoldState::Unreadable(e.to_string()), key, Vec::new())
                }
                Err(e) => return Err(e),
            }
        };
        Ok::<_, Error>((label.clone(), curve))
    }))
    .await?;
    Ok(members
        .iter()
        .map(|(label, ..)| ModelCurves::new(label, folds.iter().filter(|(name, _)| name == label).map(|(_, c)| c.clone()).collect()))
        .collect())
}

/// Builds the report of `spec`'s experiment: reads the histories, stores
/// one PNG per model with any history and `curves.json`, copies them to
/// `options.out` when set, and lists the ensemble's plots.
///
/// # Errors
/// Store errors, [`Error::Report`] when a plot cannot be drawn,
/// [`Error::Io`] naming the `--out` file that cannot be written.
pub async fn run(spec: &JobSpec, options: &ReportOptions) -> Result<CurvesReport> {
    let store = spec.open_store()?;
    build(&store, spec, options).await
}

/// [`run`] on an opened store.
///
/// # Errors
/// As [`run`].
pub async fn build(store: &Store, spec: &JobSpec, options: &ReportOptions) -> Result<CurvesReport> {
    let exp = &spec.experiment;
    let mut models = gather(store, spec).await?;
    let mut written = Vec::new();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for m in &mut models {
        if m.folds_with_history() == 0 {
            continue;
        }
        let curves = m.clone();
        let png = tokio::task::spawn_blocking(move || plot::curves_png(&curves)).await??;
        let key = keys::curves_plot(exp, &m.model.replace('/', "-"));
        store.put(&key, png.clone()).await?;
        m.plot = Some(location(store, &key));
        written.push(location(store, &key));
        files.push((format!("curves-{}.png", m.model.replace('/', "-")), png));
    }
    let missing = models
        .iter()
        .flat_map(|m| m.folds.iter().filter(|f| f.epochs == 0).map(move |f| format!("{} fold {}", m.model, f.fold)))
        .collect();
    let ensemble_plots = store
        .list(&keys::plots_dir(exp))
        .await?
        .into_iter()
        .filter(|o| o.key.ends_with(".png"))
        .map(|o| location(store, &o.key))
        .collect();
    let json_key = keys::curves_report(exp);
    let mut report = CurvesReport { experiment: exp.clone(), store: store.url().to_string(), k: spec.folds.k, models, missing, ensemble_plots, written };
    report.written.push(location(store, &json_key));
    if let Some(dir) = &options.out {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
        for (name, _) in &files {
            report.written.push(dir.join(name).display().to_string());
        }
        report.written.push(dir.join("curves.json").display().to_string());
    }
    let json = serde_json::to_vec_pretty(&report)?;
    store.put(&json_key, json.clone()).await?;
    if let Some(dir) = &options.out {
        files.push(("curves.json".to_string(), json));
        for (name, bytes) in &files {
            write_local(&dir.join(name), bytes)?;
        }
    }
    Ok(report)
}

fn write_local(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

fn num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) => format!("{x:.digits$}"),
        None => "-".into(),
    }
}

impl CurvesReport {
    /// The report as a text table, then the missing folds and the plots.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "experiment `{}` ({}): {} model(s), {} fold(s) each", self.experiment, self.store, self.models.len(), self.k);
        let _ = writeln!(
            s,
            "{:<16} {:>4}  {:<10} {:>6} {:>6} {:>8} {:>11} {:>11} {:>9} {:>8}",
            "model", "fold", "state", "epochs", "best", "best F2", "train loss", "valid loss", "images/s", "seconds"
        );
        for m in &self.models {
            for f in &m.folds {
                let _ = writeln!(
                    s,
                    "{:<16} {:>4}  {:<10} {:>6} {:>6} {:>8} {:>11} {:>11} {:>9} {:>8}",
                    m.model,
                    f.fold,
                    f.state.label(),
                    f.epochs,
                    f.best_epoch.map_or("-".into(), |e| e.to_string()),
                    num(f.best_f2, 4),
                    num(f.last_train_loss, 4),
                    num(f.last_valid_loss, 4),
                    num(f.images_per_sec, 1),
                    if f.epochs > 0 { format!("{:.0}", f.seconds) } else { "-".into() },
                );
            }
        }
        let _ = writeln!(s);
        for m in &self.models {
            let _ = writeln!(s, "{}: mean best F2 {} over {}/{} fold(s)", m.model, num(m.mean_best_f2, 4), m.folds_with_history(), m.folds.len());
        }
        if !self.missing.is_empty() {
            let _ = writeln!(s, "\nno history yet (not trained, or no epoch finished): {}", self.missing.join(", "));
            let _ = writeln!(s, "  train them with `imet run --spec SPEC` or `imet train --spec SPEC --model M --fold K`");
        }
        for m in &self.models {
            for f in &m.folds {
                if let FoldState::Unreadable(reason) = &f.state {
                    let _ = writeln!(s, "{} fold {}: {reason}", m.model, f.fold);
                }
            }
        }
        let _ = writeln!(s, "\nwritten:");
        for w in &self.written {
            let _ = writeln!(s, "  {w}");
        }
        if self.ensemble_plots.is_empty() {
            let _ = writeln!(s, "ensemble plots: none yet (`imet ensemble --spec SPEC` draws them)");
        } else {
            let _ = writeln!(s, "ensemble plots:");
            for p in &self.ensemble_plots {
                let _ = writeln!(s, "  {p}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: u32, f2: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            phase: "main".into(),
            train_loss: 1.0 / epoch as f64,
            valid_loss: 0.5,
            valid_f2: f2,
            valid_threshold: 0.2,
            valid_f2_culture: 0.3,
            valid_f2_tag: 0.4,
            lr: 1e-3,
            train_images_per_sec: 10.0 * epoch as f64,
            seconds: 2.0,
        }
    }

    #[test]
    fn a_fold_summary_takes_the_first_best_epoch_and_ignores_nan_f2() {
        let f = FoldCurve::new(0, FoldState::Trained, "k".into(), vec![rec(1, 0.3), rec(2, f64::NAN), rec(3, 0.5), rec(4, 0.5)]);
        assert_eq!((f.best_epoch, f.best_f2), (Some(3), Some(0.5)));
        assert_eq!(f.images_per_sec, Some(25.0));
        assert_eq!((f.last_train_loss, f.seconds), (Some(0.25), 8.0));
    }

    #[test]
    fn the_mean_best_f2_skips_folds_without_history() {
        let m = ModelCurves::new(
            "r18",
            vec![
                FoldCurve::new(0, FoldState::Trained, "a".into(), vec![rec(1, 0.4)]),
                FoldCurve::new(1, FoldState::Missing, "b".into(), vec![]),
                FoldCurve::new(2, FoldState::Training, "c".into(), vec![rec(1, 0.6)]),
            ],
        );
        assert!((m.mean_best_f2.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(m.folds_with_history(), 2);
    }

    #[test]
    fn local_stores_show_paths_and_others_urls() {
        let store = Store::memory();
        assert_eq!(location(&store, "runs/e/x.png"), "memory://runs/e/x.png");
        let local = Store::open("file:///tmp/imet-location-test/").unwrap();
        assert_eq!(location(&local, "runs/e/x.png"), "/tmp/imet-location-test/runs/e/x.png");
    }
}
