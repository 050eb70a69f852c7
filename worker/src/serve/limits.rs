//! Request protection: the error kinds a request can end in, their gRPC and HTTP mappings,
//! deadlines, and the checks made before an image is decoded.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use bytes::Bytes;
use textrec_model::preprocess::{self, CheckedSource, SourceError};

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
    /// This client sent too many requests of a rate-limited kind; retry after the duration.
    #[error("{0}")]
    RateLimited(String, Duration),
    /// The client went away or stopped sending before the request was complete. Nobody may be
    /// left to read the answer; it is counted apart from requests that were too large.
    #[error("{0}")]
    Incomplete(String),
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
            ServeError::RateLimited(..) => "rate_limited",
            ServeError::Incomplete(_) => "incomplete",
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
            ServeError::Overloaded(_) | ServeError::RateLimited(..) => {
                tonic::Code::ResourceExhausted
            }
            ServeError::Incomplete(_) => tonic::Code::Cancelled,
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
            ServeError::Overloaded(_) | ServeError::RateLimited(..) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ServeError::Incomplete(_) => StatusCode::REQUEST_TIMEOUT,
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
    /// Most pixels of one call's images together (RecognizeBatch, KServe ModelInfer), read
    /// from their headers before any is decoded.
    pub max_call_pixels: u64,
}

/// An encoded image whose size and header passed [`Limits::check`]: what decoding takes.
#[derive(Debug, Clone)]
pub struct CheckedImage {
    /// The image as received.
    pub bytes: Bytes,
    /// Its checked header.
    pub source: CheckedSource,
}

impl CheckedImage {
    /// Declared width × height.
    pub fn pixels(&self) -> u64 {
        self.source.pixels()
    }
}

impl Limits {
    /// Reject an image by its encoded size, then by its header (format, dimensions, aspect
    /// ratio), before any pixel is decoded. `model_max_pixels` is the model's own limit (from
    /// its manifest); the smaller one applies. The header is read here once and travels on
    /// with the image.
    pub fn check(&self, image: Bytes, model_max_pixels: u64) -> Result<CheckedImage, ServeError> {
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
        let limit = self.max_pixels.min(model_max_pixels);
        let source = preprocess::inspect(&image, limit).map_err(source_error)?;
        Ok(CheckedImage {
            bytes: image,
            source,
        })
    }

    /// Refuse a call whose checked images hold more than `--max-call-pixels` together.
    pub fn check_call(&self, pixels: u64, images: usize) -> Result<(), ServeError> {
        if pixels > self.max_call_pixels {
            return Err(ServeError::TooManyPixels(format!(
                "the call's {images} images hold {pixels} pixels together; the limit is {} \
                 pixels per call (--max-call-pixels): send fewer or smaller images per call",
                self.max_call_pixels
            )));
        }
        Ok(())
    }
}

/// The server's answer for an image refused from its header.
fn source_error(e: SourceError) -> ServeError {
    match e {
        SourceError::Empty => {
            ServeError::InvalidArgument("empty image: send PNG, JPEG, TIFF or BMP bytes".into())
        }
        SourceError::UnknownFormat(_) => ServeError::InvalidArgument(
            "cannot decode image: unknown format (send PNG, JPEG, TIFF or BMP)".into(),
        ),
        SourceError::Unsupported(_) => {
            ServeError::InvalidArgument(format!("cannot decode image: {e}"))
        }
        SourceError::Header(m) => {
            ServeError::InvalidArgument(format!("cannot decode image header: {m}"))
        }
        SourceError::TooManyPixels {
            width,
            height,
            pixels,
            limit,
        } => ServeError::TooManyPixels(format!(
            "image is {width}x{height} = {pixels} pixels; the limit is {limit} pixels"
        )),
        SourceError::ZeroSize { width, height } => {
            ServeError::InvalidArgument(format!("image is {width}x{height}: nothing to recognize"))
        }
        SourceError::TooWide { .. } | SourceError::TooTall { .. } => {
            ServeError::InvalidArgument(format!("cannot recognize image: {e}"))
        }
    }
}

