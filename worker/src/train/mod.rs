//! `textrec-worker train`: one resumable training trial.
//!
//! ```text
//! textrec-worker train --config trial.yaml --output s3://bucket/run/trial-0 [--set optimizer.lr=3e-4]
//! ```
//!
//! Exit codes ([`textrec_contract::exit`]): 0 finished (model written under `OUTPUT/model/`),
//! 75 interrupted by SIGTERM/SIGINT after checkpointing (run the same command to resume),
//! 78 configuration error (bad field, missing font or corpus, empty data, unusable output),
//! 1 anything else.
//!
//! On CPU with a fixed thread count a trial resumed from any checkpoint ends with weights
//! bit-identical to an uninterrupted one; see [`checkpoint`] for what that takes.

pub mod background_writes;
pub mod checkpoint;
pub mod ema;
pub mod kernel_caches;
pub mod language_model;
pub mod metrics_log;
pub mod optimizer;
pub mod progress;
pub mod schedule;
pub mod signals;
pub mod tensorboard;
pub mod trainer;
pub mod validation;

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use textrec_contract::exit::{self, ConfigError};
use textrec_contract::metrics::{TrialProgress, WorkerPhase};
use textrec_contract::{Store, TrainConfig};

use self::signals::StopFlag;
use self::trainer::{Outcome, TrialContext};

/// Arguments of `train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Trial config (YAML or JSON); every field has a default, so it may be omitted.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Where checkpoints, metrics and the model go: file://, s3://, gs://, az:// or a path.
    #[arg(long, short = 'o')]
    pub output: String,
    /// Override one config field by its dotted path, e.g. `--set optimizer.lr=3e-4`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// TrainingRun name, recorded in the model's provenance.
    #[arg(long, env = "TEXTREC_RUN")]
    pub run: Option<String>,
    /// Trial name, recorded in the model's provenance.
    #[arg(long, env = "TEXTREC_TRIAL")]
    pub trial: Option<String>,
    /// Write the final progress JSON here (Kubernetes' terminationMessagePath).
    #[arg(long, value_name = "PATH")]
    pub termination_log: Option<PathBuf>,
    /// libtorch CPU threads; overrides the config's `threads`. Fix it for reproducible runs.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop as if interrupted (checkpoint, exit 75) once this many steps are done; for
    /// time-sliced jobs and resume tests.
    #[arg(long, value_name = "STEP")]
    pub stop_at_step: Option<u64>,
}

/// Run `train`; returns the process exit code.
pub fn run(args: TrainArgs) -> Result<i32> {
    let (cfg, ctx) = match setup(&args) {
        Ok(x) => x,
        Err(e) => {
            // The operator reads the termination message for every exit, config errors included.
            if let Some(path) = &args.termination_log {
                let p = failed(None, 0, &e);
                if let Err(w) = progress::write_termination_log(path, &p) {
                    tracing::warn!("{w:#}");
                }
            }
            return Err(e);
        }
    };
    match trainer::train(&cfg, &ctx) {
        Ok((outcome, progress)) => {
            if let Some(path) = &args.termination_log {
                progress::write_termination_log(path, &progress)?;
            }
            Ok(match outcome {
                Outcome::Finished => exit::SUCCESS,
                Outcome::Interrupted => exit::INTERRUPTED,
            })
        }
        Err(e) => {
            // Record the failure in progress.json and the termination log, keeping what the
            // last snapshot knew (step, checkpoint) so the operator can still show it.
            let prior = ctx.rt.block_on(progress::read(&ctx.store));
            let p = failed(prior, cfg.max_steps, &e);
            if let Err(w) = ctx.rt.block_on(progress::write(&ctx.store, &p)) {
                tracing::warn!("cannot record the failure in progress.json: {w:#}");
            }
            if let Some(path) = &args.termination_log {
                if let Err(w) = progress::write_termination_log(path, &p) {
                    tracing::warn!("{w:#}");
                }
            }
            Err(e)
        }
    }
}

/// How long the start-up check of `--output` waits for the storage to answer. A healthy store
/// answers a small write in well under a second; one that has not answered in a minute is
/// misconfigured or unreachable, and waiting out the client's retries (three minutes) would
/// only delay the error.
const OUTPUT_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Parse the config, fix the thread count, and check the output location, all before any
/// training work: a bad config or an unwritable bucket must fail in seconds, not after an hour.
fn setup(args: &TrainArgs) -> Result<(TrainConfig, TrialContext)> {
    // Signals first: a SIGTERM during start-up (loading data can take a while) must not kill
    // the process before it can say it was interrupted.
    let stop = StopFlag::install()?;
    let mut sets = args.set.clone();
    if let Some(t) = args.threads {
        sets.push(format!("threads={t}"));
    }
    let cfg = match &args.config {
        Some(path) => TrainConfig::load(path, &sets)?,
        None => TrainConfig::parse("", &sets)?,
    };
    // Before any tensor exists: libtorch fixes its thread pools on first use.
    crate::device::set_threads(cfg.threads);

    // One worker thread runs the mid-run checkpoint and progress writes while the loop trains
    // (see `background_writes`); storage waits, it hardly computes, so one is plenty.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("textrec-storage")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let store = Store::open(&args.output)
        .map_err(|e| ConfigError::new(format!("--output {}: {e:#}", args.output)))?;
    rt.block_on(store.probe_writable(OUTPUT_PROBE_TIMEOUT))
        .map_err(|e| ConfigError::new(format!("--output: {e:#}")))?;
    let device = crate::device::select(cfg.device)?;
    tracing::info!(
        "trial output {}; device {device:?}; {} CPU threads; seed {}",
        store.url(),
        tch::get_num_threads(),
        cfg.seed
    );
    let ctx = TrialContext {
        store,
        rt,
        device,
        stop,
        stop_at_step: args.stop_at_step,
        run: args.run.clone(),
        trial: args.trial.clone(),
    };
    Ok((cfg, ctx))
}

/// A `Failed` progress snapshot for `err`, built on the last known one.
fn failed(prior: Option<TrialProgress>, max_steps: u64, err: &anyhow::Error) -> TrialProgress {
    TrialProgress {
        phase: WorkerPhase::Failed,
        step: prior.as_ref().map_or(0, |p| p.step),
        max_steps: prior
            .as_ref()
            .map_or(max_steps, |p| p.max_steps.max(max_steps)),
        samples_per_sec: None,
        latest: prior.as_ref().and_then(|p| p.latest.clone()),
        best: prior.as_ref().and_then(|p| p.best.clone()),
        checkpoint: prior.as_ref().and_then(|p| p.checkpoint.clone()),
        model: None,
        resumes: prior.as_ref().map_or(0, |p| p.resumes),
        updated: chrono::Utc::now(),
        message: Some(format!("{}: {err:#}", exit::describe(exit::code_for(err)))),
    }
}
