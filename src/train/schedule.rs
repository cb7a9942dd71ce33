//! Learning-rate schedules (train stage): the factor on a phase's base
//! learning rate at each optimiser step. Reads and writes nothing; a pure
//! function of the phase's [`ScheduleSpec`] and position, so a resumed job
//! gets the same rates without storing any schedule state.

use super::config::ScheduleSpec;

/// Factor on the phase's base learning rate at step `step` (0-based) of
/// epoch `epoch` (0-based, within the phase) when each epoch has
/// `steps_per_epoch` optimiser steps.
///
/// - `Constant`: 1.
/// - `Step`: `factor^(number of milestones <= epoch)` (PyTorch
///   `MultiStepLR` stepped once per epoch).
/// - `Cosine`: with `t = epoch + (step + 1) / steps_per_epoch` (epochs done
///   after this step, at most `phase_epochs`): `t / warmup` while
///   `t < warmup`, then `min + (1 - min) * 0.5 * (1 + cos(pi * (t - warmup)
///   / (phase_epochs - warmup)))`, which ends at `min_factor` on the
///   phase's last step. When the warmup covers the whole phase the factor
///   after it is `min_factor`.
///
/// `steps_per_epoch` of 0 is treated as 1.
pub fn lr_factor(schedule: &ScheduleSpec, phase_epochs: u32, epoch: u32, step: usize, steps_per_epoch: usize) -> f64 {
    match schedule {
        ScheduleSpec::Constant => 1.0,
        ScheduleSpec::Step { milestones, factor } => {
            let passed = milestones.iter().filter(|&&m| m <= epoch).count();
            factor.powi(passed as i32)
        }
        ScheduleSpec::Cosine { warmup_epochs, min_factor } => {
            let steps = steps_per_epoch.max(1) as f64;
            let t = (epoch as f64 + (step as f64 + 1.0) / steps).min(phase_epochs as f64);
            let warmup = warmup_epochs.max(0.0);
            if t < warmup {
                return t / warmup;
            }
            let span = phase_epochs as f64 - warmup;
            if span <= 0.0 {
                return *min_factor;
            }
            let progress = ((t - warmup) / span).clamp(0.0, 1.0);
            min_factor + (1.0 - min_factor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn constant_is_one_everywhere() {
        for epoch in 0..5 {
            close(lr_factor(&ScheduleSpec::Constant, 5, epoch, 3, 10), 1.0);
        }
    }

    #[test]
    fn r1_step_schedule_halves_at_epochs_seven_and_nine() {
        let s = ScheduleSpec::Step { milestones: vec![7, 9], factor: 0.5 };
        let per_epoch: Vec<f64> = (0..12).map(|e| lr_factor(&s, 12, e, 0, 100)).collect();
        assert_eq!(per_epoch, vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.25]);
        // Constant within an epoch.
        close(lr_factor(&s, 12, 8, 99, 100), 0.5);
    }

    #[test]
    fn step_schedule_counts_unsorted_and_repeated_milestones_like_multistep_lr() {
        let s = ScheduleSpec::Step { milestones: vec![4, 2, 4], factor: 0.2 };
        close(lr_factor(&s, 6, 1, 0, 1), 1.0);
        close(lr_factor(&s, 6, 2, 0, 1), 0.2);
        close(lr_factor(&s, 6, 4, 0, 1), 0.2f64.powi(3));
    }

    #[test]
    fn cosine_warmup_ramps_linearly_per_step() {
        let s = ScheduleSpec::Cosine { warmup_epochs: 1.0, min_factor: 0.0 };
        close(lr_factor(&s, 10, 0, 0, 4), 0.25);
        close(lr_factor(&s, 10, 0, 1, 4), 0.5);
        close(lr_factor(&s, 10, 0, 2, 4), 0.75);
        // The last warmup step reaches the base rate (t = warmup: cosine at 0).
        close(lr_factor(&s, 10, 0, 3, 4), 1.0);
    }

    #[test]
    fn cosine_reaches_the_minimum_on_the_last_step_and_the_middle_halfway() {
        let s = ScheduleSpec::Cosine { warmup_epochs: 2.0, min_factor: 0.1 };
        close(lr_factor(&s, 10, 9, 9, 10), 0.1);
        // t = 6: halfway through the 8 cosine epochs.
        close(lr_factor(&s, 10, 5, 9, 10), 0.1 + 0.9 * 0.5);
        // Monotone after the warmup.
        let mut last = f64::INFINITY;
        for e in 2..10 {
            for step in 0..10 {
                let f = lr_factor(&s, 10, e, step, 10);
                assert!(f <= last + 1e-15, "epoch {e} step {step}: {f} > {last}");
                last = f;
            }
        }
    }

    #[test]
    fn cosine_without_warmup_starts_just_below_one() {
        let s = ScheduleSpec::Cosine { warmup_epochs: 0.0, min_factor: 0.0 };
        let first = lr_factor(&s, 4, 0, 0, 100);
        assert!(first < 1.0 && first > 0.999, "{first}");
    }

    #[test]
    fn cosine_with_warmup_as_long_as_the_phase_ends_at_the_minimum() {
        let s = ScheduleSpec::Cosine { warmup_epochs: 2.0, min_factor: 0.3 };
        close(lr_factor(&s, 2, 0, 0, 2), 0.25);
        close(lr_factor(&s, 2, 1, 1, 2), 0.3);
    }
}
