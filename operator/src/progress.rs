//! How trial progress reaches the status while trials run: the worker rewrites
//! `<storage>/<run>/<trial>/progress.json` at every evaluation and checkpoint, and the operator
//! reads it for each active trial on every reconcile (runs with active trials are requeued every
//! `--progress-interval`). When a pod ends, its termination message carries the same record, so
//! the final result arrives even when the operator cannot read the storage.

use std::collections::HashMap;
use std::sync::Mutex;

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

/// Reads `progress.json` through `object_store` (credentials from the operator's environment:
/// IRSA / Workload Identity / `AWS_*`).
#[derive(Default)]
pub struct StorageProgress {
    stores: Mutex<HashMap<String, Store>>,
}

impl StorageProgress {
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
}

impl ProgressSource for StorageProgress {
    fn read<'a>(&'a self, trial_url: &'a str) -> BoxFuture<'a, Option<TrialProgress>> {
        Box::pin(async move {
            let store = match self.store(trial_url) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(url = trial_url, error = %e, "cannot open trial storage");
                    return None;
                }
            };
            match store.get_opt(layout::PROGRESS).await {
                Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!(url = trial_url, error = %e, "unreadable progress.json");
                        None
                    }
                },
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(
                        url = trial_url,
                        error = format!("{e:#}"),
                        "cannot read progress.json"
                    );
                    None
                }
            }
        })
    }

    fn read_evals<'a>(&'a self, trial_url: &'a str) -> BoxFuture<'a, Option<Vec<EvalPoint>>> {
        Box::pin(self.evals(trial_url))
    }
}

impl StorageProgress {
    /// `metrics.jsonl`'s evaluations (see [`ProgressSource::read_evals`]).
    async fn evals(&self, trial_url: &str) -> Option<Vec<EvalPoint>> {
        let store = self.store(trial_url).ok()?;
        match store.get_opt(layout::METRICS).await {
            Ok(Some(bytes)) => Some(crate::early_stopping::evals_of_metrics(
                &String::from_utf8_lossy(&bytes),
            )),
            Ok(None) => Some(Vec::new()),
            Err(e) => {
                tracing::warn!(
                    url = trial_url,
                    error = format!("{e:#}"),
                    "cannot read metrics.jsonl"
                );
                None
            }
        }
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
}
