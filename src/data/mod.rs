//! Data stage: the label vocabulary, the annotation files, fold assignment
//! and the synthetic sample. Reads the competition CSVs from
//! `{root}/data/`, writes `folds.parquet` and the sample's files.

pub mod annotations;
pub mod folds;
pub mod labels;
pub mod metric;
pub mod sample;

pub use annotations::{Annotations, TestIds};
pub use labels::Vocabulary;

use crate::error::Result;
use crate::ids::ImageId;
use crate::storage::{keys, Store};
use tracing::info;

/// The three competition CSVs, parsed and cross-checked.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub vocab: Vocabulary,
    pub train: Annotations,
    pub test: TestIds,
}

/// What test-time inference reads: `data/labels.csv` and
/// `data/sample_submission.csv` (no `train.csv`, no training image).
///
/// # Errors
/// [`crate::Error::NotFound`] for a missing file; [`crate::Error::Input`]
/// naming file and line for malformed content.
pub async fn load_test_inputs(store: &Store) -> Result<(Vocabulary, TestIds)> {
    let (labels, test) = tokio::try_join!(store.get(keys::LABELS), store.get(keys::SAMPLE_SUBMISSION))?;
    let vocab = Vocabulary::parse(keys::LABELS, &labels)?;
    let test = TestIds::parse(keys::SAMPLE_SUBMISSION, &test)?;
    info!(classes = vocab.len(), test = test.ids.len(), "test inputs valid");
    Ok((vocab, test))
}

/// Reads and validates `data/labels.csv`, `data/train.csv` and
/// `data/sample_submission.csv` from `store`.
///
/// # Errors
/// [`crate::Error::NotFound`] for a missing file; [`crate::Error::Input`]
/// naming file and line for malformed content, and for an id that is both a
/// training and a test image.
pub async fn load_inputs(store: &Store) -> Result<Inputs> {
    let (labels, train, test) =
        tokio::try_join!(store.get(keys::LABELS), store.get(keys::TRAIN), store.get(keys::SAMPLE_SUBMISSION))?;
    let vocab = Vocabulary::parse(keys::LABELS, &labels)?;
    let train = Annotations::parse(keys::TRAIN, &train, &vocab)?;
    let test = TestIds::parse(keys::SAMPLE_SUBMISSION, &test)?;
    let train_ids: std::collections::HashSet<&ImageId> = train.ids.iter().collect();
    if let Some((i, id)) = test.ids.iter().enumerate().find(|(_, id)| train_ids.contains(id)) {
        return Err(crate::Error::input(
            keys::SAMPLE_SUBMISSION,
            i + 2,
            format!("test id `{id}` is also a training image in {}", keys::TRAIN),
        ));
    }
    info!(classes = vocab.len(), train = train.len(), test = test.ids.len(), "inputs valid");
    Ok(Inputs { vocab, train, test })
}
