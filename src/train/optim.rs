//! Optimisers (train stage): SGD, Adam and AdamW over a model's trainable
//! tensors, with PyTorch's update rules (single-tensor `torch.optim`
//! implementations), a learning rate per parameter group (backbone and
//! head), and gradient-norm clipping. Reads and writes nothing itself; its
//! state travels in checkpoints through [`Optimizer::state_tensors`] and
//! [`Optimizer::load_state`].

use crate::error::{Error, Result};
use super::config::OptimizerSpec;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Which learning rate a parameter gets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Group {
    /// Everything but the classifier: the phase's base rate.
    Backbone,
    /// Tensors named `head.*`: base rate x `head_lr_factor`.
    Head,
}

impl Group {
    /// The group of a variable by its `state_dict` name.
    pub fn of(name: &str) -> Group {
        if name.starts_with("head.") {
            Group::Head
        } else {
            Group::Backbone
        }
    }
}

/// The per-parameter state; which fields are used depends on the optimiser.
#[derive(Debug, Default)]
struct ParamState {
    /// SGD with momentum; created from the first gradient.
    momentum_buffer: Option<Tensor>,
    /// Adam(W) first and second moments.
    exp_avg: Option<Tensor>,
    exp_avg_sq: Option<Tensor>,
    /// Adam(W) updates of this parameter (PyTorch keeps it per parameter:
    /// a step without a gradient does not advance it).
    step: u64,
}

/// Checkpoint slot names (`optim.{slot}.{param name}`).
const MOMENTUM_BUFFER: &str = "momentum_buffer";
const EXP_AVG: &str = "exp_avg";
const EXP_AVG_SQ: &str = "exp_avg_sq";
const STEP: &str = "step";

/// An optimiser over named tensors.
#[derive(Debug)]
pub struct Optimizer {
    spec: OptimizerSpec,
    params: Vec<(String, Tensor)>,
    groups: Vec<Group>,
    state: Vec<ParamState>,
    steps: u64,
    /// Temporaries of the updates, created on the first step.
    scratch: Option<Scratch>,
}

impl Optimizer {
    /// Params: `(name, tensor)` pairs, every tensor with `requires_grad`;
    /// names starting with `head.` are [`Group::Head`]. Sorted by name
    /// internally so the state order is deterministic. The learning rate in
    /// `spec` is not used: [`Optimizer::step`] takes the rates.
    pub fn new(spec: &OptimizerSpec, params: Vec<(String, Tensor)>) -> Optimizer {
        let mut params = params;
        params.sort_by(|a, b| a.0.cmp(&b.0));
        debug_assert!(params.windows(2).all(|w| w[0].0 != w[1].0), "parameter names are unique");
        let groups = params.iter().map(|(name, _)| Group::of(name)).collect();
        let state = params.iter().map(|_| ParamState::default()).collect();
        Optimizer { spec: *spec, params, groups, state, steps: 0, scratch: None }
    }

    /// One update of every parameter that has a gradient, with the learning
    /// rate of its group (the caller applies the schedule and
    /// `head_lr_factor`). Parameters whose grad is undefined are skipped,
    /// like PyTorch. Semantics are PyTorch's: SGD (momentum, dampening 0,
    /// nesterov, weight decay added to the gradient, buffer = gradient on
    /// the first step), Adam (weight decay added to the gradient, bias
    /// correction), AdamW (decoupled: `p *= 1 - lr * wd` before the Adam
    /// update). No host synchronisation.
    pub fn step(&mut self, backbone_lr: f64, head_lr: f64) {
        let spec = self.spec;
        if self.scratch.is_none() {
            self.scratch = Scratch::for_params(&self.params);
        }
        let scratch = self.scratch.as_ref();
        tch::no_grad(|| {
            for ((_, param), (group, state)) in
                self.params.iter_mut().zip(self.groups.iter().zip(self.state.iter_mut()))
            {
                let grad = param.grad();
                if !grad.defined() {
                    continue;
                }
                let lr = match group {
                    Group::Backbone => backbone_lr,
                    Group::Head => head_lr,
                };
                let tmp = Scratch::pair(scratch, param);
                match spec {
                    OptimizerSpec::Sgd { momentum, nesterov, weight_decay, .. } => {
                        sgd(param, &grad, state, tmp, lr, momentum, nesterov, weight_decay)
                    }
                    OptimizerSpec::Adam { betas, eps, weight_decay, .. } => {
                        adam(param, &grad, state, tmp, lr, betas, eps, weight_decay, false)
                    }
                    OptimizerSpec::Adamw { betas, eps, weight_decay, .. } => {
                        adam(param, &grad, state, tmp, lr, betas, eps, weight_decay, true)
                    }
                }
            }
        });
        self.steps += 1;
    }

