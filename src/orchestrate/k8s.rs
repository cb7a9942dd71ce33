//! Kubernetes manifests (`imet render --engine k8s`): a ConfigMap holding
//! the spec and one Job per group of the plan: the folds Job, one Indexed
//! Job per model and stage (completion index `i` is the `i`-th fold it
//! trains, through `IMET_FOLDS`; each pod trains then predicts its fold),
//! each stage's curate and ensemble Jobs, plus a `submit.sh` that applies
//! them wave by wave in dependency order with `kubectl wait`.
//! Credentials come from the Secret the spec names (`envFrom`), never from
//! the manifests. Reads the spec; writes files under the output folder.

use super::plan::{short_name, Group, JobResources, Plan};
use crate::fold_job::FOLDS_ENV;
use std::collections::HashMap;
use crate::error::{Error, ExitKind, Result};
use crate::spec::{JobSpec, SpecSource};
use crate::storage::provenance::{build_facts, build_line};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One rendered file.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Rendered {
    pub path: PathBuf,
    /// Object kinds and names in the file, or what the script does.
    pub what: String,
}

/// Writes the manifests and `submit.sh` for the spec `source` names under
/// `out`; its `--set` overrides are applied in the spec the ConfigMap holds.
///
/// # Errors
/// Spec errors; [`Error::Engine`] for a spec the cluster cannot run (no
/// `[cluster] image`, a store root pods cannot reach, names Kubernetes
/// refuses); [`Error::Io`] writing files.
pub fn render(source: &SpecSource, out: &Path) -> Result<Vec<Rendered>> {
    let spec = source.load()?;
    let files = manifests(&spec)?;
    write_files(out, &files)
}

/// Writes `(relative path, text)` pairs under `out`; scripts become
/// executable.
pub(crate) fn write_files(out: &Path, files: &[(String, String, String)]) -> Result<Vec<Rendered>> {
    let mut done = Vec::new();
    for (rel, text, what) in files {
        let path = out.join(rel);
        let io = |source| Error::Io { path: path.clone(), source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, text).map_err(io)?;
        if rel.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        }
        done.push(Rendered { path, what: what.clone() });
    }
    Ok(done)
}

fn engine(message: String) -> Error {
    Error::Engine { engine: "kubernetes", message }
}

/// The store root containers use: `IMET_ROOT` when set, else the spec's.
/// It must be an object store every pod reaches.
///
/// # Errors
/// A message naming `storage.root` for plain paths, `file://` and `memory://`.
pub fn container_root(spec: &JobSpec, engine: &'static str) -> Result<String> {
    let root = spec.storage.root_raw();
    if !root.starts_with("s3://") {
        return Err(Error::Engine {
            engine,
            message: format!(
                "`storage.root` = {root:?}: containers share outputs only through an object store; set it (or IMET_ROOT) to s3://bucket/prefix, with credentials and endpoint from the cluster's secret"
            ),
        });
    }
    Ok(root)
}

/// The container image the spec names.
///
/// # Errors
/// [`Error::Engine`] when `[cluster] image` is unset.
pub fn container_image(spec: &JobSpec, engine: &'static str) -> Result<String> {
    spec.cluster.image.clone().ok_or_else(|| Error::Engine {
        engine,
        message: "the spec has no `[cluster] image`; add `image = \"registry/imet:tag\"` (an image with `imet` on its PATH)".into(),
    })
}

/// A Kubernetes object name from parts: lowercase, `_` and `.` become `-`.
///
/// # Errors
/// When the name would pass 52 characters (Job names must leave room for
/// the pods' suffixes) or start or end badly.
pub fn object_name(parts: &[&str]) -> Result<String> {
    let name = sanitize(&parts.join("-"));
    if name.len() > 52 || !crate::spec::is_dns_label(&name) {
        return Err(engine(format!(
            "object name {name:?} (from {parts:?}) is not a valid Kubernetes Job name of at most 52 characters; shorten the experiment or model name"
        )));
    }
    Ok(name)
}

/// Lowercase ASCII letters and digits; everything else becomes `-`.
pub fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

