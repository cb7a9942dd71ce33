//! Local executor (orchestrate stage): runs an experiment's job DAG on this
//! machine as child processes of the `imet` binary, N at a time, in
//! dependency order: the README's main command, `imet run`. Reads the spec,
//! the jobs' manifests and, at the end, the ensemble's `report.json`;
//! writes `runs/{experiment}/spec.toml`, the synthetic sample when the spec
//! asks for one, and one log file per job on the local disk. Every job
//! resumes itself, so a killed run that is started again finishes the rest.

use super::gpus::{GpuPool, VISIBLE_ENV};
use super::plan::{Job, JobKind, Plan};
use crate::data;
use crate::ids::Fold;
use crate::error::{Error, Result};
use crate::spec::{JobSpec, SpecSource};
use crate::storage::{keys, Store};
use crate::telemetry::{print_line, Progress};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};

/// Lines of a failed job's log printed under the failure.
pub const LOG_TAIL_LINES: usize = 30;

/// How `imet run` runs the plan.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The program every job runs (`imet`); its arguments come from the plan.
    pub program: PathBuf,
    /// Jobs at a time (at least 1).
    pub parallel: usize,
    /// Where job logs go; [`default_log_dir`] when unset.
    pub log_dir: Option<PathBuf>,
    /// Jobs committed by another spec, or made from upstream outputs that
    /// were committed again since, run again (their manifest is kept
    /// beside as `_SUCCESS.json.stale-{time}`) instead of failing.
    pub rerun_stale: bool,
    /// GPU ids jobs are given one each (`--gpus`, `IMET_GPUS`); detected
    /// when unset ([`super::gpus::detect`]).
    pub gpus: Option<Vec<String>>,
}

impl RunOptions {
    /// The current executable, one job at a time, default log folder.
    ///
    /// # Errors
    /// [`Error::Io`] when the running executable cannot be found.
    pub fn current_exe() -> Result<RunOptions> {
        let program = std::env::current_exe().map_err(|source| Error::Io { path: PathBuf::from("/proc/self/exe"), source })?;
        Ok(RunOptions { program, parallel: 1, log_dir: None, rerun_stale: false, gpus: None })
    }
}

/// Where a job stands in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Not started (the run was interrupted first).
    Pending,
    /// Its manifest was already committed for this spec.
    Skipped,
    Done,
    Failed,
    /// A dependency failed, was blocked or was interrupted.
    Blocked,
    /// Stopped by an interrupt of `imet run`.
    Interrupted,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Skipped => "skipped",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Blocked => "blocked",
            JobState::Interrupted => "interrupted",
        }
    }

    /// Done now or before: dependents may start.
    fn satisfied(self) -> bool {
        matches!(self, JobState::Done | JobState::Skipped)
    }
}

/// One row of the summary table.
#[derive(Clone, Debug, Serialize)]
pub struct JobOutcome {
    pub job: String,
    pub state: JobState,
    pub seconds: f64,
    /// The job's main output key (done, skipped), its log file (failed), or
    /// why it did not run (blocked).
    pub output: String,
}

/// One stage's ensemble F2.
#[derive(Clone, Debug, Serialize)]
pub struct StageF2 {
    pub stage: String,
    pub oof_f2: Option<f64>,
    pub cv_f2: Option<f64>,
}

/// Every stage's ensemble F2 from the reports committed so far, in stage
/// order, with the last stage's alone too.
///
/// # Errors
/// As [`ensemble_f2`].
pub async fn stages_f2(store: &Store, spec: &JobSpec) -> Result<(Vec<StageF2>, Option<f64>, Option<f64>)> {
    let mut out = Vec::new();
    for st in spec.stages() {
        if st.ensemble.is_none() {
            continue;
        }
        let (oof_f2, cv_f2) = ensemble_f2(store, keys::Scope { experiment: &spec.experiment, stage: st.key() }).await?;
        out.push(StageF2 { stage: st.name.to_string(), oof_f2, cv_f2 });
    }
    let (oof, cv) = out.last().map_or((None, None), |s| (s.oof_f2, s.cv_f2));
    if out.len() < 2 {
        out.clear();
    }
    Ok((out, oof, cv))
}

