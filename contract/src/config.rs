//! The trial configuration: what `textrec-worker train --config FILE` reads.
//!
//! Every section has defaults, so a config file only states what differs. Unknown fields are
//! rejected (a typo must not silently train the wrong model). `--set a.b.c=value` overrides one
//! field by its dotted path; the operator passes a trial's hyperparameters that way.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::exit::ConfigError;

/// Largest `batch_size`: the TrainingRun schema's bound on `training.batchSize`. Beyond it a
/// batch's allocation alone would take the machine down before the first step could log.
pub const MAX_BATCH_SIZE: usize = 4096;
/// Largest `data.loader_threads`.
pub const MAX_LOADER_THREADS: usize = 64;
/// Largest `data.prefetch_batches`.
pub const MAX_PREFETCH_BATCHES: usize = 256;

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
    /// Numeric precision on CUDA (CPU always trains in fp32).
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

/// Smallest and largest horizontal stretch factor a line is read at: beyond them it is no
/// longer legible.
pub const READING_WIDTH_RANGE: (f64, f64) = (0.25, 4.0);

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

/// Numeric precision for the forward pass on CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 everywhere for now: on an H200 the `small` network trained 5x faster in fp32
    /// than under autocast (see BENCHMARKS.md, "GPU").
    Auto,
    /// Full fp32.
    Fp32,
    /// bf16 autocast on CUDA (fp32's exponent range, so no loss scaling); needs an Ampere
    /// or newer GPU to be fast.
    Bf16,
    /// fp16 autocast on CUDA, with dynamic loss scaling.
    Fp16,
}

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
    /// preprocessing (see [`PreprocessConfig::adopt`]); its charset must be the one this config
    /// trains with. A trial that resumes from its own
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
        let bad = |field: &str, why: &str| Err(ConfigError::new(format!("model.{field}: {why}")));
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

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

impl PreprocessConfig {
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

/// Font families of the default `unseen-fonts` validation set: installed fonts outside the
/// training set (a serif, a handwriting script, a sketched display face, a caps-only face),
/// from the Debian packages `fonts-freefont-ttf`, `fonts-havana`, `fonts-cabinsketch` and
/// `fonts-bebas-neue`. Training on them is refused, so this set measures how the model reads
/// type it has never seen.
pub const UNSEEN_VALIDATION_FONTS: &[&str] = &["FreeSerif", "Havana", "Cabin Sketch", "Bebas Neue"];

/// Name of the default extra validation set in unseen fonts.
pub const UNSEEN_FONTS_SET: &str = "unseen-fonts";

/// Mean length of a printed or handwritten text line, in characters: what the default
/// training and validation sets are drawn around.
pub const PRINTED_MEAN_CHARS: usize = 45;

/// Training and validation data, and how it is loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "snake_case")]
pub struct DataConfig {
    /// The training data: one data set, or a list of sources each drawn with its share of
    /// `weight` (see [`TrainData`]).
    pub train: TrainData,
    /// The validation set: the objective (`cer`, `wer`) is measured on it and the best model
    /// is chosen by it.
    pub validation: DatasetSpec,
    /// More validation sets, by name, scored at every evaluation beside the objective (in
    /// `metrics.jsonl` and progress) but not used to choose the model. The default holds
    /// `unseen-fonts`: held-out prose in fonts the model never trains on. `null` removes one.
    pub extra_validation: BTreeMap<String, Option<DatasetSpec>>,
    /// Training batches are drawn this many at a time, sorted by line width and cut into
    /// batches of similar widths (less padding: faster steps, less memory). 1 turns it off.
    pub bucket_batches: usize,
    /// Background threads that load and augment samples.
    pub loader_threads: usize,
    /// Batches prepared ahead of the training loop.
    pub prefetch_batches: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        // Lines as users meet them: held-out prose at printed-line lengths, lightly degraded.
        let realistic = |fonts: Vec<String>| DatasetSpec {
            samples: Some(256),
            synthetic: SyntheticConfig {
                fonts,
                split: TextSplit::Descriptions,
                augment: 0.3,
                min_chars: 8,
                max_chars: 100,
                mean_chars: Some(PRINTED_MEAN_CHARS),
                generated_fraction: 0.1,
                ..SyntheticConfig::default()
            },
            ..DatasetSpec::default()
        };
        let unseen = UNSEEN_VALIDATION_FONTS
            .iter()
            .map(|f| f.to_string())
            .collect();
        Self {
            train: TrainData::default(),
            validation: realistic(Vec::new()),
            extra_validation: [(UNSEEN_FONTS_SET.to_string(), Some(realistic(unseen)))].into(),
            bucket_batches: 8,
            loader_threads: 1,
            prefetch_batches: 4,
        }
    }
}

/// The training data: one data set (`{kind: synthetic}`), or a mix of sources
/// (`[{kind: synthetic, weight: 0.7}, {kind: tesstrain, path: s3://…, weight: 0.3}]`).
///
/// A mix draws each source in proportion to its `weight` (weights are normalised; each must
/// be positive and finite), in an order fixed by the seed and seekable by position, so a
/// resumed trial reads exactly what an uninterrupted one would have.
// One per config, built once: boxing the single form would buy nothing and cost every caller.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum TrainData {
    /// One data set (the form configs had before mixes existed).
    One(DatasetSpec),
    /// Weighted sources, at least one.
    Mix(Vec<DatasetSpec>),
}

impl Default for TrainData {
    fn default() -> Self {
        Self::One(DatasetSpec::default())
    }
}

impl From<DatasetSpec> for TrainData {
    fn from(spec: DatasetSpec) -> Self {
        Self::One(spec)
    }
}

