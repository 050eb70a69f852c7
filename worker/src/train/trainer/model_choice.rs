//! What a finished trial ships: the decoding, the reading width and the language model's
//! weights that read its validation sets best, each chosen with every set having an equal say,
//! and the model folder with all three in its manifest.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use textrec_contract::layout;
use textrec_contract::manifest::{
    ModelManifest, Provenance, ReadingSettings, UnsureLines, MODEL_FORMAT,
};
use textrec_contract::metrics::{EvalPoint, ModelRef, TrialProgress, WorkerPhase};
use textrec_model::lm::{FolderLm, LanguageModel, SearchSettings};
use textrec_model::net::DecodeMode;
use textrec_model::tensorio;

use super::super::language_model;
use super::super::validation::ValidationSet;
use super::Trial;

impl Trial<'_> {
    /// The end of a trial that trained all its steps: its last checkpoint, the decoding,
    /// reading width and language-model weights chosen, the model folder, and progress naming
    /// the model.
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
        if let Some(lm) = lm.as_mut().filter(|_| choice.mode == DecodeMode::CtcLm) {
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

/// Each of `sets` validation sets read with each candidate, and the index of the candidate with the
/// lowest mean relative CER ([`lowest_relative_mean`]); `readings[set][candidate]` is a (CER,
/// WER). `known` gives a reading already made (it is not made again), `read` makes one and
/// gives `None` on a stop request, which ends the comparison with `None`.
fn compare<K>(
    sets: usize,
    candidates: &[K],
    known: impl Fn(&K, usize) -> Option<(f64, f64)>,
    mut read: impl FnMut(&K, usize) -> Result<Option<(f64, f64)>>,
) -> Result<Option<(usize, Readings)>> {
    let mut readings = vec![Vec::with_capacity(candidates.len()); sets];
    for candidate in candidates {
        for (s, set) in readings.iter_mut().enumerate() {
            let reading = match known(candidate, s) {
                Some(r) => r,
                None => match read(candidate, s)? {
                    Some(r) => r,
                    None => return Ok(None),
                },
            };
            set.push(reading);
        }
    }
    let cers: Vec<Vec<f64>> = readings
        .iter()
        .map(|set| set.iter().map(|r| r.0).collect())
        .collect();
    Ok(Some((lowest_relative_mean(&cers), readings)))
}

/// One log line per set: its CER with each candidate (`name(candidate)`).
fn log_compared(
    what: &str,
    vals: &[ValidationSet],
    readings: &[Vec<(f64, f64)>],
    name: impl Fn(usize) -> String,
) {
    for (val, r) in vals.iter().zip(readings) {
        let listed: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, (cer, _))| format!("{} {cer:.4}", name(i)))
            .collect();
        tracing::info!("{what}: {} CER {}", val.name, listed.join(", "));
    }
}

/// `readings[set][choice]` as each set's name with its CER by choice (`key(choice)`).
fn by_set<K>(
    vals: &[ValidationSet],
    readings: &[Vec<(f64, f64)>],
    key: impl Fn(usize) -> K,
) -> Vec<(String, Vec<(K, f64)>)> {
    vals.iter()
        .zip(readings)
        .map(|(val, r)| {
            let cers = r.iter().enumerate().map(|(i, c)| (key(i), c.0)).collect();
            (val.name.clone(), cers)
        })
        .collect()
}

/// Set `s`'s (CER, WER) in `point`, when it holds it (extra sets' WERs are not kept: 0).
fn set_reading(point: &EvalPoint, s: usize, name: &str) -> Option<(f64, f64)> {
    match s {
        0 => Some((point.cer, point.wer)),
        _ => point.extra_cer.get(name).map(|&c| (c, 0.0)),
    }
}

/// `base` with every set's scores taken from `readings[set][chosen]`.
fn reading_of(
    base: &EvalPoint,
    vals: &[ValidationSet],
    readings: &[Vec<(f64, f64)>],
    chosen: usize,
    decoding: Option<DecodeMode>,
    reading_width: Option<f64>,
) -> EvalPoint {
    let (cer, wer) = readings[0][chosen];
    EvalPoint {
        step: base.step,
        cer,
        wer,
        extra_cer: vals[1..]
            .iter()
            .zip(&readings[1..])
            .map(|(val, r)| (val.name.clone(), r[chosen].0))
            .collect(),
        decoding,
        reading_width,
    }
}

