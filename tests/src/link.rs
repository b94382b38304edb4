//! An impaired link inside the process: real QUIC over a seeded, 2G-like UDP link.
//!
//! Our users sync over 2G (64 kbit/s, ~300 ms one way, 20 % loss, outages of 6–20 s) and
//! `tc netem` is not available here. `linkem.py` (`/work/shared/tools/linkem.md`) emulates
//! such a link between processes; this module does it inside a test or benchmark, with no
//! external tools, deterministically, with counters to assert on and events to trigger.
//!
//! [`ImpairedSocket`] wraps quinn's stock tokio UDP socket and is given to the *client*
//! endpoint only, so it impairs both directions itself: `try_send` puts outgoing datagrams on
//! the link and a background task releases them onto the real socket when due; `poll_recv`
//! takes incoming ones off the real socket and hands them to quinn when due (with a timer).
//!
//! The model is linkem's, per direction, for each datagram entering the link at time `t`:
//! 1. two draws from the direction's own SplitMix64 stream, always (loss, then jitter), so
//!    the same sequence of datagrams meets the same dice whatever else happens to them;
//! 2. an outage in force at `t`, or the downlink blackhole, drops it;
//! 3. with a rate, a drop-tail buffer of `queue_bytes` (what is not yet serialised, this
//!    datagram included) drops it when full; else it holds the bottleneck for
//!    `(len + 28) * 8 / rate` s (28: IPv4 + UDP headers) after those before it, in virtual
//!    time, not slept;
//! 4. the loss roll, after serialisation: a lost datagram has used its airtime;
//! 5. it is due at finish + delay ± jitter, never before the previous one (no reordering);
//! 6. when due, it is dropped if an outage overlapped its time on the link (an outage started
//!    by [`LinkHandle::outage_now`] takes what is in the pipe) or the blackhole is on.
//!
//! Unlike linkem: no reordering, one rate for both ways, a buffer in bytes (not packets),
//! and step 6 (linkem only drops what an outage catches on the air, not in propagation).
//! GSO and GRO are off towards quinn, so each datagram is judged and counted alone; a GRO
//! batch from the real socket is split first. Byte counts are UDP payload, as quinn's
//! `udp_tx` and `udp_rx` count them; the rate also counts the 28 header bytes.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep, sleep_until};

/// Bytes added to each datagram for rate accounting: IPv4 + UDP headers, as in linkem.
pub const OVERHEAD_BYTES: u64 = 28;
/// Airtime and delay are capped at a day, so instant arithmetic cannot overflow.
const MAX_SPAN: Duration = Duration::from_secs(86_400);
/// Receive buffers for the real socket: how many, and each big enough for a GRO batch.
const SCRATCH_BUFS: usize = 4;
const SCRATCH_LEN: usize = 64 * 1024;

/// What the link does to datagrams, the same in both directions.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Bottleneck rate each way, bits per second; `None` (or 0) is unlimited.
    pub rate_bps: Option<u64>,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Each datagram's delay is `delay` plus a uniform draw in ±`jitter`.
    pub jitter: Duration,
    /// Probability (0..1) that a datagram is lost, each direction.
    pub loss: f64,
    /// `(start, length)`, start timed from the socket's creation: nothing passes either way.
    pub outages: Vec<(Duration, Duration)>,
    /// Drop-tail buffer at the bottleneck each way, in bytes (64 KiB); only with a rate.
    pub queue_bytes: u64,
    /// Seed of the loss and jitter draws.
    pub seed: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self::clean()
    }
}

impl LinkConfig {
    /// No impairment: the link only counts.
    pub fn clean() -> Self {
        Self {
            rate_bps: None,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            outages: Vec::new(),
            queue_bytes: 64 * 1024,
            seed: 0,
        }
    }

    /// 2G/EDGE: 64 kbit/s each way, 300 ± 50 ms one way, no loss (see [`Self::with_loss`]).
    pub fn two_g() -> Self {
        let (delay, jitter) = (Duration::from_millis(300), Duration::from_millis(50));
        Self::clean().with_rate(64_000).with_delay(delay, jitter)
    }

