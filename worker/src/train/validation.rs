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
    /// Where the lines come from, to render them again at another width.
    dataset: Arc<dyn Dataset>,
    limit: Option<u64>,
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
        Self::load_stretched(name, dataset, pre, limit, 1.0)
    }

    /// The same lines stretched horizontally by `factor` (read from their source again, so the
    /// stretch is one resampling, as when a model reads at that width).
    pub fn at_width(&self, pre: &PreprocessConfig, factor: f32) -> Result<Self> {
        Self::load_stretched(&self.name, &self.dataset, pre, self.limit, factor)
    }

    fn load_stretched(
        name: &str,
        dataset: &Arc<dyn Dataset>,
        pre: &PreprocessConfig,
        limit: Option<u64>,
        factor: f32,
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
                .and_then(|s| {
                    preprocess::resize_stretched(&s.image, pre, factor).map(|p| (p, s.text))
                })
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
            dataset: Arc::clone(dataset),
            limit,
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

#[cfg(test)]
mod tests {
    use super::*;
    use image::GrayImage;
    use textrec_model::data::Sample;

    /// Lines of known sizes; the one at index 2 cannot be read.
    struct Lines;

    impl Dataset for Lines {
        fn len(&self) -> Option<u64> {
            Some(4)
        }
        fn get(&self, index: u64) -> Result<Sample> {
            anyhow::ensure!(index != 2, "unreadable");
            let w = 40 + 20 * index as u32;
            Ok(Sample {
                image: GrayImage::from_fn(w, 16, |x, _| image::Luma([(x * 7 % 256) as u8])),
                text: format!("line {index}"),
                id: index.to_string(),
            })
        }
        fn describe(&self) -> String {
            "test lines".into()
        }
    }

    #[test]
    fn a_set_read_again_at_another_width_holds_the_same_lines_stretched() {
        let pre = PreprocessConfig::default();
        let ds: Arc<dyn Dataset> = Arc::new(Lines);
        let set = ValidationSet::load("validation", &ds, &pre, None).unwrap();
        let wide = set.at_width(&pre, 1.5).unwrap();
        assert_eq!((set.len(), set.skipped), (3, 1));
        assert_eq!((wide.len(), wide.skipped), (3, 1));
        assert_eq!(
            (wide.name.as_str(), &wide.texts),
            ("validation", &set.texts)
        );
        let widths =
            |s: &ValidationSet| -> Vec<u32> { s.lines.iter().map(|l| l.prepare().width).collect() };
        // 16 pixels high becomes 32: each line twice as wide, then half as wide again.
        assert_eq!(widths(&set), vec![80, 120, 200]);
        assert_eq!(widths(&wide), vec![120, 180, 300]);
        // At x1 the lines are the ones loaded.
        let same = set.at_width(&pre, 1.0).unwrap();
        assert!(same
            .lines
            .iter()
            .zip(&set.lines)
            .all(|(a, b)| a.prepare().data == b.prepare().data));
    }
}
