//! The HTTP API (axum): recognition as raw bytes or JSON, the classic text-recognizer lambda
//! shape, flags, model info, probes, metrics, and the demo page; and the connection loop that
//! serves it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::client_ip::client_ip;
use super::demo;
use super::flags::FlagInput;
use super::limits::{deadline, ServeError};
use super::ratelimit::retry_after_secs;
use super::redact::{redact_json, redact_text, redact_url};
use super::state::{BodyPermit, ServeState};
use super::tls::{Port, ServerTls};

/// Header a caller sets to bound how long it waits, in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-request-timeout-ms";

/// The router over shared state.
pub fn router(state: Arc<ServeState>) -> Router {
    Router::new()
        .route("/", get(demo::index))
        .route("/demo.js", get(demo::script))
        .route("/demo.css", get(demo::style))
        .route("/v1/recognize", post(recognize))
        .route("/v1/predict", post(predict))
        .route("/predict", post(predict))
        .route("/v1/flag", post(flag))
        .route("/v1/model", get(model))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// Serve `app` on `listener` until `stop`, then finish the open connections' requests.
///
/// Unlike `axum::serve`, a client must send a request's headers within `header_read_timeout`
/// (an idle keep-alive connection is closed after it too), so connections that trickle
/// headers (slowloris) are cut off instead of being held forever; and each request carries
/// the client's address ([`ConnectInfo`]) for per-client limits. With `tls`, each accepted
/// connection is handshaken on its own task first.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    connections: Connections,
    tls: Option<Arc<ServerTls>>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use hyper_util::server::conn::auto::Builder;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(connections.header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(tokio::sync::Semaphore::new(connections.max_connections));
    while let Some((slot, stream, remote)) =
        super::connections::accept(&listener, &open, &stop, "HTTP").await
    {
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let app = app.clone();
        match &tls {
            None => {
                tokio::spawn(async move {
                    let _slot = slot;
                    serve_connection(builder, stream, remote, app, false, watcher).await
                });
            }
            Some(tls) => {
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    match tls.accept(Port::Http, stream).await {
                        Ok(stream) => {
                            // Mutual TLS: a client without a certificate gets the probes only.
                            let probes_only = tls.client_auth()
                                && stream.get_ref().1.peer_certificates().is_none();
                            serve_connection(builder, stream, remote, app, probes_only, watcher)
                                .await
                        }
                        Err(e) => tracing::debug!(client = %remote, "TLS handshake failed: {e}"),
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Limits on the HTTP server's connections.
#[derive(Debug, Clone, Copy)]
pub struct Connections {
    /// How long a client may take to send a request's headers (idle keep-alive connections
    /// are closed after it too).
    pub header_read_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// Paths a mutual-TLS client without a certificate may use: the kubelet's probes.
pub const CERTLESS_PATHS: &[&str] = &["/healthz", "/readyz"];

/// Serve one connection (plain or TLS) until it closes or a graceful shutdown ends it. With
/// `probes_only`, requests outside [`CERTLESS_PATHS`] get 403.
async fn serve_connection<IO>(
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    stream: IO,
    remote: SocketAddr,
    app: Router,
    probes_only: bool,
    watcher: hyper_util::server::graceful::Watcher,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            let app = app.clone();
            let refuse = probes_only && !CERTLESS_PATHS.contains(&req.uri().path());
            async move {
                if refuse {
                    let body = json!({"error": {"code": "client_certificate_required",
                        "message": "this server requires a client certificate (mutual TLS)"}});
                    return Ok((StatusCode::FORBIDDEN, Json(body)).into_response());
                }
                Ok::<_, Infallible>(
                    tower::ServiceExt::oneshot(app, req.map(Body::new))
                        .await
                        .unwrap_or_else(|e| match e {}),
                )
            }
        });
    let conn = builder
        .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(client = %remote, "HTTP connection ended: {e}");
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.label(), "message": self.to_string()}});
        let mut response = (self.http_status(), Json(body)).into_response();
        if let ServeError::RateLimited(_, after) = &self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(*after)),
            );
        }
        // A refused or broken upload may leave body bytes unread on the connection: it cannot
        // carry another request, and a client that pooled it would send its next one into a
        // connection the server is closing.
        if matches!(self, ServeError::TooLarge(_) | ServeError::Incomplete(_)) {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

async fn not_found(uri: axum::http::Uri) -> Response {
    ServeError::NotFound(format!("no route for {}", uri.path())).into_response()
}

/// JSON bodies carry the image as base64 or a `data:` URL.
#[derive(Deserialize)]
struct ImageJson {
    image: String,
}

#[derive(Deserialize)]
struct FlagJson {
    image: String,
    #[serde(default)]
    prediction: String,
    #[serde(default)]
    corrected_text: Option<String>,
    #[serde(default)]
    model_version: Option<String>,
}

fn caller_deadline(state: &ServeState, headers: &HeaderMap) -> Instant {
    let caller = headers
        .get(TIMEOUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis);
    deadline(Instant::now(), caller, state.default_timeout)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

/// A request body in memory and its share of the body budget, released together.
struct ReadBody {
    bytes: Bytes,
    permit: BodyPermit,
}

/// Read a body before `deadline`, refusing more than the image limit allows (with room for
/// base64 and JSON). A declared `Content-Length` over the limit is refused before anything is
/// read; otherwise the body first waits for its share of `--max-body-bytes-in-flight` (the
/// declared length, or the limit when chunked). Only a body over the limit is `TooLarge`: a
/// client that disconnects or stalls mid-upload is `Incomplete`, so the metrics do not blame
/// the size limit for it.
async fn read_body(
    state: &ServeState,
    headers: &HeaderMap,
    body: Body,
    deadline: Instant,
) -> Result<ReadBody, ServeError> {
    let limit = state.limits.max_request_bytes / 3 * 4 + 64 * 1024;
    let too_large = || {
        ServeError::TooLarge(format!(
            "request body is larger than {limit} bytes (images up to {} bytes, --max-request-bytes)",
            state.limits.max_request_bytes
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let permit = state
        .body_permit(declared.unwrap_or(limit as u64), deadline)
        .await?;
    let read = axum::body::to_bytes(body, limit);
    match tokio::time::timeout_at(deadline.into(), read).await {
        Err(_) => Err(ServeError::Incomplete(
            "the request body did not arrive before the request's deadline".into(),
        )),
        Ok(Ok(bytes)) => Ok(ReadBody { bytes, permit }),
        Ok(Err(e)) if is_length_limit(&e) => Err(too_large()),
        Ok(Err(e)) => Err(ServeError::Incomplete(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Decode base64, with or without a `data:image/...;base64,` prefix.
pub fn decode_image_field(s: &str) -> Result<Bytes, ServeError> {
    let payload = match s.strip_prefix("data:") {
        Some(rest) => rest
            .split_once(',')
            .filter(|(meta, _)| meta.ends_with(";base64"))
            .map(|(_, data)| data)
            .ok_or_else(|| {
                ServeError::InvalidArgument(
                    "`image` data URL must be base64 (data:image/png;base64,…)".into(),
                )
            })?,
        None => s,
    };
    let cleaned: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map(Bytes::from)
        .map_err(|e| ServeError::InvalidArgument(format!("`image` is not valid base64: {e}")))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ServeError> {
    serde_json::from_slice(body)
        .map_err(|e| ServeError::InvalidArgument(format!("bad JSON body: {e}")))
}

/// The image of a request: the raw body, or the `image` field of a JSON body; with the body's
/// share of the budget, which the image (never larger than the body) keeps.
async fn image_of(
    state: &ServeState,
    headers: &HeaderMap,
    body: Body,
    deadline: Instant,
) -> Result<(Bytes, BodyPermit), ServeError> {
    let body = read_body(state, headers, body, deadline).await?;
    let image = if is_json(headers) {
        decode_image_field(&parse_json::<ImageJson>(&body.bytes)?.image)?
    } else {
        body.bytes
    };
    Ok((image, body.permit))
}

/// `POST /v1/recognize`: the recognition with confidences, model version and timing.
async fn recognize(
    State(state): State<Arc<ServeState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServeError> {
    let deadline = caller_deadline(&state, &headers);
    let (image, _body) = image_of(&state, &headers, body, deadline)
        .await
        .inspect_err(|e| {
            state
                .metrics
                .observe_request("http_recognize", e.label(), Duration::ZERO);
        })?;
    let r = state.recognize(image, deadline, "http_recognize").await?;
    Ok(Json(r).into_response())
}

/// `POST /v1/predict` (and `/predict`): the classic text-recognizer lambda API,
/// `{"image": "<base64 or data URL>"}` → `{"pred": "<text>"}`.
async fn predict(
    State(state): State<Arc<ServeState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServeError> {
    let deadline = caller_deadline(&state, &headers);
    let body = read_body(&state, &headers, body, deadline).await?;
    let image = decode_image_field(&parse_json::<ImageJson>(&body.bytes)?.image)?;
    let r = state.recognize(image, deadline, "http_predict").await?;
    Ok(Json(json!({"pred": r.text})).into_response())
}

/// `POST /v1/flag`: store a sample and its corrected text as a tesstrain pair. Limited per
/// client (`--flag-rate`), admitted and decoded like a recognition.
async fn flag(
    State(state): State<Arc<ServeState>>,
    request: Request,
) -> Result<Response, ServeError> {
    if state.flags.is_none() {
        state.metrics.observe_flag("disabled");
        let body = json!({"error": {"code": "not_implemented", "message": "flagging is off: start serve with --flags URL"}});
        return Ok((StatusCode::NOT_IMPLEMENTED, Json(body)).into_response());
    }
    let (parts, body) = request.into_parts();
    let deadline = caller_deadline(&state, &parts.headers);
    let client = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| client_ip(c.0.ip(), &parts.headers, &state.trusted_proxies));
    let result = async {
        if let (Some(limiter), Some(client)) = (state.flag_limiter.as_ref(), client) {
            limiter.check(client, Instant::now()).map_err(|after| {
                ServeError::RateLimited(
                    format!(
                        "too many flags from {client}; retry in {} s (--flag-rate)",
                        retry_after_secs(after)
                    ),
                    after,
                )
            })?;
        }
        let body = read_body(&state, &parts.headers, body, deadline).await?;
        let f: FlagJson = parse_json(&body.bytes)?;
        let input = FlagInput {
            image: decode_image_field(&f.image)?,
            prediction: f.prediction,
            corrected_text: f.corrected_text,
            model_version: f.model_version,
        };
        state.flag(input, deadline).await
    }
    .await;
    match result {
        Ok(rec) => {
            state.metrics.observe_flag("ok");
            Ok((StatusCode::CREATED, Json(rec)).into_response())
        }
        Err(e) => {
            state.metrics.observe_flag(e.label());
            Err(e)
        }
    }
}

/// `GET /v1/model`: the model in service and the latest reload outcome. URLs are shown without
/// credentials or query strings (see [`super::redact`]).
async fn model(State(state): State<Arc<ServeState>>) -> Response {
    let current = state.slot.current();
    let manifest = current.as_ref().map(|m| {
        let mut v = serde_json::to_value(m.engine.manifest()).unwrap_or_default();
        redact_json(&mut v);
        v
    });
    let last_reload = state.slot.last_reload().map(|mut r| {
        r.source = redact_url(&r.source);
        r.error = r.error.map(|e| redact_text(&e));
        r
    });
    let body = json!({
        "ready": state.ready(),
        "version": current.as_ref().map(|m| m.engine.version().to_string()),
        "source": current.as_ref().map(|m| redact_url(&m.source)),
        "loaded_at": current.as_ref().map(|m| m.loaded_at),
        "manifest": manifest,
        // As the server reads, which `serve --widths` may have set over the manifest's.
        "reading": current.as_ref().map(|m| m.engine.reading()),
        // The encoder's type, which `serve --precision` sets.
        "precision": current.as_ref().map(|m| m.engine.precision()),
        "last_reload": last_reload,
        "batching": {"max_batch": state.max_batch, "max_wait_ms": state.max_wait.as_millis() as u64},
        "limits": {
            "max_request_bytes": state.limits.max_request_bytes,
            "max_pixels": state.limits.max_pixels,
            "max_call_pixels": state.limits.max_call_pixels,
            "decode_budget_pixels": state.decode_budget_pixels,
            "max_queue": state.max_in_flight,
        },
        "flags": state.flags.as_ref().map(|f| redact_url(f.url())),
        "flags_max_samples": state.flags.as_ref().and_then(|f| f.max_samples()),
    });
    Json(body).into_response()
}

/// Liveness: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: a model is loaded and the server is not shutting down.
async fn readyz(State(state): State<Arc<ServeState>>) -> Response {
    if state.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else if state.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no model loaded\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<ServeState>>) -> Response {
    state.metrics.queue_depth.set(state.batcher.depth() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_fields_accept_base64_and_data_urls() {
        assert_eq!(&decode_image_field("aGk=").unwrap()[..], b"hi");
        assert_eq!(
            &decode_image_field("data:image/png;base64,aG\nk=").unwrap()[..],
            b"hi"
        );
        assert!(matches!(
            decode_image_field("data:image/png,hi"),
            Err(ServeError::InvalidArgument(_))
        ));
        assert!(matches!(
            decode_image_field("***"),
            Err(ServeError::InvalidArgument(_))
        ));
    }
}
