//! The trial configuration: what `textrec-worker train --config FILE` reads.
//!
//! Every section has defaults, so a config file only states what differs. Unknown fields are
//! rejected (a typo must not silently train the wrong model). `--set a.b.c=value` overrides one
//! field by its dotted path; the operator passes a trial's hyperparameters that way.

use std::path::Path;

use anyhow::{Context, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::exit::ConfigError;

mod data;
mod language_model;
mod model;
mod optimizer;
mod overrides;
mod preprocess;
#[cfg(test)]
mod tests;

pub use data::{
    DataConfig, DatasetKind, DatasetSpec, SyntheticConfig, TextSplit, TrainData,
    MAX_LOADER_THREADS, MAX_PREFETCH_BATCHES, PRINTED_MEAN_CHARS, UNSEEN_FONTS_SET,
    UNSEEN_VALIDATION_FONTS,
};
pub use language_model::{LanguageModelConfig, MAX_LM_WEIGHT_PAIRS};
pub use model::{Architecture, ModelSpec, Preset, PresetOrDefault};
pub use optimizer::OptimizerConfig;
pub use overrides::{apply_override, flatten_overrides};
use overrides::{merge_tree, reject_non_finite};
pub use preprocess::{PreprocessConfig, READING_WIDTH_RANGE};

/// Largest `batch_size`: the TrainingRun schema's bound on `training.batchSize`. Beyond it a
/// batch's allocation alone would take the machine down before the first step could log.
pub const MAX_BATCH_SIZE: usize = 4096;

/// Everything one training trial needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "snake_case")]
pub struct TrainConfig {
    /// Seed of every random stream (weights init, data order, augmentation, dropout).
    pub seed: u64,
    /// Where to train.
    pub device: Device,
    /// Intra-op CPU threads for libtorch; 0 means libtorch's default (all cores).
    pub threads: usize,
    /// Numeric precision of the forward pass: on CUDA any of them; on the CPU `bf16`, or fp32.
    pub precision: Precision,
    /// Drop the encoder's highest-resolution activations (the stem and first stage) after
    /// the forward pass and compute them again for the backward pass: less memory for a
    /// little more compute, with bit-identical results.
    pub recompute_activations: bool,
    /// Network architecture.
    pub model: ModelSpec,
    /// Image preprocessing, shared by training and serving through the manifest.
    pub preprocess: PreprocessConfig,
    /// Training and validation data.
    pub data: DataConfig,
    /// Optimizer and learning-rate schedule.
    pub optimizer: OptimizerConfig,
    /// Lines per optimizer step.
    pub batch_size: usize,
    /// Total optimizer steps.
    pub max_steps: u64,
    /// Evaluate on the validation set every this many steps (and at the end).
    pub eval_interval: u64,
    /// Append a training record to `metrics.jsonl` every this many steps.
    pub log_interval: u64,
    /// When and how many checkpoints to keep.
    pub checkpoint: CheckpointConfig,
    /// The character language model written with the final model (for `ctc-lm` decoding).
    pub language_model: LanguageModelConfig,
    /// Horizontal stretch factors a finished trial reads each of its validation sets at, with
    /// the decoding it chose; the factor with the lowest mean CER relative to each set's best
    /// becomes the model's reading width (the manifest's `reading`), a tie going to the earlier
    /// factor (every set, the objective's and each of `data.extra_validation`, has an equal
    /// say). A line drawn wider gives the encoder more frames per character, and a network
    /// often reads best a little wider than preprocessing draws it. `[1]` reads lines as they
    /// are and compares nothing.
    pub reading_widths: Vec<f64>,
}

/// Default [`TrainConfig::reading_widths`]: as drawn, and a tenth and a quarter wider (wider
/// still read worse on every set measured, and cost more).
pub const DEFAULT_READING_WIDTHS: [f64; 3] = [1.0, 1.1, 1.25];

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            device: Device::Auto,
            threads: 0,
            precision: Precision::Auto,
            recompute_activations: false,
            model: ModelSpec::default(),
            preprocess: PreprocessConfig::default(),
            data: DataConfig::default(),
            optimizer: OptimizerConfig::default(),
            batch_size: 16,
            max_steps: 2000,
            eval_interval: 250,
            log_interval: 10,
            checkpoint: CheckpointConfig::default(),
            language_model: LanguageModelConfig::default(),
            reading_widths: DEFAULT_READING_WIDTHS.to_vec(),
        }
    }
}

