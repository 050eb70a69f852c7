//! Learning-rate schedule: linear warm-up, then cosine decay to `min_lr_ratio · lr`.
//!
//! A pure function of the step, so a resumed run needs no schedule state beyond the step itself.

use textrec_contract::config::OptimizerConfig;

/// Learning rate for the update that follows `completed` finished steps (0-based).
pub fn lr_at(completed: u64, max_steps: u64, cfg: &OptimizerConfig) -> f64 {
    let peak = cfg.lr;
    let floor = peak * cfg.min_lr_ratio;
    if completed < cfg.warmup_steps {
        return peak * (completed + 1) as f64 / cfg.warmup_steps as f64;
    }
    let decay_steps = max_steps.saturating_sub(cfg.warmup_steps).max(1);
    let progress = ((completed - cfg.warmup_steps) as f64 / decay_steps as f64).min(1.0);
    floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_the_floor() {
        let cfg = OptimizerConfig {
            lr: 1.0,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        assert!((lr_at(0, 110, &cfg) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 110, &cfg) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 110, &cfg) - 1.0).abs() < 1e-12);
        assert!((lr_at(60, 110, &cfg) - 0.55).abs() < 1e-12);
        assert!((lr_at(110, 110, &cfg) - 0.1).abs() < 1e-12);
        assert!((lr_at(500, 110, &cfg) - 0.1).abs() < 1e-12);
        let mut prev = f64::MAX;
        for s in 10..110 {
            let lr = lr_at(s, 110, &cfg);
            assert!(lr <= prev);
            prev = lr;
        }
    }

    #[test]
    fn no_warmup_starts_at_the_peak() {
        let cfg = OptimizerConfig {
            lr: 0.5,
            warmup_steps: 0,
            ..Default::default()
        };
        assert!((lr_at(0, 100, &cfg) - 0.5).abs() < 1e-12);
    }
}