    /// Sets every defined grad to zero in place (PyTorch's
    /// `zero_grad(set_to_none=False)`; tch cannot reset a grad to
    /// undefined). Grads never computed stay undefined.
    pub fn zero_grad(&mut self) {
        for (_, param) in self.params.iter_mut() {
            param.zero_grad();
        }
    }

    /// Updates done so far ([`Optimizer::step`] calls, restored by
    /// [`Optimizer::load_state`]).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The parameters, sorted by name.
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// State for a checkpoint: tensors named `optim.{slot}.{param name}`
    /// (slot `momentum_buffer` for SGD; `exp_avg`, `exp_avg_sq` and the
    /// per-parameter update count `step` (0-dim i64) for Adam/AdamW), on
    /// CPU, contiguous, not sharing memory with the live state. Parameters
    /// that never had a gradient have no state. The caller stores
    /// [`Optimizer::steps`] separately.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for ((name, _), state) in self.params.iter().zip(&self.state) {
            for (slot, tensor) in
                [(MOMENTUM_BUFFER, &state.momentum_buffer), (EXP_AVG, &state.exp_avg), (EXP_AVG_SQ, &state.exp_avg_sq)]
            {
                if let Some(t) = tensor {
                    out.push((format!("optim.{slot}.{name}"), detached_cpu_copy(t)));
                }
            }
            if state.exp_avg.is_some() {
                out.push((format!("optim.{STEP}.{name}"), Tensor::from(state.step as i64)));
            }
        }
        out
    }

    /// Restores what [`Optimizer::state_tensors`] wrote, and the update
    /// count. `tensors` may hold other entries (model weights): only names
    /// starting with `optim.` are read. Tensors are copied onto each
    /// parameter's device, kind and memory layout. Nothing changes unless
    /// the whole state fits.
    ///
    /// # Errors
    /// [`Error::OptimizerState`] naming the tensor when an `optim.*` tensor
    /// belongs to no parameter or to a slot this optimiser does not have
    /// (a checkpoint of another optimiser or model), when a parameter has
    /// some of its slots but not all, when a tensor's shape differs from
    /// its parameter's, or when `steps > 0` but no parameter has state.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        let slots = self.slots();
        let index: HashMap<&str, usize> = self.params.iter().enumerate().map(|(i, (n, _))| (n.as_str(), i)).collect();
        let optimizer = self.spec.name();
        for key in tensors.keys().filter(|k| k.starts_with("optim.")) {
            let rest = &key["optim.".len()..];
            let known = rest
                .split_once('.')
                .map(|(slot, name)| slots.contains(&slot) && index.contains_key(name))
                .unwrap_or(false);
            if !known {
                return Err(state_error(format!(
                    "`{key}` is not a slot of this {optimizer} optimiser (slots {slots:?}) over this model's {} trainable tensors; resume with the spec and model the checkpoint was written with",
                    self.params.len()
                )));
            }
        }
        let mut restored: Vec<ParamState> = Vec::with_capacity(self.params.len());
        let mut with_state = 0usize;
        for (name, param) in &self.params {
            let found: Vec<(&str, Option<&Tensor>)> =
                slots.iter().map(|slot| (*slot, tensors.get(&format!("optim.{slot}.{name}")))).collect();
            let present = found.iter().filter(|(_, t)| t.is_some()).count();
            let mut state = ParamState::default();
            if present == 0 {
                restored.push(state);
                continue;
            }
            if present < found.len() {
                let missing: Vec<String> =
                    found.iter().filter(|(_, t)| t.is_none()).map(|(slot, _)| format!("optim.{slot}.{name}")).collect();
                return Err(state_error(format!(
                    "the checkpoint lacks {missing:?} but has other state of `{name}`; the checkpoint is incomplete, resume from an earlier one"
                )));
            }
            with_state += 1;
            for (slot, tensor) in found {
                let tensor = tensor.expect("every slot is present (checked above)");
                let key = format!("optim.{slot}.{name}");
                if slot == STEP {
                    if tensor.numel() != 1 {
                        return Err(state_error(format!(
                            "`{key}` has shape {:?}, expected a single update count",
                            tensor.size()
                        )));
                    }
                    let count = tensor.to_kind(Kind::Double).double_value(&[]);
                    if !(count >= 0.0 && count.fract() == 0.0) {
                        return Err(state_error(format!("`{key}` is {count}, expected a whole number of updates")));
                    }
                    state.step = count as u64;
                    continue;
                }
                if tensor.size() != param.size() {
                    return Err(state_error(format!(
                        "`{key}` has shape {:?} but parameter `{name}` has {:?}; resume with the model the checkpoint was written with",
                        tensor.size(),
                        param.size()
                    )));
                }
                let mut copy = param.zeros_like().detach();
                tch::no_grad(|| copy.copy_(tensor));
                match slot {
                    MOMENTUM_BUFFER => state.momentum_buffer = Some(copy),
                    EXP_AVG => state.exp_avg = Some(copy),
                    _ => state.exp_avg_sq = Some(copy),
                }
            }
            restored.push(state);
        }
        if steps > 0 && !slots.is_empty() && with_state == 0 {
            return Err(state_error(format!(
                "the checkpoint says {steps} {optimizer} updates were done but holds no `optim.*` tensors; it was written without optimiser state, restart the phase instead of resuming"
            )));
        }
        self.state = restored;
        self.steps = steps;
        Ok(())
    }

    /// The checkpoint slots this optimiser keeps per parameter.
    fn slots(&self) -> Vec<&'static str> {
        match self.spec {
            OptimizerSpec::Sgd { momentum, .. } if momentum != 0.0 => vec![MOMENTUM_BUFFER],
            OptimizerSpec::Sgd { .. } => vec![],
            OptimizerSpec::Adam { .. } | OptimizerSpec::Adamw { .. } => vec![STEP, EXP_AVG, EXP_AVG_SQ],
        }
    }
}

