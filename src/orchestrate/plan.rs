//! Orchestration stage: an experiment spec becomes a DAG of jobs, stage by
//! stage (folds, and the shard sets when the spec reads shards -> per
//! stage: curate, train and predict per model x fold, ensemble), each with
//! its command line, its dependencies, the manifest
//! that marks it done (built by `jobs`, so the plan and the jobs agree on
//! keys and hashes), and the resources a batch engine should give it. Jobs
//! form groups: a single job, or an array of fold tasks whose task chains a
//! model's jobs for one fold. Every executor (local processes, Slurm,
//! Kubernetes, AWS Batch) works from this one plan, and batch engines from
//! its groups, with no code for any job kind. Reads nothing;
//! [`Job::committed`] reads a manifest.

use crate::error::Result;
use crate::ids::Fold;
use crate::jobs;
use crate::spec::{parse_duration, JobSpec, SpecSource, Stage, MAIN};
use crate::storage::keys::{self, Split};
use crate::storage::{JobRef, Store};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Folds,
    Shard,
    Curate,
    Train,
    Predict,
    Level2,
    Ensemble,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Folds => "folds",
            JobKind::Shard => "shard",
            JobKind::Curate => "curate",
            JobKind::Train => "train",
            JobKind::Predict => "predict",
            JobKind::Level2 => "level2",
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

impl JobResources {
    /// What a task running `a` then `b` needs: the larger of each resource,
    /// the sum of the time limits.
    pub fn then(&self, b: &JobResources) -> JobResources {
        JobResources {
            gpus: self.gpus.max(b.gpus),
            cpus: self.cpus.max(b.cpus),
            memory_gb: self.memory_gb.max(b.memory_gb),
            time_limit_s: self.time_limit_s + b.time_limit_s,
        }
    }
}

/// One job of the DAG.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Job {
    /// Unique and stable: `folds`, `shard/{split}`, `train/{model}/{fold}`,
    /// `predict/{model}/{fold}`, `ensemble` for the first stage;
    /// `{stage}/curate`, `{stage}/train/{model}/{fold}`, ... for later ones.
    pub id: String,
    pub kind: JobKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
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
    /// The group batch engines run it in (`folds`, `model/{m}`,
    /// `{stage}/model/{m}`, `ensemble`, ...).
    pub group: String,
    /// The manifest whose presence (with `spec_hash`) marks the job done.
    pub manifest: String,
    pub spec_hash: String,
    #[serde(skip)]
    job_ref: JobRef,
}

impl Job {
    /// Whether the job's manifest is committed for this spec and what it
    /// read is unchanged.
    ///
    /// # Errors
    /// Store errors; a manifest committed for another spec
    /// ([`crate::Error::SpecChanged`]) or made from outputs committed again
    /// since ([`crate::Error::Stale`]).
    pub async fn committed(&self, store: &Store) -> Result<bool> {
        Ok(self.job_ref.committed(store).await?.is_some())
    }

    /// The command line as one shell-quoted string, for tables and scripts.
    pub fn command_line(&self, program: &str) -> String {
        std::iter::once(program.to_string()).chain(self.args.iter().map(|a| shell_quote(a))).collect::<Vec<_>>().join(" ")
    }

    /// The arguments with `--fold K` replaced by `--fold env` (the batch
    /// engine's array index picks the fold).
    pub fn env_fold_args(&self) -> Vec<String> {
        let mut args = self.args.clone();
        if let Some(i) = args.iter().position(|a| a == "--fold") {
            if let Some(v) = args.get_mut(i + 1) {
                *v = "env".into();
            }
        }
        args
    }
}

/// The whole DAG, jobs in an order where every job follows its dependencies.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub experiment: String,
    pub jobs: Vec<Job>,
}

/// A unit of submission for a batch engine: one job, or an array over
/// folds whose task `i` runs the group's jobs of fold `i` one after another.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Group {
    /// `folds`, `model/{m}`, `ensemble`, `{stage}/curate`, ...
    pub id: String,
    /// The plan jobs it runs (pending ones only).
    pub jobs: Vec<String>,
    /// The folds of its tasks, for array groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folds: Option<Vec<u8>>,
    /// Argument lists of one task, run in order and stopping at the first
    /// failure; arrays use `--fold env`.
    pub commands: Vec<Vec<String>>,
    /// Groups that must finish first (pending ones only).
    pub deps: Vec<String>,
    pub resources: JobResources,
    pub kind: JobKind,
}

