//! The trial's checkpoints and progress: snapshots taken at their step and written in the
//! background mid-run ([`super::super::background_writes`]), written synchronously at the end,
//! and pruned to `checkpoint.keep` without ever removing the one `progress.json` names.

use std::time::Instant;

use anyhow::{Context as _, Result};
use textrec_contract::metrics::{TrialProgress, WorkerPhase};
use textrec_model::tensorio;

use super::super::background_writes::{self, Ended};
use super::super::checkpoint;
use super::super::ema::Ema;
use super::super::progress;
use super::Trial;

impl Trial<'_> {
    /// The checkpoints `progress.json` names or is about to (a write in flight): pruning
    /// spares them.
    pub(super) fn checkpoints_named(&self) -> Vec<u64> {
        self.progress_names
            .into_iter()
            .chain(self.writes.progress_in_flight_names())
            .collect()
    }

    /// The bytes of a checkpoint of the current step, as a resume needs them; restarts the
    /// checkpoint clock.
    pub(super) fn checkpoint_snapshot(&mut self) -> Result<checkpoint::ToWrite> {
        self.state.elapsed_s = self.elapsed();
        self.state.loss_scale = self.scaler.as_ref().map(|s| s.scale);
        self.last_checkpoint = Instant::now();
        Ok(checkpoint::ToWrite {
            state: self.state.clone(),
            weights: tensorio::save_varstore(&self.vs)?,
            optimizer: tensorio::to_safetensors(&self.opt.state_tensors(), None)?,
            best: self.best_weights.clone(),
            ema: self.ema.as_ref().map(Ema::to_safetensors).transpose()?,
        })
    }

    pub(super) fn checkpoint_is_current(&self) -> bool {
        self.checkpoint
            .as_ref()
            .is_some_and(|c| c.step == self.state.step)
    }

    /// Write a checkpoint of the current step and then progress, waiting for both; for the
    /// end of the trial, after [`Self::settle_background_writes`].
    pub(super) fn save_checkpoint(&mut self) -> Result<()> {
        if self.checkpoint_is_current() {
            return Ok(()); // nothing new since the last one (e.g. stop right after resume)
        }
        let started = Instant::now();
        let ckpt = self.checkpoint_snapshot()?;
        let keep = self.cfg.checkpoint.keep;
        let step = self.state.step;
        let reference = self
            .ctx
            .rt
            .block_on(checkpoint::save(&self.ctx.store, ckpt))
            .with_context(|| {
                format!(
                    "the checkpoint of step {step} that ends this run was not stored; {}",
                    background_writes::safely_stored(self.checkpoint.as_ref())
                )
            })?;
        self.display.note(format!(
            "step {step}: checkpoint written to {} ({:.2}s)",
            reference.url,
            started.elapsed().as_secs_f64()
        ));
        self.checkpoint = Some(reference);
        // Progress names the new checkpoint before the older ones go.
        self.publish(WorkerPhase::Running)?;
        let named = self.checkpoints_named();
        self.ctx
            .rt
            .block_on(checkpoint::prune(&self.ctx.store, keep, step, &named))
    }

    /// Between steps: take in the background writes that ended, then start the checkpoint and
    /// progress writes that are owed and whose previous write is done.
    ///
    /// A checkpoint that comes due while the previous one is still being written stays owed,
    /// and is taken at the first step after that write ends rather than queued: the snapshot
    /// is then as fresh as it can be, and no second copy of the weights and optimizer state
    /// waits in memory behind a slow store. Progress works the same way (the latest wins); the
    /// metrics records it missed are in the next snapshot, since each one holds them all.
    pub(super) fn tend_background_writes(&mut self) -> Result<()> {
        for ended in self.writes.take_ended() {
            self.take_in(ended, false);
        }
        match (self.checkpoint_owed, self.writes.checkpoint_in_flight()) {
            (true, None) => {
                self.checkpoint_owed = false;
                self.checkpoint_delayed = false;
                if !self.checkpoint_is_current() {
                    let ckpt = self.checkpoint_snapshot()?;
                    let named = self.checkpoints_named();
                    self.writes.start_checkpoint(
                        &self.ctx.store,
                        ckpt,
                        self.cfg.checkpoint.keep,
                        named,
                    );
                }
            }
            // Said once per write: a store that hangs stays silent until the client gives up,
            // minutes later.
            (true, Some((step, started))) if !self.checkpoint_delayed => {
                self.checkpoint_delayed = true;
                self.display.warn(format!(
                    "step {}: a checkpoint is due, but the one of step {step} is still being written after {:.1}s (the storage is slow or not answering); training continues, and the next checkpoint is taken once that write ends; {}",
                    self.state.step,
                    started.elapsed().as_secs_f64(),
                    background_writes::safely_stored(self.checkpoint.as_ref())
                ));
            }
            _ => {}
        }
        if self.progress_owed && !self.writes.progress_busy() {
            self.progress_owed = false;
            let p = self.progress(WorkerPhase::Running, None, None);
            self.writes
                .start_progress(&self.ctx.store, self.metrics.unflushed(), p);
        }
        Ok(())
    }

    /// Before the final writes, which no background write may overtake: wait for the writes in
    /// flight (a stop too: a write under way is closer to done than the final one, which a
    /// short grace period may not see finished). Owed writes are dropped: the final writes
    /// supersede them.
    pub(super) fn settle_background_writes(&mut self) {
        for ended in self.writes.wait_all() {
            self.take_in(ended, true);
        }
        self.checkpoint_owed = false;
        self.progress_owed = false;
    }

    /// Record the outcome of a background write. A failure is a warning: training goes on
    /// (or, when `ending`, the final writes follow), and progress keeps naming the last
    /// checkpoint that was stored completely.
    pub(super) fn take_in(&mut self, ended: Ended, ending: bool) {
        let now = self.state.step;
        let next = if ending {
            "the final writes follow"
        } else {
            "training continues"
        };
        match ended {
            Ended::Checkpoint {
                step,
                started,
                outcome: Ok(written),
            } => {
                self.display.note(format!(
                    "step {now}: checkpoint of step {step} written to {} ({:.2}s, in the background)",
                    written.reference.url,
                    started.elapsed().as_secs_f64()
                ));
                if let Err(e) = written.pruned {
                    self.display.warn(format!(
                        "step {now}: checkpoints older than {} were not pruned to checkpoint.keep = {} ({e:#}); {next}, and the next checkpoint prunes them",
                        written.reference.url, self.cfg.checkpoint.keep
                    ));
                }
                self.checkpoint = Some(written.reference);
                // So that progress.json names it.
                self.progress_owed = true;
            }
            Ended::Checkpoint {
                step,
                outcome: Err(e),
                ..
            } => {
                let retry = if ending {
                    ""
                } else {
                    " and tries again at the next checkpoint"
                };
                self.display.warn(format!(
                    "step {now}: the checkpoint of step {step} was NOT stored: {e:#}; {next}{retry}; {}",
                    background_writes::safely_stored(self.checkpoint.as_ref())
                ));
            }
            Ended::Progress {
                names,
                outcome: Ok(version),
                ..
            } => {
                self.progress_names = names;
                if let Some(v) = version {
                    self.metrics.mark_flushed(v);
                }
            }
            Ended::Progress {
                step,
                outcome: Err(e),
                ..
            } => {
                self.display.warn(format!(
                    "step {now}: progress of step {step} (progress.json, metrics.jsonl) was NOT stored: {e:#}; {next}, and the next progress write stores the metrics records this one missed; {}",
                    background_writes::safely_stored(self.checkpoint.as_ref())
                ));
            }
        }
    }

    /// Whether a mid-run checkpoint is due (the last step's is written after the loop).
    pub(super) fn checkpoint_due(&self) -> bool {
        let c = &self.cfg.checkpoint;
        let s = self.state.step;
        (c.every_steps > 0 && s.is_multiple_of(c.every_steps))
            || (c.every_seconds > 0 && self.last_checkpoint.elapsed().as_secs() >= c.every_seconds)
    }

    /// The end of a stopped trial: its checkpoint, then progress saying how to resume.
    pub(super) fn end_interrupted(&mut self) -> Result<TrialProgress> {
        self.save_checkpoint()?;
        let p = self.progress(WorkerPhase::Interrupted, None, None);
        // The metrics too: a checkpoint of this step written in the background (a stop that
        // came just after the loop handed it over) makes the save above a no-op.
        self.publish_final(&p)?;
        tracing::info!(
            "interrupted at step {}; resume by running the same command again",
            self.state.step
        );
        Ok(p)
    }

    /// Write the metrics and the trial's last `progress.json`.
    pub(super) fn publish_final(&mut self, p: &TrialProgress) -> Result<()> {
        let ctx = self.ctx;
        ctx.rt.block_on(async {
            self.metrics.flush(&ctx.store).await?;
            progress::write(&ctx.store, p).await
        })
    }
}
