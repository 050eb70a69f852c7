//! `data`: the training sources, the validation sets and the loader.

use std::collections::BTreeMap;

use crate::exit::ConfigError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Largest `data.loader_threads`.
pub const MAX_LOADER_THREADS: usize = 64;
/// Largest `data.prefetch_batches`.
pub const MAX_PREFETCH_BATCHES: usize = 256;

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
    /// Background threads that render, augment and batch training lines. 0 (the default)
    /// chooses by device: one on the CPU, where the loader shares the cores with libtorch's
    /// threads, and on CUDA one fewer than the CPUs the process may use, since a GPU trains
    /// faster than one thread renders (see [`DataConfig::loader_threads_for`]). The order of
    /// the lines does not depend on the number.
    pub loader_threads: usize,
    /// Batches prepared ahead of the training loop.
    pub prefetch_batches: usize,
}

impl DataConfig {
    /// The loader threads a trial runs: `loader_threads` when set, else one on the CPU and,
    /// on CUDA, one fewer than the `cpus` the process may use (at least one). One thread
    /// renders about 340 recipe lines a second on a 2-core VM; on an H200 the `base` network
    /// trained 540 a second at batch 64 with 14 loader threads.
    pub fn loader_threads_for(&self, cuda: bool, cpus: usize) -> usize {
        match self.loader_threads {
            0 if cuda => cpus.saturating_sub(1).clamp(1, MAX_LOADER_THREADS),
            0 => 1,
            n => n,
        }
    }

    /// Refuse loader settings out of bounds and data sets that cannot be read as configured
    /// (a weightless training source, a validation set that distorts or trains on its text).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.loader_threads > MAX_LOADER_THREADS {
            return Err(ConfigError::field(
                "data.loader_threads",
                format!("must be in 0..={MAX_LOADER_THREADS} (0: chosen by the device)"),
            ));
        }
        if !(1..=MAX_PREFETCH_BATCHES).contains(&self.prefetch_batches) {
            return Err(ConfigError::field(
                "data.prefetch_batches",
                format!("must be in 1..={MAX_PREFETCH_BATCHES}"),
            ));
        }
        if self.train.sources().is_empty() {
            return Err(ConfigError::field(
                "data.train",
                "a list of sources needs at least one",
            ));
        }
        for (i, d) in self.train.sources().iter().enumerate() {
            if let Some(w) = d.weight {
                if !w.is_finite() || w <= 0.0 {
                    return Err(ConfigError::field(
                        &format!("{}.weight", self.train.field(i)),
                        format!("must be positive and finite (got {w})"),
                    ));
                }
            }
        }
        let train = self
            .train
            .sources()
            .iter()
            .enumerate()
            .map(|(i, d)| (self.train.field(i), d, true));
        let validation = std::iter::once(("data.validation".to_string(), &self.validation, false));
        let extra = self.extra_validation.iter().filter_map(|(k, v)| {
            v.as_ref()
                .map(|d| (format!("data.extra_validation.{k}"), d, false))
        });
        for (name, d, training) in train.chain(validation).chain(extra) {
            d.validate(&name, training)?;
        }
        Ok(())
    }
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
            loader_threads: 0,
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

impl DatasetSpec {
    /// Refuse what this set, configured at `name`, cannot be as a training source
    /// (`training`) or as a validation set.
    fn validate(&self, name: &str, training: bool) -> Result<(), ConfigError> {
        if !training && self.weight.is_some() {
            return Err(ConfigError::field(
                &format!("{name}.weight"),
                "only training sources have weights",
            ));
        }
        if !training && self.augment == Some(true) {
            return Err(ConfigError::field(
                &format!("{name}.augment"),
                "validation lines are scored as stored, never distorted",
            ));
        }
        if self.kind != DatasetKind::Synthetic && self.path.is_none() {
            return Err(ConfigError::field(
                &format!("{name}.path"),
                "is required for tesstrain and iam data sets",
            ));
        }
        let s = &self.synthetic;
        if s.min_chars == 0 || s.min_chars > s.max_chars {
            return Err(ConfigError::field(
                &format!("{name}.synthetic.min_chars"),
                "must be in 1..=max_chars",
            ));
        }
        for (field, value) in [
            ("augment", s.augment),
            ("glyph_morph", s.glyph_morph),
            ("ink_texture", s.ink_texture),
            ("generated_fraction", s.generated_fraction),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::field(
                    &format!("{name}.synthetic.{field}"),
                    "must be in [0, 1]",
                ));
            }
        }
        if self.kind == DatasetKind::Synthetic {
            if training && s.split != TextSplit::Train {
                return Err(ConfigError::field(
                    &format!("{name}.synthetic.split"),
                    "must be `train`: held-out text is never trained on",
                ));
            }
            if !training && s.split == TextSplit::Train {
                return Err(ConfigError::field(
                    &format!("{name}.synthetic.split"),
                    "must be `validation` or `descriptions`: validating on training text \
                     measures memory, not reading",
                ));
            }
            if !training && self.samples.is_none() {
                return Err(ConfigError::field(
                    &format!("{name}.samples"),
                    "a synthetic validation set needs a size",
                ));
            }
        }
        Ok(())
    }
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
    /// Font files, family names or font folders (each folder one entry, drawn as often as a
    /// family) to render with; empty means the training font set (the font files of the Debian
    /// packages that `scripts/setup.sh` installs as training fonts).
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
    /// Share of lines, from 0 (off, the default) to 1, whose glyphs are not filled with solid
    /// ink: hatched inside a kept outline, hollow (the outline alone) or worn in patches, a
    /// third of them each. Every training font fills its strokes, while display faces,
    /// stamps and worn prints often do not (BENCHMARKS.md, "Textured ink").
    pub ink_texture: f64,
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
            ink_texture: 0.0,
            split: TextSplit::Train,
        }
    }
}
