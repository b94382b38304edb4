//! The QUIC side shared by the device and the server: transport settings and frame reading.
//!
//! Both ends read a frame the same way: the length prefix is checked against the cap before
//! the body is allocated, then the body is decoded (inflated through a bounded counter).

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
    let mut prefix = [0u8; LENGTH_PREFIX];
    read_exact(recv, &mut prefix).await?;
    let mut body = vec![0u8; protocol::frame_len(prefix, limits)?];
    read_exact(recv, &mut body).await?;
    Ok(protocol::decode_body(&body, limits)?)
}

async fn read_exact(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> Result<(), FrameError> {
    recv.read_exact(buf)
        .await
        .map_err(|source| FrameError::Read {
            expected: buf.len(),
            source,
        })
}

/// QUIC transport limits shared by both ends: few streams, bounded flow-control windows
/// (quinn's connection-wide window is unlimited by default).
pub fn transport_config(max_frame_bytes: usize) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    let window = quinn::VarInt::from_u32(u32::try_from(max_frame_bytes).unwrap_or(u32::MAX));
    t.max_concurrent_bidi_streams(4u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(window)
        .receive_window(window)
        // A dead server is noticed within seconds, not minutes; keep-alives hold the connection
        // open while a slow link or a large commit is under way.
        .keep_alive_interval(Some(std::time::Duration::from_secs(2)))
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            8_000,
        ))));
    t
}
