//! The model slot and hot reload.
//!
//! The slot holds the model in service behind an `Arc`: a request takes a clone when it is
//! admitted and finishes on that model, whatever is swapped in meanwhile; the old model is
//! freed when its last request ends. Reloads come from SIGHUP (re-read `--model`, or the
//! pointer) and from polling `--model-pointer`. A model that fails to load or verify is
//! refused: the old one keeps serving, and the failure is kept for `/v1/model` and metrics.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::engine::{Engine, ServedModel};
use super::metrics::Metrics;

/// Loads the model folder at a URL (the real loader reads storage and libtorch; tests fake it).
pub type Loader = Arc<dyn Fn(String) -> BoxFuture<'static, Result<Arc<dyn Engine>>> + Send + Sync>;

/// Outcome of the latest load attempt.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReloadStatus {
    /// Whether it succeeded (an unchanged model counts as success).
    pub ok: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it finished.
    pub at: DateTime<Utc>,
    /// The model folder it tried.
    pub source: String,
    /// Version it loaded (or found already loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// What started it: `startup`, `pointer`, `sighup`.
    pub trigger: String,
}

/// The model in service.
pub struct ModelSlot {
    current: RwLock<Option<Arc<ServedModel>>>,
    last: Mutex<Option<ReloadStatus>>,
    version_tx: watch::Sender<Option<String>>,
    metrics: Arc<Metrics>,
}

impl ModelSlot {
    /// An empty slot.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            current: RwLock::new(None),
            last: Mutex::new(None),
            version_tx: watch::channel(None).0,
            metrics,
        }
    }

    /// The model in service, if any.
    pub fn current(&self) -> Option<Arc<ServedModel>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The latest load attempt.
    pub fn last_reload(&self) -> Option<ReloadStatus> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Follows the served version (for the gRPC health status).
    pub fn watch_version(&self) -> watch::Receiver<Option<String>> {
        self.version_tx.subscribe()
    }

    /// Put `model` in service.
    pub fn swap(&self, model: ServedModel) {
        let version = model.engine.version().to_string();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(model));
        self.version_tx.send_replace(Some(version));
    }

    fn record(&self, status: ReloadStatus) {
        self.metrics.observe_reload(
            status.ok,
            if status.ok {
                status.version.as_deref()
            } else {
                None
            },
        );
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }
}

/// Where the served model comes from, and the machinery that reloads it.
pub struct Reloader {
    slot: Arc<ModelSlot>,
    loader: Loader,
    model: Option<String>,
    pointer: Option<String>,
    /// Pointer content last acted on (loaded or refused): a refused target is not retried on
    /// every poll, only when the pointer changes or on SIGHUP.
    seen: Mutex<Option<String>>,
    /// One load at a time.
    busy: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// A reloader for `--model` and/or `--model-pointer`.
    pub fn new(
        slot: Arc<ModelSlot>,
        loader: Loader,
        model: Option<String>,
        pointer: Option<String>,
    ) -> Self {
        Self {
            slot,
            loader,
            model,
            pointer,
            seen: Mutex::new(None),
            busy: Default::default(),
        }
    }

    /// Load the first model. With a pointer, an unreadable pointer or bad model is returned as
    /// an error too; the caller decides whether to keep polling.
    pub async fn initial(&self) -> Result<()> {
        self.reload("startup", true).await
    }

    /// Re-read the model location (SIGHUP): the pointer if there is one, else `--model`.
    /// `force` retries a pointer target that was refused before.
    pub async fn reload(&self, trigger: &str, force: bool) -> Result<()> {
        let _busy = self.busy.lock().await;
        let url = match (&self.pointer, &self.model) {
            (Some(p), _) => {
                let target = match read_pointer(p).await {
                    Ok(t) => t,
                    Err(e) => {
                        // Not a reload attempt yet, but an operator must see it.
                        tracing::warn!(pointer = %p, "cannot read the model pointer: {e:#}");
                        return Err(e);
                    }
                };
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                if !force && seen.as_deref() == Some(target.as_str()) {
                    return Ok(());
                }
                *seen = Some(target.clone());
                target
            }
            (None, Some(m)) => m.clone(),
            (None, None) => anyhow::bail!("serve needs --model or --model-pointer"),
        };
        self.load(&url, trigger).await
    }

    async fn load(&self, url: &str, trigger: &str) -> Result<()> {
        tracing::info!(source = url, trigger, "loading model");
        let started = std::time::Instant::now();
        match (self.loader)(url.to_string()).await {
            Ok(engine) => {
                let version = engine.version().to_string();
                let unchanged = self
                    .slot
                    .current()
                    .is_some_and(|m| m.engine.version() == version);
                if unchanged {
                    tracing::info!(version, "model unchanged; keeping the loaded one");
                } else {
                    self.slot.swap(ServedModel {
                        engine,
                        source: url.to_string(),
                        loaded_at: Utc::now(),
                    });
                    tracing::info!(
                        version,
                        source = url,
                        seconds = started.elapsed().as_secs_f64(),
                        "model in service"
                    );
                }
                self.slot.record(ReloadStatus {
                    ok: true,
                    error: None,
                    at: Utc::now(),
                    source: url.to_string(),
                    version: Some(version),
                    trigger: trigger.to_string(),
                });
                Ok(())
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let serving = self.slot.current().map(|m| m.engine.version().to_string());
                tracing::error!(source = url, trigger, still_serving = ?serving, "model refused: {msg}");
                self.slot.record(ReloadStatus {
                    ok: false,
                    error: Some(msg),
                    at: Utc::now(),
                    source: url.to_string(),
                    version: None,
                    trigger: trigger.to_string(),
                });
                Err(e)
            }
        }
    }

