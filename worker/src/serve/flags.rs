//! Flagged samples: an image the model got wrong (or right), with the text it should read,
//! stored as a tesstrain pair (`NAME.png` + `NAME.gt.txt`) plus `NAME.jsonl` (one JSON record:
//! time, model version, prediction, correction) under `--flags`, ready to train on.
//!
//! Object stores cannot append, and several replicas may flag at once, so every flag is its own
//! set of objects with a unique name; `cat *.jsonl` gives the whole log.
//!
//! With `--flags-max-samples` the folder is capped: past it the oldest flags (names sort by
//! time) are deleted, record first so a half-deleted flag is never listed as complete. Each
//! server counts what it lists at its first flag plus what it writes, and lists again every
//! [`RELIST_EVERY`] flags to see the other replicas' flags.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use textrec_contract::Store;
use textrec_model::preprocess::decode_checked;

use super::limits::{CheckedImage, ServeError};

/// Longest accepted correction or prediction, in characters (a text line, not a document).
pub const MAX_TEXT_CHARS: usize = 1024;
/// Longest accepted model version, in characters (a sha256 is 64).
pub const MAX_VERSION_CHARS: usize = 256;

/// One flag, as written to `NAME.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct FlagRecord {
    /// File stem of the pair.
    pub name: String,
    /// When it was flagged.
    pub time: DateTime<Utc>,
    /// Version of the model whose prediction was flagged.
    pub model_version: String,
    /// What the model read.
    pub prediction: String,
    /// What the user says it reads, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrected_text: Option<String>,
    /// The ground truth written to `NAME.gt.txt`: the correction, else the prediction.
    pub ground_truth: String,
    /// sha256 of the image as received.
    pub image_sha256: String,
    /// URL of `NAME.png`.
    pub image_url: String,
    /// URL of `NAME.gt.txt`.
    pub gt_url: String,
}

/// What a client sends to flag a sample.
#[derive(Debug, Clone)]
pub struct FlagInput {
    /// The encoded image.
    pub image: Bytes,
    /// What the model read.
    pub prediction: String,
    /// What the user says it reads.
    pub corrected_text: Option<String>,
    /// The model version the client saw; the served one when absent.
    pub model_version: Option<String>,
}

/// A flag's text fields, checked and cleaned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagText {
    /// The prediction as sent (the record keeps it as the model wrote it).
    pub prediction: String,
    /// The cleaned correction; `None` when absent or blank.
    pub corrected: Option<String>,
    /// One clean, non-empty line: the correction, else the prediction.
    pub ground_truth: String,
    /// The model version, when the client gave one.
    pub model_version: Option<String>,
}

impl FlagText {
    /// Check the sizes of every field and derive the ground truth. Every field is capped: the
    /// record is stored forever, and a training run reads every `.gt.txt`.
    pub fn check(
        prediction: &str,
        corrected: Option<&str>,
        model_version: Option<&str>,
    ) -> Result<Self, ServeError> {
        let clean_prediction = one_line(prediction, "prediction")?;
        let corrected = match corrected
            .map(|c| one_line(c, "corrected_text"))
            .transpose()?
        {
            Some(c) if !c.is_empty() => Some(c),
            _ => None,
        };
        let ground_truth = corrected.clone().unwrap_or(clean_prediction);
        if ground_truth.is_empty() {
            return Err(ServeError::InvalidArgument(
                "nothing to store as ground truth: both prediction and corrected_text are empty"
                    .into(),
            ));
        }
        let model_version = match model_version {
            Some(v) if v.chars().count() > MAX_VERSION_CHARS => {
                return Err(ServeError::InvalidArgument(format!(
                    "model_version is longer than {MAX_VERSION_CHARS} characters"
                )))
            }
            Some(v) if v.chars().any(char::is_control) => {
                return Err(ServeError::InvalidArgument(
                    "model_version holds control characters".into(),
                ))
            }
            Some(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
            _ => None,
        };
        Ok(Self {
            prediction: prediction.to_string(),
            corrected,
            ground_truth,
            model_version,
        })
    }
}

/// Flags stored between two listings of the folder when it is capped.
pub const RELIST_EVERY: usize = 200;

/// The flags folder.
pub struct FlagStore {
    store: Store,
    seq: AtomicU64,
    /// The most flags kept (`None`: no cap).
    max_samples: Option<usize>,
    /// The flags known to be in the folder, oldest first, and flags stored since the last
    /// listing; `None` until the first flag lists the folder.
    index: tokio::sync::Mutex<Option<(VecDeque<String>, usize)>>,
}

impl FlagStore {
    /// Open (and for local paths create) the flags folder; `max_samples` caps it.
    pub fn open(location: &str, max_samples: Option<usize>) -> anyhow::Result<Self> {
        Ok(Self {
            store: Store::open(location)?,
            seq: AtomicU64::new(0),
            max_samples: max_samples.filter(|&m| m > 0),
            index: tokio::sync::Mutex::new(None),
        })
    }

