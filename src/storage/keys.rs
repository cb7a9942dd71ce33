//! The object key layout (see docs): every key the project reads or writes
//! is built here and nowhere else.
//!
//! ```text
//! data/labels.csv, train.csv, sample_submission.csv, train/{id}.png, test/{id}.png
//! runs/{experiment}/spec.toml
//! runs/{experiment}/folds.parquet
//! runs/{experiment}/models/{model}/fold={k}/checkpoints/epoch={e}.safetensors
//! runs/{experiment}/models/{model}/fold={k}/{model.safetensors,history.parquet,oof.parquet,test.parquet}
//! runs/{experiment}/models/{model}/fold={k}/_SUCCESS.json
//! leases/{manifest}/{generation:010}.json   a running job's lease, named by its manifest
//! runs/{experiment}/models/{model}/fold={k}/tensorboard/events.out.tfevents.0000000000.{experiment}.{model}.fold{k}
//! runs/{experiment}/ensemble/...
//! runs/{experiment}/stages/{stage}/...   a later stage: models/, ensemble/, data/ as above
//! runs/{experiment}/report/curves-{model}.png, curves.json
//! ```
//!
//! Functions that name a stage's outputs take its *scope*: the experiment
//! (`"r2"`, the first stage) or a [`Scope`] (`r2`, stage `clean`), written
//! `{scope}` below.

use crate::ids::{Fold, ImageId};
use std::fmt::{self, Display};

/// Whose outputs: an experiment's first stage (`runs/{experiment}/`) or a
/// later stage (`runs/{experiment}/stages/{stage}/`). A plain experiment
/// name is the first stage's scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope<'a> {
    pub experiment: &'a str,
    pub stage: Option<&'a str>,
}

impl Display for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.stage {
            None => f.write_str(self.experiment),
            Some(s) => write!(f, "{}/stages/{s}", self.experiment),
        }
    }
}

pub const LABELS: &str = "data/labels.csv";
pub const TRAIN: &str = "data/train.csv";
pub const SAMPLE_SUBMISSION: &str = "data/sample_submission.csv";

/// Which image folder: training or test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

pub fn image(split: Split, id: &ImageId) -> String {
    match split {
        Split::Train => format!("data/train/{id}.png"),
        Split::Test => format!("data/test/{id}.png"),
    }
}

/// What a synthetic sample knows and the pipeline must not read (the test
/// images' labels, injected label noise): `truth/{name}`.
pub fn truth(name: &str) -> String {
    format!("truth/{name}")
}

/// `train` or `test`.
pub fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "test",
    }
}

/// Folder of one shard set: `shards/{split}/{set}`.
pub fn shard_set(split: Split, set: &str) -> String {
    format!("shards/{}/{set}", split_name(split))
}

/// `shards/{split}/{set}/shard-{n:05}.tar`.
pub fn shard(split: Split, set: &str, n: usize) -> String {
    format!("{}/shard-{n:05}.tar", shard_set(split, set))
}

/// `shards/{split}/{set}/index.json`, written last: its presence commits
/// the set.
pub fn shard_index(split: Split, set: &str) -> String {
    format!("{}/index.json", shard_set(split, set))
}

/// `runs/{experiment}/shards/{split}/_SUCCESS.json`: the experiment's shard
/// job of `split` is committed (its outputs name the set's index).
pub fn shard_success(experiment: &str, split: Split) -> String {
    format!("runs/{experiment}/shards/{}/_SUCCESS.json", split_name(split))
}

pub fn run(experiment: &str) -> String {
    format!("runs/{experiment}")
}

pub fn spec(experiment: &str) -> String {
    format!("runs/{experiment}/spec.toml")
}

pub fn folds(experiment: &str) -> String {
    format!("runs/{experiment}/folds.parquet")
}

pub fn folds_success(experiment: &str) -> String {
    format!("runs/{experiment}/_FOLDS_SUCCESS.json")
}

pub fn fold_dir(scope: impl Display, model: &str, fold: Fold) -> String {
    format!("runs/{scope}/models/{model}/fold={}", fold.0)
}

pub fn checkpoint(scope: impl Display, model: &str, fold: Fold, epoch: u32) -> String {
    format!("{}/checkpoints/epoch={epoch}.safetensors", fold_dir(scope, model, fold))
}

/// The checkpoint written inside an epoch (`train.checkpoints.every_steps`,
/// `every_minutes`): one object, overwritten.
pub fn checkpoint_in_epoch(scope: impl Display, model: &str, fold: Fold) -> String {
    format!("{}/checkpoints/{IN_EPOCH_CHECKPOINT}", fold_dir(scope, model, fold))
}

/// The file name of [`checkpoint_in_epoch`].
pub const IN_EPOCH_CHECKPOINT: &str = "in-epoch.safetensors";

pub fn checkpoints(scope: impl Display, model: &str, fold: Fold) -> String {
    format!("{}/checkpoints", fold_dir(scope, model, fold))
}

pub fn weights(scope: impl Display, model: &str, fold: Fold) -> String {
    format!("{}/model.safetensors", fold_dir(scope, model, fold))
}

pub fn history(scope: impl Display, model: &str, fold: Fold) -> String {
    format!("{}/history.parquet", fold_dir(scope, model, fold))
}

pub fn oof(scope: impl Display, model: &str, fold: Fold) -> String {
    format!("{}/oof.parquet", fold_dir(scope, model, fold))
}

pub fn test_predictions(scope: impl Display, model: &str, fold: Fold) -> String {
    format!("{}/test.parquet", fold_dir(scope, model, fold))
}

