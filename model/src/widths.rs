//! Reading a line at several widths and keeping the most confident reading.
//!
//! A network reads some lines better stretched horizontally (height unchanged): faces narrower
//! or wider than its training fonts, whose characters fall on fewer or more encoder frames than
//! it learned, and, for the pretrained model, even its training fonts a little wider than
//! preprocessing draws them. No single stretch suits every face, so each line is read at every
//! width given and the reading with the highest line confidence is kept. With a
//! confidence threshold, only the lines whose first reading falls below it are read again,
//! which keeps most of the gain at a fraction of the cost (BENCHMARKS.md, "Reading each line at
//! several widths").
//!
//! A line is stretched while it is resized from its source (one resampling: sharper than
//! stretching the prepared line, and measurably better read), so every width is prepared
//! from the decoded image: [`WidthReadings::prepare`] gives a [`PreparedLine`], which the
//! server prepares off its inference threads like any other input.

use std::borrow::Cow;

use anyhow::{bail, Result};
use image::GrayImage;
use textrec_contract::config::READING_WIDTH_RANGE;
use textrec_contract::manifest::ReadingSettings;

use crate::prediction::Prediction;
use crate::preprocess::{self, PreparedImage, PreprocessConfig};

/// Smallest and largest accepted stretch factor (the contract's [`READING_WIDTH_RANGE`]).
pub const FACTOR_RANGE: (f32, f32) = (READING_WIDTH_RANGE.0 as f32, READING_WIDTH_RANGE.1 as f32);

/// At which widths lines are read, and which lines are read at more than the first.
#[derive(Debug, Clone, PartialEq)]
pub struct WidthReadings {
    factors: Vec<f32>,
    reread_below: Option<f32>,
}

impl Default for WidthReadings {
    /// One reading per line, at the line's own width.
    fn default() -> Self {
        Self {
            factors: vec![1.0],
            reread_below: None,
        }
    }
}

impl WidthReadings {
    /// Read every line at `factors[0]` (horizontal stretch; 1 is the line as it is), and at
    /// each further factor when its first reading's confidence is below `reread_below` (every
    /// line when `None`). An error for an empty list, a repeated factor, a factor outside
    /// [`FACTOR_RANGE`], or a threshold outside [0, 1].
    pub fn new(factors: Vec<f32>, reread_below: Option<f32>) -> Result<Self> {
        let (lo, hi) = FACTOR_RANGE;
        if factors.is_empty() {
            bail!("no width given");
        }
        for (i, f) in factors.iter().enumerate() {
            if !(lo..=hi).contains(f) {
                bail!("width factor {f} is outside {lo}..{hi}");
            }
            if factors[..i].contains(f) {
                bail!("width factor {f} is given twice");
            }
        }
        if let Some(t) = reread_below {
            if !(0.0..=1.0).contains(&t) {
                bail!("confidence threshold {t} is outside 0..1");
            }
        }
        Ok(Self {
            factors,
            reread_below,
        })
    }

    /// The readings a manifest's `reading` asks for (checked as [`WidthReadings::new`]).
    pub fn from_settings(settings: &ReadingSettings) -> Result<Self> {
        Self::new(settings.widths.clone(), settings.reread_below)
    }

    /// These readings as a manifest's `reading` writes them.
    pub fn settings(&self) -> ReadingSettings {
        ReadingSettings {
            widths: self.factors.clone(),
            reread_below: self.reread_below,
        }
    }

    /// The stretch factors, the first read for every line.
    pub fn factors(&self) -> &[f32] {
        &self.factors
    }

    /// Whether each line is read once, as it is.
    pub fn is_single(&self) -> bool {
        self.factors == [1.0]
    }

    /// `image` prepared at each width, first width first (see
    /// [`preprocess::prepare_stretched`]).
    pub fn prepare(&self, image: &GrayImage, cfg: &PreprocessConfig) -> Result<PreparedLine> {
        let at = self
            .factors
            .iter()
            .map(|&f| preprocess::prepare_stretched(image, cfg, f))
            .collect::<Result<Vec<_>>>()?;
        Ok(PreparedLine(at))
    }

