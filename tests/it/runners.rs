//! Concurrent runners on one store: two `imet run` processes started
//! together on the same tiny spec, on a local folder and on S3 (moto, whose
//! conditional writes are atomic), both exit 0, every job is committed
//! exactly once (one manifest per job, one "job committed" line over both
//! runners' job logs, no duplicate commit), no lease is left, and the
//! outputs are byte-identical to a single run's. A job leased by a runner
//! that is gone (a process of this machine that exited, or a runner
//! elsewhere that stopped renewing) is taken over.

use crate::common;
use common::s3::{Backend, S3Server};
use imet::orchestrate::plan::Plan;
use imet::storage::lease::{LeaseRecord, Owner};
use imet::storage::{keys, RetryPolicy, Store};
use imet::JobSpec;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const EXP: &str = "two";

/// Outputs whose bytes depend only on the spec (histories, TensorBoard
/// events, reports and throughput files hold timings).
fn deterministic_outputs(spec: &JobSpec) -> Vec<String> {
    let mut keys_ = vec![keys::folds(EXP)];
    for f in 0..spec.folds.k {
        let fold = imet::ids::Fold(f);
        keys_.push(keys::weights(EXP, "r18", fold));
        keys_.push(keys::oof(EXP, "r18", fold));
        keys_.push(keys::test_predictions(EXP, "r18", fold));
    }
    for name in ["submission.csv", "thresholds.json", "ensemble_oof.parquet", "ensemble_test.parquet"] {
        keys_.push(keys::ensemble_file(EXP, name));
    }
    keys_
}

