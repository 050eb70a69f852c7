//! The training loop of one trial.
//!
//! Order within a step, chosen so that a restart at any point replays the same computation:
//! reseed torch from (seed, step) → forward/backward on the batch at data position
//! `step · batch_size` → clip → AdamW with `lr(step)` → log → evaluate (if due) → checkpoint (if
//! due, or if a stop was requested). An evaluation cut short by a signal is recorded as not done
//! (`last_eval_step`), so the resumed process runs it before its first step.
//!
//! Mid-run checkpoints and progress are snapshotted at their step and written in the background
//! ([`super::background_writes`]), so a storage outage costs warnings, not training. The writes
//! that end a trial (the last checkpoint, progress, the model) are made synchronously, after
//! the background ones, and their failure is the trial's.

use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use tch::nn::VarStore;
use tch::Device;
use textrec_contract::charset::IAM_CHARSET;
use textrec_contract::exit::ConfigError;
use textrec_contract::manifest::{
    ModelManifest, ParentModel, Provenance, ReadingSettings, MODEL_FORMAT,
};
use textrec_contract::metrics::{
    CheckpointRef, EvalPoint, MetricsRecord, ModelRef, RecordKind, TrialProgress, WorkerPhase,
    OBJECTIVE_SET,
};
use textrec_contract::{layout, Store, TrainConfig};
use textrec_model::autocast::Autocast;
use textrec_model::data::{open_dataset, open_training_data, Loader, Sampler};
use textrec_model::lm::{FolderLm, LanguageModel};
use textrec_model::metrics::ScoreCard;
use textrec_model::net::{DecodeMode, Recognizer};
use textrec_model::tensorio;
use textrec_model::Tokenizer;
use tokio::runtime::Runtime;

use super::background_writes::{self, BackgroundWrites, Ended};
use super::checkpoint::{self, TrainState, RNG_SCHEME};
use super::metrics_log::MetricsLog;
use super::optimizer::AdamW;
use super::progress::{self, Display};
use super::schedule::lr_at;
use super::signals::StopFlag;
use super::validation::ValidationSet;

/// How a trial ended (errors are returned as `Err`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `max_steps` reached and the model folder written.
    Finished,
    /// Stopped by a signal (or `--stop-at-step`) after checkpointing.
    Interrupted,
}

/// What the loop needs besides the config.
pub struct TrialContext {
    /// The trial's storage folder.
    pub store: Store,
    /// The async runtime storage calls run on. Multi-threaded, so that mid-run writes move on
    /// while the loop trains.
    pub rt: Runtime,
    /// Where tensors live.
    pub device: Device,
    /// Set by SIGTERM/SIGINT.
    pub stop: StopFlag,
    /// Stop (as if signalled) once this many steps are done.
    pub stop_at_step: Option<u64>,
    /// TrainingRun name for the provenance.
    pub run: Option<String>,
    /// Trial name for the provenance.
    pub trial: Option<String>,
}

/// The torch seed of step `step` (1-based), a pure function so dropout masks replay on resume.
pub fn step_seed(seed: u64, step: u64) -> i64 {
    // splitmix64: consecutive steps get unrelated seeds.
    let mut z =
        (seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as i64 & i64::MAX
}

/// Dynamic loss scaling for fp16 autocast: fp16 gradients underflow without it.
struct LossScaler {
    scale: f64,
    good_steps: u32,
}

impl LossScaler {
    const GROWTH_INTERVAL: u32 = 2000;

    /// After a step: grow the scale after a long run of finite gradients, halve it on overflow.
    fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= Self::GROWTH_INTERVAL {
                self.scale = (self.scale * 2.0).min(2f64.powi(24));
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
        }
    }
}

/// Running sums between two training records.
#[derive(Default)]
struct Window {
    loss_sum: f64,
    steps: u64,
    samples: u64,
    started: Option<Instant>,
}

/// Everything mutable during a trial.
struct Trial<'a> {
    cfg: &'a TrainConfig,
    ctx: &'a TrialContext,
    vs: VarStore,
    net: Recognizer,
    opt: AdamW,
    tokenizer: Tokenizer,
    state: TrainState,
    /// Shared with the checkpoint snapshots, which would otherwise copy them each time.
    best_weights: Option<Bytes>,
    /// The model training started from (`model.init_from`), for the provenance.
    parent: Option<ParentModel>,
    metrics: MetricsLog,
    /// The newest checkpoint known to be completely stored: the only one progress may name.
    checkpoint: Option<CheckpointRef>,
    /// The step of the checkpoint that the stored `progress.json` names, as far as this
    /// process wrote it: pruning spares it.
    progress_names: Option<u64>,
    /// Mid-run checkpoint and progress writes in flight.
    writes: BackgroundWrites<'a>,
    /// A checkpoint came due and is not taken yet (the previous one is still being written).
    checkpoint_owed: bool,
    /// The owed checkpoint's wait for the write in flight was reported.
    checkpoint_delayed: bool,
    /// Progress changed (a log step, an evaluation, a new checkpoint) since the last snapshot.
    progress_owed: bool,
    samples_per_sec: Option<f64>,
    /// When this process started training (elapsed = state's + this).
    session_start: Instant,
    elapsed_at_start: f64,
    last_checkpoint: Instant,
    autocast: Autocast,
    scaler: Option<LossScaler>,
    display: Display,
}