    /// Read `count` lines at these widths and keep each line's most confident reading; on a
    /// tie the earlier width's. `line_at(i, k)` is line `i` prepared at the `k`-th factor;
    /// `read` reads any number of prepared lines, one prediction each, in order. `read` is
    /// called once for the first width and at most once more for every other width together
    /// (only for the lines whose first reading is doubtful); a width a line already had (a
    /// line capped at the model's widest) is not read twice.
    pub fn read<'a, S, F>(&self, count: usize, mut line_at: S, mut read: F) -> Result<Readings>
    where
        S: FnMut(usize, usize) -> Result<Cow<'a, PreparedImage>>,
        F: FnMut(&[&PreparedImage]) -> Vec<Prediction>,
    {
        let first = (0..count)
            .map(|i| line_at(i, 0))
            .collect::<Result<Vec<_>>>()?;
        let mut best = read(&first.iter().map(|c| c.as_ref()).collect::<Vec<_>>());
        let doubtful = |p: &Prediction| self.reread_below.is_none_or(|t| p.confidence < t);

        // Every further width of every doubtful line, each at a width the line did not have.
        let mut variants: Vec<(usize, Cow<PreparedImage>)> = Vec::new();
        let mut reread = 0;
        for i in 0..count {
            if !doubtful(&best[i]) || self.factors.len() == 1 {
                continue;
            }
            reread += 1;
            let mut widths_read = vec![first[i].width];
            for k in 1..self.factors.len() {
                let v = line_at(i, k)?;
                if !widths_read.contains(&v.width) {
                    widths_read.push(v.width);
                    variants.push((i, v));
                }
            }
        }
        if !variants.is_empty() {
            let again = read(&variants.iter().map(|(_, v)| v.as_ref()).collect::<Vec<_>>());
            for ((i, _), p) in variants.iter().zip(again) {
                if p.confidence > best[*i].confidence {
                    best[*i] = p;
                }
            }
        }
        Ok(Readings {
            predictions: best,
            reread,
        })
    }
}

/// What [`WidthReadings::read`] gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Readings {
    /// Each line's kept reading, in order.
    pub predictions: Vec<Prediction>,
    /// How many lines were doubtful after their first reading and so were read again at the
    /// other widths.
    pub reread: usize,
}

/// One line prepared at every width of a [`WidthReadings`], first width first.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedLine(Vec<PreparedImage>);

impl PreparedLine {
    /// A line read once, as prepared.
    pub fn single(image: PreparedImage) -> Self {
        Self(vec![image])
    }

    /// The line at the first width: the one every line is read at.
    pub fn first(&self) -> &PreparedImage {
        &self.0[0]
    }

    /// The line at each width, first width first.
    pub fn widths(&self) -> &[PreparedImage] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(width: u32) -> PreparedImage {
        PreparedImage {
            data: vec![0.5; width as usize * 4],
            height: 4,
            width,
        }
    }

