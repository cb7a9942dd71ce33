//! `imet sample` and `imet folds` through the built binary: a sample that
//! validates, is byte-identical for the same seed, gets folds, and a second
//! folds run is skipped.

use std::path::Path;
use std::process::Command;

fn imet(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_imet")).args(args).env("RUST_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "imet {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn sample_then_folds_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for root in [&a, &b] {
        imet(&["sample", "--out", root.to_str().unwrap(), "--train", "24", "--test", "6", "--seed", "3", "--classes", "12"]);
    }
    let ok = imet(&["validate", "--data", a.to_str().unwrap()]);
    assert!(ok.contains("1103 classes, 24 training images, 6 test images"), "{ok}");
    assert_eq!(read(&a.join("data/train.csv")), read(&b.join("data/train.csv")));
    assert_eq!(read(&a.join("data/labels.csv")), read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/imet2019/labels.csv")));
    let first_id = String::from_utf8(read(&a.join("data/train.csv"))).unwrap().lines().nth(1).unwrap().split(',').next().unwrap().to_string();
    let png = format!("data/train/{first_id}.png");
    assert_eq!(read(&a.join(&png)), read(&b.join(&png)), "same seed, same pixels");
    assert_eq!(std::fs::read_dir(a.join("data/test")).unwrap().count(), 6);

    let out = imet(&["folds", "--data", a.to_str().unwrap(), "--k", "4", "--seed", "1", "--experiment", "cli"]);
    assert!(out.contains("\"computed\": true"), "{out}");
    assert!(a.join("runs/cli/folds.parquet").exists());
    assert!(a.join("runs/cli/_FOLDS_SUCCESS.json").exists());
    let again = imet(&["folds", "--data", a.to_str().unwrap(), "--k", "4", "--seed", "1", "--experiment", "cli"]);
    assert!(again.contains("\"computed\": false"), "{again}");
}
