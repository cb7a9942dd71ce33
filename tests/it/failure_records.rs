//! A failed job leaves a failure record (`_FAILED.json`) beside where its
//! manifest goes; `imet status` shows why the job failed; a later success
//! commits the manifest, which records the build and device, and status
//! shows the job done. Real `imet` processes over a local store.

use crate::common;

use std::path::Path;

fn status(dir: &Path) -> String {
    let out = common::run_imet(dir, &["status", "--spec", "spec.toml"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn a_failed_folds_job_records_why_status_shows_it_and_a_later_success_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let sample = common::run_imet(tmp.path(), &["sample", "--out", root.to_str().unwrap(), "--train", "40", "--test", "8", "--classes", "6"]);
    assert!(sample.status.success(), "{}", common::output_text(&sample));
    std::fs::write(tmp.path().join("spec.toml"), format!("experiment = \"fails\"\n[storage]\nroot = {:?}\n[folds]\nk = 3\n", root.display().to_string())).unwrap();

    // A train.csv with a bad row: exit 3, a record naming the file.
    let train = root.join("data/train.csv");
    let good = std::fs::read_to_string(&train).unwrap();
    std::fs::write(&train, format!("{good}not-an-id,1 2\n")).unwrap();
    let out = common::run_imet(tmp.path(), &["folds", "--spec", "spec.toml"]);
    assert_eq!(out.status.code(), Some(3), "{}", common::output_text(&out));
    let record = root.join("runs/fails/_FOLDS_FAILED.json");
    common::assert_matches_json_schema("failure.schema.json", &record);
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    assert_eq!((r["exit_status"].as_u64(), r["attempt"].as_u64(), r["job"]["kind"].as_str()), (Some(3), Some(1), Some("folds")), "{r}");
    assert!(r["error"][0].as_str().unwrap().contains("train.csv"), "{r}");
    assert!(!root.join("runs/fails/_FOLDS_SUCCESS.json").exists() && !root.join("runs/fails/folds.parquet").exists());

    // A second failure counts up.
    assert_eq!(common::run_imet(tmp.path(), &["folds", "--spec", "spec.toml"]).status.code(), Some(3));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    assert_eq!(r["attempt"].as_u64(), Some(2), "{r}");
    let table = status(tmp.path());
    let line = table.lines().position(|l| l.starts_with("folds ")).unwrap_or_else(|| panic!("{table}"));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[line].contains("failed"), "{table}");
    assert!(lines[line + 1].contains("exit 3 (an input file is bad), attempt 2 on ") && lines[line + 1].contains("train.csv"), "{table}");
    let json = common::run_imet(tmp.path(), &["status", "--spec", "spec.toml", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["jobs"][0]["failure"]["exit_status"], 3, "{v}");

    // Fixed: the job commits, the record stays beside the manifest unread.
    std::fs::write(&train, good).unwrap();
    let out = common::run_imet(tmp.path(), &["folds", "--spec", "spec.toml"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let table = status(tmp.path());
    assert!(table.lines().any(|l| l.starts_with("folds ") && l.contains("done")) && !table.contains("exit 3"), "{table}");
    assert!(record.exists(), "the record is history, not removed");
    let manifest = root.join("runs/fails/_FOLDS_SUCCESS.json");
    common::assert_matches_json_schema("manifest.schema.json", &manifest);
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert_eq!((m["libtorch"].as_str(), m["device"].as_str()), (Some(imet::storage::provenance::LIBTORCH), Some("cpu")), "{m}");
    assert_eq!(m["source_commit"], imet::storage::provenance::SOURCE_COMMIT, "{m}");
    assert!(!m["host"].as_str().unwrap_or("").is_empty(), "{m}");
}
