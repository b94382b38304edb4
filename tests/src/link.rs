//! An impaired link inside the process: real QUIC over a seeded 2G-like UDP link, no tools.
//!
//! Our users sync over 2G (64 kbit/s, ~300 ms one way, 20 % loss, outages of 6–20 s), and
//! `tc netem` is not available here. `linkem.py` (docs in `/work/shared/tools/linkem.md`)
//! does the job between processes; this module does the same inside a test or benchmark,
//! deterministically, with counters a test can assert on and events a test can trigger.
//!
//! [`ImpairedSocket`] wraps quinn's stock tokio UDP socket and is given to the *client*
//! endpoint (`Endpoint::new_with_abstract_socket`), so it impairs both directions itself:
//! outgoing datagrams in `try_send` (a background task releases them onto the real socket
//! when due), incoming ones in `poll_recv` (buffered, handed to quinn when due, with a timer).
//!
//! The model mirrors linkem's, per direction ("up" = towards the server, "down" = towards
//! the client), for every datagram as it enters the link at time `t`:
//! 1. two draws from the direction's own seeded SplitMix64 stream, always (loss, jitter),
//!    so the same sequence of datagrams meets the same dice whatever else happens;
//! 2. an outage in force at `t`, or the downlink blackhole, drops it;
//! 3. with a rate, a drop-tail buffer of `queue_bytes` (the bytes not yet serialised,
//!    including this one) drops it when full; otherwise it occupies the bottleneck for
//!    `(len + 28) * 8 / rate` seconds (28 = IPv4 + UDP headers) after those before it,
//!    computed in virtual time, not slept;
//! 4. the loss roll, after serialisation (a lost datagram has used its airtime);
//! 5. it is due at finish + delay + U(−jitter, +jitter), floored at the previous due time,
//!    so jitter never reorders;
//! 6. when due, it is dropped if an outage overlapped its time on the link (this catches
//!    [`LinkHandle::outage_now`] and the blackhole for datagrams already in the pipe).
//!
//! Unlike linkem there is no reordering and one rate for both directions. GSO and GRO are
//! off towards quinn (one datagram per transmit and per receive), so every datagram is
//! judged and counted on its own; a GRO batch from the real socket is split first.
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

/// Bytes added to every datagram for rate accounting: IPv4 + UDP headers, as linkem counts.
pub const OVERHEAD_BYTES: u64 = 28;
/// Spans (airtime, delay) are capped at a day, so instant arithmetic can never overflow.
const MAX_SPAN: Duration = Duration::from_secs(86_400);
/// Receive buffers for the real socket: each holds a whole GRO batch (at most 64 KiB).
const SCRATCH_BUFS: usize = 4;
const SCRATCH_LEN: usize = 64 * 1024;

/// What the link does to datagrams; the same in both directions.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Bottleneck rate each way in bits per second; `None` (or 0) is unlimited.
    pub rate_bps: Option<u64>,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Each datagram's delay is `delay` ± a uniform draw up to this.
    pub jitter: Duration,
    /// Probability (0..1) that a datagram is lost, each direction.
    pub loss: f64,
    /// `(start, length)`, start timed from the socket's creation: nothing passes either way.
    pub outages: Vec<(Duration, Duration)>,
    /// Drop-tail buffer at the bottleneck each way, in bytes; only applies with a rate.
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
    /// No impairment at all: a relay that only counts.
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

    /// 2G/EDGE: 64 kbit/s each way, 300 ± 50 ms one way, no loss (add it with [`Self::with_loss`]).
    pub fn two_g() -> Self {
        Self::clean()
            .with_rate(64_000)
            .with_delay(Duration::from_millis(300), Duration::from_millis(50))
    }

    pub fn with_rate(mut self, bps: u64) -> Self {
        self.rate_bps = Some(bps);
        self
    }

    pub fn with_delay(mut self, delay: Duration, jitter: Duration) -> Self {
        self.delay = delay;
        self.jitter = jitter;
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

/// Counters of one direction. `sent` is what entered the link (offered by quinn upwards, by
/// the peer downwards); once the link is quiet, sent = delivered + all drops + `in_flight`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    pub sent_datagrams: u64,
    pub sent_bytes: u64,
    pub delivered_datagrams: u64,
    pub delivered_bytes: u64,
    pub dropped_loss: u64,
    pub dropped_outage: u64,
    pub dropped_queue: u64,
    /// Dropped by [`LinkHandle::blackhole_downlink`] (downlink only).
    pub dropped_blackhole: u64,
    /// The real socket refused it (uplink only).
    pub dropped_error: u64,
    /// Datagrams on the link now, not yet due.
    pub in_flight: u64,
}

