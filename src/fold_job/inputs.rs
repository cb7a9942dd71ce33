//! The inputs of a fold job: the fold (from the command line or a batch
//! engine's array index) and the images on each side of it. Reads
//! `data/*.csv` and `runs/{exp}/folds.parquet`.

use crate::data::{load_inputs, Inputs};
use crate::error::{Error, Result};
use crate::ids::{AttributeId, Fold};
use crate::image::loader::Item;
use crate::storage::keys::{self, Split};
use crate::storage::parquet::read_folds;
use crate::storage::Store;

/// Environment variables batch engines put the array index in, in the
/// order they are read by `--fold env`.
pub const FOLD_ENV: [&str; 3] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX"];

/// The fold of `--fold`: a number, or `env` for the batch engine's array
/// index.
///
/// # Errors
/// [`Error::Usage`] for a value that is not a fold below `k`, or `env` with
/// none of [`FOLD_ENV`] set.
pub fn parse_fold(arg: &str, k: u8) -> Result<Fold> {
    let (text, origin) = if arg == "env" {
        let found = FOLD_ENV.iter().find_map(|v| std::env::var(v).ok().map(|s| (s, *v)));
        let (s, v) = found.ok_or_else(|| Error::Usage(format!("--fold env: none of {} is set; pass --fold N", FOLD_ENV.join(", "))))?;
        (s, format!("${v}"))
    } else {
        (arg.to_string(), "--fold".to_string())
    };
    let f: u8 = text
        .trim()
        .parse()
        .map_err(|_| Error::Usage(format!("{origin} = {text:?} is not a fold number (0 to {})", k.saturating_sub(1))))?;
    if f >= k {
        return Err(Error::Usage(format!("{origin} = {f}, but the spec has folds.k = {k} (folds 0 to {})", k - 1)));
    }
    Ok(Fold(f))
}

/// Everything a fold job reads before it starts.
pub struct FoldInputs {
    pub inputs: Inputs,
    /// Images of the other folds (training).
    pub train: Vec<Item>,
    /// Images of this fold (validation, OOF).
    pub valid: Vec<Item>,
    /// Test images (no labels).
    pub test: Vec<Item>,
}

/// Reads the inputs and the experiment's folds and splits the images
/// around the job's fold.
///
/// # Errors
/// Input errors; [`Error::Train`] when `folds.parquet` is missing (run
/// `imet folds` first), was made with another `k`, or misses images of
/// `train.csv`.
pub async fn fold_inputs(store: &Store, job: &super::FoldJob) -> Result<FoldInputs> {
    let inputs = load_inputs(store).await?;
    let key = keys::folds(&job.experiment);
    let fold = job.fold;
    let bad = |message: String| Error::Train { job: job.label(), message };
    if !store.exists(&key).await? {
        return Err(bad(format!("`{key}` is missing: run `imet folds --spec <spec>` (or `imet run`) first")));
    }
    let (ids, folds, meta) = read_folds(store, &key).await?;
    if meta.k != job.k {
        return Err(bad(format!("`{key}` has {} folds but the spec says folds.k = {}; delete it and rerun `imet folds`", meta.k, job.k)));
    }
    let by_id: std::collections::HashMap<&str, Fold> = ids.iter().map(|i| i.as_str()).zip(folds.iter().copied()).collect();
    let mut train = Vec::new();
    let mut valid = Vec::new();
    for (id, labels) in inputs.train.ids.iter().zip(&inputs.train.labels) {
        let f = *by_id.get(id.as_str()).ok_or_else(|| {
            bad(format!("image {} of data/train.csv has no fold in `{key}`; the folds are stale: delete them and rerun `imet folds`", id.as_str()))
        })?;
        let item = Item { key: keys::image(Split::Train, id), id: id.clone(), labels: labels.clone() };
        if f == fold {
            valid.push(item);
        } else {
            train.push(item);
        }
    }
    if valid.is_empty() || train.is_empty() {
        return Err(bad(format!("fold {} leaves {} training and {} validation images", fold.0, train.len(), valid.len())));
    }
    let test = inputs.test.ids.iter().map(|id| Item { key: keys::image(Split::Test, id), id: id.clone(), labels: Vec::<AttributeId>::new() }).collect();
    Ok(FoldInputs { inputs, train, valid, test })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_come_from_the_argument_or_the_array_index() {
        assert_eq!(parse_fold("3", 5).unwrap(), Fold(3));
        let err = parse_fold("5", 5).unwrap_err().to_string();
        assert!(err.contains("folds.k = 5"), "{err}");
        assert!(parse_fold("x", 5).unwrap_err().to_string().contains("--fold"));
        // One test touches the variables, so no other test races with it.
        for v in FOLD_ENV {
            std::env::remove_var(v);
        }
        assert!(parse_fold("env", 5).unwrap_err().to_string().contains("SLURM_ARRAY_TASK_ID"));
        std::env::set_var("JOB_COMPLETION_INDEX", "2");
        assert_eq!(parse_fold("env", 5).unwrap(), Fold(2));
        std::env::set_var("SLURM_ARRAY_TASK_ID", "9");
        assert!(parse_fold("env", 5).unwrap_err().to_string().contains("$SLURM_ARRAY_TASK_ID"));
        for v in FOLD_ENV {
            std::env::remove_var(v);
        }
    }
}
