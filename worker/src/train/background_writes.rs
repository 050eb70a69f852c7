//! Checkpoints, `progress.json` and `metrics.jsonl` written while training goes on.
//!
//! Mid-run writes make a restart cheaper and show progress; they are not what a trial is for.
//! When the storage stops answering, `object_store` retries a request for minutes before it
//! gives up, so writing from the loop would stall training for that long and then fail a trial
//! that had nothing wrong with it. Instead the loop takes each snapshot itself, at the step it
//! is due (the bytes a resume needs, exactly as a synchronous write would store them), and
//! hands it to a task on the trial's runtime; a later step takes the outcome in. The writes at
//! the end of a trial stay synchronous and fatal (see [`super::trainer`]).
//!
//! At most one write of each kind is in flight: a store that is slow or down must not collect
//! a backlog of snapshots, each as large as the model and its optimizer state.

use std::time::Instant;

use anyhow::{anyhow, Result};
use textrec_contract::metrics::{CheckpointRef, TrialProgress};
use textrec_contract::Store;
use tokio::runtime::{Runtime, RuntimeFlavor};
use tokio::task::JoinHandle;

use super::checkpoint::{self, ToWrite};
use super::metrics_log::MetricsSnapshot;
use super::progress;

/// A checkpoint folder that was written completely.
pub struct CheckpointWritten {
    /// Where it is; safe to name in `progress.json`.
    pub reference: CheckpointRef,
    /// Deleting the checkpoints beyond `checkpoint.keep`, which only runs once the new one is
    /// complete. Its failure leaves extra folders behind, nothing worse.
    pub pruned: Result<()>,
}

/// A background write that ended, successfully or not.
pub enum Ended {
    /// A checkpoint folder (then pruning).
    Checkpoint {
        /// The step it was taken at.
        step: u64,
        /// When it was handed over.
        started: Instant,
        /// The folder, or why it is incomplete.
        outcome: Result<CheckpointWritten>,
    },
    /// `metrics.jsonl` (when it had new records) and `progress.json`.
    Progress {
        /// The step it was taken at.
        step: u64,
        /// The step of the checkpoint it names.
        names: Option<u64>,
        /// The metrics version stored (see [`super::metrics_log::MetricsLog::mark_flushed`]),
        /// `None` when the metrics had nothing new, or why the write failed.
        outcome: Result<Option<u64>>,
    },
}

/// A write in flight.
struct InFlight<T> {
    task: JoinHandle<Result<T>>,
    step: u64,
    started: Instant,
    /// For a progress write, the step of the checkpoint it names.
    names: Option<u64>,
}

/// The trial's writes in flight: at most one checkpoint and one progress snapshot.
///
/// Dropping it (a trial that ends with an error) cancels them: the caller records the failure
/// in `progress.json` next, and an older snapshot must not overwrite it.
pub struct BackgroundWrites<'rt> {
    rt: &'rt Runtime,
    checkpoint: Option<InFlight<CheckpointWritten>>,
    progress: Option<InFlight<Option<u64>>>,
}

impl<'rt> BackgroundWrites<'rt> {
    /// Writes that run on `rt`, which must be multi-threaded: on a current-thread runtime
    /// nothing would move them on while the loop trains.
    pub fn new(rt: &'rt Runtime) -> Self {
        assert_eq!(
            rt.handle().runtime_flavor(),
            RuntimeFlavor::MultiThread,
            "background writes need a multi-threaded runtime"
        );
        Self {
            rt,
            checkpoint: None,
            progress: None,
        }
    }

    /// The step and start of the checkpoint write started and not taken in yet, if any.
    pub fn checkpoint_in_flight(&self) -> Option<(u64, Instant)> {
        self.checkpoint.as_ref().map(|w| (w.step, w.started))
    }

    /// Whether a progress write was started and its outcome not taken in yet.
    pub fn progress_busy(&self) -> bool {
        self.progress.is_some()
    }

