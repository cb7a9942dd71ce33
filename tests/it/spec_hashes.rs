//! Spec hashes are the identity of committed jobs: a change in how a spec
//! is hashed makes every existing run stale (its jobs would all rerun). The
//! hashes of the shipped specs are pinned here; change a pin only together
//! with a deliberate change of a job's identity, and say so in the commit.

use imet::JobSpec;
use std::path::PathBuf;

fn spec(name: &str) -> JobSpec {
    JobSpec::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("jobs").join(name)).expect("a shipped spec loads")
}

fn model_hash(s: &JobSpec, model: &str) -> String {
    s.model_hash(s.model(model).expect("model in spec"))
}

#[test]
fn the_sample_specs_hashes_are_unchanged() {
    let s = spec("sample.toml");
    assert_eq!(s.folds_hash(), "407cc7e8e1c0e794");
    assert_eq!(model_hash(&s, "r18"), "e0c9e7852896a56c");
    assert_eq!(model_hash(&s, "r34"), "ec2940a1819f005a");
    assert_eq!(s.hash(), "4dfc3fa0655f4914");
}

#[test]
fn the_r1_specs_hashes_are_unchanged() {
    let s = spec("r1-pnasnet.toml");
    assert_eq!(s.folds_hash(), "53250328522c1983");
    assert_eq!(model_hash(&s, "pnasnet"), "7aec9f6bffcbfa3e");
    assert_eq!(s.hash(), "9831b6d5b1a784ff");
}

#[test]
fn the_checkpoint_policy_is_not_part_of_a_jobs_identity() {
    let s = spec("sample.toml");
    let mut edited = s.clone();
    for m in &mut edited.models {
        m.train.checkpoints.after_commit = imet::train::config::KeepAfterCommit::None;
    }
    assert_ne!(edited.to_toml(), s.to_toml(), "the policy is written in the resolved spec");
    assert_eq!(model_hash(&edited, "r18"), model_hash(&s, "r18"));
    assert_eq!(edited.hash(), s.hash());
}
