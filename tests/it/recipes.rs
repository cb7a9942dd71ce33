//! The reference recipes of docs/recipes.md as job specs (`jobs/*.toml`):
//! every spec parses; supported ones validate; a spec with elements not
//! built yet fails naming exactly those elements, and validates once they
//! are removed; every recipe's smoke run (`imet run --smoke`) passes or
//! names what is not supported yet.

use crate::common;

use imet::orchestrate::smoke;
use imet::JobSpec;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;


/// Each spec in jobs/ and the elements it names that are not built yet.
fn expected() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("sample.toml", vec![]),
        ("r1-pnasnet.toml", vec![]),
        ("r2-first-place.toml", vec![]),
        ("r3-second-place.toml", vec![]),
        ("r4-large-ensemble.toml", vec![]),
    ]
}

fn jobs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs")
}

/// Removes the field a validation message names (`models[m].train.x`,
/// `ensemble.x`, `stages[s].ensemble.x`) from the spec's TOML.
fn remove_field(doc: &mut toml::Table, path: &str) {
    if let Some(r) = path.strip_prefix("stages[") {
        let (name, rest) = r.split_once("].").expect("stages[name].field");
        let stages = doc.get_mut("stages").and_then(|m| m.as_array_mut()).expect("[[stages]]");
        let st = stages.iter_mut().find(|m| m.get("name").and_then(|n| n.as_str()) == Some(name)).expect("named stage");
        return remove_field(st.as_table_mut().expect("stage table"), rest);
    }
    let (table, rest): (&mut toml::Table, &str) = if let Some(r) = path.strip_prefix("models[") {
        let (name, rest) = r.split_once("].").expect("models[name].field");
        let models = doc.get_mut("models").and_then(|m| m.as_array_mut()).expect("[[models]]");
        let m = models.iter_mut().find(|m| m.get("name").and_then(|n| n.as_str()) == Some(name)).expect("named model");
        (m.as_table_mut().expect("model table"), rest)
    } else {
        (doc, path)
    };
    let mut parts: Vec<&str> = rest.split('.').collect();
    let last = parts.pop().expect("a field");
    let mut t = table;
    for p in parts {
        t = t.get_mut(p).and_then(|v| v.as_table_mut()).unwrap_or_else(|| panic!("no table {p} in {path}"));
    }
    assert!(t.remove(last).is_some(), "{path} not in the spec");
}

/// Validates the spec, removing each refused element until it validates;
/// returns the refused elements in order and the final spec.
fn unsupported_elements(file: &str, text: &str) -> (Vec<String>, JobSpec) {
    let mut doc: toml::Table = toml::from_str(text).unwrap_or_else(|e| panic!("{file} is not TOML: {e}"));
    let mut found = Vec::new();
    loop {
        let current = toml::to_string(&doc).unwrap();
        match JobSpec::parse(file, &current) {
            Ok(spec) => return (found, spec),
            Err(e) => {
                let msg = e.to_string();
                let (_, element) = msg.split_once("not supported yet: ").unwrap_or_else(|| panic!("{file}: {msg}"));
                let path = msg.split('`').nth(3).unwrap_or_else(|| panic!("{file}: no field named in {msg}"));
                found.push(element.to_string());
                remove_field(&mut doc, path);
            }
        }
    }
}

