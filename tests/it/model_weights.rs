//! Weight files and TorchScript modules made by PyTorch: a timm state_dict
//! exported by ci/export_timm.py loads with timm's classifier skipped and
//! the head (and SE-DenseNet's SE blocks) reported fresh, wrong files are
//! refused by name, and a scripted module trains, keeps its BatchNorm
//! buffers through save/load, and matches PyTorch's logits. Needs the torch
//! Python of ci/setup-torch-python.sh (fails without it).

use crate::model_support;

use imet::model::{apply_weights, Arch, ModelConfig, ScriptModel};
use model_support::{export, load_script, load_url, max_abs_diff, read_tensors};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Reduction, Tensor};

#[test]
fn timm_densenet161_file_loads_into_densenet161_and_se_densenet161_with_fresh_parts_reported() {
    let dir = export(&["weights", "--model", "densenet161", "--random", "--seed", "3"]);
    let url = format!("file://{}/densenet161.safetensors", dir.display());

    let vs = nn::VarStore::new(Device::Cpu);
    let _model = ModelConfig::new(Arch::Densenet161).build(&vs).expect("builds");
    let report = load_url(&url, &vs, Arch::Densenet161).expect("loads");
    assert_eq!(report.fresh, ["head.fc.bias", "head.fc.weight"]);
    assert_eq!(report.skipped, ["classifier.bias", "classifier.weight"]);

    let vs = nn::VarStore::new(Device::Cpu);
    let _model = ModelConfig::new(Arch::Sedensenet161).build(&vs).expect("builds");
    let report = load_url(&url, &vs, Arch::Sedensenet161).expect("loads");
    let se: Vec<&String> = report.fresh.iter().filter(|n| n.starts_with("features.se")).collect();
    assert_eq!(se.len(), 16, "{:?}", report.fresh);
    assert_eq!(report.fresh.len(), 18);

    let vs = nn::VarStore::new(Device::Cpu);
    let _model = ModelConfig::new(Arch::Densenet121).build(&vs).expect("builds");
    let err = load_url(&url, &vs, Arch::Densenet121).expect_err("wrong arch refused");
    let text = err.to_string();
    assert!(text.contains("features.conv0.weight is [96, 3, 7, 7] in the file, [64, 3, 7, 7] in the model"), "{text}");
    assert!(text.contains("densenet121"), "{text}");
}

#[test]
fn truncated_and_incomplete_files_are_refused_with_their_names() {
    let dir = export(&["weights", "--model", "densenet161", "--random", "--seed", "3"]);
    let path = dir.join("densenet161.safetensors");
    let bytes = std::fs::read(&path).expect("exported file");
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = ModelConfig::new(Arch::Densenet161).build(&vs).expect("builds");
    let err = apply_weights(&vs, Arch::Densenet161, "weights/cut.safetensors", &bytes[..bytes.len() / 2]).expect_err("cut");
    assert!(err.to_string().contains("cut.safetensors") && err.to_string().contains("not a readable safetensors"), "{err}");

    let mut tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(&path).expect("readable").into_iter().collect();
    tensors.retain(|(n, _)| n != "features.denseblock3.denselayer7.norm2.running_var");
    let tmp = tempfile::tempdir().expect("tempdir");
    let partial = tmp.path().join("partial.safetensors");
    Tensor::write_safetensors(&tensors, &partial).expect("written");
    let err = load_url(&format!("file://{}", partial.display()), &vs, Arch::Densenet161).expect_err("missing tensor refused");
    assert!(err.to_string().contains("features.denseblock3.denselayer7.norm2.running_var"), "{err}");
    let err = load_url(&format!("file://{}/absent.safetensors", tmp.path().display()), &vs, Arch::Densenet161).expect_err("absent");
    assert!(err.to_string().contains("absent.safetensors"), "{err}");
}

#[test]
fn torchscript_module_matches_pytorch_trains_and_keeps_batch_norm_buffers_when_saved() {
    let dir = export(&["script"]);
    let reference = read_tensors(&dir.join("tiny.reference.safetensors"));
    let vs = nn::VarStore::new(Device::Cpu);
    let url = format!("file://{}/tiny.pt", dir.display());
    let mut model = load_script(&url, &vs).expect("scripted module loads");
    assert_eq!(vs.trainable_variables().len(), 5, "conv.weight, bn.weight, bn.bias, fc.weight, fc.bias");

    let xs = &reference["input"];
    let eval = tch::no_grad(|| model.forward_t(xs, false)).expect("forward");
    assert!(max_abs_diff(&eval, &reference["logits"]) < 1e-5);

    let mut opt = nn::Sgd::default().build(&vs, 0.1).expect("optimizer");
    let targets = Tensor::zeros([2, 5], (tch::Kind::Float, Device::Cpu));
    let mut losses = Vec::new();
    for _ in 0..3 {
        let logits = model.forward_t(xs, true).expect("train forward");
        let loss = logits.binary_cross_entropy_with_logits::<Tensor>(&targets, None, None, Reduction::Mean);
        opt.backward_step(&loss);
        losses.push(loss.double_value(&[]));
    }
    assert!(losses[2] < losses[0], "training lowers the loss: {losses:?}");

    let after = tch::no_grad(|| model.forward_t(xs, false)).expect("forward");
    assert!(max_abs_diff(&after, &reference["logits"]) > 1e-3, "training changed the module");
    let saved = model.to_bytes().expect("saved");
    let vs2 = nn::VarStore::new(Device::Cpu);
    let mut reloaded = ScriptModel::from_bytes("ckpt/model.pt", &saved, &vs2).expect("reloads");
    let again = tch::no_grad(|| reloaded.forward_t(xs, false)).expect("forward");
    assert!(max_abs_diff(&after, &again) < 1e-6, "parameters and BatchNorm running statistics survive saving");
}

#[test]
fn a_module_that_does_not_return_logits_is_refused() {
    let dir = export(&["script"]);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = load_script(&format!("file://{}/tiny.pt", dir.display()), &vs).expect("loads");
    let bad = Tensor::zeros([2, 3, 4], (tch::Kind::Float, Device::Cpu));
    assert!(model.forward_t(&bad, false).is_err());
}
