//! Records a trial writes while it runs, and that the operator and local runner read.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MetricsRecord {
    /// `train` (a training-loss record) or `eval` (a validation result).
    pub kind: RecordKind,
    /// Optimizer steps completed.
    pub step: u64,
    /// Wall-clock time of the record.
    pub time: DateTime<Utc>,
    /// Seconds of training so far, summed over restarts.
    pub elapsed_s: f64,
    /// Mean training loss since the previous record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Learning rate at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Training throughput since the previous record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_per_sec: Option<f64>,
    /// Peak resident memory of the trial's process so far, in MiB (Linux's `VmHWM`): what a
    /// pod's memory limit must hold. Absent where the system does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// Validation character error rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cer: Option<f64>,
    /// Validation word error rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wer: Option<f64>,
    /// Eval records: every validation set's scores by name, the objective's set
    /// ([`OBJECTIVE_SET`]) included, with CER by line length.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sets: BTreeMap<String, SetScore>,
}

/// Name under which the objective's validation set appears in [`MetricsRecord::sets`].
pub const OBJECTIVE_SET: &str = "validation";

/// Scores of one validation set at one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SetScore {
    /// Character error rate over the whole set.
    pub cer: f64,
    /// Word error rate over the whole set.
    pub wer: f64,
    /// Lines scored.
    pub lines: u64,
    /// CER by reference line length, shortest bucket first (empty buckets left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_length: Vec<LengthScore>,
    /// The first few lines' readings (what TensorBoard's text tab shows beside their images).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<SamplePrediction>,
}

/// One validation line: what it says and what the model read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SamplePrediction {
    /// The line's transcription.
    pub reference: String,
    /// The model's reading.
    pub prediction: String,
}

/// CER of the lines of one length bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LengthScore {
    /// Shortest reference line in the bucket, in characters.
    pub min_chars: u32,
    /// Longest reference line in the bucket, in characters (`u32::MAX`: no upper bound).
    pub max_chars: u32,
    /// Lines in the bucket.
    pub lines: u64,
    /// Character error rate over those lines.
    pub cer: f64,
}

/// Kind of a [`MetricsRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// Training loss and throughput.
    Train,
    /// Validation metrics.
    Eval,
}

/// Phase of a trial as the worker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WorkerPhase {
    /// Training.
    Running,
    /// Stopped by a signal after checkpointing; will resume.
    Interrupted,
    /// Finished; the model folder is written.
    Succeeded,
    /// Gave up (see `message`).
    Failed,
}

/// An evaluation result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EvalPoint {
    /// Step it was measured at.
    pub step: u64,
    /// Character error rate on the objective's validation set.
    pub cer: f64,
    /// Word error rate on the objective's validation set.
    pub wer: f64,
    /// CER of each extra validation set by name (e.g. `unseen-fonts`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_cer: BTreeMap<String, f64>,
    /// How the lines were read. Absent for the evaluations made while training, which read
    /// with `joint`; a finished trial's `best` is its best weights read with the decoding its
    /// model is served with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoding: Option<crate::manifest::DecodeMode>,
    /// The horizontal stretch the lines were read at, when the finished trial compared reading
    /// widths (1: as drawn); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reading_width: Option<f64>,
}

/// Reference to a stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CheckpointRef {
    /// Step of the checkpoint.
    pub step: u64,
    /// Its folder's URL.
    pub url: String,
}

/// Reference to a stored model folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelRef {
    /// The folder's URL.
    pub url: String,
    /// The model version (sha256 of its manifest).
    pub sha256: String,
    /// Validation CER of the model, read with the decoding it is served with.
    pub cer: f64,
}

/// `progress.json`: a small snapshot of a trial, rewritten as it trains, and also the pod's
/// termination message (it stays under Kubernetes' 4 KiB limit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TrialProgress {
    /// Phase as the worker sees it.
    pub phase: WorkerPhase,
    /// Optimizer steps completed.
    pub step: u64,
    /// Steps the trial will run.
    pub max_steps: u64,
    /// Recent training throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_per_sec: Option<f64>,
    /// Most recent evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<EvalPoint>,
    /// Best evaluation so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<EvalPoint>,
    /// Newest complete checkpoint: where a restart resumes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointRef>,
    /// The final model, once written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRef>,
    /// Times this trial resumed from a checkpoint.
    #[serde(default)]
    pub resumes: u32,
    /// When this snapshot was written.
    pub updated: DateTime<Utc>,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