impl TrainData {
    /// The sources, in order (one for the single-set form).
    pub fn sources(&self) -> &[DatasetSpec] {
        match self {
            Self::One(d) => std::slice::from_ref(d),
            Self::Mix(v) => v,
        }
    }

    /// Mutable access to the sources.
    pub fn sources_mut(&mut self) -> &mut [DatasetSpec] {
        match self {
            Self::One(d) => std::slice::from_mut(d),
            Self::Mix(v) => v,
        }
    }

    /// Whether this is the list form (even a list of one).
    pub fn is_mix(&self) -> bool {
        matches!(self, Self::Mix(_))
    }

    /// The config path of source `i`: `data.train` for the single form, `data.train[i]` in a
    /// list, so that errors name the field the user wrote.
    pub fn field(&self, i: usize) -> String {
        match self {
            Self::One(_) => "data.train".to_string(),
            Self::Mix(_) => format!("data.train[{i}]"),
        }
    }

    /// The normalised weight of each source (summing to 1); unset weights count as 1.
    pub fn normalized_weights(&self) -> Vec<f64> {
        let raw: Vec<f64> = self
            .sources()
            .iter()
            .map(|d| d.weight.unwrap_or(1.0))
            .collect();
        let total: f64 = raw.iter().sum();
        raw.iter().map(|w| w / total).collect()
    }
}

// By hand rather than `untagged`: an untagged enum reports a typo inside either form as "data
// did not match any variant", hiding the field; dispatching on the shape keeps serde's message
// and `serde_path_to_error`'s path (`data.train[1].wieght`).
impl<'de> Deserialize<'de> for TrainData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TrainData;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a data set (a map) or a list of data sets")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, a: A) -> Result<TrainData, A::Error> {
                DatasetSpec::deserialize(serde::de::value::MapAccessDeserializer::new(a))
                    .map(TrainData::One)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, a: A) -> Result<TrainData, A::Error> {
                Vec::<DatasetSpec>::deserialize(serde::de::value::SeqAccessDeserializer::new(a))
                    .map(TrainData::Mix)
            }
        }
        d.deserialize_any(V)
    }
}

/// Which kind of data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// Lines rendered on the fly from the corpus with the training fonts.
    Synthetic,
    /// A folder of `NAME.png|tif|jpg` + `NAME.gt.txt` pairs.
    Tesstrain,
    /// The IAM handwriting database in its original layout.
    Iam,
}

/// One data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "snake_case")]
pub struct DatasetSpec {
    /// Which kind of data set.
    pub kind: DatasetKind,
    /// Folder of a `tesstrain` set, or root of the IAM database: a plain path or a storage URL
    /// (`file://`, `s3://`, `gs://`, `az://`). A URL's files are downloaded once into the
    /// content-addressed data cache (`$TEXTREC_DATA_CACHE`) and checked.
    pub path: Option<String>,
    /// IAM only: a file listing the line ids (`a01-000u-00`) or form ids (`a01-000u`) of this
    /// split, one per line (e.g. `trainset.txt`); without it every line is used. A path or a
    /// storage URL.
    pub split_file: Option<String>,
    /// Number of samples: the size of a synthetic validation set; for training sets, a cap.
    pub samples: Option<u64>,
    /// IAM only: also use lines marked `err` in `ascii/lines.txt` (a word segmentation error
    /// inside the line; the line image and its transcription are still usable).
    pub include_err: bool,
    /// Settings of the synthetic renderer (used when `kind` is `synthetic`); for a file set
    /// with `augment: true`, `synthetic.augment` is the distortion strength.
    pub synthetic: SyntheticConfig,
    /// Training sources in a list only: this source's share of the mix (positive; weights are
    /// normalised). Unset: 1.
    pub weight: Option<f64>,
    /// Training only: distort lines the way synthetic lines are. Unset: synthetic lines are
    /// augmented (strength `synthetic.augment`), file lines are used as stored; `false` turns
    /// a synthetic source's augmentation off, `true` turns it on for a tesstrain or IAM source.
    pub augment: Option<bool>,
}

impl Default for DatasetSpec {
    fn default() -> Self {
        Self {
            kind: DatasetKind::Synthetic,
            path: None,
            split_file: None,
            samples: None,
            include_err: true,
            synthetic: SyntheticConfig::default(),
            weight: None,
            augment: None,
        }
    }
}

/// Which text a synthetic set draws from. Train and validation split the corpus by a hash of
/// each corpus line, so validation text never appears in training; `descriptions` is prose
/// the corpus does not contain at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TextSplit {
    /// Training text.
    Train,
    /// Held-out corpus text (same sources and style as the training text).
    Validation,
    /// Debian package descriptions: prose from another source than the training corpus, for
    /// validation that tells how the model reads text of a new kind. The descriptions of 757
    /// packages ship with textrec, so the split is the same everywhere; `descriptions_file`
    /// can name a dpkg status file to read instead.
    Descriptions,
}

