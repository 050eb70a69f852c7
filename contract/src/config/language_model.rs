//! `language_model`: the character n-gram model a finished trial counts, and the weights it tries.

use crate::exit::ConfigError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The character language model counted when training ends, over the training split of the
/// synthetic training data's corpus, and stored in the model folder. Decoding then also
/// measures `ctc-lm` (a CTC beam search scored with it) and the model reads with it when it
/// scores best on the validation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "snake_case")]
pub struct LanguageModelConfig {
    /// Longest n-gram, in characters (2 to 9); 0: no language model. Off by default: counting
    /// takes seconds and adds a few MB to the model; the recipe and the quickstart turn it on.
    pub order: usize,
    /// N-grams of order three and up seen fewer times are dropped (a smaller file).
    pub min_count: u32,
    /// Weight of the language model's log-probability in the search.
    pub alpha: f64,
    /// Score added per character read.
    pub beta: f64,
    /// Readings the search keeps after each frame.
    pub beam: usize,
    /// Further weights a finished trial tries when it reads with `ctc-lm`: every pair of
    /// `alphas` × `betas` (an empty list stands for `alpha` or `beta` alone), read on every
    /// validation set at the chosen reading width. The pair with the lowest mean CER relative
    /// to each set's best goes into the model's manifest, a tie going to `alpha` and `beta`
    /// themselves, then to the earlier pair. The best weights depend on the network (a model
    /// unsure of a font leans more on the language model), so a recipe searches them rather
    /// than fixing them. In `spec.hyperparameters` a list is searched, so a fixed list is
    /// written `[[0.35, 0.5]]`.
    pub alphas: Vec<f64>,
    /// See `alphas`.
    pub betas: Vec<f64>,
    /// Confidence thresholds (0..1] a finished trial that reads with `ctc-lm` tries for
    /// searching unsure lines again: a line whose reading's confidence is below the threshold
    /// is searched again with the language model weighed by one of `unsure_alphas` (and the
    /// chosen beta), and that reading replaces the first. Every pair of `unsure_below` ×
    /// `unsure_alphas`, and reading every line once, are read on every validation set at the
    /// chosen width and weights; the one with the lowest mean CER relative to each set's best
    /// goes into the model's manifest (`language_model.unsure_lines`), a tie going to reading
    /// every line once. A model leans on its language model where it is unsure of the
    /// letterforms (a script face it never trained on) and trusts the glyphs where it knows
    /// them. Both lists empty (the default): every line is searched once. In
    /// `spec.hyperparameters` a fixed list is written `[[0.3, 0.4]]`.
    pub unsure_below: Vec<f64>,
    /// See `unsure_below`.
    pub unsure_alphas: Vec<f64>,
}

/// The most weight pairs `language_model.alphas` × `betas` may make: each is a read of every
/// validation set.
pub const MAX_LM_WEIGHT_PAIRS: usize = 64;

impl LanguageModelConfig {
    /// The weight pairs (alpha, beta) a finished trial tries: the configured pair first, then
    /// `alphas` × `betas` (alpha varying slowest), each once.
    pub fn weight_pairs(&self) -> Vec<(f64, f64)> {
        let alphas = if self.alphas.is_empty() {
            vec![self.alpha]
        } else {
            self.alphas.clone()
        };
        let betas = if self.betas.is_empty() {
            vec![self.beta]
        } else {
            self.betas.clone()
        };
        let mut pairs = vec![(self.alpha, self.beta)];
        for &a in &alphas {
            for &b in &betas {
                if !pairs.contains(&(a, b)) {
                    pairs.push((a, b));
                }
            }
        }
        pairs
    }

    /// Refuse orders, counts, weights and lists no search can use.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.order != 0 && !(2..=9).contains(&self.order) {
            return Err(ConfigError::field(
                "language_model.order",
                "must be 0 (none) or in 2..=9",
            ));
        }
        if self.min_count == 0 {
            return Err(ConfigError::field(
                "language_model.min_count",
                "must be at least 1",
            ));
        }
        if !self.alpha.is_finite() || self.alpha < 0.0 || !self.beta.is_finite() {
            return Err(ConfigError::field(
                "language_model",
                "alpha must be finite and not negative, beta finite",
            ));
        }
        if !(1..=1000).contains(&self.beam) {
            return Err(ConfigError::field(
                "language_model.beam",
                "must be in 1..=1000",
            ));
        }
        // Alphas weigh a log-probability, so they are not negative; betas may be.
        let lists = [
            (
                "language_model.alphas",
                &self.alphas,
                "weight",
                0.0,
                "finite and not negative",
            ),
            (
                "language_model.betas",
                &self.betas,
                "weight",
                f64::NEG_INFINITY,
                "finite",
            ),
            (
                "language_model.unsure_alphas",
                &self.unsure_alphas,
                "weight",
                0.0,
                "finite and not negative",
            ),
            (
                "language_model.unsure_below",
                &self.unsure_below,
                "confidence",
                f64::MIN_POSITIVE,
                "above 0",
            ),
        ];
        for (field, list, noun, lowest, want) in lists {
            for (i, &w) in list.iter().enumerate() {
                if !w.is_finite() || w < lowest {
                    return Err(ConfigError::field(
                        field,
                        format!("{noun} {w} must be {want}"),
                    ));
                }
                if list[..i].contains(&w) {
                    return Err(ConfigError::field(
                        field,
                        format!("{noun} {w} is given twice"),
                    ));
                }
            }
        }
        let pairs = self.alphas.len().max(1) * self.betas.len().max(1);
        if pairs > MAX_LM_WEIGHT_PAIRS {
            return Err(ConfigError::field(
                "language_model",
                format!(
                    "alphas × betas make {pairs} weight pairs, more than {MAX_LM_WEIGHT_PAIRS} \
                     (each is a read of every validation set)"
                ),
            ));
        }
        if let Some(&c) = self.unsure_below.iter().find(|&&c| c > 1.0) {
            return Err(ConfigError::field(
                "language_model.unsure_below",
                format!("confidence {c} is above 1"),
            ));
        }
        if self.unsure_below.is_empty() != self.unsure_alphas.is_empty() {
            return Err(ConfigError::field(
                "language_model",
                "unsure_below and unsure_alphas go together: a threshold needs a weight to \
                 search again with, and a weight a threshold",
            ));
        }
        let unsure = self.unsure_candidates().len();
        if unsure > MAX_LM_WEIGHT_PAIRS {
            return Err(ConfigError::field(
                "language_model",
                format!(
                    "unsure_below × unsure_alphas make {unsure} pairs, more than \
                     {MAX_LM_WEIGHT_PAIRS} (each is a read of every validation set)"
                ),
            ));
        }
        Ok(())
    }

    /// The (threshold, alpha) pairs a finished trial tries for searching unsure lines again
    /// (see `unsure_below`), the threshold varying slowest; empty when none are configured.
    pub fn unsure_candidates(&self) -> Vec<(f64, f64)> {
        self.unsure_below
            .iter()
            .flat_map(|&below| self.unsure_alphas.iter().map(move |&a| (below, a)))
            .collect()
    }
}

impl Default for LanguageModelConfig {
    fn default() -> Self {
        Self {
            order: 0,
            min_count: 5,
            alpha: 0.5,
            beta: 2.0,
            beam: 12,
            alphas: Vec::new(),
            betas: Vec::new(),
            unsure_below: Vec::new(),
            unsure_alphas: Vec::new(),
        }
    }
}
