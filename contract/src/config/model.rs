//! `model`: the network's size, by preset or layer by layer.

use crate::exit::ConfigError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A named model size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// For tests: trains in seconds, recognises little.
    Tiny,
    /// The quickstart's: trains on a laptop CPU in minutes.
    Small,
    /// For real training on a GPU.
    Base,
}

/// The architecture as written in a config: a preset plus optional per-field overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default, rename_all = "snake_case")]
pub struct ModelSpec {
    /// Base sizes; the fields below override single values.
    pub preset: PresetOrDefault,
    /// Channels of each ResNet stage.
    pub encoder_channels: Option<Vec<i64>>,
    /// Residual basic blocks per ResNet stage.
    pub encoder_blocks: Option<Vec<i64>>,
    /// Transformer width.
    pub d_model: Option<i64>,
    /// Attention heads (must divide `d_model`).
    pub heads: Option<i64>,
    /// Transformer decoder layers.
    pub decoder_layers: Option<i64>,
    /// Feed-forward width of each decoder layer.
    pub ff_dim: Option<i64>,
    /// Dropout probability during training.
    pub dropout: Option<f64>,
    /// Longest text (in characters) the decoder produces.
    pub max_text_len: Option<i64>,
    /// Weight of the auxiliary CTC loss on the encoder (0 disables it). Joint CTC/attention
    /// training makes the decoder's cross-attention find the alignment much sooner.
    pub ctc_weight: Option<f64>,
    /// Self-attention layers over the line's frames before the CTC head (0: none).
    pub ctc_context_layers: Option<i64>,
    /// Start from this model's weights instead of random ones (fine-tuning): a model folder
    /// (URL or path) or `builtin:small`, the pretrained model built into the worker. Its
    /// architecture becomes this config's (see [`ModelSpec::adopt`]), and so does its
    /// preprocessing (see [`PreprocessConfig::adopt`](super::PreprocessConfig::adopt)); its
    /// charset must be the one this config trains with. A trial that resumes from its own
    /// checkpoint takes the weights from there, but still reads this model's manifest (its
    /// architecture and version must not have changed).
    pub init_from: Option<String>,
    /// The expected version of `init_from` (sha256 of its `manifest.json`): another model at
    /// that location is a configuration error, so a moved or overwritten parent is noticed.
    pub init_sha256: Option<String>,
}

/// [`Preset`] with `small` as its default (serde's `default` needs a `Default` type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct PresetOrDefault(pub Preset);

impl Default for PresetOrDefault {
    fn default() -> Self {
        Self(Preset::Small)
    }
}

/// A fully resolved architecture, as recorded in checkpoints and model manifests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Architecture {
    /// Channels of each ResNet stage.
    pub encoder_channels: Vec<i64>,
    /// Residual basic blocks per ResNet stage.
    pub encoder_blocks: Vec<i64>,
    /// Transformer width.
    pub d_model: i64,
    /// Attention heads.
    pub heads: i64,
    /// Transformer decoder layers.
    pub decoder_layers: i64,
    /// Feed-forward width.
    pub ff_dim: i64,
    /// Dropout probability during training.
    pub dropout: f64,
    /// Longest text the decoder produces.
    pub max_text_len: i64,
    /// Weight of the auxiliary CTC loss (0 = no CTC head).
    pub ctc_weight: f64,
    /// Self-attention layers over the frames before the CTC head (absent in models written
    /// before it existed: 0).
    #[serde(default)]
    pub ctc_context_layers: i64,
}

impl Preset {
    /// The sizes of this preset.
    pub fn architecture(self) -> Architecture {
        match self {
            Preset::Tiny => Architecture {
                encoder_channels: vec![8, 16, 32],
                encoder_blocks: vec![1, 1, 1],
                d_model: 32,
                heads: 2,
                decoder_layers: 1,
                ff_dim: 64,
                dropout: 0.0,
                max_text_len: 48,
                ctc_weight: 0.3,
                ctc_context_layers: 0,
            },
            Preset::Small => Architecture {
                encoder_channels: vec![32, 64, 128],
                encoder_blocks: vec![1, 2, 2],
                d_model: 128,
                heads: 4,
                decoder_layers: 2,
                ff_dim: 256,
                dropout: 0.1,
                max_text_len: 128,
                ctc_weight: 0.6,
                ctc_context_layers: 1,
            },
            Preset::Base => Architecture {
                encoder_channels: vec![64, 128, 256, 256],
                encoder_blocks: vec![2, 2, 2, 2],
                d_model: 256,
                heads: 8,
                decoder_layers: 4,
                ff_dim: 1024,
                dropout: 0.1,
                max_text_len: 160,
                ctc_weight: 0.5,
                ctc_context_layers: 2,
            },
        }
    }
}