    /// The cap on stored flags, if any.
    pub fn max_samples(&self) -> Option<usize> {
        self.max_samples
    }

    /// The folder's URL.
    pub fn url(&self) -> &str {
        self.store.url()
    }

    /// Store one flagged sample: `png` is the image as the recognizer sees it, `image_sha256`
    /// the hash of the image as received.
    pub async fn store(
        &self,
        png: Bytes,
        image_sha256: String,
        text: FlagText,
        model_version: String,
    ) -> Result<FlagRecord, ServeError> {
        let time = Utc::now();
        let name = self.unique_name(time, &image_sha256);
        let record = FlagRecord {
            image_url: self.store.url_of(&format!("{name}.png")),
            gt_url: self.store.url_of(&format!("{name}.gt.txt")),
            name: name.clone(),
            time,
            model_version,
            prediction: text.prediction,
            corrected_text: text.corrected,
            ground_truth: text.ground_truth.clone(),
            image_sha256,
        };
        let mut line =
            serde_json::to_vec(&record).map_err(|e| ServeError::Internal(e.to_string()))?;
        line.push(b'\n');
        let storage =
            |e: anyhow::Error| ServeError::Internal(format!("cannot store the flag: {e:#}"));
        // The record goes last: a JSONL entry means its pair is complete.
        self.store
            .put(&format!("{name}.png"), png)
            .await
            .map_err(storage)?;
        self.store
            .put(
                &format!("{name}.gt.txt"),
                Bytes::from(format!("{}\n", text.ground_truth)),
            )
            .await
            .map_err(storage)?;
        self.store
            .put(&format!("{name}.jsonl"), Bytes::from(line))
            .await
            .map_err(storage)?;
        tracing::info!(name, url = self.store.url(), "sample flagged");
        if let Err(e) = self.prune(&name).await {
            // The flag itself is stored; a cap that lags behind costs only space.
            tracing::warn!("flags folder: cannot drop the oldest flags: {e:#}");
        }
        Ok(record)
    }

    /// After `name` was stored: delete the oldest flags beyond the cap.
    async fn prune(&self, name: &str) -> anyhow::Result<()> {
        let Some(max) = self.max_samples else {
            return Ok(());
        };
        let mut guard = self.index.lock().await;
        let relist = match guard.as_mut() {
            Some((known, since)) if *since < RELIST_EVERY => {
                known.push_back(name.to_string());
                *since += 1;
                false
            }
            _ => true,
        };
        if relist {
            let known: VecDeque<String> = self
                .store
                .list_files("")
                .await?
                .into_iter()
                .filter_map(|f| f.strip_suffix(".jsonl").map(str::to_string))
                .collect();
            *guard = Some((known, 0));
        }
        let (known, _) = guard.as_mut().expect("set above");
        while known.len() > max {
            let oldest = known.pop_front().expect("longer than max >= 1");
            for ext in ["jsonl", "png", "gt.txt"] {
                self.store.delete(&format!("{oldest}.{ext}")).await?;
            }
            tracing::info!(
                name = oldest,
                max,
                "oldest flag dropped (--flags-max-samples)"
            );
        }
        Ok(())
    }

    /// `flag-<UTC time>-<image sha prefix>-<pid><seq>`: only `[0-9a-z-]`, sortable by time, and
    /// unique across flags of one process and across replicas.
    fn unique_name(&self, time: DateTime<Utc>, sha: &str) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        format!(
            "flag-{}-{}-{:x}{:04x}",
            time.format("%Y%m%dt%H%M%S%3f"),
            &sha[..12],
            std::process::id(),
            seq
        )
    }
}