/// Each validation set's (CER, WER) by candidate, `readings[set][candidate]`, the objective's
/// set first.
type Readings = Vec<Vec<(f64, f64)>>;

/// CER of each validation set (the objective's first) by the choice it was read with.
type BySet<K> = Vec<(String, Vec<(K, f64)>)>;

/// How a finished trial's model is served (decoding, reading width, language-model weights),
/// what each choice read, and how its best weights read as served.
struct DecodingChoice {
    mode: DecodeMode,
    /// Each set's CER in each decoding measured, in the order tried (empty when none were
    /// compared).
    by_mode: BySet<DecodeMode>,
    /// Each set's CER with `mode` at each width measured (empty when no widths were
    /// compared).
    by_width: BySet<f64>,
    /// Each set's CER with `ctc-lm` at the reading width, by language-model weights (alpha,
    /// beta) (empty when none were compared).
    by_lm_weights: BySet<(f64, f64)>,
    /// Each set's CER with `ctc-lm` at the reading width and weights, by which lines were
    /// searched again (`None`: none) (empty when none were compared).
    by_unsure: BySet<Option<UnsureLines>>,
    /// The best weights' scores read as served.
    reading: EvalPoint,
}

impl DecodingChoice {
    /// `mode` without measuring the others: the best evaluation's own reading.
    fn as_evaluated(mode: DecodeMode, best: &EvalPoint) -> Self {
        Self {
            mode,
            by_mode: Vec::new(),
            by_width: Vec::new(),
            by_lm_weights: Vec::new(),
            by_unsure: Vec::new(),
            reading: EvalPoint {
                decoding: Some(mode),
                ..best.clone()
            },
        }
    }

    /// The manifest's metrics: the best evaluation's scores as evaluated (`joint`, as drawn:
    /// `cer`, `wer`, `cer:SET`), every choice compared (`cer@MODE` as drawn with the
    /// configured language-model weights, `cer@xFACTOR` in the chosen decoding,
    /// `cer@lm(alpha=A,beta=B)` at the chosen width, `cer@unsure(off)` and
    /// `cer@unsure(below=C,alpha=A)` at the chosen weights; each extra set's as `cer:SET@…`),
    /// and the model as served (`cer@served`, `wer@served`, `cer:SET@served`).
    fn manifest_metrics(&self, best: &EvalPoint) -> BTreeMap<String, f64> {
        let mut metrics =
            BTreeMap::from([("cer".to_string(), best.cer), ("wer".to_string(), best.wer)]);
        for (name, cer) in &best.extra_cer {
            metrics.insert(format!("cer:{name}"), *cer);
        }
        add_compared(&mut metrics, &self.by_mode, |m| m.as_str().to_string());
        add_compared(&mut metrics, &self.by_width, |f| format!("x{f}"));
        add_compared(&mut metrics, &self.by_lm_weights, |(a, b)| {
            format!("lm(alpha={a},beta={b})")
        });
        add_compared(&mut metrics, &self.by_unsure, unsure_name);
        let served = &self.reading;
        metrics.insert("cer@served".to_string(), served.cer);
        metrics.insert("wer@served".to_string(), served.wer);
        for (name, cer) in &served.extra_cer {
            metrics.insert(format!("cer:{name}@served"), *cer);
        }
        metrics
    }
}

/// How a choice of unsure lines is named in logs and metrics: `unsure(off)` or
/// `unsure(below=C,alpha=A)`.
fn unsure_name(unsure: &Option<UnsureLines>) -> String {
    match unsure {
        None => "unsure(off)".to_string(),
        Some(u) => format!("unsure(below={},alpha={})", u.below, u.alpha),
    }
}

