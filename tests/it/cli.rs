//! The built binary: finds libtorch by itself, lists its subcommands, and
//! fails with a non-zero exit and the whole error chain on bad input.

use crate::common;

use std::process::Command;

fn imet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imet"));
    c.env_remove("LD_LIBRARY_PATH").env_remove("LIBTORCH").env("RUST_LOG", "warn");
    c
}

#[test]
fn binary_runs_without_ld_library_path_and_keeps_libtorch_cuda_linked() {
    let out = imet().arg("info").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cuda_available"));
    let elf = Command::new("readelf").arg("-d").arg(env!("CARGO_BIN_EXE_imet")).output().unwrap();
    let dynamic = String::from_utf8_lossy(&elf.stdout);
    assert!(dynamic.contains("RUNPATH") || dynamic.contains("RPATH"), "no RUNPATH:\n{dynamic}");
    assert!(dynamic.contains("libtorch_cpu.so"), "libtorch_cpu.so not NEEDED:\n{dynamic}");
    // With the full CUDA set (ci/env.sh picks it on GPU machines), libtorch_cuda
    // must survive --as-needed or CUDA is silently unavailable.
    if std::env::var("IMET_LIBTORCH_FLAVOUR").as_deref() == Ok("cuda") {
        assert!(dynamic.contains("libtorch_cuda.so"), "libtorch_cuda.so dropped by --as-needed:\n{dynamic}");
    }
}

#[test]
fn help_lists_the_subcommands() {
    let out = imet().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["info", "validate", "run"] {
        assert!(text.contains(sub), "`{sub}` missing from --help:\n{text}");
    }
}

#[test]
fn validate_accepts_the_real_competition_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for f in ["labels.csv", "train.csv", "sample_submission.csv"] {
        std::fs::copy(common::real_data_dir().join(f), data.join(f)).unwrap();
    }
    let out = imet().args(["validate", "--data"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1103 classes, 109237 training images, 38801 test images"), "{text}");
}

#[test]
fn bad_input_exits_non_zero_naming_file_line_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("labels.csv"), "attribute_id,attribute_name\n0,culture::a\n1,tag::b\n").unwrap();
    std::fs::write(data.join("train.csv"), "id,attribute_ids\n1000483014d91860,0 1\n1000fe2e667721fe,1 5\n").unwrap();
    std::fs::write(data.join("sample_submission.csv"), "id,attribute_ids\n10045628394b0c85,0 1 2\n").unwrap();
    let out = imet().args(["validate", "--data"]).arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("data/train.csv:3") && err.contains("unknown attribute id 5"), "{err}");
}

#[test]
fn a_spec_with_an_unknown_field_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("s.toml");
    let root = dir.path().join("root");
    std::fs::write(&spec, format!("experiment = \"e\"\n[storage]\nroot = \"{}\"\n[folds]\nk = 5\nsed = 1\n", root.display())).unwrap();
    let out = imet().args(["run", "--spec"]).arg(&spec).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sed") && err.contains("s.toml"), "{err}");
    assert!(!root.exists(), "a rejected spec created its storage root");
}

#[test]
fn json_logs_carry_the_error_chain_as_a_field() {
    let dir = tempfile::tempdir().unwrap();
    let out = imet().args(["--log-format", "json", "validate", "--data"]).arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.contains("job failed")).unwrap_or_else(|| panic!("no JSON error line:\n{err}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["level"], "ERROR");
    let chain = v["fields"]["error"].as_str().unwrap();
    assert!(chain.contains("validating the inputs") && chain.contains("data/"), "{chain}");
}