/// Every file of the rendering as `(relative path, text, description)`.
///
/// # Errors
/// As [`render`].
pub fn manifests(spec: &JobSpec) -> Result<Vec<(String, String, String)>> {
    let c = &spec.cluster;
    let k = &c.kubernetes;
    let image = container_image(spec, "kubernetes")?;
    let root = container_root(spec, "kubernetes")?;
    let spec_path = c.spec_path();
    let plan = Plan::new(spec, Path::new(spec_path))?;
    let exp = &plan.experiment;
    let config_name = object_name(&["imet", exp, "spec"])?;
    let (spec_dir, spec_file) = spec_path.rsplit_once('/').map(|(d, f)| (if d.is_empty() { "/" } else { d }, f)).unwrap_or(("/", spec_path));
    // Every object and pod also names the imet that rendered it (version,
    // source commit, libtorch flavour), as labels to select by and as one
    // annotation to read.
    let labels = |component: &str| {
        let mut l = json!({ "app.kubernetes.io/name": "imet", "app.kubernetes.io/component": component, "imet/experiment": label_value(exp) });
        for (key, value) in build_facts() {
            l[format!("imet/{key}")] = json!(label_value(value));
        }
        l
    };
    let meta = |name: &str, component: &str| {
        json!({ "name": name, "namespace": k.namespace, "labels": labels(component), "annotations": { "imet/rendered-by": build_line() } })
    };

    let mut files = Vec::new();
    let configmap = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(&config_name, "spec"),
        "data": { "spec.toml": spec.to_toml() },
    });
    files.push(("00-spec.yaml".to_string(), to_yaml_docs(&[configmap]), format!("ConfigMap/{config_name}")));

    let pod = |component: &str, command: Vec<String>, r: &JobResources, folds: Option<&Vec<u8>>| {
        let mut requests = json!({ "cpu": r.cpus.to_string(), "memory": format!("{}Gi", r.memory_gb) });
        let mut limits = json!({ "memory": format!("{}Gi", r.memory_gb) });
        if r.gpus > 0 {
            requests["nvidia.com/gpu"] = json!(r.gpus.to_string());
            limits["nvidia.com/gpu"] = json!(r.gpus.to_string());
        }
        let mut env = vec![
            json!({ "name": crate::storage::config::ROOT_ENV, "value": root }),
            json!({ "name": "IMET_LOG_FORMAT", "value": "json" }),
        ];
        if let Some(f) = folds {
            let list: Vec<String> = f.iter().map(u8::to_string).collect();
            env.push(json!({ "name": FOLDS_ENV, "value": list.join(",") }));
        }
        let mut container = json!({
            "name": "imet",
            "image": image,
            "imagePullPolicy": k.image_pull_policy,
            "command": command,
            "env": env,
            "resources": { "requests": requests, "limits": limits },
            "volumeMounts": [{ "name": "spec", "mountPath": spec_dir, "readOnly": true }],
        });
        if let Some(secret) = &k.secret {
            container["envFrom"] = json!([{ "secretRef": { "name": secret } }]);
        }
        let mut pod = json!({
            "restartPolicy": "Never",
            "activeDeadlineSeconds": r.time_limit_s,
            "containers": [container],
            "volumes": [{ "name": "spec", "configMap": { "name": config_name, "items": [{ "key": "spec.toml", "path": spec_file }] } }],
        });
        if let Some(sa) = &k.service_account {
            pod["serviceAccountName"] = json!(sa);
        }
        json!({ "metadata": { "labels": labels(component) }, "spec": pod })
    };
    let job_object = |name: &str, component: &str, template: Value, extra: Value| {
        // An Indexed Job retries each fold on its own (`backoffLimitPerIndex`),
        // so one fold's failures do not use up the others' retries.
        let retries = if extra.get("completionMode").is_some() { "backoffLimitPerIndex" } else { "backoffLimit" };
        let mut spec = json!({ retries: k.backoff_limit, "podFailurePolicy": pod_failure_policy(), "template": template });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": meta(name, component), "spec": spec })
    };

    // Groups in apply order, each in the wave after its dependencies, with
    // the time `kubectl wait` allows it.
    let groups = plan.groups(&Default::default());
    let mut wave: HashMap<&str, usize> = HashMap::new();
    let mut order: Vec<(String, String, u64)> = Vec::new();
    for g in &groups {
        let w = 1 + g.deps.iter().filter_map(|d| wave.get(d.as_str())).max().copied().unwrap_or(0);
        wave.insert(&g.id, w);
        let name = object_name(&["imet", exp, &short_name(&g.id)])?;
        let component = component_of(g);
        let file = format!("{w:02}-{}.yaml", sanitize(&g.id.replace('/', "-")));
        let (obj, what, timeout) = match &g.folds {
            None => {
                let command: Vec<String> = std::iter::once(c.imet().to_string()).chain(g.commands[0].iter().cloned()).collect();
                let obj = job_object(&name, &component, pod(&component, command, &g.resources, None), json!({}));
                (obj, format!("Job/{name}"), g.resources.time_limit_s)
            }
            Some(folds) => {
                let n = folds.len() as u32;
                let parallelism = k.parallelism.unwrap_or(n).min(n).max(1);
                let command = vec!["sh".into(), "-c".into(), g.command_line(c.imet())];
                let obj = job_object(
                    &name,
                    &component,
                    pod(&component, command, &g.resources, Some(folds)),
                    json!({ "completionMode": "Indexed", "completions": n, "parallelism": parallelism }),
                );
                let waves = u64::from(n.div_ceil(parallelism));
                (obj, format!("Job/{name} (Indexed, {n} completions)"), g.resources.time_limit_s * waves * u64::from(k.backoff_limit + 1))
            }
        };
        files.push((file.clone(), to_yaml_docs(&[obj]), what));
        order.push((file, name, timeout));
    }
    files.push(("submit.sh".into(), submit_script(exp, &k.namespace, &order), "applies the manifests in dependency order".into()));
    Ok(files)
}

