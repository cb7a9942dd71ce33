//! Native models against timm: every native arch loads a seeded random timm
//! model exported by ci/export_timm.py (weights + BatchNorm buffers by
//! `state_dict` name) and reproduces its eval-mode logits on a fixed input
//! within 1e-4; resnet50 also reproduces the first training step (loss,
//! every parameter's gradient norm, updated running means). Needs the
//! torch Python of ci/setup-torch-python.sh (fails without it).

use crate::model_support;

use imet::model::{Arch, ModelConfig};
use model_support::{export, max_abs_diff, read_tensors};
use std::path::PathBuf;
use std::sync::OnceLock;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Reduction, Tensor};

/// (case name, arch, timm model, input size, SE blocks, partial conv, train step)
const CASES: &[(&str, Arch, &str, i64, bool, bool, bool)] = &[
    ("resnet18", Arch::Resnet18, "resnet18", 64, false, false, false),
    ("resnet50", Arch::Resnet50, "resnet50", 64, false, false, true),
    ("resnet101", Arch::Resnet101, "resnet101", 64, false, false, false),
    ("resnext50_32x4d", Arch::Resnext50_32x4d, "resnext50_32x4d", 64, false, false, false),
    ("resnext101_32x8d", Arch::Resnext101_32x8d, "resnext101_32x8d", 64, false, false, false),
    ("seresnext50_32x4d", Arch::Seresnext50_32x4d, "legacy_seresnext50_32x4d", 64, false, false, false),
    ("seresnext50_32x4d_pconv", Arch::Seresnext50_32x4d, "legacy_seresnext50_32x4d", 64, false, true, false),
    ("seresnext101_32x4d", Arch::Seresnext101_32x4d, "legacy_seresnext101_32x4d", 64, false, false, false),
    ("senet154", Arch::Senet154, "legacy_senet154", 64, false, false, false),
    ("densenet121", Arch::Densenet121, "densenet121", 64, false, false, false),
    ("densenet161", Arch::Densenet161, "densenet161", 64, false, false, false),
    ("sedensenet161_pconv", Arch::Sedensenet161, "densenet161", 64, true, true, false),
    ("inception_resnet_v2", Arch::InceptionResnetV2, "inception_resnet_v2", 96, false, false, false),
    ("pnasnet5large", Arch::Pnasnet5large, "pnasnet5large", 64, false, false, false),
];

const TOLERANCE: f64 = 1e-4;

fn references() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cases: Vec<serde_json::Value> = CASES
            .iter()
            .map(|(name, _, model, size, se, pconv, train)| {
                serde_json::json!({"name": name, "model": model, "size": size, "classes": 1103,
                                   "se": se, "partial_conv": pconv, "train_step": train})
            })
            .collect();
        let json = serde_json::to_string(&cases).expect("cases serialise");
        export(&["reference", "--cases", &json])
    })
}

fn case(name: &str) -> (Arch, bool, bool) {
    let (_, arch, _, _, _, pconv, train) =
        CASES.iter().find(|c| c.0 == name).unwrap_or_else(|| panic!("no parity case {name}"));
    (*arch, *pconv, *train)
}

fn load(name: &str) -> (nn::VarStore, imet::model::Model) {
    let (arch, pconv, _) = case(name);
    let dir = references();
    let vs = nn::VarStore::new(Device::Cpu);
    let config = ModelConfig { partial_conv: pconv, ..ModelConfig::new(arch) };
    let model = config.build(&vs).expect("native arch builds");
    let url = format!("file://{}/{name}.safetensors", dir.display());
    let report = model_support::load_url(&url, &vs, arch).expect("timm weights load");
    assert!(report.fresh.is_empty(), "{name}: fresh {:?}", report.fresh);
    assert_eq!(report.loaded, vs.variables().len(), "{name}: every variable comes from the file");
    (vs, model)
}

