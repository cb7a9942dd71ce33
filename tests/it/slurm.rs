//! `imet submit --engine slurm` against a real single-node Slurm started by
//! ci/setup-slurm.sh (Debian's slurm-wlm and munge, localhost only): the
//! jobs run as Slurm jobs and array tasks, chained by `afterok`, and what
//! they write is byte-identical to the same spec run by hand into another
//! root. Without Slurm these tests fail and say how to get it.


use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// (tests using the cluster now, whether this process started it, SLURM_CONF).
static CLUSTER: Mutex<(usize, bool, Option<String>)> = Mutex::new((0, false, None));

/// Holds the single-node cluster up; the last holder stops it when this
/// process started it.
struct Cluster {
    conf: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ci/setup-slurm.sh")
}

impl Cluster {
    fn up() -> Cluster {
        let mut s = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
        if s.0 == 0 || s.2.is_none() {
            let out = Command::new("bash").arg(script()).output().expect("bash runs");
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(
                out.status.success(),
                "ci/setup-slurm.sh could not start a local Slurm (it needs root and Debian's slurm-wlm and munge packages; \
                 run `sudo bash ci/setup-slurm.sh` to see why):\n{text}"
            );
            let value = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).map(str::to_string);
            s.1 |= value("STARTED=").as_deref() == Some("1");
            s.2 = Some(value("SLURM_CONF=").unwrap_or_else(|| panic!("no SLURM_CONF= line from ci/setup-slurm.sh:\n{text}")));
        }
        s.0 += 1;
        Cluster { conf: s.2.clone().expect("set above") }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut s = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
        s.0 -= 1;
        if s.0 == 0 && s.1 {
            let _ = Command::new("bash").arg(script()).arg("stop").output();
            *s = (0, false, None);
        }
    }
}

fn imet(cwd: &Path, conf: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imet"));
    c.current_dir(cwd).env("SLURM_CONF", conf).env("RUST_LOG", "warn").env_remove("IMET_ROOT");
    c
}

fn ok(out: Output, what: &str) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed ({}):\n{text}", out.status);
    text
}

