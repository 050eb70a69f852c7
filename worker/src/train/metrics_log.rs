//! `metrics.jsonl`: one [`MetricsRecord`] per line.
//!
//! Object stores cannot append, so the lines are kept in memory and the whole file is rewritten
//! when it is flushed (at log, eval and checkpoint time; a few hundred short lines per trial).
//! Because every flush writes everything, a flush that fails loses nothing: the log stays
//! unflushed and the next flush that succeeds writes the records it missed.
//! On resume, records after the resumed step are dropped: those steps run again and would
//! otherwise appear twice. The trial's TensorBoard event file is derived from the same records
//! and rewritten with it (see [`super::tensorboard`]).

use anyhow::Result;
use bytes::Bytes;
use textrec_contract::layout;
use textrec_contract::metrics::MetricsRecord;
use textrec_contract::Store;

use super::tensorboard::{self, TaggedImage};

/// The in-memory copy of `metrics.jsonl`.
#[derive(Default)]
pub struct MetricsLog {
    lines: Vec<String>,
    /// Counts changes; a flush is needed while it is ahead of `flushed`.
    changes: u64,
    /// `changes` as of the newest snapshot known to be stored.
    flushed: u64,
    /// Validation lines TensorBoard shows beside the readings.
    images: Vec<TaggedImage>,
    /// Wall time of the first record: the TensorBoard file's start.
    start: Option<f64>,
    /// The records' TensorBoard events, encoded once as each record arrives.
    events: Vec<u8>,
}

impl MetricsLog {
    /// Read the existing file (if any), keeping only records at or before `resumed_step`.
    /// Lines that do not parse (a torn write from another tool) are dropped with a warning.
    pub async fn load(store: &Store, resumed_step: u64) -> Result<Self> {
        let mut log = Self::default();
        let mut dropped = 0usize;
        if let Some(bytes) = store.get_opt(layout::METRICS).await? {
            for line in String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|l| !l.trim().is_empty())
            {
                match serde_json::from_str::<MetricsRecord>(line) {
                    Ok(r) if r.step <= resumed_step => log.keep(line.to_string(), &r),
                    Ok(_) => dropped += 1,
                    Err(e) => tracing::warn!("metrics.jsonl: dropping an unreadable line: {e}"),
                }
            }
        }
        if dropped > 0 {
            tracing::info!(
                "metrics.jsonl: dropped {dropped} records after step {resumed_step}; those steps run again"
            );
        }
        if dropped > 0 {
            log.changes += 1;
        }
        Ok(log)
    }

    /// Add a record (written at the next flush).
    pub fn push(&mut self, record: &MetricsRecord) {
        let line = serde_json::to_string(record).expect("metrics record serializes");
        self.keep(line, record);
        self.changes += 1;
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Hold `line`, the serialized `record`, and its TensorBoard events.
    fn keep(&mut self, line: String, record: &MetricsRecord) {
        self.start
            .get_or_insert_with(|| tensorboard::wall_time(record));
        self.events.extend(tensorboard::record_events(record));
        self.lines.push(line);
    }

    /// Images written into the TensorBoard file at step 0 (from the next flush on).
    pub fn set_images(&mut self, images: Vec<TaggedImage>) {
        self.images = images;
        self.changes += 1;
    }

    /// Rewrite the file, and the TensorBoard event file after it, if anything changed.
    pub async fn flush(&mut self, store: &Store) -> Result<()> {
        if let Some(snapshot) = self.unflushed() {
            let version = snapshot.write(store).await?;
            self.mark_flushed(version);
        }
        Ok(())
    }

    /// Both files as they stand, to be written elsewhere (a background task), or `None` when
    /// the stored copy is already current. Hand the version [`MetricsSnapshot::write`] returns
    /// to [`Self::mark_flushed`]; until then the log counts as unflushed.
    pub fn unflushed(&self) -> Option<MetricsSnapshot> {
        if self.changes == self.flushed {
            return None;
        }
        let mut text = self.lines.join("\n");
        text.push('\n');
        let mut events = tensorboard::header(self.start.unwrap_or(0.0), &self.images);
        events.extend_from_slice(&self.events);
        Some(MetricsSnapshot {
            metrics: Bytes::from(text),
            events: Bytes::from(events),
            version: self.changes,
        })
    }

    /// Record that a snapshot of `version` was stored. Records pushed after it was taken keep
    /// the log unflushed.
    pub fn mark_flushed(&mut self, version: u64) {
        self.flushed = self.flushed.max(version);
    }
}

/// `metrics.jsonl` and the TensorBoard event file as of one moment (see
/// [`MetricsLog::unflushed`]).
pub struct MetricsSnapshot {
    metrics: Bytes,
    events: Bytes,
    version: u64,
}

impl MetricsSnapshot {
    /// Write both files (`metrics.jsonl` first); returns the version to mark flushed.
    pub async fn write(self, store: &Store) -> Result<u64> {
        store.put(layout::METRICS, self.metrics).await?;
        store.put(layout::TENSORBOARD_EVENTS, self.events).await?;
        Ok(self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use textrec_contract::metrics::RecordKind;

    fn rec(step: u64) -> MetricsRecord {
        MetricsRecord {
            kind: RecordKind::Train,
            step,
            time: chrono::Utc::now(),
            elapsed_s: step as f64,
            loss: Some(1.0),
            lr: Some(0.1),
            samples_per_sec: None,
            peak_rss_mib: None,
            cer: None,
            wer: None,
            sets: Default::default(),
        }
    }

    #[tokio::test]
    async fn resume_drops_records_after_the_step() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().to_str().unwrap()).unwrap();
        let mut log = MetricsLog::load(&store, 0).await.unwrap();
        for s in [10, 20, 30] {
            log.push(&rec(s));
        }
        log.flush(&store).await.unwrap();
        let log = MetricsLog::load(&store, 20).await.unwrap();
        assert_eq!(log.len(), 2);
    }

    /// A snapshot that was never stored (a failed background write) leaves its records to the
    /// next flush; one stored after more records arrived does not cover them.
    #[tokio::test]
    async fn records_of_a_lost_snapshot_are_written_by_the_next_flush() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().to_str().unwrap()).unwrap();
        let mut log = MetricsLog::load(&store, 0).await.unwrap();
        log.push(&rec(10));
        let lost = log.unflushed().expect("a record to write");
        drop(lost);
        let stored = log.unflushed().unwrap();
        log.push(&rec(20));
        let version = stored.write(&store).await.unwrap();
        log.mark_flushed(version);
        assert!(log.unflushed().is_some(), "step 20 is not stored yet");
        log.flush(&store).await.unwrap();
        assert!(log.unflushed().is_none());
        assert_eq!(MetricsLog::load(&store, 100).await.unwrap().len(), 2);
    }
}