fn state_error(message: String) -> Error {
    Error::OptimizerState { message }
}

/// A contiguous CPU copy that shares no memory with `t`.
fn detached_cpu_copy(t: &Tensor) -> Tensor {
    let cpu = if t.device() == Device::Cpu { t.copy() } else { t.to_device(Device::Cpu) };
    cpu.contiguous()
}

/// Two flat buffers as large as the largest parameter, reused by every
/// update for its temporaries: without them each step would allocate (and,
/// on CPU, page-fault in) several parameter-sized tensors per parameter.
/// Not part of the checkpoint.
#[derive(Debug)]
struct Scratch {
    a: Tensor,
    b: Tensor,
}

impl Scratch {
    fn for_params(params: &[(String, Tensor)]) -> Option<Scratch> {
        let first = params.first()?;
        let numel = params.iter().map(|(_, p)| p.numel()).max().unwrap_or(0) as i64;
        let options = (first.1.kind(), first.1.device());
        Some(Scratch { a: Tensor::empty([numel], options), b: Tensor::empty([numel], options) })
    }

    /// Two temporaries shaped like `param`: views of the scratch buffers
    /// when kind and device match, fresh tensors otherwise.
    fn pair(scratch: Option<&Scratch>, param: &Tensor) -> (Tensor, Tensor) {
        match scratch {
            Some(s) if s.a.kind() == param.kind() && s.a.device() == param.device() => {
                let n = param.numel() as i64;
                let shape = param.size();
                (s.a.narrow(0, 0, n).view(shape.as_slice()), s.b.narrow(0, 0, n).view(shape.as_slice()))
            }
            _ => (param.empty_like(), param.empty_like()),
        }
    }
}

