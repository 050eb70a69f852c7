//! Request protection: the error kinds a request can end in, their gRPC and HTTP mappings,
//! deadlines, and the checks made before an image is decoded.

use std::io::Cursor;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

/// Why a request did not produce a recognition. Every variant maps to one gRPC code and one
/// HTTP status, so both APIs answer the same failure the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    /// The input is malformed: not an image, bad base64, wrong tensor type.
    #[error("{0}")]
    InvalidArgument(String),
    /// The encoded image is larger than `--max-request-bytes`.
    #[error("{0}")]
    TooLarge(String),
    /// The image has more pixels than allowed (decompression-bomb guard).
    #[error("{0}")]
    TooManyPixels(String),
    /// Too many requests admitted; retry later.
    #[error("{0}")]
    Overloaded(String),
    /// The request's deadline passed before it was answered.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// No model is loaded yet, or the server is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// A model or name the server does not have.
    #[error("{0}")]
    NotFound(String),
    /// The engine failed; a bug or a resource problem, not the caller's fault.
    #[error("{0}")]
    Internal(String),
}

impl ServeError {
    /// Short label for metrics (`outcome`).
    pub fn label(&self) -> &'static str {
        match self {
            ServeError::InvalidArgument(_) => "invalid_argument",
            ServeError::TooLarge(_) => "too_large",
            ServeError::TooManyPixels(_) => "too_many_pixels",
            ServeError::Overloaded(_) => "overloaded",
            ServeError::DeadlineExceeded(_) => "deadline_exceeded",
            ServeError::Unavailable(_) => "unavailable",
            ServeError::NotFound(_) => "not_found",
            ServeError::Internal(_) => "internal",
        }
    }

    /// The gRPC status code.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            ServeError::InvalidArgument(_)
            | ServeError::TooLarge(_)
            | ServeError::TooManyPixels(_) => tonic::Code::InvalidArgument,
            ServeError::Overloaded(_) => tonic::Code::ResourceExhausted,
            ServeError::DeadlineExceeded(_) => tonic::Code::DeadlineExceeded,
            ServeError::Unavailable(_) => tonic::Code::Unavailable,
            ServeError::NotFound(_) => tonic::Code::NotFound,
            ServeError::Internal(_) => tonic::Code::Internal,
        }
    }

    /// The HTTP status.
    pub fn http_status(&self) -> StatusCode {
        match self {
            ServeError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            ServeError::TooLarge(_) | ServeError::TooManyPixels(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ServeError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<ServeError> for tonic::Status {
    fn from(e: ServeError) -> Self {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}

/// Size and pixel limits applied to every image before it is decoded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest encoded image, bytes.
    pub max_request_bytes: usize,
    /// Largest image, pixels.
    pub max_pixels: u64,
}

impl Limits {
    /// Reject an image by its encoded size, then by the dimensions in its header, before any
    /// pixel is decoded. `model_max_pixels` is the model's own limit (from its manifest).
    pub fn check(&self, image: &[u8], model_max_pixels: u64) -> Result<(u32, u32), ServeError> {
        if image.is_empty() {
            return Err(ServeError::InvalidArgument(
                "empty image: send PNG, JPEG, TIFF or BMP bytes".into(),
            ));
        }
        if image.len() > self.max_request_bytes {
            return Err(ServeError::TooLarge(format!(
                "image is {} bytes; the limit is {} bytes (--max-request-bytes)",
                image.len(),
                self.max_request_bytes
            )));
        }
        let reader = image::ImageReader::new(Cursor::new(image))
            .with_guessed_format()
            .map_err(|e| ServeError::InvalidArgument(format!("cannot read image: {e}")))?;
        if reader.format().is_none() {
            return Err(ServeError::InvalidArgument(
                "cannot decode image: unknown format (send PNG, JPEG, TIFF or BMP)".into(),
            ));
        }
        let (w, h) = reader
            .into_dimensions()
            .map_err(|e| ServeError::InvalidArgument(format!("cannot decode image header: {e}")))?;
        let pixels = u64::from(w) * u64::from(h);
        let limit = self.max_pixels.min(model_max_pixels);
        if pixels > limit {
            return Err(ServeError::TooManyPixels(format!(
                "image is {w}x{h} = {pixels} pixels; the limit is {limit} pixels"
            )));
        }
        if w == 0 || h == 0 {
            return Err(ServeError::InvalidArgument(format!(
                "image is {w}x{h}: nothing to recognize"
            )));
        }
        Ok((w, h))
    }
}

/// The deadline of a request: now plus the caller's timeout when it gave one, capped by the
/// server's default.
pub fn deadline(now: Instant, caller: Option<Duration>, default: Duration) -> Instant {
    now + caller.map_or(default, |c| c.min(default))
}

/// Parse a gRPC `grpc-timeout` header value (`<digits><unit>`, unit one of H M S m u n).
///
/// tonic's transport enforces this header too, but it answers CANCELLED; we keep a slightly
/// earlier deadline of our own so that callers get DEADLINE_EXCEEDED, as gRPC specifies.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    // Answer a little before tonic's own timer fires (see above).
    let margin = (d / 50).max(Duration::from_millis(2));
    Some(d.saturating_sub(margin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::GrayImage::from_pixel(w, h, image::Luma([255]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn limits_check_size_format_and_pixels() {
        let l = Limits {
            max_request_bytes: 10_000,
            max_pixels: 1_000,
        };
        assert_eq!(l.check(&png(20, 10), u64::MAX).unwrap(), (20, 10));
        let e = l.check(&png(50, 50), u64::MAX).unwrap_err();
        assert!(
            matches!(e, ServeError::TooManyPixels(ref m) if m.contains("50x50 = 2500")),
            "{e:?}"
        );
        // The model's limit applies when it is the smaller one.
        assert!(matches!(
            l.check(&png(20, 10), 100),
            Err(ServeError::TooManyPixels(_))
        ));
        let e = l.check(b"definitely not an image", u64::MAX).unwrap_err();
        assert!(
            matches!(e, ServeError::InvalidArgument(ref m) if m.contains("unknown format")),
            "{e:?}"
        );
        let e = l.check(&vec![0u8; 20_000], u64::MAX).unwrap_err();
        assert!(
            matches!(e, ServeError::TooLarge(ref m) if m.contains("20000 bytes")),
            "{e:?}"
        );
        assert!(matches!(
            l.check(b"", u64::MAX),
            Err(ServeError::InvalidArgument(_))
        ));
    }

    #[test]
    fn grpc_timeouts_parse_and_keep_a_margin() {
        assert_eq!(
            parse_grpc_timeout("1000m"),
            Some(Duration::from_millis(980))
        );
        assert_eq!(parse_grpc_timeout("1S"), Some(Duration::from_millis(980)));
        assert_eq!(parse_grpc_timeout("1m"), Some(Duration::ZERO));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
    }

    #[test]
    fn errors_map_to_grpc_and_http() {
        let e = ServeError::Overloaded("full".into());
        assert_eq!(e.grpc_code(), tonic::Code::ResourceExhausted);
        assert_eq!(e.http_status(), StatusCode::TOO_MANY_REQUESTS);
        let e = ServeError::DeadlineExceeded("late".into());
        assert_eq!(
            tonic::Status::from(e.clone()).code(),
            tonic::Code::DeadlineExceeded
        );
        assert_eq!(e.http_status(), StatusCode::GATEWAY_TIMEOUT);
    }
}