/// Settings of the synthetic line renderer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "snake_case")]
pub struct SyntheticConfig {
    /// Font files or family names to render with; empty means the training font set
    /// (the font files of the Debian packages that `scripts/setup.sh` installs as training fonts).
    pub fonts: Vec<String>,
    /// Folders searched for fonts.
    pub font_dirs: Vec<String>,
    /// Folder of `fortune` files (Debian package `fortunes`).
    pub fortunes_dir: String,
    /// Word list (Debian package `wamerican`).
    pub words_file: String,
    /// A dpkg status file whose package descriptions the `descriptions` split reads; empty
    /// (the default) for the descriptions shipped with textrec, which are the same on every
    /// machine and in every image (a status file lists whatever is installed where it runs).
    pub descriptions_file: String,
    /// Share of lines that are generated numbers, dates, amounts and names.
    pub generated_fraction: f64,
    /// Shortest line, in characters.
    pub min_chars: usize,
    /// Longest line, in characters.
    pub max_chars: usize,
    /// Mean line length, in characters: lengths are drawn around it the way printed lines
    /// spread (most near the mean, a tail of short last lines of paragraphs), clipped to
    /// `min_chars..=max_chars` (a mean outside that range is clipped too). Unset: lengths are
    /// uniform in that range.
    pub mean_chars: Option<usize>,
    /// Augmentation strength from 0 (clean renders) to 1 (heavy distortion).
    pub augment: f64,
    /// How far each glyph's outline is reshaped on its own (width, slant, tilt, bent
    /// strokes), from 0 (off: the fonts' own letterforms) to 1, so that lines are drawn in
    /// letterforms no font file holds. Off by default, on at 0.6 in the pretrained model's
    /// recipe: trained from scratch with it, that model reads 300 lines in fonts it never saw
    /// at CER 0.064 against 0.082 without, the training fonts as well (BENCHMARKS.md, "Glyph
    /// morphing"). It pays from scratch, not in a fine-tune of a model trained without it
    /// (there a script face read better and the training fonts worse).
    pub glyph_morph: f64,
    /// Which text split to draw from.
    pub split: TextSplit,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            fonts: Vec::new(),
            font_dirs: vec!["/usr/share/fonts".into()],
            fortunes_dir: "/usr/share/games/fortunes".into(),
            words_file: "/usr/share/dict/american-english".into(),
            descriptions_file: String::new(),
            generated_fraction: 0.25,
            min_chars: 1,
            max_chars: 100,
            mean_chars: Some(PRINTED_MEAN_CHARS),
            augment: 0.5,
            glyph_morph: 0.0,
            split: TextSplit::Train,
        }
    }
}

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

/// The character language model counted when training ends, over the training split of the
/// synthetic training data's corpus, and stored in the model folder. Decoding then also
/// measures `ctc-lm` (a CTC beam search scored with it) and the model reads with it when it
/// scores best on the validation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "snake_case")]
pub struct LanguageModelConfig {
    /// Longest n-gram, in characters (2 to 9); 0: no language model. Off by default: counting
    /// takes seconds and adds a few MB to the model; the recipe and the quickstart turn it on.
    pub order: usize,
    /// N-grams of order three and up seen fewer times are dropped (a smaller file).
    pub min_count: u32,
    /// Weight of the language model's log-probability in the search.
    pub alpha: f64,
    /// Score added per character read.
    pub beta: f64,
    /// Readings the search keeps after each frame.
    pub beam: usize,
    /// Further weights a finished trial tries when it reads with `ctc-lm`: every pair of
    /// `alphas` × `betas` (an empty list stands for `alpha` or `beta` alone), read on every
    /// validation set at the chosen reading width. The pair with the lowest mean CER relative
    /// to each set's best goes into the model's manifest, a tie going to `alpha` and `beta`
    /// themselves, then to the earlier pair. The best weights depend on the network (a model
    /// unsure of a font leans more on the language model), so a recipe searches them rather
    /// than fixing them. In `spec.hyperparameters` a list is searched, so a fixed list is
    /// written `[[0.35, 0.5]]`.
    pub alphas: Vec<f64>,
    /// See `alphas`.
    pub betas: Vec<f64>,
    /// Confidence thresholds (0..1] a finished trial that reads with `ctc-lm` tries for
    /// searching unsure lines again: a line whose reading's confidence is below the threshold
    /// is searched again with the language model weighed by one of `unsure_alphas` (and the
    /// chosen beta), and that reading replaces the first. Every pair of `unsure_below` ×
    /// `unsure_alphas`, and reading every line once, are read on every validation set at the
    /// chosen width and weights; the one with the lowest mean CER relative to each set's best
    /// goes into the model's manifest (`language_model.unsure_lines`), a tie going to reading
    /// every line once. A model leans on its language model where it is unsure of the
    /// letterforms (a script face it never trained on) and trusts the glyphs where it knows
    /// them. Both lists empty (the default): every line is searched once. In
    /// `spec.hyperparameters` a fixed list is written `[[0.3, 0.4]]`.
    pub unsure_below: Vec<f64>,
    /// See `unsure_below`.
    pub unsure_alphas: Vec<f64>,
}

/// The most weight pairs `language_model.alphas` × `betas` may make: each is a read of every
/// validation set.
pub const MAX_LM_WEIGHT_PAIRS: usize = 64;

impl LanguageModelConfig {
    /// The weight pairs (alpha, beta) a finished trial tries: the configured pair first, then
    /// `alphas` × `betas` (alpha varying slowest), each once.
    pub fn weight_pairs(&self) -> Vec<(f64, f64)> {
        let alphas = if self.alphas.is_empty() {
            vec![self.alpha]
        } else {
            self.alphas.clone()
        };
        let betas = if self.betas.is_empty() {
            vec![self.beta]
        } else {
            self.betas.clone()
        };
        let mut pairs = vec![(self.alpha, self.beta)];
        for &a in &alphas {
            for &b in &betas {
                if !pairs.contains(&(a, b)) {
                    pairs.push((a, b));
                }
            }
        }
        pairs
    }

    /// The (threshold, alpha) pairs a finished trial tries for searching unsure lines again
    /// (see `unsure_below`), the threshold varying slowest; empty when none are configured.
    pub fn unsure_candidates(&self) -> Vec<(f64, f64)> {
        self.unsure_below
            .iter()
            .flat_map(|&below| self.unsure_alphas.iter().map(move |&a| (below, a)))
            .collect()
    }
}