/// What a local run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunSummary {
    pub experiment: String,
    /// The in-process steps before the jobs (spec, sample), then every job
    /// of the plan in plan order.
    pub jobs: Vec<JobOutcome>,
    /// The ensemble's OOF F2 (its chosen thresholds, in-sample) when the
    /// ensemble is committed.
    pub oof_f2: Option<f64>,
    /// The chosen threshold strategy's cross-validated OOF F2.
    pub cv_f2: Option<f64>,
    /// Every committed stage's ensemble F2 (in-sample, cross-validated),
    /// when the experiment has later stages; the last is `oof_f2`, `cv_f2`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageF2>,
    pub log_dir: PathBuf,
    /// An interrupt stopped the run before every job ended.
    pub interrupted: bool,
}

impl RunSummary {
    /// Ids of the jobs that failed.
    pub fn failed(&self) -> Vec<&str> {
        self.jobs.iter().filter(|j| j.state == JobState::Failed).map(|j| j.job.as_str()).collect()
    }

    /// Whether every job is done or skipped.
    pub fn complete(&self) -> bool {
        self.jobs.iter().all(|j| j.state.satisfied())
    }

    /// `Ok` when no job failed and the run was not interrupted.
    ///
    /// # Errors
    /// [`Error::JobsFailed`] naming the failed jobs and the log folder;
    /// [`Error::Interrupted`].
    pub fn outcome(&self) -> Result<()> {
        let failed = self.failed();
        if !failed.is_empty() {
            return Err(Error::JobsFailed {
                experiment: self.experiment.clone(),
                failed: failed.into_iter().map(String::from).collect(),
                log_dir: self.log_dir.display().to_string(),
            });
        }
        if self.interrupted {
            let unfinished = self.jobs.iter().filter(|j| !j.state.satisfied()).count();
            return Err(Error::Interrupted { experiment: self.experiment.clone(), unfinished });
        }
        Ok(())
    }

    /// The summary table (job, state, seconds, output) and the OOF F2.
    pub fn render(&self) -> String {
        let width = self.jobs.iter().map(|j| j.job.len()).max().unwrap_or(3).max(3);
        let mut out = format!("{:<width$}  {:<11} {:>8}  output\n", "job", "state", "seconds");
        for j in &self.jobs {
            out.push_str(&format!("{:<width$}  {:<11} {:>8.1}  {}\n", j.job, j.state.as_str(), j.seconds, j.output));
        }
        for st in &self.stages {
            if let (Some(f2), Some(cv)) = (st.oof_f2, st.cv_f2) {
                out.push_str(&format!("stage {:<12} OOF F2 {f2:.4} (cross-validated {cv:.4})\n", st.stage));
            }
        }
        if let Some(f2) = self.oof_f2 {
            out.push_str(&format!("OOF F2 of experiment `{}`: {f2:.4}", self.experiment));
            if let Some(cv) = self.cv_f2 {
                out.push_str(&format!(" (chosen thresholds; cross-validated {cv:.4})"));
            }
            out.push('\n');
        }
        out
    }
}

/// The log folder of `spec`'s jobs: `{root}/logs/{experiment}/` when the
/// store is a local folder, else `.imet/logs/{experiment}/` in the working
/// directory.
///
/// # Errors
/// As [`crate::storage::StorageSection::root_url`].
pub fn default_log_dir(spec: &JobSpec) -> Result<PathBuf> {
    let url = spec.storage.root_url()?;
    Ok(match url.strip_prefix("file://") {
        Some(path) => Path::new(path).join("logs").join(&spec.experiment),
        None => Path::new(".imet").join("logs").join(&spec.experiment),
    })
}

