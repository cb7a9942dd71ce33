//! Applying a saved blend (`[inference] ensemble = "apply"`, test-time
//! inference): instead of fitting, the ensemble reads the stage's
//! `thresholds.json` (blend kind, members, weights, test folds, the chosen
//! threshold strategy), blends the members' test predictions exactly as the
//! fitting run did, takes the columns of other stages' blends where
//! `groups` says so, and labels the test images with the saved strategy.
//! Reads `data/labels.csv`, `data/sample_submission.csv`, the members'
//! `test.parquet` and `thresholds.json`; writes `ensemble_test.parquet`,
//! `submission.csv` and `_SUCCESS.json` (last). No OOF file, no training
//! image and no `folds.parquet` is read, so the same submission comes out
//! of an offline package holding the fold models and `thresholds.json`
//! alone.

use super::pass::Source;
use super::report::{ThresholdsFile, THRESHOLDS_VERSION};
use super::threshold::{self, Matrix};
use super::{submission, BlendKind, EnsembleJob, Summary};
use crate::error::{Error, Result};
use crate::ids::{Fold, MAIN_STAGE};
use crate::storage::keys::{self, Scope};
use crate::storage::parquet::{self as pq, PredictionKind, PredictionMeta, Predictions};
use crate::storage::{OutputEntry, Ran, Store};
use tracing::{info, info_span, Instrument};

/// Applies the saved blend and thresholds of `job`'s stage to the
/// members' test predictions and commits the job.
///
/// # Errors
/// [`Error::Member`] naming a missing or mismatched `thresholds.json` or
/// member file (and the command that writes it); [`Error::SpecChanged`]
/// when `thresholds.json` was fitted for another spec; storage errors.
pub async fn run(store: &Store, job: &EnsembleJob) -> Result<Summary> {
    let span = info_span!("job", kind = "ensemble", mode = "apply", experiment = %job.experiment);
    async move {
        match job.job_ref().run_once(store, || work(store, job)).await? {
            Ran::Skipped(m) => {
                // What the committed run applied: the saved strategy.
                let (chosen, cv_f2) = saved(store, job).await.map_or((String::new(), f64::NAN), |d| (d.chosen.name, d.cv_f2));
                Ok(Summary { skipped: true, chosen, cv_f2, in_sample_f2: f64::NAN, outputs: m.outputs })
            }
            Ran::Done { outcome: (chosen, cv_f2), manifest, .. } => {
                info!(chosen = %chosen.name, "saved thresholds applied; submission committed");
                Ok(Summary { skipped: false, chosen: chosen.name, cv_f2, in_sample_f2: f64::NAN, outputs: manifest.outputs })
            }
        }
    }
    .instrument(span)
    .await
}

/// The saved `thresholds.json` of `job`'s stage, checked against the job.
async fn saved(store: &Store, job: &EnsembleJob) -> Result<ThresholdsFile> {
    let key = keys::thresholds(job.scope());
    let stage = job.stage.as_ref().map(|s| format!(" --stage {s}")).unwrap_or_default();
    let bytes = store.get_opt(&key).await?.ok_or_else(|| Error::Member {
        key: key.clone(),
        message: format!("missing: applying a blend needs the one a fitted ensemble saved; run `imet ensemble --spec <spec>{stage}` on the training store, or package it with `imet package`"),
    })?;
    let doc: ThresholdsFile = serde_json::from_slice(&bytes).map_err(|e| Error::Format { key: key.clone(), what: "thresholds file", reason: e.to_string() })?;
    let bad = |message: String| Error::Member { key: key.clone(), message };
    if doc.version != THRESHOLDS_VERSION {
        return Err(bad(format!("is version {} of the layout; this imet reads version {THRESHOLDS_VERSION}", doc.version)));
    }
    if doc.spec_hash != job.spec_hash {
        return Err(Error::SpecChanged { key, expected: job.spec_hash.clone(), found: doc.spec_hash });
    }
    let cfg = &job.config;
    if doc.blend.members != cfg.members || doc.blend.kind != cfg.blend || doc.blend.normalize_max != cfg.normalize_max {
        return Err(bad(format!(
            "blends {:?} ({:?}) but the spec's ensemble blends {:?} ({:?}); package the run again",
            doc.blend.members, doc.blend.kind, cfg.members, cfg.blend
        )));
    }
    if doc.blend.weights.len() != cfg.members.len() {
        return Err(bad(format!("has {} weights for {} members", doc.blend.weights.len(), cfg.members.len())));
    }
    Ok(doc)
}

