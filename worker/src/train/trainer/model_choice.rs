//! What a finished trial ships: the decoding that reads its objective validation set best, the
//! reading width that reads all its validation sets best, and the model folder with both in its
//! manifest.

use anyhow::{Context as _, Result};
use bytes::Bytes;
use textrec_contract::layout;
use textrec_contract::manifest::{ModelManifest, Provenance, ReadingSettings, MODEL_FORMAT};
use textrec_contract::metrics::{EvalPoint, ModelRef, TrialProgress, WorkerPhase, OBJECTIVE_SET};
use textrec_model::lm::{FolderLm, LanguageModel};
use textrec_model::net::DecodeMode;
use textrec_model::tensorio;

use super::super::language_model;
use super::super::validation::ValidationSet;
use super::Trial;

impl Trial<'_> {
    /// The end of a trial that trained all its steps: its last checkpoint, the decoding and
    /// reading width chosen, the model folder, and progress naming the model.
    pub(super) fn end_finished(&mut self, vals: &[ValidationSet]) -> Result<TrialProgress> {
        self.save_checkpoint()?;
        // `ctc-lm` searches the CTC head's frames: no head, no language model.
        let lm = if self.state.architecture.ctc_weight > 0.0 {
            language_model::build(self.cfg, self.tokenizer.charset())?
        } else {
            None
        };
        let mut choice = self.choose_decoding(vals, lm.as_ref().map(|l| &l.model))?;
        self.choose_width(vals, &mut choice, lm.as_ref().map(|l| &l.model))?;
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

    /// The width the model reads at: each of `reading_widths` tried on every validation set
    /// with the chosen decoding (the best weights are loaded: call after
    /// [`Self::choose_decoding`]). Each set's CER at a width is taken relative to that set's
    /// lowest, and the width with the lowest mean wins (a tie going to the earlier factor):
    /// every set has an equal say however hard it is, so a width that reads the objective's
    /// set a few characters better cannot cost fonts the model never trained on a tenth of
    /// their accuracy. The trial's scores become what its model reads as served. A stop
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
        let pre = &self.cfg.preprocess;
        // cers[s][f]: set `s` read at `factors[f]`; the objective's WER beside it.
        let mut cers = vec![Vec::with_capacity(factors.len()); vals.len()];
        let mut objective_wer = Vec::with_capacity(factors.len());
        for &factor in factors {
            for (s, val) in vals.iter().enumerate() {
                let as_chosen = match s {
                    0 => Some((choice.reading.cer, choice.reading.wer)),
                    _ => choice.reading.extra_cer.get(&val.name).map(|&c| (c, 0.0)),
                };
                let (cer, wer) = match as_chosen {
                    Some(score) if factor == 1.0 => score,
                    _ => {
                        let stretched = val.at_width(pre, factor as f32)?;
                        match self.score(&stretched, choice.mode, lm)? {
                            Some(card) => {
                                let s = card.score();
                                (s.cer, s.wer)
                            }
                            None => return Ok(()),
                        }
                    }
                };
                cers[s].push(cer);
                if s == 0 {
                    objective_wer.push(wer);
                }
            }
        }
        let chosen = lowest_relative_mean(&cers);
        let width = factors[chosen];
        let listed = |s: usize| -> String {
            factors
                .iter()
                .zip(&cers[s])
                .map(|(f, c)| format!("x{f} {c:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (s, val) in vals.iter().enumerate() {
            tracing::info!(
                "reading width: {} CER {} with `{}`",
                val.name,
                listed(s),
                choice.mode.as_str()
            );
        }
        tracing::info!("the model reads at x{width}");
        choice.reading = EvalPoint {
            cer: cers[0][chosen],
            wer: objective_wer[chosen],
            extra_cer: vals[1..]
                .iter()
                .zip(&cers[1..])
                .map(|(val, c)| (val.name.clone(), c[chosen]))
                .collect(),
            reading_width: Some(width),
            ..choice.reading.clone()
        };
        choice.by_width = vals
            .iter()
            .zip(&cers)
            .map(|(val, c)| {
                (
                    val.name.clone(),
                    factors.iter().copied().zip(c.iter().copied()).collect(),
                )
            })
            .collect();
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
                // that decoding by reading width as `cer@xFACTOR` (each extra set's as
                // `cer:NAME@xFACTOR`), and each extra set's CER as the model reads (chosen
                // decoding and width) as `cer:NAME@MODE`.
                metrics: [("cer".to_string(), best.cer), ("wer".to_string(), best.wer)]
                    .into_iter()
                    .chain(best.extra_cer.iter().map(|(n, c)| (format!("cer:{n}"), *c)))
                    .chain(
                        by_mode
                            .iter()
                            .map(|(m, c)| (format!("cer@{}", m.as_str()), *c)),
                    )
                    .chain(by_width.iter().flat_map(|(set, widths)| {
                        widths.iter().map(move |(f, c)| match set.as_str() {
                            OBJECTIVE_SET => (format!("cer@x{f}"), *c),
                            _ => (format!("cer:{set}@x{f}"), *c),
                        })
                    }))
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

/// The index of the choice with the lowest mean relative CER: `cers[set][choice]` divided by
/// the set's lowest, averaged over the sets; ties go to the earlier choice. CERs are floored
/// at 0.001 first, so a set read perfectly at one width does not divide by zero (a few hundred
/// lines tell no finer difference apart anyway).
fn lowest_relative_mean(cers: &[Vec<f64>]) -> usize {
    const FLOOR: f64 = 0.001;
    let lowest: Vec<f64> = cers
        .iter()
        .map(|set| set.iter().fold(f64::INFINITY, |a, &c| a.min(c)).max(FLOOR))
        .collect();
    let choices: Vec<usize> = (0..cers.first().map_or(0, Vec::len)).collect();
    first_lowest(&choices, |&i| {
        cers.iter()
            .zip(&lowest)
            .map(|(set, best)| set[i].max(FLOOR) / best)
            .sum::<f64>()
            / cers.len() as f64
    })
}

/// The first of the items with the lowest `cer` (ties go to the earlier, cheaper choice).
fn first_lowest<T: Copy>(items: &[T], cer: impl Fn(&T) -> f64) -> T {
    items.iter().copied().fold(
        items[0],
        |best, x| if cer(&x) < cer(&best) { x } else { best },
    )
}

/// The decoding and reading width a finished trial's model is served with, and how its best
/// weights read.
struct DecodingChoice {
    mode: DecodeMode,
    /// The objective's CER in each decoding measured, in the order tried.
    by_mode: Vec<(DecodeMode, f64)>,
    /// Each validation set's CER with `mode` at each width measured, the objective's first
    /// (empty when no widths were compared).
    by_width: Vec<(String, Vec<(f64, f64)>)>,
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

#[cfg(test)]
mod tests {
    use super::lowest_relative_mean;

    #[test]
    fn every_set_has_an_equal_say_in_the_reading_width() {
        // The objective's set prefers the third width by a hair; the hard set prefers the
        // second by far more: the mean of relative CERs picks the second.
        let cers = vec![vec![0.0096, 0.0066, 0.0063], vec![0.0666, 0.0639, 0.0726]];
        assert_eq!(lowest_relative_mean(&cers), 1);
        // One set alone: its lowest, the earlier of a tie.
        assert_eq!(lowest_relative_mean(&[vec![0.03, 0.02, 0.02]]), 1);
        // Sets read perfectly at some width neither divide by zero nor outweigh the rest.
        let cers = vec![vec![0.0, 0.0005, 0.002], vec![0.20, 0.10, 0.10]];
        assert_eq!(lowest_relative_mean(&cers), 1);
    }
}
