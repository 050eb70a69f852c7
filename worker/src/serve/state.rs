//! What every API shares: the model slot, the batcher, admission control and limits; and the one
//! recognition path all of them call, so that gRPC, KServe and HTTP behave the same.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::batcher::{Batcher, Job};
use super::flags::FlagStore;
use super::limits::{Limits, ServeError};
use super::metrics::Metrics;
use super::reload::ModelSlot;

/// The answer for one image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recognition {
    /// Recognized text.
    pub text: String,
    /// Line confidence in [0, 1].
    pub confidence: f32,
    /// One probability per character of `text`.
    pub char_confidences: Vec<f32>,
    /// Version (manifest sha256) of the model that answered.
    pub model_version: String,
    /// Where the time went.
    pub timing: Timing,
    /// Images that shared the forward pass.
    pub batch_size: usize,
}

/// Durations of one request's stages, in milliseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Timing {
    /// Admission to answer.
    pub total_ms: f64,
    /// Decoding and preprocessing.
    pub preprocess_ms: f64,
    /// Waiting for an inference thread.
    pub queue_ms: f64,
    /// The forward pass.
    pub inference_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Shared server state.
pub struct ServeState {
    /// The model in service.
    pub slot: Arc<ModelSlot>,
    /// The queue in front of the inference threads.
    pub batcher: Arc<Batcher>,
    /// Admission: one permit per request being decoded, queued or run. Bounds memory: beyond
    /// it requests are shed at once instead of piling up.
    pub admission: Arc<Semaphore>,
    /// Capacity of `admission`.
    pub max_in_flight: usize,
    /// Size and pixel limits.
    pub limits: Limits,
    /// Deadline of a request that brings none.
    pub default_timeout: Duration,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Where flagged samples go.
    pub flags: Option<FlagStore>,
    /// Batching settings, for `/v1/model`.
    pub max_batch: usize,
    /// Batching window, for `/v1/model`.
    pub max_wait: Duration,
    shutting_down: AtomicBool,
}

/// Releases the in-flight gauge when a request ends, however it ends.
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

impl ServeState {
    /// Shared state over the given parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        slot: Arc<ModelSlot>,
        batcher: Arc<Batcher>,
        max_in_flight: usize,
        limits: Limits,
        default_timeout: Duration,
        metrics: Arc<Metrics>,
        flags: Option<FlagStore>,
        max_batch: usize,
        max_wait: Duration,
    ) -> Self {
        Self {
            slot,
            batcher,
            admission: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            limits,
            default_timeout,
            metrics,
            flags,
            max_batch,
            max_wait,
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Ready to serve: a model is loaded and no shutdown has begun.
    pub fn ready(&self) -> bool {
        !self.is_shutting_down() && self.slot.current().is_some()
    }

    /// Mark the server as shutting down (readiness fails; in-flight work continues).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Recognize one encoded image before `deadline`; `api` labels the metrics.
    pub async fn recognize(
        &self,
        image: Bytes,
        deadline: Instant,
        api: &'static str,
    ) -> Result<Recognition, ServeError> {
        let start = Instant::now();
        let result = self.recognize_inner(image, deadline, start).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        self.metrics.observe_request(api, outcome, start.elapsed());
        result
    }

    async fn recognize_inner(
        &self,
        image: Bytes,
        deadline: Instant,
        start: Instant,
    ) -> Result<Recognition, ServeError> {
        if start >= deadline {
            return Err(ServeError::DeadlineExceeded(
                "the deadline had passed when the request arrived".into(),
            ));
        }
        let _permit = self.admission.clone().try_acquire_owned().map_err(|_| {
            ServeError::Overloaded(format!(
                "server busy: {} requests in flight (--max-queue); retry with backoff",
                self.max_in_flight
            ))
        })?;
        self.metrics.in_flight.inc();
        let _in_flight = InFlight(&self.metrics);
        let model = self
            .slot
            .current()
            .ok_or_else(|| ServeError::Unavailable("no model is loaded yet".into()))?;
        let engine = model.engine.clone();
        // Count this request before decoding, so the batcher knows company is coming.
        let pending = self.batcher.pending().enter();
        self.limits
            .check(&image, engine.preprocess().max_source_pixels)?;
        let prep_engine = engine.clone();
        let prepare = tokio::task::spawn_blocking(move || prep_engine.prepare(&image));
        let prepared = match tokio::time::timeout_at(deadline.into(), prepare).await {
            Err(_) => return Err(deadline_error(start)),
            Ok(Err(join)) => {
                return Err(ServeError::Internal(format!(
                    "preprocessing failed: {join}"
                )))
            }
            Ok(Ok(Err(e))) => {
                return Err(ServeError::InvalidArgument(format!(
                    "cannot decode image: {e:#}"
                )))
            }
            Ok(Ok(Ok(p))) => p,
        };
        let preprocess = start.elapsed();
        let (job, rx) = Job::new(engine, prepared, deadline, pending);
        self.batcher.submit(job)?;
        let out = match tokio::time::timeout_at(deadline.into(), rx).await {
            Err(_) => return Err(deadline_error(start)),
            Ok(Err(_)) => {
                return Err(ServeError::Internal(
                    "the inference thread dropped the request".into(),
                ))
            }
            Ok(Ok(r)) => r?,
        };
        Ok(Recognition {
            text: out.prediction.text,
            confidence: out.prediction.confidence,
            char_confidences: out.prediction.char_confidences,
            model_version: out.model_version,
            timing: Timing {
                total_ms: ms(start.elapsed()),
                preprocess_ms: ms(preprocess),
                queue_ms: ms(out.queue),
                inference_ms: ms(out.inference),
            },
            batch_size: out.batch_size,
        })
    }
}

fn deadline_error(start: Instant) -> ServeError {
    ServeError::DeadlineExceeded(format!(
        "deadline exceeded after {} ms",
        start.elapsed().as_millis()
    ))
}