/// A text line for a `.gt.txt`: control characters (newlines included) become spaces, runs of
/// whitespace collapse, ends are trimmed.
fn one_line(s: &str, what: &str) -> Result<String, ServeError> {
    if s.chars().count() > MAX_TEXT_CHARS {
        return Err(ServeError::InvalidArgument(format!(
            "{what} is longer than {MAX_TEXT_CHARS} characters"
        )));
    }
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Ok(cleaned.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The image as recognition decodes it (8-bit gray, transparency on white), as PNG.
pub fn to_png(image: &CheckedImage) -> Result<Bytes, ServeError> {
    let gray = decode_checked(&image.bytes, &image.source)
        .map_err(|e| ServeError::InvalidArgument(format!("cannot decode image: {e:#}")))?;
    let mut out = Vec::new();
    gray.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| ServeError::Internal(format!("cannot encode PNG: {e}")))?;
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(format: image::ImageFormat) -> Bytes {
        let img = image::GrayImage::from_pixel(16, 8, image::Luma([200]));
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), format)
            .unwrap();
        Bytes::from(out)
    }

    fn checked(bytes: Bytes) -> CheckedImage {
        let limits = super::super::limits::Limits {
            max_request_bytes: 1 << 20,
            max_pixels: 1 << 20,
            max_call_pixels: 1 << 20,
        };
        limits.check(bytes, u64::MAX).unwrap()
    }

    #[tokio::test]
    async fn flags_write_a_tesstrain_pair_and_a_record() {
        let tmp = tempfile::tempdir().unwrap();
        let flags = FlagStore::open(tmp.path().to_str().unwrap(), None).unwrap();
        let bmp = checked(image(image::ImageFormat::Bmp));
        let png = to_png(&bmp).unwrap();
        let text = FlagText::check("helo", Some("hello\nworld "), Some("v1")).unwrap();
        let r = flags
            .store(png, "ab".repeat(32), text, "v1".into())
            .await
            .unwrap();
        assert_eq!(r.ground_truth, "hello world");
        let png = std::fs::read(tmp.path().join(format!("{}.png", r.name))).unwrap();
        assert_eq!(image::guess_format(&png).unwrap(), image::ImageFormat::Png);
        assert_eq!(
            image::load_from_memory(&png).unwrap().into_luma8(),
            image::GrayImage::from_pixel(16, 8, image::Luma([200]))
        );
        let gt = std::fs::read_to_string(tmp.path().join(format!("{}.gt.txt", r.name))).unwrap();
        assert_eq!(gt, "hello world\n");
        let rec: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join(format!("{}.jsonl", r.name))).unwrap(),
        )
        .unwrap();
        assert_eq!(rec["prediction"], "helo");
        assert_eq!(rec["model_version"], "v1");
        assert!(
            r.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{}",
            r.name
        );
        // Same image, same instant: names still differ.
        let text = FlagText::check("x", None, None).unwrap();
        let png = to_png(&checked(image(image::ImageFormat::Png))).unwrap();
        let r2 = flags
            .store(png, "ab".repeat(32), text, "v1".into())
            .await
            .unwrap();
        assert_ne!(r.name, r2.name);
        assert_eq!(r2.ground_truth, "x");
    }

    #[test]
    fn every_text_field_is_capped() {
        let e = FlagText::check(" ", Some(""), None).unwrap_err();
        assert!(matches!(e, ServeError::InvalidArgument(_)));
        let long = "a".repeat(MAX_TEXT_CHARS + 1);
        assert!(FlagText::check(&long, None, None).is_err());
        assert!(FlagText::check("a", Some(&long), None).is_err());
        FlagText::check(&"a".repeat(MAX_TEXT_CHARS), None, None).unwrap();
        let version = "v".repeat(MAX_VERSION_CHARS + 1);
        assert!(FlagText::check("a", None, Some(&version)).is_err());
        assert!(FlagText::check("a", None, Some("v1\n")).is_err());
        let t = FlagText::check("a", Some("   "), Some(" ")).unwrap();
        assert_eq!((t.corrected, t.model_version), (None, None));
        assert_eq!(t.ground_truth, "a");
    }

    #[test]
    fn stored_images_are_what_recognition_decodes() {
        // Trailing junk is dropped by re-encoding.
        let mut junk = image(image::ImageFormat::Png).to_vec();
        junk.extend_from_slice(b"trailing junk");
        let png = to_png(&checked(junk.into())).unwrap();
        assert!(!png.ends_with(b"trailing junk"));
        // A truncated PNG has a readable header but is refused when decoded.
        let full = image(image::ImageFormat::Png);
        let cut = full.slice(..full.len() - 20);
        let e = to_png(&checked(cut)).unwrap_err();
        assert!(matches!(e, ServeError::InvalidArgument(_)), "{e:?}");
    }

    #[tokio::test]
    async fn a_capped_folder_keeps_the_newest_flags_and_counts_other_writers() {
        let tmp = tempfile::tempdir().unwrap();
        // A flag another replica wrote before this server's first flag: older than all of them.
        for ext in ["png", "gt.txt", "jsonl"] {
            std::fs::write(
                tmp.path().join(format!("flag-00000000t000000000-x.{ext}")),
                "x",
            )
            .unwrap();
        }
        let flags = FlagStore::open(tmp.path().to_str().unwrap(), Some(3)).unwrap();
        let png = to_png(&checked(image(image::ImageFormat::Bmp))).unwrap();
        let mut names = Vec::new();
        for i in 0..5 {
            let text = FlagText::check("p", Some(&format!("line {i}")), None).unwrap();
            let r = flags
                .store(png.clone(), "cd".repeat(32), text, "v".into())
                .await
                .unwrap();
            names.push(r.name);
        }
        let mut left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want: Vec<String> = names[2..]
            .iter()
            .flat_map(|n| ["gt.txt", "jsonl", "png"].map(|ext| format!("{n}.{ext}")))
            .collect();
        want.sort();
        assert_eq!(left, want, "the three newest flags, each complete");
    }
}
