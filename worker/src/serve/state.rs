//! What every API shares: the model slot, the batcher, admission control and limits; and the one
//! recognition path all of them call, so that gRPC, KServe and HTTP behave the same.
//!
//! A request's memory is bounded in two steps. Admission (`--max-queue`) bounds how many
//! requests are held at all. Decoding, whose memory grows with the image's pixels, also needs
//! room in a pixel budget (`--decode-budget-pixels`), taken after the header was checked and
//! before any pixel is decoded, and given back when the decode ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::batcher::{Batcher, Job};
use super::engine::ServedModel;
use super::flags::{self, FlagInput, FlagRecord, FlagStore, FlagText};
use super::limits::{CheckedImage, Limits, ServeError};
use super::metrics::Metrics;
use super::ratelimit::KeyedRateLimiter;
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

/// Pixels per permit of the decode budget: the semaphore counts in `u32` units, and an
/// image's pixels may not fit one.
const DECODE_UNIT_PIXELS: u64 = 4096;

/// Settings of [`ServeState`] beyond its parts.
#[derive(Debug, Clone)]
pub struct StateSettings {
    /// Requests admitted at once (`--max-queue`).
    pub max_in_flight: usize,
    /// Size and pixel limits.
    pub limits: Limits,
    /// Source pixels being decoded at once, over all requests.
    pub decode_budget_pixels: u64,
    /// Deadline of a request that brings none.
    pub default_timeout: Duration,
    /// Batching settings, for `/v1/model`.
    pub max_batch: usize,
    /// Batching window, for `/v1/model`.
    pub max_wait: Duration,
    /// Flags per client per minute (0: no limit).
    pub flag_rate_per_minute: u32,
    /// Flags one client may send at once.
    pub flag_burst: u32,
    /// HTTP request body bytes held at once (`--max-body-bytes-in-flight`).
    pub max_body_bytes_in_flight: u64,
    /// Proxies whose `X-Forwarded-For` is believed (`--trusted-proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Shared server state.
pub struct ServeState {
    /// The model in service.
    pub slot: Arc<ModelSlot>,
    /// The queue in front of the inference threads.
    pub batcher: Arc<Batcher>,
    /// Admission: one permit per request being decoded, queued or run. Bounds the number of
    /// requests held: beyond it requests are shed at once instead of piling up.
    pub admission: Arc<Semaphore>,
    /// Capacity of `admission`.
    pub max_in_flight: usize,
    /// Decode budget in units of [`DECODE_UNIT_PIXELS`]: bounds the memory of decoding, which
    /// grows with an image's pixels, not with the number of requests. Admitted requests wait
    /// for it (within their deadline) rather than being shed.
    decode_budget: Arc<Semaphore>,
    decode_budget_units: u32,
    /// Source pixels being decoded at once, over all requests.
    pub decode_budget_pixels: u64,
    /// Size and pixel limits.
    pub limits: Limits,
    /// Deadline of a request that brings none.
    pub default_timeout: Duration,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Where flagged samples go.
    pub flags: Option<FlagStore>,
    /// Flags per client; `None`: no limit.
    pub flag_limiter: Option<KeyedRateLimiter>,
    /// Batching settings, for `/v1/model`.
    pub max_batch: usize,
    /// Batching window, for `/v1/model`.
    pub max_wait: Duration,
    /// HTTP body budget in units of [`BODY_UNIT_BYTES`]: bounds the memory of uploads being
    /// read, whatever the number of connections.
    body_budget: Arc<Semaphore>,
    body_budget_units: u32,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    shutting_down: AtomicBool,
}

/// Granularity of the HTTP body budget.
pub const BODY_UNIT_BYTES: u64 = 1024;

/// Room in the HTTP body budget, held while a request's body is in memory.
pub struct BodyPermit {
    _held: OwnedSemaphorePermit,
}

/// An admitted request's permit and its share of the in-flight gauge, released together
/// however the request ends.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

/// Room in the decode budget, held by the blocking task that decodes, so the budget bounds the
/// decodes actually running even after their callers stopped waiting.
pub struct DecodePermit {
    _held: OwnedSemaphorePermit,
}

impl ServeState {
    /// Shared state over the given parts.
    pub fn new(
        slot: Arc<ModelSlot>,
        batcher: Arc<Batcher>,
        metrics: Arc<Metrics>,
        flags: Option<FlagStore>,
        settings: StateSettings,
    ) -> Self {
        let units = settings
            .decode_budget_pixels
            .div_ceil(DECODE_UNIT_PIXELS)
            .clamp(1, u64::from(u32::MAX)) as u32;
        let body_units = settings
            .max_body_bytes_in_flight
            .div_ceil(BODY_UNIT_BYTES)
            .clamp(
                1,
                u64::from(Semaphore::MAX_PERMITS.min(u32::MAX as usize) as u32),
            ) as u32;
        Self {
            slot,
            batcher,
            admission: Arc::new(Semaphore::new(settings.max_in_flight)),
            max_in_flight: settings.max_in_flight,
            decode_budget: Arc::new(Semaphore::new(units as usize)),
            decode_budget_units: units,
            decode_budget_pixels: settings.decode_budget_pixels,
            limits: settings.limits,
            default_timeout: settings.default_timeout,
            metrics,
            flags,
            flag_limiter: KeyedRateLimiter::new(settings.flag_rate_per_minute, settings.flag_burst),
            max_batch: settings.max_batch,
            max_wait: settings.max_wait,
            body_budget: Arc::new(Semaphore::new(body_units as usize)),
            body_budget_units: body_units,
            trusted_proxies: settings.trusted_proxies,
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

    /// The model in service.
    pub fn model(&self) -> Result<Arc<ServedModel>, ServeError> {
        self.slot
            .current()
            .ok_or_else(|| ServeError::Unavailable("no model is loaded yet".into()))
    }

    /// Admit one request, or shed it at once when `--max-queue` requests are in.
    pub fn admit(&self) -> Result<Admitted, ServeError> {
        let permit = self.admission.clone().try_acquire_owned().map_err(|_| {
            ServeError::Overloaded(format!(
                "server busy: {} requests in flight (--max-queue); retry with backoff",
                self.max_in_flight
            ))
        })?;
        self.metrics.in_flight.inc();
        Ok(Admitted {
            _permit: permit,
            metrics: self.metrics.clone(),
        })
    }

    /// Wait until `pixels` fit the decode budget, or until `deadline`. An image larger than
    /// the whole budget waits for all of it.
    pub async fn decode_permit(
        &self,
        pixels: u64,
        deadline: Instant,
        start: Instant,
    ) -> Result<DecodePermit, ServeError> {
        let units = pixels
            .div_ceil(DECODE_UNIT_PIXELS)
            .clamp(1, u64::from(self.decode_budget_units)) as u32;
        let acquire = self.decode_budget.clone().acquire_many_owned(units);
        match tokio::time::timeout_at(deadline.into(), acquire).await {
            Err(_) => Err(deadline_error(start)),
            Ok(Err(_)) => Err(ServeError::Unavailable(
                "the server is shutting down".into(),
            )),
            Ok(Ok(p)) => Ok(DecodePermit { _held: p }),
        }
    }

    /// Wait until a body of `bytes` fits the HTTP body budget, or until `deadline`. A body
    /// larger than the whole budget waits for all of it.
    pub async fn body_permit(
        &self,
        bytes: u64,
        deadline: Instant,
    ) -> Result<BodyPermit, ServeError> {
        let acquire = self
            .body_budget
            .clone()
            .acquire_many_owned(self.body_units(bytes));
        match tokio::time::timeout_at(deadline.into(), acquire).await {
            Err(_) => Err(self.body_budget_full()),
            Ok(Err(_)) => Err(ServeError::Unavailable(
                "the server is shutting down".into(),
            )),
            Ok(Ok(p)) => Ok(BodyPermit { _held: p }),
        }
    }

    /// Room for a body of `bytes` in the body budget at once, or an error: for bodies that
    /// cannot wait, such as a gRPC message checked by its declared length as it starts to
    /// arrive. A body larger than the whole budget needs all of it.
    pub fn try_body_permit(&self, bytes: u64) -> Result<BodyPermit, ServeError> {
        match self
            .body_budget
            .clone()
            .try_acquire_many_owned(self.body_units(bytes))
        {
            Ok(p) => Ok(BodyPermit { _held: p }),
            Err(tokio::sync::TryAcquireError::Closed) => Err(ServeError::Unavailable(
                "the server is shutting down".into(),
            )),
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(self.body_budget_full()),
        }
    }

    /// Units of [`BODY_UNIT_BYTES`] free in the body budget.
    #[cfg(test)]
    pub(crate) fn body_budget_free(&self) -> usize {
        self.body_budget.available_permits()
    }

    /// Budget units a body of `bytes` takes: at least one, at most the whole budget.
    fn body_units(&self, bytes: u64) -> u32 {
        bytes
            .div_ceil(BODY_UNIT_BYTES)
            .clamp(1, u64::from(self.body_budget_units)) as u32
    }

    fn body_budget_full(&self) -> ServeError {
        ServeError::Overloaded(format!(
            "server busy: other uploads hold the request body budget \
             ({} bytes, --max-body-bytes-in-flight); retry with backoff",
            u64::from(self.body_budget_units) * BODY_UNIT_BYTES
        ))
    }

    /// Run `work` (decoding) on the blocking pool, holding `permit` until it ends; the caller
    /// waits until `deadline`.
    pub async fn run_decode<T: Send + 'static>(
        &self,
        permit: DecodePermit,
        deadline: Instant,
        start: Instant,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ServeError> {
        let task = tokio::task::spawn_blocking(move || {
            let _held = permit;
            work()
        });
        match tokio::time::timeout_at(deadline.into(), task).await {
            Err(_) => Err(deadline_error(start)),
            Ok(Err(join)) => Err(ServeError::Internal(format!(
                "preprocessing failed: {join}"
            ))),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Flag a sample: the text fields are checked, the request is admitted like a recognition, the
    /// image is checked from its header and decoded within the decode budget exactly as for
    /// recognition, and what is stored is that decoded image re-encoded as PNG. So the folder only
    /// ever holds samples that recognition accepts and training can read (not a truncated PNG,
    /// trailing junk, or a 16000000x1 strip).
    pub async fn flag(
        &self,
        input: FlagInput,
        deadline: Instant,
    ) -> Result<FlagRecord, ServeError> {
        let start = Instant::now();
        let Some(store) = self.flags.as_ref() else {
            return Err(ServeError::NotFound("flagging is off".into()));
        };
        let text = FlagText::check(
            &input.prediction,
            input.corrected_text.as_deref(),
            input.model_version.as_deref(),
        )?;
        let _admitted = self.admit()?;
        let model = self.slot.current();
        let model_limit = model
            .as_ref()
            .map_or(u64::MAX, |m| m.engine.preprocess().max_source_pixels);
        let image = self.limits.check(input.image, model_limit)?;
        let version = text
            .model_version
            .clone()
            .or_else(|| model.map(|m| m.engine.version().to_string()))
            .unwrap_or_default();
        let sha = textrec_contract::manifest::sha256_hex(&image.bytes);
        let permit = self.decode_permit(image.pixels(), deadline, start).await?;
        let png = self
            .run_decode(permit, deadline, start, move || flags::to_png(&image))
            .await??;
        store.store(png, sha, text, version).await
    }

    /// Recognize one encoded image before `deadline`; `api` labels the metrics.
    pub async fn recognize(
        &self,
        image: Bytes,
        deadline: Instant,
        api: &'static str,
    ) -> Result<Recognition, ServeError> {
        let start = Instant::now();
        let result = async {
            let model = self.model()?;
            let checked = self
                .limits
                .check(image, model.engine.preprocess().max_source_pixels)?;
            self.recognize_checked(&model, checked, deadline, start)
                .await
        }
        .await;
        self.observe(api, &result, start);
        result
    }

    /// Recognize the images of one call (RecognizeBatch, KServe ModelInfer) before `deadline`.
    ///
    /// Every header is checked first, and the call's pixels together against
    /// `--max-call-pixels`, before any image is decoded; a call over that budget fails as a
    /// whole. Then each image goes through admission and the batcher on its own, so they share
    /// forward passes with each other and with other callers. All run on the model in service
    /// when the call arrived. One answer per image, in order.
    pub async fn recognize_call(
        &self,
        images: Vec<Bytes>,
        deadline: Instant,
        api: &'static str,
    ) -> Result<Vec<Result<Recognition, ServeError>>, ServeError> {
        let start = Instant::now();
        let n = images.len();
        let model = match self.model() {
            Ok(m) => m,
            Err(e) => {
                let results: Vec<_> = (0..n).map(|_| Err(e.clone())).collect();
                for r in &results {
                    self.observe(api, r, start);
                }
                return Ok(results);
            }
        };
        let model_limit = model.engine.preprocess().max_source_pixels;
        let checked: Vec<Result<CheckedImage, ServeError>> = images
            .into_iter()
            .map(|image| self.limits.check(image, model_limit))
            .collect();
        let pixels = checked
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .map(CheckedImage::pixels)
            .fold(0u64, u64::saturating_add);
        if let Err(e) = self.limits.check_call(pixels, n) {
            self.metrics
                .observe_request(api, e.label(), start.elapsed());
            return Err(e);
        }
        let model = &model;
        Ok(
            futures::future::join_all(checked.into_iter().map(|c| async move {
                let result = match c {
                    Ok(c) => self.recognize_checked(model, c, deadline, start).await,
                    Err(e) => Err(e),
                };
                self.observe(api, &result, start);
                result
            }))
            .await,
        )
    }

    fn observe(&self, api: &'static str, result: &Result<Recognition, ServeError>, start: Instant) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        self.metrics.observe_request(api, outcome, start.elapsed());
    }

    /// Admission, decode budget, decoding and the batcher, for an image already checked.
    async fn recognize_checked(
        &self,
        model: &Arc<ServedModel>,
        image: CheckedImage,
        deadline: Instant,
        start: Instant,
    ) -> Result<Recognition, ServeError> {
        if Instant::now() >= deadline {
            return Err(ServeError::DeadlineExceeded(
                "the deadline had passed when the request arrived".into(),
            ));
        }
        let _admitted = self.admit()?;
        let engine = model.engine.clone();
        let permit = self.decode_permit(image.pixels(), deadline, start).await?;
        // Counted once decoding starts, so the batcher knows company is coming (and does not
        // wait for requests still waiting for decode budget).
        let pending = self.batcher.pending().enter();
        let prep_engine = engine.clone();
        let prepared = self
            .run_decode(permit, deadline, start, move || {
                prep_engine.prepare(&image.bytes, &image.source)
            })
            .await?
            .map_err(|e| ServeError::InvalidArgument(format!("cannot decode image: {e:#}")))?;
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

/// The error of a request whose deadline passed while it waited.
pub fn deadline_error(start: Instant) -> ServeError {
    ServeError::DeadlineExceeded(format!(
        "deadline exceeded after {} ms",
        start.elapsed().as_millis()
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::batcher::BatchConfig;
    use super::*;

    /// A state with a 4 KiB body budget and no model.
    pub(crate) fn state(decode_budget_pixels: u64) -> ServeState {
        let metrics = Arc::new(Metrics::new());
        let slot = Arc::new(ModelSlot::new(metrics.clone()));
        let batcher = Batcher::start(
            BatchConfig {
                max_batch: 1,
                max_wait: Duration::ZERO,
                queue_capacity: 4,
                threads: 1,
                max_columns: None,
            },
            metrics.clone(),
        );
        let settings = StateSettings {
            max_in_flight: 4,
            limits: Limits {
                max_request_bytes: 1 << 20,
                max_pixels: 1 << 20,
                max_call_pixels: 1 << 20,
            },
            decode_budget_pixels,
            default_timeout: Duration::from_secs(5),
            max_batch: 1,
            max_wait: Duration::ZERO,
            flag_rate_per_minute: 0,
            flag_burst: 1,
            max_body_bytes_in_flight: 4 * BODY_UNIT_BYTES,
            trusted_proxies: Vec::new(),
        };
        ServeState::new(slot, batcher, metrics, None, settings)
    }

    #[tokio::test]
    async fn decodes_wait_for_room_in_the_pixel_budget() {
        let unit = DECODE_UNIT_PIXELS;
        let s = state(3 * unit);
        let start = Instant::now();
        let far = start + Duration::from_secs(30);
        let first = s.decode_permit(2 * unit, far, start).await.unwrap();
        // A second image that does not fit beside the first waits, here until its deadline.
        let soon = Instant::now() + Duration::from_millis(30);
        let e = s.decode_permit(2 * unit, soon, start).await.err().unwrap();
        assert!(matches!(e, ServeError::DeadlineExceeded(_)), "{e:?}");
        // A small one fits beside it.
        let small = s.decode_permit(1, far, start).await.unwrap();
        drop((first, small));
        // An image larger than the whole budget waits for all of it, and then runs.
        let huge = s.decode_permit(100 * unit, far, start).await.unwrap();
        assert_eq!(s.decode_budget.available_permits(), 0);
        drop(huge);
        assert_eq!(s.decode_budget.available_permits(), 3);
        s.batcher.close();
    }

    #[tokio::test]
    async fn a_decode_keeps_its_budget_until_it_ends_even_after_the_deadline() {
        let s = state(DECODE_UNIT_PIXELS);
        let start = Instant::now();
        let permit = s
            .decode_permit(DECODE_UNIT_PIXELS, start + Duration::from_secs(30), start)
            .await
            .unwrap();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let soon = Instant::now() + Duration::from_millis(20);
        let e = s
            .run_decode(permit, soon, start, move || wait.recv().unwrap())
            .await
            .err()
            .unwrap();
        assert!(matches!(e, ServeError::DeadlineExceeded(_)), "{e:?}");
        // The caller has given up, but the decode still runs and still holds the budget.
        assert_eq!(s.decode_budget.available_permits(), 0);
        release.send(()).unwrap();
        let again = s.decode_permit(DECODE_UNIT_PIXELS, start + Duration::from_secs(30), start);
        drop(again.await.unwrap());
        s.batcher.close();
    }

    #[tokio::test]
    async fn bodies_wait_for_room_in_the_byte_budget_then_are_shed() {
        let s = state(DECODE_UNIT_PIXELS);
        let far = Instant::now() + Duration::from_secs(30);
        let first = s.body_permit(3 * BODY_UNIT_BYTES, far).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(30);
        let e = s
            .body_permit(2 * BODY_UNIT_BYTES, soon)
            .await
            .err()
            .unwrap();
        assert!(matches!(e, ServeError::Overloaded(_)), "{e:?}");
        assert!(e.to_string().contains("--max-body-bytes-in-flight"), "{e}");
        // Small bodies still fit beside it; a body over the whole budget waits for all of it.
        let small = s.body_permit(10, far).await.unwrap();
        drop((first, small));
        let huge = s.body_permit(1 << 30, far).await.unwrap();
        assert_eq!(s.body_budget.available_permits(), 0);
        drop(huge);
        assert_eq!(s.body_budget.available_permits(), 4);
        s.batcher.close();
    }
}
