//! AWS Batch requests (`imet render --engine aws-batch`): one
//! RegisterJobDefinition request per group of the plan under
//! `job-definitions/` (the folds job, one array per model and stage, each
//! stage's curate and ensemble jobs), `submit-jobs.json` with the SubmitJob
//! requests (an array job has one child per fold it trains, mapped to the
//! fold through `IMET_FOLDS`; `dependsOn` names jobs by `@@jobName@@`
//! placeholders) and a `submit.sh` that registers the definitions and
//! submits in order with the aws CLI, replacing each placeholder by the id
//! it got. The spec travels in the job's environment; credentials only as
//! Secrets Manager / SSM ARNs or the job role. Reads the spec; writes
//! files under the output folder.

use super::k8s::{container_image, container_root, write_files, Rendered};
use super::plan::{shell_quote, JobResources, Plan};
use crate::fold_job::FOLDS_ENV;
use crate::error::{Error, ExitKind, Result};
use crate::spec::{JobSpec, SpecSource};
use crate::storage::provenance::build_facts;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;

/// The environment variable holding the spec TOML in every container.
pub const SPEC_ENV: &str = "IMET_SPEC_TOML";

/// AWS Batch refuses more dependencies per job.
const MAX_DEPENDS_ON: usize = 20;

/// Writes the requests and `submit.sh` for the spec `source` names under
/// `out`; its `--set` overrides are applied in the spec jobs receive.
///
/// # Errors
/// Spec errors; [`Error::Engine`] for a spec AWS Batch cannot run (no
/// image or job queue, a store root containers cannot reach);
/// [`Error::Io`] writing files.
pub fn render(source: &SpecSource, out: &Path) -> Result<Vec<Rendered>> {
    let spec = source.load()?;
    write_files(out, &requests(&spec)?)
}

fn engine(message: String) -> Error {
    Error::Engine { engine: "aws-batch", message }
}

/// An AWS Batch name (letters, digits, `-`, `_`; at most 128).
fn batch_name(parts: &[&str]) -> Result<String> {
    let name: String = parts.join("-").chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }).collect();
    if name.len() > 128 {
        return Err(engine(format!("job name {name:?} passes 128 characters; shorten the experiment or model name")));
    }
    Ok(name)
}

/// Every file as `(relative path, text, description)`.
///
/// # Errors
/// As [`render`].
pub fn requests(spec: &JobSpec) -> Result<Vec<(String, String, String)>> {
    let c = &spec.cluster;
    let a = &c.aws_batch;
    let image = container_image(spec, "aws-batch")?;
    let root = container_root(spec, "aws-batch")?;
    let queue = a.job_queue.clone().ok_or_else(|| engine("the spec has no `[cluster.aws_batch] job_queue`; name the queue jobs go to".into()))?;
    let spec_path = c.spec_path();
    let spec_dir = spec_path.rsplit_once('/').map(|(d, _)| if d.is_empty() { "/" } else { d }).unwrap_or("/");
    let plan = Plan::new(spec, Path::new(spec_path))?;
    let exp = &plan.experiment;
    let spec_text = spec.to_toml();
    // Writes the spec from the environment, then runs the job's commands.
    let shell = |commands: &str| {
        format!(
            "mkdir -p {} && printf '%s' \"${SPEC_ENV}\" > {} && {commands}",
            shell_quote(spec_dir),
            shell_quote(spec_path)
        )
    };
    let definition = |name: &str, command: String, r: &JobResources, folds: Option<&Vec<u8>>| {
        let mut resources = vec![
            json!({ "type": "VCPU", "value": r.cpus.to_string() }),
            json!({ "type": "MEMORY", "value": (r.memory_gb * 1024).to_string() }),
        ];
        if r.gpus > 0 {
            resources.push(json!({ "type": "GPU", "value": r.gpus.to_string() }));
        }
        let mut environment = vec![
            json!({ "name": crate::storage::config::ROOT_ENV, "value": root }),
            json!({ "name": "IMET_LOG_FORMAT", "value": "json" }),
            json!({ "name": SPEC_ENV, "value": spec_text }),
        ];
        if let Some(f) = folds {
            let list: Vec<String> = f.iter().map(u8::to_string).collect();
            environment.push(json!({ "name": FOLDS_ENV, "value": list.join(",") }));
        }
        let mut container = json!({
            "image": image,
            "command": ["sh", "-c", command],
            "resourceRequirements": resources,
            "environment": environment,
        });
        if let Some(role) = &a.job_role_arn {
            container["jobRoleArn"] = json!(role);
        }
        if !a.secrets.is_empty() {
            container["secrets"] = a.secrets.iter().map(|s| json!({ "name": s.name, "valueFrom": s.value_from })).collect();
        }
        // The definition names the imet that rendered it (version, source
        // commit, libtorch flavour); propagated to the tasks with the rest.
        let mut tags = json!({ "imet:experiment": exp });
        for (key, value) in build_facts() {
            tags[format!("imet:{key}")] = json!(value);
        }
        json!({
            "jobDefinitionName": name,
            "type": "container",
            "platformCapabilities": ["EC2"],
            "containerProperties": container,
            "retryStrategy": retry_strategy(a.attempts),
            "timeout": { "attemptDurationSeconds": r.time_limit_s.max(60) },
            "tags": tags,
            "propagateTags": true,
        })
    };

    let mut files = Vec::new();
    let mut submits: Vec<Value> = Vec::new();
    let mut add = |files: &mut Vec<(String, String, String)>, name: String, def: Value, size: Option<usize>, after: Vec<String>| -> Result<()> {
        let text = serde_json::to_string_pretty(&def)? + "\n";
        files.push((format!("job-definitions/{name}.json"), text, format!("RegisterJobDefinition {name}")));
        let mut req = json!({ "jobName": name, "jobQueue": queue, "jobDefinition": name, "tags": { "imet:experiment": exp }, "propagateTags": true });
        if let Some(k) = size {
            req["arrayProperties"] = json!({ "size": k });
        }
        if !after.is_empty() {
            if after.len() > MAX_DEPENDS_ON {
                return Err(engine(format!("job {name} would depend on {} jobs; AWS Batch allows {MAX_DEPENDS_ON}: blend fewer models", after.len())));
            }
            req["dependsOn"] = after.iter().map(|d| json!({ "jobId": placeholder(d) })).collect();
        }
        submits.push(req);
        Ok(())
    };

    let groups = plan.groups(&Default::default());
    let name_of = |id: &str| batch_name(&["imet", exp, &super::plan::short_name(id)]);
    for g in &groups {
        let name = name_of(&g.id)?;
        let after = g.deps.iter().map(|d| name_of(d)).collect::<Result<Vec<_>>>()?;
        let def = definition(&name, shell(&g.command_line(c.imet())), &g.resources, g.folds.as_ref());
        add(&mut files, name, def, g.folds.as_ref().map(Vec::len), after)?;
    }
    files.push(("submit-jobs.json".into(), serde_json::to_string_pretty(&submits)? + "\n", format!("{} SubmitJob requests", submits.len())));
    files.push(("submit.sh".into(), submit_script(exp, &submits)?, "registers the definitions and submits the jobs in order".into()));
    Ok(files)
}

