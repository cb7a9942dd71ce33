//! Chaos runs of a whole experiment: `imet run` under seeded SIGKILLs, some
//! aimed at named moments through the fault-injection points
//! (`imet::fault`), some at random moments of the runner, restarted until
//! done. The final outputs must be byte-identical to an undisturbed run's,
//! every committed output must match its manifest, and nothing partial may
//! stay in the store.
//!
//! `IMET_CHAOS_SEED` picks the schedule (default 2026) and `IMET_CHAOS_ROUNDS`
//! how many rounds of aimed kills run (default 1, one per point); the longer
//! mode for RELIABILITY.md is `IMET_CHAOS_ROUNDS=5`. The test prints the
//! schedule and what fired, so a failure can be replayed with its seed.

use crate::common;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The tiny experiment with two epochs and a checkpoint after every step
/// inside them, so that a killed train job has a checkpoint to resume from,
/// at an epoch's start or inside one.
fn spec(root: &Path) -> String {
    let spec = common::tiny_spec("chaos", &root.display().to_string(), "").replace("phases = [{ epochs = 1,", "phases = [{ epochs = 2,");
    assert!(spec.contains("[models.train]\n"), "the tiny spec has a [models.train] table");
    spec.replace("[models.train]\n", "[models.train]\ncheckpoints = { every_steps = 1 }\n")
}

fn imet(dir: &Path) -> Command {
    let mut c = Command::new(common::imet_bin());
    c.current_dir(dir)
        .args(["run", "--spec", "spec.toml"])
        .env("RUST_LOG", "info")
        .env("IMET_DEVICE", "cpu")
        .env_remove("IMET_ROOT")
        .env_remove("IMET_FAULT")
        .env_remove("IMET_FAULT_ONCE");
    c
}

fn setup(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    std::fs::write(dir.join("spec.toml"), spec(&store)).unwrap();
    store
}

/// The outputs that must not depend on how often the run was killed:
/// folds, every fold's weights and predictions, the ensemble's predictions,
/// thresholds and submission. (History, reports and TensorBoard files hold
/// wall-clock times.)
fn deterministic_outputs(store: &Path) -> BTreeMap<String, Vec<u8>> {
    let keep = |name: &str| {
        name.ends_with("model.safetensors")
            || name.ends_with("oof.parquet")
            || name.ends_with("test.parquet")
            || name.ends_with("folds.parquet")
            || name.ends_with("submission.csv")
            || name.ends_with("thresholds.json")
    };
    common::files_under(&store.join("runs"))
        .into_iter()
        .filter(|p| keep(&p.file_name().unwrap().to_string_lossy()))
        .map(|p| (p.strip_prefix(store).unwrap().display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

/// Every output named by a committed manifest is there with its recorded
/// size and hash; returns how many were checked.
fn manifests_match_their_outputs(store: &Path) -> usize {
    let mut checked = 0;
    for m in common::files_under(&store.join("runs")) {
        let name = m.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with('_') && name.ends_with(".json")) {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", m.display()));
        for o in v["outputs"].as_array().into_iter().flatten() {
            let key = o["key"].as_str().unwrap();
            let bytes = std::fs::read(store.join(key)).unwrap_or_else(|e| panic!("{key}, named by {}: {e}", m.display()));
            assert_eq!(bytes.len() as u64, o["size"].as_u64().unwrap(), "{key}: size differs from {}", m.display());
            assert_eq!(hex::encode(Sha256::digest(&bytes)), o["sha256"].as_str().unwrap(), "{key}: hash differs from {}", m.display());
            checked += 1;
        }
    }
    checked
}

/// Files a killed writer left behind: the local store's staging files
/// (`name#n`, written before the rename that makes an object appear).
fn staging_files(store: &Path) -> Vec<String> {
    common::files_under(store)
        .into_iter()
        .map(|p| p.strip_prefix(store).unwrap().display().to_string())
        .filter(|k| k.rsplit_once('#').is_some_and(|(_, n)| n.chars().all(|c| c.is_ascii_digit())))
        .collect()
}

/// Every key the store lists: what jobs and users can see.
fn listed_keys(store: &Path) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let s = imet::storage::Store::open(&format!("file://{}", store.display())).unwrap();
        s.list("runs/").await.unwrap().into_iter().map(|o| o.key).collect()
    })
}