/// The log file of job `id` (`train/m/0` -> `train_m_0.log`).
pub fn log_file(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{}.log", id.replace('/', "_")))
}

/// The key a job's outputs are best known by.
pub fn main_output(experiment: &str, job: &Job) -> String {
    let (model, fold) = (job.model.as_deref().unwrap_or_default(), Fold(job.fold.unwrap_or_default()));
    let scope = keys::Scope { experiment, stage: job.stage.as_deref() };
    match job.kind {
        JobKind::Folds => keys::folds(experiment),
        JobKind::Shard => job.manifest.clone(),
        JobKind::Curate => keys::stage_data_success(scope),
        JobKind::Train => keys::weights(scope, model, fold),
        JobKind::Predict => keys::test_predictions(scope, model, fold),
        JobKind::Level2 => keys::test_predictions(scope, crate::level2::MEMBER, fold),
        JobKind::Ensemble => keys::submission(scope),
    }
}

/// `imet run`: loads the spec `source` names (its file and `--set`
/// overrides, which every job is given too) and runs it, or with `smoke`
/// its smoke version ([`super::smoke::derive`]), whose resolved spec
/// (overrides applied) is written to `{smoke root}/spec.toml` for the jobs
/// to read.
///
/// # Errors
/// [`Error::Spec`] for a spec that does not load (a recipe element not
/// built yet included), [`Error::Io`] when the smoke spec cannot be
/// written, and the errors of [`run`].
pub async fn run_path(source: &SpecSource, smoke: bool, options: &RunOptions) -> Result<RunSummary> {
    let spec = source.load()?;
    if !smoke {
        return run_source(&spec, source, options).await;
    }
    let origin = source.path.display().to_string();
    // IMET_ROOT overrides every spec's root, the smoke spec's too: a smoke
    // run would read that store's data and write its runs there.
    if let Ok(root) = std::env::var(crate::storage::config::ROOT_ENV) {
        return Err(Error::Spec {
            path: format!("{origin} (smoke)"),
            message: format!("a smoke run writes its own sample under out/smoke/, but {} = `{root}` would send every job to that store instead: unset it for smoke runs", crate::storage::config::ROOT_ENV),
        });
    }
    let derived = super::smoke::derive(&spec).map_err(|message| Error::Spec { path: format!("{origin} (smoke)"), message })?;
    let dir = PathBuf::from(&derived.storage.root);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
    let path = dir.join("spec.toml");
    let text = format!("# Smoke version of {origin} (imet run --smoke); regenerated by every smoke run.\n{}", derived.to_toml());
    std::fs::write(&path, text).map_err(|source| Error::Io { path: path.clone(), source })?;
    run(&derived, &path, options).await
}

/// Runs `spec` (loaded from `spec_path`) on this machine: writes the
/// resolved spec, generates the synthetic sample when asked and absent,
/// then runs every job of [`Plan::new`] as `{program} {job.args}`,
/// `parallel` at a time, each GPU job on a GPU of its own
/// ([`super::gpus`]). A job whose manifest is committed is skipped; a
/// failed job's log tail is printed and its dependents are blocked while
/// independent jobs still run. On Ctrl-C (SIGINT) no new job starts, the
/// running ones get the signal, and the run waits for them.
///
/// Returns the summary whatever the jobs did: check
/// [`RunSummary::failed`] and [`RunSummary::interrupted`].
///
/// # Errors
/// Store errors before the jobs start, the sample generator's errors, and
/// [`Error::Io`] when the log folder cannot be created.
pub async fn run(spec: &JobSpec, spec_path: &Path, options: &RunOptions) -> Result<RunSummary> {
    run_source(spec, &SpecSource::file(spec_path), options).await
}