/// The device to train or serve on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when available, else CPU.
    Auto,
    /// Always the CPU.
    Cpu,
    /// The first CUDA device; an error when there is none.
    Cuda,
}

/// Numeric precision for the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 everywhere for now: on an H200 the `small` network at batch 16 trained 3-5x
    /// faster in fp32 than under autocast, and the `base` network at batch 64 3.4-5x (see
    /// BENCHMARKS.md, "GPU").
    Auto,
    /// Full fp32.
    Fp32,
    /// bf16 autocast (fp32's exponent range, so no loss scaling): on CUDA it needs an Ampere
    /// or newer GPU to be fast; on the CPU one with AVX512-BF16 (AMD Zen 4, Intel Sapphire
    /// Rapids and later), where the `small` network trains about 1.6x faster than in fp32.
    /// Other CPUs emulate bf16, slower than fp32.
    Bf16,
    /// fp16 autocast on CUDA, with dynamic loss scaling (fp32 on the CPU, which has no fast
    /// fp16 arithmetic).
    Fp16,
}

/// When checkpoints are written and how many are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "snake_case")]
pub struct CheckpointConfig {
    /// Write a checkpoint every this many steps (0: only by time and at exit).
    pub every_steps: u64,
    /// Write a checkpoint when this many seconds passed since the last (0: only by steps).
    pub every_seconds: u64,
    /// Keep the newest this many complete checkpoints (and, until progress names a newer one,
    /// the one `progress.json` names).
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every_steps: 500,
            every_seconds: 300,
            keep: 3,
        }
    }
}

impl TrainConfig {
    /// Parse a config from YAML or JSON text (JSON is YAML) and apply `key=value` overrides.
    pub fn parse(text: &str, overrides: &[String]) -> Result<Self> {
        let mut tree: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            reject_non_finite(text, "")?;
            serde_yaml::from_str(text)
                .map_err(|e| ConfigError::new(format!("invalid YAML: {e}")))?
        };
        for o in overrides {
            apply_override(&mut tree, o)?;
        }
        // Merge over the serialized defaults rather than relying on serde's per-struct defaults:
        // a partial section (say `data.validation: {samples: 64}`) must keep the defaults of the
        // section it sits in, which for nested sections differ from the struct's own defaults.
        let mut merged = Self::default().to_json();
        merge_tree(&mut merged, tree);
        let cfg: TrainConfig = serde_path_to_error::deserialize(merged).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::new(format!("config field `{path}`: {}", e.into_inner()))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read a config file (YAML or JSON) and apply overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("cannot read config {}: {e}", path.display())))?;
        Self::parse(&text, overrides).with_context(|| format!("in config {}", path.display()))
    }

    /// Check values that serde's types cannot express; the first error names its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.model.resolve()?;
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(ConfigError::field(
                "batch_size",
                format!("must be in 1..={MAX_BATCH_SIZE} (got {})", self.batch_size),
            ));
        }
        for (field, value) in [
            ("max_steps", self.max_steps),
            ("eval_interval", self.eval_interval),
            ("log_interval", self.log_interval),
            ("checkpoint.keep", self.checkpoint.keep as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::field(field, "must be at least 1"));
            }
        }
        self.language_model.validate()?;
        validate_reading_widths(&self.reading_widths)?;
        self.optimizer.validate()?;
        self.preprocess.validate()?;
        self.data.validate()
    }

    /// The config as pretty JSON (recorded in checkpoints and manifests).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("config serializes")
    }
}

fn validate_reading_widths(widths: &[f64]) -> Result<(), ConfigError> {
    let (lo, hi) = READING_WIDTH_RANGE;
    if widths.is_empty() {
        return Err(ConfigError::field(
            "reading_widths",
            "needs at least one factor (`[1]`: as drawn)",
        ));
    }
    for (i, f) in widths.iter().enumerate() {
        if !(lo..=hi).contains(f) {
            return Err(ConfigError::field(
                "reading_widths",
                format!("factor {f} is outside {lo}..={hi}"),
            ));
        }
        if widths[..i].contains(f) {
            return Err(ConfigError::field(
                "reading_widths",
                format!("factor {f} is given twice"),
            ));
        }
    }
    Ok(())
}