/// The oldest Kubernetes release the manifests run on: `backoffLimitPerIndex`
/// is on by default from 1.29 (beta; GA in 1.33), `podFailurePolicy` from
/// 1.26 (GA in 1.31).
pub const MIN_KUBERNETES: &str = "1.29";

/// How a Job treats a failed pod, by imet's exit status (`ExitKind`): a
/// wrong spec or command (2), a bad input (3) or a failed computation (4)
/// fails the Job at once, since a retry would fail the same way; a pod
/// evicted, preempted or deleted with its node (`DisruptionTarget`) is
/// retried without counting; a transient fault (75) and anything else
/// counts against the retries (`backoff_limit`).
pub fn pod_failure_policy() -> Value {
    let codes = |kinds: &[ExitKind]| kinds.iter().map(|k| k.code()).collect::<Vec<u8>>();
    json!({ "rules": [
        { "action": "FailJob", "onExitCodes": { "containerName": "imet", "operator": "In", "values": codes(&[ExitKind::Usage, ExitKind::BadInput, ExitKind::Job]) } },
        { "action": "Ignore", "onPodConditions": [{ "type": "DisruptionTarget", "status": "True" }] },
        { "action": "Count", "onExitCodes": { "containerName": "imet", "operator": "In", "values": codes(&[ExitKind::Transient]) } },
    ] })
}

/// The `app.kubernetes.io/component` label of a group's pods.
fn component_of(g: &Group) -> String {
    match g.kind {
        super::plan::JobKind::Train => "train-predict".into(),
        k => k.as_str().into(),
    }
}

