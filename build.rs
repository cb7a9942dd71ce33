//! Links libtorch so the `imet` binary finds it without `LD_LIBRARY_PATH`.
//!
//! - A RUNPATH to libtorch's `lib/` folder (and, for a CUDA build of
//!   libtorch, to each `nvidia/*/lib` folder of the wheels beside it).
//! - With a CUDA build whose libraries are all present, `libtorch` and
//!   `libtorch_cuda` (and the CUDA libraries they need) are linked with
//!   `--no-as-needed`: nothing calls them directly, so the default
//!   `--as-needed` would drop them and CUDA would silently be unavailable.
//!   Linking the CUDA libraries directly also lets the loader find them
//!   through this binary's RUNPATH (a RUNPATH is not transitive).
//! - With the CPU-only minimal set (no cuBLAS, cuDNN, ...), only what tch
//!   uses is linked and the build says CUDA is off.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

fn needed(lib: &Path) -> Vec<String> {
    let Ok(out) = Command::new("readelf").arg("-d").arg(lib).output() else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1).map(|s| s.trim_end_matches(']').to_string()))
        .collect()
}

fn is_system(soname: &str) -> bool {
    ["libc.so", "libm.so", "libdl.so", "libpthread.so", "librt.so", "libgcc_s.so", "libstdc++.so", "ld-linux", "libz.so", "libutil.so"]
        .iter()
        .any(|p| soname.starts_with(p))
}

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=IMET_LINK_CUDA");
    println!("cargo:rustc-env=IMET_SOURCE_COMMIT={}", source_commit());
    let flavour = link();
    println!("cargo:rustc-env=IMET_LIBTORCH_FLAVOUR={flavour}");
}

/// The commit the crate is built from, for every manifest:
/// `IMET_SOURCE_COMMIT` when set (a packaged build), else `git rev-parse
/// HEAD`, else `unknown` (a source tarball, no git). The script reruns when
/// HEAD moves.
fn source_commit() -> String {
    println!("cargo:rerun-if-env-changed=IMET_SOURCE_COMMIT");
    if let Ok(c) = std::env::var("IMET_SOURCE_COMMIT") {
        if !c.trim().is_empty() {
            return c.trim().to_string();
        }
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    // Only this crate's own repository: a tarball unpacked inside another
    // repository is not that repository's commit.
    let top = git(&["rev-parse", "--show-toplevel"]).and_then(|t| std::fs::canonicalize(t).ok());
    let here = std::env::var("CARGO_MANIFEST_DIR").ok().and_then(|d| std::fs::canonicalize(d).ok());
    if top.is_none() || top != here {
        return "unknown".into();
    }
    let Some(commit) = git(&["rev-parse", "HEAD"]) else { return "unknown".into() };
    // HEAD and the branch it points at (a worktree has its own HEAD).
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])) {
        println!("cargo:rerun-if-changed={branch}");
    }
    if let Some(packed) = git(&["rev-parse", "--git-common-dir"]) {
        println!("cargo:rerun-if-changed={packed}/packed-refs");
    }
    commit
}

/// Links libtorch; `cuda` when its CUDA part is linked, `cpu` otherwise.
fn link() -> &'static str {
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return "cpu" };
    let lib = PathBuf::from(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());

    // Folders where a pip-installed CUDA torch keeps its CUDA libraries.
    let mut dirs = vec![lib.clone()];
    for nvidia in [lib.join("../../nvidia"), lib.join("../nvidia")] {
        if let Ok(rd) = std::fs::read_dir(&nvidia) {
            for e in rd.flatten() {
                let l = e.path().join("lib");
                if l.is_dir() {
                    dirs.push(l);
                }
            }
        }
    }
    let find = |soname: &str| dirs.iter().map(|d| d.join(soname)).find(|p| p.exists());

    let cuda = lib.join("libtorch_cuda.so");
    let force = std::env::var("IMET_LINK_CUDA").ok();
    if !cuda.exists() || force.as_deref() == Some("0") {
        println!("cargo:warning=libtorch at {} has no usable CUDA part; imet will run on CPU only", lib.display());
        return "cpu";
    }
    // Everything libtorch_cuda needs, transitively, outside the system.
    let mut seen = BTreeSet::new();
    let mut missing = Vec::new();
    let mut link = Vec::new();
    let mut queue = VecDeque::from(vec!["libtorch_cuda.so".to_string()]);
    while let Some(so) = queue.pop_front() {
        if !seen.insert(so.clone()) || is_system(&so) {
            continue;
        }
        match find(&so) {
            Some(path) => {
                link.push(path.clone());
                queue.extend(needed(&path));
            }
            None => missing.push(so),
        }
    }
    if !missing.is_empty() {
        println!(
            "cargo:warning=libtorch at {} is the CPU-only set (missing {}); imet will run on CPU only. Install the full CUDA set (ci/setup-libtorch.sh on a GPU machine) for CUDA",
            lib.display(),
            missing.join(", ")
        );
        return "cpu";
    }
    let mut rpaths = BTreeSet::new();
    for p in &link {
        if let Some(d) = p.parent() {
            rpaths.insert(d.to_path_buf());
        }
    }
    rpaths.remove(&lib);
    for d in &rpaths {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", d.display());
        println!("cargo:rustc-link-arg=-L{}", d.display());
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    for p in &link {
        let name = p.file_name().expect("a library path has a file name").to_string_lossy();
        println!("cargo:rustc-link-arg=-l:{name}");
    }
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
    "cuda"
}
