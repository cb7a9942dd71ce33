//! Orchestration stage: an experiment spec becomes a DAG of jobs (folds ->
//! train and predict per model x fold -> ensemble), each with its command
//! line, its dependencies, the manifest that marks it done, and the
//! resources a batch engine should give it. Every executor (local
//! processes, Slurm, Kubernetes, AWS Batch) works from this one plan.
//! Reads nothing; [`Job::committed`] reads a manifest.

use crate::ids::Fold;
use crate::error::Result;
use crate::spec::{parse_duration, JobSpec};
use crate::storage::manifest::Manifest;
use crate::storage::{keys, Store};
use serde::Serialize;
use std::path::Path;

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Folds,
    Train,
    Predict,
    Ensemble,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Folds => "folds",
            JobKind::Train => "train",
            JobKind::Predict => "predict",
            JobKind::Ensemble => "ensemble",
        }
    }
}

/// What a batch engine should give one job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobResources {
    pub gpus: u32,
    pub cpus: u32,
    pub memory_gb: u32,
    /// Wall-clock limit in seconds.
    pub time_limit_s: u64,
}

/// One job of the DAG.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Job {
    /// Unique and stable: `folds`, `train/{model}/{fold}`,
    /// `predict/{model}/{fold}`, `ensemble`.
    pub id: String,
    pub kind: JobKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fold: Option<u8>,
    /// Ids of the jobs that must finish first.
    pub deps: Vec<String>,
    /// Arguments after the `imet` binary, e.g. `["train", "--spec", S,
    /// "--model", M, "--fold", "3"]`.
    pub args: Vec<String>,
    pub resources: JobResources,
    /// The manifest whose presence (with `spec_hash`) marks the job done.
    pub manifest: String,
    pub spec_hash: String,
}

impl Job {
    /// Whether the job's manifest is committed for this spec.
    ///
    /// # Errors
    /// Store errors, and a manifest committed for another spec
    /// ([`crate::Error::SpecChanged`]).
    pub async fn committed(&self, store: &Store) -> Result<bool> {
        Ok(Manifest::committed(store, &self.manifest, &self.spec_hash).await?.is_some())
    }

    /// The command line as one shell-quoted string, for tables and scripts.
    pub fn command_line(&self, program: &str) -> String {
        std::iter::once(program.to_string()).chain(self.args.iter().map(|a| shell_quote(a))).collect::<Vec<_>>().join(" ")
    }
}

/// The whole DAG, jobs in an order where every job follows its dependencies.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub experiment: String,
    pub jobs: Vec<Job>,
}

/// Resources of the folds and ensemble jobs (CPU only).
const LIGHT: JobResources = JobResources { gpus: 0, cpus: 4, memory_gb: 16, time_limit_s: 2 * 3600 };