impl Trial<'_> {
    fn elapsed(&self) -> f64 {
        self.elapsed_at_start + self.session_start.elapsed().as_secs_f64()
    }

    fn progress(
        &self,
        phase: WorkerPhase,
        model: Option<ModelRef>,
        message: Option<String>,
    ) -> TrialProgress {
        TrialProgress {
            phase,
            step: self.state.step,
            max_steps: self.cfg.max_steps,
            samples_per_sec: self.samples_per_sec,
            latest: self.state.latest.clone(),
            best: self.state.best.clone(),
            checkpoint: self.checkpoint.clone(),
            model,
            resumes: self.state.resumes,
            updated: chrono::Utc::now(),
            message,
        }
    }

    fn publish(&mut self, phase: WorkerPhase) -> Result<()> {
        let p = self.progress(phase, None, None);
        self.ctx.rt.block_on(async {
            self.metrics.flush(&self.ctx.store).await?;
            progress::write(&self.ctx.store, &p).await
        })?;
        self.progress_names = p.checkpoint.map(|c| c.step);
        Ok(())
    }

    /// The checkpoints `progress.json` names or is about to (a write in flight): pruning
    /// spares them.
    fn checkpoints_named(&self) -> Vec<u64> {
        self.progress_names
            .into_iter()
            .chain(self.writes.progress_in_flight_names())
            .collect()
    }

    fn record(&self, kind: RecordKind) -> MetricsRecord {
        MetricsRecord {
            kind,
            step: self.state.step,
            time: chrono::Utc::now(),
            elapsed_s: self.elapsed(),
            loss: None,
            lr: None,
            samples_per_sec: None,
            peak_rss_mib: None,
            cer: None,
            wer: None,
            sets: Default::default(),
        }
    }

    /// One optimizer step on `batch`; returns the loss.
    fn train_step(&mut self, batch: textrec_model::data::Batch) -> Result<f64> {
        let completed = self.state.step;
        let lr = lr_at(completed, self.cfg.max_steps, &self.cfg.optimizer);
        tch::manual_seed(step_seed(self.cfg.seed, completed + 1));
        let d = self.ctx.device;
        let (images, widths) = batch.images();
        let (images, widths) = (images.to_device(d), widths.to_device(d));
        let tgt_in = batch.tgt_in.to_device(d);
        let tgt_out = batch.tgt_out.to_device(d);
        let lengths = batch.target_lengths.to_device(d);
        let recompute = self.cfg.recompute_activations;
        let (loss, head) = self.autocast.run(|| {
            let (out, head) = self.net.forward_train(&images, &widths, &tgt_in, recompute);
            let loss = self
                .net
                .loss(&out, &tgt_out, &lengths, self.cfg.optimizer.label_smoothing);
            (loss, head)
        });
        let loss_value = loss.double_value(&[]);
        self.opt.zero_grad();
        let mut finite = loss_value.is_finite();
        if finite {
            let scale = self.scaler.as_ref().map_or(1.0, |s| s.scale);
            if scale != 1.0 {
                (&loss * scale).backward();
            } else {
                loss.backward();
            }
            if let Some(head) = head {
                self.autocast.run(|| self.net.backward_head(head));
            }
            if scale != 1.0 {
                self.opt.scale_grads(1.0 / scale);
            }
            let norm = self.opt.clip_grad_norm(self.cfg.optimizer.grad_clip);
            finite = norm.is_finite();
            if finite {
                self.opt.step(lr);
            }
        }
        if let Some(s) = &mut self.scaler {
            s.update(finite);
        }
        if !finite {
            // Skipping keeps the weights sane; on CPU fp32 this points at a bad config (lr).
            self.state.skipped_steps += 1;
            self.display.note(format!(
                "step {}: loss or gradient not finite (loss {loss_value}); update skipped",
                completed + 1
            ));
        }
        self.state.step = completed + 1;
        self.state.data_position += self.cfg.batch_size as u64;
        self.state.lr = lr;
        Ok(loss_value)
    }

    /// Error totals of the current weights on `val`, read with `mode`; `None` when cut short
    /// by a stop request.
    fn score(
        &self,
        val: &ValidationSet,
        mode: DecodeMode,
        lm: Option<&LanguageModel>,
    ) -> Result<Option<ScoreCard>> {
        val.evaluate(
            &self.net,
            &self.tokenizer,
            &self.cfg.preprocess,
            self.ctx.device,
            self.cfg.batch_size,
            self.state.architecture.max_text_len,
            self.autocast,
            mode,
            lm,
            &self.ctx.stop,
        )
    }

    /// Evaluate every validation set now (the objective's first); `false` when cut short by
    /// a stop request.
    fn evaluate(&mut self, vals: &[ValidationSet]) -> Result<bool> {
        let started = Instant::now();
        let mut scores = Vec::with_capacity(vals.len());
        for val in vals {
            let card = self.score(val, DecodeMode::Joint, None)?;
            let Some(card) = card else {
                self.display
                    .note(format!("step {}: evaluation interrupted", self.state.step));
                return Ok(false);
            };
            scores.push((val.name.clone(), card.score()));
        }
        let objective = &scores[0].1;
        let point = EvalPoint {
            step: self.state.step,
            cer: objective.cer,
            wer: objective.wer,
            extra_cer: scores[1..]
                .iter()
                .map(|(name, s)| (name.clone(), s.cer))
                .collect(),
            decoding: None,
            reading_width: None,
        };
        self.state.latest = Some(point.clone());
        self.state.last_eval_step = Some(point.step);
        // Strictly better only: on a tie the earlier (less trained) weights stay.
        if self.state.best.as_ref().is_none_or(|b| point.cer < b.cer) {
            self.state.best = Some(point.clone());
            self.best_weights = Some(tensorio::save_varstore(&self.vs)?.into());
        }
        let mut rec = self.record(RecordKind::Eval);
        rec.cer = Some(point.cer);
        rec.wer = Some(point.wer);
        rec.sets = scores.iter().cloned().collect();
        self.metrics.push(&rec);
        let best = self.state.best.as_ref().expect("set above");
        let extra: String = point
            .extra_cer
            .iter()
            .map(|(name, cer)| format!(", {name} CER {cer:.4}"))
            .collect();
        let by_length: String = objective
            .by_length
            .iter()
            .map(|b| match b.max_chars {
                u32::MAX => format!(" >{}:{:.3}", b.min_chars - 1, b.cer),
                max => format!(" {}-{max}:{:.3}", b.min_chars, b.cer),
            })
            .collect();
        self.display.note(format!(
            "step {}: validation CER {:.4} WER {:.4} ({} lines, {:.1}s){extra}; best CER {:.4} at step {}; CER by length{by_length}",
            point.step,
            point.cer,
            point.wer,
            vals[0].len(),
            started.elapsed().as_secs_f64(),
            best.cer,
            best.step
        ));
        self.progress_owed = true;
        Ok(true)
    }

    /// The bytes of a checkpoint of the current step, as a resume needs them; restarts the
    /// checkpoint clock.
    fn checkpoint_snapshot(&mut self) -> Result<checkpoint::ToWrite> {
        self.state.elapsed_s = self.elapsed();
        self.state.loss_scale = self.scaler.as_ref().map(|s| s.scale);
        self.last_checkpoint = Instant::now();
        Ok(checkpoint::ToWrite {
            state: self.state.clone(),
            weights: tensorio::save_varstore(&self.vs)?,
            optimizer: tensorio::to_safetensors(&self.opt.state_tensors(), None)?,
            best: self.best_weights.clone(),
        })
    }

    fn checkpoint_is_current(&self) -> bool {
        self.checkpoint
            .as_ref()
            .is_some_and(|c| c.step == self.state.step)
    }

    /// Write a checkpoint of the current step and then progress, waiting for both; for the
    /// end of the trial, after [`Self::settle_background_writes`].
    fn save_checkpoint(&mut self) -> Result<()> {
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
    fn tend_background_writes(&mut self) -> Result<()> {
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
    fn settle_background_writes(&mut self) {
        for ended in self.writes.wait_all() {
            self.take_in(ended, true);
        }
        self.checkpoint_owed = false;
        self.progress_owed = false;
    }

    /// Record the outcome of a background write. A failure is a warning: training goes on
    /// (or, when `ending`, the final writes follow), and progress keeps naming the last
    /// checkpoint that was stored completely.
    fn take_in(&mut self, ended: Ended, ending: bool) {
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

    fn eval_due(&self) -> bool {
        let s = self.state.step;
        s > 0
            && (s.is_multiple_of(self.cfg.eval_interval) || s == self.cfg.max_steps)
            && self.state.last_eval_step != Some(s)
    }

    /// Whether a mid-run checkpoint is due (the last step's is written after the loop).
    fn checkpoint_due(&self) -> bool {
        let c = &self.cfg.checkpoint;
        let s = self.state.step;
        (c.every_steps > 0 && s.is_multiple_of(c.every_steps))
            || (c.every_seconds > 0 && self.last_checkpoint.elapsed().as_secs() >= c.every_seconds)
    }

    /// The decoding the model is served with: the mode with the lowest CER of the best
    /// weights on the objective's validation set (evaluations use `joint`; `ctc`,
    /// `attention` and, with a language model, `ctc-lm` are measured here, once). Ties go to
    /// the cheaper mode: at short training budgets the decoder reads little and the CTC head
    /// alone is as good and twice as fast. Loads the best weights into the network: call when
    /// training is over. Returns the chosen mode, every mode's objective CER, and the best
    /// weights' scores read with the chosen mode (a stop request leaves out the extra sets
    /// not read yet).
    fn choose_decoding(
        &mut self,
        vals: &[ValidationSet],
        lm: Option<&LanguageModel>,
    ) -> Result<DecodingChoice> {
        let best = self.state.best.clone().context("no evaluation happened")?;
        if self.state.architecture.ctc_weight <= 0.0 {
            // Without a CTC head, joint decoding is the attention decoder's reading.
            let mode = DecodeMode::Attention;
            return Ok(DecodingChoice::as_evaluated(mode, &best));
        }
        let weights = self.best_weights.clone().context("best weights missing")?;
        tensorio::load_varstore(&mut self.vs, &weights).context("reloading the best weights")?;
        let mut scores = Vec::new();
        let modes = [DecodeMode::Ctc, DecodeMode::Attention, DecodeMode::CtcLm];
        for mode in modes
            .into_iter()
            .filter(|&m| m != DecodeMode::CtcLm || lm.is_some())
        {
            match self.score(&vals[0], mode, lm)? {
                Some(card) => {
                    let s = card.score();
                    scores.push((mode, s.cer, s.wer));
                }
                // Stopping now keeps the measured default.
                None => return Ok(DecodingChoice::as_evaluated(DecodeMode::Joint, &best)),
            }
        }
        scores.insert(1, (DecodeMode::Joint, best.cer, best.wer));
        // Order: ctc, joint, attention, ctc-lm (the CTC head alone first; the others cost
        // about the same); the first of the lowest CERs wins.
        let (chosen, cer, wer) = first_lowest(&scores, |s| s.1);
        let by_mode: Vec<(DecodeMode, f64)> = scores.iter().map(|&(m, c, _)| (m, c)).collect();
        let listed: Vec<String> = by_mode
            .iter()
            .map(|(m, c)| format!("{} {c:.4}", m.as_str()))
            .collect();
        tracing::info!(
            "decoding: validation CER {}; the model reads with `{}`",
            listed.join(", "),
            chosen.as_str()
        );
        if chosen == DecodeMode::Joint {
            return Ok(DecodingChoice {
                by_mode,
                ..DecodingChoice::as_evaluated(chosen, &best)
            });
        }
        // The extra sets were read with `joint` at the best evaluation: read them again the way
        // the model will be served, so a trial's scores compare with another trial's.
        let mut reading = EvalPoint {
            step: best.step,
            cer,
            wer,
            extra_cer: Default::default(),
            decoding: Some(chosen),
            reading_width: None,
        };
        for val in &vals[1..] {
            match self.score(val, chosen, lm)? {
                Some(card) => reading.extra_cer.insert(val.name.clone(), card.score().cer),
                None => break,
            };
        }
        Ok(DecodingChoice {
            mode: chosen,
            by_mode,
            by_width: Vec::new(),
            reading,
        })
    }

    /// The width the model reads at: each of `reading_widths` tried on the objective's set
    /// with the chosen decoding (the best weights are loaded: call after
    /// [`Self::choose_decoding`]), the lowest CER winning and a tie going to the earlier
    /// factor. When a stretch wins, the extra sets are read again at it, so the trial's scores
    /// are what its model reads as served. A stop request keeps the lines as drawn.
    fn choose_width(
        &self,
        vals: &[ValidationSet],
        choice: &mut DecodingChoice,
        lm: Option<&LanguageModel>,
    ) -> Result<()> {
        let factors = &self.cfg.reading_widths;
        if factors.as_slice() == [1.0] {
            return Ok(());
        }
        let pre = &self.cfg.preprocess;
        let mut scores = Vec::with_capacity(factors.len());
        for &factor in factors {
            let (cer, wer) = if factor == 1.0 {
                (choice.reading.cer, choice.reading.wer)
            } else {
                let stretched = vals[0].at_width(pre, factor as f32)?;
                match self.score(&stretched, choice.mode, lm)? {
                    Some(card) => {
                        let s = card.score();
                        (s.cer, s.wer)
                    }
                    None => return Ok(()),
                }
            };
            scores.push((factor, cer, wer));
        }
        let (width, cer, wer) = first_lowest(&scores, |s| s.1);
        let listed: Vec<String> = scores
            .iter()
            .map(|(f, c, _)| format!("x{f} {c:.4}"))
            .collect();
        tracing::info!(
            "reading width: validation CER {} with `{}`; the model reads at x{width}",
            listed.join(", "),
            choice.mode.as_str()
        );
        let mut extra_cer = choice.reading.extra_cer.clone();
        if width != 1.0 {
            for val in &vals[1..] {
                let stretched = val.at_width(pre, width as f32)?;
                match self.score(&stretched, choice.mode, lm)? {
                    Some(card) => extra_cer.insert(val.name.clone(), card.score().cer),
                    None => return Ok(()),
                };
            }
        }
        choice.reading = EvalPoint {
            cer,
            wer,
            extra_cer,
            reading_width: Some(width),
            ..choice.reading.clone()
        };
        choice.by_width = scores.iter().map(|&(f, c, _)| (f, c)).collect();
        Ok(())
    }

    /// Write the final model folder (best weights + manifest, manifest last).
    fn write_model(&self, choice: &DecodingChoice, lm: Option<&FolderLm>) -> Result<ModelRef> {
        let DecodingChoice {
            mode: decoding,
            by_mode,
            by_width,
            reading,
        } = choice;
        let decoding = *decoding;
        let best = self
            .state
            .best
            .clone()
            .context("no evaluation happened, so there is no best model")?;
        let weights = self.best_weights.clone().context("best weights missing")?;
        let manifest = |files| {
            let m = ModelManifest {
                format: MODEL_FORMAT.to_string(),
                created: chrono::Utc::now(),
                architecture: self.state.architecture.clone(),
                charset: self.tokenizer.charset().to_string(),
                preprocessing: self.cfg.preprocess.clone(),
                // The objective's scores (as evaluated, joint decoding), each extra validation
                // set's CER as `cer:NAME`, the objective's CER by decoding as `cer@MODE`, in
                // that decoding by reading width as `cer@xFACTOR`, and each extra set's CER as
                // the model reads (chosen decoding and width) as `cer:NAME@MODE`.
                metrics: [("cer".to_string(), best.cer), ("wer".to_string(), best.wer)]
                    .into_iter()
                    .chain(best.extra_cer.iter().map(|(n, c)| (format!("cer:{n}"), *c)))
                    .chain(
                        by_mode
                            .iter()
                            .map(|(m, c)| (format!("cer@{}", m.as_str()), *c)),
                    )
                    .chain(by_width.iter().map(|(f, c)| (format!("cer@x{f}"), *c)))
                    .chain(
                        reading
                            .extra_cer
                            .iter()
                            .map(|(n, c)| (format!("cer:{n}@{}", decoding.as_str()), *c)),
                    )
                    .collect(),
                decoding,
                language_model: lm.map(|l| l.info.clone()),
                reading: reading
                    .reading_width
                    .filter(|&w| w != 1.0)
                    .map(|w| ReadingSettings {
                        widths: vec![w as f32],
                        reread_below: None,
                    }),
                provenance: Provenance {
                    run: self.ctx.run.clone(),
                    trial: self.ctx.trial.clone(),
                    step: best.step,
                    textrec_version: env!("CARGO_PKG_VERSION").to_string(),
                    config: self.cfg.to_json(),
                    parent: self.parent.clone(),
                },
                files,
            };
            Ok(serde_json::to_vec_pretty(&m)?)
        };
        let bytes = self.ctx.rt.block_on(
            self.ctx.store.write_folder(
                layout::MODEL,
                std::iter::once((layout::MODEL_WEIGHTS.to_string(), weights))
                    .chain(lm.map(|l| (l.info.file.clone(), Bytes::from(l.bytes.clone()))))
                    .collect(),
                manifest,
            ),
        )?;
        Ok(ModelRef {
            url: self.ctx.store.url_of(layout::MODEL),
            sha256: ModelManifest::version_of(&bytes),
            cer: reading.cer,
        })
    }
}

/// The first of the items with the lowest `cer` (ties go to the earlier, cheaper choice).
fn first_lowest<T: Copy>(items: &[T], cer: impl Fn(&T) -> f64) -> T {
    items.iter().copied().fold(
        items[0],
        |best, x| if cer(&x) < cer(&best) { x } else { best },
    )
}

/// The process's peak resident memory so far, in MiB (`VmHWM`); `None` off Linux.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// The decoding and reading width a finished trial's model is served with, and how its best
/// weights read.
struct DecodingChoice {
    mode: DecodeMode,
    /// The objective's CER in each decoding measured, in the order tried.
    by_mode: Vec<(DecodeMode, f64)>,
    /// The objective's CER with `mode` at each width measured (empty when none was compared).
    by_width: Vec<(f64, f64)>,
    /// The best weights' scores read with `mode`, at `reading.reading_width` when widths
    /// were compared.
    reading: EvalPoint,
}

impl DecodingChoice {
    /// `mode` without measuring the others: the best evaluation's own reading.
    fn as_evaluated(mode: DecodeMode, best: &EvalPoint) -> Self {
        Self {
            mode,
            by_mode: vec![(mode, best.cer)],
            by_width: Vec::new(),
            reading: EvalPoint {
                decoding: Some(mode),
                ..best.clone()
            },
        }
    }
}

/// Fetch the model `model.init_from` names and check it is one this config can start from:
/// the expected version (`model.init_sha256`) and the trainer's charset. Its architecture
/// ([`ModelSpec::adopt`]) and preprocessing ([`PreprocessConfig::adopt`]) become the trial's.
///
/// [`ModelSpec::adopt`]: textrec_contract::config::ModelSpec::adopt
/// [`PreprocessConfig::adopt`]: textrec_contract::config::PreprocessConfig::adopt
fn fetch_parent(
    rt: &Runtime,
    cfg: &TrainConfig,
    location: &str,
    tokenizer: &Tokenizer,
) -> Result<Parent> {
    let files = rt
        .block_on(crate::model_source::fetch(location))
        .with_context(|| format!("model.init_from: cannot read {location}"))?;
    let version = ModelManifest::version_of(&files.manifest_bytes);
    if let Some(want) = &cfg.model.init_sha256 {
        if !want.eq_ignore_ascii_case(&version) {
            bail!(ConfigError::new(format!(
                "initFrom.sha256 (model.init_sha256): {} has version {version}, expected {want}; \
                 the model at that location was replaced",
                files.source
            )));
        }
    }
    let m = &files.manifest;
    let arch = cfg.model.adopt(&m.architecture).map_err(|e| {
        ConfigError::new(format!(
            "{e} (model.init_from: {} has another architecture than this config's model)",
            files.source
        ))
    })?;
    if m.charset != tokenizer.charset() {
        bail!(ConfigError::new(format!(
            "model.init_from: {} reads another charset than this trainer's",
            files.source
        )));
    }
    let preprocess = cfg
        .preprocess
        .adopt(&m.preprocessing)
        .map_err(|e| ConfigError::new(format!("{e} (model.init_from: {})", files.source)))?;
    Ok(Parent {
        files,
        architecture: arch,
        preprocess,
    })
}

/// A fine-tune's parent model, and what the trial takes from it.
struct Parent {
    files: crate::model_source::ModelFiles,
    architecture: textrec_contract::config::Architecture,
    /// The parent's preprocessing (or the config's, when it names the same).
    preprocess: textrec_contract::config::PreprocessConfig,
}

/// Load the parent's weights (see [`fetch_parent`]) into `vs`.
fn init_from(vs: &mut VarStore, files: &crate::model_source::ModelFiles) -> Result<()> {
    tensorio::load_varstore(vs, &files.weights)
        .with_context(|| format!("model.init_from: loading the weights of {}", files.source))?;
    tracing::info!(
        "starting from the weights of {} (step {} of its own training)",
        files.source,
        files.manifest.provenance.step
    );
    Ok(())
}

/// Run one trial to completion or interruption. Errors after start-up are reported in
/// `progress.json` by the caller.
pub fn train(cfg: &TrainConfig, ctx: &TrialContext) -> Result<(Outcome, TrialProgress)> {
    let arch = cfg.model.resolve()?;
    let tokenizer = Tokenizer::new(IAM_CHARSET);
    let device = ctx.device;
    let autocast = Autocast::for_precision(cfg.precision, device);
    autocast
        .verify(device)
        .map_err(|e| ConfigError::new(format!("precision: {e:#}")))?;

    // Data first: a missing font or corpus is a config error and should cost no model build.
    // Data sets at storage URLs are fetched into the local cache first; `cfg` keeps the URLs,
    // so checkpoints and manifests record where the data lives, not where this pod cached it.
    let data = ctx.rt.block_on(crate::datasets::resolve_data(
        &cfg.data,
        &crate::datasets::DataCache::from_env(),
    ))?;
    let train_ds = open_training_data(&data.train, cfg.seed, IAM_CHARSET)
        .map_err(|e| ConfigError::new(format!("{e:#}")))?;

    // A fine-tune is the parent's network reading lines the parent's way: the parent decides
    // the architecture (on resume too: the checkpoint's must match it) and, unless the config
    // names the same, the preprocessing, which the validation sets below are prepared with.
    let parent = match &cfg.model.init_from {
        Some(location) => Some(fetch_parent(&ctx.rt, cfg, location, &tokenizer)?),
        None => None,
    };
    let adopted;
    let cfg = match &parent {
        Some(p) if p.preprocess != cfg.preprocess => {
            tracing::info!(
                "preprocessing taken from {}: {}",
                p.files.source,
                serde_json::to_string(&p.preprocess)?
            );
            adopted = TrainConfig {
                preprocess: p.preprocess.clone(),
                ..cfg.clone()
            };
            &adopted
        }
        _ => cfg,
    };
    // A synthetic validation set ignores the trial seed (the data module fixes it), so every
    // trial of a search is scored on the same lines.
    let sets = std::iter::once((OBJECTIVE_SET.to_string(), &data.validation)).chain(
        data.extra_validation
            .iter()
            .filter_map(|(name, spec)| spec.as_ref().map(|s| (name.clone(), s))),
    );
    let mut vals = Vec::new();
    for (name, spec) in sets {
        let field = if name == OBJECTIVE_SET {
            "data.validation".to_string()
        } else {
            format!("data.extra_validation.{name}")
        };
        let ds = open_dataset(spec, cfg.seed, IAM_CHARSET)
            .map_err(|e| ConfigError::new(format!("{field}: {e:#}")))?;
        let val = ValidationSet::load(&name, &ds, &cfg.preprocess, spec.samples)?;
        if val.is_empty() {
            bail!(ConfigError::new(format!(
                "{field}: no usable samples ({})",
                ds.describe()
            )));
        }
        tracing::info!(
            "validation set {name}: {} lines, {}",
            val.len(),
            ds.describe()
        );
        vals.push(val);
    }
    tracing::info!("data: train {}", train_ds.describe());

    let arch = match &parent {
        Some(p) => p.architecture.clone(),
        None => arch,
    };

    // Fresh weights come from the trial seed; a resumed run overwrites them.
    tch::manual_seed(cfg.seed as i64);
    let mut vs = VarStore::new(device);
    let net = Recognizer::new(&vs.root(), &arch, tokenizer.vocab_size());
    let mut opt = AdamW::new(vs.variables(), &cfg.optimizer);

    let prior_progress = ctx.rt.block_on(progress::read(&ctx.store));
    let loaded = ctx.rt.block_on(checkpoint::load_newest(&ctx.store))?;
    let mut best_weights = None;
    let mut checkpoint_ref = None;
    let state = match loaded {
        Some(l) => {
            if l.state.architecture != arch {
                bail!(ConfigError::new(format!(
                    "model: the checkpoint at {} was trained with a different architecture ({:?}); \
                     use a new output location or the original config",
                    l.reference.url, l.state.architecture
                )));
            }
            if l.state.charset != tokenizer.charset() {
                bail!(ConfigError::new(format!(
                    "the checkpoint at {} has another charset",
                    l.reference.url
                )));
            }
            if l.state.seed != cfg.seed {
                tracing::warn!(
                    "checkpoint seed {} differs from the config's {}; continuing with the checkpoint's data order would be wrong, using the config's",
                    l.state.seed,
                    cfg.seed
                );
            }
            tensorio::load_varstore(&mut vs, &l.weights).context("checkpoint weights")?;
            let moments =
                tensorio::from_safetensors(&l.optimizer, device).context("checkpoint optimizer")?;
            opt.load_state(moments, l.state.step)
                .context("checkpoint optimizer")?;
            best_weights = l.best;
            let mut state = l.state;
            state.resumes = state
                .resumes
                .max(prior_progress.as_ref().map_or(0, |p| p.resumes))
                + 1;
            tracing::info!(
                "resuming from checkpoint {} at step {} (resume #{})",
                l.reference.url,
                state.step,
                state.resumes
            );
            checkpoint_ref = Some(l.reference);
            state
        }
        None => {
            if let Some(p) = &parent {
                init_from(&mut vs, &p.files)?;
            }
            TrainState {
                step: 0,
                data_position: 0,
                lr: 0.0,
                elapsed_s: 0.0,
                seed: cfg.seed,
                rng: RNG_SCHEME.to_string(),
                best: None,
                latest: None,
                last_eval_step: None,
                resumes: 0,
                loss_scale: None,
                skipped_steps: 0,
                architecture: arch.clone(),
                charset: tokenizer.charset().to_string(),
                config: cfg.to_json(),
            }
        }
    };
    // Gradients exist (as zeros) from the start in fresh and resumed runs alike, so every
    // backward pass accumulates into a zeroed buffer: identical arithmetic either way.
    opt.init_grads();
    tracing::info!(
        "model: {} parameter tensors ({} with weight decay), {:.2}M weights; device {device:?}, autocast {}",
        opt.len(),
        opt.decayed_names().len(),
        vs.trainable_variables().iter().map(|t| t.numel()).sum::<usize>() as f64 / 1e6,
        autocast.label()
    );

    let mut metrics = ctx.rt.block_on(MetricsLog::load(&ctx.store, state.step))?;
    metrics.set_images(vals[0].preview_images(ScoreCard::SAMPLES));
    // A mix is addressed by position (it samples its sources itself); a plain set by index.
    let sampler = Sampler::new(train_ds.len(), cfg.seed);
    let mut loader = Loader::start(
        train_ds,
        sampler,
        tokenizer.clone(),
        cfg.preprocess.clone(),
        cfg.batch_size,
        cfg.data.bucket_batches,
        state.data_position,
        cfg.data.loader_threads.max(1),
        cfg.data.prefetch_batches.max(1),
    );

    let scaler = autocast.needs_loss_scaling().then(|| LossScaler {
        scale: state.loss_scale.unwrap_or(65536.0),
        good_steps: 0,
    });
    let elapsed_at_start = state.elapsed_s;
    let mut t = Trial {
        cfg,
        ctx,
        writes: BackgroundWrites::new(&ctx.rt),
        checkpoint_owed: false,
        checkpoint_delayed: false,
        progress_owed: false,
        progress_names: None,
        vs,
        net,
        opt,
        tokenizer,
        display: Display::new(state.step, cfg.max_steps),
        state,
        best_weights,
        parent: parent.map(|p| ParentModel {
            url: p.files.source.clone(),
            sha256: ModelManifest::version_of(&p.files.manifest_bytes),
        }),
        metrics,
        checkpoint: checkpoint_ref,
        samples_per_sec: None,
        session_start: Instant::now(),
        elapsed_at_start,
        last_checkpoint: Instant::now(),
        autocast,
        scaler,
    };
    t.publish(WorkerPhase::Running)?;

    let mut window = Window::default();
    let stop = t.ctx.stop.clone();
    let outcome = loop {
        // An evaluation due at this step that has not happened (resumed right after a cut-short
        // one, or the first iteration after a checkpoint at an eval step).
        if t.eval_due() && !t.evaluate(&vals)? {
            break Outcome::Interrupted;
        }
        if t.ctx.stop.is_set() {
            break Outcome::Interrupted;
        }
        if t.state.step >= cfg.max_steps {
            break Outcome::Finished;
        }
        let Some(batch) = loader
            .next_batch_unless(&|| stop.is_set())
            .context("loading a training batch")?
        else {
            break Outcome::Interrupted;
        };
        let started = *window.started.get_or_insert_with(Instant::now);
        let n = batch.ids.len() as u64;
        let loss = t.train_step(batch)?;
        window.loss_sum += loss;
        window.steps += 1;
        window.samples += n;
        t.display.step(t.state.step);

        if t.state.step.is_multiple_of(cfg.log_interval) || t.state.step == cfg.max_steps {
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            let sps = window.samples as f64 / secs;
            t.samples_per_sec = Some(sps);
            let mut rec = t.record(RecordKind::Train);
            rec.loss = Some(window.loss_sum / window.steps as f64);
            rec.lr = Some(t.state.lr);
            rec.samples_per_sec = Some(sps);
            rec.peak_rss_mib = peak_rss_mib();
            let memory = rec
                .peak_rss_mib
                .map(|m| format!(", peak RSS {m:.0} MiB"))
                .unwrap_or_default();
            t.display.report(format!(
                "step {}/{}: loss {:.4} lr {:.2e} {:.1} samples/s{memory}",
                t.state.step,
                cfg.max_steps,
                rec.loss.unwrap_or_default(),
                t.state.lr,
                sps
            ));
            t.metrics.push(&rec);
            window = Window::default();
            t.progress_owed = true;
        }
        if t.eval_due() && !t.evaluate(&vals)? {
            break Outcome::Interrupted;
        }
        // After the evaluation, so a planned stop never cuts one short.
        if t.ctx.stop_at_step == Some(t.state.step) {
            t.ctx.stop.set();
        }
        // A stop's checkpoint and the last step's are written after the loop, synchronously.
        if !t.ctx.stop.is_set() && t.state.step < cfg.max_steps {
            t.checkpoint_owed |= t.checkpoint_due();
            t.tend_background_writes()?;
        }
    };

    t.display.finish();
    t.settle_background_writes();
    match outcome {
        Outcome::Interrupted => {
            t.save_checkpoint()?;
            let p = t.progress(WorkerPhase::Interrupted, None, None);
            // The metrics too: a checkpoint of this step written in the background (a stop
            // that came just after the loop handed it over) makes the save above a no-op.
            ctx.rt.block_on(async {
                t.metrics.flush(&ctx.store).await?;
                progress::write(&ctx.store, &p).await
            })?;
            tracing::info!(
                "interrupted at step {}; resume by running the same command again",
                t.state.step
            );
            Ok((Outcome::Interrupted, p))
        }
        Outcome::Finished => {
            t.save_checkpoint()?;
            // `ctc-lm` searches the CTC head's frames: no head, no language model.
            let lm = if t.state.architecture.ctc_weight > 0.0 {
                super::language_model::build(t.cfg, t.tokenizer.charset())?
            } else {
                None
            };
            let mut choice = t.choose_decoding(&vals, lm.as_ref().map(|l| &l.model))?;
            t.choose_width(&vals, &mut choice, lm.as_ref().map(|l| &l.model))?;
            let decoding = choice.mode;
            let model = t.write_model(&choice, lm.as_ref())?;
            let mut p = t.progress(WorkerPhase::Succeeded, Some(model.clone()), None);
            // The finished trial's best is its model as served, so trials that chose different
            // decodings compare on what they read.
            p.best = Some(choice.reading);
            ctx.rt.block_on(async {
                t.metrics.flush(&ctx.store).await?;
                progress::write(&ctx.store, &p).await
            })?;
            tracing::info!(
                "finished {} steps in {:.1}s; model (best CER {:.4} with `{}`) written to {}",
                t.state.step,
                t.elapsed(),
                model.cer,
                decoding.as_str(),
                model.url
            );
            Ok((Outcome::Finished, p))
        }
    }
}
