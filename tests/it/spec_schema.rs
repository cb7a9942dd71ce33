//! `schemas/spec.schema.json`: the JSON Schema the spec's types give (the
//! committed file is current, and `imet schema` prints it); Python's
//! `jsonschema` accepts every spec in `jobs/` (read with `tomllib`) and
//! refuses broken ones, as the spec reader does.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const REFRESH: &str = "cargo run --release -- schema > schemas/spec.schema.json";

#[test]
fn the_committed_schema_is_the_one_the_spec_types_give() {
    let path = repo().join("schemas/spec.schema.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = imet::spec::json_schema_text();
    assert!(committed == generated, "schemas/spec.schema.json is stale (the spec's types changed): refresh it with `{REFRESH}`");
    let out = Command::new(common::imet_bin()).arg("schema").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), generated, "`imet schema` prints the committed schema");
}

/// Validates each TOML file against the schema; prints `ok` or `invalid:
/// <message>` per file.
const CHECK: &str = r#"
import sys, json, tomllib, jsonschema
from jsonschema.exceptions import best_match
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)
for path in sys.argv[2:]:
    doc = tomllib.load(open(path, "rb"))
    e = best_match(validator.iter_errors(doc))
    if e is not None:
        print(f"{path}\tinvalid: {'/'.join(map(str, e.absolute_path))}: {e.message}")
    else:
        print(f"{path}\tok")
"#;

fn check(files: &[PathBuf]) -> Vec<(String, String)> {
    let schema = repo().join("schemas/spec.schema.json");
    let mut args = vec![schema.to_str().unwrap().to_string()];
    args.extend(files.iter().map(|f| f.to_str().unwrap().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::run_python(CHECK, &args)
        .lines()
        .map(|l| {
            let (f, v) = l.split_once('\t').unwrap();
            (f.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn every_spec_in_jobs_matches_the_schema() {
    let mut specs: Vec<PathBuf> =
        std::fs::read_dir(repo().join("jobs")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    specs.sort();
    assert!(specs.len() >= 5, "{specs:?}");
    for (file, verdict) in check(&specs) {
        assert_eq!(verdict, "ok", "{file}");
    }
}

#[test]
fn broken_specs_are_refused_by_the_schema_as_by_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let sample = std::fs::read_to_string(repo().join("jobs/sample.toml")).unwrap();
    let cases = [
        ("misspelt-key", sample.replace("k = 5", "kk = 5"), "kk"),
        ("wrong-type", sample.replace("k = 5", "k = \"five\""), "folds/k"),
        ("unknown-blend", sample.replace("blend = \"weighted\"", "blend = \"median\""), "ensemble/blend"),
        ("unknown-arch", sample.replace("arch = \"resnet18\"", "arch = \"resnet19\""), "/arch"),
        ("no-experiment", sample.replace("experiment = \"sample\"", ""), "experiment"),
        ("bad-augment", sample.replace("{ hflip = {} }", "{ hflip = { p = \"half\" } }"), "augment/1/hflip/p"),
        ("nested-typo", sample.replace("batch_size = 32", "batch_sise = 32"), "batch_sise"),
    ];
    let mut files = Vec::new();
    for (name, text, _) in &cases {
        assert_ne!(text, &sample, "{name}: the edit did not apply");
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        assert!(imet::JobSpec::parse(name, text).is_err(), "{name}: the spec reader accepts it");
        files.push(path);
    }
    let verdicts = check(&files);
    for ((name, _, at), (_, verdict)) in cases.iter().zip(verdicts) {
        assert!(verdict.starts_with("invalid") && verdict.contains(at), "{name}: {verdict}");
    }
}
