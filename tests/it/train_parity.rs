//! Training numerics against PyTorch: every loss (value and logit
//! gradient, hard and soft targets, with and without a class mask), every
//! optimiser (5 steps of fixed gradients with per-group, per-step rates,
//! final weights and state), `clip_grad_norm_`, and the MultiStepLR and
//! CosineAnnealingLR schedules. ci/train_reference.py computes the
//! reference with the torch Python of ci/setup-torch-python.sh (fails
//! without it).

use crate::common;

use imet::train::config::{LossSpec, OptimizerSpec, ScheduleSpec};
use imet::train::loss::loss;
use imet::train::optim::{clip_grad_norm, Optimizer};
use imet::train::schedule::lr_factor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use tch::{Kind, Tensor};

const LOSS_TOLERANCE: f64 = 1e-6;
/// Absolute, on weights of magnitude up to ~5. SGD's `param.add_(d, alpha=-lr)`
/// is one fused multiply-add in ATen's CPU kernel; tch has no `alpha`, so
/// the update rounds twice and can differ by one ulp (2e-6 at |w| = 18).
/// Adam(W) follow PyTorch's op sequence exactly.
const OPTIM_TOLERANCE: f64 = 1e-6;

/// Per-step multipliers of the spec's lr, and the head's factor.
const LR_FACTORS: [f64; 5] = [1.0, 0.8, 0.6, 1.2, 0.5];
const HEAD_FACTOR: f64 = 10.0;
const CLIP: [f64; 2] = [1.0, 100.0];

fn loss_cases() -> Vec<(String, LossSpec, &'static str, bool)> {
    let specs = [
        ("bce", LossSpec::Bce),
        ("focal", LossSpec::Focal { gamma: 2.0, alpha: None }),
        ("focal_alpha", LossSpec::Focal { gamma: 2.0, alpha: Some(0.25) }),
        ("focal_g15_alpha", LossSpec::Focal { gamma: 1.5, alpha: Some(0.6) }),
        ("soft_f2", LossSpec::SoftF2),
        ("bce_soft_f2", LossSpec::BceSoftF2 { weight: 0.5 }),
    ];
    let mut cases = Vec::new();
    for (name, spec) in specs {
        for targets in ["hard", "soft"] {
            for masked in [false, true] {
                let suffix = if masked { "_masked" } else { "" };
                cases.push((format!("loss.{name}_{targets}{suffix}"), spec, targets, masked));
            }
        }
    }
    cases
}

fn optimizer_cases() -> Vec<(&'static str, OptimizerSpec)> {
    vec![
        ("sgd_plain", OptimizerSpec::Sgd { lr: 0.05, momentum: 0.0, nesterov: false, weight_decay: 0.0 }),
        ("sgd_momentum", OptimizerSpec::Sgd { lr: 0.02, momentum: 0.9, nesterov: false, weight_decay: 0.0 }),
        ("sgd_nesterov_wd", OptimizerSpec::Sgd { lr: 0.02, momentum: 0.9, nesterov: true, weight_decay: 1e-2 }),
        ("adam_wd", OptimizerSpec::Adam { lr: 1e-2, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 1e-2 }),
        ("adamw", OptimizerSpec::Adamw { lr: 1e-2, betas: (0.85, 0.99), eps: 1e-6, weight_decay: 0.1 }),
    ]
}

/// (name, milestones, gamma, epochs)
fn multistep_cases() -> Vec<(&'static str, Vec<u32>, f64, u32)> {
    vec![("multistep_r1", vec![7, 9], 0.5, 12), ("multistep_r2", vec![2, 4, 4, 6], 0.2, 8)]
}

/// (name, epochs, steps per epoch, min factor)
fn cosine_cases() -> Vec<(&'static str, u32, usize, f64)> {
    vec![("cosine_to_zero", 3, 7, 0.0), ("cosine_to_tenth", 4, 5, 0.1)]
}