impl Plan {
    /// Builds the DAG of `spec`; `spec_path` is how jobs find the spec
    /// (`--spec` of every command line).
    ///
    /// # Errors
    /// [`crate::Error::Spec`] for a time limit that does not parse (already
    /// checked by validation).
    pub fn new(spec: &JobSpec, spec_path: &Path) -> Result<Plan> {
        let spec_arg = spec_path.display().to_string();
        let exp = &spec.experiment;
        let bad = |message: String| crate::Error::Spec { path: spec_arg.clone(), message };
        let mut jobs = vec![Job {
            id: "folds".into(),
            kind: JobKind::Folds,
            model: None,
            fold: None,
            deps: vec![],
            args: vec!["folds".into(), "--spec".into(), spec_arg.clone()],
            resources: LIGHT,
            manifest: keys::folds_success(exp),
            spec_hash: spec.folds_hash(),
        }];
        let mut predicts = Vec::new();
        for m in &spec.models {
            let r = &m.resources;
            let train_limit = parse_duration(&r.time_limit).map_err(bad)?;
            let predict_limit = parse_duration(&r.predict_time_limit).map_err(bad)?;
            let hash = spec.model_hash(m);
            for k in 0..spec.folds.k {
                let fold_args = |verb: &str| {
                    vec![verb.into(), "--spec".into(), spec_arg.clone(), "--model".into(), m.name.clone(), "--fold".into(), k.to_string()]
                };
                let train_id = format!("train/{}/{k}", m.name);
                jobs.push(Job {
                    id: train_id.clone(),
                    kind: JobKind::Train,
                    model: Some(m.name.clone()),
                    fold: Some(k),
                    deps: vec!["folds".into()],
                    args: fold_args("train"),
                    resources: JobResources { gpus: r.gpus, cpus: r.cpus, memory_gb: r.memory_gb, time_limit_s: train_limit },
                    manifest: keys::trained(exp, &m.name, Fold(k)),
                    spec_hash: hash.clone(),
                });
                let predict_id = format!("predict/{}/{k}", m.name);
                jobs.push(Job {
                    id: predict_id.clone(),
                    kind: JobKind::Predict,
                    model: Some(m.name.clone()),
                    fold: Some(k),
                    deps: vec![train_id],
                    args: fold_args("predict"),
                    resources: JobResources { gpus: r.gpus, cpus: r.cpus, memory_gb: r.memory_gb, time_limit_s: predict_limit },
                    manifest: keys::success(exp, &m.name, Fold(k)),
                    spec_hash: hash.clone(),
                });
                predicts.push(predict_id);
            }
        }
        if let Some(e) = &spec.ensemble {
            // Only the members' predictions are needed.
            let deps = predicts
                .into_iter()
                .filter(|id| e.members.iter().any(|m| id.starts_with(&format!("predict/{m}/"))))
                .collect();
            jobs.push(Job {
                id: "ensemble".into(),
                kind: JobKind::Ensemble,
                model: None,
                fold: None,
                deps,
                args: vec!["ensemble".into(), "--spec".into(), spec_arg.clone()],
                resources: LIGHT,
                manifest: keys::ensemble_success(exp),
                spec_hash: spec.hash(),
            });
        }
        Ok(Plan { experiment: exp.clone(), jobs })
    }

    /// The job called `id`.
    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.id == id)
    }
}

/// Quotes `s` for a POSIX shell when it holds anything but safe characters.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
experiment = "e"
[storage]
root = "memory://"
[folds]
k = 3
[[models]]
name = "a"
arch = "resnet18"
size = 64
train = { batch_size = 8, phases = [{ epochs = 1, optimizer = { kind = "sgd", lr = 0.1 } }] }
resources = { gpus = 2, time_limit = "90m" }
[[models]]
name = "b"
arch = "resnet34"
size = 64
train = { batch_size = 8, phases = [{ epochs = 1, optimizer = { kind = "sgd", lr = 0.1 } }] }
[ensemble]
members = ["a"]
"#;

    #[test]
    fn the_dag_fans_out_models_times_folds_and_joins_at_the_ensemble() {
        let spec = JobSpec::parse("s.toml", SPEC).unwrap();
        let plan = Plan::new(&spec, Path::new("jobs/s.toml")).unwrap();
        assert_eq!(plan.jobs.len(), 1 + 2 * 3 * 2 + 1);
        let t = plan.job("train/a/2").unwrap();
        assert_eq!(t.deps, ["folds"]);
        assert_eq!(t.command_line("imet"), "imet train --spec jobs/s.toml --model a --fold 2");
        assert_eq!(t.resources, JobResources { gpus: 2, cpus: 8, memory_gb: 32, time_limit_s: 5400 });
        assert_eq!(plan.job("predict/b/0").unwrap().deps, ["train/b/0"]);
        let e = plan.job("ensemble").unwrap();
        assert_eq!(e.deps, ["predict/a/0", "predict/a/1", "predict/a/2"]);
        let pos = |id: &str| plan.jobs.iter().position(|j| j.id == id).unwrap();
        for j in &plan.jobs {
            assert!(j.deps.iter().all(|d| pos(d) < pos(&j.id)), "{} before its deps", j.id);
        }
    }

    #[test]
    fn odd_arguments_are_shell_quoted() {
        assert_eq!(shell_quote("jobs/a b.toml"), "'jobs/a b.toml'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("plain-1.toml"), "plain-1.toml");
    }
}
