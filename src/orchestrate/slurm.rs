//! Slurm executor (`imet submit --engine slurm`): the plan becomes sbatch
//! scripts (the folds job; one array job per model whose task `i` trains
//! and predicts fold `i`; the ensemble) chained with `afterok`
//! dependencies, written with a replayable `submit.sh` under
//! `.imet/slurm/{experiment}/` and submitted with `sbatch --parsable`.
//! Reads the jobs' manifests (committed jobs are left out); writes the
//! scripts and, through Slurm, the jobs' log files beside them.

use super::plan::{shell_quote, JobResources, Plan};
use super::show::ranges;
use crate::error::{Error, ExitKind, Result};
use crate::spec::{ClusterSection, SpecSource};
use serde::Serialize;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tracing::info;

/// How `imet submit --engine slurm` runs.
#[derive(Clone, Debug, Default)]
pub struct SubmitOptions {
    /// Folder for scripts and logs; `.imet/slurm/{experiment}` under the
    /// working directory when unset.
    pub out: Option<PathBuf>,
    /// Write the scripts and `submit.sh`, submit nothing.
    pub dry_run: bool,
}

/// One sbatch script: a single job or an array of fold tasks.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Batch {
    /// `folds`, `model/{name}` or `ensemble`.
    pub key: String,
    /// Slurm `--job-name`.
    pub name: String,
    pub script: PathBuf,
    /// `--array` indices (the folds), for model batches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub array: Option<String>,
    /// Keys of the batches this one waits for (`afterok`).
    pub after: Vec<String>,
    /// Plan jobs this batch runs.
    pub jobs: Vec<String>,
    /// Slurm job id once submitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(skip)]
    pub text: String,
}

/// What `submit` wrote and submitted.
#[derive(Clone, Debug, Serialize)]
pub struct Submission {
    pub experiment: String,
    pub dir: PathBuf,
    pub dry_run: bool,
    pub batches: Vec<Batch>,
    /// Plan jobs already committed, so left out.
    pub skipped: Vec<String>,
}

impl Submission {
    /// What was written and submitted, as `imet submit` prints it.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let verb = if self.dry_run { "written (dry run, nothing submitted)" } else { "submitted" };
        let mut out = format!("experiment `{}`: {} batch(es) {verb}; scripts and logs in {}\n", self.experiment, self.batches.len(), self.dir.display());
        let _ = writeln!(out, "{:<24} {:>10} {:>8}  {:<24} script", "batch", "job id", "array", "after");
        for b in &self.batches {
            let id = b.job_id.as_deref().unwrap_or("-");
            let _ = writeln!(out, "{:<24} {:>10} {:>8}  {:<24} {}", b.key, id, b.array.as_deref().unwrap_or("-"), b.after.join(","), b.script.display());
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(out, "already committed, not submitted: {}", self.skipped.join(" "));
        }
        if self.dry_run {
            let _ = writeln!(out, "to submit: bash {}", self.dir.join("submit.sh").display());
        }
        out
    }
}

/// Where everything the cluster needs lives, resolved on the submitting host.
#[derive(Clone, Debug)]
pub struct Context {
    /// Scripts and logs.
    pub dir: PathBuf,
    /// `--chdir` of every job (relative paths in the spec resolve here).
    pub workdir: PathBuf,
    /// Store root URL exported as `IMET_ROOT`.
    pub root: String,
}

