//! Model stage: loads initial weights into a native model's `VarStore` from
//! the bytes of a safetensors file (the job fetches them from any store
//! URL). Touches no store. The file must carry every backbone
//! variable under its timm `state_dict` name with the right shape; only
//! `head.` variables (and an architecture's own additions, such as the SE
//! blocks of SE-DenseNet-161) may be missing, and those are reported as
//! freshly initialised. timm's own classifier (`fc.`, `classifier.`,
//! `last_linear.`, `classif.`) is skipped.

use super::registry::Arch;
use super::HEAD_PREFIX;
use crate::error::{Error, Result};
use safetensors::SafeTensors;
use std::collections::{BTreeSet, HashMap};
use std::convert::TryFrom;
use tch::{nn, Kind, Tensor};

/// Classifier prefixes of timm models, never loaded into our head.
const TIMM_CLASSIFIERS: [&str; 4] = ["fc.", "classifier.", "last_linear.", "classif."];

/// How many names an error lists before summarising.
const SHOWN: usize = 8;

/// What a load did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LoadReport {
    /// Variables copied from the file.
    pub loaded: usize,
    /// Variables left at their fresh initialisation (head, arch additions).
    pub fresh: Vec<String>,
    /// Tensors of the file that the model has no use for (timm's classifier).
    pub skipped: Vec<String>,
}

/// Copies the tensors of a safetensors buffer into `vs` after checking that
/// every backbone variable is present with the right shape. `file` names the
/// buffer in errors.
///
/// # Errors
/// [`Error::WeightsFormat`] when the bytes are not safetensors,
/// [`Error::WeightsMismatch`] naming missing backbone tensors, shape
/// mismatches and foreign tensors; nothing is copied unless the whole file
/// fits.
pub fn apply_weights(vs: &nn::VarStore, arch: Arch, file: &str, bytes: &[u8]) -> Result<LoadReport> {
    let parsed = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::WeightsFormat { file: file.to_string(), reason: format!("{e:?}") })?;
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let in_file: BTreeSet<String> = parsed.names().into_iter().cloned().collect();

    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut fresh = Vec::new();
    let mut plan: Vec<(&Tensor, String)> = Vec::new();
    for (name, var) in &vars {
        let optional = name.starts_with(HEAD_PREFIX) || arch.is_extra_variable(name);
        match parsed.tensor(name) {
            Ok(view) => {
                let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
                if shape == var.size() {
                    plan.push((var, name.clone()));
                } else if optional {
                    fresh.push(name.clone());
                } else {
                    mismatched.push(format!("{name} is {shape:?} in the file, {:?} in the model", var.size()));
                }
            }
            Err(_) if optional => fresh.push(name.clone()),
            Err(_) => missing.push(name.clone()),
        }
    }
    let known: HashMap<&str, ()> = vars.iter().map(|(n, _)| (n.as_str(), ())).collect();
    let mut skipped = Vec::new();
    let mut foreign = Vec::new();
    for name in &in_file {
        if known.contains_key(name.as_str()) {
            continue;
        }
        if TIMM_CLASSIFIERS.iter().any(|p| name.starts_with(p)) || name.starts_with(HEAD_PREFIX) {
            skipped.push(name.clone());
        } else {
            foreign.push(name.clone());
        }
    }
    if !missing.is_empty() || !mismatched.is_empty() || !foreign.is_empty() {
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!("{} backbone tensor(s) missing: {}", missing.len(), listed(&missing)));
        }
        if !mismatched.is_empty() {
            problems.push(format!("{} shape mismatch(es): {}", mismatched.len(), listed(&mismatched)));
        }
        if !foreign.is_empty() {
            problems.push(format!(
                "{} tensor(s) the model does not have (another architecture?): {}",
                foreign.len(),
                listed(&foreign)
            ));
        }
        return Err(Error::WeightsMismatch {
            file: file.to_string(),
            arch: arch.name().to_string(),
            timm: arch.timm_name().unwrap_or("-").to_string(),
            problems: problems.join("; "),
        });
    }
    tch::no_grad(|| -> Result<()> {
        for (var, name) in &plan {
            let view = parsed
                .tensor(name)
                .map_err(|e| Error::WeightsFormat { file: file.to_string(), reason: format!("`{name}`: {e:?}") })?;
            let kind = Kind::try_from(view.dtype()).map_err(|e| Error::WeightsFormat {
                file: file.to_string(),
                reason: format!("`{name}` has an unsupported dtype: {e}"),
            })?;
            let src = Tensor::f_from_data_size(view.data(), &var.size(), kind)?;
            let mut dst = var.shallow_clone();
            dst.f_copy_(&src.to_device(var.device()))?;
        }
        Ok(())
    })?;
    Ok(LoadReport { loaded: plan.len(), fresh, skipped })
}