    pub fn with_rate(mut self, bps: u64) -> Self {
        self.rate_bps = Some(bps);
        self
    }

    pub fn with_delay(mut self, delay: Duration, jitter: Duration) -> Self {
        (self.delay, self.jitter) = (delay, jitter);
        self
    }

    pub fn with_loss(mut self, loss: f64) -> Self {
        self.loss = loss;
        self
    }

    pub fn with_outage(mut self, start: Duration, len: Duration) -> Self {
        self.outages.push((start, len));
        self
    }

    pub fn with_queue_bytes(mut self, bytes: u64) -> Self {
        self.queue_bytes = bytes;
        self
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// Counters of one direction. `sent` entered the link (from quinn upwards, from the peer
/// downwards); sent = delivered + [`dropped`](Self::dropped) + `in_flight`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    pub sent_datagrams: u64,
    pub sent_bytes: u64,
    pub delivered_datagrams: u64,
    pub delivered_bytes: u64,
    pub dropped_loss: u64,
    pub dropped_outage: u64,
    pub dropped_queue: u64,
    /// By [`LinkHandle::blackhole_downlink`] (downlink only).
    pub dropped_blackhole: u64,
    /// Refused by the real socket (uplink only).
    pub dropped_error: u64,
    /// On the link now, not yet due.
    pub in_flight: u64,
}

impl DirectionStats {
    /// Datagrams dropped, whatever the cause.
    pub fn dropped(&self) -> u64 {
        let by_link = self.dropped_loss + self.dropped_outage + self.dropped_queue;
        by_link + self.dropped_blackhole + self.dropped_error
    }

    fn drop(&mut self, cause: Cause) {
        *match cause {
            Cause::Loss => &mut self.dropped_loss,
            Cause::Outage => &mut self.dropped_outage,
            Cause::Queue => &mut self.dropped_queue,
            Cause::Blackhole => &mut self.dropped_blackhole,
        } += 1;
    }
}

/// Counters of both directions, from [`LinkHandle::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Client to server.
    pub up: DirectionStats,
    /// Server to client.
    pub down: DirectionStats,
}

/// SplitMix64: tiny, seedable, and plenty to roll a link's dice.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    Loss,
    Outage,
    Queue,
    Blackhole,
}

/// A datagram on the link; `addr` is its destination upwards, its source downwards.
struct Datagram {
    addr: SocketAddr,
    local_ip: Option<IpAddr>,
    ecn: Option<EcnCodepoint>,
    bytes: Vec<u8>,
    entered: Instant,
    due: Instant,
}

impl Datagram {
    fn new(
        addr: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        bytes: &[u8],
    ) -> Self {
        let (bytes, entered) = (bytes.to_vec(), Instant::now());
        Self {
            addr,
            local_ip,
            ecn,
            bytes,
            entered,
            due: entered,
        }
    }
}

/// The link's rules as they stand: loss and outages change at run time.
struct Rules {
    config: LinkConfig,
    t0: Instant,
}

impl Rules {
    /// Whether an outage is in force at any moment of `[from, to]`.
    fn outage_between(&self, from: Instant, to: Instant) -> bool {
        self.config.outages.iter().any(|&(start, len)| {
            let Some(start) = self.t0.checked_add(start) else {
                return false;
            };
            start <= to && start.checked_add(len).is_none_or(|end| from < end)
        })
    }
}

/// One direction: its dice, its bottleneck and the datagrams on it, in due order.
struct Lane {
    rng: SplitMix64,
    /// When the bottleneck has serialised everything it accepted.
    free_at: Instant,
    last_due: Instant,
    queue: VecDeque<Datagram>,
    stats: DirectionStats,
    /// Drops everything (the downlink's blackhole).
    blocked: bool,
}

