//! `textrec.v1.Recognizer` over gRPC.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::limits::{deadline, item_deadline, parse_grpc_timeout, ServeError};
use super::proto::textrec as pb;
use super::state::{Recognition, ServeState};

/// Most images in one `RecognizeBatch` call.
pub const MAX_BATCH_IMAGES: usize = 256;
/// Images of one stream recognized at once (answers still come back in order).
const STREAM_CONCURRENCY: usize = 16;

/// The caller's `grpc-timeout`, if it sent one.
fn caller_timeout<T>(req: &Request<T>) -> Option<std::time::Duration> {
    req.metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

/// The deadline of a unary gRPC request: its `grpc-timeout`, capped by the server's default.
pub fn request_deadline<T>(req: &Request<T>, default: std::time::Duration) -> Instant {
    deadline(Instant::now(), caller_timeout(req), default)
}

/// The manifest as JSON, with the URLs inside it redacted (see [`super::redact`]).
fn redacted_manifest(manifest: &textrec_contract::ModelManifest) -> String {
    let mut v = serde_json::to_value(manifest).unwrap_or_default();
    super::redact::redact_json(&mut v);
    v.to_string()
}

/// Proto form of a recognition.
pub fn to_response(r: Recognition, request_id: String) -> pb::RecognizeResponse {
    pb::RecognizeResponse {
        text: r.text,
        confidence: r.confidence,
        char_confidences: r.char_confidences,
        model_version: r.model_version,
        timing: Some(pb::Timing {
            total_ms: r.timing.total_ms,
            preprocess_ms: r.timing.preprocess_ms,
            queue_ms: r.timing.queue_ms,
            inference_ms: r.timing.inference_ms,
        }),
        batch_size: r.batch_size as u32,
        request_id,
    }
}

fn to_item(result: Result<Recognition, ServeError>, request_id: String) -> pb::RecognizeStreamItem {
    let result = match result {
        Ok(r) => pb::recognize_stream_item::Result::Response(to_response(r, request_id.clone())),
        Err(e) => pb::recognize_stream_item::Result::Error(pb::ItemError {
            code: e.grpc_code() as i32,
            message: e.to_string(),
        }),
    };
    pb::RecognizeStreamItem {
        result: Some(result),
        request_id,
    }
}

/// The Recognizer service.
pub struct RecognizerService {
    state: Arc<ServeState>,
}

impl RecognizerService {
    /// The service over shared state.
    pub fn new(state: Arc<ServeState>) -> Self {
        Self { state }
    }
}

type ItemStream =
    Pin<Box<dyn Stream<Item = Result<pb::RecognizeStreamItem, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::recognizer_server::Recognizer for RecognizerService {
    async fn recognize(
        &self,
        req: Request<pb::RecognizeRequest>,
    ) -> Result<Response<pb::RecognizeResponse>, Status> {
        let deadline = request_deadline(&req, self.state.default_timeout);
        let pb::RecognizeRequest { image, request_id } = req.into_inner();
        let r = self
            .state
            .recognize(image, deadline, "grpc_recognize")
            .await?;
        Ok(Response::new(to_response(r, request_id)))
    }

    async fn recognize_batch(
        &self,
        req: Request<pb::RecognizeBatchRequest>,
    ) -> Result<Response<pb::RecognizeBatchResponse>, Status> {
        let deadline = request_deadline(&req, self.state.default_timeout);
        let images = req.into_inner().images;
        if images.len() > MAX_BATCH_IMAGES {
            return Err(ServeError::InvalidArgument(format!(
                "{} images in one call; the limit is {MAX_BATCH_IMAGES}",
                images.len()
            ))
            .into());
        }
        let (bytes, ids): (Vec<_>, Vec<_>) = images
            .into_iter()
            .map(|img| (img.image, img.request_id))
            .unzip();
        let results = self
            .state
            .recognize_call(bytes, deadline, "grpc_batch")
            .await?;
        let results = results
            .into_iter()
            .zip(ids)
            .map(|(r, id)| to_item(r, id))
            .collect();
        Ok(Response::new(pb::RecognizeBatchResponse { results }))
    }

    type RecognizeStreamStream = ItemStream;

    async fn recognize_stream(
        &self,
        req: Request<Streaming<pb::RecognizeRequest>>,
    ) -> Result<Response<Self::RecognizeStreamStream>, Status> {
        // The caller's timeout bounds the whole stream, uncapped; each item gets the default
        // timeout from its own arrival (capping the stream by the default would fail every
        // item after the first `--request-timeout`).
        let stream_deadline = caller_timeout(&req).map(|t| Instant::now() + t);
        let default = self.state.default_timeout;
        let state = self.state.clone();
        let out = req
            .into_inner()
            .map(move |msg| {
                let state = state.clone();
                async move {
                    let msg = msg?;
                    let now = Instant::now();
                    if stream_deadline.is_some_and(|d| now >= d) {
                        // Ends the stream: the call's deadline is over.
                        return Err(Status::deadline_exceeded(
                            "the stream's deadline (grpc-timeout) has passed",
                        ));
                    }
                    let d = item_deadline(now, stream_deadline, default);
                    let r = state.recognize(msg.image, d, "grpc_stream").await;
                    Ok(to_item(r, msg.request_id))
                }
            })
            .buffered(STREAM_CONCURRENCY);
        Ok(Response::new(Box::pin(out)))
    }

    async fn get_model(
        &self,
        _req: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let m = self
            .state
            .slot
            .current()
            .ok_or_else(|| Status::unavailable("no model is loaded yet"))?;
        Ok(Response::new(pb::ModelInfo {
            version: m.engine.version().to_string(),
            source: super::redact::redact_url(&m.source),
            loaded_at: m.loaded_at.to_rfc3339(),
            manifest_json: redacted_manifest(m.engine.manifest()),
        }))
    }
}