/// Serialises every variable of `vs` to safetensors bytes with its name
/// (the format [`apply_weights`] reads).
///
/// # Errors
/// [`Error::Torch`] when a tensor cannot be copied to host memory.
pub fn to_safetensors(vs: &nn::VarStore) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir().map_err(|e| Error::Io { path: std::env::temp_dir(), source: e })?;
    let path = dir.path().join("weights.safetensors");
    let mut named: Vec<(String, Tensor)> =
        vs.variables().into_iter().map(|(n, t)| (n, t.detach().to_device(tch::Device::Cpu).contiguous())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, &path)?;
    std::fs::read(&path).map_err(|e| Error::Io { path, source: e })
}

fn listed(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(SHOWN).map(String::as_str).collect();
    if names.len() > SHOWN {
        format!("{} and {} more", shown.join(", "), names.len() - SHOWN)
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ConvOptions, HeadConfig};
    use tch::Device;

    fn resnet50() -> (nn::VarStore, crate::model::Model) {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Arch::Resnet50.build(&vs, &HeadConfig { classes: 5, ..Default::default() }, ConvOptions::default());
        (vs, model.expect("resnet50 builds"))
    }

    fn without(bytes: &[u8], drop: &dyn Fn(&str) -> bool) -> Vec<u8> {
        let parsed = SafeTensors::deserialize(bytes).expect("valid");
        let kept: Vec<(String, Tensor)> = parsed
            .tensors()
            .into_iter()
            .filter(|(n, _)| !drop(n))
            .map(|(n, v)| (n, Tensor::try_from(v).expect("convertible")))
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.safetensors");
        Tensor::write_safetensors(&kept, &path).expect("written");
        std::fs::read(path).expect("read back")
    }

    #[test]
    fn round_trip_restores_every_variable_including_batch_norm_buffers() {
        let (src, _) = resnet50();
        tch::no_grad(|| {
            let _ = src.variables()["bn1.running_var"].shallow_clone().fill_(3.0);
            let _ = src.variables()["bn1.num_batches_tracked"].shallow_clone().fill_(7);
        });
        let bytes = to_safetensors(&src).expect("serialised");
        let (dst, _) = resnet50();
        let report = apply_weights(&dst, Arch::Resnet50, "mem", &bytes).expect("loads");
        assert_eq!(report.loaded, src.variables().len());
        assert!(report.fresh.is_empty());
        assert_eq!(dst.variables()["bn1.running_var"].double_value(&[0]), 3.0);
        assert_eq!(dst.variables()["bn1.num_batches_tracked"].int64_value(&[]), 7);
        let a = &src.variables()["layer3.2.conv2.weight"];
        let b = &dst.variables()["layer3.2.conv2.weight"];
        assert_eq!(a, b);
    }

    #[test]
    fn missing_head_is_reported_fresh_but_missing_backbone_is_refused_by_name() {
        let (src, _) = resnet50();
        let bytes = to_safetensors(&src).expect("serialised");
        let (dst, _) = resnet50();
        let no_head = without(&bytes, &|n| n.starts_with("head."));
        let report = apply_weights(&dst, Arch::Resnet50, "mem", &no_head).expect("loads");
        assert_eq!(report.fresh, ["head.fc.bias", "head.fc.weight"]);

        let no_bn = without(&bytes, &|n| n == "layer2.1.bn2.running_mean");
        let err = apply_weights(&dst, Arch::Resnet50, "w.safetensors", &no_bn).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("layer2.1.bn2.running_mean") && text.contains("w.safetensors"), "{text}");
    }

    #[test]
    fn shape_mismatch_and_foreign_tensors_are_refused() {
        let (src, _) = resnet50();
        let bytes = to_safetensors(&src).expect("serialised");
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = Arch::Resnext50_32x4d.build(&vs, &HeadConfig::default(), ConvOptions::default());
        let err = apply_weights(&vs, Arch::Resnext50_32x4d, "r50.safetensors", &bytes).expect_err("refused");
        assert!(err.to_string().contains("layer1.0.bn1.bias is [64] in the file, [128] in the model"), "{err}");

        let vs = nn::VarStore::new(Device::Cpu);
        let _ = Arch::Densenet121.build(&vs, &HeadConfig::default(), ConvOptions::default());
        let err = apply_weights(&vs, Arch::Densenet121, "r50.safetensors", &bytes).expect_err("refused");
        assert!(err.to_string().contains("another architecture"), "{err}");
        assert!(apply_weights(&vs, Arch::Densenet121, "junk", b"not safetensors").is_err());
    }
}