impl Group {
    /// One shell line running every command, `&&`-chained.
    pub fn command_line(&self, program: &str) -> String {
        self.commands
            .iter()
            .map(|args| std::iter::once(program.to_string()).chain(args.iter().map(|a| shell_quote(a))).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(" && ")
    }

    /// Whether any of its jobs needs a GPU.
    pub fn gpus(&self) -> u32 {
        self.resources.gpus
    }
}

/// Resources of the folds, curate and ensemble jobs (CPU only).
const LIGHT: JobResources = JobResources { gpus: 0, cpus: 4, memory_gb: 16, time_limit_s: 2 * 3600 };

impl Plan {
    /// Builds the DAG of `spec`; `spec_path` is how jobs find the spec
    /// (`--spec` of every command line).
    ///
    /// # Errors
    /// [`crate::Error::Spec`] for a time limit that does not parse (already
    /// checked by validation).
    pub fn new(spec: &JobSpec, spec_path: &Path) -> Result<Plan> {
        Plan::from_source(spec, &SpecSource::file(spec_path))
    }

    /// Builds the DAG of `spec`, read from `source`: every command line
    /// reads the same file with the same `--set` overrides.
    ///
    /// # Errors
    /// As [`Plan::new`].
    pub fn from_source(spec: &JobSpec, source: &SpecSource) -> Result<Plan> {
        let spec_arg = source.path.display().to_string();
        let mut b = Builder { spec, spec_arg, spec_args: source.args(), jobs: Vec::new() };
        let folds = jobs::folds_job(spec);
        b.push(JobKind::Folds, None, None, None, vec![], vec!["folds".into()], LIGHT, "folds".into(), folds.job_ref());
        if jobs::reads_shards(spec) {
            // After folds, which writes the spec's synthetic sample.
            for split in [Split::Train, Split::Test] {
                b.push_split(split, vec!["folds".into()], jobs::shard_job(spec, split).job_ref());
            }
        }
        for stage in spec.stages() {
            b.stage(&stage)?;
        }
        Ok(Plan { experiment: spec.experiment.clone(), jobs: b.jobs })
    }

    /// The job called `id`.
    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.id == id)
    }

    /// The stages of the plan, in order, with their job ids (for tables).
    pub fn stages(&self) -> Vec<(String, Vec<&str>)> {
        let mut out: Vec<(String, Vec<&str>)> = Vec::new();
        for j in &self.jobs {
            let name = j.stage.clone().unwrap_or_else(|| MAIN.to_string());
            match out.iter_mut().find(|(s, _)| *s == name) {
                Some((_, ids)) => ids.push(&j.id),
                None => out.push((name, vec![&j.id])),
            }
        }
        out
    }

    /// The groups batch engines submit, for the jobs not in `done`, in an
    /// order where every group follows its dependencies.
    pub fn groups(&self, done: &HashSet<String>) -> Vec<Group> {
        let mut order: Vec<&str> = Vec::new();
        let mut members: BTreeMap<&str, Vec<&Job>> = BTreeMap::new();
        for j in &self.jobs {
            if !order.contains(&j.group.as_str()) {
                order.push(&j.group);
            }
            members.entry(&j.group).or_default().push(j);
        }
        let group_of: BTreeMap<&str, &str> = self.jobs.iter().map(|j| (j.id.as_str(), j.group.as_str())).collect();
        let mut out: Vec<Group> = Vec::new();
        for id in order {
            let jobs = &members[id];
            let array = jobs.iter().any(|j| j.fold.is_some());
            // Folds (or the single job) with something left to do.
            let mut folds: Vec<u8> = jobs.iter().filter(|j| !done.contains(&j.id)).filter_map(|j| j.fold).collect();
            folds.sort_unstable();
            folds.dedup();
            let pending: Vec<&Job> = jobs.iter().copied().filter(|j| if array { j.fold.is_some_and(|f| folds.contains(&f)) } else { !done.contains(&j.id) }).collect();
            let Some(first) = pending.first() else { continue };
            // One task: the jobs of one fold, in plan order.
            let task: Vec<&Job> = match first.fold {
                Some(f) => pending.iter().copied().filter(|j| j.fold == Some(f)).collect(),
                None => vec![*first],
            };
            let commands = task.iter().map(|j| if array { j.env_fold_args() } else { j.args.clone() }).collect();
            let resources = task.iter().skip(1).fold(task[0].resources.clone(), |r, j| r.then(&j.resources));
            let mut deps: Vec<String> = Vec::new();
            for j in &pending {
                for d in &j.deps {
                    let g = group_of[d.as_str()];
                    if g != id && !done.contains(d) && !deps.iter().any(|x| x == g) {
                        deps.push(g.to_string());
                    }
                }
            }
            deps.retain(|d| out.iter().any(|g| &g.id == d));
            out.push(Group {
                id: id.to_string(),
                jobs: pending.iter().map(|j| j.id.clone()).collect(),
                folds: array.then_some(folds),
                commands,
                deps,
                resources,
                kind: first.kind,
            });
        }
        out
    }
}

