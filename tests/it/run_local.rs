//! The local runner (`imet run`) against a fake `imet`: a generated shell
//! script that logs each call, sleeps, and commits the job's manifest the
//! way the real job does (or fails when told to). Covers dependency order,
//! parallelism, skipping committed jobs, blocking dependents of a failed
//! job, the log tail, SIGINT and a killed runner.

use crate::common;

use imet::orchestrate::local::{self, JobState, RunOptions};
use imet::orchestrate::plan::{JobKind, Plan};
use imet::storage::keys;
use imet::storage::manifest::{JobId, Manifest};
use imet::JobSpec;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Fixture {
    dir: tempfile::TempDir,
    spec_path: PathBuf,
    spec: JobSpec,
    program: PathBuf,
}

impl Fixture {
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls")).unwrap_or_default().lines().map(String::from).collect()
    }
    fn fail(&self, id: &str, on: bool) {
        let f = self.dir.path().join("fail").join(id.replace('/', "_"));
        if on {
            std::fs::write(f, "").unwrap();
        } else {
            let _ = std::fs::remove_file(f);
        }
    }
    fn started(&self) -> Vec<String> {
        self.calls().iter().filter_map(|l| l.strip_prefix("start ")).map(|l| l.split(' ').next().unwrap().to_string()).collect()
    }
    fn options(&self, parallel: usize) -> RunOptions {
        RunOptions { program: self.program.clone(), parallel, log_dir: None, rerun_stale: false, gpus: None }
    }
}

/// Two models x `k` folds and an ensemble over both; the fake imet.
fn fixture(k: u8) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let spec_path = dir.path().join("exp.toml");
    let text = format!(
        r#"experiment = "fake"
[storage]
root = "{}"
[folds]
k = {k}
[[models]]
name = "a"
arch = "resnet18"
size = 32
train = {{ batch_size = 4, phases = [{{ epochs = 2, optimizer = {{ kind = "sgd", lr = 0.1 }} }}] }}
[[models]]
name = "b"
arch = "resnet18"
size = 32
train = {{ batch_size = 4, phases = [{{ epochs = 2, optimizer = {{ kind = "sgd", lr = 0.1 }} }}] }}
[ensemble]
members = ["a", "b"]
"#,
        root.display()
    );
    std::fs::write(&spec_path, &text).unwrap();
    let spec = JobSpec::parse("exp.toml", &text).unwrap();
    std::fs::create_dir_all(dir.path().join("fail")).unwrap();
    let plan = Plan::new(&spec, &spec_path).unwrap();
    let program = dir.path().join("fake-imet");
    std::fs::write(&program, fake_script(dir.path(), &root, &plan)).unwrap();
    Command::new("chmod").arg("+x").arg(&program).status().unwrap();
    Fixture { dir, spec_path, spec, program }
}

fn fake_script(dir: &Path, root: &Path, plan: &Plan) -> String {
    let calls = dir.join("calls");
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!("calls='{}'\n", calls.display()));
    s.push_str("case \"$*\" in\n");
    for job in &plan.jobs {
        let id = &job.id;
        let manifest = Manifest::new(
            JobId { kind: job.kind.as_str().into(), experiment: plan.experiment.clone(), model: job.model.clone(), fold: job.fold },
            job.spec_hash.clone(),
            vec![],
        );
        let path = root.join(&job.manifest);
        s.push_str(&format!("  '{}')\n", job.args.join(" ")));
        s.push_str(&format!("    trap 'echo \"INT {id}\" >> \"$calls\"; exit 130' INT\n"));
        s.push_str(&format!("    trap 'echo \"TERM {id}\" >> \"$calls\"; exit 143' TERM\n"));
        s.push_str(&format!("    echo \"start {id} $(date +%s.%N)\" >> \"$calls\"\n"));
        s.push_str(&format!(
            "    if [ -e '{}/fail/{}' ]; then for i in $(seq 1 40); do echo \"{id} log line $i\"; done; echo 'boom in {id}' >&2; exit 3; fi\n",
            dir.display(),
            id.replace('/', "_")
        ));
        s.push_str("    sleep \"${FAKE_SLEEP:-0.3}\" & wait $!\n");
        if job.kind == JobKind::Ensemble {
            let report = root.join(keys::report(&plan.experiment));
            s.push_str(&format!("    mkdir -p '{}'\n", report.parent().unwrap().display()));
            s.push_str(&format!(
                "    echo '{{\"chosen\": \"global\", \"scores\": {{\"samples\": {{\"f\": 0.5}}}}, \"strategies\": [{{\"strategy\": {{\"name\": \"global\"}}, \"cv_f2\": 0.45}}]}}' > '{}'\n",
                report.display()
            ));
        }
        s.push_str(&format!("    mkdir -p '{}'\n", path.parent().unwrap().display()));
        s.push_str(&format!("    echo '{}' > '{}'\n", serde_json::to_string(&manifest).unwrap(), path.display()));
        s.push_str(&format!("    echo \"end {id} $(date +%s.%N)\" >> \"$calls\"\n"));
        s.push_str("    echo \"did $* with $OMP_NUM_THREADS threads\"\n    ;;\n");
    }
    s.push_str("  *) echo \"fake imet: unexpected arguments: $*\" >&2; exit 64;;\nesac\n");
    s
}

