//! What a trial starts from: its validation sets, and the state of a fresh run or of the
//! newest checkpoint a resumed one continues.

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use tch::nn::VarStore;
use textrec_contract::charset::IAM_CHARSET;
use textrec_contract::config::{Architecture, DataConfig};
use textrec_contract::exit::ConfigError;
use textrec_contract::metrics::{CheckpointRef, OBJECTIVE_SET};
use textrec_contract::TrainConfig;
use textrec_model::data::open_dataset;
use textrec_model::tensorio;
use textrec_model::Tokenizer;

use super::super::checkpoint::{self, TrainState, RNG_SCHEME};
use super::super::optimizer::AdamW;
use super::super::progress;
use super::super::validation::ValidationSet;
use super::fine_tune::{init_from, Parent};
use super::TrialContext;

/// The objective's validation set first (`data.validation`), then each of
/// `data.extra_validation`, prepared with the trial's preprocessing. An unreadable or empty
/// set is a config error naming its field.
pub(super) fn open_validation_sets(
    cfg: &TrainConfig,
    data: &DataConfig,
) -> Result<Vec<ValidationSet>> {
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
    Ok(vals)
}

/// Where a trial's loop begins.
pub(super) struct Start {
    /// The step, data position and history to continue from.
    pub(super) state: TrainState,
    /// The best evaluation's weights so far.
    pub(super) best_weights: Option<Bytes>,
    /// The checkpoint resumed from.
    pub(super) checkpoint: Option<CheckpointRef>,
    /// The resumed checkpoint's average of the weights, if it kept one.
    pub(super) ema: Option<Bytes>,
}

/// Load the newest complete checkpoint into `vs` and `opt` when there is one (it must match
/// the trial's architecture and charset), else start at step 0 from `vs`'s fresh weights or,
/// for a fine-tune, from the parent's.
pub(super) fn resume_or_start(
    ctx: &TrialContext,
    cfg: &TrainConfig,
    arch: &Architecture,
    tokenizer: &Tokenizer,
    parent: Option<&Parent>,
    vs: &mut VarStore,
    opt: &mut AdamW,
) -> Result<Start> {
    let device = ctx.device;
    let prior_progress = ctx.rt.block_on(progress::read(&ctx.store));
    let loaded = ctx.rt.block_on(checkpoint::load_newest(&ctx.store))?;
    let mut best_weights = None;
    let mut ema = None;
    let mut checkpoint_ref = None;
    let state = match loaded {
        Some(l) => {
            if &l.state.architecture != arch {
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
            tensorio::load_varstore(vs, &l.weights).context("checkpoint weights")?;
            let moments =
                tensorio::from_safetensors(&l.optimizer, device).context("checkpoint optimizer")?;
            opt.load_state(moments, l.state.step)
                .context("checkpoint optimizer")?;
            best_weights = l.best;
            ema = l.ema;
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
            if let Some(p) = parent {
                init_from(vs, &p.files)?;
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
    Ok(Start {
        state,
        best_weights,
        checkpoint: checkpoint_ref,
        ema,
    })
}
