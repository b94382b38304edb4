//! The QUIC side shared by the device and the server: transport settings and frame reading.
//!
//! Both ends read a frame the same way: the length prefix is checked against the cap before
//! the body is allocated, then the body is decoded (inflated through a bounded counter).

use std::time::Duration;

use fieldsync_proto::protocol::{self, LENGTH_PREFIX, Limits, ProtocolError};
use serde::Deserialize;

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended or broke before the `expected` bytes of the prefix or body arrived.
    #[error("reading {expected} bytes of the frame: {source}")]
    Read {
        /// Bytes the prefix or the body should have had.
        expected: usize,
        /// What the stream did instead.
        source: quinn::ReadExactError,
    },
    /// The frame arrived but is too large or not valid protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Reads one frame from `recv` and decodes its message.
pub async fn read_frame<T: for<'de> Deserialize<'de>>(
    recv: &mut quinn::RecvStream,
    limits: &Limits,
) -> Result<T, FrameError> {
    let body = read_body(recv, limits.max_frame_bytes).await?;
    Ok(protocol::decode_body(&body, limits)?)
}

/// Reads one frame's body from `recv`, undecoded; the announced length is checked against
/// `max_frame_bytes` before anything is allocated. Lets a caller decide where (on which
/// thread) and how (which encodings it accepts) the body is decoded.
pub async fn read_body(
    recv: &mut quinn::RecvStream,
    max_frame_bytes: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    read_exact(recv, &mut prefix).await?;
    let mut body = vec![0u8; protocol::body_len(prefix, max_frame_bytes)?];
    read_exact(recv, &mut body).await?;
    Ok(body)
}

async fn read_exact(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> Result<(), FrameError> {
    recv.read_exact(buf)
        .await
        .map_err(|source| FrameError::Read {
            expected: buf.len(),
            source,
        })
}

/// How long a connection may go silent before it is given up: longer than the outages of a
/// 2G link (a 20 s gap must not end a round that can still finish on the same connection), and
/// long enough that a handshake whose last flight was lost still completes when it is sent
/// again. A dead server is still noticed well within a round's deadline.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a phone pings while a round waits (say on a large commit): often enough for NAT
/// bindings and the idle timeout, rarely enough not to cost the link much.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The first guess of the round-trip time: a 2G link's is ~600 ms, and quinn's default
/// (333 ms) would fire the first probe timeout before a slow server flight can arrive,
/// sending a padded Initial again for nothing.
pub const INITIAL_RTT: Duration = Duration::from_millis(600);

/// Transport settings of a phone's connection.
///
/// Path-MTU discovery is off: its probes are padded datagrams sent on every new connection
/// (a third or more of all bytes of a small sync on 2G), and a phone's round moves a few
/// kilobytes that the 1,200-byte minimum carries as well.
pub fn phone_transport(max_frame_bytes: usize) -> quinn::TransportConfig {
    let mut t = common(max_frame_bytes);
    t.keep_alive_interval(Some(KEEP_ALIVE))
        .initial_rtt(INITIAL_RTT);
    t
}

/// Transport settings of the server's connections: no keep-alives of its own (the phone
/// decides how long a connection is worth keeping, and an idle stranger is not kept alive by
/// the server) and no path-MTU probes towards phones either.
pub fn server_transport(max_frame_bytes: usize) -> quinn::TransportConfig {
    let mut t = common(max_frame_bytes);
    t.initial_rtt(INITIAL_RTT);
    t
}

/// Limits both ends share: few streams, bounded flow-control windows (quinn's
/// connection-wide window is unlimited by default), the idle timeout, no MTU probing.
fn common(max_frame_bytes: usize) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    let window = quinn::VarInt::from_u32(u32::try_from(max_frame_bytes).unwrap_or(u32::MAX));
    let idle = quinn::IdleTimeout::try_from(IDLE_TIMEOUT)
        .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::from_u32(30_000)));
    t.max_concurrent_bidi_streams(4u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(window)
        .receive_window(window)
        .max_idle_timeout(Some(idle))
        .mtu_discovery_config(None);
    t
}
