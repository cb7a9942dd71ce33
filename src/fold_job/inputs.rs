//! The inputs of a fold job: the fold (from the command line or a batch
//! engine's array index) and the images on each side of it. Reads
//! `data/*.csv` and `runs/{exp}/folds.parquet`.

use crate::data::{load_inputs, Inputs};
use crate::error::{Error, Result};
use crate::ids::{AttributeId, Fold};
use crate::image::loader::Item;
use crate::storage::keys::{self, Split};
use crate::ids::ImageId;
use crate::storage::parquet::{read_folds, read_predictions, read_scored_ids};
use std::collections::{HashMap, HashSet};
use crate::storage::Store;

/// Environment variables batch engines put the array index in, in the
/// order they are read by `--fold env`.
pub const FOLD_ENV: [&str; 3] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX"];

/// The variable that maps an array index to a fold, for engines whose
/// indices run from 0 (Kubernetes, AWS Batch) when a job array covers only
/// some folds: `IMET_FOLDS=10,11,12` makes index 1 fold 11.
pub const FOLDS_ENV: &str = "IMET_FOLDS";

/// The fold of `--fold`: a number, or `env` for the batch engine's array
/// index (through [`FOLDS_ENV`] when set).
///
/// # Errors
/// [`Error::Usage`] for a value that is not a fold below `k`, or `env` with
/// none of [`FOLD_ENV`] set, or an index beyond [`FOLDS_ENV`].
pub fn parse_fold(arg: &str, k: u8) -> Result<Fold> {
    let (text, origin) = if arg == "env" {
        let found = FOLD_ENV.iter().find_map(|v| std::env::var(v).ok().map(|s| (s, *v)));
        let (s, v) = found.ok_or_else(|| Error::Usage(format!("--fold env: none of {} is set; pass --fold N", FOLD_ENV.join(", "))))?;
        match std::env::var(FOLDS_ENV) {
            Ok(list) => {
                let index: usize = s.trim().parse().map_err(|_| Error::Usage(format!("${v} = {s:?} is not an array index")))?;
                let folds: Vec<&str> = list.split(',').map(str::trim).filter(|f| !f.is_empty()).collect();
                let f = folds.get(index).ok_or_else(|| {
                    Error::Usage(format!("${v} = {index} but ${FOLDS_ENV} = {list:?} lists {} folds", folds.len()))
                })?;
                (f.to_string(), format!("${FOLDS_ENV}[{index}]"))
            }
            Err(_) => (s, format!("${v}")),
        }
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
    /// Training images the stage's edits left out, and test images they added.
    pub dropped: usize,
    pub pseudo: usize,
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
        let item = Item::new(keys::image(Split::Train, id), id.clone(), labels.clone());
        if f == fold {
            valid.push(item);
        } else {
            train.push(item);
        }
    }
    if valid.is_empty() || train.is_empty() {
        return Err(bad(format!("fold {} leaves {} training and {} validation images", fold.0, train.len(), valid.len())));
    }
    let test = inputs.test.ids.iter().map(|id| Item::new(keys::image(Split::Test, id), id.clone(), Vec::<AttributeId>::new())).collect();
    let mut out = FoldInputs { inputs, train, valid, test, dropped: 0, pseudo: 0 };
    job.edits.apply(store, &mut out, &job.label()).await?;
    Ok(out)
}

/// A stage's edits of its training data, as the keys of the committed
/// products that hold them (`curate`'s outputs). Validation and prediction
/// images are never edited: a dropped image is still predicted, so the
/// out-of-fold predictions stay complete.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DataEdits {
    /// Scored ids of the training images to leave out.
    pub dropped: Option<String>,
    /// Scored ids of the test images to add, and their targets (a
    /// predictions file: 0/1 rows for hard labels, probabilities for soft).
    pub pseudo: Option<(String, String)>,
    /// A teacher's out-of-fold predictions, and the weight of its
    /// probabilities in the training targets.
    pub distill: Option<(String, f64)>,
}

impl DataEdits {
    /// Whether there is nothing to edit.
    pub fn is_empty(&self) -> bool {
        *self == DataEdits::default()
    }

    /// Applies the edits to the training side of `f`.
    ///
    /// # Errors
    /// Read errors of the products; [`Error::Train`] when pseudo-labels
    /// name images that are not test images.
    pub async fn apply(&self, store: &Store, f: &mut FoldInputs, job: &str) -> Result<()> {
        if let Some(key) = &self.dropped {
            let dropped: HashSet<ImageId> = read_scored_ids(store, key).await?.ids.into_iter().collect();
            let before = f.train.len();
            f.train.retain(|i| !dropped.contains(&i.id));
            f.dropped = before - f.train.len();
        }
        if let Some((key, weight)) = &self.distill {
            let teacher = read_predictions(store, key).await?;
            check_classes(key, teacher.classes(), f.inputs.vocab.len())?;
            let row: HashMap<&ImageId, usize> = teacher.ids.iter().enumerate().map(|(r, id)| (id, r)).collect();
            for item in &mut f.train {
                if let Some(&r) = row.get(&item.id) {
                    let mut t: Vec<f32> = teacher.row(r).iter().map(|p| *weight as f32 * p).collect();
                    for a in &item.labels {
                        t[a.0 as usize] += 1.0 - *weight as f32;
                    }
                    item.soft = Some(t.into());
                }
            }
        }
        if let Some((ids_key, targets_key)) = &self.pseudo {
            let targets = read_predictions(store, targets_key).await?;
            check_classes(targets_key, targets.classes(), f.inputs.vocab.len())?;
            let test: HashSet<&ImageId> = f.inputs.test.ids.iter().collect();
            let chosen: HashSet<ImageId> = read_scored_ids(store, ids_key).await?.ids.into_iter().collect();
            for (r, id) in targets.ids.iter().enumerate() {
                if !chosen.contains(id) {
                    continue;
                }
                if !test.contains(id) {
                    return Err(Error::Train { job: job.to_string(), message: format!("`{targets_key}` pseudo-labels `{id}`, which is not a test image of data/sample_submission.csv") });
                }
                let t = targets.row(r);
                let labels: Vec<AttributeId> = (0..t.len()).filter(|&c| t[c] >= 0.5).map(|c| AttributeId(c as u16)).collect();
                let hard = t.iter().all(|&v| v == 0.0 || v == 1.0);
                let mut item = Item::new(keys::image(Split::Test, id), id.clone(), labels);
                if !hard {
                    item.soft = Some(t.to_vec().into());
                }
                f.train.push(item);
                f.pseudo += 1;
            }
        }
        Ok(())
    }
}

fn check_classes(key: &str, found: usize, want: usize) -> Result<()> {
    if found != want {
        return Err(Error::Format { key: key.to_string(), what: "stage data", reason: format!("has {found} classes but data/labels.csv has {want}") });
    }
    Ok(())
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
        std::env::set_var(FOLDS_ENV, "10, 12,14");
        std::env::set_var("SLURM_ARRAY_TASK_ID", "2");
        assert_eq!(parse_fold("env", 20).unwrap(), Fold(14));
        std::env::set_var("SLURM_ARRAY_TASK_ID", "3");
        assert!(parse_fold("env", 20).unwrap_err().to_string().contains("IMET_FOLDS"));
        std::env::remove_var(FOLDS_ENV);
        for v in FOLD_ENV {
            std::env::remove_var(v);
        }
    }
}
