//! Bearer-token authentication (`--auth-token-file`).
//!
//! The file holds one token per line (surrounding whitespace and empty lines ignored), so a
//! token can be rotated by adding the new one, moving the clients, then removing the old one.
//! The file is re-read when it changes (checked at most every [`RELOAD_INTERVAL`]).
//!
//! gRPC calls carry `authorization: Bearer TOKEN` metadata, HTTP requests the same header.
//! Exempt: the gRPC health service, and over HTTP the probes (`/healthz`, `/readyz`),
//! `/metrics` and the demo page's static files (`/`, `/demo.js`, `/demo.css`); the page asks
//! for the token when the API answers 401. Refusals answer UNAUTHENTICATED or 401 with
//! `WWW-Authenticate: Bearer` and are counted in `textrec_auth_refusals_total`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use textrec_contract::exit::ConfigError;

use super::metrics::Metrics;

/// Least time between two checks of the token file for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// HTTP paths served without a token.
pub const HTTP_EXEMPT: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/",
    "/demo.js",
    "/demo.css",
];

/// gRPC services served without a token (path prefix `/SERVICE/`).
pub const GRPC_EXEMPT_SERVICES: &[&str] = &["grpc.health.v1.Health"];

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `authorization: Bearer` header.
    Missing,
    /// A token that is not in the file.
    Wrong,
}

impl Refusal {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Wrong => "wrong",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "authentication required: send `authorization: Bearer TOKEN`",
            Refusal::Wrong => "the bearer token is not valid",
        }
    }
}

/// Parse a token file's text: one token per line, trimmed, blank lines skipped.
pub fn parse_tokens(text: &str) -> Vec<Vec<u8>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

fn read_tokens(path: &Path) -> Result<Vec<Vec<u8>>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(format!(
            "--auth-token-file {}: cannot read it: {e}",
            path.display()
        ))
    })?;
    let tokens = parse_tokens(&text);
    if tokens.is_empty() {
        return Err(ConfigError::new(format!(
            "--auth-token-file {}: no token in it (one per line)",
            path.display()
        ))
        .into());
    }
    Ok(tokens)
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

/// The accepted tokens.
pub struct Tokens {
    path: Option<PathBuf>,
    tokens: RwLock<Vec<Vec<u8>>>,
    checked: Mutex<(Instant, Option<(SystemTime, u64)>)>,
}

impl Tokens {
    /// Read `--auth-token-file` (errors are configuration errors).
    pub fn load(path: &Path) -> Result<Arc<Self>> {
        let st = stamp(path);
        let tokens = read_tokens(path)?;
        Ok(Arc::new(Self {
            path: Some(path.to_path_buf()),
            tokens: RwLock::new(tokens),
            checked: Mutex::new((Instant::now(), st)),
        }))
    }

    /// Fixed tokens (tests, embedding).
    pub fn fixed(tokens: Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            path: None,
            tokens: RwLock::new(tokens.into_iter().map(String::into_bytes).collect()),
            checked: Mutex::new((Instant::now(), None)),
        })
    }

    /// Re-read the file when it changed and the last check is [`RELOAD_INTERVAL`] old. A file
    /// that became unreadable or empty keeps the old tokens.
    fn refresh(&self) {
        let Some(path) = &self.path else { return };
        {
            let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
            if checked.0.elapsed() < RELOAD_INTERVAL {
                return;
            }
            checked.0 = Instant::now();
            let st = stamp(path);
            if st == checked.1 {
                return;
            }
            checked.1 = st;
        }
        match read_tokens(path) {
            Ok(t) => {
                *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = t;
                tracing::info!(file = %path.display(), "auth tokens reloaded");
            }
            Err(e) => tracing::warn!("keeping the previous auth tokens: {e:#}"),
        }
    }

    /// Check an `authorization` header value. Every token is compared in constant time, and
    /// all of them are always compared.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), Refusal> {
        self.refresh();
        let Some(value) = authorization else {
            return Err(Refusal::Missing);
        };
        let Some(token) = bearer(value) else {
            return Err(Refusal::Missing);
        };
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        let mut ok = subtle::Choice::from(0);
        for t in tokens.iter() {
            ok |= t.as_slice().ct_eq(token);
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(Refusal::Wrong)
        }
    }
}

/// The token of `Bearer TOKEN` (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The gRPC check, as a tonic interceptor over every service but health (which is added
/// without it). `tokens: None` lets everything through.
#[derive(Clone)]
pub struct GrpcAuth {
    tokens: Option<Arc<Tokens>>,
    metrics: Arc<Metrics>,
}

impl GrpcAuth {
    /// The interceptor.
    pub fn new(tokens: Option<Arc<Tokens>>, metrics: Arc<Metrics>) -> Self {
        Self { tokens, metrics }
    }
}

impl tonic::service::Interceptor for GrpcAuth {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(req);
        };
        let header = req
            .metadata()
            .get("authorization")
            .map(|v| v.as_encoded_bytes());
        match tokens.check(header) {
            Ok(()) => Ok(req),
            Err(r) => {
                self.metrics.observe_auth_refusal("grpc", r.label());
                Err(tonic::Status::unauthenticated(r.message()))
            }
        }
    }
}

/// The HTTP check, as axum middleware (state: the tokens and the metrics).
pub async fn http_middleware(
    State((tokens, metrics)): State<(Arc<Tokens>, Arc<Metrics>)>,
    req: Request,
    next: Next,
) -> Response {
    if HTTP_EXEMPT.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match tokens.check(header) {
        Ok(()) => next.run(req).await,
        Err(r) => {
            metrics.observe_auth_refusal("http", r.label());
            let body =
                serde_json::json!({"error": {"code": "unauthenticated", "message": r.message()}});
            let mut resp = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
            let challenge = match r {
                Refusal::Missing => "Bearer realm=\"textrec\"",
                Refusal::Wrong => "Bearer realm=\"textrec\", error=\"invalid_token\"",
            };
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_hold_one_trimmed_token_per_line() {
        assert_eq!(
            parse_tokens("  abc \n\n\tdef\r\n"),
            vec![b"abc".to_vec(), b"def".to_vec()]
        );
        assert!(parse_tokens(" \n").is_empty());
    }

    #[test]
    fn only_listed_bearer_tokens_pass() {
        let t = Tokens::fixed(vec!["s3cret".into(), "other".into()]);
        assert_eq!(t.check(Some(b"Bearer s3cret")), Ok(()));
        assert_eq!(t.check(Some(b"bearer  other ")), Ok(()));
        assert_eq!(t.check(Some(b"Bearer s3cre")), Err(Refusal::Wrong));
        assert_eq!(t.check(Some(b"Bearer s3crett")), Err(Refusal::Wrong));
        assert_eq!(t.check(Some(b"Basic s3cret")), Err(Refusal::Missing));
        assert_eq!(t.check(Some(b"Bearer ")), Err(Refusal::Missing));
        assert_eq!(t.check(None), Err(Refusal::Missing));
    }

    #[test]
    fn an_empty_or_missing_token_file_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "\n  \n").unwrap();
        let e = Tokens::load(&p).err().expect("an error");
        assert_eq!(textrec_contract::exit::code_for(&e), 78);
        let e = Tokens::load(&dir.path().join("none"))
            .err()
            .expect("an error");
        assert!(format!("{e:#}").contains("--auth-token-file"), "{e:#}");
    }
}
