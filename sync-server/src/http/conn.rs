//! Bounds on the dashboard's TCP connections: how many are served at once, and how long one may
//! sit without traffic.
//!
//! axum's server has neither: hyper times out slow request headers only when given a timer,
//! which `axum::serve` does not do, so a few idle or trickling connections could hold the
//! dashboard forever. The listener takes a semaphore permit before it accepts (further clients
//! wait in the kernel's backlog, as with the QUIC side), and every connection carries a deadline
//! that any byte read or written pushes back; past it, reads fail and hyper closes the connection.
//! Long downloads keep writing, so they never hit it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Limits of the dashboard's connections.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// A connection with no byte in either direction for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 256,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// A TCP listener that accepts only while a connection slot is free.
pub struct CappedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
}

impl CappedListener {
    pub fn new(listener: TcpListener, limits: HttpLimits) -> CappedListener {
        CappedListener {
            listener,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            idle_timeout: limits.idle_timeout,
        }
    }
}

impl axum::serve::Listener for CappedListener {
    type Io = GuardedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (GuardedStream, std::net::SocketAddr) {
        loop {
            // The semaphore is never closed, so acquiring fails only if it were; then wait
            // like a full server rather than spin.
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                std::future::pending::<()>().await;
                continue;
            };
            match self.listener.accept().await {
                Ok((io, addr)) => {
                    let _ = io.set_nodelay(true);
                    return (GuardedStream::new(io, permit, self.idle_timeout), addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection holding its slot, closed after `idle` without traffic.
pub struct GuardedStream {
    io: TcpStream,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl GuardedStream {
    fn new(io: TcpStream, permit: OwnedSemaphorePermit, idle: Duration) -> GuardedStream {
        GuardedStream {
            io,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            _permit: permit,
        }
    }

    fn touch(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "HTTP connection idle for too long")
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.touch();
                Poll::Ready(result)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_write(cx, data) {
            Poll::Ready(result) => {
                this.touch();
                Poll::Ready(result)
            }
            // A client that stops reading a response is as idle as one that stops sending.
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn listener(limits: HttpLimits) -> (CappedListener, std::net::SocketAddr) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        (CappedListener::new(tcp, limits), addr)
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_an_active_one_is_not() {
        let limits = HttpLimits {
            max_connections: 4,
            idle_timeout: Duration::from_millis(300),
        };
        let (mut listener, addr) = listener(limits).await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (mut served, _) = listener.accept().await;
        // Traffic every 100 ms keeps it open well past the timeout.
        for _ in 0..6 {
            client.write_all(b"x").await.expect("write");
            let mut byte = [0u8; 1];
            served
                .read_exact(&mut byte)
                .await
                .expect("read while active");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut buf = [0u8; 1];
        let idle = tokio::time::timeout(Duration::from_secs(5), served.read(&mut buf))
            .await
            .expect("the idle read ends by itself");
        assert_eq!(
            idle.map_err(|e| e.kind()),
            Err(io::ErrorKind::TimedOut),
            "an idle connection times out"
        );
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_free_slot() {
        let limits = HttpLimits {
            max_connections: 1,
            idle_timeout: Duration::from_secs(60),
        };
        let (mut listener, addr) = listener(limits).await;
        let _first_client = TcpStream::connect(addr).await.expect("connect");
        let (first, _) = listener.accept().await;
        let _second_client = TcpStream::connect(addr).await.expect("connect");
        let waiting = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(
            waiting.is_err(),
            "a second connection was accepted past the cap"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("accepted once the first slot is free");
    }
}
