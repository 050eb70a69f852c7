//! Checkpoints: everything a restarted process needs to continue as if it had never stopped.
//!
//! A checkpoint folder `checkpoints/step-<n>/` holds
//! - `weights.safetensors`: every variable of the network (batch-norm statistics included);
//! - `optimizer.safetensors`: AdamW's first and second moments (`m.<name>`, `v.<name>`);
//! - `best.safetensors`: the weights with the best validation CER so far (absent before the
//!   first evaluation), because the final model is the best one, not the last;
//! - `ema.safetensors`: the average of the weights, when `optimizer.ema_decay` keeps one;
//! - `state.json`: [`TrainState`] (step, data position, schedule position, best/latest
//!   evaluation, elapsed time, RNG description, loss scale, the config);
//! - `manifest.json` ([`CheckpointManifest`] with each file's sha256), written last.
//!
//! Nothing else evolves during training: the learning rate, the data order and augmentation,
//! and the dropout RNG are pure functions of (seed, step) or (seed, data position).

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use textrec_contract::config::Architecture;
use textrec_contract::manifest::{CheckpointManifest, CHECKPOINT_FORMAT};
use textrec_contract::metrics::{CheckpointRef, EvalPoint};
use textrec_contract::{layout, Store};

/// File names inside a checkpoint folder.
pub const WEIGHTS: &str = "weights.safetensors";
/// AdamW moments.
pub const OPTIMIZER: &str = "optimizer.safetensors";
/// Best-validation weights.
pub const BEST: &str = "best.safetensors";
/// The weights' moving average.
pub const EMA: &str = "ema.safetensors";
/// [`TrainState`] as JSON.
pub const STATE: &str = "state.json";

/// The scalar training state of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Index of the next training sample in the sampler's order (`step · batch_size`).
    pub data_position: u64,
    /// Learning rate of the last update (informational: the schedule is a function of `step`).
    pub lr: f64,
    /// Seconds of training so far, summed over restarts.
    pub elapsed_s: f64,
    /// The trial seed.
    pub seed: u64,
    /// How the torch RNG evolves, so a reader knows there is no generator state to restore.
    pub rng: String,
    /// Best validation result so far (the weights are in `best.safetensors`).
    pub best: Option<EvalPoint>,
    /// Most recent validation result.
    pub latest: Option<EvalPoint>,
    /// Step of the most recent evaluation (an evaluation due at `step` but not yet done runs
    /// first after resume).
    pub last_eval_step: Option<u64>,
    /// Times the trial resumed before this checkpoint was written.
    pub resumes: u32,
    /// Dynamic loss scale of fp16 training (absent in fp32).
    pub loss_scale: Option<f64>,
    /// Steps skipped because the loss or gradients were not finite.
    pub skipped_steps: u64,
    /// The network's sizes; a checkpoint of another architecture is refused.
    pub architecture: Architecture,
    /// The charset the output layer was built for.
    pub charset: String,
    /// The full config of the run that wrote it.
    pub config: serde_json::Value,
}

/// How the torch generator is driven; recorded in [`TrainState::rng`].
pub const RNG_SCHEME: &str = "torch manual_seed(splitmix64(seed ^ step)) before every step";

/// A checkpoint read back and verified.
pub struct Loaded {
    /// Its scalar state.
    pub state: TrainState,
    /// `weights.safetensors`.
    pub weights: Bytes,
    /// `optimizer.safetensors`.
    pub optimizer: Bytes,
    /// `best.safetensors`, when an evaluation happened.
    pub best: Option<Bytes>,
    /// `ema.safetensors`, when the trial keeps an average of its weights.
    pub ema: Option<Bytes>,
    /// Where it was read from.
    pub reference: CheckpointRef,
}

/// The bytes of a checkpoint to write.
pub struct ToWrite {
    /// Scalar state.
    pub state: TrainState,
    /// Current weights.
    pub weights: Vec<u8>,
    /// Optimizer moments.
    pub optimizer: Vec<u8>,
    /// Best weights, if any (shared with the trainer, which keeps them: no copy per checkpoint).
    pub best: Option<Bytes>,
    /// The weights' moving average, if the trial keeps one.
    pub ema: Option<Vec<u8>>,
}

