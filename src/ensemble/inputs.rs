//! Ensemble step 1: the competition CSVs, each training image's fold, and a
//! check that every member file exists before any work. Reads
//! `data/*.csv`, `runs/{exp}/folds.parquet` and the members' keys; writes
//! nothing.

use super::metric::LabelSets;
use super::EnsembleJob;
use crate::data::{self, Annotations, TestIds, Vocabulary};
use crate::error::{Error, Result};
use crate::ids::{Fold, ImageId};
use crate::storage::parquet as pq;
use crate::storage::{keys, Store};
use std::collections::HashMap;

/// What the ensemble reads before blending.
pub struct Inputs {
    pub vocab: Vocabulary,
    pub train: Annotations,
    pub test: TestIds,
    /// Each training image's fold, in `train.csv` order.
    pub fold_of: Vec<u8>,
    /// Folds every member has OOF files for.
    pub all_folds: Vec<u8>,
    /// Folds whose test files are averaged.
    pub test_folds: Vec<u8>,
    /// The training labels as sorted sets.
    pub truth: LabelSets,
}

/// Reads the inputs of `job` and checks every member file is present.
///
/// # Errors
/// Input errors; [`Error::Member`] naming the first missing file and the
/// command that writes it, or a `folds.parquet` that does not fit.
pub async fn read(store: &Store, job: &EnsembleJob) -> Result<Inputs> {
    let cfg = &job.config;
    let data::Inputs { vocab, train, test } = data::load_inputs(store).await?;
    let fold_of = folds_of(store, job, &train.ids).await?;
    let all_folds: Vec<u8> = (0..job.k).collect();
    let test_folds = cfg.test_folds.clone().unwrap_or_else(|| all_folds.clone());
    for m in &cfg.members {
        for &f in &all_folds {
            let mut want = vec![keys::oof(&job.experiment, m, Fold(f))];
            if test_folds.contains(&f) {
                want.push(keys::test_predictions(&job.experiment, m, Fold(f)));
            }
            for key in want {
                if !store.exists(&key).await? {
                    return Err(Error::Member {
                        key,
                        message: format!("missing; run `imet predict --model {m} --fold {f}` (or `imet run`) before the ensemble"),
                    });
                }
            }
        }
    }
    let truth = LabelSets::from_rows(vocab.len(), train.labels.iter().map(|r| r.iter().map(|a| a.0).collect::<Vec<u16>>()));
    Ok(Inputs { vocab, train, test, fold_of, all_folds, test_folds, truth })
}

/// Each training image's fold, in `train.csv` order.
async fn folds_of(store: &Store, job: &EnsembleJob, train: &[ImageId]) -> Result<Vec<u8>> {
    let key = keys::folds(&job.experiment);
    let (ids, folds, meta) = pq::read_folds(store, &key).await?;
    if meta.k != job.k {
        return Err(Error::Member { key, message: format!("has k = {} folds but the spec says {}; run `imet folds` again", meta.k, job.k) });
    }
    let by_id: HashMap<&str, u8> = ids.iter().zip(&folds).map(|(i, f)| (i.as_str(), f.0)).collect();
    if by_id.len() != train.len() {
        return Err(Error::Member { key, message: format!("covers {} images but data/train.csv has {}", by_id.len(), train.len()) });
    }
    train
        .iter()
        .map(|id| by_id.get(id.as_str()).copied().ok_or_else(|| Error::Member { key: key.clone(), message: format!("training image `{id}` has no fold") }))
        .collect()
}