/// Writes the scripts of every job of the spec `source` names (its file
/// and `--set` overrides, which every script passes on) not yet committed
/// and, unless `dry_run`, submits them in dependency order.
///
/// # Errors
/// Spec and store errors; [`Error::Io`] writing scripts;
/// [`Error::Engine`] when `sbatch` is missing or refuses a script (its
/// stderr is quoted).
pub async fn submit(source: &SpecSource, options: &SubmitOptions) -> Result<Submission> {
    let spec = source.load()?;
    let spec_path = source.path.as_path();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let abs_spec = std::fs::canonicalize(spec_path).map_err(io(spec_path))?;
    let workdir = std::env::current_dir().map_err(io(Path::new(".")))?;
    let plan = Plan::from_source(&spec, &source.at(&abs_spec))?;
    let store = spec.open_store()?;
    let mut done = HashSet::new();
    for job in &plan.jobs {
        if job.committed(&store).await? {
            done.insert(job.id.clone());
        }
    }
    let dir = match &options.out {
        Some(d) if d.is_absolute() => d.clone(),
        Some(d) => workdir.join(d),
        None => workdir.join(".imet/slurm").join(&spec.experiment),
    };
    let ctx = Context { dir: dir.clone(), workdir, root: spec.storage.root_url()? };
    let mut batches = batches(&plan, &spec.cluster, &done, &ctx);
    std::fs::create_dir_all(dir.join("logs")).map_err(io(&dir))?;
    for b in &batches {
        std::fs::write(&b.script, &b.text).map_err(io(&b.script))?;
    }
    let replay = dir.join("submit.sh");
    std::fs::write(&replay, submit_script(&plan.experiment, &batches)).map_err(io(&replay))?;
    let skipped: Vec<String> = plan.jobs.iter().filter(|j| done.contains(&j.id)).map(|j| j.id.clone()).collect();
    if !options.dry_run {
        let queued = queued_names().await?;
        let twice: Vec<&str> = batches.iter().map(|b| b.name.as_str()).filter(|n| queued.iter().any(|q| q == n)).collect();
        if !twice.is_empty() {
            return Err(Error::Engine {
                engine: "slurm",
                message: format!(
                    "{} already queued or running (squeue); wait for them, or cancel them with `scancel --name=NAME` before submitting again",
                    twice.join(", ")
                ),
            });
        }
        for i in 0..batches.len() {
            let after: Vec<String> = batches[i]
                .after
                .iter()
                .filter_map(|k| batches.iter().find(|b| &b.key == k).and_then(|b| b.job_id.clone()))
                .collect();
            let id = sbatch(&batches[i].script, &after).await?;
            info!(batch = %batches[i].key, job_id = %id, "submitted");
            batches[i].job_id = Some(id);
        }
    }
    Ok(Submission { experiment: plan.experiment.clone(), dir, dry_run: options.dry_run, batches, skipped })
}

/// The batches for the jobs of `plan` not in `done`, in submission order:
/// one per group of [`Plan::groups`] (a single job, or an array whose task
/// `i` runs the group's jobs of fold `i`).
pub fn batches(plan: &Plan, cluster: &ClusterSection, done: &HashSet<String>, ctx: &Context) -> Vec<Batch> {
    let imet = cluster.imet();
    plan.groups(done)
        .into_iter()
        .map(|g| {
            let file = g.id.replace('/', "-");
            let mut b = Batch {
                name: format!("imet-{}-{file}", plan.experiment),
                script: ctx.dir.join(format!("{file}.sbatch")),
                array: g.folds.as_ref().map(|f| ranges(&f.iter().map(|&x| u32::from(x)).collect::<Vec<_>>())),
                after: g.deps.clone(),
                jobs: g.jobs.clone(),
                job_id: None,
                key: g.id.clone(),
                text: String::new(),
            };
            b.text = script(&b, cluster, ctx, &g.resources, &g.command_line(imet));
            b
        })
        .collect()
}

/// Slurm's `--time` format, `D-HH:MM:SS`.
pub fn slurm_time(seconds: u64) -> String {
    format!("{}-{:02}:{:02}:{:02}", seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60)
}