/// Write a checkpoint folder, manifest last. Returns its reference.
pub async fn save(store: &Store, ckpt: ToWrite) -> Result<CheckpointRef> {
    let step = ckpt.state.step;
    let dir = layout::checkpoint_dir(step);
    let state_json = serde_json::to_vec_pretty(&ckpt.state)?;
    let mut files = vec![
        (WEIGHTS.to_string(), Bytes::from(ckpt.weights)),
        (OPTIMIZER.to_string(), Bytes::from(ckpt.optimizer)),
    ];
    if let Some(best) = ckpt.best {
        files.push((BEST.to_string(), best));
    }
    if let Some(ema) = ckpt.ema {
        files.push((EMA.to_string(), Bytes::from(ema)));
    }
    files.push((STATE.to_string(), Bytes::from(state_json)));
    store
        .write_folder(&dir, files, |digests| {
            let m = CheckpointManifest {
                format: CHECKPOINT_FORMAT.to_string(),
                step,
                created: chrono::Utc::now(),
                files: digests,
            };
            Ok(serde_json::to_vec_pretty(&m)?)
        })
        .await
        .with_context(|| format!("cannot write checkpoint {}", store.url_of(&dir)))?;
    Ok(CheckpointRef {
        step,
        url: store.url_of(&dir),
    })
}

/// Steps of the checkpoint folders present (complete or not), newest first.
async fn folders(store: &Store) -> Result<Vec<(u64, String)>> {
    let mut out: Vec<(u64, String)> = store
        .list_dirs(layout::CHECKPOINTS)
        .await?
        .into_iter()
        .filter_map(|name| layout::parse_checkpoint_dir(&name).map(|s| (s, name)))
        .collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(out)
}

/// Read and verify one checkpoint folder.
async fn read_one(store: &Store, step: u64) -> Result<Option<Loaded>> {
    let dir = layout::checkpoint_dir(step);
    let Some(manifest) = store
        .get_opt(&format!("{dir}/{}", layout::MANIFEST))
        .await?
    else {
        return Ok(None);
    };
    let manifest: CheckpointManifest =
        serde_json::from_slice(&manifest).context("manifest.json does not parse")?;
    if manifest.format != CHECKPOINT_FORMAT {
        bail!(
            "manifest format is `{}`, expected `{CHECKPOINT_FORMAT}`",
            manifest.format
        );
    }
    if manifest.step != step {
        bail!("manifest says step {}, folder says {step}", manifest.step);
    }
    let mut files = store.read_verified(&dir, &manifest.files).await?;
    let mut take = |name: &str| -> Option<Bytes> {
        files
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| files.swap_remove(i).1)
    };
    let state_bytes = take(STATE).ok_or_else(|| anyhow!("no {STATE}"))?;
    let state: TrainState =
        serde_json::from_slice(&state_bytes).context("state.json does not parse")?;
    if state.step != step {
        bail!("state.json says step {}, folder says {step}", state.step);
    }
    Ok(Some(Loaded {
        weights: take(WEIGHTS).ok_or_else(|| anyhow!("no {WEIGHTS}"))?,
        optimizer: take(OPTIMIZER).ok_or_else(|| anyhow!("no {OPTIMIZER}"))?,
        best: take(BEST),
        ema: take(EMA),
        state,
        reference: CheckpointRef {
            step,
            url: store.url_of(&dir),
        },
    }))
}

/// The newest complete checkpoint whose files match their digests. Folders without a manifest
/// (a write that was cut off) are passed over quietly; corrupt ones with a warning. When there
/// are complete checkpoints but every one is corrupt, that is an error, not a fresh start: training
/// from step 0 would silently throw the run's progress away, and a later prune would delete the
/// evidence. Nothing is deleted here.
pub async fn load_newest(store: &Store) -> Result<Option<Loaded>> {
    let mut corrupt = Vec::new();
    for (step, name) in folders(store).await? {
        match read_one(store, step).await {
            Ok(Some(l)) => return Ok(Some(l)),
            Ok(None) => {
                tracing::info!("checkpoint {name} is incomplete (no manifest); ignoring it")
            }
            Err(e) => {
                let url = store.url_of(&format!("{}/{name}", layout::CHECKPOINTS));
                tracing::warn!(
                    "checkpoint {url} is corrupt, skipping it in favour of an older one: {e:#}"
                );
                corrupt.push(format!("{url}: {e:#}"));
            }
        }
    }
    if !corrupt.is_empty() {
        bail!(
            "all {} complete checkpoint(s) are corrupt, refusing to restart from step 0 over them \
             (move or delete {} to start the trial afresh):\n  {}",
            corrupt.len(),
            store.url_of(layout::CHECKPOINTS),
            corrupt.join("\n  ")
        );
    }
    Ok(None)
}