#[test]
fn every_spec_in_jobs_is_listed_here_and_every_recipe_has_one() {
    let mut files: Vec<String> = std::fs::read_dir(jobs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    files.sort();
    let mut listed: Vec<String> = expected().iter().map(|(f, _)| f.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed);
}

#[test]
fn supported_specs_validate_and_the_others_name_exactly_what_is_not_built() {
    for (file, elements) in expected() {
        let path = jobs_dir().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let origin = format!("jobs/{file}");
        let (found, stripped) = unsupported_elements(&origin, &text);
        let found_set: BTreeSet<&str> = found.iter().map(String::as_str).collect();
        let want: BTreeSet<&str> = elements.iter().copied().collect();
        assert_eq!(found_set, want, "{file}");
        match JobSpec::parse(&origin, &text) {
            Ok(_) => assert!(elements.is_empty(), "{file} validated despite {elements:?}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with(&format!("spec `{origin}`: `")), "{msg}");
                assert!(msg.ends_with(&format!("not supported yet: {}", found[0])), "{msg}");
            }
        }
        // Without the refused elements the rest of the recipe is valid and
        // has a valid smoke version.
        smoke::derive(&stripped).unwrap_or_else(|e| panic!("{file}: smoke spec invalid: {e}"));
    }
}

#[test]
fn recipe_specs_state_their_key_elements() {
    let load = |f: &str| unsupported_elements(f, &std::fs::read_to_string(jobs_dir().join(f)).unwrap()).1;
    let r1 = load("r1-pnasnet.toml");
    assert_eq!(r1.folds.k, 10);
    let e = r1.ensemble.as_ref().unwrap();
    assert!(e.normalize_max);
    assert_eq!(e.test_folds.as_ref().map(Vec::len), Some(9));
    let m = &r1.models[0];
    assert_eq!((m.arch.name(), m.size, m.train.batch_size, m.epochs()), ("pnasnet5large", 331, 32, 10));
    assert_eq!(m.train.precision, imet::train::config::Precision::Fp16);
    assert!(m.tta.as_ref().unwrap().hflip);

    let r2 = load("r2-first-place.toml");
    let archs: Vec<&str> = r2.models.iter().map(|m| m.arch.name()).collect();
    assert_eq!(archs, ["senet154", "pnasnet5large", "seresnext101_32x4d"]);
    for m in &r2.models {
        assert!((20..=25).contains(&m.accumulation()), "{}: about 20 accumulation steps", m.name);
        assert!((1000..=1500).contains(&m.train.effective_batch.unwrap()), "{}: effective batch 1000-1500", m.name);
        assert_eq!(m.train.sampling, imet::train::config::Sampling::LogClassWeights);
        assert_eq!(m.eval_resize, imet::image::EvalResize::CenterCrop, "{}: evaluation mirrors crop_if_needed", m.name);
    }
    assert_eq!(r2.models[1].size, 331);
    let stages: Vec<&str> = r2.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(stages, ["clean", "pseudo", "tags"]);
    let (clean, pseudo, tags) = (&r2.stages[0], &r2.stages[1], &r2.stages[2]);
    assert!(clean.drop_noisy.is_some() && clean.init == imet::spec::Init::Pretrained, "stage 2 drops noisy images and retrains from scratch");
    assert!(clean.models.iter().all(|m| m.train.hard_negative_mining == Some(0.05)));
    assert!(pseudo.pseudo_labels.as_ref().is_some_and(|p| p.confidence == imet::curate::Confidence::MeanMargin));
    assert_eq!(tags.init, imet::spec::Init::Source, "stage 4 fine-tunes stage 3's models");
    for m in &tags.models {
        assert!(m.train.phases.iter().all(|p| p.labels == imet::train::config::LabelScope::Tags), "{}: tags only", m.name);
    }
    assert_eq!(tags.ensemble.groups.culture.as_deref(), Some("pseudo"));
    assert_eq!(tags.ensemble.level2.as_ref().map(|l| l.top_k), Some(30), "stage 5: the level-2 model over stage 4's members");

    let r3 = load("r3-second-place.toml");
    assert_eq!(r3.folds.k, 6);
    let clean = &r3.stages[0];
    assert!(clean.drop_noisy.is_some() && clean.pseudo_labels.is_some(), "cleaning + pseudo-labelling");
    for m in &r3.models {
        assert!(m.partial_conv && m.train.mixup.is_some() && m.train.label_smoothing > 0.0);
        assert_eq!(m.accumulation() * m.train.batch_size, 512);
        assert_eq!(m.train.phases[0].trainable, imet::train::config::Trainable::Head);
    }

    let r4 = load("r4-large-ensemble.toml");
    assert_eq!(r4.folds.k, 40);
    let e = r4.ensemble.as_ref().unwrap();
    assert_eq!((e.ratio, e.ratio_max_labels, e.labels), (7.0, 10, [1, 10]));
    let folds: Vec<Vec<u8>> = r4.models.iter().map(|m| m.fold_list(40)).collect();
    assert_eq!(folds, [(0..10).collect::<Vec<u8>>(), (10..15).collect(), (15..20).collect()], "10, 5 and 5 fold-models");
    assert!(r4.models.iter().all(|m| m.eval_resize == imet::image::EvalResize::PadCenterCrop));
}

fn imet() -> Command {
    let mut c = Command::new(common::imet_bin());
    c.env("RUST_LOG", "warn").env_remove("IMET_ROOT");
    c
}

#[test]
fn smoke_runs_of_unsupported_recipes_fail_naming_the_element() {
    let dir = tempfile::tempdir().unwrap();
    for (file, elements) in expected() {
        let Some(first) = elements.first() else { continue };
        let out = imet().current_dir(dir.path()).args(["run", "--smoke", "--spec"]).arg(jobs_dir().join(file)).output().unwrap();
        assert!(!out.status.success(), "{file}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("not supported yet: {first}")), "{file}: {err}");
        assert!(!dir.path().join("out").exists(), "{file}: a refused spec created its smoke folder");
    }
}

/// Runs `jobs/{file}` at smoke size through `imet run --smoke` (without its
/// elements not built yet, so every architecture, augmentation, loss and
/// schedule it names runs) and checks the DAG ends in a submission and an
/// OOF F2. Returns the seconds it took.
fn smoke_run(file: &str) -> f64 {
    let _heavy = common::heavy_run();
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(jobs_dir().join(file)).unwrap();
    let (_, stripped) = unsupported_elements(file, &text);
    let spec_path = dir.path().join(file);
    std::fs::write(&spec_path, stripped.to_toml()).unwrap();
    let t = Instant::now();
    let out = imet().current_dir(dir.path()).args(["run", "--smoke", "--parallel", "2", "--spec"]).arg(&spec_path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let exp = &stripped.experiment;
    if !out.status.success() {
        let why = common::run_diagnosis(dir.path(), &dir.path().join(format!("out/smoke/{exp}/logs")));
        panic!("{file}:\n{stdout}\n{}\n{why}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(stdout.contains("OOF F2 of experiment"), "{file}: {stdout}");
    let submission = dir.path().join(format!("out/smoke/{exp}/runs/{exp}-smoke/ensemble/submission.csv"));
    let rows = std::fs::read_to_string(&submission).unwrap_or_else(|e| panic!("{}: {e}", submission.display())).lines().count();
    assert_eq!(rows, 1 + smoke::SMOKE_TEST, "{file}: header + one row per smoke test image");
    // Every later stage curated its data and blended its members; a stage
    // with a level-2 model trained one per fold.
    let run = dir.path().join(format!("out/smoke/{exp}/runs/{exp}-smoke"));
    for stage in &stripped.stages {
        let name = &stage.name;
        let at = run.join("stages").join(name);
        let edits = stage.drop_noisy.is_some() || stage.pseudo_labels.is_some() || stage.distill.is_some();
        assert_eq!(at.join("data/_SUCCESS.json").exists(), edits, "{file}: stage {name}: a curate job where the stage edits its data");
        assert!(at.join("ensemble/_SUCCESS.json").exists(), "{file}: stage {name} committed no ensemble");
        if stage.ensemble.level2.is_some() {
            let folds = std::fs::read_dir(at.join("models/level2")).unwrap_or_else(|e| panic!("{file}: stage {name}: no level-2 models: {e}"));
            let with_oof = folds.flatten().filter(|f| f.path().join("oof.parquet").exists()).count();
            assert_eq!(with_oof, usize::from(stripped.folds.k.min(smoke::SMOKE_MAX_FOLDS)), "{file}: stage {name}: a level-2 model per smoke fold");
        }
    }
    let seconds = t.elapsed().as_secs_f64();
    eprintln!("smoke run of {file}: {seconds:.0} s");
    seconds
}

#[test]
fn r1_runs_its_whole_dag_at_smoke_size() {
    smoke_run("r1-pnasnet.toml");
}

#[test]
fn r3_without_its_unbuilt_elements_runs_at_smoke_size() {
    smoke_run("r3-second-place.toml");
}

// R2 (three later stages, the level-2 model) and R4 (members on fold
// subsets of a 40-fold split) at smoke size: about 75 s and 15 s on 2 CPU
// cores, the largest backbones replaced by resnet18.

#[test]
fn r2_runs_its_stages_and_level2_model_at_smoke_size() {
    smoke_run("r2-first-place.toml");
}

#[test]
fn r4_runs_its_fold_subsets_at_smoke_size() {
    smoke_run("r4-large-ensemble.toml");
}

#[test]
fn plan_with_a_budget_estimates_each_member_and_says_which_fit() {
    let dir = tempfile::tempdir().unwrap();
    let spec = jobs_dir().join("sample.toml");
    let out = imet().current_dir(dir.path()).args(["plan", "--budget", "9h", "--test-images", "1000", "--json", "--spec"]).arg(&spec).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["plan"].is_object() || v["plan"].is_array(), "{v}");
    let members = v["budget"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    for m in members {
        assert_eq!((m["test_images"].as_u64(), m["views"].as_u64(), m["folds"].as_u64()), (Some(1000), Some(2), Some(5)), "{m}");
        assert_eq!(m["source"]["kind"], "calibration", "no earlier run in an empty folder: {m}");
        assert!(m["views_per_sec"].as_f64().unwrap() > 0.0 && m["fits"].as_bool().unwrap(), "{m}");
    }
    let text = imet().current_dir(dir.path()).args(["plan", "--budget", "1s", "--test-images", "1000000", "--spec"]).arg(&spec).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("fit in 0.00 h: none") && text.contains("left out: r18, r34"), "{text}");
}

#[test]
fn a_smoke_run_refuses_to_follow_imet_root_into_a_real_store() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real-store");
    let out = imet().current_dir(dir.path()).env("IMET_ROOT", &real).args(["run", "--smoke", "--spec"]).arg(jobs_dir().join("r1-pnasnet.toml")).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("IMET_ROOT") && err.contains("unset it"), "{err}");
    assert!(!real.exists() && !dir.path().join("out").exists(), "nothing was written");
}