/// [`run`] of `spec` read from `source`: every job reads the same file
/// with the same `--set` overrides.
///
/// # Errors
/// As [`run`].
pub async fn run_source(spec: &JobSpec, source: &SpecSource, options: &RunOptions) -> Result<RunSummary> {
    let store = spec.open_store()?;
    let span = info_span!("job", kind = "run", experiment = %spec.experiment);
    async move {
        let log_dir = match &options.log_dir {
            Some(d) => d.clone(),
            None => default_log_dir(spec)?,
        };
        std::fs::create_dir_all(&log_dir).map_err(|source| Error::Io { path: log_dir.clone(), source })?;
        let mut summary = RunSummary { experiment: spec.experiment.clone(), log_dir: log_dir.clone(), ..Default::default() };
        write_spec(&store, spec).await?;

        let t = Instant::now();
        let sample = data::sample::ensure(&store, &spec.data).instrument(info_span!("stage", name = "sample")).await?;
        summary.jobs.push(JobOutcome {
            job: "sample".into(),
            state: if sample.is_some() { JobState::Done } else { JobState::Skipped },
            seconds: t.elapsed().as_secs_f64(),
            output: match &sample {
                Some(s) => format!("{} train + {} test images over {} classes in data/", s.train, s.test, s.classes),
                None => keys::TRAIN.into(),
            },
        });

        let plan = Plan::from_source(spec, source)?;
        let (outcomes, interrupted) = execute(&store, &plan, options, &log_dir).await?;
        summary.jobs.extend(outcomes);
        summary.interrupted = interrupted;
        (summary.stages, summary.oof_f2, summary.cv_f2) = stages_f2(&store, spec).await?;
        info!(jobs = summary.jobs.len(), failed = summary.failed().len(), interrupted, "run finished");
        Ok(summary)
    }
    .instrument(span)
    .await
}

/// Reads the ensemble's OOF F2 from `report.json`: `scores.samples.f` (the
/// chosen thresholds on every OOF row) and the chosen strategy's `cv_f2`.
///
/// # Errors
/// Store errors and [`Error::Format`] for a report that is not JSON.
pub async fn ensemble_f2(store: &Store, experiment: impl std::fmt::Display) -> Result<(Option<f64>, Option<f64>)> {
    let key = keys::report(experiment);
    let Some(bytes) = store.get_opt(&key).await? else {
        return Ok((None, None));
    };
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::Format { key: key.clone(), what: "ensemble report", reason: e.to_string() })?;
    let oof = v.pointer("/scores/samples/f").and_then(|f| f.as_f64());
    let chosen = v.get("chosen").and_then(|c| c.as_str()).unwrap_or_default();
    let cv = v
        .get("strategies")
        .and_then(|s| s.as_array())
        .and_then(|all| all.iter().find(|e| e.pointer("/strategy/name").and_then(|n| n.as_str()) == Some(chosen)))
        .and_then(|e| e.get("cv_f2"))
        .and_then(|f| f.as_f64());
    Ok((oof, cv))
}

/// A job in flight: its index in the plan, when it started, its GPU.
struct Running {
    index: usize,
    started: Instant,
    gpu: Option<String>,
}

/// Runs the plan's jobs; returns one outcome per job in plan order and
/// whether an interrupt stopped the run.
async fn execute(store: &Store, plan: &Plan, options: &RunOptions, log_dir: &Path) -> Result<(Vec<JobOutcome>, bool)> {
    let mut ex = Executor::new(plan, options, log_dir);
    ex.skip_committed(store).await?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|source| Error::Io { path: PathBuf::from("SIGINT handler"), source })?;
    loop {
        ex.block_unreachable();
        if !ex.interrupted {
            ex.start_ready();
        }
        if ex.running.is_empty() {
            break;
        }
        tokio::select! {
            done = ex.set.join_next() => {
                let Some(done) = done else { break };
                let (pid, status) = done?;
                ex.finished(pid, status);
            }
            _ = sigint.recv() => ex.interrupt(),
        }
    }
    Ok(ex.into_outcomes())
}

