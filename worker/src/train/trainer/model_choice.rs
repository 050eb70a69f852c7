//! What a finished trial ships: the decoding, the reading width, the language model's weights
//! and which unsure lines it searches again, each chosen on its validation sets with every set
//! having an equal say ([`super::comparison`]), and the model folder with all four in its
//! manifest ([`super::decoding_choice`]).

use anyhow::{Context as _, Result};
use bytes::Bytes;
use textrec_contract::layout;
use textrec_contract::manifest::{
    ModelManifest, Provenance, ReadingSettings, UnsureLines, MODEL_FORMAT,
};
use textrec_contract::metrics::{ModelRef, TrialProgress, WorkerPhase};
use textrec_model::lm::{FolderLm, LanguageModel, SearchSettings};
use textrec_model::net::DecodeMode;
use textrec_model::tensorio;

use super::super::language_model;
use super::super::validation::ValidationSet;
use super::comparison::{by_set, compare, log_compared, reading_of, set_reading, Readings};
use super::decoding_choice::{unsure_name, DecodingChoice};
use super::Trial;

impl Trial<'_> {
    /// The end of a trial that trained all its steps: its last checkpoint, the decoding,
    /// reading width, language-model weights and unsure lines chosen, the model folder, and
    /// progress naming the model.
    pub(super) fn end_finished(&mut self, vals: &[ValidationSet]) -> Result<TrialProgress> {
        self.save_checkpoint()?;
        // `ctc-lm` searches the CTC head's frames: no head, no language model.
        let mut lm = if self.state.architecture.ctc_weight > 0.0 {
            language_model::build(self.cfg, self.tokenizer.charset())?
        } else {
            None
        };
        let mut choice = self.choose_decoding(vals, lm.as_ref().map(|l| &l.model))?;
        self.choose_width(vals, &mut choice, lm.as_ref().map(|l| &l.model))?;
        // The language model's weights and unsure lines: compared only when the config lists
        // some to try (each reads every set again).
        let lmc = &self.cfg.language_model;
        let to_try = lmc.weight_pairs().len() > 1 || !lmc.unsure_candidates().is_empty();
        if let Some(lm) = lm
            .as_mut()
            .filter(|_| choice.mode == DecodeMode::CtcLm && to_try)
        {
            let stretched = self.at_reading_width(vals, &choice)?;
            let sets = stretched.as_deref().unwrap_or(vals);
            let settings = self.choose_lm_weights(sets, &mut choice, &lm.model)?;
            let settings = self.choose_unsure_lines(sets, &mut choice, &lm.model, settings)?;
            lm.set_weights(settings);
        }
        let decoding = choice.mode;
        let model = self.write_model(&choice, lm.as_ref())?;
        let mut p = self.progress(WorkerPhase::Succeeded, Some(model.clone()), None);
        // The finished trial's best is its model as served, so trials that chose different
        // decodings compare on what they read.
        p.best = Some(choice.reading);
        self.publish_final(&p)?;
        tracing::info!(
            "finished {} steps in {:.1}s; model (best CER {:.4} with `{}`) written to {}",
            self.state.step,
            self.elapsed(),
            model.cer,
            decoding.as_str(),
            model.url
        );
        Ok(p)
    }

    /// The decoding the model is served with: `ctc`, `joint`, `attention` and, with a
    /// language model, `ctc-lm` read every validation set with the best weights (`joint`'s
    /// readings are the best evaluation's own), and the mode with the lowest mean of each
    /// set's CER relative to that set's lowest wins, so the objective's set cannot pick a mode
    /// that reads it a few characters better and fonts the model never trained on far worse.
    /// Ties go to the cheaper mode: at short training budgets the decoder reads little and
    /// the CTC head alone is as good and twice as fast. Loads the best weights into the
    /// network: call when training is over. A stop request keeps the evaluation's `joint`.
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
        // Order: the CTC head alone first, then the ones that cost about the same.
        let modes: Vec<DecodeMode> = [
            DecodeMode::Ctc,
            DecodeMode::Joint,
            DecodeMode::Attention,
            DecodeMode::CtcLm,
        ]
        .into_iter()
        .filter(|&m| m != DecodeMode::CtcLm || lm.is_some())
        .collect();
        let compared = compare(
            vals.len(),
            &modes,
            |&m, s| match m {
                DecodeMode::Joint => set_reading(&best, s, &vals[s].name),
                _ => None,
            },
            |&m, s| self.read(&vals[s], m, lm),
        )?;
        let Some((chosen, readings)) = compared else {
            return Ok(DecodingChoice::as_evaluated(DecodeMode::Joint, &best));
        };
        let mode = modes[chosen];
        log_compared("decoding", vals, &readings, |m| {
            modes[m].as_str().to_string()
        });
        tracing::info!("the model reads with `{}`", mode.as_str());
        Ok(DecodingChoice {
            mode,
            by_mode: by_set(vals, &readings, |m| modes[m]),
            by_width: Vec::new(),
            by_lm_weights: Vec::new(),
            by_unsure: Vec::new(),
            reading: reading_of(&best, vals, &readings, chosen, Some(mode), None),
        })
    }

    /// The width the model reads at: each of `reading_widths` tried on every validation set
    /// with the chosen decoding (the best weights are loaded: call after
    /// [`Self::choose_decoding`]), chosen by the same equal say of every set (a tie going to
    /// the earlier factor). The trial's scores become what its model reads as served. A stop
    /// request keeps the lines as drawn.
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
        let compared = compare(
            vals.len(),
            factors,
            |&f, s| match f == 1.0 {
                true => set_reading(&choice.reading, s, &vals[s].name),
                false => None,
            },
            |&f, s| {
                let stretched = vals[s].at_width(&self.cfg.preprocess, f as f32)?;
                self.read(&stretched, choice.mode, lm)
            },
        )?;
        let Some((chosen, readings)) = compared else {
            return Ok(());
        };
        let width = factors[chosen];
        let what = format!("reading width with `{}`", choice.mode.as_str());
        log_compared(&what, vals, &readings, |f| format!("x{}", factors[f]));
        tracing::info!("the model reads at x{width}");
        let mode = Some(choice.mode);
        choice.reading = reading_of(&choice.reading, vals, &readings, chosen, mode, Some(width));
        choice.by_width = by_set(vals, &readings, |f| factors[f]);
        Ok(())
    }

    /// The validation sets stretched to the chosen reading width (`None` at the width as
    /// drawn): stretched once for the comparisons that read them several times at that width.
    fn at_reading_width(
        &self,
        vals: &[ValidationSet],
        choice: &DecodingChoice,
    ) -> Result<Option<Vec<ValidationSet>>> {
        let width = choice.reading.reading_width.unwrap_or(1.0);
        if width == 1.0 {
            return Ok(None);
        }
        let stretched = vals
            .iter()
            .map(|v| v.at_width(&self.cfg.preprocess, width as f32))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(stretched))
    }

    /// The language model's weights the model reads with: each pair of
    /// `language_model.alphas` × `betas` tried on every validation set (`sets`, at the chosen
    /// reading width: call after [`Self::choose_width`] with a model reading with `ctc-lm`),
    /// chosen by the equal say of every set, a tie going to the configured weights and then
    /// to the earlier pair. Only when there is more than one pair; returns the search
    /// settings to write. A stop request keeps the configured weights.
    fn choose_lm_weights(
        &self,
        sets: &[ValidationSet],
        choice: &mut DecodingChoice,
        lm: &LanguageModel,
    ) -> Result<SearchSettings> {
        let pairs = self.cfg.language_model.weight_pairs();
        if pairs.len() == 1 {
            return Ok(lm.settings);
        }
        let weighted = |&(alpha, beta): &(f64, f64)| SearchSettings {
            alpha: alpha as f32,
            beta: beta as f32,
            ..lm.settings
        };
        let mut reweighted = lm.clone();
        let compared = compare(
            sets.len(),
            &pairs,
            |pair, s| match pair == &pairs[0] {
                // The configured weights: the reading so far.
                true => set_reading(&choice.reading, s, &sets[s].name),
                false => None,
            },
            |pair, s| {
                reweighted.settings = weighted(pair);
                self.read(&sets[s], DecodeMode::CtcLm, Some(&reweighted))
            },
        )?;
        let Some((chosen, readings)) = compared else {
            return Ok(lm.settings);
        };
        let (alpha, beta) = pairs[chosen];
        log_compared(
            "language model weights (alpha/beta)",
            sets,
            &readings,
            |p| format!("{}/{}", pairs[p].0, pairs[p].1),
        );
        tracing::info!("the model reads with alpha {alpha}, beta {beta}");
        self.serve_choice(choice, sets, &readings, chosen);
        choice.by_lm_weights = by_set(sets, &readings, |p| pairs[p]);
        Ok(weighted(&pairs[chosen]))
    }

    /// Which lines the model searches again with a stronger language model, and with which
    /// weight: reading every line once, and each (threshold, alpha) of
    /// `language_model.unsure_below` × `unsure_alphas` (with the chosen beta), tried on every
    /// validation set at the chosen width and weights `settings` (call after
    /// [`Self::choose_lm_weights`]), chosen by the equal say of every set, a tie going to
    /// reading every line once. Returns `settings` with the choice; a stop request keeps
    /// them as they are.
    fn choose_unsure_lines(
        &self,
        sets: &[ValidationSet],
        choice: &mut DecodingChoice,
        lm: &LanguageModel,
        settings: SearchSettings,
    ) -> Result<SearchSettings> {
        let tried = self.cfg.language_model.unsure_candidates();
        if tried.is_empty() {
            return Ok(settings);
        }
        let candidates: Vec<Option<UnsureLines>> = std::iter::once(None)
            .chain(tried.iter().map(|&(below, alpha)| {
                Some(UnsureLines {
                    below: below as f32,
                    alpha: alpha as f32,
                    beta: settings.beta,
                })
            }))
            .collect();
        let mut searching = lm.clone();
        let compared = compare(
            sets.len(),
            &candidates,
            |unsure, s| match unsure {
                // Every line searched once: the reading so far.
                None => set_reading(&choice.reading, s, &sets[s].name),
                Some(_) => None,
            },
            |unsure, s| {
                searching.settings = SearchSettings {
                    unsure: *unsure,
                    ..settings
                };
                self.read(&sets[s], DecodeMode::CtcLm, Some(&searching))
            },
        )?;
        let Some((chosen, readings)) = compared else {
            return Ok(settings);
        };
        log_compared("unsure lines searched again", sets, &readings, |c| {
            unsure_name(&candidates[c])
        });
        tracing::info!(
            "the model searches again {}",
            match candidates[chosen] {
                None => "no line".to_string(),
                Some(u) => format!(
                    "lines read with confidence below {} (alpha {})",
                    u.below, u.alpha
                ),
            }
        );
        self.serve_choice(choice, sets, &readings, chosen);
        choice.by_unsure = by_set(sets, &readings, |c| candidates[c]);
        Ok(SearchSettings {
            unsure: candidates[chosen],
            ..settings
        })
    }

    /// Make the `chosen` candidate's readings what the model reads as served, at the
    /// decoding and width chosen before.
    fn serve_choice(
        &self,
        choice: &mut DecodingChoice,
        sets: &[ValidationSet],
        readings: &Readings,
        chosen: usize,
    ) {
        let (mode, width) = (Some(choice.mode), choice.reading.reading_width);
        choice.reading = reading_of(&choice.reading, sets, readings, chosen, mode, width);
    }

    /// Read `val` as (CER, WER); `None` on a stop request.
    fn read(
        &self,
        val: &ValidationSet,
        mode: DecodeMode,
        lm: Option<&LanguageModel>,
    ) -> Result<Option<(f64, f64)>> {
        Ok(self.score(val, mode, lm)?.map(|card| {
            let score = card.score();
            (score.cer, score.wer)
        }))
    }

    /// Write the final model folder (best weights + manifest, manifest last).
    fn write_model(&self, choice: &DecodingChoice, lm: Option<&FolderLm>) -> Result<ModelRef> {
        let decoding = choice.mode;
        let reading = &choice.reading;
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
                metrics: choice.manifest_metrics(&best),
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
