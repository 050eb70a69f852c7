//! A training or evaluation batch: preprocessed images and teacher-forcing targets.

use anyhow::{Context, Result};
use tch::{Device, Tensor};
use textrec_contract::config::PreprocessConfig;

use super::Sample;
use crate::preprocess::{collate, resize, PreparedImage, ResizedLine};
use crate::tokenizer::Tokenizer;

/// Lines ready for the network (CPU tensors; the trainer moves them to its device).
///
/// The images wait in the loader's queue as 8-bit lines resized to the network's height and
/// are normalized and stacked by [`Batch::images`] when the batch is used: a queued batch holds
/// a quarter of the memory its float images would, and normalizing 16 lines costs about a
/// millisecond beside a training step's second.
#[derive(Debug)]
pub struct Batch {
    lines: Vec<ResizedLine>,
    preprocess: PreprocessConfig,
    /// `[B, T]` i64 decoder input: `BOS` then the character ids, `PAD` after.
    pub tgt_in: Tensor,
    /// `[B, T]` i64 decoder target: the character ids then `EOS`, `PAD` after.
    pub tgt_out: Tensor,
    /// `[B]` i64: characters per line (without `BOS`/`EOS`).
    pub target_lengths: Tensor,
    /// The transcriptions.
    pub texts: Vec<String>,
    /// The sample ids.
    pub ids: Vec<String>,
    /// Global position of the first sample (the rest follow consecutively).
    pub first_position: u64,
}

impl Batch {
    /// Preprocess and tokenize samples. A sample that cannot be prepared or encoded fails the
    /// batch with its id in the message.
    pub fn collate(
        samples: Vec<Sample>,
        tokenizer: &Tokenizer,
        pre: &PreprocessConfig,
        first_position: u64,
    ) -> Result<Batch> {
        let b = samples.len();
        let mut lines = Vec::with_capacity(b);
        let mut encoded = Vec::with_capacity(b);
        let mut texts = Vec::with_capacity(b);
        let mut ids = Vec::with_capacity(b);
        for s in samples {
            lines.push(resize(&s.image, pre).with_context(|| format!("sample {}", s.id))?);
            encoded.push(
                tokenizer
                    .encode(&s.text)
                    .with_context(|| format!("sample {}", s.id))?,
            );
            texts.push(s.text);
            ids.push(s.id);
        }
        let t = encoded.iter().map(Vec::len).max().unwrap_or(0) + 1;
        let mut tgt_in = vec![Tokenizer::PAD; b * t];
        let mut tgt_out = vec![Tokenizer::PAD; b * t];
        for (k, e) in encoded.iter().enumerate() {
            let row = k * t;
            tgt_in[row] = Tokenizer::BOS;
            tgt_in[row + 1..row + 1 + e.len()].copy_from_slice(e);
            tgt_out[row..row + e.len()].copy_from_slice(e);
            tgt_out[row + e.len()] = Tokenizer::EOS;
        }
        let lengths: Vec<i64> = encoded.iter().map(|e| e.len() as i64).collect();
        let shape = [b as i64, t as i64];
        Ok(Batch {
            lines,
            preprocess: pre.clone(),
            tgt_in: Tensor::from_slice(&tgt_in).view(shape),
            tgt_out: Tensor::from_slice(&tgt_out).view(shape),
            target_lengths: Tensor::from_slice(&lengths),
            texts,
            ids,
            first_position,
        })
    }

    /// The images `[B, 1, H, W]` (f32, ink 1, zero-padded on the right) and each line's width
    /// before padding `[B]` (i64), as [`collate`] stacks the prepared lines.
    pub fn images(&self) -> (Tensor, Tensor) {
        let prepared: Vec<PreparedImage> = self.lines.iter().map(ResizedLine::prepare).collect();
        collate(&prepared, &self.preprocess, Device::Cpu)
    }

    /// Number of lines.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether the batch holds no line.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};

    fn sample(text: &str, w: u32) -> Sample {
        let image =
            GrayImage::from_fn(w, 16, |x, y| Luma([if (x + y) % 6 == 0 { 0 } else { 255 }]));
        Sample {
            image,
            text: text.into(),
            id: format!("id-{text}"),
        }
    }

    #[test]
    fn targets_are_shifted_and_padded() {
        let tok = Tokenizer::new("abc");
        let pre = PreprocessConfig {
            height: 16,
            max_width: 64,
            width_multiple: 4,
            max_source_pixels: 10_000,
            stretch: 1.0,
        };
        let b = Batch::collate(
            vec![sample("ab", 30), sample("cabc", 9), sample("", 4)],
            &tok,
            &pre,
            40,
        )
        .unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b.first_position, 40);
        let rows = |t: &Tensor| Vec::<Vec<i64>>::try_from(t).unwrap();
        assert_eq!(
            rows(&b.tgt_in),
            vec![
                vec![1, 3, 4, 0, 0],
                vec![1, 5, 3, 4, 5],
                vec![1, 0, 0, 0, 0]
            ]
        );
        assert_eq!(
            rows(&b.tgt_out),
            vec![
                vec![3, 4, 2, 0, 0],
                vec![5, 3, 4, 5, 2],
                vec![2, 0, 0, 0, 0]
            ]
        );
        assert_eq!(
            Vec::<i64>::try_from(&b.target_lengths).unwrap(),
            vec![2, 4, 0]
        );
        let (images, widths) = b.images();
        assert_eq!(Vec::<i64>::try_from(&widths).unwrap(), vec![30, 9, 4]);
        assert_eq!(images.size(), vec![3, 1, 16, 32]);
        // The same values as preparing each line on its own and stacking them.
        let samples = [sample("ab", 30), sample("cabc", 9), sample("", 4)];
        let prepared: Vec<_> = samples
            .iter()
            .map(|s| crate::preprocess::prepare(&s.image, &pre).unwrap())
            .collect();
        let (expected, _) = collate(&prepared, &pre, Device::Cpu);
        assert!(images.equal(&expected));
        assert_eq!(b.texts, vec!["ab", "cabc", ""]);
        assert_eq!(b.ids[1], "id-cabc");
    }

    #[test]
    fn unsupported_text_names_the_sample() {
        let tok = Tokenizer::new("abc");
        let pre = PreprocessConfig {
            height: 16,
            max_width: 64,
            width_multiple: 4,
            max_source_pixels: 10_000,
            stretch: 1.0,
        };
        let err = Batch::collate(vec![sample("abz", 20)], &tok, &pre, 0).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("id-abz") && msg.contains("'z'"), "{msg}");
    }
}