impl DirectionStats {
    /// All datagrams dropped, whatever the cause.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss
            + self.dropped_outage
            + self.dropped_queue
            + self.dropped_blackhole
            + self.dropped_error
    }

    fn count(&mut self, cause: Cause) {
        match cause {
            Cause::Loss => self.dropped_loss += 1,
            Cause::Outage => self.dropped_outage += 1,
            Cause::Queue => self.dropped_queue += 1,
            Cause::Blackhole => self.dropped_blackhole += 1,
        }
    }
}

/// Counters of both directions; bytes are UDP payload, as quinn's `udp_tx` and `udp_rx` count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Client to server.
    pub up: DirectionStats,
    /// Server to client.
    pub down: DirectionStats,
}

/// SplitMix64: tiny, seedable, good enough to roll dice for a link.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    Loss,
    Outage,
    Queue,
    Blackhole,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Due(Instant),
    Drop(Cause),
}

/// One datagram on the link. `addr` is the destination upwards, the source downwards.
struct Datagram {
    addr: SocketAddr,
    local_ip: Option<IpAddr>,
    ecn: Option<EcnCodepoint>,
    bytes: Vec<u8>,
    entered: Instant,
    due: Instant,
}

/// The link's rules as they stand (loss and outages change at run time).
struct Rules {
    config: LinkConfig,
    t0: Instant,
    blackhole_down: bool,
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
    /// When the bottleneck has finished serialising everything it accepted.
    free_at: Instant,
    last_due: Instant,
    queue: VecDeque<Datagram>,
    stats: DirectionStats,
}

impl Lane {
    fn new(seed: u64, now: Instant) -> Self {
        Self {
            rng: SplitMix64(seed),
            free_at: now,
            last_due: now,
            queue: VecDeque::new(),
            stats: DirectionStats::default(),
        }
    }

    /// Decides the fate of a datagram of `len` bytes entering the link at `now`.
    fn judge(&mut self, now: Instant, len: usize, rules: &Rules, blocked: bool) -> Fate {
        let cfg = &rules.config;
        let (loss_roll, jitter_roll) = (self.rng.unit(), self.rng.unit());
        if rules.outage_between(now, now) {
            return Fate::Drop(Cause::Outage);
        }
        if blocked {
            return Fate::Drop(Cause::Blackhole);
        }
        let start = self.free_at.max(now);
        let finish = match cfg.rate_bps.filter(|&bps| bps > 0) {
            None => now,
            Some(bps) => {
                let bytes = (len as u64 + OVERHEAD_BYTES) as f64;
                let backlog = start.duration_since(now).as_secs_f64() * bps as f64 / 8.0;
                if backlog + bytes > cfg.queue_bytes as f64 {
                    return Fate::Drop(Cause::Queue);
                }
                start + span(bytes * 8.0 / bps as f64)
            }
        };
        self.free_at = finish;
        if loss_roll < cfg.loss {
            return Fate::Drop(Cause::Loss);
        }
        let jitter = (2.0 * jitter_roll - 1.0) * cfg.jitter.min(MAX_SPAN).as_secs_f64();
        let due =
            (finish + span(cfg.delay.min(MAX_SPAN).as_secs_f64() + jitter)).max(self.last_due);
        self.last_due = due;
        Fate::Due(due)
    }