/// How far into each point a kill is aimed (the n-th pass in one process):
/// bounded by how often the process that reaches the point first passes it
/// in the tiny experiment, so that the aimed kill fires.
fn max_pass(point: &str) -> u64 {
    match point {
        "store.get" => 12,
        "train.step" => 6,
        "checkpoint.write" => 3,
        "parquet.upload" => 2,
        _ => 1,
    }
}

/// Runs `imet run` until it succeeds (at most 3 times), then checks the
/// store against the undisturbed run: the same deterministic outputs, byte
/// for byte; every manifest's outputs whole; no partial file; and a further
/// run with nothing to do. Adds the runs it took, the staging files that
/// killed uploads left and the train jobs' resumes to `tally`.
fn finish_and_compare(tally: &mut Tally, dir: &Path, store: &Path, expected: &BTreeMap<String, Vec<u8>>, schedule: &str) {
    let mut runs = 0;
    let last = loop {
        let out = imet(dir).output().unwrap();
        runs += 1;
        if out.status.success() || runs == 3 {
            break out;
        }
    };
    assert!(last.status.success(), "the run did not finish after the kills:\n{schedule}\n{}{}", common::output_text(&last), common::run_diagnosis(dir, store));
    let got = deterministic_outputs(store);
    assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "{schedule}");
    for (key, bytes) in expected {
        assert!(got[key] == *bytes, "{key} differs from the undisturbed run's\n{schedule}");
    }
    let checked = manifests_match_their_outputs(store);
    assert!(checked >= 15, "only {checked} manifest outputs\n{schedule}");
    // A killed upload can leave its staging file (counted, and removed by
    // `imet gc`), but never a partial object that the store lists.
    let staged = staging_files(store);
    let listed = listed_keys(store);
    assert!(listed.iter().all(|k| !k.contains('#')), "a staging file is listed as an object: {listed:?}");
    println!("staging files left by killed uploads: {staged:?}");
    let again = imet(dir).output().unwrap();
    let text = common::output_text(&again);
    assert!(again.status.success() && !text.lines().any(|l| l.contains(" done ")), "a run after the end had work left:\n{text}");
    let (inside, at_start) = resumes(store);
    tally.runs += runs + 1;
    tally.staging += staged.len();
    tally.resumed_inside += inside;
    tally.resumed_at_start += at_start;
}

/// What the runs of the test add up to.
#[derive(Default)]
struct Tally {
    /// `imet run`s after the undisturbed one.
    runs: usize,
    /// Staging files killed uploads left.
    staging: usize,
    /// Train jobs resumed inside an epoch, and at an epoch's start.
    resumed_inside: usize,
    resumed_at_start: usize,
}

/// How often the train jobs of a store resumed, from the job logs (which
/// every run appends to): inside an epoch, and at an epoch's start.
fn resumes(store: &Path) -> (usize, usize) {
    let (mut inside, mut at_start) = (0, 0);
    for f in common::files_under(&store.join("logs")) {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        inside += text.matches("resuming inside an epoch").count();
        at_start += text.matches("resuming from checkpoint").count();
    }
    (inside, at_start)
}

