//! How trial progress reaches the status while trials run: the worker rewrites
//! `<storage>/<run>/<trial>/progress.json` at every evaluation and checkpoint, and the operator
//! reads it for each active trial on every reconcile (runs with active trials are requeued every
//! `--progress-interval`). When a pod ends, its termination message carries the same record, so
//! the final result arrives even when the operator cannot read the storage.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;

use futures::future::BoxFuture;
use textrec_contract::metrics::EvalPoint;
use textrec_contract::{layout, Store, TrialProgress};

/// Where the operator reads trial progress from.
pub trait ProgressSource: Send + Sync {
    /// The trial's latest `progress.json`, if readable. Failures are logged, not fatal: the
    /// status then lags until the next read or the pod's termination message.
    fn read<'a>(&'a self, trial_url: &'a str) -> BoxFuture<'a, Option<TrialProgress>>;

    /// Every evaluation the trial recorded (its `metrics.jsonl`), oldest first, if readable:
    /// the history early stopping compares trials on. A source that cannot tell returns `None`
    /// and the history is built from the `progress.json` snapshots alone.
    fn read_evals<'a>(&'a self, _trial_url: &'a str) -> BoxFuture<'a, Option<Vec<EvalPoint>>> {
        Box::pin(async { None })
    }
}

/// How long one read of a trial's storage may take before it counts as failed. Reads happen
/// inside reconciles (and the local runner's loop); without a bound, an endpoint that accepts
/// connections and never answers holds them for `object_store`'s retry budget (minutes), and
/// with them every status change of the run, a preempted trial's included.
pub const PROGRESS_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Reads `progress.json` through `object_store` (credentials from the operator's environment:
/// IRSA / Workload Identity / `AWS_*`).
pub struct StorageProgress {
    stores: Mutex<HashMap<String, Store>>,
    read_timeout: Duration,
}

impl Default for StorageProgress {
    fn default() -> Self {
        Self::with_read_timeout(PROGRESS_READ_TIMEOUT)
    }
}

impl StorageProgress {
    /// A reader whose every storage read gives up after `read_timeout`.
    pub fn with_read_timeout(read_timeout: Duration) -> Self {
        Self {
            stores: Mutex::default(),
            read_timeout,
        }
    }

    fn store(&self, url: &str) -> anyhow::Result<Store> {
        // Opening a store builds a cloud client; keep one per trial folder (bounded by active trials).
        let mut map = self.stores.lock().expect("progress store map");
        if let Some(s) = map.get(url) {
            return Ok(s.clone());
        }
        if map.len() > 4096 {
            map.clear();
        }
        // Never create local folders from the operator: a file:// store it cannot see is skipped.
        if let Some(path) = url.strip_prefix("file://") {
            if !std::path::Path::new(path).exists() {
                anyhow::bail!("{url} is not mounted in the operator");
            }
        }
        let s = Store::open(url)?;
        map.insert(url.to_string(), s.clone());
        Ok(s)
    }

    /// The trial's file `rel`: `Some(None)` when it does not exist yet, `None` when it could not
    /// be read (logged).
    async fn fetch(&self, trial_url: &str, rel: &str) -> Option<Option<Bytes>> {
        let store = match self.store(trial_url) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(url = trial_url, error = %e, "cannot open trial storage");
                return None;
            }
        };
        match tokio::time::timeout(self.read_timeout, store.get_opt(rel)).await {
            Ok(Ok(found)) => Some(found),
            Ok(Err(e)) => {
                tracing::warn!(
                    url = trial_url,
                    error = format!("{e:#}"),
                    "cannot read {rel}"
                );
                None
            }
            Err(_) => {
                tracing::warn!(
                    url = trial_url,
                    "cannot read {rel}: the storage did not answer within {:?}",
                    self.read_timeout
                );
                None
            }
        }
    }

    /// `metrics.jsonl`'s evaluations (see [`ProgressSource::read_evals`]).
    async fn evals(&self, trial_url: &str) -> Option<Vec<EvalPoint>> {
        Some(match self.fetch(trial_url, layout::METRICS).await? {
            Some(bytes) => {
                crate::early_stopping::evals_of_metrics(&String::from_utf8_lossy(&bytes))
            }
            None => Vec::new(),
        })
    }
}

impl ProgressSource for StorageProgress {
    fn read<'a>(&'a self, trial_url: &'a str) -> BoxFuture<'a, Option<TrialProgress>> {
        Box::pin(async move {
            let bytes = self.fetch(trial_url, layout::PROGRESS).await??;
            match serde_json::from_slice(&bytes) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(url = trial_url, error = %e, "unreadable progress.json");
                    None
                }
            }
        })
    }

    fn read_evals<'a>(&'a self, trial_url: &'a str) -> BoxFuture<'a, Option<Vec<EvalPoint>>> {
        Box::pin(self.evals(trial_url))
    }
}

/// A source that knows nothing (tests, benchmarks, `--no-progress`).
pub struct NoProgress;

impl ProgressSource for NoProgress {
    fn read<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Option<TrialProgress>> {
        Box::pin(async { None })
    }
}

/// A fixed map of trial URL → progress (tests, the local runner's fakes).
#[derive(Default)]
pub struct StaticProgress(pub Mutex<HashMap<String, TrialProgress>>);

impl ProgressSource for StaticProgress {
    fn read<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Option<TrialProgress>> {
        let p = self.0.lock().expect("static progress").get(url).cloned();
        Box::pin(async move { p })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_progress_json_from_a_file_store() {
        let dir = tempfile::tempdir().unwrap();
        let trial = dir.path().join("run/run-t0");
        std::fs::create_dir_all(&trial).unwrap();
        let p = serde_json::json!({"phase": "Running", "step": 250, "max_steps": 1000,
            "latest": {"step": 250, "cer": 0.3, "wer": 0.6}, "updated": "2026-01-01T00:00:00Z"});
        std::fs::write(trial.join("progress.json"), p.to_string()).unwrap();
        let src = StorageProgress::default();
        let url = format!("file://{}", trial.display());
        let got = src.read(&url).await.unwrap();
        assert_eq!(got.step, 250);
        assert!(src
            .read(&format!("file://{}/missing", dir.path().display()))
            .await
            .is_none());
        // No metrics.jsonl yet: an empty history; then its eval records.
        assert_eq!(src.read_evals(&url).await, Some(vec![]));
        std::fs::write(
            trial.join("metrics.jsonl"),
            r#"{"kind":"eval","step":250,"time":"2026-01-01T00:00:00Z","elapsed_s":2.0,"cer":0.3,"wer":0.6}"#,
        )
        .unwrap();
        let evals = src.read_evals(&url).await.unwrap();
        assert_eq!((evals[0].step, evals[0].cer), (250, 0.3));
    }

    /// An S3 endpoint that accepts connections and never answers: the reads give up after the
    /// reader's timeout instead of `object_store`'s request timeout and retries (minutes).
    #[tokio::test]
    async fn a_storage_endpoint_that_never_answers_costs_one_timeout() {
        let url = "s3://runs/run/run-t0/";
        let src = StorageProgress::with_read_timeout(Duration::from_millis(300));
        src.stores.lock().unwrap().insert(
            url.to_string(),
            textrec_contract::storage::testing::silent_s3(url),
        );
        let started = std::time::Instant::now();
        assert!(src.read(url).await.is_none());
        assert!(src.read_evals(url).await.is_none(), "unknown, not empty");
        let waited = started.elapsed();
        // object_store alone waits 30 s for one answer before it even retries.
        assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    }
}
