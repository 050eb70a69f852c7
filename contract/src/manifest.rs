//! Manifests of checkpoint and model folders.
//!
//! A folder is complete only when its manifest exists: writers put every file first and the
//! manifest (with each file's sha256) last; readers ignore a folder without one, and verify the
//! digests before trusting the files.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Architecture, PreprocessConfig};

/// Format tag of [`ModelManifest`].
pub const MODEL_FORMAT: &str = "textrec.model/v1";
/// Format tag of [`CheckpointManifest`].
pub const CHECKPOINT_FORMAT: &str = "textrec.checkpoint/v1";

/// One file of a folder and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileDigest {
    /// Path relative to the folder.
    pub path: String,
    /// Lower-case hex sha256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

impl FileDigest {
    /// Digest `content` under the name `path`.
    pub fn of(path: impl Into<String>, content: &[u8]) -> Self {
        Self {
            path: path.into(),
            sha256: sha256_hex(content),
            bytes: content.len() as u64,
        }
    }

    /// Check `content` against this digest.
    pub fn verify(&self, content: &[u8]) -> Result<(), String> {
        if content.len() as u64 != self.bytes {
            return Err(format!(
                "{}: size {} bytes, manifest says {}",
                self.path,
                content.len(),
                self.bytes
            ));
        }
        let got = sha256_hex(content);
        if got != self.sha256 {
            return Err(format!(
                "{}: sha256 {got}, manifest says {}",
                self.path, self.sha256
            ));
        }
        Ok(())
    }
}

/// Lower-case hex sha256.
pub fn sha256_hex(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

/// Where a model came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Provenance {
    /// TrainingRun name, when trained by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Trial name, when trained by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<String>,
    /// Optimizer step the weights are from.
    pub step: u64,
    /// textrec version that trained it.
    pub textrec_version: String,
    /// The full training config.
    #[serde(default)]
    pub config: serde_json::Value,
    /// The model whose weights training started from (fine-tuning), so lineage can be
    /// followed back model by model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentModel>,
}

/// The model a fine-tune started from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ParentModel {
    /// Where it was read (`builtin:NAME` or a model folder URL).
    pub url: String,
    /// Its version: sha256 of its `manifest.json`.
    pub sha256: String,
}

/// How text is read from the network's two heads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DecodeMode {
    /// The attention decoder alone, greedy.
    Attention,
    /// The CTC head alone: best frame labels, repeats merged, blanks dropped. It cannot loop
    /// and its length is bounded by the image's width.
    Ctc,
    /// Both greedy readings, each scored by both heads; the reading with the higher joint
    /// log-likelihood wins. A repetition loop of the decoder has almost no CTC likelihood,
    /// so it loses to the CTC reading; where the decoder's language model helps, it wins.
    /// Models without a CTC head decode with the attention decoder alone.
    #[default]
    Joint,
    /// A prefix beam search over the CTC head's frames, each reading scored with the model's
    /// character language model ([`LanguageModelInfo`]): where a glyph is ambiguous, the
    /// reading that is likelier text wins. Only for models that have a language model.
    #[serde(rename = "ctc-lm")]
    CtcLm,
}

impl DecodeMode {
    /// The name as written in manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeMode::Attention => "attention",
            DecodeMode::Ctc => "ctc",
            DecodeMode::Joint => "joint",
            DecodeMode::CtcLm => "ctc-lm",
        }
    }
}

/// `manifest.json` of a model folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelManifest {
    /// Always [`MODEL_FORMAT`].
    pub format: String,
    /// When the folder was written.
    pub created: DateTime<Utc>,
    /// The network's sizes.
    pub architecture: Architecture,
    /// Characters the model emits, in token order.
    pub charset: String,
    /// How input images are prepared.
    pub preprocessing: PreprocessConfig,
    /// Validation metrics of these weights (`cer`, `wer`, …).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// How the model reads by default: the mode with the lowest validation CER when it was
    /// trained (`joint` for models written before the choice existed).
    #[serde(default)]
    pub decoding: DecodeMode,
    /// The character language model `ctc-lm` decoding scores readings with, when the folder
    /// has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_model: Option<LanguageModelInfo>,
    /// At which widths lines are read by default: the horizontal stretch the trial measured
    /// best on its validation set (absent: as preprocessing draws them). `recognize`, `eval`
    /// and `serve` take `--widths` over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reading: Option<ReadingSettings>,
    /// Where the model came from.
    pub provenance: Provenance,
    /// Every file of the folder, with its digest.
    pub files: Vec<FileDigest>,
}