/// Add every choice compared to the manifest's metrics, as `cer@WHAT` for the objective's set
/// (the first) and `cer:SET@WHAT` for the others.
fn add_compared<K>(
    metrics: &mut BTreeMap<String, f64>,
    by_set: &BySet<K>,
    what: impl Fn(&K) -> String,
) {
    for (i, (set, cers)) in by_set.iter().enumerate() {
        for (k, cer) in cers {
            let key = match i {
                0 => format!("cer@{}", what(k)),
                _ => format!("cer:{set}@{}", what(k)),
            };
            metrics.insert(key, *cer);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use textrec_contract::metrics::EvalPoint;
    use textrec_model::net::DecodeMode;

    use textrec_contract::manifest::UnsureLines;

    use super::{compare, lowest_relative_mean, BySet, DecodingChoice};

    #[test]
    fn a_comparison_reads_only_what_it_does_not_know_and_stops_when_asked() {
        // Two sets, three candidates; candidate 1 was read already (an evaluation's `joint`).
        let made = RefCell::new(Vec::new());
        let cers = [[0.02, 0.01, 0.03], [0.30, 0.20, 0.10]];
        let (chosen, readings) = compare(
            2,
            &[0usize, 1, 2],
            |&c, s| (c == 1).then_some((cers[s][c], 0.5)),
            |&c, s| {
                made.borrow_mut().push((c, s));
                Ok(Some((cers[s][c], 0.0)))
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(*made.borrow(), [(0, 0), (0, 1), (2, 0), (2, 1)]);
        assert_eq!(readings[0], [(0.02, 0.0), (0.01, 0.5), (0.03, 0.0)]);
        // Relative means: (2 + 3) / 2, (1 + 2) / 2, (3 + 1) / 2.
        assert_eq!(chosen, 1);
        // A stop request in the middle ends it without a choice.
        let stopped = compare(
            2,
            &[0usize, 1],
            |_, _| None,
            |&c, _| Ok((c == 0).then_some((0.1, 0.1))),
        );
        assert!(stopped.unwrap().is_none());
    }

    #[test]
    fn the_manifest_records_every_choice_compared_and_the_model_as_served() {
        let point = |cer: f64, unseen: f64| EvalPoint {
            step: 40,
            cer,
            wer: cer * 4.0,
            extra_cer: [("unseen-fonts".to_string(), unseen)].into(),
            decoding: None,
            reading_width: None,
        };
        fn sets<K>(objective: Vec<(K, f64)>, unseen: Vec<(K, f64)>) -> BySet<K> {
            vec![
                ("validation".to_string(), objective),
                ("unseen-fonts".to_string(), unseen),
            ]
        }
        let unsure = UnsureLines {
            below: 0.4,
            alpha: 0.8,
            beta: 1.0,
        };
        let choice = DecodingChoice {
            mode: DecodeMode::CtcLm,
            by_mode: vec![
                (
                    "validation".to_string(),
                    vec![(DecodeMode::Ctc, 0.03), (DecodeMode::CtcLm, 0.02)],
                ),
                (
                    "unseen-fonts".to_string(),
                    vec![(DecodeMode::Ctc, 0.3), (DecodeMode::CtcLm, 0.2)],
                ),
            ],
            by_width: sets(
                vec![(1.0, 0.02), (1.1, 0.015)],
                vec![(1.0, 0.2), (1.1, 0.19)],
            ),
            by_lm_weights: vec![
                (
                    "validation".to_string(),
                    vec![((0.5, 2.0), 0.015), ((0.65, 1.0), 0.014)],
                ),
                (
                    "unseen-fonts".to_string(),
                    vec![((0.5, 2.0), 0.19), ((0.65, 1.0), 0.17)],
                ),
            ],
            by_unsure: sets(
                vec![(None, 0.014), (Some(unsure), 0.0145)],
                vec![(None, 0.17), (Some(unsure), 0.15)],
            ),
            reading: point(0.0145, 0.15),
        };
        let m = choice.manifest_metrics(&point(0.04, 0.4));
        let expected = [
            ("cer", 0.04),
            ("wer", 0.16),
            ("cer:unseen-fonts", 0.4),
            ("cer@ctc", 0.03),
            ("cer@ctc-lm", 0.02),
            ("cer:unseen-fonts@ctc", 0.3),
            ("cer:unseen-fonts@ctc-lm", 0.2),
            ("cer@x1", 0.02),
            ("cer@x1.1", 0.015),
            ("cer:unseen-fonts@x1.1", 0.19),
            ("cer@lm(alpha=0.65,beta=1)", 0.014),
            ("cer:unseen-fonts@lm(alpha=0.5,beta=2)", 0.19),
            ("cer@unsure(off)", 0.014),
            ("cer:unseen-fonts@unsure(below=0.4,alpha=0.8)", 0.15),
            ("cer@served", 0.0145),
            ("wer@served", 0.058),
            ("cer:unseen-fonts@served", 0.15),
        ];
        for (key, value) in expected {
            assert_eq!(m.get(key), Some(&value), "{key}: {m:?}");
        }
        assert_eq!(m.len(), 3 + 4 + 4 + 4 + 4 + 3, "{m:?}");
    }

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