/// (start, end) seconds of each job from the calls file.
fn intervals(calls: &[String]) -> HashMap<String, (f64, f64)> {
    let mut m: HashMap<String, (f64, f64)> = HashMap::new();
    for l in calls {
        let parts: Vec<&str> = l.split(' ').collect();
        if parts.len() == 3 {
            let t: f64 = parts[2].parse().unwrap();
            let e = m.entry(parts[1].to_string()).or_insert((f64::NAN, f64::NAN));
            match parts[0] {
                "start" => e.0 = t,
                "end" => e.1 = t,
                _ => {}
            }
        }
    }
    m
}

fn max_in_flight(iv: &HashMap<String, (f64, f64)>) -> usize {
    iv.values().map(|&(s, _)| iv.values().filter(|&&(s2, e2)| s2 <= s && s < e2).count()).max().unwrap_or(0)
}

#[tokio::test]
async fn jobs_run_after_their_dependencies_and_a_rerun_skips_every_committed_job() {
    let f = fixture(2);
    let summary = local::run(&f.spec, &f.spec_path, &f.options(2)).await.unwrap();
    summary.outcome().unwrap();
    assert!(summary.complete(), "{}", summary.render());
    assert_eq!(summary.jobs.len(), 1 + 1 + 2 * 2 * 2 + 1, "sample row + every job");
    let iv = intervals(&f.calls());
    let plan = Plan::new(&f.spec, &f.spec_path).unwrap();
    for job in &plan.jobs {
        let (start, _) = iv[&job.id];
        for d in &job.deps {
            assert!(iv[d].1 <= start, "{} started before its dependency {d} ended", job.id);
        }
    }
    assert_eq!(summary.oof_f2, Some(0.5));
    assert_eq!(summary.cv_f2, Some(0.45));
    assert!(summary.render().contains("OOF F2 of experiment `fake`: 0.5000"), "{}", summary.render());
    let log = f.root().join("logs/fake/train_a_1.log");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("did train --spec") && text.contains("--model a --fold 1"), "{text}");
    let threads = local::threads_per_job(2);
    assert!(text.contains(&format!("with {threads} threads")), "two jobs at a time share the cores: {text}");
    assert!(f.root().join(keys::spec("fake")).exists(), "the resolved spec is written first");

    let before = f.calls().len();
    let again = local::run(&f.spec, &f.spec_path, &f.options(2)).await.unwrap();
    assert_eq!(f.calls().len(), before, "a rerun ran jobs again");
    assert!(again.jobs.iter().skip(1).all(|j| j.state == JobState::Skipped), "{}", again.render());
    assert_eq!(again.oof_f2, Some(0.5));
}

#[tokio::test]
async fn parallel_bounds_the_jobs_in_flight() {
    let f = fixture(3);
    let summary = local::run(&f.spec, &f.spec_path, &f.options(3)).await.unwrap();
    summary.outcome().unwrap();
    let wide = max_in_flight(&intervals(&f.calls()));
    assert_eq!(wide, 3, "six train jobs are ready at once; three at a time should run");

    let g = fixture(2);
    let summary = local::run(&g.spec, &g.spec_path, &g.options(1)).await.unwrap();
    summary.outcome().unwrap();
    assert_eq!(max_in_flight(&intervals(&g.calls())), 1);
}

#[tokio::test]
async fn a_failed_job_blocks_its_dependents_while_independent_jobs_finish_and_a_rerun_resumes() {
    let f = fixture(2);
    f.fail("train/a/1", true);
    let summary = local::run(&f.spec, &f.spec_path, &f.options(2)).await.unwrap();
    let state = |id: &str| summary.jobs.iter().find(|j| j.job == id).unwrap().state;
    assert_eq!(state("train/a/1"), JobState::Failed);
    assert_eq!(state("predict/a/1"), JobState::Blocked);
    assert_eq!(state("ensemble"), JobState::Blocked);
    for id in ["folds", "train/a/0", "predict/a/0", "train/b/0", "predict/b/0", "train/b/1", "predict/b/1"] {
        assert_eq!(state(id), JobState::Done, "{id}: {}", summary.render());
    }
    assert_eq!(summary.oof_f2, None);
    let err = summary.outcome().unwrap_err().to_string();
    assert!(err.contains("train/a/1") && err.contains("logs"), "{err}");
    let failed = summary.jobs.iter().find(|j| j.job == "train/a/1").unwrap();
    assert!(failed.output.ends_with("train_a_1.log"), "{}", failed.output);
    let tail = local::log_tail(Path::new(&failed.output), local::LOG_TAIL_LINES);
    assert_eq!(tail.lines().count(), 30);
    assert!(tail.contains("boom in train/a/1") && !tail.contains("line 5\n"), "{tail}");

    f.fail("train/a/1", false);
    let n = f.started().len();
    let again = local::run(&f.spec, &f.spec_path, &f.options(2)).await.unwrap();
    again.outcome().unwrap();
    let rerun: Vec<String> = f.started()[n..].to_vec();
    assert_eq!(rerun, ["train/a/1", "predict/a/1", "ensemble"], "only the unfinished jobs run again");
    assert_eq!(again.oof_f2, Some(0.5));
}

