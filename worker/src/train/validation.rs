//! Validation sets, rendered and resized once, and evaluation over them with the decoding serving uses.

use std::sync::Arc;

use anyhow::{Context, Result};
use tch::Device;
use textrec_contract::config::PreprocessConfig;
use textrec_model::autocast::Autocast;
use textrec_model::data::Dataset;
use textrec_model::lm::LanguageModel;
use textrec_model::metrics::ScoreCard;
use textrec_model::net::{DecodeMode, Recognizer};
use textrec_model::preprocess::{self, PreparedImage, ResizedLine};
use textrec_model::Tokenizer;

use super::signals::StopFlag;
use super::tensorboard::TaggedImage;

/// Validation lines, rendered and resized once (they are evaluated many times). They are kept
/// as 8-bit lines and normalized at each evaluation: the same values as preparing them once,
/// at a quarter of the memory the trainer holds for them throughout its run.
pub struct ValidationSet {
    /// The set's name in `metrics.jsonl` (`validation` for the objective's set).
    pub name: String,
    lines: Vec<ResizedLine>,
    texts: Vec<String>,
    /// Samples that could not be read or prepared.
    pub skipped: usize,
}

impl ValidationSet {
    /// Load up to `limit` samples of `dataset` (all of a finite one when `limit` is `None`).
    pub fn load(
        name: &str,
        dataset: &Arc<dyn Dataset>,
        pre: &PreprocessConfig,
        limit: Option<u64>,
    ) -> Result<Self> {
        let n = match (dataset.len(), limit) {
            (Some(len), Some(l)) => len.min(l),
            (Some(len), None) => len,
            (None, Some(l)) => l,
            (None, None) => 256,
        };
        let mut lines = Vec::with_capacity(n as usize);
        let mut texts = Vec::with_capacity(n as usize);
        let mut skipped = Vec::new();
        for i in 0..n {
            let resized = dataset
                .get(i)
                .and_then(|s| preprocess::resize(&s.image, pre).map(|p| (p, s.text)))
                .with_context(|| format!("validation sample {i}"));
            match resized {
                Ok((line, text)) => {
                    lines.push(line);
                    texts.push(text);
                }
                Err(e) => skipped.push(format!("{e:#}")),
            }
        }
        if !skipped.is_empty() {
            tracing::warn!(
                "validation set {name}: skipped {} unreadable samples: {}",
                skipped.len(),
                skipped.join("; ")
            );
        }
        Ok(Self {
            name: name.to_string(),
            lines,
            texts,
            skipped: skipped.len(),
        })
    }

    /// Number of usable lines.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// The first `n` lines as PNGs (dark ink on white, as prepared for the network), tagged
    /// `<set>/line-<i>` for TensorBoard.
    pub fn preview_images(&self, n: usize) -> Vec<TaggedImage> {
        self.lines
            .iter()
            .take(n)
            .enumerate()
            .filter_map(|(i, line)| {
                let img = line.prepare();
                let pixels: Vec<u8> = img
                    .data
                    .iter()
                    .map(|v| (255.0 * (1.0 - v.clamp(0.0, 1.0))).round() as u8)
                    .collect();
                let gray = image::GrayImage::from_raw(img.width, img.height, pixels)?;
                let mut png = Vec::new();
                gray.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                    .ok()?;
                Some(TaggedImage {
                    tag: format!("{}/line-{i}", self.name),
                    height: img.height,
                    width: img.width,
                    png,
                })
            })
            .collect()
    }

    /// Whether there is nothing to evaluate on.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Error totals (overall and by line length) of reading the set with `mode` (`lm` serves
    /// `ctc-lm`); `None` when
    /// `stop` was set part-way (the caller checkpoints, and the evaluation is redone after
    /// resume).
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate(
        &self,
        net: &Recognizer,
        tokenizer: &Tokenizer,
        pre: &PreprocessConfig,
        device: Device,
        batch_size: usize,
        max_len: i64,
        autocast: Autocast,
        mode: DecodeMode,
        lm: Option<&LanguageModel>,
        stop: &StopFlag,
    ) -> Result<Option<ScoreCard>> {
        let mut card = ScoreCard::default();
        for (chunk, texts) in self
            .lines
            .chunks(batch_size)
            .zip(self.texts.chunks(batch_size))
        {
            if stop.is_set() {
                return Ok(None);
            }
            let prepared: Vec<PreparedImage> = chunk.iter().map(ResizedLine::prepare).collect();
            let (images, widths) = preprocess::collate(&prepared, pre, device);
            let decoded =
                tch::no_grad(|| autocast.run(|| net.decode(&images, &widths, max_len, mode, lm)));
            for (tokens, reference) in decoded.tokens.iter().zip(texts) {
                card.add(reference, &tokenizer.decode(tokens));
            }
        }
        Ok(Some(card))
    }
}
