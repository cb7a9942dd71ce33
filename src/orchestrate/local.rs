//! Runs an experiment on this machine, stage after stage, skipping stages
//! already committed in the store: the README's main command.

use crate::data;
use crate::error::Result;
use crate::spec::JobSpec;
use crate::storage::{keys, Store};
use tracing::{info, info_span, Instrument};

/// What a local run did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunSummary {
    pub stages: Vec<StageOutcome>,
}

/// One stage of a local run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StageOutcome {
    pub stage: String,
    /// `done` or `skipped` (already committed).
    pub state: String,
    pub seconds: f64,
    pub output: String,
}

/// Runs every stage of `spec` that exists so far, in data-flow order:
/// writes the resolved spec, generates the synthetic sample when the spec
/// asks for one and `data/` has none, validates the inputs, assigns folds.
/// Committed stages are skipped, so a rerun resumes where the last stopped.
///
/// # Errors
/// The first failing stage's error; earlier stages' outputs stay committed.
pub async fn run(spec: &JobSpec) -> Result<RunSummary> {
    let store = spec.open_store()?;
    let span = info_span!("job", kind = "run", experiment = %spec.experiment);
    async move {
        let mut summary = RunSummary::default();
        write_spec(&store, spec).await?;

        let t = std::time::Instant::now();
        let sample = data::sample::ensure(&store, spec).instrument(info_span!("stage", name = "sample")).await?;
        summary.stages.push(StageOutcome {
            stage: "sample".into(),
            state: if sample.is_some() { "done" } else { "skipped" }.into(),
            seconds: t.elapsed().as_secs_f64(),
            output: match &sample {
                Some(s) => format!("{} train + {} test images over {} classes in data/", s.train, s.test, s.classes),
                None => "data/train.csv present".into(),
            },
        });

        let t = std::time::Instant::now();
        let inputs = data::load_inputs(&store).await?;
        summary.stages.push(StageOutcome {
            stage: "validate".into(),
            state: "done".into(),
            seconds: t.elapsed().as_secs_f64(),
            output: format!("{} classes, {} train, {} test", inputs.vocab.len(), inputs.train.len(), inputs.test.ids.len()),
        });

        let t = std::time::Instant::now();
        let folds = data::folds::run(&store, spec).instrument(info_span!("stage", name = "folds")).await?;
        summary.stages.push(StageOutcome {
            stage: "folds".into(),
            state: if folds.computed { "done" } else { "skipped" }.into(),
            seconds: t.elapsed().as_secs_f64(),
            output: folds.key.clone(),
        });
        info!(stages = summary.stages.len(), "run finished");
        Ok(summary)
    }
    .instrument(span)
    .await
}

/// Writes `runs/{experiment}/spec.toml` first. A different spec already
/// there is kept, and this one is stored beside it under its hash.
pub async fn write_spec(store: &Store, spec: &JobSpec) -> Result<()> {
    let key = keys::spec(&spec.experiment);
    let text = spec.to_toml();
    if store.put_if_absent(&key, text.clone()).await? {
        return Ok(());
    }
    let existing = store.get(&key).await?;
    if existing.as_ref() != text.as_bytes() {
        let alt = format!("{}/spec.{}.toml", keys::run(&spec.experiment), spec.hash());
        store.put_if_absent(&alt, text).await?;
        info!(key = %key, alt = %alt, "spec differs from the experiment's first one; stored beside it");
    }
    Ok(())
}