fn imet(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Command {
    let mut c = Command::new(common::imet_bin());
    c.current_dir(dir).args(args).env("RUST_LOG", "info").env("IMET_DEVICE", "cpu").env_remove("IMET_ROOT");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn spawn_run(dir: &Path, logs: &str, env: &[(&str, String)], extra: &[&str]) -> Child {
    let mut args = vec!["run", "--spec", "spec.toml", "--log-dir", logs];
    args.extend_from_slice(extra);
    imet(dir, &args, env).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn finished(child: Child, what: &str, dir: &Path, logs: &Path) -> Output {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{what} failed: {}\n{}", common::output_text(&out), common::run_diagnosis(dir, logs));
    out
}

/// Lines of every log under `dirs` that contain `needle`.
fn count_lines(dirs: &[&Path], needle: &str) -> usize {
    dirs.iter()
        .flat_map(|d| common::files_under(d))
        .map(|f| std::fs::read_to_string(f).unwrap_or_default().lines().filter(|l| l.contains(needle)).count())
        .sum()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Runs the experiment twice at once in `dir` and once alone in `reference`,
/// then checks what the module docs promise; `store_of` opens the store of
/// a root.
fn two_runners_and_one(dir: &Path, root: &str, ref_root: &str, env: &[(&str, String)], store_of: impl Fn(&str) -> Store) -> String {
    std::fs::write(dir.join("spec.toml"), common::tiny_spec(EXP, root, "")).unwrap();
    let refdir = dir.join("reference");
    std::fs::create_dir_all(&refdir).unwrap();
    std::fs::write(refdir.join("spec.toml"), common::tiny_spec(EXP, ref_root, "")).unwrap();

    let t = Instant::now();
    let a = spawn_run(dir, "logs-a", env, &[]);
    let b = spawn_run(dir, "logs-b", env, &[]);
    let out_a = finished(a, "runner A", dir, &dir.join("logs-a"));
    let out_b = finished(b, "runner B", dir, &dir.join("logs-b"));
    let both_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    finished(spawn_run(&refdir, "logs", env, &[]), "the single run", &refdir, &refdir.join("logs"));
    let single_s = t.elapsed().as_secs_f64();

    let spec = JobSpec::load(&dir.join("spec.toml")).unwrap();
    let plan = Plan::new(&spec, &dir.join("spec.toml")).unwrap();
    let store = store_of(root);
    let reference = store_of(ref_root);
    let rt = rt();
    let objects = rt.block_on(store.list(&keys::run(EXP))).unwrap();
    let manifests: Vec<&str> = objects.iter().map(|o| o.key.as_str()).filter(|k| plan.jobs.iter().any(|j| j.manifest == *k)).collect();
    assert_eq!(manifests.len(), plan.jobs.len(), "one manifest per job: {manifests:?}");
    let leases: Vec<String> = rt.block_on(store.list(keys::LEASES)).unwrap().into_iter().map(|o| o.key).collect();
    assert!(leases.is_empty(), "every lease is deleted once its job commits: {leases:?}");

    let logs = [dir.join("logs-a"), dir.join("logs-b")];
    let logs: Vec<&Path> = logs.iter().map(|p| p.as_path()).collect();
    let committed = count_lines(&logs, "job committed");
    let duplicate = count_lines(&logs, "another run committed the same job first");
    let waited = count_lines(&logs, "job leased by another runner; waiting");
    let skipped_after_wait = count_lines(&logs, "committed by another runner while this one waited");
    let skipped = count_lines(&logs, "already committed for this spec; skipping");
    assert_eq!(committed, plan.jobs.len(), "each job committed exactly once over both runners");
    assert_eq!(duplicate, 0, "no job ran twice to the end");
    // The runners' own tables: every job done or skipped in both.
    for out in [&out_a, &out_b] {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("failed"), "{text}");
    }

    let mut compared = 0;
    for key in deterministic_outputs(&spec) {
        let mine = rt.block_on(store.get(&key)).unwrap();
        let theirs = rt.block_on(reference.get(&key)).unwrap();
        assert!(mine == theirs, "`{key}` differs from the single run's");
        compared += 1;
    }
    let report = format!(
        "{} jobs; manifests {}; 'job committed' lines {committed}; duplicate commits {duplicate}; waits on a live lease {waited}; skipped after a wait {skipped_after_wait}; skipped as committed {skipped}; {compared} outputs byte-identical to the single run; both runners {both_s:.1} s, single run {single_s:.1} s",
        plan.jobs.len(),
        manifests.len()
    );
    println!("runners: {report}");
    report
}

#[test]
fn two_runners_on_one_local_folder_commit_every_job_once() {
    let _heavy = common::heavy_run();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store").display().to_string();
    let ref_root = dir.path().join("reference-store").display().to_string();
    two_runners_and_one(dir.path(), &root, &ref_root, &[], |r| Store::open(&format!("file://{r}")).unwrap());
    gc_of_a_finished_run(dir.path(), Path::new(&root));
}

/// `imet gc` on the finished run: nothing to collect; then a planted dead
/// lease and a stale staging file are listed, removed with `--delete`, and
/// every job stays committed.
fn gc_of_a_finished_run(dir: &Path, root: &Path) {
    let gc = |extra: &[&str]| {
        let mut args = vec!["gc", "--spec", "spec.toml", "--json"];
        args.extend_from_slice(extra);
        let out = imet(dir, &args, &[]).output().unwrap();
        assert!(out.status.success(), "{}", common::output_text(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let clean = gc(&[]);
    assert_eq!(clean["items"].as_array().unwrap().len(), 0, "a finished run of the current spec has no garbage: {clean}");
    let store = Store::open(&format!("file://{}", root.display())).unwrap();
    let rt = rt();
    let gone = Owner { host: "another-machine".into(), pid: 1, boot_id: "b".into(), pid_ns: "n".into(), started: 1 };
    let lease_key = keys::lease(&keys::success(EXP, "r18", imet::ids::Fold(1)), 2);
    rt.block_on(store.put(&lease_key, lease_of(gone, 2, -100_000))).unwrap();
    let staging = root.join(keys::fold_dir(EXP, "r18", imet::ids::Fold(0))).join("model.safetensors#7");
    std::fs::write(&staging, b"half an upload").unwrap();
    let hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options().write(true).open(&staging).unwrap().set_modified(hours_ago).unwrap();
    let listed = gc(&[]);
    let reasons: Vec<(String, String)> = listed["items"].as_array().unwrap().iter().map(|i| (i["key"].as_str().unwrap().to_string(), i["reason"].as_str().unwrap().to_string())).collect();
    assert_eq!(reasons.len(), 2, "{listed}");
    assert!(reasons.contains(&(lease_key.clone(), "dead_lease".into())), "{listed}");
    assert!(reasons.iter().any(|(k, r)| k.ends_with("model.safetensors#7") && r == "staging_file"), "{listed}");
    assert!(staging.exists(), "a dry run deletes nothing");
    let deleted = gc(&["--delete"]);
    assert_eq!(deleted["deleted"], true);
    assert!(!staging.exists() && !rt.block_on(store.exists(&lease_key)).unwrap());
    let status = imet(dir, &["status", "--spec", "spec.toml", "--json"], &[]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["done"], v["total"], "every job stays committed after gc --delete: {v}");
    println!("runners: gc of the finished run: 0 items; planted 2 (dead lease, staging file), deleted 2; {}/{} jobs still done", v["done"], v["total"]);
}

#[test]
fn two_runners_on_one_s3_bucket_commit_every_job_once() {
    let _heavy = common::heavy_run();
    let server = S3Server::start_with(Backend::Moto, "imet");
    let env = [
        ("AWS_ENDPOINT_URL", server.endpoint()),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ACCESS_KEY_ID", common::s3::ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", common::s3::SECRET_KEY.to_string()),
    ];
    let dir = tempfile::tempdir().unwrap();
    two_runners_and_one(dir.path(), "s3://imet/two", "s3://imet/reference", &env, |r| {
        let prefix = r.strip_prefix("s3://imet/").unwrap();
        server.store("imet", prefix, RetryPolicy::default())
    });
}

/// A lease record held by `owner`, expiring `expires_in_s` from now.
fn lease_of(owner: Owner, generation: u64, expires_in_s: i64) -> Vec<u8> {
    let now = chrono::Utc::now();
    let stamp = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let rec = LeaseRecord {
        job: "a test's runner".into(),
        generation,
        owner,
        token: "planted".into(),
        acquired_at: stamp(now),
        renewed_at: stamp(now),
        expires_at: stamp(now + chrono::Duration::seconds(expires_in_s)),
        beats: 0,
        released: false,
    };
    serde_json::to_vec_pretty(&rec).unwrap()
}

#[test]
fn leases_of_gone_runners_are_taken_over() {
    let _heavy = common::heavy_run();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::write(dir.path().join("spec.toml"), common::tiny_spec(EXP, &root.display().to_string(), "")).unwrap();
    let store = Store::open(&format!("file://{}", root.display())).unwrap();
    let rt = rt();
    // Fold 0's train job: held by a process of this machine that exited.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let here = Owner { pid: gone_pid, started: 1, ..Owner::this().clone() };
    let train0 = keys::trained(EXP, "r18", imet::ids::Fold(0));
    rt.block_on(store.put(&keys::lease(&train0, 3), lease_of(here, 3, 600))).unwrap();
    // Fold 1's: held by a runner elsewhere that stopped renewing (its
    // expiry is still ahead by its clock): taken after ttl_s unchanged.
    let elsewhere = Owner { host: "another-machine".into(), pid: 1, boot_id: "b".into(), pid_ns: "n".into(), started: 1 };
    let train1 = keys::trained(EXP, "r18", imet::ids::Fold(1));
    rt.block_on(store.put(&keys::lease(&train1, 0), lease_of(elsewhere, 0, 600))).unwrap();

    let t = Instant::now();
    let run = spawn_run(dir.path(), "logs", &[], &["--set", "storage.lease.ttl_s=6", "--set", "storage.lease.heartbeat_s=2", "--set", "storage.lease.poll_ms=200"]);
    finished(run, "the run", dir.path(), &dir.path().join("logs"));
    let seconds = t.elapsed().as_secs_f64();
    let logs = [dir.path().join("logs")];
    let logs: Vec<&Path> = logs.iter().map(|p| p.as_path()).collect();
    assert_eq!(count_lines(&logs, "taking the job over"), 2, "both planted leases were taken over");
    assert_eq!(count_lines(&logs, "job leased by another runner; waiting"), 1, "only the runner elsewhere was waited for");
    let train0_log = std::fs::read_to_string(dir.path().join("logs/train_r18_0.log")).unwrap();
    assert!(train0_log.contains("generation=4") && !train0_log.contains("waiting"), "{train0_log}");
    let train1_log = std::fs::read_to_string(dir.path().join("logs/train_r18_1.log")).unwrap();
    assert!(train1_log.contains("generation=1") && train1_log.contains("another-machine"), "{train1_log}");
    let left = rt.block_on(store.list(keys::LEASES)).unwrap().len();
    assert_eq!(left, 0, "the planted generations are deleted with the commit");
    println!("runners: 2 planted leases taken over (gone pid at once, silent runner after ttl_s = 6 s); run {seconds:.1} s");
}