    /// Poll the pointer every `interval` and reload on SIGHUP, until `stop`.
    pub fn spawn(
        self: Arc<Self>,
        interval: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                #[cfg(unix)]
                let hup_fut = async {
                    match hup.as_mut() {
                        Some(s) => s.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hup_fut = std::future::pending::<Option<()>>();
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick(), if self.pointer.is_some() => {
                        let _ = self.reload("pointer", false).await;
                    }
                    _ = hup_fut => {
                        tracing::info!("SIGHUP: reloading the model");
                        let _ = self.reload("sighup", true).await;
                    }
                }
            }
        })
    }
}

/// Read a model pointer: a local file, or an object at a URL. Its first non-empty line that is
/// not a `#` comment is the model folder's URL.
pub async fn read_pointer(location: &str) -> Result<String> {
    let bytes = match url::Url::parse(location) {
        Ok(u) if u.scheme().len() > 1 && u.scheme() != "file" => {
            let (dir, name) = location
                .rsplit_once('/')
                .with_context(|| format!("model pointer URL {location} names no object"))?;
            textrec_contract::Store::open(dir)?
                .get(name)
                .await?
                .to_vec()
        }
        Ok(u) if u.scheme() == "file" => {
            let path = u
                .to_file_path()
                .map_err(|_| anyhow::anyhow!("{location}: not a local path"))?;
            tokio::fs::read(&path)
                .await
                .with_context(|| format!("cannot read model pointer {location}"))?
        }
        _ => tokio::fs::read(location)
            .await
            .with_context(|| format!("cannot read model pointer {location}"))?,
    };
    let text = String::from_utf8(bytes)
        .with_context(|| format!("model pointer {location} is not UTF-8"))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .with_context(|| format!("model pointer {location} is empty"))
}

#[cfg(test)]
mod tests {
    use super::super::engine::fake::FakeEngine;
    use super::*;

    fn fake_loader() -> Loader {
        // URLs ending in "bad" fail like a corrupt model; others load a fake named after the URL.
        Arc::new(|url: String| {
            Box::pin(async move {
                if url.ends_with("bad") {
                    anyhow::bail!("model.safetensors: sha256 mismatch");
                }
                Ok(Arc::new(FakeEngine::new(&url, "t", Duration::ZERO)) as Arc<dyn Engine>)
            })
        })
    }

    #[tokio::test]
    async fn pointer_changes_swap_and_bad_models_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ptr = tmp.path().join("current");
        std::fs::write(&ptr, "# the model in service\nmodel-a\n").unwrap();
        let slot = Arc::new(ModelSlot::new(Arc::new(Metrics::new())));
        let r = Reloader::new(
            slot.clone(),
            fake_loader(),
            None,
            Some(ptr.to_str().unwrap().into()),
        );
        r.initial().await.unwrap();
        assert_eq!(slot.current().unwrap().engine.version(), "model-a");
        let held = slot.current().unwrap();

        std::fs::write(&ptr, "model-b").unwrap();
        r.reload("pointer", false).await.unwrap();
        assert_eq!(slot.current().unwrap().engine.version(), "model-b");
        // A request admitted before the swap still holds the old model.
        assert_eq!(held.engine.version(), "model-a");

        std::fs::write(&ptr, "model-bad").unwrap();
        assert!(r.reload("pointer", false).await.is_err());
        assert_eq!(slot.current().unwrap().engine.version(), "model-b");
        let last = slot.last_reload().unwrap();
        assert!(!last.ok && last.error.unwrap().contains("sha256"));
        // A refused target is not retried by polling, only when forced.
        r.reload("pointer", false).await.unwrap();
        assert!(r.reload("sighup", true).await.is_err());
    }

    #[tokio::test]
    async fn pointer_urls_and_empty_pointers() {
        let tmp = tempfile::tempdir().unwrap();
        let ptr = tmp.path().join("p");
        std::fs::write(&ptr, "  s3://bucket/model/  \n").unwrap();
        let url = url::Url::from_file_path(&ptr).unwrap();
        assert_eq!(
            read_pointer(url.as_str()).await.unwrap(),
            "s3://bucket/model/"
        );
        std::fs::write(&ptr, "\n# nothing\n").unwrap();
        assert!(read_pointer(ptr.to_str().unwrap())
            .await
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }
}