fn script(b: &Batch, cluster: &ClusterSection, ctx: &Context, r: &JobResources, command: &str) -> String {
    let mut s = String::from("#!/bin/bash\n");
    let mut opt = |line: String| {
        s.push_str("#SBATCH ");
        s.push_str(&line);
        s.push('\n');
    };
    opt(format!("--job-name={}", b.name));
    if let Some(a) = &b.array {
        opt(format!("--array={a}"));
    }
    let log = ctx.dir.join("logs").join(format!("{}-{}.log", b.key.replace('/', "-"), if b.array.is_some() { "%A_%a" } else { "%j" }));
    opt(format!("--output={}", log.display()));
    // A requeued job appends to its log, so the first attempt's stays.
    opt("--open-mode=append".into());
    if cluster.slurm.requeues > 0 {
        opt("--requeue".into());
    }
    opt(format!("--chdir={}", ctx.workdir.display()));
    opt("--nodes=1".into());
    opt("--ntasks=1".into());
    opt(format!("--cpus-per-task={}", r.cpus));
    opt(format!("--mem={}G", r.memory_gb));
    opt(format!("--time={}", slurm_time(r.time_limit_s)));
    if r.gpus > 0 {
        opt(format!("--gres=gpu:{}", r.gpus));
    }
    if let Some(p) = &cluster.slurm.partition {
        opt(format!("--partition={p}"));
    }
    if let Some(a) = &cluster.slurm.account {
        opt(format!("--account={a}"));
    }
    for extra in &cluster.slurm.sbatch_extra {
        opt(extra.clone());
    }
    let _ = writeln!(s, "# {}: {}", b.key, b.jobs.join(" "));
    let _ = writeln!(s, "# Written by {}.", crate::storage::provenance::build_line());
    s.push_str("set -uo pipefail\n");
    let _ = writeln!(s, "export {}={}", crate::storage::config::ROOT_ENV, shell_quote(&ctx.root));
    let _ = writeln!(s, "status=0\n{{ {command}; }} || status=$?");
    s.push_str(&requeue_on_transient(cluster.slurm.requeues));
    s.push_str("exit \"$status\"\n");
    s
}

/// The script's tail after the job's commands: on the transient exit
/// status (75) the job requeues itself, at most `requeues` times counted by
/// `SLURM_RESTART_COUNT`; every other status ends the job as it is, so a
/// spec or input error (2, 3, 4) fails it at once and its dependents with it.
fn requeue_on_transient(requeues: u32) -> String {
    if requeues == 0 {
        return String::new();
    }
    let transient = ExitKind::Transient.code();
    format!(
        "# Exit {transient}: a transient fault outlasted imet's retries; requeue (Slurm starts a\n\
         # requeued job after its credential lifetime, 120 s by default).\n\
         if [ \"$status\" -eq {transient} ] && [ \"${{SLURM_RESTART_COUNT:-0}}\" -lt {requeues} ]; then\n\
         \x20 echo \"imet: exit {transient} (transient fault); requeueing, restart $(( ${{SLURM_RESTART_COUNT:-0}} + 1 )) of {requeues}\" >&2\n\
         \x20 scontrol requeue \"$SLURM_JOB_ID\" || echo \"imet: scontrol requeue failed; the job ends with exit {transient}\" >&2\n\
         fi\n"
    )
}

