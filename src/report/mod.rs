//! Report stage (`imet report`): what training did, for a person to look
//! at. Reads every fold's `history.parquet` of every model of an
//! experiment (folds not trained yet are reported, not fatal) and writes,
//! under `runs/{exp}/report/`, one learning-curve PNG per model
//! (`curves-{model}.png`: losses and validation F2 by epoch, a line per
//! fold) and `curves.json`; lists the ensemble's plots when they exist.
//! Reads only what the train and ensemble stages wrote; nothing reads
//! what it writes.

pub mod curves;
pub mod plot;

pub use curves::{run, CurvesReport, FoldCurve, FoldState, ModelCurves, ReportOptions};
