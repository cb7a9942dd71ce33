//! The GPUs `imet run` hands out on one machine: each running GPU job gets
//! one GPU of its own through `CUDA_VISIBLE_DEVICES`, and no more GPU jobs
//! run at once than there are GPUs. Jobs that use no GPU (folds, curate,
//! level2, ensemble: `resources.gpus = 0` in the plan) see none
//! (`CUDA_VISIBLE_DEVICES=""`), so they never take memory on one. The GPUs
//! come from `imet run --gpus` (or `IMET_GPUS`): a count `N` (ids `0..N`)
//! or a list of ids `0,2,3`; otherwise from libtorch's device count, with
//! the ids `CUDA_VISIBLE_DEVICES` names when the runner has it, none under
//! `IMET_DEVICE=cpu`. Reads the environment and libtorch; writes nothing.

use crate::error::{Error, Result};

/// The variable listing the GPUs `imet run` may use (as `--gpus`).
pub const GPUS_ENV: &str = "IMET_GPUS";

/// The variable CUDA reads to choose the GPUs a process sees.
pub const VISIBLE_ENV: &str = "CUDA_VISIBLE_DEVICES";

/// `--gpus` / `IMET_GPUS`: `N` (ids `0..N`, `0` for none) or `a,b,c`.
///
/// # Errors
/// [`Error::Usage`] naming the value for anything else.
pub fn parse(text: &str) -> Result<Vec<String>> {
    let text = text.trim();
    let bad = || Error::Usage(format!("--gpus / {GPUS_ENV} = {text:?}: give a count (`2`) or GPU ids separated by commas (`0,2,3`)"));
    if text.contains(',') {
        let ids: Vec<String> = text.split(',').map(|s| s.trim().to_string()).collect();
        let mut seen = std::collections::HashSet::new();
        if ids.iter().any(|id| id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || !seen.insert(id.clone())) {
            return Err(bad());
        }
        return Ok(ids);
    }
    let n: u32 = text.parse().map_err(|_| bad())?;
    if n > 64 {
        return Err(bad());
    }
    Ok((0..n).map(|i| i.to_string()).collect())
}

/// The GPUs of this machine as libtorch sees them: none under
/// `IMET_DEVICE=cpu`; else `device_count` of them, named by the runner's
/// `CUDA_VISIBLE_DEVICES` when set (UUIDs and indices alike), `0..n` when not.
pub fn detect() -> Vec<String> {
    if crate::storage::provenance::cpu_forced() {
        return Vec::new();
    }
    let n = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    match std::env::var(VISIBLE_ENV) {
        Ok(v) => v.split(',').map(str::trim).filter(|s| !s.is_empty()).take(n).map(String::from).collect(),
        Err(_) => (0..n).map(|i| i.to_string()).collect(),
    }
}

/// GPUs free and in use during a run.
#[derive(Clone, Debug, Default)]
pub struct GpuPool {
    /// Free GPU ids, lowest first.
    free: Vec<String>,
    total: usize,
}

impl GpuPool {
    pub fn new(ids: Vec<String>) -> GpuPool {
        GpuPool { total: ids.len(), free: ids }
    }

    /// GPUs in the pool.
    pub fn total(&self) -> usize {
        self.total
    }

    /// What a job needing `gpus` GPUs is given: `None` when it must wait
    /// for one; `Some(Some(id))` its own GPU; `Some(None)` when it needs
    /// none, or when the machine has none to give (it runs on the CPU, as
    /// without a pool).
    pub fn take(&mut self, gpus: u32) -> Option<Option<String>> {
        if gpus == 0 || self.total == 0 {
            return Some(None);
        }
        if self.free.is_empty() {
            return None;
        }
        Some(Some(self.free.remove(0)))
    }

    /// Returns a GPU a finished job held.
    pub fn give_back(&mut self, id: String) {
        self.free.push(id);
        self.free.sort();
    }

    /// The `CUDA_VISIBLE_DEVICES` of a job given `gpu`: its id; the empty
    /// list (no GPU) for a job given none while the machine has GPUs;
    /// `None` (leave the environment alone) on a machine without.
    pub fn visible(&self, gpu: Option<&str>) -> Option<String> {
        match gpu {
            Some(id) => Some(id.to_string()),
            None if self.total > 0 => Some(String::new()),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_id_lists_parse_and_garbage_is_named() {
        assert_eq!(parse("2").unwrap(), ["0", "1"]);
        assert_eq!(parse("0").unwrap(), Vec::<String>::new());
        assert_eq!(parse("1,3").unwrap(), ["1", "3"]);
        for bad in ["two", "1,,2", "1,1", "-1", "1;2", "100"] {
            assert!(parse(bad).unwrap_err().to_string().contains("--gpus"), "{bad}");
        }
    }

    #[test]
    fn each_gpu_job_gets_a_free_gpu_of_its_own_and_waits_when_none_is_free() {
        let mut pool = GpuPool::new(parse("3,5").unwrap());
        assert_eq!(pool.take(1), Some(Some("3".into())));
        assert_eq!(pool.take(0), Some(None), "a CPU job needs no GPU");
        assert_eq!(pool.take(1), Some(Some("5".into())));
        assert_eq!(pool.take(1), None, "both GPUs are in use");
        pool.give_back("5".into());
        assert_eq!(pool.take(1), Some(Some("5".into())));
        assert_eq!((pool.visible(Some("5")), pool.visible(None)), (Some("5".into()), Some(String::new())));
    }

    #[test]
    fn without_gpus_jobs_run_as_before() {
        let mut pool = GpuPool::new(vec![]);
        assert_eq!(pool.take(1), Some(None));
        assert_eq!(pool.visible(None), None);
    }
}