impl ModelSpec {
    /// The architecture of a fine-tune of a model of architecture `parent`: the parent's, since
    /// the weights only fit it. Only `dropout` may differ (it shapes no tensor). A field this
    /// spec sets to another value, or a non-default preset of another size, contradicts the
    /// parent: the error names it.
    pub fn adopt(&self, parent: &Architecture) -> Result<Architecture, ConfigError> {
        let clash = |field: &str, ours: String, theirs: String| {
            Err(ConfigError::new(format!(
                "model.{field}: the config sets {ours}, but the initFrom model has another \
                 architecture ({field} {theirs}); leave model.{field} out to take the \
                 model's"
            )))
        };
        macro_rules! check {
            ($($f:ident),*) => { $(
                if let Some(v) = &self.$f {
                    if *v != parent.$f {
                        return clash(stringify!($f), format!("{v:?}"), format!("{:?}", parent.$f));
                    }
                }
            )* };
        }
        check!(
            encoder_channels,
            encoder_blocks,
            d_model,
            heads,
            decoder_layers,
            ff_dim,
            max_text_len,
            ctc_weight,
            ctc_context_layers
        );
        let mut a = parent.clone();
        if let Some(d) = self.dropout {
            a.dropout = d;
        }
        // `small` is the default, so it says nothing about the writer's intent; another preset
        // was chosen on purpose and must describe the parent (fields set above aside).
        if self.preset.0 != Preset::Small {
            let mut preset = self.resolve()?;
            preset.dropout = a.dropout;
            if preset != a {
                return clash(
                    "preset",
                    format!("{:?}", self.preset.0).to_lowercase(),
                    serde_json::to_string(parent).unwrap_or_default(),
                );
            }
        }
        a.validate()?;
        Ok(a)
    }

    /// The preset's sizes with this spec's overrides applied, checked for consistency.
    pub fn resolve(&self) -> Result<Architecture, ConfigError> {
        let mut a = self.preset.0.architecture();
        if let Some(v) = &self.encoder_channels {
            a.encoder_channels = v.clone();
        }
        if let Some(v) = &self.encoder_blocks {
            a.encoder_blocks = v.clone();
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { a.$f = v; } )* };
        }
        set!(
            d_model,
            heads,
            decoder_layers,
            ff_dim,
            dropout,
            max_text_len,
            ctc_weight,
            ctc_context_layers
        );
        a.validate()?;
        Ok(a)
    }
}

impl Architecture {
    /// Reject sizes the network cannot be built with, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, why: &str| Err(ConfigError::field(&format!("model.{field}"), why));
        if self.encoder_channels.is_empty() || self.encoder_channels.iter().any(|&c| c <= 0) {
            return bad(
                "encoder_channels",
                "must be a non-empty list of positive integers",
            );
        }
        if self.encoder_blocks.len() != self.encoder_channels.len() {
            return bad(
                "encoder_blocks",
                &format!(
                    "must have one entry per stage ({} stages in encoder_channels, got {})",
                    self.encoder_channels.len(),
                    self.encoder_blocks.len()
                ),
            );
        }
        if self.encoder_blocks.iter().any(|&b| b <= 0) {
            return bad("encoder_blocks", "every stage needs at least one block");
        }
        if self.d_model <= 0 || self.heads <= 0 || self.d_model % self.heads != 0 {
            return bad(
                "heads",
                &format!(
                    "must be positive and divide d_model ({} / {})",
                    self.d_model, self.heads
                ),
            );
        }
        if self.decoder_layers <= 0 {
            return bad("decoder_layers", "must be at least 1");
        }
        if self.ff_dim <= 0 {
            return bad("ff_dim", "must be positive");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", "must be in [0, 1)");
        }
        if self.max_text_len < 1 {
            return bad("max_text_len", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.ctc_weight) {
            return bad("ctc_weight", "must be in [0, 1]");
        }
        if self.ctc_context_layers < 0 {
            return bad("ctc_context_layers", "must be 0 or more");
        }
        Ok(())
    }
}