#[tokio::test]
async fn a_manifest_of_another_spec_fails_that_job_and_names_the_key() {
    let f = fixture(2);
    let store = f.spec.open_store().unwrap();
    let other = Manifest::new(JobId { kind: "folds".into(), experiment: "fake".into(), model: None, fold: None }, "0000", vec![]);
    other.commit(&store, &keys::folds_success("fake")).await.unwrap();
    let summary = local::run(&f.spec, &f.spec_path, &f.options(2)).await.unwrap();
    let folds = summary.jobs.iter().find(|j| j.job == "folds").unwrap();
    assert_eq!(folds.state, JobState::Failed);
    assert!(folds.output.contains("different spec") && folds.output.contains("_FOLDS_SUCCESS"), "{}", folds.output);
    assert!(summary.jobs.iter().filter(|j| j.job.starts_with("train/")).all(|j| j.state == JobState::Blocked));
    assert!(f.calls().is_empty(), "no job may run on a foreign folds manifest");
}

fn imet(f: &Fixture) -> Command {
    let mut c = Command::new(common::imet_bin());
    c.env("RUST_LOG", "warn").current_dir(f.dir.path()).arg("run").arg("--spec").arg(&f.spec_path).arg("--program").arg(&f.program);
    c
}

fn wait_for(f: &Fixture, what: &str, limit: Duration) {
    let t = Instant::now();
    while !f.calls().iter().any(|l| l.starts_with(what)) {
        assert!(t.elapsed() < limit, "no `{what}` in {:?}", f.calls());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_command_prints_the_failed_jobs_log_tail_and_exits_non_zero() {
    let f = fixture(2);
    f.fail("train/b/0", true);
    let out = imet(&f).output().unwrap();
    assert!(!out.status.success());
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stderr.contains("train/b/0 log line 40") && stderr.contains("boom in train/b/0"), "{stderr}");
    assert!(!stderr.contains("train/b/0 log line 10\n"), "more than the tail printed:\n{stderr}");
    assert!(stderr.contains("failed (logs in"), "{stderr}");
    for row in ["train/b/0", "predict/b/0", "ensemble"] {
        assert!(stdout.lines().any(|l| l.starts_with(row)), "{row} missing from the summary:\n{stdout}");
    }
    assert!(stdout.lines().any(|l| l.starts_with("predict/b/0") && l.contains("blocked")), "{stdout}");
}

#[test]
fn sigint_stops_the_running_jobs_and_the_same_command_finishes_the_rest() {
    let f = fixture(2);
    let mut child = imet(&f).arg("--parallel").arg("2").env("FAKE_SLEEP", "30").spawn().unwrap();
    wait_for(&f, "start folds", Duration::from_secs(20));
    let t = Instant::now();
    Command::new("kill").arg("-INT").arg(child.id().to_string()).status().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(t.elapsed() < Duration::from_secs(10), "the runner waited for the sleeping job instead of interrupting it");
    assert!(f.calls().iter().any(|l| l == "INT folds"), "SIGINT not forwarded: {:?}", f.calls());

    let out = imet(&f).env("FAKE_SLEEP", "0").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("OOF F2"), "{stdout}");
}

#[test]
fn a_killed_runner_takes_its_jobs_down_and_a_rerun_finishes() {
    let f = fixture(2);
    let mut child = imet(&f).env("FAKE_SLEEP", "30").spawn().unwrap();
    wait_for(&f, "start folds", Duration::from_secs(20));
    child.kill().unwrap();
    let _ = child.wait();
    wait_for(&f, "TERM folds", Duration::from_secs(10));
    let out = imet(&f).env("FAKE_SLEEP", "0").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(f.started().iter().filter(|s| *s == "folds").count(), 2);
}

#[test]
fn status_reads_where_the_experiment_stands_from_the_store() {
    let f = fixture(2);
    f.fail("train/b/1", true);
    let _ = imet(&f).output().unwrap();
    let status = |json: bool| {
        let mut c = Command::new(common::imet_bin());
        c.env("RUST_LOG", "warn").arg("status").arg("--spec").arg(&f.spec_path);
        if json {
            c.arg("--json");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let v: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!((v["done"].as_u64(), v["total"].as_u64()), (Some(7), Some(10)), "{v}");
    assert!(v["oof_f2"].is_null());
    let table = status(false);
    assert!(table.lines().any(|l| l.starts_with("train/b/1") && l.contains("pending") && l.contains("no checkpoint yet (2 epochs)")), "{table}");

    f.fail("train/b/1", false);
    assert!(imet(&f).output().unwrap().status.success());
    let v: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!((v["done"].as_u64(), v["oof_f2"].as_f64()), (Some(10), Some(0.5)), "{v}");
}