impl Default for LanguageModelConfig {
    fn default() -> Self {
        Self {
            order: 0,
            min_count: 5,
            alpha: 0.5,
            beta: 2.0,
            beam: 12,
            alphas: Vec::new(),
            betas: Vec::new(),
            unsure_below: Vec::new(),
            unsure_alphas: Vec::new(),
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

    /// Check values that serde's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.model.resolve()?;
        let bad = |f: &str, why: &str| Err(ConfigError::new(format!("{f}: {why}")));
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return bad(
                "batch_size",
                &format!("must be in 1..={MAX_BATCH_SIZE} (got {})", self.batch_size),
            );
        }
        if !(1..=MAX_LOADER_THREADS).contains(&self.data.loader_threads) {
            return bad(
                "data.loader_threads",
                &format!("must be in 1..={MAX_LOADER_THREADS}"),
            );
        }
        if !(1..=MAX_PREFETCH_BATCHES).contains(&self.data.prefetch_batches) {
            return bad(
                "data.prefetch_batches",
                &format!("must be in 1..={MAX_PREFETCH_BATCHES}"),
            );
        }
        if self.max_steps == 0 {
            return bad("max_steps", "must be at least 1");
        }
        if self.eval_interval == 0 {
            return bad("eval_interval", "must be at least 1");
        }
        if self.log_interval == 0 {
            return bad("log_interval", "must be at least 1");
        }
        if self.checkpoint.keep == 0 {
            return bad("checkpoint.keep", "must be at least 1");
        }
        let lm = &self.language_model;
        if lm.order != 0 && !(2..=9).contains(&lm.order) {
            return bad("language_model.order", "must be 0 (none) or in 2..=9");
        }
        if lm.min_count == 0 {
            return bad("language_model.min_count", "must be at least 1");
        }
        if !lm.alpha.is_finite() || lm.alpha < 0.0 || !lm.beta.is_finite() {
            return bad(
                "language_model",
                "alpha must be finite and not negative, beta finite",
            );
        }
        if !(1..=1000).contains(&lm.beam) {
            return bad("language_model.beam", "must be in 1..=1000");
        }
        // Alphas weigh a log-probability, so they are not negative; betas may be.
        let lists = [
            (
                "language_model.alphas",
                &lm.alphas,
                "weight",
                0.0,
                "finite and not negative",
            ),
            (
                "language_model.betas",
                &lm.betas,
                "weight",
                f64::NEG_INFINITY,
                "finite",
            ),
            (
                "language_model.unsure_alphas",
                &lm.unsure_alphas,
                "weight",
                0.0,
                "finite and not negative",
            ),
            (
                "language_model.unsure_below",
                &lm.unsure_below,
                "confidence",
                f64::MIN_POSITIVE,
                "above 0",
            ),
        ];
        for (field, list, noun, lowest, want) in lists {
            for (i, &w) in list.iter().enumerate() {
                if !w.is_finite() || w < lowest {
                    return bad(field, &format!("{noun} {w} must be {want}"));
                }
                if list[..i].contains(&w) {
                    return bad(field, &format!("{noun} {w} is given twice"));
                }
            }
        }
        let pairs = lm.alphas.len().max(1) * lm.betas.len().max(1);
        if pairs > MAX_LM_WEIGHT_PAIRS {
            return bad(
                "language_model",
                &format!(
                    "alphas × betas make {pairs} weight pairs, more than {MAX_LM_WEIGHT_PAIRS} \
                     (each is a read of every validation set)"
                ),
            );
        }
        if let Some(&c) = lm.unsure_below.iter().find(|&&c| c > 1.0) {
            return bad(
                "language_model.unsure_below",
                &format!("confidence {c} is above 1"),
            );
        }
        if lm.unsure_below.is_empty() != lm.unsure_alphas.is_empty() {
            return bad(
                "language_model",
                "unsure_below and unsure_alphas go together: a threshold needs a weight to \
                 search again with, and a weight a threshold",
            );
        }
        let unsure = lm.unsure_candidates().len();
        if unsure > MAX_LM_WEIGHT_PAIRS {
            return bad(
                "language_model",
                &format!(
                    "unsure_below × unsure_alphas make {unsure} pairs, more than \
                     {MAX_LM_WEIGHT_PAIRS} (each is a read of every validation set)"
                ),
            );
        }
        let (lo, hi) = READING_WIDTH_RANGE;
        if self.reading_widths.is_empty() {
            return bad(
                "reading_widths",
                "needs at least one factor (`[1]`: as drawn)",
            );
        }
        for (i, f) in self.reading_widths.iter().enumerate() {
            if !(lo..=hi).contains(f) {
                return bad(
                    "reading_widths",
                    &format!("factor {f} is outside {lo}..={hi}"),
                );
            }
            if self.reading_widths[..i].contains(f) {
                return bad("reading_widths", &format!("factor {f} is given twice"));
            }
        }
        if !self.optimizer.lr.is_finite() || self.optimizer.lr <= 0.0 {
            return bad("optimizer.lr", "must be positive");
        }
        if !(0.0..=1.0).contains(&self.optimizer.min_lr_ratio) {
            return bad("optimizer.min_lr_ratio", "must be in [0, 1]");
        }
        if !(0.0..1.0).contains(&self.optimizer.label_smoothing) {
            return bad("optimizer.label_smoothing", "must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.optimizer.ema_decay) {
            return bad(
                "optimizer.ema_decay",
                "must be in [0, 1) (0 turns the average off)",
            );
        }
        if self.preprocess.height < 8 || !self.preprocess.height.is_multiple_of(8) {
            return bad("preprocess.height", "must be a positive multiple of 8");
        }
        if !(lo..=hi).contains(&self.preprocess.stretch) {
            return bad("preprocess.stretch", &format!("must be in {lo}..={hi}"));
        }
        if self.preprocess.width_multiple == 0 || self.preprocess.max_width < self.preprocess.height
        {
            return bad("preprocess.max_width", "must be at least the height");
        }
        if self.data.train.sources().is_empty() {
            return bad("data.train", "a list of sources needs at least one");
        }
        for (i, d) in self.data.train.sources().iter().enumerate() {
            if let Some(w) = d.weight {
                if !w.is_finite() || w <= 0.0 {
                    return bad(
                        &format!("{}.weight", self.data.train.field(i)),
                        &format!("must be positive and finite (got {w})"),
                    );
                }
            }
        }
        let extra = self.data.extra_validation.iter().filter_map(|(k, v)| {
            v.as_ref()
                .map(|d| (format!("data.extra_validation.{k}"), d))
        });
        let train = self
            .data
            .train
            .sources()
            .iter()
            .enumerate()
            .map(|(i, d)| (self.data.train.field(i), d));
        let sets: Vec<(String, &DatasetSpec)> = train
            .chain(std::iter::once((
                "data.validation".to_string(),
                &self.data.validation,
            )))
            .chain(extra)
            .collect();
        for (name, d) in sets {
            let training = name.starts_with("data.train");
            if !training && d.weight.is_some() {
                return bad(
                    &format!("{name}.weight"),
                    "only training sources have weights",
                );
            }
            if !training && d.augment == Some(true) {
                return bad(
                    &format!("{name}.augment"),
                    "validation lines are scored as stored, never distorted",
                );
            }
            if d.kind != DatasetKind::Synthetic && d.path.is_none() {
                return bad(
                    &format!("{name}.path"),
                    "is required for tesstrain and iam data sets",
                );
            }
            let s = &d.synthetic;
            if s.min_chars == 0 || s.min_chars > s.max_chars {
                return bad(
                    &format!("{name}.synthetic.min_chars"),
                    "must be in 1..=max_chars",
                );
            }
            if !(0.0..=1.0).contains(&s.augment) {
                return bad(&format!("{name}.synthetic.augment"), "must be in [0, 1]");
            }
            if !(0.0..=1.0).contains(&s.glyph_morph) {
                return bad(
                    &format!("{name}.synthetic.glyph_morph"),
                    "must be in [0, 1]",
                );
            }
            if !(0.0..=1.0).contains(&s.generated_fraction) {
                return bad(
                    &format!("{name}.synthetic.generated_fraction"),
                    "must be in [0, 1]",
                );
            }
            if d.kind == DatasetKind::Synthetic {
                if training && s.split != TextSplit::Train {
                    return bad(
                        &format!("{name}.synthetic.split"),
                        "must be `train`: held-out text is never trained on",
                    );
                }
                if !training && s.split == TextSplit::Train {
                    return bad(
                        &format!("{name}.synthetic.split"),
                        "must be `validation` or `descriptions`: validating on training text \
                         measures memory, not reading",
                    );
                }
                if !training && d.samples.is_none() {
                    return bad(
                        &format!("{name}.samples"),
                        "a synthetic validation set needs a size",
                    );
                }
            }
        }
        Ok(())
    }

    /// The config as pretty JSON (recorded in checkpoints and manifests).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("config serializes")
    }
}

