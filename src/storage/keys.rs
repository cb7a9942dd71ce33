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
//! runs/{experiment}/models/{model}/fold={k}/tensorboard/events.out.tfevents.0000000000.{experiment}.{model}.fold{k}
//! runs/{experiment}/ensemble/...
//! runs/{experiment}/report/curves-{model}.png, curves.json
//! ```

use crate::data::{Fold, ImageId};

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

pub fn fold_dir(experiment: &str, model: &str, fold: Fold) -> String {
    format!("runs/{experiment}/models/{model}/fold={}", fold.0)
}

pub fn checkpoint(experiment: &str, model: &str, fold: Fold, epoch: u32) -> String {
    format!("{}/checkpoints/epoch={epoch}.safetensors", fold_dir(experiment, model, fold))
}

pub fn checkpoints(experiment: &str, model: &str, fold: Fold) -> String {
    format!("{}/checkpoints", fold_dir(experiment, model, fold))
}

pub fn weights(experiment: &str, model: &str, fold: Fold) -> String {
    format!("{}/model.safetensors", fold_dir(experiment, model, fold))
}

pub fn history(experiment: &str, model: &str, fold: Fold) -> String {
    format!("{}/history.parquet", fold_dir(experiment, model, fold))
}

pub fn oof(experiment: &str, model: &str, fold: Fold) -> String {
    format!("{}/oof.parquet", fold_dir(experiment, model, fold))
}

pub fn test_predictions(experiment: &str, model: &str, fold: Fold) -> String {
    format!("{}/test.parquet", fold_dir(experiment, model, fold))
}

/// The train job's manifest (weights and history committed).
pub fn trained(experiment: &str, model: &str, fold: Fold) -> String {
    format!("{}/_TRAINED.json", fold_dir(experiment, model, fold))
}

/// Prediction throughput of a fold model (`{images, views, seconds,
/// images_per_sec, device}`), for inference budgets.
pub fn predict_stats(experiment: &str, model: &str, fold: Fold) -> String {
    format!("{}/predict_stats.json", fold_dir(experiment, model, fold))
}

/// The predict job's manifest: the fold job is complete.
pub fn success(experiment: &str, model: &str, fold: Fold) -> String {
    format!("{}/_SUCCESS.json", fold_dir(experiment, model, fold))
}

/// Images a fold job skipped (`image.on_bad_image = "skip"`), as JSON.
pub fn skipped_images(experiment: &str, model: &str, fold: Fold) -> String {
    format!("{}/skipped_images.json", fold_dir(experiment, model, fold))
}

/// The folder TensorBoard reads a fold job's events from.
pub fn tensorboard_dir(experiment: &str, model: &str, fold: Fold) -> String {
    format!("{}/tensorboard", fold_dir(experiment, model, fold))
}

/// The fold job's TensorBoard events file (name: see `storage::tensorboard::file_name`).
pub fn tensorboard_events(experiment: &str, model: &str, fold: Fold) -> String {
    let name = super::tensorboard::file_name(&format!("{experiment}.{model}.fold{}", fold.0));
    format!("{}/{name}", tensorboard_dir(experiment, model, fold))
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

/// Where the ensemble's plots are.
pub fn plots_dir(experiment: &str) -> String {
    format!("runs/{experiment}/ensemble/plots")
}

pub fn ensemble_dir(experiment: &str) -> String {
    format!("runs/{experiment}/ensemble")
}

pub fn ensemble_file(experiment: &str, name: &str) -> String {
    format!("runs/{experiment}/ensemble/{name}")
}

pub fn thresholds(experiment: &str) -> String {
    ensemble_file(experiment, "thresholds.json")
}

pub fn report(experiment: &str) -> String {
    ensemble_file(experiment, "report.json")
}

pub fn ensemble_oof(experiment: &str) -> String {
    ensemble_file(experiment, "ensemble_oof.parquet")
}

pub fn ensemble_test(experiment: &str) -> String {
    ensemble_file(experiment, "ensemble_test.parquet")
}

pub fn submission(experiment: &str) -> String {
    ensemble_file(experiment, "submission.csv")
}

pub fn plot(experiment: &str, name: &str) -> String {
    format!("runs/{experiment}/ensemble/plots/{name}.png")
}

pub fn ensemble_success(experiment: &str) -> String {
    ensemble_file(experiment, "_SUCCESS.json")
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
        let id = ImageId::new("1000483014d91860").unwrap();
        assert_eq!(image(Split::Test, &id), "data/test/1000483014d91860.png");
        assert_eq!(
            tensorboard_events("exp", "r18", Fold(0)),
            "runs/exp/models/r18/fold=0/tensorboard/events.out.tfevents.0000000000.exp.r18.fold0"
        );
        assert_eq!(curves_plot("exp", "r18"), "runs/exp/report/curves-r18.png");
    }
}