impl Lane {
    fn new(seed: u64, now: Instant) -> Self {
        Self {
            rng: SplitMix64(seed),
            free_at: now,
            last_due: now,
            queue: VecDeque::new(),
            stats: DirectionStats::default(),
            blocked: false,
        }
    }

    /// When a datagram of `len` bytes entering the link at `now` is due, or why it is dropped.
    fn judge(&mut self, now: Instant, len: usize, rules: &Rules) -> Result<Instant, Cause> {
        let cfg = &rules.config;
        let (loss_roll, jitter_roll) = (self.rng.unit(), self.rng.unit());
        if rules.outage_between(now, now) {
            return Err(Cause::Outage);
        }
        if self.blocked {
            return Err(Cause::Blackhole);
        }
        let mut finish = now;
        if let Some(bps) = cfg.rate_bps.filter(|&bps| bps > 0).map(|bps| bps as f64) {
            let start = self.free_at.max(now);
            let bytes = (len as u64 + OVERHEAD_BYTES) as f64;
            let backlog = start.duration_since(now).as_secs_f64() * bps / 8.0;
            if backlog + bytes > cfg.queue_bytes as f64 {
                return Err(Cause::Queue);
            }
            finish = start + span(bytes * 8.0 / bps);
        }
        self.free_at = finish;
        if loss_roll < cfg.loss {
            return Err(Cause::Loss);
        }
        let jitter = (2.0 * jitter_roll - 1.0) * cfg.jitter.min(MAX_SPAN).as_secs_f64();
        let delay = span(cfg.delay.min(MAX_SPAN).as_secs_f64() + jitter);
        self.last_due = (finish + delay).max(self.last_due);
        Ok(self.last_due)
    }

    /// Puts a datagram on the link or drops it; true if it is on the link.
    fn offer(&mut self, mut d: Datagram, rules: &Rules) -> bool {
        self.stats.sent_datagrams += 1;
        self.stats.sent_bytes += d.bytes.len() as u64;
        match self.judge(d.entered, d.bytes.len(), rules) {
            Ok(due) => {
                d.due = due;
                self.queue.push_back(d);
                true
            }
            Err(cause) => {
                self.stats.drop(cause);
                false
            }
        }
    }

    /// The next datagram due by `now` that survived the link, or when the next one is due
    /// (`None`: the link is empty).
    fn release(&mut self, now: Instant, rules: &Rules) -> Result<Datagram, Option<Instant>> {
        while let Some(d) = self.queue.pop_front() {
            if d.due > now {
                let due = d.due;
                self.queue.push_front(d);
                return Err(Some(due));
            } else if rules.outage_between(d.entered, d.due) {
                self.stats.drop(Cause::Outage);
            } else if self.blocked {
                self.stats.drop(Cause::Blackhole);
            } else {
                return Ok(d);
            }
        }
        Err(None)
    }

    fn delivered(&mut self, len: usize) {
        self.stats.delivered_datagrams += 1;
        self.stats.delivered_bytes += len as u64;
    }

    fn stats(&self) -> DirectionStats {
        DirectionStats {
            in_flight: self.queue.len() as u64,
            ..self.stats
        }
    }
}

/// `secs` seconds, zero if negative, at most [`MAX_SPAN`].
fn span(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs)
        .unwrap_or_default()
        .min(MAX_SPAN)
}

struct State {
    rules: Rules,
    up: Lane,
    down: Lane,
    /// Wakes `poll_recv` when the next incoming datagram is due.
    timer: Option<Pin<Box<Sleep>>>,
    /// Receive buffers for the real socket.
    scratch: Vec<Vec<u8>>,
}

struct Shared {
    state: Mutex<State>,
    /// Tells the uplink pump that a datagram joined the link.
    uplink: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state whole, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A UDP socket behind an impaired link, for a quinn client endpoint.
pub struct ImpairedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    shared: Arc<Shared>,
    pump: tokio::task::AbortHandle,
}

