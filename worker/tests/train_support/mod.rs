//! Shared helpers of the `train_*` integration tests.

use std::path::Path;

use textrec_contract::layout;

/// Steps of the complete checkpoints (those with a manifest) under a trial's output folder.
pub fn complete_checkpoints(out: &Path) -> Vec<u64> {
    let Ok(rd) = std::fs::read_dir(out.join(layout::CHECKPOINTS)) else {
        return vec![];
    };
    let mut v: Vec<u64> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(layout::MANIFEST).exists())
        .filter_map(|e| layout::parse_checkpoint_dir(e.file_name().to_str()?))
        .collect();
    v.sort();
    v
}