    /// Puts a datagram on the link, or drops it; true if it is now on the link.
    fn offer(&mut self, mut d: Datagram, rules: &Rules, blocked: bool) -> bool {
        self.stats.sent_datagrams += 1;
        self.stats.sent_bytes += d.bytes.len() as u64;
        match self.judge(d.entered, d.bytes.len(), rules, blocked) {
            Fate::Due(due) => {
                d.due = due;
                self.queue.push_back(d);
                true
            }
            Fate::Drop(cause) => {
                self.stats.count(cause);
                false
            }
        }
    }

    /// The next datagram due by `now` that survived its time on the link, or when the next
    /// one is due (`None`: the link is empty).
    fn release(
        &mut self,
        now: Instant,
        rules: &Rules,
        blocked: bool,
    ) -> Result<Datagram, Option<Instant>> {
        while let Some(d) = self.queue.front() {
            if d.due > now {
                return Err(Some(d.due));
            }
            let (entered, due) = (d.entered, d.due);
            let Some(d) = self.queue.pop_front() else {
                break;
            };
            if rules.outage_between(entered, due) {
                self.stats.count(Cause::Outage);
            } else if blocked {
                self.stats.count(Cause::Blackhole);
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

/// A span of `secs` seconds, zero if negative, at most [`MAX_SPAN`].
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
}

impl State {
    fn new(config: LinkConfig, now: Instant) -> Self {
        let (up, down) = (config.seed, config.seed ^ 0xD1B5_4A32_D192_ED03);
        Self {
            up: Lane::new(up, now),
            down: Lane::new(down, now),
            rules: Rules {
                config,
                t0: now,
                blackhole_down: false,
            },
            timer: None,
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Tells the uplink pump that a datagram joined the link.
    uplink: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every await point, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A UDP socket behind an impaired link, for a quinn client endpoint.
pub struct ImpairedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    shared: Arc<Shared>,
    scratch: Mutex<Vec<Vec<u8>>>,
    pump: tokio::task::AbortHandle,
}

impl ImpairedSocket {
    /// Binds a real UDP socket at `addr` behind a link with `config`; the link's clock (for
    /// outages) starts now. Must be called inside a tokio runtime: the socket is registered
    /// with it and a task is spawned there to release outgoing datagrams.
    pub fn bind(addr: SocketAddr, config: LinkConfig) -> io::Result<Arc<ImpairedSocket>> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "ImpairedSocket::bind needs a tokio runtime",
            ));
        }
        let inner = TokioRuntime.wrap_udp_socket(std::net::UdpSocket::bind(addr)?)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(config, Instant::now())),
            uplink: Notify::new(),
        });
        let pump = tokio::spawn(pump_uplink(shared.clone(), inner.clone())).abort_handle();
        Ok(Arc::new(ImpairedSocket {
            inner,
            shared,
            scratch: Mutex::new(vec![vec![0; SCRATCH_LEN]; SCRATCH_BUFS]),
            pump,
        }))
    }

    /// A handle to steer the link and read its counters; it outlives the socket harmlessly.
    pub fn handle(&self) -> LinkHandle {
        LinkHandle {
            shared: self.shared.clone(),
        }
    }

    /// Takes what the real socket has, judging each datagram as it arrives.
    fn drain_real_socket(&self, cx: &mut Context, state: &mut State) -> Poll<io::Error> {
        let mut scratch = self
            .scratch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut metas = [RecvMeta::default(); SCRATCH_BUFS];
        loop {
            let mut bufs: Vec<IoSliceMut<'_>> =
                scratch.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let n = match self.inner.poll_recv(cx, &mut bufs, &mut metas) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(e),
                Poll::Ready(Ok(n)) => n,
            };
            let now = Instant::now();
            for (meta, buf) in metas.iter().zip(scratch.iter()).take(n) {
                let stride = if meta.stride == 0 {
                    meta.len
                } else {
                    meta.stride
                };
                for bytes in buf[..meta.len.min(buf.len())].chunks(stride.max(1)) {
                    let d = Datagram {
                        addr: meta.addr,
                        local_ip: meta.dst_ip,
                        ecn: meta.ecn,
                        bytes: bytes.to_vec(),
                        entered: now,
                        due: now,
                    };
                    state
                        .down
                        .offer(d, &state.rules, state.rules.blackhole_down);
                }
            }
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
        // No lock here: Debug may be called while the link's state is held.
        f.debug_struct("ImpairedSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for ImpairedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    /// Never blocks: the datagram joins the link (or is dropped, as on a real link).
    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let now = Instant::now();
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        let mut queued = false;
        {
            let mut state = self.shared.lock();
            let state = &mut *state;
            for bytes in transmit.contents.chunks(size) {
                let d = Datagram {
                    addr: transmit.destination,
                    local_ip: transmit.src_ip,
                    ecn: transmit.ecn,
                    bytes: bytes.to_vec(),
                    entered: now,
                    due: now,
                };
                queued |= state.up.offer(d, &state.rules, false);
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
        let state = &mut *state;
        if let Poll::Ready(e) = self.drain_real_socket(cx, state) {
            return Poll::Ready(Err(e));
        }
        let now = Instant::now();
        let mut n = 0;
        let mut next = None;
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()) {
            match state
                .down
                .release(now, &state.rules, state.rules.blackhole_down)
            {
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
                    state.down.delivered(len);
                    n += 1;
                }
                Err(at) => {
                    next = at;
                    break;
                }
            }
        }
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        if let Some(at) = next {
            let timer = state.timer.get_or_insert_with(|| Box::pin(sleep_until(at)));
            timer.as_mut().reset(at);
            if timer.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// `try_send` never says `WouldBlock`, so the socket is always writable to quinn.
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
            state.up.release(Instant::now(), &state.rules, false)
        };
        match next {
            Ok(d) => {
                let sent = send_real(&*inner, &mut writable, &d).await;
                let mut state = shared.lock();
                match sent {
                    Ok(()) => state.up.delivered(d.bytes.len()),
                    Err(_) => state.up.stats.dropped_error += 1,
                }
            }
            Err(Some(at)) => {
                tokio::select! {
                    () = sleep_until(at) => {}
                    () = shared.uplink.notified() => {}
                }
            }
            Err(None) => shared.uplink.notified().await,
        }
    }
}