#[test]
fn a_run_killed_at_every_named_moment_and_at_random_ends_with_an_undisturbed_runs_outputs() {
    let _heavy = common::heavy_run();
    let seed: u64 = std::env::var("IMET_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(2026);
    let rounds: usize = std::env::var("IMET_CHAOS_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();

    // The undisturbed run.
    let calm = tmp.path().join("calm");
    std::fs::create_dir_all(&calm).unwrap();
    let calm_store = setup(&calm);
    let t = Instant::now();
    let out = imet(&calm).output().unwrap();
    assert!(out.status.success(), "undisturbed run failed:\n{}{}", common::output_text(&out), common::run_diagnosis(&calm, &calm_store));
    let calm_secs = t.elapsed().as_secs_f64();
    let expected = deterministic_outputs(&calm_store);
    assert!(expected.len() >= 9, "{:?}", expected.keys());

    let mut log = Vec::new();
    let mut fired: BTreeMap<&str, usize> = BTreeMap::new();
    let mut tally = Tally::default();

    // Aimed kills: each round starts a fresh store and visits every point
    // once, in the order the experiment reaches them, at a seeded pass (and
    // at the first pass when the seeded one is not reached).
    for round in 0..rounds {
        let dir = tmp.path().join(format!("aimed-{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        let store = setup(&dir);
        for point in imet::fault::POINTS {
            // A checkpoint write is aimed at from the 2nd on: the 1st has
            // then been written (the writer is sequential), so the rerun
            // resumes inside an epoch.
            let first = if point == "checkpoint.write" { 2 } else { 1 };
            let seeded = rng.random_range(first..=max_pass(point));
            for pass in [seeded, 1].into_iter().take(if seeded == 1 { 1 } else { 2 }) {
                let once = dir.join(format!("fired-{point}-{pass}"));
                let out = imet(&dir).env("IMET_FAULT", format!("{point}:{pass}")).env("IMET_FAULT_ONCE", &once).output().unwrap();
                tally.runs += 1;
                let hit = once.exists();
                log.push(format!("round {round}: {point}:{pass} -> {} (exit {:?})", if hit { "killed" } else { "not reached" }, out.status.code()));
                if hit {
                    *fired.entry(point).or_default() += 1;
                    assert!(!out.status.success(), "{point}:{pass} fired but the run succeeded:\n{}", common::output_text(&out));
                    break;
                }
            }
        }
        let schedule = format!("seed {seed}:\n{}", log.join("\n"));
        finish_and_compare(&mut tally, &dir, &store, &expected, &schedule);
    }
    let schedule = format!("seed {seed}, {rounds} round(s):\n{}", log.join("\n"));
    for point in imet::fault::POINTS {
        assert!(fired.contains_key(point), "the kill aimed at `{point}` never fired:\n{schedule}");
    }
    assert!(tally.resumed_inside >= rounds, "fewer train jobs resumed inside an epoch ({}) than rounds ({rounds}):\n{schedule}", tally.resumed_inside);

    // Random kills of the runner, on a fresh store: a seeded delay into the
    // run, then SIGKILL; its jobs die with it (one process group).
    let dir = tmp.path().join("random");
    std::fs::create_dir_all(&dir).unwrap();
    let store = setup(&dir);
    let mut random_kills = 0;
    for _ in 0..3 * rounds {
        // A seeded fraction of the undisturbed run's time, so that the kills
        // land in the same parts of the run on a slower or faster machine.
        let delay = Duration::from_secs_f64(calm_secs * rng.random_range(0.02..0.5));
        let mut child = imet(&dir).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        tally.runs += 1;
        let start = Instant::now();
        let mut finished = false;
        while start.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !finished {
            child.kill().unwrap();
            random_kills += 1;
        }
        let status = child.wait().unwrap();
        log.push(format!("random: runner {} after {:.1} s ({status})", if finished { "finished" } else { "killed" }, delay.as_secs_f64()));
        std::thread::sleep(Duration::from_millis(300));
    }
    let schedule = format!("seed {seed}, {rounds} round(s):\n{}", log.join("\n"));
    finish_and_compare(&mut tally, &dir, &store, &expected, &schedule);
    println!(
        "{schedule}\n{} runs after the undisturbed one ({calm_secs:.0} s); aimed kills fired per point: {fired:?}; \
         random kills of the runner: {random_kills}; staging files left: {}; \
         train jobs resumed inside an epoch: {}, at an epoch's start: {}",
        tally.runs, tally.staging, tally.resumed_inside, tally.resumed_at_start
    );
}
