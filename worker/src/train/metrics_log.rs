//! `metrics.jsonl`: one [`MetricsRecord`] per line.
//!
//! Object stores cannot append, so the lines are kept in memory and the whole file is rewritten
//! when it is flushed (at log, eval and checkpoint time; a few hundred short lines per trial).
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
    dirty: bool,
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
        log.dirty = dropped > 0;
        Ok(log)
    }

    /// Add a record (written at the next flush).
    pub fn push(&mut self, record: &MetricsRecord) {
        let line = serde_json::to_string(record).expect("metrics record serializes");
        self.keep(line, record);
        self.dirty = true;
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
        self.dirty = true;
    }

    /// Rewrite the file, and the TensorBoard event file after it, if anything changed.
    pub async fn flush(&mut self, store: &Store) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let mut text = self.lines.join("\n");
        text.push('\n');
        store.put(layout::METRICS, Bytes::from(text)).await?;
        let mut events = tensorboard::header(self.start.unwrap_or(0.0), &self.images);
        events.extend_from_slice(&self.events);
        store
            .put(layout::TENSORBOARD_EVENTS, Bytes::from(events))
            .await?;
        self.dirty = false;
        Ok(())
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
}
