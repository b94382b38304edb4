//! Hostile clients for the admission tests and the `abuse` benchmark: QUIC connections with
//! self-signed certificates nobody enrolled, from a chosen loopback address, that hold their
//! connection open or send junk.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use fieldsync_device::tls::{self, KeyAndCert};
use fieldsync_proto::protocol::{self, LENGTH_PREFIX, SERVER_NAME};

/// A client endpoint bound to `local` (any 127.x.y.z works on Linux loopback), so tests can
/// play several source addresses.
pub fn endpoint(local: IpAddr) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::client(SocketAddr::new(local, 0))
}

/// Connects to `server` with a fresh self-signed certificate (a stranger), pinning the
/// server's `fingerprint`. The connection pings every second, so it never idles out on its
/// own: only the server can end it.
pub async fn stranger(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    fingerprint: [u8; 32],
) -> Result<quinn::Connection, String> {
    let identity = KeyAndCert::generate("stranger").map_err(|e| e.to_string())?;
    connect_as(endpoint, server, fingerprint, &identity).await
}

/// Connects to `server` as `identity`, pinging every second.
pub async fn connect_as(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    fingerprint: [u8; 32],
    identity: &KeyAndCert,
) -> Result<quinn::Connection, String> {
    let tls = tls::client_config(identity, fingerprint).map_err(|e| e.to_string())?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(1)));
    config.transport_config(Arc::new(transport));
    endpoint
        .connect_with(config, server, SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())
}

/// A frame announcing a deflated body that inflates to `inflated` zero bytes (a deflate bomb:
/// 64 MiB packs into ~64 KiB).
pub fn deflate_bomb(inflated: usize) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    let mut left = inflated;
    while left > 0 {
        let n = left.min(zeros.len());
        if encoder.write_all(&zeros[..n]).is_err() {
            break;
        }
        left -= n;
    }
    let deflated = encoder.finish().unwrap_or_default();
    frame(1, &deflated)
}

/// A frame of `len` random-looking bytes that is not valid protocol.
pub fn junk(len: usize) -> Vec<u8> {
    let body: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
    frame(0, &body)
}

/// A frame with encoding byte `encoding` and `payload`, as the wire carries it.
pub fn frame(encoding: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(LENGTH_PREFIX + 1 + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.push(encoding);
    out.extend_from_slice(payload);
    out
}

/// What became of a request sent on a connection.
#[derive(Debug)]
pub enum Answer {
    /// The server replied (a message decoded from its frame).
    Reply(protocol::ServerMsg),
    /// The connection was closed with this application code and reason.
    Closed(u32, String),
    /// Anything else: a reset stream, a transport error, a timeout.
    Other(String),
}

/// Sends `frame` on a new stream of `conn` and reads the reply, within `timeout`.
pub async fn send(conn: &quinn::Connection, frame: &[u8], timeout: Duration) -> Answer {
    let exchange = async {
        let (mut tx, mut rx) = conn.open_bi().await.map_err(closed_or_other)?;
        tx.write_all(frame)
            .await
            .map_err(|e| Answer::Other(e.to_string()))?;
        let _ = tx.finish();
        let bytes = rx.read_to_end(64 << 20).await.map_err(|e| match e {
            quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(c)) => closed_or_other(c),
            other => Answer::Other(other.to_string()),
        })?;
        protocol::decode_frame(&bytes, &protocol::Limits::default())
            .map(Answer::Reply)
            .map_err(|e| Answer::Other(e.to_string()))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) | Ok(Err(answer)) => answer,
        Err(_) => Answer::Other("timed out".into()),
    }
}

/// How a connection ended, once it has: the application close code and reason, if it was
/// closed by the server.
pub fn close_code(error: &quinn::ConnectionError) -> Option<(u32, String)> {
    match error {
        quinn::ConnectionError::ApplicationClosed(c) => Some((
            u32::try_from(c.error_code.into_inner()).unwrap_or(u32::MAX),
            String::from_utf8_lossy(&c.reason).into_owned(),
        )),
        _ => None,
    }
}

fn closed_or_other(e: quinn::ConnectionError) -> Answer {
    match close_code(&e) {
        Some((code, reason)) => Answer::Closed(code, reason),
        None => Answer::Other(e.to_string()),
    }
}
