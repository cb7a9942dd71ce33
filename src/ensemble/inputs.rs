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
    /// Per member (in `members` order), the folds it has OOF files for.
    pub oof_folds: Vec<Vec<u8>>,
    /// Per member, the folds whose test files are averaged.
    pub test_folds: Vec<Vec<u8>>,
    /// Whether some member predicts each training image (all, unless
    /// members train on fold subsets).
    pub covered: Vec<bool>,
    /// The training labels as sorted sets.
    pub truth: LabelSets,
}

impl Inputs {
    /// Whether every training image has a prediction from every member.
    pub fn full_coverage(&self) -> bool {
        let k = self.oof_folds.first().map_or(0, Vec::len);
        self.oof_folds.iter().all(|f| f.len() == k) && self.covered.iter().all(|&c| c) && self.oof_folds.windows(2).all(|w| w[0] == w[1])
    }

    /// Folds whose test files are averaged, over every member.
    pub fn union_test_folds(&self) -> Vec<u8> {
        let mut all: Vec<u8> = self.test_folds.iter().flatten().copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }
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
    let mut oof_folds = Vec::new();
    let mut test_folds = Vec::new();
    for m in &cfg.members {
        let own = job.folds_of(m);
        let test: Vec<u8> = own.iter().copied().filter(|f| cfg.test_folds.as_ref().is_none_or(|t| t.contains(f))).collect();
        if test.is_empty() {
            return Err(Error::Member {
                key: format!("model `{m}`"),
                message: format!("trains folds {own:?}, none of which is in `ensemble.test_folds`; its test predictions would be empty"),
            });
        }
        oof_folds.push(own);
        test_folds.push(test);
    }
    for (mi, m) in cfg.members.iter().enumerate() {
        let scope = job.scope();
        for &f in &oof_folds[mi] {
            let mut want = vec![keys::oof(scope, m, Fold(f))];
            if test_folds[mi].contains(&f) {
                want.push(keys::test_predictions(scope, m, Fold(f)));
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
    let covered: Vec<bool> = fold_of.iter().map(|f| oof_folds.iter().any(|own| own.contains(f))).collect();
    if !covered.iter().any(|&c| c) {
        return Err(Error::Member { key: format!("ensemble of `{}`", job.scope()), message: "no training image is predicted by any member".into() });
    }
    Ok(Inputs { vocab, train, test, fold_of, oof_folds, test_folds, covered, truth })
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