/// How a model reads each line: at which horizontal stretches, and which lines at more than
/// the first (the same settings as `--widths` and `--reread-below`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadingSettings {
    /// Horizontal stretch factors (1: the line as preprocessing draws it); every line is read
    /// at the first.
    #[serde(serialize_with = "decimal_f32s")]
    pub widths: Vec<f32>,
    /// Lines whose first reading's confidence is below this are read at the other widths too
    /// (absent: every line, when there are several).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "decimal_f32_opt"
    )]
    pub reread_below: Option<f32>,
}

/// `f` as the `f64` its shortest decimal spells: 1.1, where a widening cast gives
/// 1.100000023841858 (which `serde_json::to_value` and the `json!` macro would show).
pub fn decimal_f32(f: f32) -> f64 {
    f.to_string().parse().unwrap_or(f64::from(f))
}

fn decimal_f32s<S: serde::Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|&f| decimal_f32(f)))
}

fn decimal_f32_opt<S: serde::Serializer>(v: &Option<f32>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(f) => s.serialize_some(&decimal_f32(*f)),
        None => s.serialize_none(),
    }
}

/// A model folder's character language model: its file and how decoding weighs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LanguageModelInfo {
    /// The n-gram file in the folder (listed in `files` with its digest).
    pub file: String,
    /// Longest n-gram, in characters.
    pub order: u32,
    /// N-grams of order three and up seen fewer times were dropped.
    pub min_count: u32,
    /// N-grams stored, all orders together.
    pub ngrams: u64,
    /// What text it was counted over.
    pub source: String,
    /// Weight of the language model's log-probability in the search.
    pub alpha: f32,
    /// Score added per character read (offsets the language model's preference for short
    /// readings).
    pub beta: f32,
    /// Readings the search keeps after each frame.
    pub beam: u32,
    /// Lines read with less confidence than a threshold are searched again with a stronger
    /// language model (absent: every line is read with `alpha` and `beta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsure_lines: Option<UnsureLines>,
}

/// How `ctc-lm` reads the lines it is unsure of: a line whose reading's confidence (the
/// geometric mean of its characters' probabilities) is below `below` is searched again with
/// these weights, and that reading replaces the first. Where the letterforms are unfamiliar
/// (a script face the model never trained on), the glyphs alone mislead, and the likelier
/// text is the better guess; where they are familiar, a strong language model would
/// "correct" words it has not seen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsureLines {
    /// Confidence (0..1) under which a line is searched again.
    pub below: f32,
    /// Weight of the language model's log-probability in the second search.
    pub alpha: f32,
    /// Score added per character read in the second search.
    pub beta: f32,
}

impl ModelManifest {
    /// Parse `manifest.json`: valid JSON, format [`MODEL_FORMAT`], then the schema. Each step
    /// fails with its own message (a folder of another kind or version says so).
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        use anyhow::{bail, Context};
        let raw: serde_json::Value =
            serde_json::from_slice(bytes).context("manifest.json is not valid JSON")?;
        match raw.get("format").and_then(|f| f.as_str()) {
            Some(MODEL_FORMAT) => {}
            Some(other) => bail!("manifest format is `{other}`, expected `{MODEL_FORMAT}`"),
            None => bail!("manifest.json has no `format` field; not a textrec model manifest"),
        }
        serde_json::from_value(raw)
            .with_context(|| format!("manifest.json does not match the `{MODEL_FORMAT}` schema"))
    }

    /// The model's version: sha256 of the manifest as stored. Changes with any file.
    pub fn version_of(manifest_bytes: &[u8]) -> String {
        sha256_hex(manifest_bytes)
    }
}

/// `manifest.json` of a checkpoint folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckpointManifest {
    /// Always [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// Optimizer steps completed when it was written.
    pub step: u64,
    /// When it was written.
    pub created: DateTime<Utc>,
    /// Every file of the folder, with its digest.
    pub files: Vec<FileDigest>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_detects_changes() {
        let d = FileDigest::of("w", b"abc");
        assert_eq!(
            d.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        d.verify(b"abc").unwrap();
        assert!(d.verify(b"abd").unwrap_err().contains("sha256"));
        assert!(d.verify(b"ab").unwrap_err().contains("size"));
    }

    #[test]
    fn reading_widths_show_as_written_in_json_values_too() {
        let r = ReadingSettings {
            widths: vec![1.1, 1.25],
            reread_below: Some(0.8),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"widths": [1.1, 1.25], "reread_below": 0.8})
        );
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"widths":[1.1,1.25],"reread_below":0.8}"#
        );
        let back: ReadingSettings = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
