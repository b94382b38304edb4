//! Bounds on the dashboard's TCP connections: how many are served at once, how many one source
//! address may hold, and how long a connection may sit without its bytes moving.
//!
//! The listener takes a slot (a semaphore permit) before it accepts, so further clients wait in
//! the kernel's backlog as on the QUIC side, and then a share of its source address: past
//! [`HttpLimits::per_address`] open connections from one address (an IPv6 address counts by its
//! /64, which one subscriber usually holds whole), the new connection is answered `503` and
//! closed at once, so one address can never take every slot. Every accepted connection also
//! carries a deadline that any byte read or written pushes back: a client that stops reading a
//! response (or a handler that hangs) is closed after [`HttpLimits::idle_timeout`].
//!
//! That idle deadline alone cannot stop a client that trickles a byte now and then; the request
//! deadlines that do ([`HttpLimits::header_timeout`], [`HttpLimits::body_timeout`]) are enforced
//! per request by the connection loop in [`super::serve`].

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::throttle::LoginLimits;

/// Limits of the dashboard's connections and requests.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Connections one source address (an IPv6 /64) may hold at once; more are answered 503.
    pub per_address: usize,
    /// A request's head must arrive whole within this long of the connection opening, or of the
    /// previous response on it (so it is also the keep-alive idle limit).
    pub header_timeout: Duration,
    /// A request's body must arrive whole within this long of its head.
    pub body_timeout: Duration,
    /// A connection with no byte in either direction for this long is closed (a client that
    /// stops reading a response; a long download keeps writing, so it never meets this).
    pub idle_timeout: Duration,
    /// Limits on password guessing and on the password hashing it costs.
    pub login: LoginLimits,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 256,
            per_address: 32,
            header_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            login: LoginLimits::default(),
        }
    }
}

/// A TCP listener that accepts only while a connection slot is free, and only a share of the
/// slots per source address.
pub struct CappedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    shares: Arc<Shares>,
    idle_timeout: Duration,
}

impl CappedListener {
    pub fn new(listener: TcpListener, limits: &HttpLimits) -> CappedListener {
        CappedListener {
            listener,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            shares: Arc::new(Shares {
                per_address: limits.per_address.max(1),
                open: Mutex::new(HashMap::new()),
            }),
            idle_timeout: limits.idle_timeout,
        }
    }

    /// The next connection within the limits; waits while every slot is taken.
    pub async fn accept(&mut self) -> (GuardedStream, SocketAddr) {
        // The semaphore is never closed, so acquiring fails only if it were; then wait like a
        // full server rather than spin.
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return std::future::pending().await;
        };
        loop {
            match self.listener.accept().await {
                Ok((io, addr)) => {
                    let Some(share) = Shares::take(&self.shares, addr.ip()) else {
                        // The slot stays free for the next client.
                        refuse_over_share(&io, addr);
                        continue;
                    };
                    let _ = io.set_nodelay(true);
                    let stream = GuardedStream::new(io, permit, share, self.idle_timeout);
                    return (stream, addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Tells a client over its address's share why it is turned away, if its socket takes the bytes
/// at once, and closes it.
fn refuse_over_share(io: &TcpStream, addr: SocketAddr) {
    const BODY: &str = "too many connections from your address; close some and try again\n";
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 5\r\n\
         content-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = io.try_write(reply.as_bytes());
    tracing::debug!(peer = %addr, "HTTP connection over its address's share refused");
}

/// Open connections per source address.
struct Shares {
    per_address: usize,
    /// Only addresses with an open connection are kept, so this holds at most one entry per slot.
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl Shares {
    fn take(shares: &Arc<Shares>, ip: IpAddr) -> Option<Share> {
        let key = address_key(ip);
        let mut open = shares.lock();
        let count = open.entry(key).or_insert(0);
        if *count >= shares.per_address {
            return None;
        }
        *count += 1;
        Some(Share {
            shares: shares.clone(),
            key,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The counts stay consistent under any panic (each change is one statement), so a
        // poisoned lock is used as it is rather than refusing every connection from then on.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The address a connection counts against: IPv4 as it is, IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// One connection's place in its address's share; given back when the connection ends.
struct Share {
    shares: Arc<Shares>,
    key: IpAddr,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut open = self.shares.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A connection holding its slot and its address's share, closed after `idle` without traffic.
pub struct GuardedStream {
    io: TcpStream,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
    _share: Share,
}

impl GuardedStream {
    fn new(
        io: TcpStream,
        permit: OwnedSemaphorePermit,
        share: Share,
        idle: Duration,
    ) -> GuardedStream {
        GuardedStream {
            io,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            _permit: permit,
            _share: share,
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn listener(limits: HttpLimits) -> (CappedListener, SocketAddr) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        (CappedListener::new(tcp, &limits), addr)
    }

    /// A connection to `to` from the loopback address `from` (all of 127/8 is loopback).
    async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{from}:0").parse().expect("addr"))
            .expect("bind the source address");
        socket.connect(to).await.expect("connect")
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_an_active_one_is_not() {
        let limits = HttpLimits {
            max_connections: 4,
            idle_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
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
            ..HttpLimits::default()
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

    #[tokio::test]
    async fn one_address_gets_only_its_share_and_others_still_get_in() {
        let limits = HttpLimits {
            max_connections: 8,
            per_address: 2,
            ..HttpLimits::default()
        };
        let (mut listener, addr) = listener(limits).await;
        let mut greedy = Vec::new();
        for _ in 0..4 {
            greedy.push(connect_from("127.0.0.2", addr).await);
        }
        let mut held = Vec::new();
        for _ in 0..2 {
            let (stream, peer) = listener.accept().await;
            assert_eq!(peer.ip().to_string(), "127.0.0.2");
            held.push(stream);
        }
        // The other two from 127.0.0.2 are turned away with a 503 as they are accepted; the
        // next connection served is the one from another address.
        let _fair = connect_from("127.0.0.3", addr).await;
        let (_served, peer) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("another address still gets a slot");
        assert_eq!(peer.ip().to_string(), "127.0.0.3");
        for mut refused in greedy.drain(2..) {
            let mut reply = String::new();
            let read =
                tokio::time::timeout(Duration::from_secs(5), refused.read_to_string(&mut reply))
                    .await
                    .expect("a refused connection is closed");
            if read.is_ok() {
                assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
            }
        }
        // A slot given back is the address's share back too.
        drop(held.pop());
        let _again = connect_from("127.0.0.2", addr).await;
        let (_stream, peer) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the share is given back with the connection");
        assert_eq!(peer.ip().to_string(), "127.0.0.2");
    }

    #[test]
    fn an_ipv6_address_counts_by_its_64_and_a_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().expect("ip");
        assert_eq!(
            address_key(mapped),
            "10.0.0.7".parse::<IpAddr>().expect("ip")
        );
    }
}
