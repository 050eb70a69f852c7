//! Accepting connections within a cap: at most `--max-connections` open at once on each port.
//!
//! At the limit a port stops accepting, so new clients wait in the kernel's backlog instead of
//! costing a task, buffers and a file descriptor each; a flood of idle clients cannot take the
//! descriptors the model reload and the other port need. [`accept`] is the step both ports
//! share; [`incoming`] is the gRPC port's whole loop. There a connection's slot is held by the
//! stream tonic serves and freed when tonic drops it. Handshakes run concurrently, so a slow
//! client holds up nobody but its own slot. A client that sends nothing within
//! `--header-read-timeout` (over TLS: after its handshake, which has 10 s of its own) is closed.
//! A client that has spoken keeps its slot while its connection is open, idle or not (gRPC
//! clients hold connections for reuse), until the server retires the connection at
//! `--grpc-max-connection-age` or closes it for an unanswered PING (`--grpc-keepalive`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

/// Connections of `listener` after `handshake` (`None`: the client is dropped), at most
/// `max_connections` open at once, until `stop`.
pub fn incoming<IO, H, F>(
    listener: TcpListener,
    max_connections: usize,
    stop: CancellationToken,
    handshake: H,
) -> ReceiverStream<io::Result<Connection<IO>>>
where
    IO: Send + 'static,
    H: Fn(TcpStream, SocketAddr) -> F + Send + 'static,
    F: Future<Output = Option<Connection<IO>>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = tx.closed() => None,
                next = accept(&listener, &slots, &stop, "gRPC") => next,
            };
            let Some((slot, stream, remote)) = next else {
                break;
            };
            let shaking = handshake(stream, remote);
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(mut connection) = shaking.await {
                    connection.slot = Some(slot);
                    let _ = tx.send(Ok(connection)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The next connection of `listener` with one of `slots`, waiting for a slot first (clients
/// wait in the kernel's backlog meanwhile); `None` once `stop` is cancelled. Accept errors
/// (out of file descriptors and the like) are logged and retried after a pause.
pub async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    stop: &CancellationToken,
    port: &str,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    let slot = tokio::select! {
        _ = stop.cancelled() => return None,
        slot = slots.clone().acquire_owned() => slot.expect("never closed"),
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((slot, stream, remote));
                }
                Err(e) => {
                    // Transient, and retrying at once would spin.
                    tracing::warn!("{port} accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// `stream` once its client has sent something (what it sent is read again first), or `None`
/// when it stayed silent for `timeout`: a connection that never speaks would otherwise hold its
/// slot for good.
pub async fn first_bytes<IO: AsyncRead + Unpin>(
    mut stream: IO,
    remote: SocketAddr,
    timeout: Duration,
) -> Option<Connection<IO>> {
    let mut first = vec![0u8; 1024];
    match tokio::time::timeout(timeout, stream.read(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {
            first.truncate(n);
            Some(Connection {
                prefix: first,
                consumed: 0,
                inner: stream,
                slot: None,
            })
        }
        Ok(Ok(_)) | Ok(Err(_)) => None,
        Err(_) => {
            tracing::debug!(client = %remote, "gRPC connection sent nothing within {timeout:?}; closed");
            None
        }
    }
}

/// A served connection: its first bytes, read ahead to see that the client speaks, handed out
/// again before the rest, and the port's slot, held until tonic drops the connection.
pub struct Connection<IO> {
    prefix: Vec<u8>,
    consumed: usize,
    inner: IO,
    slot: Option<OwnedSemaphorePermit>,
}

impl<IO: Connected> Connected for Connection<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Connection<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let rest = &this.prefix[this.consumed..];
        if rest.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        this.consumed += n;
        if this.consumed == this.prefix.len() {
            this.prefix = Vec::new();
            this.consumed = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Connection<IO> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_bytes_read_ahead_come_first_then_the_rest() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HTTP/2.0").await.unwrap();
        let remote: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut s = first_bytes(server, remote, Duration::from_secs(5))
            .await
            .expect("the client spoke");
        client.write_all(b" and more").await.unwrap();
        drop(client);
        // A small buffer takes the read-ahead bytes in pieces.
        let mut small = [0u8; 4];
        let n = s.read(&mut small).await.unwrap();
        assert_eq!(&small[..n], b"PRI ");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"* HTTP/2.0 and more");
    }

    #[tokio::test]
    async fn a_silent_or_closed_client_is_dropped() {
        let remote: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (_client, server) = tokio::io::duplex(64);
        assert!(first_bytes(server, remote, Duration::from_millis(50))
            .await
            .is_none());
        let (client, server) = tokio::io::duplex(64);
        drop(client);
        assert!(first_bytes(server, remote, Duration::from_secs(30))
            .await
            .is_none());
    }
}