/// The work of an apply job: the saved strategy and every output.
async fn work(store: &Store, job: &EnsembleJob) -> Result<((super::threshold::Strategy, f64), Vec<OutputEntry>)> {
    let doc = saved(store, job).await?;
    let (vocab, test) = crate::data::load_test_inputs(store).await?;
    let c = vocab.len();
    let vh = vocab.hash();
    let key = keys::thresholds(job.scope());
    if doc.class_count != c || doc.vocabulary_hash != vh {
        return Err(Error::Member { key, message: format!("was fitted with another data/labels.csv ({} classes); use the labels.csv the run was trained with", doc.class_count) });
    }
    let cfg = &job.config;
    let stage = job.stage.as_ref().map(|s| format!(" --stage {s}")).unwrap_or_default();
    // Per member, the folds whose test files are averaged, as the fitting run chose them.
    let mut test_folds = Vec::new();
    for m in &cfg.members {
        let folds: Vec<u8> = job.folds_of(m).into_iter().filter(|f| cfg.test_folds.as_ref().is_none_or(|t| t.contains(f))).collect();
        for &f in &folds {
            let key = keys::test_predictions(job.scope(), m, Fold(f));
            if !store.exists(&key).await? {
                return Err(Error::Member { key, message: format!("missing; run `imet predict --spec <spec> --model {m} --fold {f}{stage}` (or `imet infer`) before the ensemble") });
            }
        }
        test_folds.push(folds);
    }
    let mut union: Vec<u8> = test_folds.iter().flatten().copied().collect();
    union.sort_unstable();
    union.dedup();
    if union != doc.blend.test_folds {
        return Err(Error::Member { key, message: format!("averaged test folds {:?} but the spec's members give {union:?}", doc.blend.test_folds) });
    }
    let files = test_folds.iter().map(Vec::len).sum::<usize>() as u64;
    let src = Source::test_only(store, job, &test.ids, c, vh.clone(), files);
    // Unweighted blends add each member with weight 1, as the fitting run did.
    let weights = if cfg.blend == BlendKind::Weighted { doc.blend.weights.clone() } else { vec![1.0; cfg.members.len()] };
    let (acc, tta) = src.test_pass(cfg.blend, &cfg.members, &test_folds, &weights).await?;
    let mut blend = acc.finish(cfg.normalize_max);
    take_groups(store, job, &vocab, &test.ids, &mut blend).await?;
    let group = threshold::group_index(vocab.groups());
    let labels = threshold::apply(&doc.chosen, Matrix { probs: &blend, classes: c, group: &group }, None);

    let scope = job.scope();
    let meta = PredictionMeta {
        experiment: job.experiment.clone(),
        model: "ensemble".into(),
        fold: None,
        kind: PredictionKind::Test,
        tta,
        spec_hash: job.spec_hash.clone(),
        class_count: c,
        vocabulary_hash: vh,
    };
    let mut outputs = vec![pq::write_predictions(store, &keys::ensemble_test(scope), &Predictions { ids: test.ids.clone(), probs: blend, meta }).await?];
    let csv = submission::to_csv(&test.ids, &labels).into_bytes();
    let sub_key = keys::submission(scope);
    outputs.push(OutputEntry::of_bytes(&sub_key, &csv));
    store.put(&sub_key, csv).await?;
    Ok(((doc.chosen, doc.cv_f2), outputs))
}