/// Refuse `.nan` and `.inf` in YAML `text` (found under `prefix`), naming the field: the JSON
/// tree configs are merged in has no such numbers and would turn them into `null`, which an
/// optional field (`weight`) would silently read as unset.
fn reject_non_finite(text: &str, prefix: &str) -> Result<(), ConfigError> {
    fn walk(v: &serde_yaml::Value, path: String) -> Result<(), ConfigError> {
        match v {
            serde_yaml::Value::Number(n) if n.as_f64().is_some_and(|f| !f.is_finite()) => Err(
                ConfigError::new(format!("{path}: must be a finite number (got {n})")),
            ),
            serde_yaml::Value::Sequence(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, x)| walk(x, format!("{path}[{i}]"))),
            serde_yaml::Value::Mapping(m) => m.iter().try_for_each(|(k, x)| {
                let k = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
                walk(
                    x,
                    if path.is_empty() {
                        k
                    } else {
                        format!("{path}.{k}")
                    },
                )
            }),
            _ => Ok(()),
        }
    }
    // Malformed YAML is reported by the real parse that follows.
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(v) => walk(&v, prefix.to_string()),
        Err(_) => Ok(()),
    }
}

/// Deep-merge `over` into `base`: objects merge key by key, anything else replaces.
fn merge_tree(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge_tree(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Apply one `a.b.c=value` override to a config tree. The value is parsed as YAML, so numbers,
/// booleans, lists (`[32,64]`) and strings all work; intermediate objects are created.
pub fn apply_override(tree: &mut serde_json::Value, spec: &str) -> Result<(), ConfigError> {
    let (key, raw) = spec.split_once('=').ok_or_else(|| {
        ConfigError::new(format!("override `{spec}` is not of the form key=value"))
    })?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(ConfigError::new(format!(
            "override `{spec}`: empty field name"
        )));
    }
    reject_non_finite(raw, key)?;
    let value: serde_json::Value = serde_yaml::from_str(raw)
        .map_err(|e| ConfigError::new(format!("override `{spec}`: bad value: {e}")))?;
    let mut node = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !node.is_object() {
            if node.is_null() {
                *node = serde_json::Value::Object(Default::default());
            } else {
                return Err(ConfigError::new(format!(
                    "override `{spec}`: `{}` is not a section",
                    parts[..i].join(".")
                )));
            }
        }
        let map = node.as_object_mut().expect("checked object");
        if i + 1 == parts.len() {
            map.insert((*part).to_string(), value);
            return Ok(());
        }
        node = map
            .entry((*part).to_string())
            .or_insert(serde_json::Value::Null);
    }
    unreachable!("loop returns on the last part")
}

