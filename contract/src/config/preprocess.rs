//! `preprocess`: how an image becomes the network's input.

use crate::exit::ConfigError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Smallest and largest horizontal stretch factor a line is read at: beyond them it is no
/// longer legible.
pub const READING_WIDTH_RANGE: (f64, f64) = (0.25, 4.0);

/// How an image becomes the network's input. Stored in the manifest so that serving uses
/// exactly what training used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "snake_case")]
pub struct PreprocessConfig {
    /// Height every line is resized to, keeping its aspect ratio.
    pub height: u32,
    /// Widest input after resizing; wider lines are squeezed to this width.
    pub max_width: u32,
    /// Widths are padded up to a multiple of this (the encoder's horizontal stride).
    pub width_multiple: u32,
    /// Largest accepted source image, in pixels; larger ones are rejected before decoding
    /// (decompression bombs, whole pages sent to a line recognizer).
    pub max_source_pixels: u64,
    /// Horizontal scale of every line after resizing to `height` (1: aspect ratio kept): more
    /// than 1 gives each character more encoder frames.
    #[serde(skip_serializing_if = "is_one")]
    pub stretch: f64,
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

impl PreprocessConfig {
    /// Refuse a height, stretch or width the encoder cannot take.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let (lo, hi) = READING_WIDTH_RANGE;
        if self.height < 8 || !self.height.is_multiple_of(8) {
            return Err(ConfigError::field(
                "preprocess.height",
                "must be a positive multiple of 8",
            ));
        }
        if !(lo..=hi).contains(&self.stretch) {
            return Err(ConfigError::field(
                "preprocess.stretch",
                format!("must be in {lo}..={hi}"),
            ));
        }
        if self.width_multiple == 0 || self.max_width < self.height {
            return Err(ConfigError::field(
                "preprocess.max_width",
                "must be at least the height",
            ));
        }
        Ok(())
    }

    /// The preprocessing a fine-tune of a model trained with `parent` trains with: the
    /// parent's when this config leaves `preprocess` at its defaults (a model must read lines
    /// as it learned them), this config's when it is the parent's. Other preprocessing is a
    /// configuration error that names both.
    pub fn adopt(&self, parent: &PreprocessConfig) -> Result<PreprocessConfig, ConfigError> {
        if self == parent || *self == Self::default() {
            return Ok(parent.clone());
        }
        let show = |p: &PreprocessConfig| serde_json::to_string(p).unwrap_or_default();
        Err(ConfigError::new(format!(
            "preprocess: the config sets {}, but the initFrom model was trained with {}; \
             leave `preprocess` out to take the model's",
            show(self),
            show(parent)
        )))
    }
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            height: 32,
            max_width: 1024,
            width_multiple: 4,
            max_source_pixels: 16_000_000,
            stretch: 1.0,
        }
    }
}
