//! `imet render`: the Kubernetes manifests validate against the official
//! schemas (`kubernetes-validate`, strict, offline) and the AWS Batch
//! requests against botocore's `batch` service model; the rendered
//! `submit.sh` scripts run against stand-in `kubectl` / `aws` commands that
//! record their calls, so the apply order and the job-id substitution are
//! checked too; every rendered Job and job definition names the imet that
//! rendered it (version, source commit, libtorch flavour), and rendering
//! twice gives the same bytes. Python comes from IMET_PYTHON
//! (ci/setup-python.sh).

use crate::common;

use std::path::Path;
use std::process::Command;

const SPEC: &str = r#"experiment = "render_test"
[storage]
root = "s3://imet-bucket/experiments"
[folds]
k = 3
[[models]]
name = "r34.gpu"
arch = "resnet34"
size = 64
train = { batch_size = 8, phases = [{ epochs = 1, optimizer = { kind = "sgd", lr = 0.1 } }] }
resources = { gpus = 1, cpus = 6, memory_gb = 40, time_limit = "90m", predict_time_limit = "30m" }
[[models]]
name = "r18"
arch = "resnet18"
size = 64
train = { batch_size = 8, phases = [{ epochs = 1, optimizer = { kind = "sgd", lr = 0.1 } }] }
resources = { gpus = 0, cpus = 2, memory_gb = 4 }
[ensemble]
members = ["r34.gpu", "r18"]
[cluster]
image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/imet:0.1"
[cluster.kubernetes]
namespace = "ml"
secret = "imet-s3"
service_account = "imet-runner"
parallelism = 2
[cluster.aws_batch]
job_queue = "gpu-queue"
job_role_arn = "arn:aws:iam::123456789012:role/imet"
secrets = [{ name = "AWS_SECRET_ACCESS_KEY", value_from = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:imet-s3" }]
"#;

fn render(engine: &str, dir: &Path) -> String {
    std::fs::write(dir.join("spec.toml"), SPEC).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imet"))
        .current_dir(dir)
        .env_remove("IMET_ROOT")
        .args(["render", "--spec", "spec.toml", "--engine", engine, "--out", "out"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "imet render --engine {engine} failed:\n{text}");
    text
}

const K8S_CHECK: &str = r#"
import sys, glob, copy, yaml, kubernetes_validate
docs = []
for f in sorted(glob.glob(sys.argv[1] + "/*.yaml")):
    with open(f) as fh:
        docs += [(f, d) for d in yaml.safe_load_all(fh) if d]
# The oldest release imet supports (MIN_KUBERNETES) and the newest known.
for version in [sys.argv[2] + ".0", kubernetes_validate.latest_version()]:
    for f, d in docs:
        kubernetes_validate.validate(d, version, strict=True)
# Label values Kubernetes accepts (the schemas leave them to the API server).
import re
value = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
for f, d in docs:
    for meta in [d["metadata"]] + ([d["spec"]["template"]["metadata"]] if d["kind"] == "Job" else []):
        for k, v in meta["labels"].items():
            if len(v) > 63 or not value.match(v):
                sys.exit(f"{f}: label {k}={v!r} is not a valid label value")
job = next(d for f, d in docs if d["kind"] == "Job" and d["spec"].get("completionMode") == "Indexed")
# Indexed Jobs need backoffLimitPerIndex, which 1.27 lacks: the minimum is real.
try:
    kubernetes_validate.validate(job, "1.27.0", strict=True)
    sys.exit("an Indexed Job with backoffLimitPerIndex validated against 1.27")
except kubernetes_validate.ValidationError:
    pass
# The check can fail: a misspelt field and a wrong type are caught.
for breakage in ["typo", "type"]:
    bad = copy.deepcopy(job)
    if breakage == "typo":
        bad["spec"]["completionsMode"] = "Indexed"
    else:
        bad["spec"]["completions"] = "three"
    try:
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError:
        continue
    sys.exit("a broken Job (" + breakage + ") validated")
print(len(docs))
"#;

#[test]
fn kubernetes_manifests_validate_against_the_official_schemas() {
    let tmp = tempfile::tempdir().unwrap();
    render("k8s", tmp.path());
    let out = tmp.path().join("out");
    let n = common::run_python(K8S_CHECK, &[out.to_str().unwrap(), imet::orchestrate::k8s::MIN_KUBERNETES]);
    assert_eq!(n.trim(), "5", "ConfigMap, folds Job, two model Jobs, ensemble Job");

    let gpu = std::fs::read_to_string(out.join("02-model-r34-gpu.yaml")).unwrap();
    for needle in ["completionMode: \"Indexed\"", "completions: 3", "parallelism: 2", "nvidia.com/gpu: \"1\"", "name: \"imet-s3\"", "serviceAccountName: \"imet-runner\""] {
        assert!(gpu.contains(needle), "{needle} missing:\n{gpu}");
    }
    let cpu = std::fs::read_to_string(out.join("02-model-r18.yaml")).unwrap();
    assert!(!cpu.contains("nvidia.com/gpu"), "a CPU model asks for no GPU:\n{cpu}");
    let all: String = ["00-spec.yaml", "01-folds.yaml", "03-ensemble.yaml"].iter().map(|f| std::fs::read_to_string(out.join(f)).unwrap()).collect();
    assert!(all.contains("value: \"s3://imet-bucket/experiments\""));
    assert!(!(all + &gpu).contains("secretKeyRef") && !SPEC.contains("AWS_ACCESS_KEY_ID"), "credentials come only from the named Secret");
}

/// Runs the rendered k8s `submit.sh` against a stand-in `kubectl` that
/// records its calls and reports every Job Complete, except `failing`
/// (Failed from its second poll on); (exit status, stderr, calls).
fn run_k8s_submit(failing: &str) -> (std::process::ExitStatus, String, String) {
    let tmp = tempfile::tempdir().unwrap();
    render("k8s", tmp.path());
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = tmp.path().join("kubectl.log");
    let polls = tmp.path().join("polls");
    let fake = format!(
        "#!/bin/sh\necho \"$*\" >> {log}\ncase \"$*\" in\n  *\" get job {failing} \"*message*) echo \"Pod imet-0 has condition FailJob matching rule at index 0\" ;;\n  \
         *\" get job {failing} \"*) n=$(($(cat {polls} 2>/dev/null || echo 0) + 1)); echo $n > {polls}; if [ $n -ge 2 ]; then echo \"FailureTarget Failed \"; fi ;;\n  \
         *\" get job \"*) echo \"Complete \" ;;\nesac\n",
        log = log.display(),
        polls = polls.display(),
    );
    std::fs::write(bin.join("kubectl"), fake).unwrap();
    Command::new("chmod").arg("+x").arg(bin.join("kubectl")).status().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("sh").arg(tmp.path().join("out/submit.sh")).env("PATH", path).env("IMET_POLL_SECS", "0").output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).to_string(), std::fs::read_to_string(&log).unwrap())
}

#[test]
fn kubernetes_submit_script_applies_each_stage_after_the_previous_one_completes() {
    let (status, stderr, calls) = run_k8s_submit("none");
    assert!(status.success(), "{stderr}");
    let pos = |needle: &str| calls.find(needle).unwrap_or_else(|| panic!("{needle:?} not called:\n{calls}"));
    assert!(pos("apply -f 00-spec.yaml") < pos("apply -f 01-folds.yaml"));
    assert!(pos("apply -f 01-folds.yaml") < pos("get job imet-render-test-folds -o jsonpath="));
    let folds_done = pos("get job imet-render-test-folds");
    for model in ["imet-render-test-r34-gpu", "imet-render-test-r18"] {
        assert!(folds_done < pos(&format!("delete job {model} --ignore-not-found")));
        assert!(pos(&format!("get job {model} ")) < pos("apply -f 03-ensemble.yaml"), "{calls}");
    }
    assert!(pos("apply -f 03-ensemble.yaml") < pos("get job imet-render-test-ensemble"));
    assert!(calls.lines().all(|l| !l.contains(" get job ") || l.starts_with("-n ml ")), "{calls}");
}

#[test]
fn kubernetes_submit_script_stops_at_the_first_failed_job_instead_of_waiting_out_its_timeout() {
    let started = std::time::Instant::now();
    let (status, stderr, calls) = run_k8s_submit("imet-render-test-r18");
    assert!(!status.success(), "a failed Job fails submit.sh:\n{calls}");
    assert!(stderr.contains("job imet-render-test-r18 failed: Pod imet-0 has condition FailJob"), "{stderr}");
    assert!(stderr.contains("imet status"), "{stderr}");
    assert!(!calls.contains("apply -f 03-ensemble.yaml"), "nothing after the failed stage is applied:\n{calls}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "stopped at once, not after the 90-minute timeout");
}

const BATCH_CHECK: &str = r#"
import sys, json, glob, copy, botocore.session
from botocore.validate import ParamValidator
model = botocore.session.get_session().get_service_model("batch")
def check(op, params):
    report = ParamValidator().validate(params, model.operation_model(op).input_shape)
    if report.has_errors():
        sys.exit(op + ": " + report.generate_report())
defs = sorted(glob.glob(sys.argv[1] + "/job-definitions/*.json"))
for f in defs:
    check("RegisterJobDefinition", json.load(open(f)))
submits = json.load(open(sys.argv[1] + "/submit-jobs.json"))
for r in submits:
    check("SubmitJob", r)
for line in open(sys.argv[2]) if len(sys.argv) > 2 else []:
    check("SubmitJob", json.loads(line))
# The check can fail.
bad = copy.deepcopy(submits[1]); bad["arrayProperties"]["size"] = "3"
if not ParamValidator().validate(bad, model.operation_model("SubmitJob").input_shape).has_errors():
    sys.exit("a broken SubmitJob validated")
print(len(defs), len(submits))
"#;

#[test]
fn aws_batch_requests_validate_against_botocores_service_model_and_submit_resolves_dependencies() {
    let tmp = tempfile::tempdir().unwrap();
    render("aws-batch", tmp.path());
    let out = tmp.path().join("out");
    assert_eq!(common::run_python(BATCH_CHECK, &[out.to_str().unwrap()]).trim(), "4 4");

    // submit.sh with a stand-in aws CLI that gives job N the id "job-N".
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let requests = tmp.path().join("submitted.jsonl");
    let counter = tmp.path().join("n");
    let fake = format!(
        "#!/bin/sh\ncase \"$2\" in\n  register-job-definition) echo arn:aws:batch:eu-west-1:1:job-definition/x:1 ;;\n  \
         submit-job) n=$(($(cat {c} 2>/dev/null || echo 0) + 1)); echo $n > {c}; printf '%s\\n' \"$4\" >> {r}; echo job-$n ;;\nesac\n",
        c = counter.display(),
        r = requests.display()
    );
    std::fs::write(bin.join("aws"), fake).unwrap();
    Command::new("chmod").arg("+x").arg(bin.join("aws")).status().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let run = Command::new("sh").arg(out.join("submit.sh")).env("PATH", path).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let sent: Vec<serde_json::Value> = std::fs::read_to_string(&requests).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<&str> = sent.iter().map(|r| r["jobName"].as_str().unwrap()).collect();
    assert_eq!(names, ["imet-render_test-folds", "imet-render_test-r34-gpu", "imet-render_test-r18", "imet-render_test-ensemble"]);
    assert_eq!(sent[1]["dependsOn"], serde_json::json!([{ "jobId": "job-1" }]));
    assert_eq!(sent[3]["dependsOn"], serde_json::json!([{ "jobId": "job-2" }, { "jobId": "job-3" }]));
    assert_eq!(sent[2]["arrayProperties"]["size"], 3);
    assert_eq!(common::run_python(BATCH_CHECK, &[out.to_str().unwrap(), requests.to_str().unwrap()]).trim(), "4 4");

    let def: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("job-definitions/imet-render_test-r34-gpu.json")).unwrap()).unwrap();
    let env: Vec<&str> = def["containerProperties"]["environment"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(env, ["IMET_ROOT", "IMET_LOG_FORMAT", "IMET_SPEC_TOML", "IMET_FOLDS"], "secrets stay out of the environment");
    let folds = def["containerProperties"]["environment"][3]["value"].as_str().unwrap();
    assert_eq!(folds, "0,1,2", "an array child maps its index to the fold it trains");
    assert!(def["containerProperties"]["secrets"][0]["valueFrom"].as_str().unwrap().starts_with("arn:aws:secretsmanager"));
}

#[test]
fn rendered_files_name_the_imet_that_rendered_them_and_are_the_same_twice() {
    use imet::storage::provenance::{build_line, LIBTORCH, SOURCE_COMMIT};
    let version = env!("CARGO_PKG_VERSION");
    let tmp = tempfile::tempdir().unwrap();
    let files = |engine: &str, dir: &Path| {
        std::fs::create_dir_all(dir).unwrap();
        render(engine, dir);
        let mut files: Vec<_> = common::files_under(&dir.join("out")).into_iter().map(|f| (f.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&f).unwrap())).collect();
        files.sort();
        files
    };
    let mut checked = 0;
    for engine in ["k8s", "aws-batch"] {
        let first = files(engine, &tmp.path().join(format!("{engine}-1")));
        assert_eq!(first, files(engine, &tmp.path().join(format!("{engine}-2"))), "{engine}: the same binary renders the same bytes");
        for (path, bytes) in &first {
            let text = String::from_utf8_lossy(bytes);
            if engine == "k8s" && path.extension().is_some_and(|e| e == "yaml") {
                for needle in [
                    format!("imet/version: \"{version}\""),
                    format!("imet/source-commit: \"{SOURCE_COMMIT}\""),
                    format!("imet/libtorch: \"{LIBTORCH}\""),
                    format!("imet/rendered-by: \"{}\"", build_line()),
                ] {
                    assert!(text.contains(&needle), "{needle} missing from {}:\n{text}", path.display());
                }
                checked += 1;
            }
            if engine == "aws-batch" && path.starts_with("out/job-definitions") {
                let def: serde_json::Value = serde_json::from_str(&text).unwrap();
                let want = serde_json::json!({ "imet:experiment": "render_test", "imet:version": version, "imet:source-commit": SOURCE_COMMIT, "imet:libtorch": LIBTORCH });
                assert_eq!(def["tags"], want, "{}", path.display());
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 5 + 4, "five Kubernetes manifests and four job definitions checked");
}

#[test]
fn rendering_refuses_a_root_containers_cannot_reach() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("spec.toml"), SPEC.replace("s3://imet-bucket/experiments", "out/local")).unwrap();
    for engine in ["k8s", "aws-batch"] {
        let out = Command::new(env!("CARGO_BIN_EXE_imet"))
            .current_dir(tmp.path())
            .env_remove("IMET_ROOT")
            .args(["render", "--spec", "spec.toml", "--engine", engine, "--out", "out"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("storage.root") && err.contains("s3://"), "{engine}: {err}");
    }
}
