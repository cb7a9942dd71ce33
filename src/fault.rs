//! Named fault-injection points, for the chaos tests.
//!
//! A point marks a moment where a preempted node or a killed process hurts
//! most, such as halfway through an upload or between a job's last output
//! and its manifest. `fault::point("parquet.upload")` does nothing unless
//! `IMET_FAULT` names that point:
//!
//! ```text
//! IMET_FAULT=parquet.upload:2     # SIGKILL this process the 2nd time it passes the point
//! IMET_FAULT_ONCE=/tmp/x/fired    # ... only if this file can still be created
//! ```
//!
//! Every job of `imet run` inherits the variables. With `IMET_FAULT_ONCE`,
//! only the first process to reach the moment dies, so the run that follows
//! goes through. Without it, every process that reaches the moment dies.
//! Before it dies, the process writes one line to its standard error
//! naming the point; the chaos tests count those lines.
//!
//! The kill is a real `SIGKILL` of the process itself. Nothing is flushed
//! and no destructor runs: the storage layer sees what a reclaimed spot
//! instance would leave.
//!
//! When `IMET_FAULT` is unset, as in production, a point costs one check of
//! an initialised `OnceLock`.
//!
//! The points, where they are and what they test:
//!
//! | point | moment |
//! | --- | --- |
//! | `store.get` | before any object read (the runner's manifest reads too) |
//! | `train.step` | right after an optimiser step, mid-epoch |
//! | `checkpoint.write` | a checkpoint (an epoch's, or one inside an epoch) about to be written |
//! | `parquet.upload` | a Parquet upload under way: its first chunk sent, the rest not |
//! | `manifest.commit` | a job's outputs written, its manifest not |
//! | `job.committed` | a job's manifest written, the process not yet exited |

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Every point in the code, for the tests that aim at each.
pub const POINTS: [&str; 6] = ["store.get", "train.step", "checkpoint.write", "parquet.upload", "manifest.commit", "job.committed"];

struct Armed {
    point: String,
    hit: u64,
    once: Option<std::path::PathBuf>,
    hits: Mutex<HashMap<&'static str, u64>>,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("IMET_FAULT").ok()?;
            let (point, hit) = parse(&spec)?;
            let once = std::env::var_os("IMET_FAULT_ONCE").map(std::path::PathBuf::from);
            Some(Armed { point, hit, once, hits: Mutex::new(HashMap::new()) })
        })
        .as_ref()
}

/// `name:n` (n >= 1), or `name` for the first pass.
fn parse(spec: &str) -> Option<(String, u64)> {
    let (point, hit) = match spec.rsplit_once(':') {
        Some((p, n)) => (p, n.trim().parse::<u64>().ok().filter(|n| *n >= 1)?),
        None => (spec, 1),
    };
    let point = point.trim();
    (!point.is_empty()).then(|| (point.to_string(), hit))
}

/// Passes the point `name`: kills this process when `IMET_FAULT` aims here
/// (see the module docs).
pub fn point(name: &'static str) {
    let Some(a) = armed() else { return };
    if a.point != name {
        return;
    }
    let n = {
        let mut hits = a.hits.lock().unwrap_or_else(|p| p.into_inner());
        let n = hits.entry(name).or_insert(0);
        *n += 1;
        *n
    };
    if n != a.hit {
        return;
    }
    if let Some(once) = &a.once {
        // Only the first process to get here fires.
        if std::fs::OpenOptions::new().write(true).create_new(true).open(once).is_err() {
            return;
        }
    }
    eprintln!("imet fault point `{name}` (pass {n}): killing process {} with SIGKILL", std::process::id());
    // SAFETY: kill(2) on our own pid; it does not return once delivered.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_spec_names_a_point_and_which_pass_fires() {
        assert_eq!(parse("train.step:12"), Some(("train.step".into(), 12)));
        assert_eq!(parse("manifest.commit"), Some(("manifest.commit".into(), 1)));
        assert_eq!(parse("train.step:0"), None);
        assert_eq!(parse("train.step:x"), None);
        assert_eq!(parse(":3"), None);
    }

    #[test]
    fn an_unarmed_point_does_nothing() {
        // The test process has no IMET_FAULT, so this returns.
        point("store.get");
    }
}
