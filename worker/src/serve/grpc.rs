//! `textrec.v1.Recognizer` over gRPC.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::limits::{deadline, parse_grpc_timeout, ServeError};
use super::proto::textrec as pb;
use super::state::{Recognition, ServeState};

/// Most images in one `RecognizeBatch` call.
pub const MAX_BATCH_IMAGES: usize = 256;
/// Images of one stream recognized at once (answers still come back in order).
const STREAM_CONCURRENCY: usize = 16;

/// The deadline of a gRPC request: its `grpc-timeout`, capped by the server's default.
pub fn request_deadline<T>(req: &Request<T>, default: std::time::Duration) -> Instant {
    let caller = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    deadline(Instant::now(), caller, default)
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
        let state = &self.state;
        // Each image goes through admission and the batcher on its own, so they share forward
        // passes with each other and with other callers.
        let results = futures::future::join_all(images.into_iter().map(|img| async move {
            let r = state.recognize(img.image, deadline, "grpc_batch").await;
            to_item(r, img.request_id)
        }))
        .await;
        Ok(Response::new(pb::RecognizeBatchResponse { results }))
    }

    type RecognizeStreamStream = ItemStream;

    async fn recognize_stream(
        &self,
        req: Request<Streaming<pb::RecognizeRequest>>,
    ) -> Result<Response<Self::RecognizeStreamStream>, Status> {
        let deadline = request_deadline(&req, self.state.default_timeout);
        let default = self.state.default_timeout;
        let state = self.state.clone();
        let out = req
            .into_inner()
            .map(move |msg| {
                let state = state.clone();
                async move {
                    let msg = msg?;
                    // Each image gets the default timeout, within the whole stream's deadline.
                    let d = deadline.min(Instant::now() + default);
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
            source: m.source.clone(),
            loaded_at: m.loaded_at.to_rfc3339(),
            manifest_json: serde_json::to_string(m.engine.manifest()).unwrap_or_default(),
        }))
    }
}