/// The Python with torch 2.11.0; panics (fails the test) when absent.
fn torch_python() -> PathBuf {
    let candidate = std::env::var("IMET_TORCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| common::deps_dir().join("venv-torch/bin/python"));
    assert!(
        candidate.exists(),
        "torch Python not found at {} (IMET_TORCH_PYTHON); run `bash ci/setup-torch-python.sh` first",
        candidate.display()
    );
    candidate
}

/// Runs ci/train_reference.py once per test binary; the file it wrote.
fn reference_file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let cases = serde_json::json!({
            "losses": loss_cases().iter().map(|(name, spec, targets, masked)| serde_json::json!({
                "name": name, "loss": spec, "targets": targets, "masked": masked})).collect::<Vec<_>>(),
            "optimizers": optimizer_cases().iter().map(|(name, spec)| serde_json::json!({
                "name": name, "spec": spec})).collect::<Vec<_>>(),
            "lr_factors": LR_FACTORS,
            "head_factor": HEAD_FACTOR,
            "clip": CLIP,
            "multistep": multistep_cases().iter().map(|(name, milestones, gamma, epochs)| serde_json::json!({
                "name": name, "milestones": milestones, "gamma": gamma, "epochs": epochs})).collect::<Vec<_>>(),
            "cosine": cosine_cases().iter().map(|(name, epochs, steps, min)| serde_json::json!({
                "name": name, "epochs": epochs, "steps_per_epoch": steps, "min_factor": min})).collect::<Vec<_>>(),
        });
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("train-parity-{}", std::process::id()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/train_reference.py");
        let output = Command::new(torch_python())
            .arg(&script)
            .arg("--cases")
            .arg(cases.to_string())
            .arg("--out")
            .arg(&dir)
            .env("OMP_NUM_THREADS", "1")
            .output()
            .expect("the torch Python runs");
        assert!(
            output.status.success(),
            "ci/train_reference.py failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        dir.join("reference.safetensors")
    })
}