/// Flatten nested hyperparameters (`{optimizer: {lr: 0.001}}`) into `--set` overrides
/// (`optimizer.lr=0.001`). Lists stay values (`[32, 64]`): only objects nest.
pub fn flatten_overrides(params: &serde_json::Value) -> Vec<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            other => out.push(format!("{prefix}={other}")),
        }
    }
    let mut out = Vec::new();
    walk("", params, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fine_tune_takes_the_parents_architecture_and_names_a_contradicting_field() {
        let parent = Preset::Tiny.architecture();
        let plain = ModelSpec::default();
        assert_eq!(plain.adopt(&parent).unwrap(), parent);
        let mut dropout = ModelSpec {
            dropout: Some(0.2),
            ..ModelSpec::default()
        };
        assert_eq!(dropout.adopt(&parent).unwrap().dropout, 0.2);
        dropout.d_model = Some(64);
        let e = dropout.adopt(&parent).unwrap_err().to_string();
        assert!(e.starts_with("model.d_model:"), "{e}");
        let base = ModelSpec {
            preset: PresetOrDefault(Preset::Base),
            ..ModelSpec::default()
        };
        let e = base.adopt(&parent).unwrap_err().to_string();
        assert!(e.starts_with("model.preset:"), "{e}");
        let tiny = ModelSpec {
            preset: PresetOrDefault(Preset::Tiny),
            ..ModelSpec::default()
        };
        assert_eq!(tiny.adopt(&parent).unwrap(), parent);
    }

    #[test]
    fn empty_config_is_the_default() {
        assert_eq!(TrainConfig::parse("", &[]).unwrap(), TrainConfig::default());
        assert_eq!(
            TrainConfig::parse("{}", &[]).unwrap(),
            TrainConfig::default()
        );
    }

    #[test]
    fn overrides_set_nested_fields_with_typed_values() {
        let c = TrainConfig::parse(
            "model: {preset: tiny}\n",
            &[
                "optimizer.lr=0.0005".into(),
                "model.encoder_channels=[4, 8, 16]".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.optimizer.lr, 0.0005);
        assert_eq!(c.model.preset.0, Preset::Tiny);
        assert_eq!(c.model.resolve().unwrap().encoder_channels, vec![4, 8, 16]);
    }

    #[test]
    fn unknown_field_error_names_the_path_and_allowed_fields() {
        let err = TrainConfig::parse("optimizer: {learning_rate: 1}\n", &[]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("optimizer"), "{msg}");
        assert!(msg.contains("learning_rate"), "{msg}");
        assert!(msg.contains("`lr`"), "{msg}");
    }

    #[test]
    fn bad_enum_value_lists_allowed_values() {
        let err = TrainConfig::parse("device: tpu\n", &[]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("device") && msg.contains("cuda"), "{msg}");
        assert!(err.downcast_ref::<ConfigError>().is_some());
    }

    #[test]
    fn ill_typed_override_is_a_config_error() {
        let err = TrainConfig::parse("", &["batch_size=lots".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("batch_size"));
        for bad in [
            "batch_size=0",
            "batch_size=1000000000000",
            "data.loader_threads=0",
            "data.prefetch_batches=100000",
        ] {
            let err = format!("{:#}", TrainConfig::parse("", &[bad.into()]).unwrap_err());
            let field = bad.split('=').next().unwrap();
            assert!(
                err.contains(field) && err.contains("must be in"),
                "{bad}: {err}"
            );
        }
        assert!(TrainConfig::parse("", &["nonsense".into()]).is_err());
    }

    #[test]
    fn reading_widths_are_checked_and_name_the_problem() {
        assert_eq!(
            TrainConfig::default().reading_widths,
            DEFAULT_READING_WIDTHS.to_vec()
        );
        let c = TrainConfig::parse("reading_widths: [1]\n", &[]).unwrap();
        assert_eq!(c.reading_widths, vec![1.0]);
        for (yaml, why) in [
            ("reading_widths: []", "at least one factor"),
            ("reading_widths: [1, 5]", "factor 5 is outside 0.25..=4"),
            ("reading_widths: [0.1]", "factor 0.1 is outside"),
            ("reading_widths: [1, 1.1, 1]", "factor 1 is given twice"),
            ("preprocess: {stretch: 5}", "must be in 0.25..=4"),
        ] {
            let err = TrainConfig::parse(yaml, &[]).unwrap_err();
            let msg = format!("{err:#}");
            let field = yaml.split(':').next().unwrap();
            assert!(msg.contains(field) && msg.contains(why), "{yaml}: {msg}");
            assert!(err.downcast_ref::<ConfigError>().is_some(), "{yaml}");
        }
    }

    #[test]
    fn language_model_weights_to_try_are_checked_and_paired_configured_first() {
        let lm = |yaml: &str| TrainConfig::parse(yaml, &[]).map(|c| c.language_model);
        // Nothing to try: the configured pair alone.
        assert_eq!(lm("").unwrap().weight_pairs(), vec![(0.5, 2.0)]);
        // An empty list stands for the configured weight; the configured pair comes first and
        // only once.
        let pairs = lm("language_model: {alphas: [0.35, 0.5], betas: [1, 2]}")
            .unwrap()
            .weight_pairs();
        assert_eq!(
            pairs,
            vec![(0.5, 2.0), (0.35, 1.0), (0.35, 2.0), (0.5, 1.0)]
        );
        let pairs = lm("language_model: {beta: 1, alphas: [0.65]}")
            .unwrap()
            .weight_pairs();
        assert_eq!(pairs, vec![(0.5, 1.0), (0.65, 1.0)]);
        // Unsure lines: nothing to try by default, else every threshold with every weight.
        assert!(lm("").unwrap().unsure_candidates().is_empty());
        let unsure = lm("language_model: {unsure_below: [0.3, 0.4], unsure_alphas: [0.8, 1.2]}")
            .unwrap()
            .unsure_candidates();
        assert_eq!(unsure, vec![(0.3, 0.8), (0.3, 1.2), (0.4, 0.8), (0.4, 1.2)]);
        for (yaml, field, why) in [
            (
                "language_model: {alphas: [-0.1]}",
                "language_model.alphas",
                "finite and not negative",
            ),
            (
                "language_model: {alphas: [0.5, 0.5]}",
                "language_model.alphas",
                "0.5 is given twice",
            ),
            (
                "language_model: {betas: [1, 2, 1]}",
                "language_model.betas",
                "1 is given twice",
            ),
            (
                "language_model: {alphas: [0,1,2,3,4,5,6,7,8], betas: [0,1,2,3,4,5,6,7]}",
                "language_model",
                "make 72 weight pairs, more than 64",
            ),
            (
                "language_model: {unsure_below: [0, 0.4], unsure_alphas: [1]}",
                "language_model.unsure_below",
                "confidence 0 must be above 0",
            ),
            (
                "language_model: {unsure_below: [1.5], unsure_alphas: [1]}",
                "language_model.unsure_below",
                "confidence 1.5 is above 1",
            ),
            (
                "language_model: {unsure_below: [0.4], unsure_alphas: [1, -1]}",
                "language_model.unsure_alphas",
                "weight -1 must be finite and not negative",
            ),
            (
                "language_model: {unsure_below: [0.4]}",
                "language_model",
                "unsure_below and unsure_alphas go together",
            ),
            (
                "language_model: {unsure_alphas: [1.0]}",
                "language_model",
                "unsure_below and unsure_alphas go together",
            ),
        ] {
            let msg = format!("{:#}", lm(yaml).unwrap_err());
            assert!(msg.contains(field) && msg.contains(why), "{yaml}: {msg}");
        }
    }

    #[test]
    fn a_fine_tune_takes_its_parents_preprocessing_unless_it_sets_another() {
        let wide = PreprocessConfig {
            stretch: 1.25,
            ..PreprocessConfig::default()
        };
        let plain = PreprocessConfig::default();
        // Left at the defaults: the parent's, whatever it is.
        assert_eq!(plain.adopt(&wide).unwrap(), wide);
        assert_eq!(plain.adopt(&plain).unwrap(), plain);
        // Set to the parent's: kept.
        assert_eq!(wide.adopt(&wide).unwrap(), wide);
        // Set to something else: refused, naming both.
        let taller = PreprocessConfig {
            height: 48,
            ..PreprocessConfig::default()
        };
        let err = taller.adopt(&wide).unwrap_err().to_string();
        assert!(
            err.contains("preprocess")
                && err.contains("\"height\":48")
                && err.contains("\"stretch\":1.25"),
            "{err}"
        );
        assert!(err.contains("leave `preprocess` out"), "{err}");
    }

    #[test]
    fn inconsistent_architecture_names_the_field() {
        let err = TrainConfig::parse("model: {d_model: 30, heads: 4}\n", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("model.heads"));
    }

    #[test]
    fn flatten_round_trips_through_overrides() {
        let hp = serde_json::json!({"optimizer": {"lr": 0.002}, "batch_size": 8,
                                    "model": {"encoder_channels": [8, 16, 32]}});
        let sets = flatten_overrides(&hp);
        let c = TrainConfig::parse("", &sets).unwrap();
        assert_eq!(c.optimizer.lr, 0.002);
        assert_eq!(c.batch_size, 8);
        assert_eq!(c.model.encoder_channels, Some(vec![8, 16, 32]));
    }

    #[test]
    fn partial_sections_keep_their_parent_defaults() {
        let c = TrainConfig::parse("data: {validation: {samples: 64}}\n", &[]).unwrap();
        let d = TrainConfig::default();
        assert_eq!(c.data.validation.samples, Some(64));
        assert_eq!(c.data.validation.synthetic, d.data.validation.synthetic);
        assert_eq!(c.data.train, d.data.train);
    }

    #[test]
    fn held_out_text_is_never_trained_on_and_training_text_never_validates() {
        let err = TrainConfig::parse("data: {train: {synthetic: {split: descriptions}}}\n", &[])
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("data.train.synthetic.split"),
            "{err:#}"
        );
        let err = TrainConfig::parse(
            "data: {extra_validation: {mine: {samples: 4, synthetic: {split: train}}}}\n",
            &[],
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("data.extra_validation.mine.synthetic.split"),
            "{err:#}"
        );
        let err = TrainConfig::parse(
            "data: {extra_validation: {mine: {synthetic: {split: validation}}}}\n",
            &[],
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("data.extra_validation.mine.samples"),
            "{err:#}"
        );
    }

    #[test]
    fn default_validation_reads_realistic_lines_in_seen_and_unseen_fonts() {
        let c = TrainConfig::default();
        let v = &c.data.validation.synthetic;
        assert_eq!(v.split, TextSplit::Descriptions);
        assert_eq!((v.max_chars, v.mean_chars), (100, Some(PRINTED_MEAN_CHARS)));
        assert!(
            v.fonts.is_empty(),
            "the objective's set uses the training fonts"
        );
        let unseen = c.data.extra_validation[UNSEEN_FONTS_SET].as_ref().unwrap();
        assert_eq!(unseen.synthetic.fonts, UNSEEN_VALIDATION_FONTS);
        assert_eq!(unseen.synthetic.split, TextSplit::Descriptions);
        // A partial override keeps the rest of the set; `null` removes it.
        let c = TrainConfig::parse("", &["data.extra_validation.unseen-fonts.samples=8".into()])
            .unwrap();
        let unseen = c.data.extra_validation[UNSEEN_FONTS_SET].as_ref().unwrap();
        assert_eq!(unseen.samples, Some(8));
        assert_eq!(unseen.synthetic.fonts, UNSEEN_VALIDATION_FONTS);
        let c =
            TrainConfig::parse("", &["data.extra_validation.unseen-fonts=null".into()]).unwrap();
        assert_eq!(c.data.extra_validation.get(UNSEEN_FONTS_SET), Some(&None));
    }

    #[test]
    fn train_data_is_one_set_or_a_weighted_list() {
        let c = TrainConfig::parse(
            "data:\n  train:\n    - {kind: synthetic, weight: 0.7}\n    - {kind: tesstrain, path: s3://b/flags/, weight: 0.3, augment: true}\n",
            &[],
        )
        .unwrap();
        let sources = c.data.train.sources();
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[1].kind, DatasetKind::Tesstrain);
        assert_eq!(sources[1].augment, Some(true));
        let w = c.data.train.normalized_weights();
        assert!(
            (w[0] - 0.7).abs() < 1e-12 && (w[1] - 0.3).abs() < 1e-12,
            "{w:?}"
        );
        // The config round-trips through its JSON (checkpoints record it).
        assert_eq!(
            TrainConfig::parse(&c.to_json().to_string(), &[]).unwrap(),
            c
        );
        // The single-object form still parses, into the same type, and keeps its defaults.
        let c = TrainConfig::parse("data: {train: {samples: 5}}\n", &[]).unwrap();
        assert!(!c.data.train.is_mix());
        assert_eq!(c.data.train.sources()[0].samples, Some(5));
        assert_eq!(c.data.train.field(0), "data.train");
        // A list can come in as an override too (the operator passes it that way).
        let c = TrainConfig::parse(
            "",
            &["data.train=[{kind: synthetic}, {kind: synthetic, weight: 3}]".into()],
        )
        .unwrap();
        assert_eq!(c.data.train.normalized_weights(), vec![0.25, 0.75]);
    }

    #[test]
    fn an_average_of_the_weights_needs_a_decay_below_one() {
        for set in ["optimizer.ema_decay=1", "optimizer.ema_decay=-0.5"] {
            let err = TrainConfig::parse("", &[set.to_string()]).unwrap_err();
            assert!(
                format!("{err:#}").contains("optimizer.ema_decay"),
                "{err:#}"
            );
        }
        let c = TrainConfig::parse("optimizer: {ema_decay: 0.999}\n", &[]).unwrap();
        assert_eq!(c.optimizer.ema_decay, 0.999);
        assert_eq!(c.to_json()["optimizer"]["ema_decay"], 0.999);
        let off = TrainConfig::default().to_json();
        assert!(
            off["optimizer"].get("ema_decay").is_none(),
            "off is not written"
        );
    }

    #[test]
    fn mix_errors_name_the_source() {
        for (weight, shown) in [("0", "0"), ("-1", "-1")] {
            let yaml = format!(
                "data: {{train: [{{kind: synthetic}}, {{kind: synthetic, weight: {weight}}}]}}\n"
            );
            let err = TrainConfig::parse(&yaml, &[]).unwrap_err();
            let msg = format!("{err:#}");
            assert!(
                msg.contains("data.train[1].weight") && msg.contains(shown),
                "{weight}: {msg}"
            );
            assert!(err.downcast_ref::<ConfigError>().is_some());
        }
        for (yaml, set, field) in [
            (
                "data: {train: [{kind: synthetic}, {kind: synthetic, weight: .nan}]}\n",
                None,
                "data.train[1].weight",
            ),
            (
                "",
                Some("data.train=[{kind: synthetic, weight: .inf}]"),
                "data.train[0].weight",
            ),
            ("optimizer: {lr: -.inf}\n", None, "optimizer.lr"),
        ] {
            let sets: Vec<String> = set.map(String::from).into_iter().collect();
            let err = TrainConfig::parse(yaml, &sets).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(field) && msg.contains("finite"), "{msg}");
        }
        // A config built in code is checked too.
        let mut c = TrainConfig::default();
        c.data.train = TrainData::Mix(vec![DatasetSpec::default(); 2]);
        c.data.train.sources_mut()[1].weight = Some(f64::INFINITY);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("data.train[1].weight"), "{err}");
        let err =
            TrainConfig::parse("data: {train: [{kind: synthetic, wieght: 1}]}\n", &[]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("data.train[0]") && msg.contains("wieght"),
            "{msg}"
        );
        let err = TrainConfig::parse("data: {train: [{kind: tesstrain}]}\n", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("data.train[0].path"), "{err:#}");
        let err = TrainConfig::parse("data: {train: []}\n", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("at least one"), "{err:#}");
        let err = TrainConfig::parse("data: {validation: {weight: 2}}\n", &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains("data.validation.weight"),
            "{err:#}"
        );
        let err = TrainConfig::parse("data: {train: {synthetic: {glyph_morph: 1.5}}}\n", &[])
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("data.train.synthetic.glyph_morph"),
            "{err:#}"
        );
        let ok = TrainConfig::parse("data: {train: {synthetic: {glyph_morph: 0.6}}}\n", &[]);
        assert!(ok.is_ok(), "{ok:?}");
        let err = TrainConfig::parse("data: {validation: {augment: true}}\n", &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains("data.validation.augment"),
            "{err:#}"
        );
    }

    #[test]
    fn every_preset_is_valid() {
        for p in [Preset::Tiny, Preset::Small, Preset::Base] {
            p.architecture().validate().unwrap();
        }
    }
}