/// Builds the jobs of a plan.
struct Builder<'a> {
    spec: &'a JobSpec,
    /// Where jobs find the spec: its path (in errors).
    spec_arg: String,
    /// `--spec P` and the overrides, in every command line.
    spec_args: Vec<String>,
    jobs: Vec<Job>,
}

impl Builder<'_> {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        kind: JobKind,
        stage: Option<&str>,
        model: Option<&str>,
        fold: Option<u8>,
        deps: Vec<String>,
        verb: Vec<String>,
        resources: JobResources,
        group: String,
        job_ref: JobRef,
    ) -> String {
        let prefix = stage.map(|s| format!("{s}/")).unwrap_or_default();
        let id = match (model, fold) {
            (Some(m), Some(f)) => format!("{prefix}{}/{m}/{f}", kind.as_str()),
            // A fold job of no model (level 2): `{stage/}level2/{k}`.
            (None, Some(f)) => format!("{prefix}{}/{f}", kind.as_str()),
            _ => format!("{prefix}{}", kind.as_str()),
        };
        let mut args = verb;
        args.extend(self.spec_args.iter().cloned());
        if let Some(m) = model {
            args.extend(["--model".into(), m.to_string()]);
        }
        if let Some(f) = fold {
            args.extend(["--fold".into(), f.to_string()]);
        }
        if let Some(s) = stage {
            args.extend(["--stage".into(), s.to_string()]);
        }
        self.jobs.push(Job {
            id: id.clone(),
            kind,
            stage: stage.map(String::from),
            model: model.map(String::from),
            fold,
            deps,
            args,
            resources,
            group,
            manifest: job_ref.manifest.clone(),
            spec_hash: job_ref.spec_hash.clone(),
            job_ref,
        });
        id
    }

    /// The shard job of `split`: `shard/{split}`, a group of its own.
    fn push_split(&mut self, split: Split, deps: Vec<String>, job_ref: JobRef) -> String {
        let name = keys::split_name(split);
        let id = format!("{}/{name}", JobKind::Shard.as_str());
        let mut args: Vec<String> = vec!["shard".into()];
        args.extend(self.spec_args.iter().cloned());
        args.extend(["--split".into(), name.into()]);
        self.jobs.push(Job {
            id: id.clone(),
            kind: JobKind::Shard,
            stage: None,
            model: None,
            fold: None,
            deps,
            args,
            resources: LIGHT,
            group: id.clone(),
            manifest: job_ref.manifest.clone(),
            spec_hash: job_ref.spec_hash.clone(),
            job_ref,
        });
        id
    }

    /// The jobs of one stage.
    fn stage(&mut self, stage: &Stage<'_>) -> Result<()> {
        let spec = self.spec;
        let key = stage.key();
        let prefix = key.map(|s| format!("{s}/")).unwrap_or_default();
        let source_ensemble = stage.source.map(|s| if s == MAIN { "ensemble".to_string() } else { format!("{s}/ensemble") });
        let mut stage_deps = vec!["folds".to_string()];
        let shards = jobs::reads_shards(spec);
        if shards {
            stage_deps.push(format!("{}/train", JobKind::Shard.as_str()));
        }
        if stage.curates() {
            let job = jobs::curate_job(spec, stage.name)?;
            let deps = source_ensemble.clone().into_iter().collect();
            let id = self.push(JobKind::Curate, key, None, None, deps, vec!["curate".into()], LIGHT, format!("{prefix}curate"), job.job_ref());
            stage_deps.push(id);
        }
        let mut predicts = Vec::new();
        let spec_arg = self.spec_arg.clone();
        let bad = move |message: String| crate::Error::Spec { path: spec_arg.clone(), message };
        for m in stage.models {
            let r = &m.resources;
            let train_limit = parse_duration(&r.time_limit).map_err(&bad)?;
            let predict_limit = parse_duration(&r.predict_time_limit).map_err(&bad)?;
            let group = format!("{prefix}model/{}", m.name);
            for k in m.fold_list(spec.folds.k) {
                let train = jobs::train_job(spec, key, &m.name, Fold(k))?;
                let mut deps = stage_deps.clone();
                if train.init_from.is_some() {
                    let source = stage.source.filter(|s| *s != MAIN).map(|s| format!("{s}/")).unwrap_or_default();
                    deps.push(format!("{source}train/{}/{k}", m.name));
                }
                let resources = JobResources { gpus: r.gpus, cpus: r.cpus, memory_gb: r.memory_gb, time_limit_s: train_limit };
                let train_id = self.push(JobKind::Train, key, Some(&m.name), Some(k), deps, vec!["train".into()], resources, group.clone(), train.job_ref());
                let predict = jobs::predict_job(spec, key, &m.name, Fold(k))?;
                let resources = JobResources { gpus: r.gpus, cpus: r.cpus, memory_gb: r.memory_gb, time_limit_s: predict_limit };
                let mut deps = vec![train_id];
                if shards {
                    deps.push(format!("{}/test", JobKind::Shard.as_str()));
                }
                let id = self.push(JobKind::Predict, key, Some(&m.name), Some(k), deps, vec!["predict".into()], resources, group.clone(), predict.job_ref());
                predicts.push((m.name.clone(), id));
            }
        }
        if let Some(e) = stage.ensemble {
            // Only the members' predictions, and the stages groups come from.
            let mut deps: Vec<String> = predicts.into_iter().filter(|(m, _)| e.members.contains(m)).map(|(_, id)| id).collect();
            if e.level2.is_some() {
                // One level-2 model per fold, each on every member's
                // predictions; the ensemble thresholds theirs.
                let mut level2 = Vec::new();
                for k in 0..spec.folds.k {
                    let job = jobs::level2_job(spec, key, Fold(k))?;
                    let verb = vec!["level2".into()];
                    level2.push(self.push(JobKind::Level2, key, None, Some(k), deps.clone(), verb, LIGHT, format!("{prefix}level2"), job.job_ref()));
                }
                deps = level2;
            }
            for (_, other) in e.groups.sources() {
                deps.push(if other == MAIN { "ensemble".to_string() } else { format!("{other}/ensemble") });
            }
            let job = jobs::ensemble_job(spec, key)?;
            self.push(JobKind::Ensemble, key, None, None, deps, vec!["ensemble".into()], LIGHT, format!("{prefix}ensemble"), job.job_ref());
        }
        Ok(())
    }
}

