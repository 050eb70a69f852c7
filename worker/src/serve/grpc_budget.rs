//! The request body budget (`--max-body-bytes-in-flight`) on the gRPC port.
//!
//! tonic buffers a request message whole before any handler sees it, so admission
//! (`--max-queue`) cannot bound the memory of messages still arriving: many clients, each
//! slowly sending a message near the size limit over its own stream, would be held in full.
//! [`BodyBudgetLayer`] reads the gRPC framing of every request body as it passes. When a
//! message's 5-byte header declares its length, the message takes that much room from the
//! byte budget the HTTP port uses, and gives it back once its last byte has arrived. A message
//! that does not fit fails at once with `RESOURCE_EXHAUSTED`. It does not wait: a message
//! half received cannot make room, so waiting for room could deadlock.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use super::limits::ServeError;
use super::state::{BodyPermit, ServeState};

/// Length of a gRPC message header: a compression flag and a big-endian `u32` length.
const MESSAGE_HEADER: usize = 5;

/// Counts every request message on the gRPC port against the server's body budget.
#[derive(Clone)]
pub struct BodyBudgetLayer {
    state: Arc<ServeState>,
}

impl BodyBudgetLayer {
    /// The layer for `state`'s budget.
    pub fn new(state: Arc<ServeState>) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for BodyBudgetLayer {
    type Service = BodyBudget<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyBudget {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service [`BodyBudgetLayer`] makes: `inner` with every request body accounted.
#[derive(Clone)]
pub struct BodyBudget<S> {
    inner: S,
    state: Arc<ServeState>,
}

impl<S> Service<http::Request<tonic::body::Body>> for BodyBudget<S>
where
    S: Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let state = self.state.clone();
        self.inner.call(req.map(|body| {
            tonic::body::Body::new(BudgetedBody {
                inner: body,
                framing: MessageFraming::new(state),
                failed: false,
            })
        }))
    }
}

/// Where a body stands in its gRPC framing, and the room its current message holds.
struct MessageFraming {
    state: Arc<ServeState>,
    header: [u8; MESSAGE_HEADER],
    header_len: usize,
    /// Bytes of the current message still to come (after a complete header).
    remaining: u64,
    held: Option<BodyPermit>,
}

impl MessageFraming {
    fn new(state: Arc<ServeState>) -> Self {
        Self {
            state,
            header: [0; MESSAGE_HEADER],
            header_len: 0,
            remaining: 0,
            held: None,
        }
    }

    /// Account for the next bytes of the body.
    fn advance(&mut self, mut data: &[u8]) -> Result<(), ServeError> {
        while !data.is_empty() {
            if self.header_len < MESSAGE_HEADER {
                let n = (MESSAGE_HEADER - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
                self.header_len += n;
                data = &data[n..];
                if self.header_len == MESSAGE_HEADER {
                    let [_, a, b, c, d] = self.header;
                    self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
                    if self.remaining == 0 {
                        self.header_len = 0;
                    } else {
                        self.held = Some(self.state.try_body_permit(self.remaining)?);
                    }
                }
            } else {
                let n = data
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                data = &data[n..];
                if self.remaining == 0 {
                    self.held = None;
                    self.header_len = 0;
                }
            }
        }
        Ok(())
    }
}

/// A request body whose messages are accounted as they pass.
struct BudgetedBody {
    inner: tonic::body::Body,
    framing: MessageFraming,
    failed: bool,
}

impl Body for BudgetedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            if let Err(e) = this.framing.advance(data) {
                this.failed = true;
                this.framing.state.metrics.observe_request(
                    "grpc_upload",
                    e.label(),
                    std::time::Duration::ZERO,
                );
                return Poll::Ready(Some(Err(e.into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::state::tests::state;

    /// A gRPC message: flag 0, big-endian length, then `payload`.
    fn message(payload: &[u8]) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[tokio::test]
    async fn a_message_holds_its_declared_length_until_its_last_byte() {
        let s = Arc::new(state(1));
        let mut f = MessageFraming::new(s.clone());
        let m = message(&[7; 2048]);
        // The header split over two chunks: nothing is held until it is whole.
        f.advance(&m[..3]).unwrap();
        assert_eq!(s.body_budget_free(), 4);
        f.advance(&m[3..100]).unwrap();
        assert_eq!(s.body_budget_free(), 2, "2048 bytes are two 1 KiB units");
        f.advance(&m[100..m.len() - 1]).unwrap();
        assert_eq!(s.body_budget_free(), 2);
        // The last byte, then a whole second message and an empty one in one chunk.
        let mut rest = vec![m[m.len() - 1]];
        rest.extend(message(&[1; 10]));
        rest.extend(message(&[]));
        f.advance(&rest).unwrap();
        assert_eq!(s.body_budget_free(), 4);
        // A third message starts in the same stream and is held again.
        f.advance(&message(&[2; 3000])[..10]).unwrap();
        assert_eq!(s.body_budget_free(), 1);
        drop(f);
        assert_eq!(
            s.body_budget_free(),
            4,
            "a body dropped mid-message gives its room back"
        );
        s.batcher.close();
    }

    #[tokio::test]
    async fn a_message_that_does_not_fit_is_refused_and_a_huge_one_takes_everything() {
        let s = Arc::new(state(1));
        let mut holder = MessageFraming::new(s.clone());
        holder.advance(&message(&[0; 3 * 1024])[..20]).unwrap();
        let mut late = MessageFraming::new(s.clone());
        let e = late.advance(&message(&[0; 2 * 1024])[..20]).unwrap_err();
        assert!(matches!(e, ServeError::Overloaded(_)), "{e:?}");
        assert!(e.to_string().contains("--max-body-bytes-in-flight"), "{e}");
        // A small one fits beside it.
        let mut small = MessageFraming::new(s.clone());
        small.advance(&message(&[0; 10])[..7]).unwrap();
        drop((holder, small));
        // A message declaring more than the whole budget holds all of it.
        let mut huge = MessageFraming::new(s.clone());
        huge.advance(&message(&[0; 64 * 1024])[..5]).unwrap();
        assert_eq!(s.body_budget_free(), 0);
        drop(huge);
        assert_eq!(s.body_budget_free(), 4);
        s.batcher.close();
    }
}