/// Waits until `done` exists under `root`, or until no job of `experiment`
/// is left in the queue (then fails showing the job logs), or `limit`.
fn wait_for(root: &Path, done: &str, experiment: &str, conf: &str, logs: &Path, limit: Duration) {
    let start = Instant::now();
    let logs_text = || {
        let mut all = String::new();
        for e in std::fs::read_dir(logs).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            all += &format!("--- {}\n{}\n", e.path().display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        all
    };
    let mut empty_polls = 0;
    loop {
        if root.join(done).exists() {
            return;
        }
        let q = Command::new("squeue").env("SLURM_CONF", conf).args(["-h", "-o", "%j %i %T %r"]).output().expect("squeue runs");
        let queue = String::from_utf8_lossy(&q.stdout).to_string();
        let ours: Vec<&str> = queue.lines().filter(|l| l.starts_with(&format!("imet-{experiment}-"))).collect();
        // The manifest is the last thing a job writes; give the file system a moment.
        empty_polls = if ours.is_empty() { empty_polls + 1 } else { 0 };
        assert!(empty_polls < 4, "every job of `{experiment}` left the queue but {done} was never written; job logs:\n{}", logs_text());
        if start.elapsed() > limit {
            let ids: Vec<&str> = ours.iter().filter_map(|l| l.split(' ').nth(1)).collect();
            let _ = Command::new("scancel").env("SLURM_CONF", conf).args(&ids).output();
            panic!("`{experiment}` not done after {limit:?}; queue:\n{queue}\njob logs:\n{}", logs_text());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Cancels the experiment's jobs still queued when a test ends early, so
/// they do not outlive its temporary folder.
struct CancelOnDrop<'a> {
    conf: &'a str,
    experiment: &'static str,
    keys: &'static [&'static str],
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        for key in self.keys {
            let name = format!("--name=imet-{}-{key}", self.experiment);
            let _ = Command::new("scancel").env("SLURM_CONF", self.conf).arg(name).output();
        }
    }
}

fn file_root(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

#[test]
fn a_folds_only_experiment_runs_as_a_slurm_job_and_a_second_submit_skips_it() {
    let cluster = Cluster::up();
    let tmp = tempfile::tempdir().unwrap();
    let (slurm_root, local_root) = (tmp.path().join("slurm-root"), tmp.path().join("local-root"));
    let spec = format!(
        "experiment = \"slurm-folds\"\n[storage]\nroot = {:?}\n[data.sample]\ntrain = 40\ntest = 8\nclasses = 6\n[folds]\nk = 3\n[cluster]\nimet = {:?}\n",
        slurm_root.display().to_string(),
        env!("CARGO_BIN_EXE_imet")
    );
    std::fs::write(tmp.path().join("spec.toml"), spec).unwrap();

    let _cancel = CancelOnDrop { conf: &cluster.conf, experiment: "slurm-folds", keys: &["folds"] };
    let text = ok(imet(tmp.path(), &cluster.conf).args(["submit", "--spec", "spec.toml", "--engine", "slurm"]).output().unwrap(), "imet submit");
    assert!(text.contains("1 batch(es) submitted"), "{text}");
    // Submitting again at once never queues the job twice: it is either
    // still queued (refused) or done (skipped).
    let twice = imet(tmp.path(), &cluster.conf).args(["submit", "--spec", "spec.toml", "--engine", "slurm"]).output().unwrap();
    let twice_text = format!("{}{}", String::from_utf8_lossy(&twice.stdout), String::from_utf8_lossy(&twice.stderr));
    assert!(
        (!twice.status.success() && twice_text.contains("imet-slurm-folds-folds already queued or running"))
            || (twice.status.success() && twice_text.contains("0 batch(es) submitted")),
        "{twice_text}"
    );
    let dir = tmp.path().join(".imet/slurm/slurm-folds");
    assert!(dir.join("folds.sbatch").exists() && dir.join("submit.sh").exists());
    wait_for(&slurm_root, "runs/slurm-folds/_FOLDS_SUCCESS.json", "slurm-folds", &cluster.conf, &dir.join("logs"), Duration::from_secs(120));

    ok(
        imet(tmp.path(), &cluster.conf).env("IMET_ROOT", file_root(&local_root)).args(["folds", "--spec", "spec.toml"]).output().unwrap(),
        "local imet folds",
    );
    let read = |root: &Path| std::fs::read(root.join("runs/slurm-folds/folds.parquet")).unwrap();
    assert!(read(&slurm_root) == read(&local_root), "folds.parquet differs between the Slurm job and the local run");

    let again = ok(imet(tmp.path(), &cluster.conf).args(["submit", "--spec", "spec.toml", "--engine", "slurm"]).output().unwrap(), "second submit");
    assert!(again.contains("0 batch(es) submitted") && again.contains("already committed, not submitted: folds"), "{again}");
}

#[test]
fn the_sample_experiment_through_slurm_gives_the_local_runs_submission_byte_for_byte() {
    let cluster = Cluster::up();
    let tmp = tempfile::tempdir().unwrap();
    let (slurm_root, local_root) = (tmp.path().join("slurm-root"), tmp.path().join("local-root"));
    let spec = format!(
        r#"experiment = "slurm-sample"
seed = 42
[storage]
root = {:?}
[data.sample]
train = 48
test = 12
classes = 6
seed = 7
[folds]
k = 2
seed = 42
[[models]]
name = "r18"
arch = "resnet18"
size = 32
train = {{ batch_size = 8, phases = [{{ epochs = 1, optimizer = {{ kind = "sgd", lr = 0.05 }} }}] }}
resources = {{ gpus = 0, cpus = 1, memory_gb = 2, time_limit = "10m", predict_time_limit = "10m" }}
[ensemble]
members = ["r18"]
[cluster]
imet = {:?}
"#,
        slurm_root.display().to_string(),
        env!("CARGO_BIN_EXE_imet")
    );
    std::fs::write(tmp.path().join("spec.toml"), spec).unwrap();

    let _cancel = CancelOnDrop { conf: &cluster.conf, experiment: "slurm-sample", keys: &["folds", "model-r18", "ensemble"] };
    let text = ok(
        imet(tmp.path(), &cluster.conf).args(["submit", "--spec", "spec.toml", "--engine", "slurm", "--out", "slurm-out"]).output().unwrap(),
        "imet submit",
    );
    assert!(text.contains("3 batch(es) submitted"), "{text}");
    let dir = tmp.path().join("slurm-out");
    let array = std::fs::read_to_string(dir.join("model-r18.sbatch")).unwrap();
    assert!(array.contains("#SBATCH --array=0-1\n") && !array.contains("--gres"), "{array}");

    // The reference: the same spec, job by job on this machine, into another root.
    let local = |args: &[&str]| {
        ok(
            imet(tmp.path(), &cluster.conf).env("IMET_ROOT", file_root(&local_root)).args(args).output().unwrap(),
            &format!("local imet {}", args.join(" ")),
        )
    };
    local(&["folds", "--spec", "spec.toml"]);
    for fold in ["0", "1"] {
        local(&["train", "--spec", "spec.toml", "--model", "r18", "--fold", fold]);
        local(&["predict", "--spec", "spec.toml", "--model", "r18", "--fold", fold]);
    }
    local(&["ensemble", "--spec", "spec.toml"]);

    wait_for(&slurm_root, "runs/slurm-sample/ensemble/_SUCCESS.json", "slurm-sample", &cluster.conf, &dir.join("logs"), Duration::from_secs(300));
    let read = |root: &Path| std::fs::read(root.join("runs/slurm-sample/ensemble/submission.csv")).unwrap();
    let (a, b) = (read(&slurm_root), read(&local_root));
    assert!(a.len() > 20, "submission too short:\n{}", String::from_utf8_lossy(&a));
    assert!(a == b, "submission.csv differs:\nslurm:\n{}\nlocal:\n{}", String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
    let logs: Vec<String> = std::fs::read_dir(dir.join("logs")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    assert!(logs.iter().any(|l| l.starts_with("model-r18-") && l.ends_with("_1.log")), "array task 1 logged: {logs:?}");
}

/// `scontrol show job ID` as `Key=Value` pairs (the job stays visible for
/// MinJobAge after it ends).
fn job_fields(conf: &str, id: &str) -> std::collections::HashMap<String, String> {
    let out = Command::new("scontrol").env("SLURM_CONF", conf).args(["show", "job", id]).output().expect("scontrol runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Waits until job `id` has ended; its final fields. A job requeued and
/// held back by its begin time (Slurm delays a requeued job by the
/// credential lifetime, 120 s) is released at once, which is all the test
/// changes of what Slurm does.
fn wait_ended(conf: &str, id: &str, log: &Path, limit: Duration) -> std::collections::HashMap<String, String> {
    let start = Instant::now();
    loop {
        let f = job_fields(conf, id);
        match f.get("JobState").map(String::as_str) {
            Some("COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT" | "NODE_FAIL" | "OUT_OF_MEMORY") => return f,
            Some("PENDING") if f.get("Reason").map(String::as_str) == Some("BeginTime") => {
                let _ = Command::new("scontrol").env("SLURM_CONF", conf).args(["update", &format!("jobid={id}"), "StartTime=now"]).output();
            }
            _ => {}
        }
        if start.elapsed() > limit {
            let _ = Command::new("scancel").env("SLURM_CONF", conf).arg(id).output();
            panic!("job {id} not ended after {limit:?}: {f:?}\nlog:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A spec whose `cluster.imet` is `wrapper`, a script standing in for imet
/// that counts its calls in `calls` and then does what `body` says.
fn wrapped_spec(dir: &Path, experiment: &str, body: &str) -> PathBuf {
    let wrapper = dir.join("imet-wrapper.sh");
    let calls = dir.join("calls");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nn=$(($(cat {c} 2>/dev/null || echo 0) + 1)); echo $n > {c}\necho \"attempt $n restart ${{SLURM_RESTART_COUNT:-0}}\"\n{body}\n",
            c = calls.display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&wrapper).status().unwrap();
    let spec = format!(
        "experiment = {experiment:?}\n[storage]\nroot = {:?}\n[data.sample]\ntrain = 40\ntest = 8\nclasses = 6\n[folds]\nk = 3\n[cluster]\nimet = {:?}\n",
        dir.join("root").display().to_string(),
        wrapper.display().to_string()
    );
    std::fs::write(dir.join("spec.toml"), spec).unwrap();
    calls
}

fn submitted_id(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.split_whitespace().next()).filter(|id| id.bytes().all(|b| b.is_ascii_digit())))
        .unwrap_or_else(|| panic!("no job id for {key} in:\n{text}"))
        .to_string()
}

#[test]
fn a_job_that_exits_75_requeues_itself_and_passes_on_its_second_attempt() {
    let cluster = Cluster::up();
    let tmp = tempfile::tempdir().unwrap();
    // The first attempt ends as a transient fault that outlasted imet's
    // retries would; the second runs the real imet.
    let calls = wrapped_spec(tmp.path(), "slurm-requeue", &format!("[ $n -ge 2 ] || exit 75\nexec {:?} \"$@\"", env!("CARGO_BIN_EXE_imet")));
    let _cancel = CancelOnDrop { conf: &cluster.conf, experiment: "slurm-requeue", keys: &["folds"] };
    let text = ok(imet(tmp.path(), &cluster.conf).args(["submit", "--spec", "spec.toml", "--engine", "slurm"]).output().unwrap(), "imet submit");
    let id = submitted_id(&text, "folds ");
    let log = tmp.path().join(format!(".imet/slurm/slurm-requeue/logs/folds-{id}.log"));
    let f = wait_ended(&cluster.conf, &id, &log, Duration::from_secs(120));
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!((f["JobState"].as_str(), f["ExitCode"].as_str(), f["Restarts"].as_str()), ("COMPLETED", "0:0", "1"), "{f:?}\n{log_text}");
    assert_eq!(std::fs::read_to_string(&calls).unwrap().trim(), "2");
    assert!(tmp.path().join("root/runs/slurm-requeue/_FOLDS_SUCCESS.json").exists(), "{log_text}");
    // The log keeps both attempts (--open-mode=append).
    assert!(log_text.contains("attempt 1 restart 0") && log_text.contains("requeueing, restart 1 of 2") && log_text.contains("attempt 2 restart 1"), "{log_text}");
}

#[test]
fn a_job_that_exits_2_fails_at_once_and_is_not_requeued() {
    let cluster = Cluster::up();
    let tmp = tempfile::tempdir().unwrap();
    // The real imet, called with an argument it does not know: exit 2.
    let calls = wrapped_spec(tmp.path(), "slurm-usage", &format!("exec {:?} --no-such-option \"$@\"", env!("CARGO_BIN_EXE_imet")));
    let _cancel = CancelOnDrop { conf: &cluster.conf, experiment: "slurm-usage", keys: &["folds"] };
    let text = ok(imet(tmp.path(), &cluster.conf).args(["submit", "--spec", "spec.toml", "--engine", "slurm"]).output().unwrap(), "imet submit");
    let id = submitted_id(&text, "folds ");
    let log = tmp.path().join(format!(".imet/slurm/slurm-usage/logs/folds-{id}.log"));
    let f = wait_ended(&cluster.conf, &id, &log, Duration::from_secs(60));
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!((f["JobState"].as_str(), f["ExitCode"].as_str(), f["Restarts"].as_str()), ("FAILED", "2:0", "0"), "{f:?}\n{log_text}");
    assert_eq!(std::fs::read_to_string(&calls).unwrap().trim(), "1", "{log_text}");
    assert!(!log_text.contains("requeueing"), "{log_text}");
}