/// Which failed attempts AWS Batch runs again, by imet's exit status
/// (`ExitKind`), up to `attempts` in all: a transient fault (75) and a lost
/// host (a Spot reclaim or a terminated instance: status reason `Host
/// EC2*`) are retried; a wrong spec or command (2), a bad input (3) or a
/// failed computation (4) end the job at once. AWS Batch retries an
/// attempt no entry matches, and allows at most five entries.
pub fn retry_strategy(attempts: u32) -> Value {
    let exit = |k: ExitKind| json!({ "onExitCode": k.code().to_string(), "action": "EXIT" });
    json!({
        "attempts": attempts,
        "evaluateOnExit": [
            { "onExitCode": ExitKind::Transient.code().to_string(), "action": "RETRY" },
            { "onStatusReason": "Host EC2*", "action": "RETRY" },
            exit(ExitKind::Usage),
            exit(ExitKind::BadInput),
            exit(ExitKind::Job),
        ],
    })
}

/// The stand-in for a job's id in `dependsOn` until it is submitted.
pub fn placeholder(job_name: &str) -> String {
    format!("@@{job_name}@@")
}

fn submit_script(experiment: &str, submits: &[Value]) -> Result<String> {
    let mut s = format!(
        "#!/bin/sh\n# Runs experiment `{experiment}` on AWS Batch; written by `imet render --engine aws-batch`.\n\
         # Needs the aws CLI with credentials for the queue's account. The SubmitJob requests are\n\
         # submit-jobs.json's, with each @@jobName@@ replaced by the id that job got.\n\
         set -eu\ncd \"$(dirname \"$0\")\"\n\
         for f in job-definitions/*.json; do\n  aws batch register-job-definition --cli-input-json \"file://$f\" --query jobDefinitionArn --output text\ndone\n\
         subst=''\n"
    );
    for req in submits {
        let name = req["jobName"].as_str().unwrap_or_default();
        let var = format!("id_{}", name.replace('-', "_"));
        let body = serde_json::to_string(req)?;
        let _ = writeln!(
            s,
            "{var}=$(aws batch submit-job --cli-input-json \"$(printf '%s' {} | sed \"$subst\")\" --query jobId --output text)",
            shell_quote(&body)
        );
        let _ = writeln!(s, "subst=\"${{subst}}s/{}/${var}/g;\"", placeholder(name));
        let _ = writeln!(s, "echo \"{name} ${var}\"");
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
experiment = "e.1"
[storage]
root = "s3://bucket/runs"
[folds]
k = 4
[[models]]
name = "r18"
arch = "resnet18"
size = 64
train = { batch_size = 8, phases = [{ epochs = 1, optimizer = { kind = "sgd", lr = 0.1 } }] }
resources = { gpus = 1, cpus = 6, memory_gb = 40, time_limit = "90m", predict_time_limit = "30m" }
[ensemble]
members = ["r18"]
[cluster]
image = "123.dkr.ecr.eu-west-1.amazonaws.com/imet:0.1"
[cluster.aws_batch]
job_queue = "gpu"
job_role_arn = "arn:aws:iam::123:role/imet"
secrets = [{ name = "AWS_SECRET_ACCESS_KEY", value_from = "arn:aws:secretsmanager:eu-west-1:123:secret:s3" }]
"#;

    fn json_file(files: &[(String, String, String)], name: &str) -> Value {
        serde_json::from_str(&files.iter().find(|f| f.0 == name).unwrap_or_else(|| panic!("no {name}")).1).unwrap()
    }

    #[test]
    fn models_are_array_jobs_of_k_children_after_folds_and_before_the_ensemble() {
        let spec = JobSpec::parse("s.toml", SPEC).unwrap();
        let files = requests(&spec).unwrap();
        let submits = json_file(&files, "submit-jobs.json");
        let names: Vec<&str> = submits.as_array().unwrap().iter().map(|r| r["jobName"].as_str().unwrap()).collect();
        assert_eq!(names, ["imet-e-1-folds", "imet-e-1-r18", "imet-e-1-ensemble"]);
        assert_eq!(submits[1]["arrayProperties"]["size"], 4);
        assert_eq!(submits[1]["dependsOn"][0]["jobId"], "@@imet-e-1-folds@@");
        assert_eq!(submits[2]["dependsOn"][0]["jobId"], "@@imet-e-1-r18@@");
        let def = json_file(&files, "job-definitions/imet-e-1-r18.json");
        let c = &def["containerProperties"];
        assert_eq!(c["resourceRequirements"], json!([{"type": "VCPU", "value": "6"}, {"type": "MEMORY", "value": "40960"}, {"type": "GPU", "value": "1"}]));
        assert_eq!(def["timeout"]["attemptDurationSeconds"], 7200);
        let cmd = c["command"][2].as_str().unwrap();
        assert!(cmd.ends_with("imet train --spec /etc/imet/spec.toml --model r18 --fold env && imet predict --spec /etc/imet/spec.toml --model r18 --fold env"), "{cmd}");
        assert_eq!(c["secrets"][0]["valueFrom"], "arn:aws:secretsmanager:eu-west-1:123:secret:s3");
        let env = c["environment"].as_array().unwrap();
        assert!(env.iter().all(|e| e["name"] != "AWS_SECRET_ACCESS_KEY"), "secrets stay out of the environment");
        let spec_env = env.iter().find(|e| e["name"] == SPEC_ENV).unwrap()["value"].as_str().unwrap();
        assert_eq!(JobSpec::parse("env", spec_env).unwrap(), spec, "the spec travels whole");
        let retry = &def["retryStrategy"];
        assert_eq!(retry["attempts"], 2);
        let on = retry["evaluateOnExit"].as_array().unwrap();
        assert!(on.len() <= 5, "AWS Batch allows five entries");
        assert!(on.contains(&json!({ "onExitCode": "75", "action": "RETRY" })) && on.contains(&json!({ "onStatusReason": "Host EC2*", "action": "RETRY" })));
        for code in ["2", "3", "4"] {
            assert!(on.contains(&json!({ "onExitCode": code, "action": "EXIT" })), "{code}: {on:?}");
        }
        let folds = json_file(&files, "job-definitions/imet-e-1-folds.json");
        assert!(!folds["containerProperties"]["resourceRequirements"].to_string().contains("GPU"));
    }

    #[test]
    fn submit_script_replaces_each_placeholder_by_the_id_its_job_got() {
        let spec = JobSpec::parse("s.toml", SPEC).unwrap();
        let files = requests(&spec).unwrap();
        let s = &files.iter().find(|f| f.0 == "submit.sh").unwrap().1;
        assert!(s.contains("subst=\"${subst}s/@@imet-e-1-folds@@/$id_imet_e_1_folds/g;\""), "{s}");
        assert!(s.find("id_imet_e_1_folds=$(").unwrap() < s.find("id_imet_e_1_r18=$(").unwrap());
    }

    #[test]
    fn every_definition_is_tagged_with_the_imet_that_rendered_it() {
        let spec = JobSpec::parse("s.toml", SPEC).unwrap();
        let files = requests(&spec).unwrap();
        let p = crate::storage::provenance::Build::current();
        let defs: Vec<&String> = files.iter().filter(|f| f.0.starts_with("job-definitions/")).map(|f| &f.0).collect();
        assert_eq!(defs.len(), 3);
        for name in defs {
            let tags = &json_file(&files, name)["tags"];
            let want = json!({ "imet:experiment": spec.experiment, "imet:version": p.imet_version, "imet:source-commit": p.source_commit, "imet:libtorch": p.libtorch });
            assert_eq!(tags, &want, "{name}");
        }
        assert_eq!(requests(&spec).unwrap(), files, "the same binary renders the same files");
    }

    #[test]
    fn a_missing_queue_is_named() {
        let spec = JobSpec::parse("s.toml", &SPEC.replace("job_queue = \"gpu\"", "")).unwrap();
        let err = requests(&spec).unwrap_err().to_string();
        assert!(err.contains("job_queue"), "{err}");
    }
}
