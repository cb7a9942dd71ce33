//! The `[cluster]` part of an experiment spec: what a batch engine needs
//! beyond the job plan. The container image, where `imet` and the spec live
//! on the cluster, and per-engine settings (`[cluster.slurm]`,
//! `[cluster.kubernetes]`, `[cluster.aws_batch]`). Credentials are never
//! written here: the spec only names a Kubernetes Secret or Secrets Manager
//! ARNs, and the engine injects them. Read by `orchestrate::{slurm, k8s,
//! batch}`; changes nothing a job computes.
//!
//! ```toml
//! [cluster]
//! image = "ghcr.io/me/imet:0.1"
//! [cluster.kubernetes]
//! namespace = "ml"
//! secret = "imet-s3"
//! [cluster.aws_batch]
//! job_queue = "gpu-queue"
//! secrets = [{ name = "AWS_SECRET_ACCESS_KEY", value_from = "arn:aws:secretsmanager:eu-west-1:1:secret:s3-key" }]
//! ```

use serde::{Deserialize, Serialize};

/// How jobs reach the cluster. Every field has a default, so a spec without
/// `[cluster]` plans and submits to a local Slurm unchanged.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The `imet` binary as jobs call it (a name on `PATH` or an absolute
    /// path); `"imet"` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imet: Option<String>,
    /// Container image holding `imet` (Kubernetes and AWS Batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Where containers find the spec; `/etc/imet/spec.toml` when unset
    /// (Kubernetes mounts it from a ConfigMap there, AWS Batch jobs write it
    /// there from their environment first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_path: Option<String>,
    #[serde(default, skip_serializing_if = "SlurmSettings::is_default")]
    pub slurm: SlurmSettings,
    #[serde(default, skip_serializing_if = "KubernetesSettings::is_default")]
    pub kubernetes: KubernetesSettings,
    #[serde(default, skip_serializing_if = "AwsBatchSettings::is_default")]
    pub aws_batch: AwsBatchSettings,
}

/// `[cluster.slurm]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    /// `--partition` of every job; the cluster's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// `--account` of every job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Extra `#SBATCH` lines, without the prefix, e.g. `"--qos=long"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sbatch_extra: Vec<String>,
    /// Times a job that ends with exit status 75 (a transient fault that
    /// outlasted the retries) requeues itself with `scontrol requeue`,
    /// counted by `SLURM_RESTART_COUNT`; 0 never requeues. Other failures
    /// are never requeued.
    #[serde(default = "default_retries")]
    pub requeues: u32,
}

/// `[cluster.kubernetes]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSettings {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Name of the Secret whose keys become the containers' environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Fold pods of one model running at once; all folds when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// Retries of a failed pod (per index) before the Job fails.
    #[serde(default = "default_retries")]
    pub backoff_limit: u32,
    /// `Always`, `IfNotPresent` or `Never`.
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
}

/// `[cluster.aws_batch]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsBatchSettings {
    /// Job queue every job is submitted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_queue: Option<String>,
    /// IAM role the containers assume (e.g. for S3 access without keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_role_arn: Option<String>,
    /// Environment variables filled from Secrets Manager or SSM at start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<AwsSecret>,
    /// Attempts per job (1 = no retry), 1 to 10.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
}

/// One variable of `[cluster.aws_batch] secrets`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsSecret {
    /// Environment variable name in the container.
    pub name: String,
    /// ARN of the Secrets Manager secret or SSM parameter.
    pub value_from: String,
}

fn default_namespace() -> String {
    "default".into()
}
fn default_retries() -> u32 {
    2
}
fn default_pull_policy() -> String {
    "IfNotPresent".into()
}
fn default_attempts() -> u32 {
    2
}

impl Default for SlurmSettings {
    fn default() -> Self {
        SlurmSettings { partition: None, account: None, sbatch_extra: Vec::new(), requeues: default_retries() }
    }
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        KubernetesSettings {
            namespace: default_namespace(),
            secret: None,
            service_account: None,
            parallelism: None,
            backoff_limit: default_retries(),
            image_pull_policy: default_pull_policy(),
        }
    }
}

