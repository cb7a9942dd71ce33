//! No tracked file points outside the repository: no path of a
//! development machine (a workspace folder, a home folder, a sibling
//! checkout beside the repository), and no relative path that climbs above
//! the repository root from where it is resolved (a Markdown link from its
//! file, a script path from the script's folder, `include_str!` and
//! `#[path]` from the Rust file, `CARGO_MANIFEST_DIR` joins from the root).
//! System paths (`/tmp`, `/etc`, `/usr`, ...) and paths inside containers
//! are not the repository's business and pass.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Prefixes of paths that only exist on some developer's machine. Built
/// from pieces so this file does not name them itself.
fn machine_paths() -> Vec<String> {
    let abs = |dir: &str| ["/", dir, "/"].concat();
    vec![abs("work"), abs("home"), abs("root"), abs("Users"), ["..", "/", "shared"].concat(), ["/", "shared", "/docs"].concat()]
}

/// `path` (relative, with `..`) joined to `base` (a folder relative to the
/// root) stays inside the root.
fn stays_inside(base: &Path, path: &str) -> bool {
    let mut depth: i64 = base.components().filter(|c| matches!(c, Component::Normal(_))).count() as i64;
    for part in path.split('/') {
        match part {
            ".." => depth -= 1,
            "" | "." => {}
            _ => depth += 1,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// Every `../`-relative path in `line` (a run of `../` and path characters).
fn relative_paths(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("../") {
        // Back up over a leading `./` or earlier `../` of the same path.
        let start = rest[..i].rfind(|c: char| !(c == '.' || c == '/')).map_or(0, |p| p + 1);
        let end = rest[i..].find(|c: char| !(c.is_ascii_alphanumeric() || "._-/".contains(c))).map_or(rest.len(), |e| i + e);
        out.push(&rest[start..end]);
        rest = &rest[end..];
    }
    out
}

/// What is wrong with `line` of the tracked file `file`, if anything.
fn problems(file: &Path, line: &str) -> Vec<String> {
    let mut found: Vec<String> = machine_paths().into_iter().filter(|p| line.contains(p.as_str())).map(|p| format!("names `{p}`")).collect();
    let dir = file.parent().unwrap_or(Path::new(""));
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    let climbs = |base: &Path, p: &str| (!stays_inside(base, p)).then(|| format!("`{p}` climbs above the repository from {}/", base.display()));
    match ext {
        // A script's own paths resolve from its folder (`$(dirname "$0")/..`).
        "sh" | "bash" => {
            for part in line.split("$(dirname \"$0\")").skip(1) {
                let p = part.split(['"', ' ', ';', ')']).next().unwrap_or("");
                found.extend(climbs(dir, p.trim_start_matches('/')));
            }
        }
        // Rust reads files relative to the source file, or to the root
        // through the manifest folder's variable; other parent-folder
        // strings in code are data.
        "rs" => {
            for marker in ["include_str!(\"", "include_bytes!(\"", "#[path = \""] {
                for part in line.split(marker).skip(1) {
                    found.extend(climbs(dir, part.split('"').next().unwrap_or("")));
                }
            }
            if line.contains("CARGO_MANIFEST_DIR") {
                for p in relative_paths(line) {
                    found.extend(climbs(Path::new(""), p.trim_start_matches('/')));
                }
            }
        }
        _ => {}
    }
    // Prose and scripts: a `../` path (a Markdown link, a command) is read
    // from the file's folder, the most lenient base. Specs and other
    // configuration: from the working directory, the root (a spec's
    // relative `storage.root` resolves there).
    let base = match ext {
        "md" | "sh" | "bash" | "py" | "txt" => Some(dir),
        "toml" | "yml" | "yaml" | "json" => Some(Path::new("")),
        _ => None,
    };
    if let Some(base) = base {
        // `.../fold={k}` is an ellipsis, not a path.
        for p in relative_paths(line).into_iter().filter(|p| !p.starts_with("...")) {
            found.extend(climbs(base, p.trim_start_matches('/')));
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn no_tracked_file_points_outside_the_repository() {
    let out = Command::new("git").arg("-C").arg(repo()).args(["ls-files", "-z"]).output().expect("git runs");
    assert!(out.status.success(), "git ls-files failed: {}", String::from_utf8_lossy(&out.stderr));
    let files: Vec<PathBuf> = out.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()).map(|f| PathBuf::from(String::from_utf8_lossy(f).into_owned())).collect();
    assert!(files.len() > 50 && files.iter().any(|f| f == Path::new("README.md")), "{files:?}");
    let mut bad = Vec::new();
    for file in &files {
        let Ok(bytes) = std::fs::read(repo().join(file)) else { continue };
        // Binary files (images, weights) hold no paths worth checking.
        let Ok(text) = String::from_utf8(bytes) else { continue };
        if text.contains('\0') {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            for p in problems(file, line) {
                bad.push(format!("{}:{}: {p}", file.display(), n + 1));
            }
        }
    }
    assert!(bad.is_empty(), "tracked files point outside the repository; write what users need in the repository's own words:\n{}", bad.join("\n"));
}

#[test]
fn the_check_flags_escapes_and_passes_paths_inside() {
    let flagged = |file: &str, line: &str| !problems(Path::new(file), line).is_empty();
    let ws = ["/", "work", "/", "shared", "/", "docs/style.md"].concat();
    assert!(flagged("README.md", &format!("see {ws}")));
    assert!(flagged("docs/recipes.md", &["see [style](../../", "shared/docs/style.md)"].concat()));
    assert!(flagged("README.md", "`cat ../imet-notes/todo.md`"));
    assert!(flagged("ci/x.sh", "cd \"$(dirname \"$0\")/../..\""));
    assert!(flagged("src/a.rs", "const X: &str = include_str!(\"../../data/x.csv\");"));
    let manifest_dir = ["CARGO", "_MANIFEST_DIR"].concat();
    assert!(flagged("tests/it/a.rs", &format!("let p = concat!(env!(\"{manifest_dir}\"), \"/../other/x\");")));
    assert!(flagged("jobs/x.toml", "root = \"../outside\""));
    // Inside the repository, and paths that are not the repository's.
    assert!(!flagged("docs/recipes.md", "see [README](../README.md) and `../jobs/sample.toml`"));
    assert!(!flagged("ci/bench/x.sh", "cd \"$(dirname \"$0\")/../..\""));
    assert!(!flagged("src/data/sample.rs", "include_str!(\"../../data/imet2019/labels.csv\")"));
    assert!(!flagged("README.md", "mkdir -p /tmp/realroot/data && ls ~/.cache/imet-deps /etc/imet/spec.toml"));
    assert!(!flagged("src/data/annotations.rs", "for bad in [\"../../etc/pass\", \"..\"] {"));
    assert!(!flagged("schemas/README.md", "| `.../fold={k}/oof.parquet` | x |"));
    assert!(!flagged("build.rs", "for nvidia in [lib.join(\"../../nvidia\")] {"));
}