/// The reference tensors by name (tch tensors are not `Sync`, so each test
/// reads its own copy).
fn reference() -> HashMap<String, Tensor> {
    let path = reference_file();
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn get<'a>(reference: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    reference.get(name).unwrap_or_else(|| panic!("the reference has no tensor `{name}`"))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

#[test]
fn losses_and_their_gradients_match_pytorch() {
    let r = reference();
    let logits = get(&r, "loss.logits");
    let mask = get(&r, "loss.mask");
    let mut worst = (0.0f64, String::new());
    for (name, spec, targets, masked) in loss_cases() {
        let targets = get(&r, &format!("loss.{targets}"));
        let x = logits.detach().copy().set_requires_grad(true);
        let value = loss(&spec, &x, targets, masked.then_some(mask));
        assert_eq!(value.size(), Vec::<i64>::new(), "{name}: a scalar");
        value.backward();
        let want = get(&r, &format!("{name}.value")).double_value(&[0]);
        let got = value.double_value(&[]);
        let value_diff = (got - want).abs();
        let grad_diff = max_abs_diff(&x.grad(), get(&r, &format!("{name}.grad")));
        eprintln!("{name}: value {got:.6} (torch {want:.6}) diff {value_diff:.2e}, grad max diff {grad_diff:.2e}");
        assert!(value_diff <= LOSS_TOLERANCE, "{name}: loss {got} vs PyTorch {want}");
        assert!(grad_diff <= LOSS_TOLERANCE, "{name}: gradient differs from PyTorch by {grad_diff:.3e}");
        if value_diff.max(grad_diff) >= worst.0 {
            worst = (value_diff.max(grad_diff), name);
        }
    }
    eprintln!("worst loss difference {:.2e} ({})", worst.0, worst.1);
}

#[test]
fn optimisers_match_torch_optim_over_five_steps() {
    let r = reference();
    let names: Vec<String> = r.keys().filter_map(|k| k.strip_prefix("optim.init.").map(str::to_string)).collect();
    assert_eq!(names.len(), 5, "the reference has 5 parameters");
    let mut failures = Vec::new();
    for (case, spec) in optimizer_cases() {
        let params: Vec<(String, Tensor)> = names
            .iter()
            .map(|n| (n.clone(), get(&r, &format!("optim.init.{n}")).copy().set_requires_grad(true)))
            .collect();
        let mut opt = Optimizer::new(&spec, params);
        for (step, factor) in LR_FACTORS.iter().enumerate() {
            opt.zero_grad();
            for (name, param) in opt.params() {
                if let Some(grad) = r.get(&format!("optim.grad{step}.{name}")) {
                    // d/dp sum(p * g) = g exactly.
                    (param * grad).sum(Kind::Float).backward();
                }
            }
            let lr = spec.lr() * factor;
            opt.step(lr, lr * HEAD_FACTOR);
        }
        assert_eq!(opt.steps(), LR_FACTORS.len() as u64);
        let mut worst = 0.0f64;
        for (name, param) in opt.params() {
            let diff = max_abs_diff(param, get(&r, &format!("{case}.final.{name}")));
            if diff > OPTIM_TOLERANCE {
                failures.push(format!("{case}: `{name}` differs from torch.optim by {diff:.3e}"));
            }
            worst = worst.max(diff);
        }
        let state = opt.state_tensors();
        let expected: Vec<&String> = r.keys().filter(|k| k.starts_with(&format!("{case}.optim."))).collect();
        assert_eq!(
            state.len(),
            expected.len(),
            "{case}: state tensors {:?} vs torch {expected:?}",
            state.iter().map(|s| &s.0).collect::<Vec<_>>()
        );
        for (key, tensor) in &state {
            let want = get(&r, &format!("{case}.{key}"));
            let diff = max_abs_diff(tensor, want);
            if diff > OPTIM_TOLERANCE {
                failures.push(format!("{case}: state `{key}` differs from torch.optim by {diff:.3e}"));
            }
            worst = worst.max(diff);
        }
        let largest = opt.params().iter().map(|(_, p)| p.abs().max().double_value(&[])).fold(0.0, f64::max);
        eprintln!(
            "{case}: max abs diff {worst:.2e} over weights (largest |w| {largest:.2}) and {} state tensors",
            state.len()
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn clip_grad_norm_matches_pytorch() {
    let r = reference();
    let names: Vec<String> = r.keys().filter_map(|k| k.strip_prefix("clip.grad.").map(str::to_string)).collect();
    for (i, max_norm) in CLIP.iter().enumerate() {
        let params: Vec<(String, Tensor)> = names
            .iter()
            .map(|n| {
                let grad = get(&r, &format!("clip.grad.{n}"));
                let p = grad.zeros_like().set_requires_grad(true);
                (&p * grad).sum(Kind::Float).backward();
                (n.clone(), p)
            })
            .collect();
        let norm = clip_grad_norm(&params, *max_norm);
        let want = get(&r, &format!("clip{i}.norm")).double_value(&[0]);
        assert!((norm - want).abs() <= 1e-6 * want.max(1.0), "max_norm {max_norm}: norm {norm} vs PyTorch {want}");
        for (name, p) in &params {
            let diff = max_abs_diff(&p.grad(), get(&r, &format!("clip{i}.grad.{name}")));
            assert!(diff <= 1e-7, "max_norm {max_norm}: clipped grad of `{name}` differs by {diff:.3e}");
        }
        eprintln!("clip {max_norm}: norm {norm:.6} (torch {want:.6})");
    }
}

#[test]
fn step_schedule_matches_multistep_lr() {
    let r = reference();
    for (name, milestones, gamma, epochs) in multistep_cases() {
        let spec = ScheduleSpec::Step { milestones, factor: gamma };
        let want = Vec::<f64>::try_from(get(&r, &format!("{name}.lrs"))).expect("f64 rates");
        let got: Vec<f64> = (0..epochs).map(|e| lr_factor(&spec, epochs, e, 0, 10)).collect();
        for (e, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-12 * w.abs().max(1e-12), "{name} epoch {e}: {g} vs MultiStepLR {w}");
        }
    }
}

#[test]
fn cosine_schedule_without_warmup_matches_cosine_annealing_lr_per_step() {
    let r = reference();
    for (name, epochs, steps, min) in cosine_cases() {
        let spec = ScheduleSpec::Cosine { warmup_epochs: 0.0, min_factor: min };
        let want = Vec::<f64>::try_from(get(&r, &format!("{name}.lrs"))).expect("f64 rates");
        assert_eq!(want.len(), epochs as usize * steps);
        for (i, w) in want.iter().enumerate() {
            let g = lr_factor(&spec, epochs, (i / steps) as u32, i % steps, steps);
            assert!((g - w).abs() <= 1e-9, "{name} step {i}: {g} vs CosineAnnealingLR {w}");
        }
    }
}