/// A bash script that submits the same batches again (what `--dry-run`
/// leaves for a person to run).
pub fn submit_script(experiment: &str, batches: &[Batch]) -> String {
    let mut s = format!(
        "#!/usr/bin/env bash\n# Submits experiment `{experiment}` to Slurm; written by `imet submit --engine slurm`.\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n"
    );
    let var = |key: &str| format!("job_{}", key.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
    for b in batches {
        let file = b.script.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
        let dep = if b.after.is_empty() {
            String::new()
        } else {
            format!(" --kill-on-invalid-dep=yes --dependency=afterok:{}", b.after.iter().map(|k| format!("${}", var(k))).collect::<Vec<_>>().join(":"))
        };
        let _ = writeln!(s, "{}=$(sbatch --parsable{dep} {} | cut -d';' -f1)", var(&b.key), shell_quote(&file));
        let _ = writeln!(s, "echo \"{} ${}\"", b.key, var(&b.key));
    }
    s
}

/// Names of this user's jobs in the queue (pending or running).
async fn queued_names() -> Result<Vec<String>> {
    let user = std::env::var("USER").ok();
    let mut cmd = tokio::process::Command::new("squeue");
    cmd.args(["-h", "-o", "%j"]);
    if let Some(u) = &user {
        cmd.arg(format!("--user={u}"));
    }
    let out = cmd.output().await.map_err(|e| Error::Engine {
        engine: "slurm",
        message: format!("cannot run `squeue` ({e}); install Slurm's client tools on this host, or pass --dry-run to only write the scripts"),
    })?;
    if !out.status.success() {
        return Err(Error::Engine {
            engine: "slurm",
            message: format!("squeue failed ({}): {}; is slurmctld reachable (`sinfo`)?", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
}

/// Runs `sbatch --parsable [--dependency=afterok:...] script`; the job id.
async fn sbatch(script: &Path, after: &[String]) -> Result<String> {
    let mut cmd = tokio::process::Command::new("sbatch");
    cmd.arg("--parsable");
    if !after.is_empty() {
        cmd.arg("--kill-on-invalid-dep=yes").arg(format!("--dependency=afterok:{}", after.join(":")));
    }
    cmd.arg(script);
    let out = cmd.output().await.map_err(|e| Error::Engine {
        engine: "slurm",
        message: format!("cannot run `sbatch` ({e}); install Slurm's client tools on this host, or pass --dry-run to only write the scripts"),
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout.trim().split(';').next().unwrap_or("").to_string();
    if !out.status.success() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Engine {
            engine: "slurm",
            message: format!(
                "sbatch refused `{}` ({}): {}{}; check the script's resources against `sinfo -N -l` and the partition",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                stdout.trim()
            ),
        });
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::JobSpec;

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
resources = { gpus = 1, cpus = 6, memory_gb = 40, time_limit = "90m", predict_time_limit = "30m" }
[[models]]
name = "b"
arch = "resnet18"
size = 64
train = { batch_size = 8, phases = [{ epochs = 1, optimizer = { kind = "sgd", lr = 0.1 } }] }
resources = { gpus = 0, cpus = 2, memory_gb = 4 }
[ensemble]
members = ["a", "b"]
[cluster]
imet = "/opt/imet"
[cluster.slurm]
partition = "gpu"
sbatch_extra = ["--qos=long"]
"#;

    fn setup() -> (JobSpec, Plan, Context) {
        let spec = JobSpec::parse("s.toml", SPEC).unwrap();
        let plan = Plan::new(&spec, Path::new("/w/s.toml")).unwrap();
        let ctx = Context { dir: "/w/.imet/slurm/e".into(), workdir: "/w".into(), root: "file:///w/out".into() };
        (spec, plan, ctx)
    }

    #[test]
    fn one_array_per_model_waits_for_folds_and_the_ensemble_waits_for_every_array() {
        let (spec, plan, ctx) = setup();
        let b = batches(&plan, &spec.cluster, &HashSet::new(), &ctx);
        let keys: Vec<&str> = b.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(keys, ["folds", "model/a", "model/b", "ensemble"]);
        assert_eq!(b[1].array.as_deref(), Some("0-2"));
        assert_eq!(b[1].after, ["folds"]);
        assert_eq!(b[3].after, ["model/a", "model/b"]);
        let a = &b[1].text;
        for line in [
            "#SBATCH --array=0-2\n",
            "#SBATCH --gres=gpu:1\n",
            "#SBATCH --cpus-per-task=6\n",
            "#SBATCH --mem=40G\n",
            "#SBATCH --time=0-02:00:00\n",
            "#SBATCH --partition=gpu\n",
            "#SBATCH --qos=long\n",
            "#SBATCH --chdir=/w\n",
            "#SBATCH --output=/w/.imet/slurm/e/logs/model-a-%A_%a.log\n",
            "export IMET_ROOT=file:///w/out\n",
            "{ /opt/imet train --spec /w/s.toml --model a --fold env && /opt/imet predict --spec /w/s.toml --model a --fold env; } || status=$?\n",
            "#SBATCH --requeue\n",
            "#SBATCH --open-mode=append\n",
            "if [ \"$status\" -eq 75 ] && [ \"${SLURM_RESTART_COUNT:-0}\" -lt 2 ]; then\n",
            "  scontrol requeue \"$SLURM_JOB_ID\"",
            "exit \"$status\"\n",
        ] {
            assert!(a.contains(line), "{line:?} missing from\n{a}");
        }
        assert!(!b[2].text.contains("--gres"), "a CPU model asks for no GPU:\n{}", b[2].text);
        // Every script names the imet that wrote it, below its #SBATCH lines.
        let written_by = format!("\n# Written by {}.\n", crate::storage::provenance::build_line());
        for batch in &b {
            let at = batch.text.find(&written_by).unwrap_or_else(|| panic!("{written_by:?} missing from\n{}", batch.text));
            assert!(batch.text.rfind("#SBATCH ").is_some_and(|last| last < at), "{}", batch.text);
        }
        assert_eq!(batches(&plan, &spec.cluster, &HashSet::new(), &ctx).iter().map(|b| &b.text).collect::<Vec<_>>(), b.iter().map(|b| &b.text).collect::<Vec<_>>());
        assert!(b[0].text.contains("{ /opt/imet folds --spec /w/s.toml; } || status=$?\n"));
        assert!(b[3].text.contains("{ /opt/imet ensemble --spec /w/s.toml; } || status=$?\n"));
    }

    #[test]
    fn committed_jobs_are_left_out_and_their_dependencies_dropped() {
        let (spec, plan, ctx) = setup();
        let mut done: HashSet<String> = ["folds", "train/a/0", "predict/a/0", "train/a/2", "predict/a/2"].map(String::from).into();
        done.insert("train/a/1".into());
        let b = batches(&plan, &spec.cluster, &done, &ctx);
        assert_eq!(b[0].key, "model/a");
        assert_eq!(b[0].array.as_deref(), Some("1"), "fold 1 is trained but not predicted");
        assert!(b[0].after.is_empty());
        for id in plan.jobs.iter().filter(|j| j.model.as_deref() == Some("a")).map(|j| j.id.clone()) {
            done.insert(id);
        }
        let b = batches(&plan, &spec.cluster, &done, &ctx);
        assert_eq!(b.iter().map(|b| b.key.as_str()).collect::<Vec<_>>(), ["model/b", "ensemble"]);
        assert_eq!(b[1].after, ["model/b"]);
    }

    #[test]
    fn the_replay_script_chains_job_ids_through_afterok() {
        let (spec, plan, ctx) = setup();
        let b = batches(&plan, &spec.cluster, &HashSet::new(), &ctx);
        let s = submit_script("e", &b);
        assert!(s.contains("job_folds=$(sbatch --parsable folds.sbatch | cut -d';' -f1)"), "{s}");
        assert!(s.contains("job_model_a=$(sbatch --parsable --kill-on-invalid-dep=yes --dependency=afterok:$job_folds model-a.sbatch"), "{s}");
        assert!(s.contains("--dependency=afterok:$job_model_a:$job_model_b ensemble.sbatch"), "{s}");
    }

    #[test]
    fn requeues_zero_leaves_out_the_requeue_and_the_status_still_passes_through() {
        let (mut spec, plan, ctx) = setup();
        spec.cluster.slurm.requeues = 0;
        let b = batches(&plan, &spec.cluster, &HashSet::new(), &ctx);
        assert!(!b[0].text.contains("requeue"), "{}", b[0].text);
        assert!(b[0].text.ends_with("exit \"$status\"\n"), "{}", b[0].text);
    }

    #[test]
    fn slurm_time_limits_use_days_hours_minutes_seconds() {
        assert_eq!(slurm_time(90 * 60), "0-01:30:00");
        assert_eq!(slurm_time(2 * 86_400 + 61), "2-00:01:01");
    }
}
