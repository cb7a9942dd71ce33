//! `imet run` on a machine with GPUs: each running train or predict job
//! gets a GPU of its own through `CUDA_VISIBLE_DEVICES`, no more GPU jobs
//! run at once than there are GPUs, and jobs that use no GPU see none. The
//! GPU count is forced with `--gpus` (this machine has none); the jobs are
//! a stand-in program that records its `CUDA_VISIBLE_DEVICES` and when it
//! ran.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

const SPEC: &str = r#"experiment = "gpus"
[storage]
root = "ROOT"
[folds]
k = 3
[[models]]
name = "a"
arch = "resnet18"
size = 32
train = { batch_size = 4, phases = [{ epochs = 1, optimizer = { kind = "sgd", lr = 0.1 } }] }
[[models]]
name = "b"
arch = "resnet18"
size = 32
train = { batch_size = 4, phases = [{ epochs = 1, optimizer = { kind = "sgd", lr = 0.1 } }] }
[ensemble]
members = ["a", "b"]
"#;

/// (job, CUDA_VISIBLE_DEVICES or `unset`, start, end) of every call.
fn calls(path: &Path) -> Vec<(String, String, f64, f64)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut starts: HashMap<String, (String, f64)> = HashMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let p: Vec<&str> = line.split(' ').collect();
        match p.as_slice() {
            ["start", job, gpu, t] => {
                starts.insert(job.to_string(), (gpu.to_string(), t.parse().unwrap()));
            }
            ["end", job, t] => {
                let (gpu, s) = starts.remove(*job).unwrap_or_else(|| panic!("end without start: {line}"));
                out.push((job.to_string(), gpu, s, t.parse().unwrap()));
            }
            _ => panic!("odd line {line:?}"),
        }
    }
    out
}

/// The most jobs running at one instant (at some job's start).
fn at_once(jobs: &[&(String, String, f64, f64)]) -> usize {
    jobs.iter().map(|a| jobs.iter().filter(|b| b.2 <= a.2 && a.2 < b.3).count()).max().unwrap_or(0)
}

fn run(dir: &Path, gpus: &str) -> (std::process::Output, Vec<(String, String, f64, f64)>) {
    let root = dir.join("root");
    std::fs::write(dir.join("spec.toml"), SPEC.replace("ROOT", root.to_str().unwrap())).unwrap();
    let log = dir.join("calls");
    let fake = dir.join("fake-imet");
    // `train --spec S --model a --fold 0` -> job `train_a_0`; the GPU as
    // `[ids]`, so an empty list shows.
    std::fs::write(
        &fake,
        format!(
            "#!/bin/bash\njob=$(echo \"$1 $5 $7\" | tr -s ' ' | sed 's/ *$//; s/ /_/g')\n\
             gpu=${{CUDA_VISIBLE_DEVICES-unset}}; [ \"$gpu\" = unset ] || gpu=\"[$gpu]\"\n\
             echo \"start $job $gpu $(date +%s.%N)\" >> {log}\nsleep 0.6\necho \"end $job $(date +%s.%N)\" >> {log}\n",
            log = log.display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
    let out = Command::new(common::imet_bin())
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env_remove("IMET_ROOT")
        .env_remove("IMET_GPUS")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .args(["run", "--spec", "spec.toml", "--parallel", "4", "--gpus", gpus, "--program"])
        .arg(&fake)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::output_text(&out));
    let c = calls(&log);
    (out, c)
}

#[test]
fn each_gpu_job_runs_on_its_own_gpu_and_no_more_run_at_once_than_there_are_gpus() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, calls) = run(tmp.path(), "1,3");
    assert_eq!(calls.len(), 1 + 2 * 3 * 2 + 1, "folds, 6 trains, 6 predicts, the ensemble: {calls:?}");
    let gpu_jobs: Vec<_> = calls.iter().filter(|c| c.0.starts_with("train_") || c.0.starts_with("predict_")).collect();
    for (job, gpu, ..) in &calls {
        if job.starts_with("train_") || job.starts_with("predict_") {
            assert!(gpu == "[1]" || gpu == "[3]", "{job} got {gpu}");
        } else {
            assert_eq!(gpu, "[]", "{job} uses no GPU and sees none");
        }
    }
    // The GPU is held from spawn to exit, which contains start..end: two
    // jobs overlapping there on one GPU would be a double booking.
    let most = at_once(&gpu_jobs);
    for (i, a) in gpu_jobs.iter().enumerate() {
        for b in &gpu_jobs[i + 1..] {
            assert!(!(a.1 == b.1 && b.2 < a.3 && a.2 < b.3), "{} and {} shared GPU {} at once", a.0, b.0, a.1);
        }
    }
    assert_eq!(most, 2, "two GPUs: two GPU jobs at once, never more (--parallel 4): {calls:?}");
    // The runner's job lines go to stderr.
    let text = common::output_text(&out);
    assert!(text.contains(" on GPU 1") && text.contains(" on GPU 3"), "{text}");
    let log = std::fs::read_to_string(tmp.path().join("root/logs/gpus/train_a_0.log")).unwrap();
    assert!(log.contains("CUDA_VISIBLE_DEVICES=\"1\"") || log.contains("CUDA_VISIBLE_DEVICES=\"3\""), "{log}");
}

#[test]
fn without_gpus_jobs_run_as_before_and_a_job_asking_for_two_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, calls) = run(tmp.path(), "0");
    assert!(calls.iter().all(|c| c.1 == "unset"), "no GPUs: the environment is left alone: {calls:?}");
    let most = at_once(&calls.iter().collect::<Vec<_>>());
    assert!(most > 2, "CPU jobs are bounded by --parallel only: {most}");

    std::fs::write(tmp.path().join("two.toml"), SPEC.replace("ROOT", "out").replace("name = \"b\"", "name = \"b\"\nresources = { gpus = 2 }")).unwrap();
    let out = common::run_imet(tmp.path(), &["plan", "--spec", "two.toml"]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("`models[b].resources.gpus` = 2") && text.contains("one GPU"), "{text}");
}
