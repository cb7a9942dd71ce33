//! The GPU check (`ci/gpu-check.sh`, `ci/gpu_check.py`, the
//! `examples/gpu_check.rs` checker and `ci/bench/train_step.py`) without a
//! GPU: the script's help, the Python files parsing with the standard
//! library alone, and the checker's CPU step. The checks themselves need a
//! GPU machine (or minutes in `--cpu` mode), so CI does not run them.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The checker binary cargo builds beside this test (`cargo test` builds
/// examples; `IMET_GPU_CHECKER` overrides).
fn checker() -> PathBuf {
    if let Some(p) = std::env::var_os("IMET_GPU_CHECKER") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("tests run from target/<profile>/deps");
    let p = profile_dir.join("examples/gpu_check");
    assert!(
        p.exists(),
        "no GPU checker at {}; build it with `cargo build --release --example gpu_check` (a plain `cargo test` builds it)",
        p.display()
    );
    p
}

/// Runs the reference Python isolated from site-packages (`-I -S`), so
/// only the standard library can be imported.
fn stdlib_python(args: &[&str]) -> std::process::Output {
    Command::new(common::python()).args(["-I", "-S"]).args(args).current_dir(repo()).output().expect("reference Python starts")
}

#[test]
fn the_script_help_names_every_check_the_python_side_runs() {
    let out = Command::new("bash").arg("ci/gpu-check.sh").arg("--help").current_dir(repo()).output().expect("bash starts");
    let help = common::output_text(&out);
    assert!(out.status.success(), "{help}");
    for word in ["Usage:", "--kit", "--pack", "--cpu", "--torch-lib", "--deadline-s"] {
        assert!(help.contains(word), "`ci/gpu-check.sh --help` does not mention {word}:\n{help}");
    }
    let only = help.split("--only ").nth(1).and_then(|s| s.split(']').next()).expect("the help shows `--only a,b,...`");
    let names: Vec<&str> = only.split(',').collect();
    assert_eq!(names, ["info", "step", "resume", "loader", "dag"], "{help}");

    // gpu_check.py's own help: standard library only, and the same checks.
    let out = stdlib_python(&["ci/gpu_check.py", "--help"]);
    let py_help = common::output_text(&out);
    assert!(out.status.success(), "ci/gpu_check.py --help with the standard library only:\n{py_help}");
    for name in names {
        assert!(py_help.lines().any(|l| l.trim_start().starts_with(&format!("{name} "))), "gpu_check.py does not describe check {name}:\n{py_help}");
    }
    assert!(py_help.contains("--torch-lib"), "{py_help}");
}

#[test]
fn the_python_files_parse() {
    // ast.parse, not py_compile: nothing written into the checkout.
    let out = stdlib_python(&[
        "-c",
        "import ast, sys\nfor f in sys.argv[1:]:\n    ast.parse(open(f).read(), f)",
        "ci/gpu_check.py",
        "ci/bench/train_step.py",
    ]);
    assert!(out.status.success(), "{}", common::output_text(&out));
}

#[test]
fn the_checker_times_a_cpu_step_and_names_a_bad_flag() {
    let step = |extra: &[&str]| {
        Command::new(checker())
            .args(["step", "--device", "cpu", "--arch", "resnet18", "--size", "32", "--batch", "2"])
            .args(["--iters", "2", "--warmup", "1", "--precision", "fp32", "--channels-last", "false"])
            .args(extra)
            .output()
            .expect("the checker starts")
    };
    let out = step(&[]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["impl"], "imet", "{v}");
    assert_eq!(v["arch"], "resnet18", "{v}");
    assert_eq!((v["size"].as_i64(), v["batch"].as_i64(), v["iters"].as_i64()), (Some(32), Some(2), Some(2)), "{v}");
    for key in ["median_s", "min_s", "fwd_bwd_median_s", "images_per_s"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0 && x.is_finite()), "{key} in {v}");
    }
    assert!(v["min_s"].as_f64() <= v["median_s"].as_f64(), "{v}");

    let out = step(&["--precision", "bf16"]);
    let text = common::output_text(&out);
    assert!(!out.status.success() && text.contains("--precision") && text.contains("bf16"), "{text}");
    let out = step(&["--no-such-flag", "1"]);
    let text = common::output_text(&out);
    assert!(!out.status.success() && text.contains("--no-such-flag"), "{text}");
}