impl Default for AwsBatchSettings {
    fn default() -> Self {
        AwsBatchSettings { job_queue: None, job_role_arn: None, secrets: Vec::new(), attempts: default_attempts() }
    }
}

impl SlurmSettings {
    pub fn is_default(&self) -> bool {
        *self == SlurmSettings::default()
    }
}
impl KubernetesSettings {
    pub fn is_default(&self) -> bool {
        *self == KubernetesSettings::default()
    }
}
impl AwsBatchSettings {
    pub fn is_default(&self) -> bool {
        *self == AwsBatchSettings::default()
    }
}

/// Where containers find the spec when `spec_path` is unset.
pub const DEFAULT_SPEC_PATH: &str = "/etc/imet/spec.toml";

impl ClusterSection {
    pub fn is_default(&self) -> bool {
        *self == ClusterSection::default()
    }

    /// The `imet` binary jobs call.
    pub fn imet(&self) -> &str {
        self.imet.as_deref().unwrap_or("imet")
    }

    /// The spec path inside containers.
    pub fn spec_path(&self) -> &str {
        self.spec_path.as_deref().unwrap_or(DEFAULT_SPEC_PATH)
    }

    /// Range and shape checks; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(imet) = &self.imet {
            if imet.trim().is_empty() || imet.contains('\n') {
                return Err(format!("`cluster.imet` = {imet:?}: give a binary name or an absolute path"));
            }
        }
        if let Some(image) = &self.image {
            if image.is_empty() || image.chars().any(|c| c.is_whitespace()) {
                return Err(format!("`cluster.image` = {image:?}: give a container image reference such as \"ghcr.io/me/imet:0.1\""));
            }
        }
        if let Some(p) = &self.spec_path {
            if !p.starts_with('/') || p.ends_with('/') || p.contains(char::is_whitespace) {
                return Err(format!("`cluster.spec_path` = {p:?}: must be an absolute file path inside the container, e.g. {DEFAULT_SPEC_PATH:?}"));
            }
        }
        let slurm_word = |field: &str, v: &Option<String>| match v {
            Some(s) if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') => {
                Err(format!("`cluster.slurm.{field}` = {s:?}: must be one word"))
            }
            _ => Ok(()),
        };
        slurm_word("partition", &self.slurm.partition)?;
        slurm_word("account", &self.slurm.account)?;
        for line in &self.slurm.sbatch_extra {
            if !line.starts_with('-') || line.contains('\n') {
                return Err(format!("`cluster.slurm.sbatch_extra` line {line:?}: write one sbatch option per line, e.g. \"--qos=long\" (no `#SBATCH` prefix)"));
            }
        }
        if self.slurm.requeues > 20 {
            return Err(format!("`cluster.slurm.requeues` = {}: at most 20", self.slurm.requeues));
        }
        let k = &self.kubernetes;
        if !is_dns_label(&k.namespace) {
            return Err(format!("`cluster.kubernetes.namespace` = {:?}: must be a DNS label (a-z, 0-9, '-', at most 63)", k.namespace));
        }
        for (field, v) in [("secret", &k.secret), ("service_account", &k.service_account)] {
            if let Some(name) = v {
                if !is_dns_subdomain(name) {
                    return Err(format!("`cluster.kubernetes.{field}` = {name:?}: must be a Kubernetes object name (a-z, 0-9, '-', '.')"));
                }
            }
        }
        if k.parallelism == Some(0) {
            return Err("`cluster.kubernetes.parallelism` = 0: must be at least 1".into());
        }
        if k.backoff_limit > 100 {
            return Err(format!("`cluster.kubernetes.backoff_limit` = {}: at most 100", k.backoff_limit));
        }
        if !["Always", "IfNotPresent", "Never"].contains(&k.image_pull_policy.as_str()) {
            return Err(format!("`cluster.kubernetes.image_pull_policy` = {:?}: use Always, IfNotPresent or Never", k.image_pull_policy));
        }
        let a = &self.aws_batch;
        if !(1..=10).contains(&a.attempts) {
            return Err(format!("`cluster.aws_batch.attempts` = {}: must be between 1 and 10", a.attempts));
        }
        if let Some(arn) = &a.job_role_arn {
            if !arn.starts_with("arn:") {
                return Err(format!("`cluster.aws_batch.job_role_arn` = {arn:?}: must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"));
            }
        }
        let mut names = std::collections::HashSet::new();
        for s in &a.secrets {
            let ok = !s.name.is_empty()
                && !s.name.starts_with(|c: char| c.is_ascii_digit())
                && s.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(format!("`cluster.aws_batch.secrets` name {:?}: must be an environment variable name", s.name));
            }
            if !s.value_from.starts_with("arn:") {
                return Err(format!(
                    "`cluster.aws_batch.secrets` {:?}: value_from = {:?} must be a Secrets Manager or SSM ARN, never the secret itself",
                    s.name, s.value_from
                ));
            }
            if !names.insert(s.name.as_str()) {
                return Err(format!("`cluster.aws_batch.secrets` names {:?} twice", s.name));
            }
        }
        Ok(())
    }
}

