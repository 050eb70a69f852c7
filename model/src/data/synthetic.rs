//! Lines rendered on the fly: corpus text, a training font, augmentation.
//!
//! `get(index)` seeds a ChaCha RNG from (data set seed, index) and draws everything from it
//! (text, font, layout, distortions), so a sample depends on nothing else: not on the
//! thread, not on what was loaded before.

use std::sync::Arc;

use anyhow::{bail, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use textrec_contract::config::{SyntheticConfig, TextSplit};

use super::corpus::Corpus;
use super::fonts::FontSet;
use super::ink_texture::InkTexture;
use super::render::{render_line, LayoutParams};
use super::{augment, mix_seed, Dataset, Sample};

/// A synthetic data set: endless, or `samples` long.
#[derive(Debug)]
pub struct SyntheticDataset {
    corpus: Arc<Corpus>,
    fonts: Arc<FontSet>,
    cfg: SyntheticConfig,
    seed: u64,
    len: Option<u64>,
}

impl SyntheticDataset {
    /// Load the corpus and fonts `cfg` names. `samples` makes the set finite (sample `i` is
    /// always the same line); `seed` is used as given (see `open_dataset` for the validation
    /// seed rule).
    pub fn open(
        cfg: &SyntheticConfig,
        samples: Option<u64>,
        seed: u64,
        charset: &str,
    ) -> Result<Self> {
        check_settings(cfg, samples)?;
        let corpus = Corpus::load(cfg, charset)?;
        let fonts = FontSet::load(cfg, charset)?;
        fonts.check_use(cfg.split)?;
        Ok(Self {
            corpus,
            fonts,
            cfg: cfg.clone(),
            seed,
            len: samples,
        })
    }

    /// A set of `samples` lines for independent evaluation: text drawn from `passages` (prose
    /// that training and validation never read) and any fonts `cfg` names, the fonts reserved
    /// for evaluation among them. Such a set is never a training or validation set: written
    /// out by `synth --independent-evaluation`, its folder is marked so that training refuses
    /// it.
    pub fn open_independent_evaluation(
        cfg: &SyntheticConfig,
        samples: u64,
        seed: u64,
        charset: &str,
        passages: impl IntoIterator<Item = String>,
    ) -> Result<Self> {
        let cfg = SyntheticConfig {
            split: TextSplit::Descriptions,
            ..cfg.clone()
        };
        check_settings(&cfg, Some(samples))?;
        let corpus = Arc::new(Corpus::load_with_descriptions(&cfg, charset, passages)?);
        let fonts = FontSet::load(&cfg, charset)?;
        Ok(Self {
            corpus,
            fonts,
            cfg,
            seed,
            len: Some(samples),
        })
    }

    /// The fonts lines are drawn with.
    pub fn fonts(&self) -> &FontSet {
        &self.fonts
    }

    /// The corpus text is drawn from.
    pub fn corpus(&self) -> &Corpus {
        &self.corpus
    }
}

/// Refuse settings no set can be drawn with.
fn check_settings(cfg: &SyntheticConfig, samples: Option<u64>) -> Result<()> {
    if cfg.min_chars == 0 || cfg.min_chars > cfg.max_chars {
        bail!(
            "synthetic.min_chars must be in 1..=max_chars (got {}..{})",
            cfg.min_chars,
            cfg.max_chars
        );
    }
    if samples == Some(0) {
        bail!("a synthetic data set with `samples: 0` is empty");
    }
    for (field, value) in [
        ("glyph_morph", cfg.glyph_morph),
        ("ink_texture", cfg.ink_texture),
    ] {
        if !(0.0..=1.0).contains(&value) {
            bail!("synthetic.{field} must be in [0, 1] (got {value})");
        }
    }
    Ok(())
}

impl Dataset for SyntheticDataset {
    fn len(&self) -> Option<u64> {
        self.len
    }

    fn get(&self, index: u64) -> Result<Sample> {
        if let Some(n) = self.len {
            if index >= n {
                bail!("sample {index} is out of range (the set has {n})");
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(self.seed, index));
        let c = &self.cfg;
        let strength = c.augment as f32;
        for _ in 0..16 {
            let text = self.corpus.sample_line(
                c.split,
                &mut rng,
                c.min_chars,
                c.max_chars,
                c.mean_chars,
                c.generated_fraction,
            );
            // A line no font can draw is replaced by another line, never drawn with boxes.
            let Some((font, label)) = self.fonts.choose(&mut rng, &text) else {
                continue;
            };
            let layout = LayoutParams {
                morph: c.glyph_morph as f32,
                ..LayoutParams::sample(&mut rng, strength)
            };
            let Some(mut ink) = render_line(&font.font, &label, &layout, &mut rng) else {
                continue;
            };
            if let Some(texture) = InkTexture::sample(&mut rng, c.ink_texture as f32, layout.px) {
                ink = texture.apply(&ink, &mut rng);
            }
            let image = augment::augment(ink, layout.px, strength, &mut rng);
            let split = match c.split {
                TextSplit::Train => "train",
                TextSplit::Validation => "validation",
                TextSplit::Descriptions => "descriptions",
            };
            return Ok(Sample {
                image,
                text: label,
                id: format!("synthetic/{split}/{:016x}/{index}", self.seed),
            });
        }
        bail!("sample {index}: no font in the set can draw the corpus lines (check `fonts` and the charset)")
    }

    fn describe(&self) -> String {
        let s = self.corpus.stats(self.cfg.split);
        format!(
            "synthetic {:?} lines ({}), {} fonts, {} passages + {} words, {}..{} chars{}, augment {}{}{}, seed {:#x}",
            self.cfg.split,
            self.len.map_or("endless".to_string(), |n| format!("{n} samples")),
            self.fonts.fonts().len(),
            s.passages,
            s.words,
            self.cfg.min_chars,
            self.cfg.max_chars,
            self.cfg
                .mean_chars
                .map_or(String::new(), |m| format!(" (mean {m})")),
            self.cfg.augment,
            if self.cfg.glyph_morph > 0.0 {
                format!(", glyph morph {}", self.cfg.glyph_morph)
            } else {
                String::new()
            },
            if self.cfg.ink_texture > 0.0 {
                format!(", ink texture {}", self.cfg.ink_texture)
            } else {
                String::new()
            },
            self.seed
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::data::{open_dataset, VALIDATION_SEED};
    use textrec_contract::charset::IAM_CHARSET;
    use textrec_contract::config::{DataConfig, DatasetSpec};

    fn train_spec() -> DatasetSpec {
        DatasetSpec::default()
    }

    #[test]
    fn get_is_a_pure_function_of_seed_and_index() {
        let a = open_dataset(&train_spec(), 7, IAM_CHARSET).unwrap();
        let b = open_dataset(&train_spec(), 7, IAM_CHARSET).unwrap();
        assert_eq!(a.len(), None);
        let late = a.get(1_000_000_007).unwrap();
        for i in [3u64, 0, 1_000_000_007] {
            let (x, y) = (a.get(i).unwrap(), b.get(i).unwrap());
            assert_eq!(
                (&x.text, &x.id, x.image.as_raw()),
                (&y.text, &y.id, y.image.as_raw())
            );
        }
        // Other threads, other order: same samples.
        let from_thread = std::thread::spawn(move || b.get(1_000_000_007).unwrap())
            .join()
            .unwrap();
        assert_eq!(from_thread.image.as_raw(), late.image.as_raw());
        let c = open_dataset(&train_spec(), 8, IAM_CHARSET).unwrap();
        assert_ne!(
            c.get(3).unwrap().image.as_raw(),
            a.get(3).unwrap().image.as_raw()
        );
    }

    #[test]
    fn validation_set_ignores_the_trial_seed() {
        let spec = DataConfig::default().validation;
        let a = open_dataset(&spec, 1, IAM_CHARSET).unwrap();
        let b = open_dataset(&spec, 12345, IAM_CHARSET).unwrap();
        assert_eq!(a.len(), Some(256));
        for i in [0, 17, 255] {
            let (x, y) = (a.get(i).unwrap(), b.get(i).unwrap());
            assert_eq!((&x.text, x.image.as_raw()), (&y.text, y.image.as_raw()));
            assert!(
                x.id.contains(&format!("{VALIDATION_SEED:016x}")),
                "{}",
                x.id
            );
        }
        assert!(a.get(256).is_err());
        let endless = DatasetSpec {
            samples: None,
            ..spec
        };
        assert!(open_dataset(&endless, 1, IAM_CHARSET).is_err());
    }

    #[test]
    fn samples_are_labelled_lines_in_the_charset() {
        let ds = open_dataset(&train_spec(), 3, IAM_CHARSET).unwrap();
        let tok = crate::Tokenizer::new(IAM_CHARSET);
        for i in 0..12 {
            let s = ds.get(i).unwrap();
            assert!(
                !s.text.is_empty() && s.text.chars().count() <= 100,
                "{:?}",
                s.text
            );
            tok.encode(&s.text).unwrap();
            assert!(
                s.image.height() >= 10 && s.image.width() >= 4,
                "{}x{}",
                s.image.width(),
                s.image.height()
            );
        }
    }

    #[test]
    fn textured_ink_changes_the_images_not_the_lines() {
        let mut spec = train_spec();
        let plain = open_dataset(&spec, 5, IAM_CHARSET).unwrap();
        spec.synthetic.ink_texture = 1.0;
        let textured = open_dataset(&spec, 5, IAM_CHARSET).unwrap();
        let mut changed = 0;
        for i in 0..8 {
            let (p, t) = (plain.get(i).unwrap(), textured.get(i).unwrap());
            assert_eq!(
                p.text, t.text,
                "the text and font are drawn before the texture"
            );
            changed += usize::from(p.image.as_raw() != t.image.as_raw());
        }
        assert_eq!(changed, 8, "every line textured at 1");
        spec.synthetic.ink_texture = 1.5;
        assert!(open_dataset(&spec, 5, IAM_CHARSET).is_err());
    }
}
