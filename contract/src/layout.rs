//! Where things live under a trial's storage prefix.
//!
//! ```text
//! <run>/<trial>/checkpoints/step-<n>/…   (manifest.json written last)
//! <run>/<trial>/metrics.jsonl
//! <run>/<trial>/progress.json
//! <run>/<trial>/model/                   (model.safetensors + manifest.json)
//! ```

/// Folder of all checkpoints of a trial.
pub const CHECKPOINTS: &str = "checkpoints";
/// Folder of the final model.
pub const MODEL: &str = "model";
/// Name of the manifest file in a checkpoint or model folder; written last.
pub const MANIFEST: &str = "manifest.json";
/// Weights file in a model folder.
pub const MODEL_WEIGHTS: &str = "model.safetensors";
/// One JSON object per line: training and evaluation records.
pub const METRICS: &str = "metrics.jsonl";
/// Latest [`crate::TrialProgress`] snapshot, rewritten as training goes.
pub const PROGRESS: &str = "progress.json";
/// The trial's TensorBoard event file, derived from [`METRICS`] and rewritten with it
/// (`tensorboard --logdir <storage>/<run>` shows every trial).
pub const TENSORBOARD_EVENTS: &str = "events.out.tfevents.0.textrec";

/// The storage URL of a trial: `<storage>/<run>/<trial>`.
pub fn trial_output(storage_url: &str, run: &str, trial: &str) -> String {
    format!("{}/{run}/{trial}", storage_url.trim_end_matches('/'))
}

/// Folder name of the checkpoint at `step`; zero-padded so names sort by step.
pub fn checkpoint_dir(step: u64) -> String {
    format!("{CHECKPOINTS}/step-{step:010}")
}

/// The step of a checkpoint folder name (`step-0000000100` or a path ending in it).
pub fn parse_checkpoint_dir(name: &str) -> Option<u64> {
    let last = name.trim_end_matches('/').rsplit('/').next()?;
    last.strip_prefix("step-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_round_trip_and_sort() {
        assert_eq!(parse_checkpoint_dir(&checkpoint_dir(42)), Some(42));
        assert!(checkpoint_dir(9) < checkpoint_dir(10));
        assert_eq!(parse_checkpoint_dir("checkpoints/step-x"), None);
    }
}