impl ImpairedSocket {
    /// Binds a real UDP socket at `addr` behind a link with `config`, whose clock (for
    /// outages) starts now. Needs a tokio runtime (with time): the socket registers with it
    /// and a task there releases outgoing datagrams.
    pub fn bind(addr: SocketAddr, config: LinkConfig) -> io::Result<Arc<ImpairedSocket>> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "ImpairedSocket::bind needs a tokio runtime",
            ));
        }
        let inner = TokioRuntime.wrap_udp_socket(std::net::UdpSocket::bind(addr)?)?;
        let now = Instant::now();
        let (up, down) = (config.seed, config.seed ^ 0xD1B5_4A32_D192_ED03);
        let state = State {
            rules: Rules { config, t0: now },
            up: Lane::new(up, now),
            down: Lane::new(down, now),
            timer: None,
            scratch: vec![vec![0; SCRATCH_LEN]; SCRATCH_BUFS],
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            uplink: Notify::new(),
        });
        let pump = tokio::spawn(pump_uplink(shared.clone(), inner.clone())).abort_handle();
        Ok(Arc::new(ImpairedSocket {
            inner,
            shared,
            pump,
        }))
    }

    /// A handle to steer the link and read its counters.
    pub fn handle(&self) -> LinkHandle {
        LinkHandle {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for ImpairedSocket {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl fmt::Debug for ImpairedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No lock here, so formatting the socket never waits on the link.
        f.debug_struct("ImpairedSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for ImpairedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    /// Never blocks: each datagram goes on the link, or is dropped as on a real link.
    fn try_send(&self, t: &Transmit) -> io::Result<()> {
        let size = t.segment_size.unwrap_or(t.contents.len()).max(1);
        let mut queued = false;
        {
            let mut state = self.shared.lock();
            let state = &mut *state;
            for bytes in t.contents.chunks(size) {
                let d = Datagram::new(t.destination, t.src_ip, t.ecn, bytes);
                queued |= state.up.offer(d, &state.rules);
            }
        }
        if queued {
            self.shared.uplink.notify_one();
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.shared.lock();
        let State {
            rules,
            down,
            timer,
            scratch,
            ..
        } = &mut *state;
        // Everything the real socket has goes on the link now, split from GRO batches.
        let mut metas = [RecvMeta::default(); SCRATCH_BUFS];
        loop {
            let mut iovs: Vec<_> = scratch.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let n = match self.inner.poll_recv(cx, &mut iovs, &mut metas) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(n)) => n,
            };
            for (m, buf) in metas.iter().zip(scratch.iter()).take(n) {
                let stride = if m.stride == 0 { m.len } else { m.stride };
                for bytes in buf[..m.len.min(buf.len())].chunks(stride.max(1)) {
                    down.offer(Datagram::new(m.addr, m.dst_ip, m.ecn, bytes), rules);
                }
            }
        }
        // Then quinn gets what is due, or a timer for when it will be.
        let (now, mut n) = (Instant::now(), 0);
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()) {
            match down.release(now, rules) {
                Ok(d) => {
                    let len = d.bytes.len().min(buf.len());
                    buf[..len].copy_from_slice(&d.bytes[..len]);
                    *meta = RecvMeta {
                        addr: d.addr,
                        len,
                        stride: len,
                        ecn: d.ecn,
                        dst_ip: d.local_ip,
                    };
                    down.delivered(len);
                    n += 1;
                }
                Err(None) => break,
                Err(Some(_)) if n > 0 => break,
                Err(Some(at)) => {
                    let timer = timer.get_or_insert_with(|| Box::pin(sleep_until(at)));
                    timer.as_mut().reset(at);
                    if timer.as_mut().poll(cx).is_ready() {
                        cx.waker().wake_by_ref();
                    }
                    break;
                }
            }
        }
        if n > 0 {
            Poll::Ready(Ok(n))
        } else {
            Poll::Pending
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// `try_send` never says `WouldBlock`, so quinn may always write.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Releases outgoing datagrams onto the real socket when they are due.
async fn pump_uplink(shared: Arc<Shared>, inner: Arc<dyn AsyncUdpSocket>) {
    let mut writable = inner.clone().create_io_poller();
    loop {
        let next = {
            let mut state = shared.lock();
            let state = &mut *state;
            state.up.release(Instant::now(), &state.rules)
        };
        let d = match next {
            Ok(d) => d,
            Err(Some(at)) => {
                tokio::select! {
                    () = sleep_until(at) => {}
                    () = shared.uplink.notified() => {}
                }
                continue;
            }
            Err(None) => {
                shared.uplink.notified().await;
                continue;
            }
        };
        let (destination, ecn, src_ip) = (d.addr, d.ecn, d.local_ip);
        let t = Transmit {
            destination,
            ecn,
            contents: &d.bytes,
            segment_size: None,
            src_ip,
        };
        let sent = loop {
            match inner.try_send(&t) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = poll_fn(|cx| writable.as_mut().poll_writable(cx)).await {
                        break Err(e);
                    }
                }
                result => break result,
            }
        };
        let mut state = shared.lock();
        match sent {
            Ok(()) => state.up.delivered(d.bytes.len()),
            Err(_) => state.up.stats.dropped_error += 1,
        }
    }
}

/// Steers a running link and reads its counters; clones are cheap and share the link.
#[derive(Clone)]
pub struct LinkHandle {
    shared: Arc<Shared>,
}

impl LinkHandle {
    /// Starts an outage of `len` now: nothing passes either way, including datagrams already
    /// on the link that would arrive during it.
    pub fn outage_now(&self, len: Duration) {
        let mut state = self.shared.lock();
        let start = Instant::now().duration_since(state.rules.t0);
        state.rules.config.outages.push((start, len));
    }

    /// Sets the loss probability of both directions, from the next datagram on.
    pub fn set_loss(&self, loss: f64) {
        self.shared.lock().rules.config.loss = loss;
    }

    /// While on, drops everything towards the client while the uplink still flows: a
    /// request gets through and its reply is lost.
    pub fn blackhole_downlink(&self, on: bool) {
        self.shared.lock().down.blocked = on;
    }

    /// The counters so far.
    pub fn stats(&self) -> LinkStats {
        let state = self.shared.lock();
        LinkStats {
            up: state.up.stats(),
            down: state.down.stats(),
        }
    }
}

impl fmt::Debug for LinkHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
    use quinn::rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    use quinn::rustls::{self, RootCertStore};
    use quinn::{Connection, Endpoint, EndpointConfig, TransportConfig};
    use tokio::sync::mpsc;
    use tokio::time::timeout;

    type Fallible<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

    /// Generous ceiling for a whole test: a loaded 2-core machine is slow, not stuck.
    const PATIENCE: Duration = Duration::from_secs(120);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn transport() -> Arc<TransportConfig> {
        let mut t = TransportConfig::default();
        t.max_idle_timeout(Some(PATIENCE.try_into().expect("idle timeout")));
        Arc::new(t)
    }

    fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A QUIC server on 127.0.0.1:0 that echoes the first bidirectional stream of each
    /// connection as it reads it, then reports how many bytes it echoed.
    struct EchoServer {
        endpoint: Endpoint,
        cert: CertificateDer<'static>,
        echoed: mpsc::UnboundedReceiver<u64>,
    }

    fn echo_server() -> Fallible<EchoServer> {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
        let cert = key.cert.der().clone();
        let private = PrivatePkcs8KeyDer::from(key.signing_key.serialize_der());
        let tls = rustls::ServerConfig::builder_with_provider(tls_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], private.into())?;
        let mut config =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
        config.transport_config(transport());
        let endpoint = Endpoint::server(config, "127.0.0.1:0".parse()?)?;
        let (tx, echoed) = mpsc::unbounded_channel();
        let accept = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accept.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    if let Ok((mut send, mut recv)) = conn.accept_bi().await
                        && let Ok(n) = tokio::io::copy(&mut recv, &mut send).await
                    {
                        let _ = send.finish();
                        let _ = tx.send(n);
                    }
                    conn.closed().await;
                });
            }
        });
        Ok(EchoServer {
            endpoint,
            cert,
            echoed,
        })
    }

    /// A client endpoint on an impaired socket that trusts the echo server's certificate.
    fn client(server: &EchoServer, config: LinkConfig) -> Fallible<(Endpoint, LinkHandle)> {
        let socket = ImpairedSocket::bind("127.0.0.1:0".parse()?, config)?;
        let link = socket.handle();
        let mut endpoint = Endpoint::new_with_abstract_socket(
            EndpointConfig::default(),
            None,
            socket,
            Arc::new(TokioRuntime),
        )?;
        let mut roots = RootCertStore::empty();
        roots.add(server.cert.clone())?;
        let tls = rustls::ClientConfig::builder_with_provider(tls_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
        config.transport_config(transport());
        endpoint.set_default_client_config(config);
        Ok((endpoint, link))
    }

    async fn connect(endpoint: &Endpoint, server: &EchoServer) -> Fallible<Connection> {
        Ok(endpoint
            .connect(server.endpoint.local_addr()?, "localhost")?
            .await?)
    }

    /// Sends `data` on a new stream and reads the echo, both at once.
    async fn echo(conn: &Connection, data: &[u8]) -> Fallible<Vec<u8>> {
        let (mut send, mut recv) = conn.open_bi().await?;
        let write = async {
            send.write_all(data).await?;
            send.finish()?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        };
        let (written, read) = tokio::join!(write, recv.read_to_end(usize::MAX));
        written?;
        Ok(read?)
    }

    /// Connects and echoes `len` bytes through a link with `config`; how long that took.
    async fn connect_and_echo(
        config: LinkConfig,
        len: usize,
    ) -> Fallible<(Duration, Connection, LinkHandle)> {
        let server = echo_server()?;
        let (endpoint, link) = client(&server, config)?;
        let data = payload(len);
        let started = Instant::now();
        let conn = timeout(PATIENCE, connect(&endpoint, &server)).await??;
        let back = timeout(PATIENCE, echo(&conn, &data)).await??;
        let took = started.elapsed();
        assert!(
            back == data,
            "echo differs: {} bytes back of {len}",
            back.len()
        );
        Ok((took, conn, link))
    }

    #[tokio::test]
    async fn clean_link_counts_what_quinn_counts() -> Fallible {
        let (_, conn, link) = connect_and_echo(LinkConfig::clean(), 20_000).await?;
        // quinn counts a datagram as the connection handles it; give the last ones a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (quic, s) = (conn.stats(), link.stats());
            let same = quic.udp_tx.bytes == s.up.sent_bytes
                && quic.udp_tx.datagrams == s.up.sent_datagrams
                && quic.udp_rx.bytes == s.down.delivered_bytes
                && quic.udp_rx.datagrams == s.down.delivered_datagrams;
            if same && s.up.in_flight == 0 && s.down.in_flight == 0 {
                assert_eq!(s.up.delivered_bytes, s.up.sent_bytes);
                assert_eq!(s.down.delivered_bytes, s.down.sent_bytes);
                assert_eq!(s.up.dropped() + s.down.dropped(), 0, "{s:?}");
                assert!(
                    s.up.sent_bytes > 20_000 && s.down.sent_bytes > 20_000,
                    "{s:?}"
                );
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "quinn {:?} {:?} vs link {s:?}",
                quic.udp_tx,
                quic.udp_rx
            );
            tokio::time::sleep(ms(50)).await;
        }
    }

    #[tokio::test]
    async fn delay_costs_two_round_trips() -> Fallible {
        let (took, _, _) = connect_and_echo(
            LinkConfig::clean().with_delay(ms(150), Duration::ZERO),
            1_000,
        )
        .await?;
        // Handshake (1 RTT) then the request and its echo (1 RTT), at 150 ms one way.
        assert!(took >= ms(600), "handshake + echo took {took:?}");
        Ok(())
    }

    #[tokio::test]
    async fn rate_limits_throughput() -> Fallible {
        let (took, _, link) =
            connect_and_echo(LinkConfig::clean().with_rate(64_000), 40_000).await?;
        // 40 KB at 64 kbit/s is 5 s on the air one way, headers not counted.
        assert!(took >= Duration::from_secs(5), "40 KB echoed in {took:?}");
        let s = link.stats();
        assert!(
            s.up.delivered_bytes > 40_000 && s.down.delivered_bytes > 40_000,
            "{s:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn quic_recovers_from_heavy_loss() -> Fallible {
        let config = LinkConfig::clean().with_loss(0.3).with_seed(7);
        let (_, _, link) = connect_and_echo(config, 100_000).await?;
        let s = link.stats();
        let (lost, sent) = (
            s.up.dropped_loss + s.down.dropped_loss,
            s.up.sent_datagrams + s.down.sent_datagrams,
        );
        assert!(s.up.dropped_loss > 0 && s.down.dropped_loss > 0, "{s:?}");
        let share = lost as f64 / sent as f64;
        assert!(
            (0.15..0.45).contains(&share),
            "lost {lost} of {sent} datagrams: {s:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn transfer_survives_an_outage() -> Fallible {
        let server = echo_server()?;
        let (endpoint, link) = client(&server, LinkConfig::clean().with_rate(256_000))?;
        let conn = timeout(PATIENCE, connect(&endpoint, &server)).await??;
        // 64 KB at 256 kbit/s: 2 s on the air each way, so most of it is left after 0.5 s.
        let data = payload(64_000);
        let transfer = tokio::spawn({
            let (conn, data) = (conn.clone(), data.clone());
            async move { echo(&conn, &data).await.map_err(|e| e.to_string()) }
        });
        tokio::time::sleep(ms(500)).await;
        let outage = Instant::now();
        link.outage_now(Duration::from_secs(3));
        let back = timeout(PATIENCE, transfer).await???;
        let after = outage.elapsed();
        assert!(back == data, "echo differs");
        assert!(
            after >= Duration::from_secs(3),
            "done {after:?} after a 3 s outage began"
        );
        let s = link.stats();
        assert!(s.up.dropped_outage + s.down.dropped_outage > 0, "{s:?}");
        Ok(())
    }

    #[tokio::test]
    async fn blackholed_reply_arrives_once_cleared() -> Fallible {
        let mut server = echo_server()?;
        let (endpoint, link) = client(&server, LinkConfig::clean())?;
        let conn = timeout(PATIENCE, connect(&endpoint, &server)).await??;
        link.blackhole_downlink(true);
        let data = payload(2_000);
        let reply = tokio::spawn({
            let (conn, data) = (conn.clone(), data.clone());
            async move { echo(&conn, &data).await.map_err(|e| e.to_string()) }
        });
        // The request gets through: the server has echoed all of it...
        let echoed = timeout(PATIENCE, server.echoed.recv()).await?;
        assert_eq!(echoed, Some(2_000));
        // ...but the reply does not arrive while the downlink is dark.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !reply.is_finished(),
            "the reply crossed a blackholed downlink"
        );
        assert!(link.stats().down.dropped_blackhole > 0);
        link.blackhole_downlink(false);
        let back = timeout(PATIENCE, reply).await???;
        assert!(back == data, "echo differs");
        Ok(())
    }

    #[tokio::test]
    async fn datagrams_counted_one_by_one_and_steered() -> Fallible {
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let socket = ImpairedSocket::bind("127.0.0.1:0".parse()?, LinkConfig::clean())?;
        let link = socket.handle();
        let send = |contents: &[u8], segment_size| {
            let destination = peer.local_addr().expect("peer address");
            let t = Transmit {
                destination,
                ecn: None,
                contents,
                segment_size,
                src_ip: None,
            };
            socket.try_send(&t)
        };
        // A GSO batch is three datagrams on the link, judged and delivered one by one.
        send(b"abcdef", Some(2))?;
        let mut buf = [0; 16];
        for want in [b"ab", b"cd", b"ef"] {
            let n = timeout(PATIENCE, peer.recv(&mut buf)).await??;
            assert_eq!(&buf[..n], want);
        }
        link.set_loss(1.0);
        send(b"lost", None)?;
        link.set_loss(0.0);
        link.outage_now(Duration::from_secs(60));
        send(b"dark", None)?;
        let up = link.stats().up;
        assert_eq!((up.sent_datagrams, up.sent_bytes), (5, 14));
        assert_eq!(
            (up.dropped_loss, up.dropped_outage, up.in_flight),
            (1, 1, 0)
        );
        assert_eq!((up.delivered_datagrams, up.delivered_bytes), (3, 6));
        Ok(())
    }

    /// The fates in one lane of 2,000 datagrams of 1,200 bytes, 10 ms apart, from `t0`.
    fn fates(config: LinkConfig, seed: u64, t0: Instant) -> Vec<Result<Instant, Cause>> {
        let (rules, mut lane) = (Rules { config, t0 }, Lane::new(seed, t0));
        (0..2_000)
            .map(|i| lane.judge(t0 + ms(10 * i), 1_200, &rules))
            .collect()
    }

    #[test]
    fn same_seed_same_fates() {
        let config = LinkConfig::clean()
            .with_loss(0.3)
            .with_delay(ms(300), ms(50));
        let t0 = Instant::now();
        let a = fates(config.clone(), 1, t0);
        assert_eq!(
            a,
            fates(config.clone(), 1, t0),
            "same seed, same losses and delays"
        );
        assert_ne!(a, fates(config, 2, t0));
        let lost = a.iter().filter(|f| **f == Err(Cause::Loss)).count();
        assert!((500..700).contains(&lost), "{lost} of 2000 lost at 30 %");
    }

    #[test]
    fn rate_queue_jitter_and_outage_model() {
        // At 64 kbit/s, 1,200 + 28 bytes hold the link 153.5 ms: offered at once, they queue.
        let t0 = Instant::now();
        let (rules, mut lane) = (
            Rules {
                config: LinkConfig::two_g(),
                t0,
            },
            Lane::new(3, t0),
        );
        let fates: Vec<_> = (0..60).map(|_| lane.judge(t0, 1_200, &rules)).collect();
        let kept: Vec<Instant> = fates.iter().filter_map(|f| f.ok()).collect();
        // 64 KiB of buffer holds 53 of them; the rest are dropped at the tail.
        assert_eq!(kept.len(), 53);
        assert!(fates[53..].iter().all(|f| *f == Err(Cause::Queue)));
        assert!(kept.windows(2).all(|w| w[0] <= w[1]), "jitter reordered");
        // The last one: 53 × 153.5 ms on the air, then 300 ± 50 ms.
        let last = kept[52].duration_since(t0);
        assert!(last > ms(8_135 + 250) && last < ms(8_135 + 351), "{last:?}");
        // An outage drops what enters during it, and what it catches on the link.
        let config = LinkConfig::clean()
            .with_delay(ms(100), Duration::ZERO)
            .with_outage(ms(50), ms(10));
        let (rules, mut lane) = (Rules { config, t0 }, Lane::new(3, t0));
        let entering = |at: Duration| {
            let mut d = Datagram::new("127.0.0.1:1".parse().expect("addr"), None, None, &[0; 100]);
            d.entered = t0 + at;
            d
        };
        assert!(
            !lane.offer(entering(ms(55)), &rules),
            "entered during the outage"
        );
        assert!(lane.offer(entering(ms(0)), &rules), "entered before it");
        assert!(matches!(lane.release(t0 + ms(100), &rules), Err(None)));
        let s = lane.stats();
        assert_eq!((s.sent_datagrams, s.dropped_outage, s.in_flight), (2, 2, 0));
    }
}
