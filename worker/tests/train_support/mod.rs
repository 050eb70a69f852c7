//! Shared helpers of the `train_*` integration tests.

use std::path::Path;

/// Steps of the complete checkpoints (those with a manifest) under a trial's output folder.
pub fn complete_checkpoints(out: &Path) -> Vec<u64> {
    let Ok(rd) = std::fs::read_dir(out.join("checkpoints")) else {
        return vec![];
    };
    let mut v: Vec<u64> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("manifest.json").exists())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .collect();
    v.sort();
    v
}
