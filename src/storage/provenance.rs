//! Where a job ran and from what build: the source commit and libtorch
//! flavour `build.rs` records, the device torch work uses, the host, and
//! the batch engine's attempt identifiers. Written into every manifest and
//! failure record so that an output can be traced to the code and machine
//! that made it. Reads the environment and the libtorch runtime; writes
//! nothing.

use serde::{Deserialize, Serialize};

/// The git commit the binary was built from (`build.rs`: `git rev-parse
/// HEAD`, or `IMET_SOURCE_COMMIT` when set); `unknown` for a build outside
/// git, such as from a source tarball.
pub const SOURCE_COMMIT: &str = env!("IMET_SOURCE_COMMIT");

/// The libtorch build linked: `cuda` when `build.rs` linked its CUDA part,
/// `cpu` otherwise.
pub const LIBTORCH: &str = env!("IMET_LIBTORCH_FLAVOUR");

/// The variable that forces torch work onto the CPU (`IMET_DEVICE=cpu`):
/// the one definition the fold jobs' device, the local runner's GPU count
/// and the manifests' device all read.
pub const DEVICE_ENV: &str = "IMET_DEVICE";

/// Whether `IMET_DEVICE=cpu` forces the CPU.
pub fn cpu_forced() -> bool {
    std::env::var(DEVICE_ENV).as_deref() == Ok("cpu")
}

/// The device this process's torch work uses: `cpu`, or `cuda` with the
/// GPUs it sees (`CUDA_VISIBLE_DEVICES` when set), e.g. `cuda:0 of 1
/// (CUDA_VISIBLE_DEVICES=3)`.
pub fn device() -> String {
    if cpu_forced() || !tch::Cuda::is_available() {
        return "cpu".into();
    }
    let n = tch::Cuda::device_count();
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(v) => format!("cuda:0 of {n} (CUDA_VISIBLE_DEVICES={v})"),
        Err(_) => format!("cuda:0 of {n}"),
    }
}

/// This machine's host name; `unknown` when the system does not say.
pub fn host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    if name.is_empty() { "unknown".into() } else { name }
}

/// The batch engine's identifiers of this attempt, by variable name, as
/// far as the environment says (Slurm, Kubernetes, AWS Batch).
pub fn engine_ids() -> Vec<(String, String)> {
    const VARS: [&str; 8] = [
        "SLURM_JOB_ID",
        "SLURM_ARRAY_TASK_ID",
        "SLURM_RESTART_COUNT",
        "JOB_COMPLETION_INDEX",
        "AWS_BATCH_JOB_ID",
        "AWS_BATCH_JOB_ATTEMPT",
        "AWS_BATCH_JOB_ARRAY_INDEX",
        "CUDA_VISIBLE_DEVICES",
    ];
    VARS.iter().filter_map(|v| std::env::var(v).ok().map(|x| (v.to_string(), x))).collect()
}

/// This binary's version, source commit and libtorch flavour as
/// `(name, value)` pairs: `version`, `source-commit`, `libtorch`. What the
/// batch files `imet render` and `imet submit` write record about the imet
/// that wrote them (no device or host: the same binary writes the same
/// files).
pub fn build_facts() -> [(&'static str, &'static str); 3] {
    [("version", env!("CARGO_PKG_VERSION")), ("source-commit", SOURCE_COMMIT), ("libtorch", LIBTORCH)]
}

/// [`build_facts`] as one line: `imet 0.1.0, source commit 1a2b..., libtorch cpu`.
pub fn build_line() -> String {
    format!("imet {}, source commit {SOURCE_COMMIT}, libtorch {LIBTORCH}", env!("CARGO_PKG_VERSION"))
}

/// The build and device facts a manifest records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    pub imet_version: String,
    pub source_commit: String,
    /// `cpu` or `cuda`.
    pub libtorch: String,
    pub device: String,
}

impl Build {
    /// This process's build and device.
    pub fn current() -> Build {
        Build { imet_version: env!("CARGO_PKG_VERSION").into(), source_commit: SOURCE_COMMIT.into(), libtorch: LIBTORCH.into(), device: device() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_names_a_commit_a_libtorch_flavour_and_a_device() {
        let b = Build::current();
        assert!(b.source_commit == "unknown" || (b.source_commit.len() == 40 && b.source_commit.bytes().all(|c| c.is_ascii_hexdigit())), "{b:?}");
        assert!(["cpu", "cuda"].contains(&b.libtorch.as_str()), "{b:?}");
        assert!(b.device == "cpu" || b.device.starts_with("cuda:0 of "), "{b:?}");
        assert!(!host().is_empty());
    }

    #[test]
    fn the_build_facts_and_line_agree_with_the_manifests_build() {
        let b = Build::current();
        let facts = build_facts();
        assert_eq!(facts.map(|(k, _)| k), ["version", "source-commit", "libtorch"]);
        assert_eq!(facts.map(|(_, v)| v.to_string()), [b.imet_version.clone(), b.source_commit.clone(), b.libtorch.clone()]);
        assert_eq!(build_line(), format!("imet {}, source commit {}, libtorch {}", b.imet_version, b.source_commit, b.libtorch));
    }
}