/// Delete all but the newest `keep` complete checkpoints at or before `current` (the one just
/// written), incomplete folders older than it, and every folder newer than it: those are
/// leftovers that the resume skipped as corrupt or incomplete, and would otherwise outrank the
/// fresh checkpoint. Called only after the new checkpoint is complete, so a crash in here never
/// leaves fewer usable checkpoints than before.
///
/// A complete checkpoint in `named` stays even beyond `keep`: those are the ones
/// `progress.json` names, or a progress write under way will name, and its readers (the
/// operator's status, `textrec local status`) must not be pointed at a deleted folder. The
/// prune after progress names a newer one deletes it.
pub async fn prune(store: &Store, keep: usize, current: u64, named: &[u64]) -> Result<()> {
    let mut complete = 0usize;
    for (step, name) in folders(store).await? {
        let rel = format!("{}/{name}", layout::CHECKPOINTS);
        let delete = if step > current {
            true
        } else if store
            .get_opt(&format!("{rel}/{}", layout::MANIFEST))
            .await?
            .is_some()
        {
            complete += 1;
            complete > keep && !named.contains(&step)
        } else {
            step < current
        };
        if delete {
            tracing::debug!("deleting checkpoint folder {rel}");
            store.delete_prefix(&rel).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64) -> TrainState {
        TrainState {
            step,
            data_position: step * 4,
            lr: 0.1,
            elapsed_s: 1.0,
            seed: 1,
            rng: RNG_SCHEME.into(),
            best: None,
            latest: None,
            last_eval_step: None,
            resumes: 0,
            loss_scale: None,
            skipped_steps: 0,
            architecture: textrec_contract::Preset::Tiny.architecture(),
            charset: "ab".into(),
            config: serde_json::json!({}),
        }
    }

    fn write(step: u64) -> ToWrite {
        ToWrite {
            state: state(step),
            weights: vec![1, 2, 3],
            optimizer: vec![4],
            best: None,
            ema: None,
        }
    }

    #[tokio::test]
    async fn newest_complete_wins_and_corrupt_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().to_str().unwrap()).unwrap();
        assert!(load_newest(&store).await.unwrap().is_none());
        for s in [5, 10, 15] {
            save(&store, write(s)).await.unwrap();
        }
        // A partial folder (no manifest) newer than all.
        store
            .put(
                "checkpoints/step-0000000020/weights.safetensors",
                Bytes::from_static(b"x"),
            )
            .await
            .unwrap();
        assert_eq!(load_newest(&store).await.unwrap().unwrap().state.step, 15);
        std::fs::write(
            tmp.path()
                .join("checkpoints/step-0000000015/weights.safetensors"),
            b"bad",
        )
        .unwrap();
        assert_eq!(load_newest(&store).await.unwrap().unwrap().state.step, 10);
        // Resumed from 10: the corrupt 15 and partial 20 must not outrank what comes next.
        prune(&store, 1, 10, &[]).await.unwrap();
        let left = store.list_dirs("checkpoints").await.unwrap();
        assert_eq!(left, vec!["step-0000000010"]);
    }

    #[tokio::test]
    async fn prune_keeps_the_checkpoint_progress_names_until_it_names_a_newer_one() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().to_str().unwrap()).unwrap();
        for s in [5, 10, 15] {
            save(&store, write(s)).await.unwrap();
        }
        let left = || async { store.list_dirs("checkpoints").await.unwrap() };
        // 15 just written, progress.json still names 10: keep = 1 keeps both.
        prune(&store, 1, 15, &[10]).await.unwrap();
        assert_eq!(left().await, vec!["step-0000000010", "step-0000000015"]);
        // A name newer than the one just written protects nothing: leftovers still go.
        save(&store, write(20)).await.unwrap();
        prune(&store, 1, 15, &[20]).await.unwrap();
        assert_eq!(left().await, vec!["step-0000000015"]);
    }

    #[tokio::test]
    async fn all_checkpoints_corrupt_is_an_error_and_nothing_is_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().to_str().unwrap()).unwrap();
        for s in [5, 10] {
            save(&store, write(s)).await.unwrap();
            std::fs::write(
                tmp.path()
                    .join(format!("checkpoints/step-{s:010}/optimizer.safetensors")),
                b"flipped",
            )
            .unwrap();
        }
        let err = load_newest(&store).await.err().unwrap().to_string();
        assert!(
            err.contains("all 2 complete checkpoint(s) are corrupt"),
            "{err}"
        );
        assert!(
            err.contains("step-0000000010") && err.contains("step-0000000005"),
            "{err}"
        );
        let mut left = store.list_dirs("checkpoints").await.unwrap();
        left.sort();
        assert_eq!(left, vec!["step-0000000005", "step-0000000010"]);
    }

    #[tokio::test]
    async fn only_incomplete_checkpoints_start_afresh() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().to_str().unwrap()).unwrap();
        store
            .put(
                "checkpoints/step-0000000005/weights.safetensors",
                Bytes::from_static(b"x"),
            )
            .await
            .unwrap();
        assert!(load_newest(&store).await.unwrap().is_none());
    }
}