/// `torch.optim.SGD` (dampening 0) on one parameter; `a`, `b`: scratch
/// shaped like it. Same op sequence as PyTorch's single-tensor loop except
/// that `add(x, alpha=s)` is `x * s` then an add (tch has no `alpha`).
#[allow(clippy::too_many_arguments)]
fn sgd(
    param: &mut Tensor,
    grad: &Tensor,
    state: &mut ParamState,
    (a, mut b): (Tensor, Tensor),
    lr: f64,
    momentum: f64,
    nesterov: bool,
    wd: f64,
) {
    // `d` is either the grad itself (never modified) or scratch `b`.
    let mut d_is_b = false;
    let mut d = grad.shallow_clone();
    if wd != 0.0 {
        let _ = param.mul_scalar_out(&a, wd);
        let _ = grad.add_out(&b, &a);
        d = b.shallow_clone();
        d_is_b = true;
    }
    if momentum != 0.0 {
        match state.momentum_buffer.as_mut() {
            None => state.momentum_buffer = Some(d.detach().copy()),
            Some(buf) => {
                let _ = buf.g_mul_scalar_(momentum).g_add_(&d);
            }
        }
        let buf = state.momentum_buffer.as_ref().expect("momentum buffer exists (set above)");
        if nesterov {
            let _ = buf.mul_scalar_out(&a, momentum);
            if d_is_b {
                let _ = b.g_add_(&a);
            } else {
                let _ = d.add_out(&b, &a);
            }
            d = b.shallow_clone();
        } else {
            d = buf.shallow_clone();
        }
    }
    let _ = d.mul_scalar_out(&a, lr);
    let _ = param.g_sub_(&a);
}

/// `torch.optim.Adam` / `AdamW` (no amsgrad) on one parameter; `a`, `b`:
/// scratch shaped like it. Same op sequence (and so the same rounding) as
/// PyTorch's single-tensor loop.
#[allow(clippy::too_many_arguments)]
fn adam(
    param: &mut Tensor,
    grad: &Tensor,
    state: &mut ParamState,
    (mut a, b): (Tensor, Tensor),
    lr: f64,
    (beta1, beta2): (f64, f64),
    eps: f64,
    wd: f64,
    decoupled: bool,
) {
    let grad = if wd != 0.0 && !decoupled {
        let _ = param.mul_scalar_out(&a, wd);
        grad.add_out(&b, &a)
    } else {
        grad.shallow_clone()
    };
    if wd != 0.0 && decoupled {
        let _ = param.g_mul_scalar_(1.0 - lr * wd);
    }
    let exp_avg = state.exp_avg.get_or_insert_with(|| param.zeros_like().detach());
    let _ = exp_avg.lerp_(&grad, 1.0 - beta1);
    let exp_avg_sq = state.exp_avg_sq.get_or_insert_with(|| param.zeros_like().detach());
    let _ = grad.mul_scalar_out(&a, 1.0 - beta2);
    let _ = exp_avg_sq.g_mul_scalar_(beta2).addcmul_(&grad, &a);
    state.step += 1;
    let step = state.step as i32;
    let bias_correction1 = 1.0 - beta1.powi(step);
    let bias_correction2 = 1.0 - beta2.powi(step);
    let step_size = lr / bias_correction1;
    // denom = sqrt(v) / sqrt(bc2) + eps, in `a`; `b` (maybe the decayed grad) is free again.
    let _ = exp_avg_sq.sqrt_out(&a);
    let _ = a.g_div_scalar_(bias_correction2.sqrt()).g_add_scalar_(eps);
    let exp_avg = state.exp_avg.as_ref().expect("exp_avg exists (set above)");
    let _ = exp_avg.mul_scalar_out(&b, -step_size);
    let _ = param.addcdiv_(&b, &a);
}