    /// Line `i` of `base` widths at factor `k`, capped at `max`, as a preparer would give it.
    fn preparer<'a>(
        widths: &'a WidthReadings,
        base: &'a [u32],
        max: u32,
    ) -> impl FnMut(usize, usize) -> Result<Cow<'static, PreparedImage>> + 'a {
        move |i, k| {
            let w = (base[i] as f32 * widths.factors()[k]).round() as u32;
            Ok(Cow::Owned(line(w.min(max))))
        }
    }

    fn prediction(text: &str, confidence: f32) -> Prediction {
        Prediction {
            text: text.into(),
            confidence,
            char_confidences: vec![confidence; text.len()],
        }
    }

    /// A reader whose confidence in a line depends on its width: `best_width` reads surely.
    fn reader(
        best_width: u32,
        calls: &mut Vec<Vec<u32>>,
    ) -> impl FnMut(&[&PreparedImage]) -> Vec<Prediction> + '_ {
        move |lines| {
            calls.push(lines.iter().map(|l| l.width).collect());
            lines
                .iter()
                .map(|l| {
                    let off = l.width.abs_diff(best_width) as f32;
                    prediction(&l.width.to_string(), 1.0 / (1.0 + off))
                })
                .collect()
        }
    }

    #[test]
    fn the_most_confident_width_wins() {
        let widths = WidthReadings::new(vec![1.0, 1.25, 1.5], None).unwrap();
        let mut calls = Vec::new();
        let base = [40, 20];
        let out = widths
            .read(2, preparer(&widths, &base, 1000), reader(50, &mut calls))
            .unwrap()
            .predictions;
        // 40 → 50 (×1.25) is exact; 20 → 30 (×1.5) is the nearest of 20, 25, 30.
        assert_eq!(out[0].text, "50");
        assert_eq!(out[1].text, "30");
        assert_eq!(calls, vec![vec![40, 20], vec![50, 60, 25, 30]]);
    }

    #[test]
    fn confident_lines_are_not_read_again() {
        let widths = WidthReadings::new(vec![1.0, 2.0], Some(0.5)).unwrap();
        let mut calls = Vec::new();
        let base = [10, 12];
        // 10 is read surely (confidence 1), 12 at 0.33: only 12 is read again (as 24).
        let out = widths
            .read(2, preparer(&widths, &base, 1000), reader(10, &mut calls))
            .unwrap();
        assert_eq!(out.reread, 1);
        let out = out.predictions;
        assert_eq!(calls, vec![vec![10, 12], vec![24]]);
        assert_eq!(out[0].text, "10");
        assert_eq!(
            out[1].text, "12",
            "the first reading was more confident than ×2"
        );
    }

    #[test]
    fn no_second_pass_when_every_line_is_sure() {
        let widths = WidthReadings::new(vec![1.0, 1.5], Some(0.9)).unwrap();
        let mut calls = Vec::new();
        let out = widths
            .read(1, preparer(&widths, &[10], 1000), reader(10, &mut calls))
            .unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(out.reread, 0);
    }

    #[test]
    fn a_tie_keeps_the_first_width_and_capped_widths_are_read_once() {
        let widths = WidthReadings::new(vec![1.0, 1.5, 2.0], None).unwrap();
        let mut calls = Vec::new();
        // Capped at 30: ×1.5 and ×2 both give 30, read once.
        let out = widths
            .read(
                1,
                preparer(&widths, &[20], 30),
                |lines: &[&PreparedImage]| {
                    calls.push(lines.iter().map(|l| l.width).collect::<Vec<_>>());
                    lines
                        .iter()
                        .map(|l| prediction(&l.width.to_string(), 0.5))
                        .collect()
                },
            )
            .unwrap();
        assert_eq!(calls, vec![vec![20], vec![30]]);
        assert_eq!(out.predictions[0].text, "20");
        assert_eq!(out.reread, 1);
    }

    #[test]
    fn a_line_that_cannot_be_prepared_fails_the_reading() {
        let widths = WidthReadings::new(vec![1.0, 1.5], None).unwrap();
        let err = widths
            .read(
                1,
                |_, k| {
                    if k == 0 {
                        Ok(Cow::Owned(line(10)))
                    } else {
                        Err(anyhow::anyhow!("line 0 at ×1.5 is too wide"))
                    }
                },
                |lines: &[&PreparedImage]| lines.iter().map(|_| prediction("a", 0.1)).collect(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("too wide"));
    }

    #[test]
    fn prepared_lines_hold_every_width_stretched_from_the_source() {
        let cfg = PreprocessConfig::default();
        let source = GrayImage::from_fn(200, 50, |x, _| {
            image::Luma([if x % 7 < 3 { 0 } else { 255 }])
        });
        let widths = WidthReadings::new(vec![1.0, 1.5, 0.5], None).unwrap();
        let line = widths.prepare(&source, &cfg).unwrap();
        let plain = preprocess::prepare(&source, &cfg).unwrap();
        let w: Vec<u32> = line.widths().iter().map(|l| l.width).collect();
        assert_eq!(line.first(), &plain, "×1 is the line as `prepare` gives it");
        assert_eq!(
            w,
            vec![
                plain.width,
                (plain.width as f32 * 1.5).round() as u32,
                plain.width / 2
            ]
        );
        assert!(line.widths().iter().all(|l| l.height == cfg.height));
        assert_eq!(PreparedLine::single(plain.clone()).widths(), &[plain]);
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let err = |f: Vec<f32>, t| WidthReadings::new(f, t).unwrap_err().to_string();
        assert_eq!(err(vec![], None), "no width given");
        assert!(err(vec![1.0, 5.0], None).contains("outside 0.25..4"));
        assert!(err(vec![1.0, 1.0], None).contains("given twice"));
        assert!(err(vec![f32::NAN], None).contains("outside"));
        assert!(err(vec![1.0], Some(1.5)).contains("threshold 1.5"));
        assert!(WidthReadings::default().is_single());
        assert!(!WidthReadings::new(vec![1.0, 1.2], None)
            .unwrap()
            .is_single());
    }
}
