//! The gRPC port's accept loop: at most `--max-connections` connections open at once, as on
//! the HTTP port.
//!
//! At the limit the loop stops accepting, so new clients wait in the kernel's backlog instead
//! of costing a task, HTTP/2 buffers and a file descriptor each; a flood of idle clients cannot
//! take the descriptors the model reload and the HTTP port need. A connection's slot is held by
//! the stream tonic serves and freed when tonic drops it. Handshakes run concurrently, so a slow
//! client holds up nobody but its own slot. A plain client that sends nothing at all is closed
//! after `--header-read-timeout`; over TLS the handshake must finish within its own 10 s. A
//! client that has spoken keeps its slot while its connection is open, idle or not: gRPC
//! clients hold connections for reuse.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

/// A served connection holding one of the port's slots.
pub struct Limited<IO> {
    inner: IO,
    _slot: OwnedSemaphorePermit,
}

/// Connections of `listener` after `handshake` (`None`: the client is dropped), at most
/// `max_connections` open at once, until `stop`.
pub fn incoming<IO, H, F>(
    listener: TcpListener,
    max_connections: usize,
    stop: CancellationToken,
    handshake: H,
) -> ReceiverStream<io::Result<Limited<IO>>>
where
    IO: Send + 'static,
    H: Fn(TcpStream, SocketAddr) -> F + Send + 'static,
    F: Future<Output = Option<IO>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            let slot = tokio::select! {
                _ = stop.cancelled() => break,
                _ = tx.closed() => break,
                slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            };
            let (stream, remote) = tokio::select! {
                _ = stop.cancelled() => break,
                _ = tx.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: transient, and retrying at
                        // once would spin.
                        tracing::warn!("gRPC accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let shaking = handshake(stream, remote);
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(inner) = shaking.await {
                    let _ = tx.send(Ok(Limited { inner, _slot: slot })).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// `stream` once its client has sent something, or `None` when it stayed silent for
/// `timeout`: a connection that never speaks would otherwise hold its slot for good.
pub async fn first_bytes(
    stream: TcpStream,
    remote: SocketAddr,
    timeout: Duration,
) -> Option<TcpStream> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => Some(stream),
        Ok(Ok(_)) | Ok(Err(_)) => None,
        Err(_) => {
            tracing::debug!(client = %remote, "gRPC connection sent nothing within {timeout:?}; closed");
            None
        }
    }
}

impl<IO: Connected> Connected for Limited<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
