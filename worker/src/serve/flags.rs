//! Flagged samples: an image the model got wrong (or right), with the text it should read,
//! stored as a tesstrain pair (`NAME.png` + `NAME.gt.txt`) plus `NAME.jsonl` (one JSON record:
//! time, model version, prediction, correction) under `--flags`, ready to train on.
//!
//! Object stores cannot append, and several replicas may flag at once, so every flag is its own
//! set of objects with a unique name; `cat *.jsonl` gives the whole log.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use textrec_contract::Store;

use super::limits::{Limits, ServeError};

/// Longest accepted correction or prediction, in characters (a text line, not a document).
pub const MAX_TEXT_CHARS: usize = 2000;

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

/// The flags folder.
pub struct FlagStore {
    store: Store,
    seq: AtomicU64,
}

impl FlagStore {
    /// Open (and for local paths create) the flags folder.
    pub fn open(location: &str) -> anyhow::Result<Self> {
        Ok(Self {
            store: Store::open(location)?,
            seq: AtomicU64::new(0),
        })
    }

    /// The folder's URL.
    pub fn url(&self) -> &str {
        self.store.url()
    }

    /// Store one flagged sample.
    pub async fn flag(
        &self,
        image: Bytes,
        prediction: &str,
        corrected: Option<&str>,
        model_version: &str,
        limits: &Limits,
    ) -> Result<FlagRecord, ServeError> {
        limits.check(&image, u64::MAX)?;
        // The record keeps the prediction as the model wrote it; the ground truth is one clean line.
        let clean_prediction = one_line(prediction, "prediction")?;
        let prediction = prediction.to_string();
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
        let sha = textrec_contract::manifest::sha256_hex(&image);
        let time = Utc::now();
        let name = self.unique_name(time, &sha);
        let png = tokio::task::spawn_blocking(move || to_png(image))
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))??;
        let record = FlagRecord {
            image_url: self.store.url_of(&format!("{name}.png")),
            gt_url: self.store.url_of(&format!("{name}.gt.txt")),
            name: name.clone(),
            time,
            model_version: model_version.to_string(),
            prediction,
            corrected_text: corrected,
            ground_truth: ground_truth.clone(),
            image_sha256: sha,
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
                Bytes::from(format!("{ground_truth}\n")),
            )
            .await
            .map_err(storage)?;
        self.store
            .put(&format!("{name}.jsonl"), Bytes::from(line))
            .await
            .map_err(storage)?;
        tracing::info!(name, url = self.store.url(), "sample flagged");
        Ok(record)
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

/// PNG bytes of the image: PNGs are kept as sent, other formats are re-encoded (the limits were
/// checked before decoding).
fn to_png(image: Bytes) -> Result<Bytes, ServeError> {
    if image::guess_format(&image).ok() == Some(image::ImageFormat::Png) {
        return Ok(image);
    }
    let img = image::load_from_memory(&image)
        .map_err(|e| ServeError::InvalidArgument(format!("cannot decode image: {e}")))?;
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| ServeError::Internal(format!("cannot encode PNG: {e}")))?;
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(format: image::ImageFormat) -> Bytes {
        let img = image::GrayImage::from_pixel(16, 8, image::Luma([200]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), format).unwrap();
        Bytes::from(out)
    }

    #[tokio::test]
    async fn flags_write_a_tesstrain_pair_and_a_record() {
        let tmp = tempfile::tempdir().unwrap();
        let flags = FlagStore::open(tmp.path().to_str().unwrap()).unwrap();
        let limits = Limits {
            max_request_bytes: 1 << 20,
            max_pixels: 1 << 20,
        };
        let r = flags
            .flag(
                image(image::ImageFormat::Bmp),
                "helo",
                Some("hello\nworld "),
                "v1",
                &limits,
            )
            .await
            .unwrap();
        assert_eq!(r.ground_truth, "hello world");
        let png = std::fs::read(tmp.path().join(format!("{}.png", r.name))).unwrap();
        assert_eq!(image::guess_format(&png).unwrap(), image::ImageFormat::Png);
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
        let r2 = flags
            .flag(image(image::ImageFormat::Png), "x", None, "v1", &limits)
            .await
            .unwrap();
        assert_ne!(r.name, r2.name);
        assert_eq!(r2.ground_truth, "x");
        let e = flags
            .flag(image(image::ImageFormat::Png), " ", Some(""), "v1", &limits)
            .await
            .unwrap_err();
        assert!(matches!(e, ServeError::InvalidArgument(_)));
        let e = flags
            .flag(Bytes::from_static(b"nope"), "x", None, "v1", &limits)
            .await
            .unwrap_err();
        assert!(matches!(e, ServeError::InvalidArgument(_)));
    }
}