/// The train job's manifest (weights and history committed).
pub fn trained(scope: impl Display, model: &str, fold: Fold) -> String {
    format!("{}/_TRAINED.json", fold_dir(scope, model, fold))
}

/// Prediction throughput of a fold model (`{images, views, seconds,
/// images_per_sec, device}`), for inference budgets.
pub fn predict_stats(scope: impl Display, model: &str, fold: Fold) -> String {
    format!("{}/predict_stats.json", fold_dir(scope, model, fold))
}

/// The predict job's manifest: the fold job is complete.
pub fn success(scope: impl Display, model: &str, fold: Fold) -> String {
    format!("{}/_SUCCESS.json", fold_dir(scope, model, fold))
}

/// Images a fold job skipped (`image.on_bad_image = "skip"`), as JSON.
pub fn skipped_images(scope: impl Display, model: &str, fold: Fold) -> String {
    format!("{}/skipped_images.json", fold_dir(scope, model, fold))
}

/// The folder TensorBoard reads a fold job's events from.
pub fn tensorboard_dir(scope: impl Display, model: &str, fold: Fold) -> String {
    format!("{}/tensorboard", fold_dir(scope, model, fold))
}

/// The fold job's TensorBoard events file (name: see `storage::tensorboard::file_name`).
pub fn tensorboard_events(scope: impl Display, model: &str, fold: Fold) -> String {
    let label = scope.to_string().replace("/stages/", ".");
    let name = super::tensorboard::file_name(&format!("{label}.{model}.fold{}", fold.0));
    format!("{}/{name}", tensorboard_dir(scope, model, fold))
}

/// Learning-curve report of an experiment (`imet report`).
pub fn report_dir(experiment: &str) -> String {
    format!("runs/{experiment}/report")
}

/// A model's learning curves, every fold: `runs/{exp}/report/curves-{model}.png`.
pub fn curves_plot(experiment: &str, model: &str) -> String {
    format!("{}/curves-{model}.png", report_dir(experiment))
}

/// The learning-curve report as JSON.
pub fn curves_report(experiment: &str) -> String {
    format!("{}/curves.json", report_dir(experiment))
}

/// Where an ensemble's plots are.
pub fn plots_dir(scope: impl Display) -> String {
    format!("runs/{scope}/ensemble/plots")
}

pub fn ensemble_dir(scope: impl Display) -> String {
    format!("runs/{scope}/ensemble")
}

pub fn ensemble_file(scope: impl Display, name: &str) -> String {
    format!("runs/{scope}/ensemble/{name}")
}

pub fn thresholds(scope: impl Display) -> String {
    ensemble_file(scope, "thresholds.json")
}

pub fn report(scope: impl Display) -> String {
    ensemble_file(scope, "report.json")
}

pub fn ensemble_oof(scope: impl Display) -> String {
    ensemble_file(scope, "ensemble_oof.parquet")
}

pub fn ensemble_test(scope: impl Display) -> String {
    ensemble_file(scope, "ensemble_test.parquet")
}

pub fn submission(scope: impl Display) -> String {
    ensemble_file(scope, "submission.csv")
}

pub fn plot(scope: impl Display, name: &str) -> String {
    format!("runs/{scope}/ensemble/plots/{name}.png")
}

pub fn ensemble_success(scope: impl Display) -> String {
    ensemble_file(scope, "_SUCCESS.json")
}

/// A stage's edited training data: `dropped.parquet`, `pseudo.parquet`,
/// `pseudo_targets.parquet`, `distill.json`.
pub fn stage_data(scope: impl Display, name: &str) -> String {
    format!("runs/{scope}/data/{name}")
}

/// The manifest of a stage's data edits.
pub fn stage_data_success(scope: impl Display) -> String {
    stage_data(scope, "_SUCCESS.json")
}

/// Where leases are: `leases/`, apart from every job's outputs (a folder
/// listing of a job's outputs never shows a lease).
pub const LEASES: &str = "leases";

/// The folder of the lease of the job committed by `manifest`:
/// `leases/{manifest}`.
pub fn lease_dir(manifest: &str) -> String {
    format!("{LEASES}/{manifest}")
}

/// One generation of a job's lease: `leases/{manifest}/{generation:010}.json`.
pub fn lease(manifest: &str, generation: u64) -> String {
    format!("{}/{generation:010}.json", lease_dir(manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_outputs_follow_the_documented_layout() {
        let f = Fold(3);
        assert_eq!(oof("exp", "resnet50", f), "runs/exp/models/resnet50/fold=3/oof.parquet");
        assert_eq!(checkpoint("exp", "m", f, 7), "runs/exp/models/m/fold=3/checkpoints/epoch=7.safetensors");
        assert_eq!(thresholds("exp"), "runs/exp/ensemble/thresholds.json");
        let clean = Scope { experiment: "exp", stage: Some("clean") };
        assert_eq!(oof(clean, "m", f), "runs/exp/stages/clean/models/m/fold=3/oof.parquet");
        assert_eq!(stage_data(clean, "dropped.parquet"), "runs/exp/stages/clean/data/dropped.parquet");
        assert_eq!(shard(Split::Train, "abcd", 7), "shards/train/abcd/shard-00007.tar");
        assert_eq!(shard_index(Split::Test, "abcd"), "shards/test/abcd/index.json");
        let id = ImageId::new("1000483014d91860").unwrap();
        assert_eq!(image(Split::Test, &id), "data/test/1000483014d91860.png");
        assert_eq!(
            tensorboard_events("exp", "r18", Fold(0)),
            "runs/exp/models/r18/fold=0/tensorboard/events.out.tfevents.0000000000.exp.r18.fold0"
        );
        assert_eq!(curves_plot("exp", "r18"), "runs/exp/report/curves-r18.png");
    }
}
