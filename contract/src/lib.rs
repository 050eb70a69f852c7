//! The contract between textrec's processes.
//!
//! The operator never links libtorch, yet it must agree with the worker on the trial config it
//! passes, the exit codes it interprets, the files it reads from storage (progress, metrics,
//! model manifests) and the layout of a run's prefix. Those types live here, free of tch.

pub mod charset;
pub mod config;
pub mod evaluation;
pub mod exit;
pub mod layout;
pub mod manifest;
pub mod metrics;
pub mod signals;
pub mod storage;

pub use config::{Architecture, PreprocessConfig, Preset, TrainConfig};
pub use manifest::{CheckpointManifest, DecodeMode, FileDigest, ModelManifest};
pub use metrics::{MetricsRecord, TrialProgress};
pub use storage::Store;