/// Overwrites the columns of each group `groups` takes from another stage
/// with that stage's committed test blend.
async fn take_groups(store: &Store, job: &EnsembleJob, vocab: &crate::data::Vocabulary, ids: &[crate::ids::ImageId], blend: &mut [f32]) -> Result<()> {
    let c = vocab.len();
    for (group, stage) in job.config.groups.sources() {
        let scope = Scope { experiment: &job.experiment, stage: Some(stage).filter(|s| *s != MAIN_STAGE) };
        let columns: Vec<usize> = (0..c).filter(|&k| vocab.groups()[k] == group).collect();
        let own_ids: Vec<&crate::ids::ImageId> = ids.iter().collect();
        super::take_columns(store, keys::ensemble_test(scope), vocab, &own_ids, &columns, blend).await?;
        info!(group = group.as_str(), from = %scope, "group columns taken from another stage's blend");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ensemble::report::BlendInfo;
    use crate::ensemble::threshold::{Limits, Range, Rule, Strategy};
    use crate::ensemble::EnsembleSection;
    use crate::ids::ImageId;

    const LABELS: &str = "attribute_id,attribute_name\n0,culture::a\n1,tag::b\n2,tag::c\n";

    fn job(blend: &str) -> EnsembleJob {
        let config: EnsembleSection = toml::from_str(&format!("members = [\"m\", \"n\"]\nblend = \"{blend}\"\n")).unwrap();
        EnsembleJob { experiment: "e".into(), stage: None, k: 2, config, member_folds: Default::default(), spec_hash: "h".into(), inputs: vec![] }
    }

    fn ids() -> Vec<ImageId> {
        ["00000000000a", "00000000000b"].iter().map(|s| ImageId::new(s).unwrap()).collect()
    }

    async fn member(store: &Store, model: &str, fold: u8, probs: Vec<f32>) {
        let vocab = crate::data::Vocabulary::parse("labels.csv", LABELS.as_bytes()).unwrap();
        let meta = PredictionMeta {
            experiment: "e".into(),
            model: model.into(),
            fold: Some(Fold(fold)),
            kind: PredictionKind::Test,
            tta: 2,
            spec_hash: "x".into(),
            class_count: 3,
            vocabulary_hash: vocab.hash(),
        };
        let key = keys::test_predictions("e", model, Fold(fold));
        pq::write_predictions(store, &key, &Predictions { ids: ids(), probs, meta }).await.unwrap();
    }

    async fn thresholds(store: &Store, spec_hash: &str, kind: BlendKind, weights: Vec<f32>) {
        let vocab = crate::data::Vocabulary::parse("labels.csv", LABELS.as_bytes()).unwrap();
        let chosen = Strategy { name: "global".into(), rule: Rule::Global { threshold: 0.5 }, limits: Limits::total(Range::ANY) };
        let doc = ThresholdsFile {
            version: THRESHOLDS_VERSION,
            experiment: "e".into(),
            spec_hash: spec_hash.into(),
            class_count: 3,
            vocabulary_hash: vocab.hash(),
            blend: BlendInfo { kind, normalize_max: false, members: vec!["m".into(), "n".into()], weights, test_folds: vec![0, 1] },
            chosen: chosen.clone(),
            cv_f2: 0.5,
            strategies: vec![chosen],
        };
        store.put(&keys::thresholds("e"), serde_json::to_vec(&doc).unwrap()).await.unwrap();
    }

    async fn store() -> Store {
        let store = Store::memory();
        store.put(keys::LABELS, LABELS).await.unwrap();
        store.put(keys::SAMPLE_SUBMISSION, "id,attribute_ids\n00000000000a,0\n00000000000b,0\n").await.unwrap();
        // Two members, two folds each; rows a, b over three classes.
        member(&store, "m", 0, vec![0.9, 0.2, 0.6, 0.1, 0.1, 0.9]).await;
        member(&store, "m", 1, vec![0.7, 0.2, 0.4, 0.1, 0.3, 0.9]).await;
        member(&store, "n", 0, vec![0.1, 0.2, 0.6, 0.9, 0.1, 0.1]).await;
        member(&store, "n", 1, vec![0.1, 0.2, 0.6, 0.9, 0.1, 0.1]).await;
        store
    }

    #[tokio::test]
    async fn the_saved_weights_and_strategy_make_the_submission_without_any_oof_file() {
        let store = store().await;
        thresholds(&store, "h", BlendKind::Weighted, vec![0.75, 0.25]).await;
        let s = run(&store, &job("weighted")).await.unwrap();
        assert_eq!((s.skipped, s.chosen.as_str(), s.cv_f2), (false, "global", 0.5));
        // m's fold mean: [0.8, 0.2, 0.5, 0.1, 0.2, 0.9]; n's: [0.1, 0.2, 0.6, 0.9, 0.1, 0.1];
        // 0.75 m + 0.25 n: [0.625, 0.2, 0.525, 0.3, 0.175, 0.7] -> a {0, 2}, b {2}.
        let csv = store.get(&keys::submission("e")).await.unwrap();
        assert_eq!(std::str::from_utf8(&csv).unwrap(), "id,attribute_ids\n00000000000a,0 2\n00000000000b,2\n");
        // A second run is a committed job.
        assert!(run(&store, &job("weighted")).await.unwrap().skipped);
    }

    #[tokio::test]
    async fn thresholds_of_another_spec_or_blend_are_refused_by_name() {
        let store = store().await;
        let err = run(&store, &job("mean")).await.unwrap_err().to_string();
        assert!(err.contains("ensemble/thresholds.json") && err.contains("imet ensemble"), "{err}");
        thresholds(&store, "other", BlendKind::Mean, vec![0.5, 0.5]).await;
        let err = run(&store, &job("mean")).await.unwrap_err();
        assert!(matches!(err, Error::SpecChanged { .. }), "{err}");
        thresholds(&store, "h", BlendKind::Mean, vec![0.5, 0.5]).await;
        let err = run(&store, &job("geometric")).await.unwrap_err().to_string();
        assert!(err.contains("blends") && err.contains("Mean") && err.contains("Geometric"), "{err}");
        store.delete(&keys::test_predictions("e", "n", Fold(1))).await.unwrap();
        let err = run(&store, &job("mean")).await.unwrap_err().to_string();
        assert!(err.contains("models/n/fold=1/test.parquet") && err.contains("imet predict"), "{err}");
    }
}