/// The deadline of a request: now plus the caller's timeout when it gave one, capped by the
/// server's default.
pub fn deadline(now: Instant, caller: Option<Duration>, default: Duration) -> Instant {
    now + caller.map_or(default, |c| c.min(default))
}

/// The deadline of one item of a stream, arriving at `now`: the server's default counted from
/// its own arrival, within the whole stream's deadline when the caller set one. The stream's
/// deadline is the caller's timeout uncapped: a stream may rightly outlive any one request.
pub fn item_deadline(now: Instant, stream: Option<Instant>, default: Duration) -> Instant {
    let own = now + default;
    stream.map_or(own, |s| s.min(own))
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

    fn png(w: u32, h: u32) -> Bytes {
        let img = image::GrayImage::from_pixel(w, h, image::Luma([255]));
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out.into()
    }

    #[test]
    fn limits_check_size_format_pixels_and_shape() {
        let l = Limits {
            max_request_bytes: 10_000,
            max_pixels: 1_000,
            max_call_pixels: 1_500,
        };
        let ok = l.check(png(20, 10), u64::MAX).unwrap();
        let h = ok.source.header();
        assert_eq!((h.width, h.height, ok.pixels()), (20, 10, 200));
        let e = l.check(png(50, 50), u64::MAX).unwrap_err();
        assert!(
            matches!(e, ServeError::TooManyPixels(ref m) if m.contains("50x50 = 2500")),
            "{e:?}"
        );
        // The model's limit applies when it is the smaller one.
        assert!(matches!(
            l.check(png(20, 10), 100),
            Err(ServeError::TooManyPixels(_))
        ));
        // Not a text line: refused from the header too.
        let e = l.check(png(500, 2), u64::MAX).unwrap_err();
        assert!(
            matches!(e, ServeError::InvalidArgument(ref m) if m.contains("wider than")),
            "{e:?}"
        );
        let e = l
            .check(Bytes::from_static(b"definitely not an image"), u64::MAX)
            .unwrap_err();
        assert!(
            matches!(e, ServeError::InvalidArgument(ref m) if m.contains("unknown format")),
            "{e:?}"
        );
        let e = l.check(vec![0u8; 20_000].into(), u64::MAX).unwrap_err();
        assert!(
            matches!(e, ServeError::TooLarge(ref m) if m.contains("20000 bytes")),
            "{e:?}"
        );
        assert!(matches!(
            l.check(Bytes::new(), u64::MAX),
            Err(ServeError::InvalidArgument(_))
        ));
        l.check_call(1_500, 8).unwrap();
        let e = l.check_call(1_501, 8).unwrap_err();
        assert!(
            matches!(e, ServeError::TooManyPixels(ref m) if m.contains("--max-call-pixels")),
            "{e:?}"
        );
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
    fn stream_items_get_their_own_deadline_within_the_stream() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        // Long after the stream began, an item still gets the whole default.
        let late = t0 + Duration::from_secs(100);
        assert_eq!(item_deadline(late, None, second), late + second);
        assert_eq!(
            item_deadline(late, Some(t0 + Duration::from_secs(120)), second),
            late + second
        );
        // The caller's deadline for the stream bounds every item.
        let stream_end = late + Duration::from_millis(300);
        assert_eq!(item_deadline(late, Some(stream_end), second), stream_end);
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
        let e = ServeError::Incomplete("gone".into());
        assert_eq!(e.http_status(), StatusCode::REQUEST_TIMEOUT);
        assert_ne!(e.label(), ServeError::TooLarge(String::new()).label());
        let e = ServeError::RateLimited("slow down".into(), Duration::from_secs(3));
        assert_eq!(e.grpc_code(), tonic::Code::ResourceExhausted);
        assert_eq!(e.http_status(), StatusCode::TOO_MANY_REQUESTS);
    }
}
