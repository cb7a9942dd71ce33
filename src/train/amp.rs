//! Dynamic loss scaling for fp16 training (train stage), with PyTorch
//! `torch.amp.GradScaler` semantics: the loss is multiplied by a large
//! scale before `backward` so small fp16 gradients do not flush to zero,
//! gradients are divided by it before the optimiser step, steps whose
//! gradients overflowed are skipped and the scale backs off, and the scale
//! grows again after a run of finite steps. Reads and writes nothing; its
//! state goes into checkpoints through [`GradScaler::state`].

use tch::Tensor;

/// PyTorch's defaults.
const INIT_SCALE: f64 = 65536.0;
const GROWTH_FACTOR: f64 = 2.0;
const BACKOFF_FACTOR: f64 = 0.5;
const GROWTH_INTERVAL: u32 = 2000;

/// Loss scaler; disabled (scale 1, never skips) for fp32 and bf16.
#[derive(Clone, Debug, PartialEq)]
pub struct GradScaler {
    enabled: bool,
    scale: f64,
    /// Consecutive finite steps since the last change of scale.
    growth_tracker: u32,
}

impl GradScaler {
    /// A scaler at PyTorch's initial scale 65536 (growth 2, backoff 0.5,
    /// growth interval 2000); `enabled = false` gives scale 1 and never
    /// reports an overflow.
    pub fn new(enabled: bool) -> GradScaler {
        GradScaler { enabled, scale: if enabled { INIT_SCALE } else { 1.0 }, growth_tracker: 0 }
    }

    /// Whether scaling is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The current scale (1 when disabled).
    pub fn current_scale(&self) -> f64 {
        self.scale
    }

    /// The loss to call `backward` on: `loss * scale` (the loss itself when
    /// disabled).
    ///
    /// # Shapes
    /// Any; usually `[]`.
    pub fn scale(&self, loss: &Tensor) -> Tensor {
        if self.enabled {
            loss * self.scale
        } else {
            loss.shallow_clone()
        }
    }

    /// Divides every defined grad of `params` by the scale, in place, and
    /// reports whether all of them are finite (one host sync). The caller
    /// skips the optimiser step when this returns false, then calls
    /// [`GradScaler::update`] either way. Disabled: touches nothing and
    /// returns true.
    pub fn unscale(&mut self, params: &[(String, Tensor)]) -> bool {
        if !self.enabled {
            return true;
        }
        // PyTorch computes the inverse in double and rounds it to f32.
        let inv_scale = (1.0 / self.scale) as f32 as f64;
        let mut finite: Vec<Tensor> = Vec::new();
        tch::no_grad(|| {
            for (_, param) in params {
                let mut grad = param.grad();
                if !grad.defined() {
                    continue;
                }
                let _ = grad.g_mul_scalar_(inv_scale);
                finite.push(grad.isfinite().all());
            }
        });
        if finite.is_empty() {
            return true;
        }
        Tensor::stack(&finite, 0).all().int64_value(&[]) != 0
    }

    /// Adjusts the scale after a step (or a skipped one): an overflow
    /// halves it and restarts the count; `growth_interval` consecutive
    /// finite steps double it. No-op when disabled.
    pub fn update(&mut self, found_inf: bool) {
        if !self.enabled {
            return;
        }
        if found_inf {
            self.scale *= BACKOFF_FACTOR;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == GROWTH_INTERVAL {
                self.scale *= GROWTH_FACTOR;
                self.growth_tracker = 0;
            }
        }
    }

    /// `(scale, growth tracker)` for a checkpoint.
    pub fn state(&self) -> (f64, u32) {
        (self.scale, self.growth_tracker)
    }

    /// Restores what [`GradScaler::state`] returned. Ignored when disabled
    /// (the scale stays 1).
    pub fn restore(&mut self, scale: f64, tracker: u32) {
        if self.enabled {
            self.scale = scale;
            self.growth_tracker = tracker;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn param_with_grad(name: &str, grad: &[f32]) -> (String, Tensor) {
        let p = Tensor::zeros([grad.len() as i64], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        (&p * Tensor::from_slice(grad)).sum(Kind::Float).backward();
        (name.to_string(), p)
    }

    fn grad_values(p: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(p.grad()).expect("f32 grad")
    }

    #[test]
    fn scale_multiplies_the_loss_by_65536_at_first() {
        let s = GradScaler::new(true);
        let scaled = s.scale(&Tensor::from(0.5f32));
        assert_eq!(scaled.double_value(&[]), 32768.0);
        assert_eq!(s.state(), (65536.0, 0));
    }

    #[test]
    fn unscale_divides_grads_and_reports_finite() {
        let mut s = GradScaler::new(true);
        let params = vec![param_with_grad("a", &[65536.0, -131072.0]), param_with_grad("head.b", &[32768.0])];
        assert!(s.unscale(&params));
        assert_eq!(grad_values(&params[0].1), vec![1.0, -2.0]);
        assert_eq!(grad_values(&params[1].1), vec![0.5]);
    }

    #[test]
    fn skips_on_inf_or_nan_and_halves_the_scale() {
        let mut s = GradScaler::new(true);
        let params = vec![param_with_grad("a", &[1.0, f32::INFINITY]), param_with_grad("b", &[1.0])];
        assert!(!s.unscale(&params));
        s.update(true);
        assert_eq!(s.state(), (32768.0, 0));
        let nan = vec![param_with_grad("a", &[f32::NAN])];
        assert!(!s.unscale(&nan));
    }

    #[test]
    fn grows_after_the_growth_interval_of_finite_steps() {
        let mut s = GradScaler::new(true);
        s.update(false);
        s.update(true);
        assert_eq!(s.state(), (32768.0, 0), "an overflow resets the count");
        for _ in 0..1999 {
            s.update(false);
        }
        assert_eq!(s.state(), (32768.0, 1999));
        s.update(false);
        assert_eq!(s.state(), (65536.0, 0));
    }

    #[test]
    fn disabled_scaler_never_scales_nor_skips() {
        let mut s = GradScaler::new(false);
        let params = vec![param_with_grad("a", &[f32::INFINITY, 3.0])];
        assert_eq!(s.scale(&Tensor::from(0.5f32)).double_value(&[]), 0.5);
        assert!(s.unscale(&params));
        assert_eq!(grad_values(&params[0].1)[1], 3.0);
        s.update(true);
        assert_eq!(s.state(), (1.0, 0));
    }

    #[test]
    fn restore_brings_back_a_saved_state() {
        let mut s = GradScaler::new(true);
        s.restore(1024.0, 17);
        assert_eq!(s.state(), (1024.0, 17));
        s.update(false);
        assert_eq!(s.state(), (1024.0, 18));
    }

    #[test]
    fn params_without_grads_are_ignored() {
        let mut s = GradScaler::new(true);
        let bare = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        assert!(s.unscale(&[("x".to_string(), bare)]));
    }
}