/// Scales all grads of `params` so their global L2 norm is at most
/// `max_norm`, in place; returns the norm before clipping (PyTorch
/// `clip_grad_norm_`: coefficient `max_norm / (norm + 1e-6)` clamped at 1,
/// applied on the device). One host sync, for the returned norm. Params
/// without a grad are ignored; none at all gives 0.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> f64 {
    let grads: Vec<Tensor> = params.iter().map(|(_, p)| p.grad()).filter(|g| g.defined()).collect();
    if grads.is_empty() {
        return 0.0;
    }
    tch::no_grad(|| {
        let device = grads[0].device();
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm().to_device(device)).collect();
        let total = Tensor::stack(&norms, 0).norm();
        let coef = (&total + 1e-6).reciprocal() * max_norm;
        let coef = coef.clamp_max(1.0);
        for g in &grads {
            let mut g = g.shallow_clone();
            let _ = g.g_mul_(&coef.to_device(g.device()));
        }
        total.double_value(&[])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sgd_spec(momentum: f64, nesterov: bool, weight_decay: f64) -> OptimizerSpec {
        OptimizerSpec::Sgd { lr: 0.1, momentum, nesterov, weight_decay }
    }

    fn adamw_spec() -> OptimizerSpec {
        OptimizerSpec::Adamw { lr: 1e-2, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.1 }
    }

    fn param(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).set_requires_grad(true)
    }

    /// Accumulates exactly `grads[i]` into each named parameter's grad.
    fn give_grads(opt: &Optimizer, grads: &[(&str, &[f32])]) {
        for (name, g) in grads {
            let (_, p) = opt.params().iter().find(|(n, _)| n == name).expect("named param");
            (p * Tensor::from_slice(g)).sum(Kind::Float).backward();
        }
    }

    fn values(opt: &Optimizer, name: &str) -> Vec<f32> {
        let (_, p) = opt.params().iter().find(|(n, _)| n == name).expect("named param");
        Vec::<f32>::try_from(p.detach()).expect("f32 values")
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} != {b:?}");
        }
    }

    #[test]
    fn parameters_are_sorted_and_grouped_by_name() {
        let opt = Optimizer::new(
            &sgd_spec(0.0, false, 0.0),
            vec![("head.fc.weight".into(), param(&[1.0])), ("conv1.weight".into(), param(&[2.0]))],
        );
        let names: Vec<&str> = opt.params().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["conv1.weight", "head.fc.weight"]);
        assert_eq!(Group::of("head.fc.weight"), Group::Head);
        assert_eq!(Group::of("layer1.head.weight"), Group::Backbone);
    }

    #[test]
    fn plain_sgd_uses_each_groups_learning_rate() {
        let mut opt = Optimizer::new(
            &sgd_spec(0.0, false, 0.0),
            vec![("a".into(), param(&[1.0])), ("head.b".into(), param(&[1.0]))],
        );
        give_grads(&opt, &[("a", &[2.0]), ("head.b", &[2.0])]);
        opt.step(0.1, 0.5);
        close(&values(&opt, "a"), &[0.8]);
        close(&values(&opt, "head.b"), &[0.0]);
        assert_eq!(opt.steps(), 1);
    }

    #[test]
    fn sgd_momentum_buffer_starts_as_the_gradient() {
        let mut opt = Optimizer::new(&sgd_spec(0.9, false, 0.0), vec![("a".into(), param(&[0.0]))]);
        give_grads(&opt, &[("a", &[1.0])]);
        opt.step(1.0, 1.0);
        close(&values(&opt, "a"), &[-1.0]);
        opt.zero_grad();
        give_grads(&opt, &[("a", &[1.0])]);
        opt.step(1.0, 1.0);
        // buffer 0.9 * 1 + 1 = 1.9
        close(&values(&opt, "a"), &[-2.9]);
    }

    #[test]
    fn nesterov_with_weight_decay_matches_the_hand_computed_update() {
        let mut opt = Optimizer::new(&sgd_spec(0.5, true, 0.1), vec![("a".into(), param(&[2.0]))]);
        give_grads(&opt, &[("a", &[1.0])]);
        opt.step(0.1, 0.1);
        // d = 1 + 0.1 * 2 = 1.2; buf = 1.2; d = 1.2 + 0.5 * 1.2 = 1.8; p = 2 - 0.18
        close(&values(&opt, "a"), &[1.82]);
    }

    #[test]
    fn adam_first_step_moves_each_weight_by_the_learning_rate() {
        let spec = OptimizerSpec::Adam { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0 };
        let mut opt = Optimizer::new(&spec, vec![("a".into(), param(&[1.0, 1.0]))]);
        give_grads(&opt, &[("a", &[0.3, -7.0])]);
        opt.step(1e-3, 1e-3);
        close(&values(&opt, "a"), &[0.999, 1.001]);
    }

    #[test]
    fn adamw_decays_weights_without_a_gradient_contribution() {
        let mut opt = Optimizer::new(&adamw_spec(), vec![("a".into(), param(&[2.0]))]);
        give_grads(&opt, &[("a", &[0.0])]);
        opt.step(0.5, 0.5);
        // p *= 1 - 0.5 * 0.1; the Adam part is 0 / (0 + eps) = 0.
        close(&values(&opt, "a"), &[1.9]);
    }

    #[test]
    fn params_without_a_gradient_are_left_alone() {
        let mut opt = Optimizer::new(&adamw_spec(), vec![("a".into(), param(&[2.0])), ("b".into(), param(&[3.0]))]);
        give_grads(&opt, &[("a", &[1.0])]);
        opt.step(0.1, 0.1);
        close(&values(&opt, "b"), &[3.0]);
        let names: Vec<String> = opt.state_tensors().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["optim.exp_avg.a", "optim.exp_avg_sq.a", "optim.step.a"]);
    }

    #[test]
    fn zero_grad_zeroes_defined_grads() {
        let mut opt = Optimizer::new(&sgd_spec(0.0, false, 0.0), vec![("a".into(), param(&[1.0, 2.0]))]);
        give_grads(&opt, &[("a", &[3.0, 4.0])]);
        opt.zero_grad();
        let g = Vec::<f32>::try_from(opt.params()[0].1.grad()).expect("f32 grad");
        assert_eq!(g, vec![0.0, 0.0]);
    }

    fn run_round_trip(spec: OptimizerSpec) {
        let init = |opt_params: &[(&str, &[f32])]| -> Vec<(String, Tensor)> {
            opt_params.iter().map(|(n, v)| (n.to_string(), param(v))).collect()
        };
        let start: &[(&str, &[f32])] = &[("layer.w", &[0.5, -1.0, 2.0]), ("head.fc.w", &[0.1, 0.2])];
        let grads_at = |step: usize| -> Vec<(&'static str, Vec<f32>)> {
            let s = step as f32;
            vec![("layer.w", vec![0.3 * s - 0.2, -0.7, 1.1 / (s + 1.0)]), ("head.fc.w", vec![0.05 * s, -0.4 + 0.1 * s])]
        };
        let apply = |opt: &mut Optimizer, step: usize| {
            opt.zero_grad();
            let g = grads_at(step);
            let borrowed: Vec<(&str, &[f32])> = g.iter().map(|(n, v)| (*n, v.as_slice())).collect();
            give_grads(opt, &borrowed);
            let lr = 0.05 / (step as f64 + 1.0);
            opt.step(lr, lr * 3.0);
        };
        let mut a = Optimizer::new(&spec, init(start));
        for step in 0..3 {
            apply(&mut a, step);
        }
        let saved: HashMap<String, Tensor> = a.state_tensors().into_iter().collect();
        let current: Vec<(String, Tensor)> =
            a.params().iter().map(|(n, p)| (n.clone(), p.detach().copy().set_requires_grad(true))).collect();
        let mut b = Optimizer::new(&spec, current);
        b.load_state(&saved, a.steps()).expect("state fits");
        assert_eq!(b.steps(), 3);
        for step in 3..6 {
            apply(&mut a, step);
            apply(&mut b, step);
        }
        for ((name, pa), (_, pb)) in a.params().iter().zip(b.params()) {
            assert!(pa.equal(pb), "{spec:?}: `{name}` differs after the restore");
        }
        for ((name, sa), (_, sb)) in a.state_tensors().iter().zip(b.state_tensors()) {
            assert!(sa.equal(&sb), "{spec:?}: state `{name}` differs after the restore");
        }
    }

    #[test]
    fn an_optimiser_restored_mid_way_ends_bit_for_bit_equal() {
        run_round_trip(sgd_spec(0.9, true, 1e-2));
        run_round_trip(OptimizerSpec::Adam { lr: 1e-2, betas: (0.9, 0.99), eps: 1e-8, weight_decay: 1e-3 });
        run_round_trip(adamw_spec());
    }

    #[test]
    fn state_tensors_do_not_share_memory_with_the_live_state() {
        let mut opt = Optimizer::new(&sgd_spec(0.9, false, 0.0), vec![("a".into(), param(&[1.0]))]);
        give_grads(&opt, &[("a", &[1.0])]);
        opt.step(0.1, 0.1);
        let saved = opt.state_tensors();
        opt.step(0.1, 0.1);
        assert_eq!(saved[0].1.double_value(&[0]), 1.0);
    }

    #[test]
    fn load_state_refuses_another_optimisers_state_naming_the_tensor() {
        let mut sgd = Optimizer::new(&sgd_spec(0.9, false, 0.0), vec![("a".into(), param(&[1.0]))]);
        give_grads(&sgd, &[("a", &[1.0])]);
        sgd.step(0.1, 0.1);
        let saved: HashMap<String, Tensor> = sgd.state_tensors().into_iter().collect();
        let mut adam = Optimizer::new(&adamw_spec(), vec![("a".into(), param(&[1.0]))]);
        let err = adam.load_state(&saved, 1).expect_err("sgd state does not fit adamw").to_string();
        assert!(err.contains("optim.momentum_buffer.a") && err.contains("adamw"), "{err}");
    }

    #[test]
    fn load_state_refuses_a_misshapen_or_incomplete_state() {
        let mut opt = Optimizer::new(&adamw_spec(), vec![("a".into(), param(&[1.0, 2.0]))]);
        let mut state = HashMap::new();
        state.insert("optim.exp_avg.a".to_string(), Tensor::zeros([3], (Kind::Float, Device::Cpu)));
        state.insert("optim.exp_avg_sq.a".to_string(), Tensor::zeros([2], (Kind::Float, Device::Cpu)));
        state.insert("optim.step.a".to_string(), Tensor::from(1i64));
        let err = opt.load_state(&state, 1).expect_err("shape differs").to_string();
        assert!(err.contains("optim.exp_avg.a") && err.contains("[3]"), "{err}");
        state.remove("optim.exp_avg.a");
        let err = opt.load_state(&state, 1).expect_err("incomplete").to_string();
        assert!(err.contains("optim.exp_avg.a"), "{err}");
        let err = opt.load_state(&HashMap::new(), 5).expect_err("no state at all").to_string();
        assert!(err.contains("no `optim.*` tensors"), "{err}");
        // Other checkpoint entries are not the optimiser's business.
        let mut weights = HashMap::new();
        weights.insert("a".to_string(), Tensor::zeros([2], (Kind::Float, Device::Cpu)));
        opt.load_state(&weights, 0).expect("fresh state with weights beside it");
    }

    #[test]
    fn clip_grad_norm_scales_to_the_maximum_and_returns_the_norm_before() {
        let opt = Optimizer::new(
            &sgd_spec(0.0, false, 0.0),
            vec![("a".into(), param(&[0.0, 0.0])), ("b".into(), param(&[0.0]))],
        );
        give_grads(&opt, &[("a", &[3.0, 0.0]), ("b", &[4.0])]);
        let norm = clip_grad_norm(opt.params(), 1.0);
        assert!((norm - 5.0).abs() < 1e-6, "{norm}");
        let a = Vec::<f32>::try_from(opt.params()[0].1.grad()).expect("grad");
        close(&a, &[0.6, 0.0]);
        // Under the maximum: unchanged.
        let norm = clip_grad_norm(opt.params(), 10.0);
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        let b = Vec::<f32>::try_from(opt.params()[1].1.grad()).expect("grad");
        close(&b, &[0.8]);
    }
}
