//! Credentials never leave the environment: a whole experiment on S3 (moto
//! on 127.0.0.1) run with recognisable fake credentials, logging at trace
//! level in text and JSON, then planned, rendered for every batch engine
//! (Slurm as a dry-run submission),
//! resolved, reported and statused. No output holds the secret key, the
//! session token or the access key id: not stdout or stderr, not a job log,
//! not a rendered file, not an object the run wrote (manifests, reports,
//! the saved spec, Parquet, checkpoints).

use crate::common;
use common::s3::{Backend, S3Server};
use imet::storage::{RetryPolicy, Store, StoreOptions};
use std::path::Path;
use std::process::{Command, Output};

const KEY_ID: &str = "AKIAIMETLEAKCHECK0001";
const SECRET: &str = "imetLeakCheckSecret/Do+Not+Log/0001";
const TOKEN: &str = "imetLeakCheckSessionToken0001FwoGZXIvYXdz";

fn spec_text() -> String {
    let cluster = r#"[cluster]
image = "registry.example/imet:1"
[cluster.kubernetes]
secret = "imet-s3"
[cluster.aws_batch]
job_queue = "gpu-queue"
job_role_arn = "arn:aws:iam::123456789012:role/imet"
secrets = [{ name = "AWS_SECRET_ACCESS_KEY", value_from = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:imet-s3" }]
"#;
    common::tiny_spec("leak", "s3://imet/exp", cluster)
}

fn imet(dir: &Path, endpoint: &str, args: &[&str], log: &str) -> Output {
    Command::new(common::imet_bin())
        .current_dir(dir)
        .args(args)
        .env("IMET_DEVICE", "cpu")
        .env("RUST_LOG", log)
        .env_remove("IMET_ROOT")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_SESSION_TOKEN", TOKEN)
        .output()
        .unwrap()
}

/// Where a credential shows up in `bytes`, if it does.
fn leak(bytes: &[u8]) -> Option<&'static str> {
    [KEY_ID, SECRET, TOKEN].into_iter().find(|s| bytes.windows(s.len()).any(|w| w == s.as_bytes()))
}


#[test]
fn no_output_of_a_whole_s3_run_holds_the_credentials() {
    let _heavy = common::heavy_run();
    let server = S3Server::start_with(Backend::Moto, "imet");
    let endpoint = server.endpoint();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), spec_text()).unwrap();
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut run = |args: &[&str], log: &str| {
        let out = imet(dir.path(), &endpoint, args, log);
        let all = [out.stdout.clone(), out.stderr.clone()].concat();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&all));
        outputs.push((format!("{args:?} (RUST_LOG={log})"), all));
    };
    run(&["run", "--spec", "spec.toml", "--parallel", "2"], "trace");
    run(&["--log-format", "json", "status", "--spec", "spec.toml", "--json"], "trace");
    run(&["plan", "--spec", "spec.toml"], "debug");
    run(&["spec", "--spec", "spec.toml"], "debug");
    run(&["--log-format", "json", "report", "--spec", "spec.toml"], "trace");
    for engine in ["k8s", "aws-batch"] {
        let out = format!("rendered-{engine}");
        run(&["render", "--spec", "spec.toml", "--engine", engine, "--out", &out], "debug");
    }
    run(&["submit", "--spec", "spec.toml", "--engine", "slurm", "--dry-run", "--out", "rendered-slurm"], "debug");
    let trace_lines = outputs[0].1.iter().filter(|&&b| b == b'\n').count();
    // The job logs and the rendered files, on disk.
    for f in common::files_under(dir.path()) {
        outputs.push((f.display().to_string(), std::fs::read(&f).unwrap()));
    }
    // Every object the run wrote.
    let opts = StoreOptions {
        retry: RetryPolicy::default(),
        cache: None,
        s3_config: vec![
            ("aws_endpoint".into(), endpoint.clone()),
            ("aws_access_key_id".into(), KEY_ID.into()),
            ("aws_secret_access_key".into(), SECRET.into()),
            ("aws_region".into(), "us-east-1".into()),
        ],
        ..Default::default()
    };
    let store = Store::open_with("s3://imet/exp", opts).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let objects = rt.block_on(store.list("")).unwrap();
    assert!(objects.iter().any(|o| o.key.ends_with("submission.csv")), "the run wrote its outputs: {} objects", objects.len());
    for o in &objects {
        outputs.push((format!("s3://imet/exp/{}", o.key), rt.block_on(store.get(&o.key)).unwrap().to_vec()));
    }
    let logs = outputs.iter().filter(|(n, _)| n.ends_with(".log")).count();
    assert!(logs >= 5 && trace_lines > 100, "the run logged: {logs} job logs, {trace_lines} lines at trace level");
    let leaks: Vec<String> = outputs.iter().filter_map(|(name, bytes)| leak(bytes).map(|s| format!("{name}: holds `{s}`"))).collect();
    assert!(leaks.is_empty(), "{} outputs checked; credentials found in:\n{}", outputs.len(), leaks.join("\n"));
}