    /// The step of the checkpoint that the progress write in flight names, if any.
    pub fn progress_in_flight_names(&self) -> Option<u64> {
        self.progress.as_ref().and_then(|w| w.names)
    }

    /// Write `ckpt`, then prune to `keep` checkpoints, sparing those in `named` (see
    /// [`checkpoint::prune`]). Call only when none is [in flight](Self::checkpoint_in_flight):
    /// two checkpoint writes at once could prune each other.
    pub fn start_checkpoint(&mut self, store: &Store, ckpt: ToWrite, keep: usize, named: Vec<u64>) {
        assert!(self.checkpoint.is_none(), "a checkpoint write is in flight");
        let step = ckpt.state.step;
        let store = store.clone();
        let task = self.rt.spawn(async move {
            let reference = checkpoint::save(&store, ckpt).await?;
            let pruned = checkpoint::prune(&store, keep, step, &named).await;
            Ok(CheckpointWritten { reference, pruned })
        });
        self.checkpoint = Some(InFlight {
            task,
            step,
            started: Instant::now(),
            names: None,
        });
    }

    /// Write `metrics` (if any) and then `progress`. Call only when not
    /// [`Self::progress_busy`]: an older snapshot must not overwrite a newer one.
    pub fn start_progress(
        &mut self,
        store: &Store,
        metrics: Option<MetricsSnapshot>,
        progress: TrialProgress,
    ) {
        assert!(self.progress.is_none(), "a progress write is in flight");
        let step = progress.step;
        let names = progress.checkpoint.as_ref().map(|c| c.step);
        let store = store.clone();
        let task = self.rt.spawn(async move {
            let version = match metrics {
                Some(m) => Some(m.write(&store).await?),
                None => None,
            };
            progress::write(&store, &progress).await?;
            Ok(version)
        });
        self.progress = Some(InFlight {
            task,
            step,
            started: Instant::now(),
            names,
        });
    }

    /// The writes that have ended since the last call; never waits for one.
    pub fn take_ended(&mut self) -> Vec<Ended> {
        let mut ended = Vec::new();
        if self
            .checkpoint
            .as_ref()
            .is_some_and(|w| w.task.is_finished())
        {
            ended.extend(self.wait_checkpoint());
        }
        if self.progress.as_ref().is_some_and(|w| w.task.is_finished()) {
            ended.extend(self.wait_progress());
        }
        ended
    }

    /// Wait for every write in flight to end.
    pub fn wait_all(&mut self) -> Vec<Ended> {
        self.wait_checkpoint()
            .into_iter()
            .chain(self.wait_progress())
            .collect()
    }

    fn wait_checkpoint(&mut self) -> Option<Ended> {
        let w = self.checkpoint.take()?;
        Some(Ended::Checkpoint {
            step: w.step,
            started: w.started,
            outcome: self.join(w.task),
        })
    }

    fn wait_progress(&mut self) -> Option<Ended> {
        let w = self.progress.take()?;
        Some(Ended::Progress {
            step: w.step,
            names: w.names,
            outcome: self.join(w.task),
        })
    }

    fn join<T>(&self, task: JoinHandle<Result<T>>) -> Result<T> {
        self.rt
            .block_on(task)
            .map_err(|e| anyhow!("the write stopped before it finished: {e}"))?
    }
}

impl Drop for BackgroundWrites<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.checkpoint.take() {
            w.task.abort();
        }
        if let Some(w) = self.progress.take() {
            w.task.abort();
        }
    }
}

/// Where a restart would begin now, for the warnings about writes that failed.
pub fn safely_stored(checkpoint: Option<&CheckpointRef>) -> String {
    match checkpoint {
        Some(c) => format!(
            "the last checkpoint safely stored is {} (step {})",
            c.url, c.step
        ),
        None => "no checkpoint is stored yet (a restart now would begin at step 0)".to_string(),
    }
}