/// `s` as a label value Kubernetes accepts: at most 63 characters of
/// `[A-Za-z0-9._-]` (others become `-`), starting and ending alphanumeric.
fn label_value(s: &str) -> String {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    s.chars().map(|c| if valid(c) { c } else { '-' }).take(63).collect::<String>().trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// Applies every file in order; each stage waits for the previous one to
/// complete (models are applied together and waited for together).
fn submit_script(experiment: &str, namespace: &str, order: &[(String, String, u64)]) -> String {
    let mut s = format!(
        "#!/bin/sh\n# Runs experiment `{experiment}` on Kubernetes (1.{min} or later); written by `imet render --engine k8s`.\n\
         # Jobs already run are deleted and applied again: imet skips work already committed in the store.\n\
         # Each stage waits until all its Jobs complete, and stops at the first that fails.\n\
         set -eu\ncd \"$(dirname \"$0\")\"\nNS={namespace}\n\
         run() {{ kubectl -n \"$NS\" delete job \"$2\" --ignore-not-found; kubectl apply -f \"$1\"; }}\n\
         # wait_all SECONDS JOB...: polls the Jobs' Complete and Failed conditions.\n\
         wait_all() {{\n\
         \x20 limit=$1; shift; waited=0\n\
         \x20 while :; do\n\
         \x20   pending=''\n\
         \x20   for job in \"$@\"; do\n\
         \x20     state=$(kubectl -n \"$NS\" get job \"$job\" -o jsonpath='{{range .status.conditions[?(@.status==\"True\")]}}{{.type}} {{end}}')\n\
         \x20     case \" $state \" in\n\
         \x20       *\" Complete \"*) ;;\n\
         \x20       *\" Failed \"*)\n\
         \x20         echo \"job $job failed: $(kubectl -n \"$NS\" get job \"$job\" -o jsonpath='{{.status.conditions[?(@.type==\"Failed\")].message}}')\" >&2\n\
         \x20         echo \"its pods' logs: kubectl -n $NS logs -l job-name=$job; why each failed job stopped: imet status --spec SPEC\" >&2\n\
         \x20         exit 1 ;;\n\
         \x20       *) pending=\"$pending $job\" ;;\n\
         \x20     esac\n\
         \x20   done\n\
         \x20   [ -z \"$pending\" ] && return 0\n\
         \x20   if [ \"$waited\" -ge \"$limit\" ]; then echo \"timed out after ${{limit}}s waiting for:$pending\" >&2; exit 1; fi\n\
         \x20   sleep \"${{IMET_POLL_SECS:-10}}\"; waited=$((waited + ${{IMET_POLL_SECS:-10}}))\n\
         \x20 done\n\
         }}\n\
         kubectl apply -f 00-spec.yaml\n",
        min = MIN_KUBERNETES.trim_start_matches("1."),
    );
    let stage = |f: &str| f.split('-').next().unwrap_or("").to_string();
    let mut i = 0;
    while i < order.len() {
        let st = stage(&order[i].0);
        let group: Vec<&(String, String, u64)> = order[i..].iter().take_while(|o| stage(&o.0) == st).collect();
        for (file, name, _) in &group {
            let _ = writeln!(s, "run {file} {name}");
        }
        let timeout = group.iter().map(|g| g.2).max().unwrap_or(0);
        let names: Vec<&str> = group.iter().map(|g| g.1.as_str()).collect();
        let _ = writeln!(s, "wait_all {timeout} {}", names.join(" "));
        i += group.len();
    }
    let _ = writeln!(s, "echo \"experiment {experiment}: every job completed\"");
    s
}

/// YAML documents (`---` separated) for JSON values. Strings are written
/// as JSON strings, which YAML reads unchanged; keys keep their order.
pub fn to_yaml_docs(docs: &[Value]) -> String {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        yaml_value(&mut out, d, 0);
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).expect("strings serialise"),
        Value::Object(o) if o.is_empty() => "{}".into(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        other => other.to_string(),
    }
}

fn is_block(v: &Value) -> bool {
    matches!(v, Value::Object(o) if !o.is_empty()) || matches!(v, Value::Array(a) if !a.is_empty())
}

