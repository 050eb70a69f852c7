//! What tesstrain folders and IAM have in common: a list of (image file, transcription)
//! pairs checked once when the set is opened.
//!
//! Every image is decoded in full when the set is opened (in parallel), because a truncated
//! file often has a valid header: a set that opened must not fail halfway through training.
//! Bad entries are left out and reported ([`Skipped`]).
//!
//! Transcriptions with characters outside the charset are left out too, for training and
//! evaluation alike: such a line cannot be a target, and scoring it would charge the model
//! for characters it cannot emit. The count is in `skipped()` and in `describe()`, so an
//! evaluation report can say how many lines it did not score.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use textrec_contract::config::PreprocessConfig;

use super::{Dataset, Sample, Skipped};
use crate::preprocess::decode_gray;

/// A candidate line before checking.
pub(crate) struct Candidate {
    pub image: PathBuf,
    pub text: String,
    pub id: String,
}

/// The checked lines of a file-based set (a tesstrain folder, IAM), as a [`Dataset`].
#[derive(Debug)]
pub struct FileLines {
    /// What the set is, for [`Dataset::describe`] and the log: `tesstrain folder /data/gt`.
    origin: String,
    pub(crate) lines: Vec<(PathBuf, String, String)>,
    pub(crate) skipped: Vec<Skipped>,
}

impl FileLines {
    /// Check candidates (charset, decodability), keep at most `cap` good ones, in order, and
    /// log what was left out. `origin` names the set (`IAM lines at /data/iam`).
    pub(crate) fn check(
        origin: String,
        candidates: Vec<Candidate>,
        mut skipped: Vec<Skipped>,
        charset: &str,
        cap: Option<u64>,
    ) -> Self {
        let allowed: std::collections::HashSet<char> = charset.chars().collect();
        let mut pending = Vec::new();
        for c in candidates {
            if c.text.is_empty() {
                skipped.push(Skipped {
                    path: c.image,
                    reason: "empty transcription".into(),
                });
            } else if let Some(bad) = c.text.chars().find(|ch| !allowed.contains(ch)) {
                skipped.push(Skipped {
                    path: c.image,
                    reason: format!(
                        "transcription has {bad:?} (U+{:04X}), which is not in the charset",
                        bad as u32
                    ),
                });
            } else {
                pending.push(c);
            }
        }
        let verdicts = verify_all(&pending);
        let mut lines = Vec::new();
        for (c, verdict) in pending.into_iter().zip(verdicts) {
            match verdict {
                Err(reason) => skipped.push(Skipped {
                    path: c.image,
                    reason,
                }),
                Ok(()) => lines.push((c.image, c.text, c.id)),
            }
        }
        if let Some(cap) = cap {
            lines.truncate(cap.min(usize::MAX as u64) as usize);
        }
        let checked = Self {
            origin,
            lines,
            skipped,
        };
        checked.warn_skipped();
        checked
    }

    /// Log the skipped inputs (first few in full).
    fn warn_skipped(&self) {
        if self.skipped.is_empty() {
            return;
        }
        let list: Vec<String> = self
            .skipped
            .iter()
            .take(20)
            .map(|s| format!("{} ({})", s.path.display(), s.reason))
            .collect();
        tracing::warn!(
            skipped = self.skipped.len(),
            kept = self.lines.len(),
            "{}: left out {} inputs: {}{}",
            self.origin,
            self.skipped.len(),
            list.join("; "),
            if self.skipped.len() > 20 { "; ..." } else { "" }
        );
    }
}

impl Dataset for FileLines {
    fn len(&self) -> Option<u64> {
        Some(self.lines.len() as u64)
    }

    fn get(&self, index: u64) -> Result<Sample> {
        let (path, text, id) = self
            .lines
            .get(usize::try_from(index).unwrap_or(usize::MAX))
            .with_context(|| {
                format!(
                    "sample {index} is out of range (the set has {})",
                    self.lines.len()
                )
            })?;
        let image = load_image(path)?;
        Ok(Sample {
            image,
            text: text.clone(),
            id: id.clone(),
        })
    }

    fn describe(&self) -> String {
        format!(
            "{}: {} lines ({} inputs left out)",
            self.origin,
            self.lines.len(),
            self.skipped.len()
        )
    }

    fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }
}

fn load_image(path: &Path) -> Result<image::GrayImage> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    decode_gray(&bytes, PreprocessConfig::default().max_source_pixels)
        .with_context(|| format!("{}", path.display()))
}

/// Decode every image, on several threads; `Err(reason)` for the unusable ones.
fn verify_all(items: &[Candidate]) -> Vec<Result<(), String>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
        .min(items.len().max(1));
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|c| {
                            load_image(&c.image)
                                .map(|_| ())
                                .map_err(|e| format!("{e:#}"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("image check thread panicked"))
            .collect()
    })
}
