//! `optimizer`: AdamW and its learning-rate schedule.

use crate::exit::ConfigError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// AdamW with linear warm-up and cosine decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "snake_case")]
pub struct OptimizerConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Adam beta1.
    pub beta1: f64,
    /// Adam beta2.
    pub beta2: f64,
    /// Adam epsilon.
    pub eps: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of `lr` at the end of the cosine decay.
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this (0 disables clipping).
    pub grad_clip: f64,
    /// Label smoothing of the decoder's cross-entropy.
    pub label_smoothing: f64,
    /// Decay of an exponential moving average of the weights (0: off). When set, evaluations,
    /// the best weights and the finished model use the average instead of the weights the
    /// optimizer is updating, whose path it does not change: `0.999` averages over about the
    /// last thousand steps (fewer in the first ones: the decay used at step `n` is at most
    /// `(1 + n) / (10 + n)`). The average is checkpointed, so a resumed trial continues it
    /// exactly. Left out of a written config when 0, so the configs (and manifests) of trials
    /// without it read as before it existed.
    #[serde(skip_serializing_if = "is_zero")]
    pub ema_decay: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            warmup_steps: 200,
            min_lr_ratio: 0.05,
            grad_clip: 1.0,
            label_smoothing: 0.0,
            ema_decay: 0.0,
        }
    }
}

impl OptimizerConfig {
    /// Refuse a learning rate, floor, smoothing or decay outside its range.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.lr.is_finite() || self.lr <= 0.0 {
            return Err(ConfigError::field("optimizer.lr", "must be positive"));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(ConfigError::field(
                "optimizer.min_lr_ratio",
                "must be in [0, 1]",
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(ConfigError::field(
                "optimizer.label_smoothing",
                "must be in [0, 1)",
            ));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(ConfigError::field(
                "optimizer.ema_decay",
                "must be in [0, 1) (0 turns the average off)",
            ));
        }
        Ok(())
    }
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}