async fn send_real(
    inner: &dyn AsyncUdpSocket,
    writable: &mut Pin<Box<dyn UdpPoller>>,
    d: &Datagram,
) -> io::Result<()> {
    let transmit = Transmit {
        destination: d.addr,
        ecn: d.ecn,
        contents: &d.bytes,
        segment_size: None,
        src_ip: d.local_ip,
    };
    loop {
        match inner.try_send(&transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                poll_fn(|cx| writable.as_mut().poll_writable(cx)).await?;
            }
            result => return result,
        }
    }
}

/// Steers a link while it runs and reads its counters; clones are cheap and share the link.
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

    /// Changes the loss probability of both directions from the next datagram on.
    pub fn set_loss(&self, loss: f64) {
        self.shared.lock().rules.config.loss = loss;
    }

    /// While on, drops everything towards the client (the uplink still flows): a request
    /// gets through and its reply is lost.
    pub fn blackhole_downlink(&self, on: bool) {
        self.shared.lock().rules.blackhole_down = on;
    }

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

    type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

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

    fn echo_server() -> Result<EchoServer> {
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
                    if let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        if let Ok(n) = tokio::io::copy(&mut recv, &mut send).await {
                            let _ = send.finish();
                            let _ = tx.send(n);
                        }
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
    fn client(server: &EchoServer, config: LinkConfig) -> Result<(Endpoint, LinkHandle)> {
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

    async fn connect(endpoint: &Endpoint, server: &EchoServer) -> Result<Connection> {
        Ok(endpoint
            .connect(server.endpoint.local_addr()?, "localhost")?
            .await?)
    }

    /// Sends `data` on a new stream and reads the echo, both at once.
    async fn echo(conn: &Connection, data: &[u8]) -> Result<Vec<u8>> {
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
    ) -> Result<(Duration, Connection, LinkHandle)> {
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
    async fn clean_link_counts_what_quinn_counts() -> Result {
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
    async fn delay_costs_two_round_trips() -> Result {
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
    async fn rate_limits_throughput() -> Result {
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
    async fn quic_recovers_from_heavy_loss() -> Result {
        let config = LinkConfig::clean().with_loss(0.3).with_seed(7);
        let (_, _, link) = connect_and_echo(config, 30_000).await?;
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
    async fn transfer_survives_an_outage() -> Result {
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
    async fn blackholed_reply_arrives_once_cleared() -> Result {
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

    /// The dice of one lane for 2,000 datagrams of 1,200 bytes, 10 ms apart.
    fn fates(config: LinkConfig, lane_seed: u64) -> Vec<Fate> {
        let t0 = Instant::now();
        let rules = Rules {
            config,
            t0,
            blackhole_down: false,
        };
        let mut lane = Lane::new(lane_seed, t0);
        (0..2_000)
            .map(|i| lane.judge(t0 + ms(10 * i), 1_200, &rules, false))
            .collect()
    }

    #[test]
    fn same_seed_same_fates() {
        let config = LinkConfig::clean()
            .with_loss(0.3)
            .with_delay(ms(300), ms(50));
        let (a, b, c) = (
            fates(config.clone(), 1),
            fates(config.clone(), 1),
            fates(config, 2),
        );
        // The decisions, as offsets from a shared origin, are the same for the same seed.
        let offsets = |f: &[Fate]| -> Vec<Option<Duration>> {
            let t0 = f.iter().find_map(|x| match x {
                Fate::Due(t) => Some(*t),
                _ => None,
            });
            f.iter()
                .map(|x| match (x, t0) {
                    (Fate::Due(t), Some(t0)) => Some(t.duration_since(t0)),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(offsets(&a), offsets(&b));
        assert_ne!(offsets(&a), offsets(&c));
        let lost = a.iter().filter(|f| **f == Fate::Drop(Cause::Loss)).count();
        assert!((500..700).contains(&lost), "{lost} of 2000 lost at 30 %");
        // Each direction has its own stream.
        let state = State::new(LinkConfig::clean().with_seed(5), Instant::now());
        assert_ne!(state.up.rng.0, state.down.rng.0);
    }

    #[test]
    fn rate_queue_and_jitter_model() {
        // 64 kbit/s: 1,200 + 28 bytes take 153.5 ms; offered all at once, they queue.
        let t0 = Instant::now();
        let rules = Rules {
            config: LinkConfig::two_g(),
            t0,
            blackhole_down: false,
        };
        let mut lane = Lane::new(3, t0);
        let dues: Vec<Fate> = (0..60)
            .map(|_| lane.judge(t0, 1_200, &rules, false))
            .collect();
        let kept: Vec<Instant> = dues
            .iter()
            .filter_map(|f| match f {
                Fate::Due(t) => Some(*t),
                _ => None,
            })
            .collect();
        // 64 KiB of buffer holds 53 such datagrams; the rest are dropped at the tail.
        assert_eq!(kept.len(), 53);
        assert!(dues[53..].iter().all(|f| *f == Fate::Drop(Cause::Queue)));
        assert!(kept.windows(2).all(|w| w[0] <= w[1]), "jitter reordered");
        let last = kept[52].duration_since(t0);
        // 53 × 153.5 ms on the air + 300 ± 50 ms.
        assert!(last > ms(8_135 + 250) && last < ms(8_135 + 351), "{last:?}");
        // Outages drop at entry, and in the pipe when due.
        let rules = Rules {
            config: LinkConfig::clean()
                .with_delay(ms(100), Duration::ZERO)
                .with_outage(ms(50), ms(10)),
            t0,
            blackhole_down: false,
        };
        let mut lane = Lane::new(3, t0);
        assert_eq!(
            lane.judge(t0 + ms(55), 100, &rules, false),
            Fate::Drop(Cause::Outage)
        );
        let d = Datagram {
            addr: "127.0.0.1:1".parse().expect("addr"),
            local_ip: None,
            ecn: None,
            bytes: vec![0; 100],
            entered: t0,
            due: t0,
        };
        assert!(lane.offer(d, &rules, false));
        assert!(matches!(
            lane.release(t0 + ms(100), &rules, false),
            Err(None)
        ));
        assert_eq!(lane.stats().dropped_outage, 1);
    }
}
