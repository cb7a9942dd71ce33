//! `--set key.path=value` through the built binary: `imet spec` prints the
//! resolved spec; an override changes the spec hash of the jobs it touches
//! and only those; `imet run` passes it to every job and records it in
//! `runs/{exp}/spec.toml`; Slurm scripts pass it on; Kubernetes and AWS
//! Batch carry the resolved spec; mistakes name the override and what the
//! spec expects.

use crate::common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn imet(cwd: &Path) -> Command {
    let mut c = Command::new(common::imet_bin());
    c.current_dir(cwd).env("RUST_LOG", "warn").env_remove("IMET_ROOT");
    c
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed:\nstdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn failed(out: Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} should fail:\n{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const BATCH16: &str = "models[r18].train.batch_size=16";

/// The plan of jobs/sample.toml as JSON, with `sets` applied.
fn plan(sets: &[&str]) -> Value {
    let mut c = imet(&repo());
    c.args(["plan", "--json", "--spec", "jobs/sample.toml"]);
    for s in sets {
        c.args(["--set", s]);
    }
    serde_json::from_str(&ok(c.output().unwrap(), "imet plan")).unwrap()
}

fn hashes(plan: &Value) -> Vec<(String, String)> {
    plan["jobs"].as_array().unwrap().iter().map(|j| (j["id"].as_str().unwrap().to_string(), j["spec_hash"].as_str().unwrap().to_string())).collect()
}

#[test]
fn an_override_changes_the_hash_of_the_jobs_it_touches_and_reaches_every_command() {
    let (base, set) = (plan(&[]), plan(&[BATCH16]));
    for ((id, a), (_, b)) in hashes(&base).iter().zip(hashes(&set)) {
        let touched = id.starts_with("train/r18/") || id.starts_with("predict/r18/") || id == "ensemble";
        assert_eq!(a != &b, touched, "{id}: {a} vs {b}");
    }
    for job in set["jobs"].as_array().unwrap() {
        let cmd = job["command"].as_str().unwrap();
        assert!(cmd.contains("--spec jobs/sample.toml --set 'models[r18].train.batch_size=16'"), "{cmd}");
    }
}

#[test]
fn imet_spec_prints_the_resolved_spec_and_mistakes_name_the_override() {
    let text = ok(imet(&repo()).args(["spec", "--spec", "jobs/sample.toml", "--set", BATCH16, "--set", "models[1].size=40", "--set", "experiment=other"]).output().unwrap(), "imet spec");
    let spec = imet::JobSpec::parse("printed", &text).unwrap();
    assert_eq!((spec.models[0].train.batch_size, spec.models[1].size, spec.experiment.as_str()), (16, 40, "other"));
    let base = imet::JobSpec::load(&repo().join("jobs/sample.toml")).unwrap();
    assert_eq!(spec.models[1].train, base.models[1].train, "the other model is untouched");

    for (set, wanted) in [
        ("models[r18].train.batch_size=big", ["--set models[r18].train.batch_size=big", "expected usize"]),
        ("models[r18].train.bach_size=16", ["unknown field `bach_size`", "`batch_size`"]),
        ("models[r50].size=64", ["no element named \"r50\"", "[\"r18\", \"r34\"]"]),
        ("stages[clean].drop_noisy.fraction=0.1", ["`stages` is not in the spec", "--set stages[clean]"]),
        ("folds.k=1", ["folds.k", "(with --set folds.k=1)"]),
        ("folds.k", ["has no `=`", "KEY=VALUE"]),
    ] {
        let err = failed(imet(&repo()).args(["spec", "--spec", "jobs/sample.toml", "--set", set]).output().unwrap(), set);
        for w in wanted {
            assert!(err.contains(w), "--set {set}: `{w}` missing from:\n{err}");
        }
    }
    // Later stages are addressed by name too.
    let text = ok(
        imet(&repo()).args(["spec", "--spec", "jobs/r2-first-place.toml", "--set", "stages[clean].drop_noisy.fraction=0.1"]).output().unwrap(),
        "imet spec (stages)",
    );
    let spec = imet::JobSpec::parse("printed", &text).unwrap();
    let clean = spec.stages.iter().find(|s| s.name == "clean").unwrap();
    assert_eq!(clean.drop_noisy.as_ref().unwrap().fraction, Some(0.1));
}

#[test]
fn imet_run_gives_every_job_the_overrides_and_records_the_resolved_spec() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::copy(repo().join("jobs/sample.toml"), dir.path().join("s.toml")).unwrap();
    // A stand-in for the job binary: records its arguments, then fails, so
    // the run stops after the first job.
    let program = dir.path().join("fake-imet");
    std::fs::write(&program, format!("#!/bin/sh\nprintf '%s\\n' \"$*\" >> {}\nexit 3\n", dir.path().join("calls").display())).unwrap();
    Command::new("chmod").arg("+x").arg(&program).status().unwrap();
    let out = imet(dir.path())
        .args(["run", "--spec", "s.toml", "--set", BATCH16, "--set"])
        .arg(format!("storage.root={}", root.display()))
        .args(["--set", "data.sample.train=40", "--set", "data.sample.test=10", "--program"])
        .arg(&program)
        .output()
        .unwrap();
    failed(out, "imet run with a failing job");
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    assert_eq!(calls.lines().count(), 1, "{calls}");
    assert!(calls.starts_with("folds --spec s.toml --set models[r18].train.batch_size=16 --set storage.root="), "{calls}");
    let saved = std::fs::read_to_string(root.join("runs/sample/spec.toml")).unwrap();
    let saved = imet::JobSpec::parse("runs/sample/spec.toml", &saved).unwrap();
    assert_eq!((saved.models[0].train.batch_size, saved.data.sample.as_ref().unwrap().train), (16, 40));
}

#[test]
fn batch_engines_carry_the_overrides() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join("jobs/sample.toml"), dir.path().join("s.toml")).unwrap();
    let root = dir.path().join("root");
    // Slurm: every script reads the spec with the same overrides.
    let out = imet(dir.path())
        .args(["submit", "--engine", "slurm", "--dry-run", "--out", "slurm", "--spec", "s.toml", "--set", BATCH16, "--set"])
        .arg(format!("storage.root={}", root.display()))
        .output()
        .unwrap();
    ok(out, "imet submit --dry-run");
    let script = std::fs::read_to_string(dir.path().join("slurm/model-r18.sbatch")).unwrap();
    let spec = std::fs::canonicalize(dir.path().join("s.toml")).unwrap();
    assert!(script.contains(&format!("imet train --spec {} --set 'models[r18].train.batch_size=16'", spec.display())), "{script}");

    // Kubernetes and AWS Batch: the spec they ship is the resolved one.
    let sets = [BATCH16, "cluster.image=registry.example/imet:0.1", "storage.root=s3://bucket/experiments", "cluster.aws_batch.job_queue=gpu"];
    for (engine, file, read) in [
        ("k8s", "00-spec.yaml", "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['data']['spec.toml'])"),
        ("aws-batch", "job-definitions", "import sys, json; c = json.load(open(sys.argv[1]))['containerProperties']; print([e['value'] for e in c['environment'] if e['name'] == 'IMET_SPEC_TOML'][0])"),
    ] {
        let mut c = imet(dir.path());
        c.args(["render", "--engine", engine, "--out", engine, "--spec", "s.toml"]);
        for s in sets {
            c.args(["--set", s]);
        }
        ok(c.output().unwrap(), engine);
        let mut path = dir.path().join(engine).join(file);
        if path.is_dir() {
            // The job definition of model r18's array.
            path = std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()).find(|p| p.to_string_lossy().ends_with("r18.json")).unwrap();
        }
        assert!(path.exists(), "{} missing", path.display());
        let text = common::run_python(read, &[path.to_str().unwrap()]);
        let shipped = imet::JobSpec::parse(file, &text).unwrap();
        assert_eq!(shipped.models[0].train.batch_size, 16, "{engine}");
        assert_eq!(shipped.storage.root, "s3://bucket/experiments", "{engine}");
    }
}