/// The state of a local run: each job's state and outcome, the jobs in
/// flight and their exit watchers.
struct Executor<'a> {
    plan: &'a Plan,
    options: &'a RunOptions,
    log_dir: &'a Path,
    index: HashMap<&'a str, usize>,
    state: Vec<JobState>,
    outcomes: Vec<JobOutcome>,
    /// Width of the job column of progress lines.
    width: usize,
    /// Threads each job gets.
    threads: usize,
    running: HashMap<u32, Running>,
    set: JoinSet<(u32, std::io::Result<std::process::ExitStatus>)>,
    interrupted: bool,
    /// Jobs settled (skipped, done, failed, blocked): a bar, or log lines.
    progress: Progress,
    /// GPUs free and in use.
    gpus: GpuPool,
}

impl<'a> Executor<'a> {
    fn new(plan: &'a Plan, options: &'a RunOptions, log_dir: &'a Path) -> Executor<'a> {
        Executor {
            plan,
            options,
            log_dir,
            index: plan.jobs.iter().enumerate().map(|(i, j)| (j.id.as_str(), i)).collect(),
            state: vec![JobState::Pending; plan.jobs.len()],
            outcomes: plan.jobs.iter().map(|j| JobOutcome { job: j.id.clone(), state: JobState::Pending, seconds: 0.0, output: String::new() }).collect(),
            width: plan.jobs.iter().map(|j| j.id.len()).max().unwrap_or(0),
            threads: threads_per_job(options.parallel.max(1)),
            running: HashMap::new(),
            set: JoinSet::new(),
            interrupted: false,
            progress: Progress::with_unit(format!("run {}", plan.experiment), plan.jobs.len() as u64, "jobs"),
            gpus: GpuPool::new(options.gpus.clone().unwrap_or_else(super::gpus::detect)),
        }
    }

    /// Prints a progress line: `{what} {job} {detail}`.
    fn say(&self, what: &str, i: usize, detail: &str) {
        print_line(&format!("{what:<12} {:<width$}  {detail}", self.plan.jobs[i].id, width = self.width));
        if matches!(what, "skipped" | "done" | "failed" | "blocked" | "interrupted") {
            self.progress.inc(1);
        }
    }

    /// Marks committed jobs skipped first, so the table shows them even when
    /// an earlier job fails.
    async fn skip_committed(&mut self, store: &Store) -> Result<()> {
        for (i, job) in self.plan.jobs.iter().enumerate() {
            match job.committed(store).await {
                Ok(true) => {
                    self.state[i] = JobState::Skipped;
                    self.outcomes[i].output = main_output(&self.plan.experiment, job);
                    self.say("skipped", i, "already committed");
                }
                Ok(false) => {}
                // Another spec's manifest, or one made from upstream outputs
                // committed again since: rerun when asked.
                Err(Error::SpecChanged { .. } | Error::Stale { .. }) if self.options.rerun_stale => {
                    let kept = set_aside(store, &job.manifest).await?;
                    self.say("stale", i, &format!("runs again; its manifest is kept as {kept}"));
                }
                // Another spec's manifest, or one whose outputs were removed:
                // the job's own failure, with the fix in the message.
                Err(e @ (Error::SpecChanged { .. } | Error::Stale { .. } | Error::Format { .. })) => {
                    self.state[i] = JobState::Failed;
                    self.outcomes[i].output = e.to_string();
                    self.say("failed", i, &e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Blocks every pending job whose dependency can no longer succeed.
    fn block_unreachable(&mut self) {
        let mut changed = true;
        while changed {
            changed = false;
            for (i, job) in self.plan.jobs.iter().enumerate() {
                if self.state[i] != JobState::Pending {
                    continue;
                }
                let failed = |d: &&String| self.index.get(d.as_str()).is_some_and(|&k| matches!(self.state[k], JobState::Failed | JobState::Blocked));
                if let Some(dep) = job.deps.iter().find(failed) {
                    let why = format!("{dep} did not finish");
                    self.state[i] = JobState::Blocked;
                    self.say("blocked", i, &why);
                    self.outcomes[i].output = why;
                    changed = true;
                }
            }
        }
    }

    /// Starts ready jobs, in plan order, up to the parallelism.
    fn start_ready(&mut self) {
        let parallel = self.options.parallel.max(1);
        for (i, job) in self.plan.jobs.iter().enumerate() {
            if self.running.len() >= parallel {
                break;
            }
            let ready = self.state[i] == JobState::Pending
                && !self.running.values().any(|r| r.index == i)
                && job.deps.iter().all(|d| self.index.get(d.as_str()).is_some_and(|&k| self.state[k].satisfied()));
            if !ready {
                continue;
            }
            // A GPU job waits for a GPU of its own; later jobs may still start.
            let Some(gpu) = self.gpus.take(job.resources.gpus) else { continue };
            let visible = self.gpus.visible(gpu.as_deref());
            let log = log_file(self.log_dir, &job.id);
            match spawn(&self.options.program, job, &log, self.threads, visible.as_deref()) {
                Ok(mut child) => {
                    let Some(pid) = child.id() else {
                        self.state[i] = JobState::Failed;
                        self.outcomes[i].output = format!("exited before it could be watched; see {}", log.display());
                        if let Some(g) = gpu {
                            self.gpus.give_back(g);
                        }
                        continue;
                    };
                    let on = gpu.as_deref().map(|g| format!(" on GPU {g}")).unwrap_or_default();
                    self.say("started", i, &format!("log {}{on}", log.display()));
                    self.running.insert(pid, Running { index: i, started: Instant::now(), gpu });
                    self.set.spawn(async move { (pid, child.wait().await) });
                }
                Err(e) => {
                    if let Some(g) = gpu {
                        self.gpus.give_back(g);
                    }
                    self.state[i] = JobState::Failed;
                    self.outcomes[i].output = e.to_string();
                    self.say("failed", i, &e.to_string());
                }
            }
        }
    }

    /// Records the exit of the job running as `pid`.
    fn finished(&mut self, pid: u32, status: std::io::Result<std::process::ExitStatus>) {
        let Some(r) = self.running.remove(&pid) else { return };
        if let Some(g) = r.gpu {
            self.gpus.give_back(g);
        }
        let i = r.index;
        let job = &self.plan.jobs[i];
        let seconds = r.started.elapsed().as_secs_f64();
        self.outcomes[i].seconds = seconds;
        let log = log_file(self.log_dir, &job.id);
        match status {
            Ok(s) if s.success() => {
                self.state[i] = JobState::Done;
                self.outcomes[i].output = main_output(&self.plan.experiment, job);
                self.say("done", i, &format!("{seconds:.1} s"));
            }
            Ok(s) => {
                self.state[i] = if self.interrupted { JobState::Interrupted } else { JobState::Failed };
                self.outcomes[i].output = log.display().to_string();
                let how = match s.code() {
                    None => "was killed by a signal".to_string(),
                    Some(c) => match crate::error::ExitKind::from_code(c) {
                        Some(kind) => format!("exited with status {c} ({})", kind.describe()),
                        None => format!("exited with status {c}"),
                    },
                };
                if self.interrupted {
                    self.say("interrupted", i, &how);
                } else {
                    self.say("failed", i, &format!("{how} after {seconds:.1} s; last lines of {}:", log.display()));
                    print_line(&indent(&log_tail(&log, LOG_TAIL_LINES)));
                }
            }
            Err(e) => {
                self.state[i] = JobState::Failed;
                self.outcomes[i].output = format!("waiting for the job failed: {e}");
            }
        }
    }

    /// Ctrl-C: the first one stops the jobs cleanly, a second kills them.
    fn interrupt(&mut self) {
        let signal = if self.interrupted { libc::SIGKILL } else { libc::SIGINT };
        self.interrupted = true;
        warn!(running = self.running.len(), signal, "interrupted: signalling the running jobs and waiting for them");
        print_line(&format!(
            "interrupted: stopping {} running job(s) (Ctrl-C again kills them); run the same command again to finish the rest",
            self.running.len()
        ));
        for pid in self.running.keys() {
            forward_signal(*pid, signal);
        }
    }

    fn into_outcomes(self) -> (Vec<JobOutcome>, bool) {
        let mut outcomes = self.outcomes;
        for (o, s) in outcomes.iter_mut().zip(self.state) {
            o.state = s;
        }
        (outcomes, self.interrupted)
    }
}

/// Moves a stale manifest aside (`{key}.stale-{time}`) so its job runs
/// again; returns the key it was kept under.
///
/// # Errors
/// Storage errors.
async fn set_aside(store: &Store, key: &str) -> Result<String> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    // A train job's epoch checkpoints beside its manifest belong to the old
    // spec: moved aside too, or the rerun would refuse to resume from them.
    let dir = key.rsplit_once('/').map_or("", |(d, _)| d);
    let checkpoints = format!("{dir}/checkpoints/");
    for object in store.list(&checkpoints).await? {
        let rest = object.key.strip_prefix(&checkpoints).unwrap_or(&object.key);
        store.rename(&object.key, &format!("{dir}/checkpoints.stale-{stamp}/{rest}")).await?;
    }
    let kept = format!("{key}.stale-{stamp}");
    store.rename(key, &kept).await?;
    Ok(kept)
}

/// Threads each of `parallel` concurrent jobs gets: the cores shared out,
/// at least 1.
pub fn threads_per_job(parallel: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / parallel.max(1)).max(1)
}

/// Starts `{program} {job.args}` with stdout and stderr appended to `log`.
/// Unless the caller set them, `OMP_NUM_THREADS` (libtorch's intra-op
/// threads) and `RAYON_NUM_THREADS` (decoding) are `threads`, so parallel
/// jobs share the cores instead of each taking all of them.
fn spawn(program: &Path, job: &Job, log: &Path, threads: usize, visible: Option<&str>) -> Result<tokio::process::Child> {
    let io = |source| Error::Io { path: log.to_path_buf(), source };
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(io)?;
    let gpus = visible.map(|v| format!("{VISIBLE_ENV}={v:?} ")).unwrap_or_default();
    {
        use std::io::Write;
        let stamp = chrono::Utc::now().to_rfc3339();
        writeln!(file, "=== {stamp} {gpus}{}", job.command_line(&program.display().to_string())).map_err(io)?;
    }
    let err = file.try_clone().map_err(io)?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&job.args).stdin(std::process::Stdio::null()).stdout(file).stderr(err);
    if let Some(v) = visible {
        cmd.env(VISIBLE_ENV, v);
    }
    for var in ["OMP_NUM_THREADS", "RAYON_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            cmd.env(var, threads.to_string());
        }
    }
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        // A child outlives a killed `imet run` otherwise, and a rerun would
        // race it; it gets SIGTERM when the runner dies.
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| Error::Io { path: program.to_path_buf(), source })
}

/// Sends `signal` to process `pid` (a running child: not yet reaped).
fn forward_signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) with the pid of our own unreaped child and a valid signal.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    if rc != 0 {
        warn!(pid, signal, error = %std::io::Error::last_os_error(), "could not signal a job");
    }
}

/// The last `n` lines of `path` (a note when it cannot be read).
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    | {l}")).collect::<Vec<_>>().join("\n")
}

/// Writes `runs/{experiment}/spec.toml` first. A different spec already
/// there is kept, and this one is stored beside it under its hash.
///
/// # Errors
/// Store errors.
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