/// A group's name for engines that name jobs after it: its id without the
/// `model/` segment, `/` as `-` (`model/r18` -> `r18`, `clean/model/r18`
/// -> `clean-r18`, `clean/curate` -> `clean-curate`).
pub fn short_name(group: &str) -> String {
    group.split('/').filter(|p| *p != "model").collect::<Vec<_>>().join("-")
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
resources = { gpus = 1, time_limit = "90m" }
[[models]]
name = "b"
arch = "resnet34"
size = 64
train = { batch_size = 8, phases = [{ epochs = 1, optimizer = { kind = "sgd", lr = 0.1 } }] }
[ensemble]
members = ["a"]
"#;

    const STAGED: &str = r#"
[[stages]]
name = "clean"
drop_noisy = { fraction = 0.1 }
init = "source"
[[stages.models]]
name = "a"
arch = "resnet18"
size = 64
folds = [0, 2]
train = { batch_size = 8, phases = [{ epochs = 1, optimizer = { kind = "sgd", lr = 0.1 } }] }
[stages.ensemble]
members = ["a"]
groups = { culture = "main" }
"#;

    #[test]
    fn the_dag_fans_out_models_times_folds_and_joins_at_the_ensemble() {
        let spec = JobSpec::parse("s.toml", SPEC).unwrap();
        let plan = Plan::new(&spec, Path::new("jobs/s.toml")).unwrap();
        assert_eq!(plan.jobs.len(), 1 + 2 * 3 * 2 + 1);
        let t = plan.job("train/a/2").unwrap();
        assert_eq!(t.deps, ["folds"]);
        assert_eq!(t.command_line("imet"), "imet train --spec jobs/s.toml --model a --fold 2");
        assert_eq!(t.resources, JobResources { gpus: 1, cpus: 8, memory_gb: 32, time_limit_s: 5400 });
        assert_eq!(plan.job("predict/b/0").unwrap().deps, ["train/b/0"]);
        let e = plan.job("ensemble").unwrap();
        assert_eq!(e.deps, ["predict/a/0", "predict/a/1", "predict/a/2"]);
        let pos = |id: &str| plan.jobs.iter().position(|j| j.id == id).unwrap();
        for j in &plan.jobs {
            assert!(j.deps.iter().all(|d| pos(d) < pos(&j.id)), "{} before its deps", j.id);
        }
    }

    #[test]
    fn a_later_stage_curates_then_trains_its_fold_subset_from_the_source_models() {
        let spec = JobSpec::parse("s.toml", &format!("{SPEC}{STAGED}")).unwrap();
        let plan = Plan::new(&spec, Path::new("s.toml")).unwrap();
        let c = plan.job("clean/curate").unwrap();
        assert_eq!(c.deps, ["ensemble"]);
        assert_eq!(c.command_line("imet"), "imet curate --spec s.toml --stage clean");
        assert!(plan.job("clean/train/a/1").is_none(), "fold 1 is not in the model's subset");
        let t = plan.job("clean/train/a/2").unwrap();
        assert_eq!(t.deps, ["folds", "clean/curate", "train/a/2"]);
        assert_eq!(t.command_line("imet"), "imet train --spec s.toml --model a --fold 2 --stage clean");
        assert_eq!(t.manifest, "runs/e/stages/clean/models/a/fold=2/_TRAINED.json");
        let e = plan.job("clean/ensemble").unwrap();
        assert_eq!(e.deps, ["clean/predict/a/0", "clean/predict/a/2", "ensemble"]);
        assert_eq!(plan.stages().iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["main", "clean"]);
    }

    #[test]
    fn groups_are_arrays_of_fold_chains_and_drop_what_is_done() {
        let spec = JobSpec::parse("s.toml", &format!("{SPEC}{STAGED}")).unwrap();
        let plan = Plan::new(&spec, Path::new("s.toml")).unwrap();
        let groups = plan.groups(&HashSet::new());
        let ids: Vec<&str> = groups.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(ids, ["folds", "model/a", "model/b", "ensemble", "clean/curate", "clean/model/a", "clean/ensemble"]);
        let a = &groups[1];
        assert_eq!(a.folds.as_deref(), Some(&[0u8, 1, 2][..]));
        assert_eq!(a.command_line("imet"), "imet train --spec s.toml --model a --fold env && imet predict --spec s.toml --model a --fold env");
        assert_eq!(a.resources.time_limit_s, 5400 + 7200);
        assert_eq!(groups[6].deps, ["clean/model/a", "ensemble"]);
        let done: HashSet<String> = ["folds", "train/a/0", "predict/a/0"].iter().map(|s| s.to_string()).collect();
        let groups = plan.groups(&done);
        let a = groups.iter().find(|g| g.id == "model/a").unwrap();
        assert_eq!(a.folds.as_deref(), Some(&[1u8, 2][..]));
        assert!(a.deps.is_empty(), "the folds group is done");
    }

    #[test]
    fn a_spec_reading_shards_builds_them_first_and_its_fold_jobs_wait_for_them() {
        let text = SPEC.replace("[[models]]\nname = \"a\"", "[image]\nsource = \"shards\"\nshards = { shard_mb = 64 }\n[[models]]\nname = \"a\"");
        let spec = JobSpec::parse("s.toml", &format!("{text}{STAGED}")).unwrap();
        let plan = Plan::new(&spec, Path::new("s.toml")).unwrap();
        let t = plan.job("shard/train").unwrap();
        assert_eq!(t.command_line("imet"), "imet shard --spec s.toml --split train");
        assert_eq!(t.deps, ["folds"]);
        assert_eq!(t.manifest, "runs/e/shards/train/_SUCCESS.json");
        assert_ne!(t.spec_hash, plan.job("shard/test").unwrap().spec_hash);
        assert_eq!(plan.job("train/a/0").unwrap().deps, ["folds", "shard/train"]);
        assert_eq!(plan.job("predict/a/0").unwrap().deps, ["train/a/0", "shard/test"]);
        assert_eq!(plan.job("clean/train/a/2").unwrap().deps, ["folds", "shard/train", "clean/curate", "train/a/2"]);
        let groups = plan.groups(&HashSet::new());
        let ids: Vec<&str> = groups.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(&ids[..4], ["folds", "shard/train", "shard/test", "model/a"]);
        assert_eq!(groups[1].command_line("imet"), "imet shard --spec s.toml --split train");
        assert_eq!(groups[3].deps, ["folds", "shard/train", "shard/test"]);
        assert_eq!(short_name(&groups[1].id), "shard-train");
        // Without `source = "shards"` there are no shard jobs.
        let plain = Plan::new(&JobSpec::parse("s.toml", SPEC).unwrap(), Path::new("s.toml")).unwrap();
        assert!(plain.jobs.iter().all(|j| j.kind != JobKind::Shard));
    }

    #[test]
    fn odd_arguments_are_shell_quoted() {
        assert_eq!(shell_quote("jobs/a b.toml"), "'jobs/a b.toml'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("plain-1.toml"), "plain-1.toml");
    }
}