fn yaml_value(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, val) in o {
                let key = serde_json::to_string(k).expect("strings serialise");
                let key = if k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b)) && !k.is_empty() { k.clone() } else { key };
                if is_block(val) {
                    let _ = writeln!(out, "{pad}{key}:");
                    yaml_value(out, val, indent + 2);
                } else {
                    let _ = writeln!(out, "{pad}{key}: {}", scalar(val));
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                if is_block(item) {
                    // The first line of the item goes after "- ".
                    let mut inner = String::new();
                    yaml_value(&mut inner, item, indent + 2);
                    let _ = write!(out, "{pad}- {}", &inner[indent + 2..]);
                } else {
                    let _ = writeln!(out, "{pad}- {}", scalar(item));
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SPEC: &str = r#"
experiment = "e_1"
[storage]
root = "s3://bucket/runs"
[folds]
k = 3
[[models]]
name = "r18"
arch = "resnet18"
size = 64
train = { batch_size = 8, phases = [{ epochs = 1, optimizer = { kind = "sgd", lr = 0.1 } }] }
resources = { gpus = 1, cpus = 6, memory_gb = 40, time_limit = "90m", predict_time_limit = "30m" }
[ensemble]
members = ["r18"]
[cluster]
image = "ghcr.io/me/imet:0.1"
[cluster.kubernetes]
namespace = "ml"
secret = "imet-s3"
parallelism = 2
"#;

    fn file<'a>(files: &'a [(String, String, String)], name: &str) -> &'a str {
        &files.iter().find(|f| f.0 == name).unwrap_or_else(|| panic!("no {name}")).1
    }

    #[test]
    fn each_model_is_an_indexed_job_with_gpu_limits_and_the_secret_by_name() {
        let spec = JobSpec::parse("s.toml", SPEC).unwrap();
        let files = manifests(&spec).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["00-spec.yaml", "01-folds.yaml", "02-model-r18.yaml", "03-ensemble.yaml", "submit.sh"]);
        let m = file(&files, "02-model-r18.yaml");
        for needle in [
            "name: \"imet-e-1-r18\"",
            "completionMode: \"Indexed\"",
            "completions: 3",
            "parallelism: 2",
            "nvidia.com/gpu: \"1\"",
            "memory: \"40Gi\"",
            "secretRef:\n",
            "name: \"imet-s3\"",
            "\"imet train --spec /etc/imet/spec.toml --model r18 --fold env && imet predict --spec /etc/imet/spec.toml --model r18 --fold env\"",
            "value: \"s3://bucket/runs\"",
            "activeDeadlineSeconds: 7200",
        ] {
            assert!(m.contains(needle), "{needle:?} missing from\n{m}");
        }
        assert!(!file(&files, "01-folds.yaml").contains("nvidia.com/gpu"));
        let s = file(&files, "submit.sh");
        let (folds, model, ens) = (s.find("wait_all 7200 imet-e-1-folds").unwrap(), s.find("run 02-model").unwrap(), s.find("run 03-ensemble").unwrap());
        assert!(folds < model && s.find("imet-e-1-r18\n").unwrap() < ens, "{s}");
        // Each fold retries on its own; spec and input errors fail the Job at once.
        assert!(m.contains("backoffLimitPerIndex: 2\n") && !m.contains("backoffLimit: "), "{m}");
        let folds_job = file(&files, "01-folds.yaml");
        assert!(folds_job.contains("backoffLimit: 2\n") && !folds_job.contains("PerIndex"), "{folds_job}");
        for job in [m, folds_job] {
            for needle in ["action: \"FailJob\"", "- 2\n", "- 3\n", "- 4\n", "type: \"DisruptionTarget\"", "action: \"Ignore\"", "action: \"Count\"", "- 75\n"] {
                assert!(job.contains(needle), "{needle:?} missing from\n{job}");
            }
        }
    }

    #[test]
    fn every_object_and_pod_names_the_imet_that_rendered_it() {
        let spec = JobSpec::parse("s.toml", SPEC).unwrap();
        let files = manifests(&spec).unwrap();
        let commit = crate::storage::provenance::SOURCE_COMMIT;
        for (name, text, _) in files.iter().filter(|f| f.0.ends_with(".yaml")) {
            // Object metadata and, for Jobs, the pod template's too.
            let copies = if name == "00-spec.yaml" { 1 } else { 2 };
            for needle in [
                format!("imet/version: \"{}\"\n", env!("CARGO_PKG_VERSION")),
                format!("imet/source-commit: \"{}\"\n", label_value(commit)),
                format!("imet/libtorch: \"{}\"\n", crate::storage::provenance::LIBTORCH),
            ] {
                assert_eq!(text.matches(&needle).count(), copies, "{needle:?} in {name}:\n{text}");
            }
            assert_eq!(text.matches(&format!("imet/rendered-by: \"{}\"\n", build_line())).count(), 1, "{name}:\n{text}");
        }
        assert_eq!(manifests(&spec).unwrap(), files, "the same binary renders the same files");
    }

    #[test]
    fn label_values_keep_only_what_kubernetes_allows() {
        assert_eq!(label_value("0123456789abcdef0123456789abcdef01234567"), "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(label_value("v1.2+dirty"), "v1.2-dirty");
        assert_eq!(label_value("-e_1-"), "e_1");
        assert_eq!(label_value(&"a".repeat(80)).len(), 63);
    }

    #[test]
    fn a_store_pods_cannot_reach_or_a_missing_image_is_refused() {
        let local = JobSpec::parse("s.toml", &SPEC.replace("s3://bucket/runs", "out/e")).unwrap();
        let err = manifests(&local).unwrap_err().to_string();
        assert!(err.contains("storage.root") && err.contains("s3://"), "{err}");
        let no_image = JobSpec::parse("s.toml", &SPEC.replace("image = \"ghcr.io/me/imet:0.1\"", "")).unwrap();
        let err = manifests(&no_image).unwrap_err().to_string();
        assert!(err.contains("[cluster] image"), "{err}");
    }

    #[test]
    fn yaml_nests_maps_and_lists_and_quotes_every_string() {
        let y = to_yaml_docs(&[json!({ "a": { "b": [1, { "c": "x: y", "d": [] }], "e": {} }, "f": "multi\nline" })]);
        assert_eq!(y, "a:\n  b:\n    - 1\n    - c: \"x: y\"\n      d: []\n  e: {}\nf: \"multi\\nline\"\n");
    }
}