fn check_logits(name: &str) {
    let (_vs, model) = load(name);
    let reference = read_tensors(&references().join(format!("{name}.reference.safetensors")));
    let logits = tch::no_grad(|| model.forward_t(&reference["input"], false));
    let diff = max_abs_diff(&logits, &reference["logits"]);
    eprintln!("{name}: max abs diff {diff:.3e}");
    assert!(diff <= TOLERANCE, "{name}: logits differ from timm by {diff:.3e} (> {TOLERANCE:e})");
}

#[test]
fn resnet18_matches_timm() {
    check_logits("resnet18");
}

#[test]
fn resnet50_matches_timm() {
    check_logits("resnet50");
}

#[test]
fn resnet101_matches_timm() {
    check_logits("resnet101");
}

#[test]
fn resnext50_32x4d_matches_timm() {
    check_logits("resnext50_32x4d");
}

#[test]
fn resnext101_32x8d_matches_timm() {
    check_logits("resnext101_32x8d");
}

#[test]
fn seresnext50_32x4d_matches_timm_legacy_seresnext50() {
    check_logits("seresnext50_32x4d");
}

#[test]
fn seresnext50_32x4d_with_partial_conv_padding_matches_the_python_reference() {
    check_logits("seresnext50_32x4d_pconv");
}

#[test]
fn seresnext101_32x4d_matches_timm_legacy_seresnext101() {
    check_logits("seresnext101_32x4d");
}

#[test]
fn senet154_matches_timm_legacy_senet154() {
    check_logits("senet154");
}

#[test]
fn densenet121_matches_timm() {
    check_logits("densenet121");
}

#[test]
fn densenet161_matches_timm() {
    check_logits("densenet161");
}

#[test]
fn se_densenet161_with_partial_conv_matches_the_python_reference() {
    check_logits("sedensenet161_pconv");
}

#[test]
fn inception_resnet_v2_matches_timm() {
    check_logits("inception_resnet_v2");
}

#[test]
fn pnasnet5large_matches_timm() {
    check_logits("pnasnet5large");
}

#[test]
fn resnet50_first_training_step_matches_pytorch() {
    let name = "resnet50";
    let (vs, model) = load(name);
    let reference = read_tensors(&references().join(format!("{name}.reference.safetensors")));
    let logits = model.forward_t(&reference["input"], true);
    let loss = logits.binary_cross_entropy_with_logits::<Tensor>(&reference["train.targets"], None, None, Reduction::Mean);
    loss.backward();
    let expected_loss = reference["train.loss"].double_value(&[0]);
    let got_loss = loss.double_value(&[]);
    assert!((got_loss - expected_loss).abs() <= 1e-5 * expected_loss.abs().max(1.0), "loss {got_loss} vs PyTorch {expected_loss}");

    let vars = vs.variables();
    let mut compared = 0;
    let mut worst = (0.0f64, String::new());
    for (key, expected) in &reference {
        let Some(param) = key.strip_prefix("grad_norm.") else { continue };
        let var = vars.get(param).unwrap_or_else(|| panic!("PyTorch parameter {param} has no Rust variable"));
        let got = var.grad().norm().double_value(&[]);
        let want = expected.double_value(&[0]);
        let rel = (got - want).abs() / want.abs().max(1e-6);
        if rel > worst.0 {
            worst = (rel, param.to_string());
        }
        compared += 1;
    }
    assert_eq!(compared, vs.trainable_variables().len(), "every trainable variable has a reference gradient norm");
    eprintln!("worst gradient-norm relative difference {:.3e} at {}", worst.0, worst.1);
    assert!(worst.0 <= 1e-3, "gradient norm of {} differs by {:.3e} relative", worst.1, worst.0);

    for (key, expected) in &reference {
        let Some(buffer) = key.strip_prefix("train.buffer.") else { continue };
        let diff = max_abs_diff(&vars[buffer], expected);
        assert!(diff <= 1e-5, "{buffer} after the training forward differs by {diff:.3e}");
    }
    assert_eq!(vars["bn1.num_batches_tracked"].kind(), Kind::Int64);
}