/// RFC 1123 label: what Kubernetes accepts as a namespace.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: what Kubernetes accepts as most object names.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterSection, String> {
        let c: ClusterSection = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map(|_| c)
    }

    #[test]
    fn an_empty_section_means_imet_on_the_path_and_the_default_spec_path() {
        let c = parse("").unwrap();
        assert!(c.is_default());
        assert_eq!((c.imet(), c.spec_path()), ("imet", DEFAULT_SPEC_PATH));
        assert_eq!(c.kubernetes.namespace, "default");
        assert_eq!(c.aws_batch.attempts, 2);
    }

    #[test]
    fn every_engine_table_parses() {
        let c = parse(
            r#"
image = "ghcr.io/me/imet:0.1"
imet = "/opt/imet/bin/imet"
[slurm]
partition = "gpu"
sbatch_extra = ["--qos=long"]
[kubernetes]
namespace = "ml"
secret = "imet-s3"
parallelism = 2
[aws_batch]
job_queue = "q"
job_role_arn = "arn:aws:iam::1:role/imet"
secrets = [{ name = "AWS_SECRET_ACCESS_KEY", value_from = "arn:aws:secretsmanager:eu-west-1:1:secret:k" }]
"#,
        )
        .unwrap();
        assert_eq!(c.slurm.partition.as_deref(), Some("gpu"));
        assert_eq!(c.kubernetes.secret.as_deref(), Some("imet-s3"));
        assert_eq!(c.aws_batch.secrets[0].name, "AWS_SECRET_ACCESS_KEY");
    }

    #[test]
    fn misspelt_keys_are_refused_in_every_table() {
        for text in ["images = \"x\"", "[slurm]\npartion = \"gpu\"", "[kubernetes]\nsecrets = \"x\"", "[aws_batch]\nqueue = \"q\""] {
            assert!(parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn inlined_secrets_and_bad_names_are_refused_with_the_field() {
        for (text, field) in [
            ("[aws_batch]\nsecrets = [{ name = \"AWS_SECRET_ACCESS_KEY\", value_from = \"wJalrXUtnFEMI\" }]", "never the secret"),
            ("[kubernetes]\nnamespace = \"ML\"", "cluster.kubernetes.namespace"),
            ("[kubernetes]\nsecret = \"my secret\"", "cluster.kubernetes.secret"),
            ("[slurm]\nsbatch_extra = [\"#SBATCH --qos=x\"]", "sbatch_extra"),
            ("[slurm]\npartition = \"a b\"", "cluster.slurm.partition"),
            ("spec_path = \"spec.toml\"", "cluster.spec_path"),
            ("[aws_batch]\nattempts = 0", "attempts"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(field), "{text}: {err}");
        }
    }
}
