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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use tch::nn::VarStore;
use tch::Device;
use textrec_contract::charset::IAM_CHARSET;
use textrec_contract::exit::ConfigError;
use textrec_contract::manifest::{ModelManifest, ParentModel};
use textrec_contract::metrics::{
    CheckpointRef, EvalPoint, MetricsRecord, ModelRef, RecordKind, TrialProgress, WorkerPhase,
};
use textrec_contract::{Store, TrainConfig};
use textrec_model::autocast::Autocast;
use textrec_model::data::{open_training_data, Loader, Sampler};
use textrec_model::lm::LanguageModel;
use textrec_model::metrics::ScoreCard;
use textrec_model::net::{DecodeMode, Recognizer};
use textrec_model::tensorio;
use textrec_model::Tokenizer;
use tokio::runtime::Runtime;

mod comparison;
mod decoding_choice;
mod fine_tune;
mod model_choice;
mod start;
mod writes;

use self::fine_tune::fetch_parent;
use self::start::{open_validation_sets, resume_or_start, Start};
use super::background_writes::BackgroundWrites;
use super::checkpoint::TrainState;
use super::ema::Ema;
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
    /// The average of the weights that evaluations read (`optimizer.ema_decay`).
    ema: Option<Ema>,
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

    /// Record and print the training figures of the steps in `window`, which began at
    /// `started`.
    fn log_training(&mut self, window: &Window, started: Instant) {
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let sps = window.samples as f64 / secs;
        self.samples_per_sec = Some(sps);
        let mut rec = self.record(RecordKind::Train);
        rec.loss = Some(window.loss_sum / window.steps as f64);
        rec.lr = Some(self.state.lr);
        rec.samples_per_sec = Some(sps);
        rec.peak_rss_mib = peak_rss_mib();
        let memory = rec
            .peak_rss_mib
            .map(|m| format!(", peak RSS {m:.0} MiB"))
            .unwrap_or_default();
        self.display.report(format!(
            "step {}/{}: loss {:.4} lr {:.2e} {:.1} samples/s{memory}",
            self.state.step,
            self.cfg.max_steps,
            rec.loss.unwrap_or_default(),
            self.state.lr,
            sps
        ));
        self.metrics.push(&rec);
        self.progress_owed = true;
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
        if let Some(ema) = &mut self.ema {
            ema.update(completed + 1);
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

    /// Evaluate every validation set now (the objective's first), with the weights' average
    /// when the trial keeps one; `false` when cut short by a stop request.
    fn evaluate(&mut self, vals: &[ValidationSet]) -> Result<bool> {
        if let Some(ema) = &mut self.ema {
            ema.swap();
        }
        let evaluated = self.evaluate_current(vals);
        // Swapped back whatever happened: the optimizer goes on with its own weights.
        if let Some(ema) = &mut self.ema {
            ema.swap();
        }
        evaluated
    }

    /// [`Self::evaluate`] with the weights the network holds now.
    fn evaluate_current(&mut self, vals: &[ValidationSet]) -> Result<bool> {
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

    fn eval_due(&self) -> bool {
        let s = self.state.step;
        s > 0
            && (s.is_multiple_of(self.cfg.eval_interval) || s == self.cfg.max_steps)
            && self.state.last_eval_step != Some(s)
    }
}

/// The process's peak resident memory so far, in MiB (`VmHWM`); `None` off Linux. The kernel
/// keeps resident-page counts per CPU and sums them approximately, so a later read of `VmHWM`
/// can come out a few pages lower than an earlier one; the highest value read is returned, so
/// the reported peak never goes down.
fn peak_rss_mib() -> Option<f64> {
    static HIGHEST_KIB: AtomicU64 = AtomicU64::new(0);
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    let highest = HIGHEST_KIB.fetch_max(kib, Ordering::Relaxed).max(kib);
    Some(highest as f64 / 1024.0)
}

/// The weights' average a trial keeps (`optimizer.ema_decay` > 0): the resumed checkpoint's,
/// or one starting at the weights training starts from.
fn start_ema(
    cfg: &TrainConfig,
    vs: &VarStore,
    state: &TrainState,
    saved: Option<&[u8]>,
) -> Result<Option<Ema>> {
    let decay = cfg.optimizer.ema_decay;
    if decay <= 0.0 {
        return Ok(None);
    }
    let mut ema = Ema::new(vs, decay);
    match saved {
        Some(bytes) => ema.load(bytes).context("checkpoint ema")?,
        None if state.step > 0 => tracing::warn!(
            "the checkpoint at step {} keeps no average of the weights (it was written without \
             optimizer.ema_decay): the average starts from its weights",
            state.step
        ),
        None => {}
    }
    tracing::info!("evaluating an average of the weights (decay {decay})");
    Ok(Some(ema))
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
    if autocast == Autocast::CpuBf16 && !textrec_model::precision::cpu_has_native_bf16() {
        tracing::warn!(
            "precision: bf16 on a CPU without AVX512-BF16: libtorch emulates bf16 here, which \
             trains slower than fp32 (precision: fp32 would be faster)"
        );
    }

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
    let vals = open_validation_sets(cfg, &data)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let loader_threads = cfg.data.loader_threads_for(device.is_cuda(), cpus);
    tracing::info!(
        "data: train {}; {loader_threads} loader thread(s)",
        train_ds.describe()
    );

    let arch = match &parent {
        Some(p) => p.architecture.clone(),
        None => arch,
    };

    // Fresh weights come from the trial seed; a resumed run overwrites them.
    tch::manual_seed(cfg.seed as i64);
    let mut vs = VarStore::new(device);
    let net = Recognizer::new(&vs.root(), &arch, tokenizer.vocab_size());
    let mut opt = AdamW::new(vs.variables(), &cfg.optimizer);

    let Start {
        state,
        best_weights,
        checkpoint: checkpoint_ref,
        ema: saved_ema,
    } = resume_or_start(
        ctx,
        cfg,
        &arch,
        &tokenizer,
        parent.as_ref(),
        &mut vs,
        &mut opt,
    )?;
    let ema = start_ema(cfg, &vs, &state, saved_ema.as_deref())?;
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
    if !device.is_cuda() {
        tracing::info!("{}", crate::train::kernel_caches::describe());
    }

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
        loader_threads,
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
        ema,
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
            t.log_training(&window, started);
            window = Window::default();
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
    let progress = match outcome {
        Outcome::Interrupted => t.end_interrupted()?,
        Outcome::Finished => t.end_finished(&vals)?,
    };
    Ok((outcome, progress))
}
