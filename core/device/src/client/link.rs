//! QUIC connections to the sync server: one connection ([`Connection`]), and a link that
//! outlives its connections ([`Link`]).
//!
//! In the field the signal comes and goes. A [`Link`] reconnects with jittered backoff when a
//! connection is lost and sends the unanswered request again as it was, until the deadline of
//! the round or enrollment it serves; every request of the protocol can be sent twice (a batch
//! keeps its id, the server answers a batch it committed from its record). Answers of the
//! server — refusals, revocation, a certificate that is not the pinned one — end it at once:
//! trying again would get the same answer. A close for the server's own trouble
//! ([`close::SERVER_ERROR`], or a code this build does not know) is tried again like a lost
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldsync_proto::protocol::{
    self, ClientMsg, ErrorClass, ErrorCode, Limits, SERVER_NAME, ServerMsg, close,
};
use fieldsync_proto::sync::Backoff;

use super::ClientError;
use crate::tls::{self, KeyAndCert};
use crate::transport::{self, FrameError};

/// How long closing a connection may wait for the close to be sent.
const CLOSE_GRACE: Duration = Duration::from_millis(50);

/// Where and how to connect: the server, the pinned certificate, the device's identity, and
/// optionally a socket of the caller's (tests and benchmarks pass an impaired link).
#[derive(Clone)]
pub struct Dial {
    /// `HOST:PORT` of the sync server.
    pub server: String,
    /// SHA-256 of the server certificate learned at enrollment.
    pub fingerprint: [u8; 32],
    /// The device's key and certificate.
    pub identity: KeyAndCert,
    /// A UDP socket to use instead of a new one.
    pub socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
    /// How long a connection may go silent before it is given up.
    pub idle_timeout: Duration,
}

/// One QUIC connection to a sync server.
pub struct Connection {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    limits: Limits,
}

impl Connection {
    /// Connects to `server` (HOST:PORT), trusting only the certificate with `fingerprint`.
    pub async fn connect(
        server: &str,
        fingerprint: [u8; 32],
        identity: &KeyAndCert,
    ) -> Result<Connection, ClientError> {
        let dial = Dial {
            server: server.to_string(),
            fingerprint,
            identity: identity.clone(),
            socket: None,
            idle_timeout: transport::IDLE_TIMEOUT,
        };
        let (endpoint, addr) = endpoint(&dial).await?;
        let conn = connect_on(&endpoint, addr, &dial.server).await?;
        Ok(Connection {
            endpoint,
            conn,
            limits: Limits::default(),
        })
    }

    /// Sends one request on its own stream and reads the one reply.
    pub async fn exchange(&self, msg: &ClientMsg) -> Result<ServerMsg, ClientError> {
        exchange_on(&self.conn, msg, &self.limits, &mut 0).await
    }

    /// Bytes sent and received on the wire (UDP payloads, all overheads included).
    pub fn wire_bytes(&self) -> (u64, u64) {
        let s = self.conn.stats();
        (s.udp_tx.bytes, s.udp_rx.bytes)
    }

    /// Closes the connection, giving the close a moment to reach the server.
    ///
    /// Waiting for the whole draining period (three probe timeouts) would hold the caller for
    /// seconds on a loaded link after everything is already durable; a close that is lost costs
    /// the server only its idle timeout.
    pub async fn close(self) {
        close_endpoint(&self.endpoint, Some(&self.conn)).await;
    }
}

/// A connection to the server that is made again whenever it is lost, within a deadline.
pub struct Link {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    server: String,
    conn: Option<quinn::Connection>,
    limits: Limits,
    started: Instant,
    backoff: Backoff,
    connections: usize,
    /// How long the server may stay silent during an exchange before the connection is
    /// given up (see [`unless_stalled`]).
    stall: Duration,
    /// Times the last request was written out whole (more than once if it was sent again).
    sends: usize,
    /// Wire bytes of the connections already lost.
    spent: (u64, u64),
}

impl Link {
    /// Prepares a link to `dial.server`; the first connection is made by the first request.
    /// Resolving the name is retried like a connection, within `deadline`.
    pub async fn open(dial: &Dial, deadline: Duration) -> Result<Link, ClientError> {
        let started = Instant::now();
        let mut backoff = Backoff::field(deadline);
        let (endpoint, addr) = loop {
            match endpoint(dial).await {
                Ok(found) => break found,
                Err(e) => wait_or_give_up(&mut backoff, started, e).await?,
            }
        };
        Ok(Link {
            endpoint,
            addr,
            server: dial.server.clone(),
            conn: None,
            limits: Limits::default(),
            started,
            backoff,
            connections: 0,
            stall: dial.idle_timeout * 2 / 3,
            sends: 0,
            spent: (0, 0),
        })
    }

    /// Sends `msg` and returns the reply, reconnecting and sending it again while the link
    /// is down and the deadline allows.
    pub async fn exchange(&mut self, msg: &ClientMsg) -> Result<ServerMsg, ClientError> {
        self.sends = 0;
        loop {
            let result = match self.connected().await {
                Ok(conn) => {
                    let exchange = exchange_on(&conn, msg, &self.limits, &mut self.sends);
                    unless_stalled(&conn, self.stall, exchange).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(reply) => return Ok(reply),
                Err(e) if e.is_retryable() => {
                    self.lose_connection();
                    tracing::info!(error = %e, "link down; trying again");
                    wait_or_give_up(&mut self.backoff, self.started, e).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Times the last request was written out whole: 1, or more if a lost connection made
    /// the link send it again.
    pub fn sends(&self) -> usize {
        self.sends
    }

    /// Connection attempts so far (the first, and each reconnect, failed ones included).
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// Bytes sent and received on the wire over every connection of the link.
    pub fn wire_bytes(&self) -> (u64, u64) {
        let (tx, rx) = self.conn.as_ref().map_or((0, 0), conn_bytes);
        (self.spent.0 + tx, self.spent.1 + rx)
    }

    /// Closes the link, giving the close a moment to reach the server.
    pub async fn close(self) {
        close_endpoint(&self.endpoint, self.conn.as_ref()).await;
    }

    async fn connected(&mut self) -> Result<quinn::Connection, ClientError> {
        if let Some(conn) = &self.conn {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
            self.lose_connection();
        }
        // A handshake whose flights keep getting lost backs its probes off further and further;
        // past the stall limit a new attempt (quick first probes again) beats waiting.
        let left = self
            .backoff
            .remaining(self.started.elapsed())
            .min(self.stall);
        self.connections += 1;
        let conn =
            match tokio::time::timeout(left, connect_on(&self.endpoint, self.addr, &self.server))
                .await
            {
                Ok(conn) => conn?,
                Err(_) => {
                    return Err(ClientError::Network(format!(
                        "{}: no handshake within {:.0} s",
                        self.server,
                        left.as_secs_f64()
                    )));
                }
            };
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    fn lose_connection(&mut self) {
        if let Some(conn) = self.conn.take() {
            let (tx, rx) = conn_bytes(&conn);
            self.spent = (self.spent.0 + tx, self.spent.1 + rx);
            conn.close(close::DONE.into(), b"giving up on this connection");
        }
    }
}

/// Runs `work` on `conn` unless nothing at all arrives from the server for `stall`.
///
/// A healthy connection hears from the server at least every keep-alive (its ACKs). Silence
/// that long means a dead path, or a connection the server has already dropped: at 30 % loss a
/// lost handshake flight is retried with doubling probe timeouts until the gap outgrows the
/// server's idle timeout, and the client then waits out its own idle timeout only to be reset.
/// Giving the connection up and making a new one (whose first probes come quickly again) ends
/// that wait; the request is idempotent and simply sent again.
async fn unless_stalled<T>(
    conn: &quinn::Connection,
    stall: Duration,
    work: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::pin!(work);
    let mut heard = conn.stats().udp_rx.bytes;
    let mut quiet_since = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = tick.tick() => {
                let now = conn.stats().udp_rx.bytes;
                if now != heard {
                    heard = now;
                    quiet_since = Instant::now();
                } else if quiet_since.elapsed() >= stall {
                    return Err(ClientError::Network(format!(
                        "nothing heard from the server for {:.0} s",
                        stall.as_secs_f64()
                    )));
                }
            }
        }
    }
}

/// Waits out the next backoff delay, or gives up with `error` once the deadline is too near.
async fn wait_or_give_up(
    backoff: &mut Backoff,
    started: Instant,
    error: ClientError,
) -> Result<(), ClientError> {
    match backoff.next_delay(started.elapsed(), random_unit()) {
        Some(delay) => {
            tokio::time::sleep(delay).await;
            Ok(())
        }
        None => Err(match error {
            ClientError::Network(m) => ClientError::Network(format!(
                "{m} (gave up after {} attempts in {:.0} s; what is not acknowledged stays \
                 pending for the next sync)",
                backoff.failures(),
                started.elapsed().as_secs_f64()
            )),
            other => other,
        }),
    }
}

/// A uniform draw in [0, 1) for backoff jitter.
fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A fresh random id for a round's first batch.
pub(crate) fn random_batch_id() -> u64 {
    random_u64()
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u64::from_le_bytes(bytes)
}

fn conn_bytes(conn: &quinn::Connection) -> (u64, u64) {
    let s = conn.stats();
    (s.udp_tx.bytes, s.udp_rx.bytes)
}

async fn close_endpoint(endpoint: &quinn::Endpoint, conn: Option<&quinn::Connection>) {
    if let Some(conn) = conn {
        conn.close(close::DONE.into(), b"done");
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
}

/// A client endpoint set up for `dial`, and the server's address.
async fn endpoint(dial: &Dial) -> Result<(quinn::Endpoint, SocketAddr), ClientError> {
    let addr = resolve(&dial.server).await?;
    let tls = tls::client_config(&dial.identity, dial.fingerprint)?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Network(format!("QUIC TLS: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let limits = Limits::default();
    let mut transport = transport::phone_transport(limits.max_frame_bytes);
    if let Ok(idle) = quinn::IdleTimeout::try_from(dial.idle_timeout) {
        transport
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(transport::KEEP_ALIVE.min(dial.idle_timeout / 3)));
    }
    config.transport_config(Arc::new(transport));
    let mut endpoint = match &dial.socket {
        Some(socket) => quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            None,
            socket.clone(),
            Arc::new(quinn::TokioRuntime),
        ),
        None => {
            let bind: SocketAddr = if addr.is_ipv6() {
                SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
            } else {
                SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
            };
            quinn::Endpoint::client(bind)
        }
    }
    .map_err(|e| ClientError::Network(format!("cannot open a UDP socket: {e}")))?;
    endpoint.set_default_client_config(config);
    Ok((endpoint, addr))
}

async fn connect_on(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server: &str,
) -> Result<quinn::Connection, ClientError> {
    endpoint
        .connect(addr, SERVER_NAME)
        .map_err(|e| ClientError::Network(format!("cannot connect to {server}: {e}")))?
        .await
        .map_err(|e| connection_error(server, e))
}

/// Sends one request on its own stream of `conn` and reads the one reply; counts in `sends`
/// whether the request was written out whole.
async fn exchange_on(
    conn: &quinn::Connection,
    msg: &ClientMsg,
    limits: &Limits,
    sends: &mut usize,
) -> Result<ServerMsg, ClientError> {
    let frame = protocol::encode_frame(msg)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(lost)?;
    match send.write_all(&frame).await {
        Ok(()) => {
            *sends += 1;
            send.finish()
                .map_err(|e| ClientError::Network(e.to_string()))?
        }
        // The server stops reading a request it refuses (too large, say) but still sends
        // its reason: read it rather than report a bare network error.
        Err(quinn::WriteError::Stopped(_)) => {}
        Err(quinn::WriteError::ConnectionLost(c)) => return Err(lost(c)),
        Err(other) => return Err(ClientError::Network(other.to_string())),
    }
    match transport::read_frame(&mut recv, limits).await {
        Ok(reply) => Ok(reply),
        Err(FrameError::Read {
            source: quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)),
            ..
        }) => Err(lost(c)),
        Err(FrameError::Read { source, .. }) => {
            Err(ClientError::Network(format!("reading the reply: {source}")))
        }
        Err(FrameError::Protocol(e)) => Err(e.into()),
    }
}

fn lost(e: quinn::ConnectionError) -> ClientError {
    connection_error("the server", e)
}

/// Sorts a lost or refused connection by what the device can do about it
/// ([`close::class`]): only `UNAUTHORIZED` is an answer about the device.
fn connection_error(server: &str, e: quinn::ConnectionError) -> ClientError {
    match e {
        quinn::ConnectionError::ApplicationClosed(closed) => {
            let message = String::from_utf8_lossy(&closed.reason).to_string();
            let code = closed.error_code.into_inner();
            match (close::class(code), u32::try_from(code)) {
                (ErrorClass::Unauthorized, _) => ClientError::Refused {
                    code: ErrorCode::Unauthorized,
                    message,
                },
                // A server going down, ending an idle session or out of slots: it will be back.
                (_, Ok(close::SHUTDOWN | close::DONE | close::BUSY)) => {
                    ClientError::Network(format!("{server} closed the connection: {message}"))
                }
                // SERVER_ERROR, or a code this build does not know: the server's trouble.
                _ => ClientError::Unavailable {
                    code: ErrorCode::Internal,
                    message: format!("{server} closed the connection (code {code}): {message}"),
                },
            }
        }
        // A TLS alert: the certificate is not the pinned one (or the server refused the
        // device's). The same server will say the same again.
        quinn::ConnectionError::TransportError(t)
            if (0x100..0x200).contains(&u64::from(t.code)) =>
        {
            ClientError::Certificate(format!("{server}: {t}"))
        }
        quinn::ConnectionError::TransportError(t) => ClientError::Network(format!("{server}: {t}")),
        other => ClientError::Network(format!("{server}: {other}")),
    }
}

async fn resolve(server: &str) -> Result<SocketAddr, ClientError> {
    tokio::net::lookup_host(server)
        .await
        .map_err(|e| ClientError::Network(format!("cannot resolve {server}: {e}")))?
        .next()
        .ok_or_else(|| ClientError::Network(format!("{server} resolves to no address")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldsync_proto::sync::RoundError;

    fn closed(code: u32, reason: &str) -> quinn::ConnectionError {
        quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: quinn::VarInt::from_u32(code),
            reason: reason.as_bytes().to_vec().into(),
        })
    }

    /// The class a device gives an error: what it does about it.
    fn class(e: &ClientError) -> Option<ErrorClass> {
        match e {
            ClientError::Refused { code, .. } => Some(code.class()),
            ClientError::Network(_) | ClientError::Unavailable { .. } => Some(ErrorClass::Retry),
            _ => None,
        }
    }

    /// Every way a connection ends, sorted into what the device does: only UNAUTHORIZED is an
    /// answer about the device; the server's own trouble and unknown codes are tried again.
    #[test]
    fn close_codes_map_to_their_classes() {
        let cases: Vec<(&str, quinn::ConnectionError, Option<ErrorClass>, &str)> = vec![
            (
                "revoked",
                closed(close::UNAUTHORIZED, "this device has been revoked"),
                Some(ErrorClass::Unauthorized),
                "revoked",
            ),
            (
                "device lookup failed",
                closed(close::SERVER_ERROR, "server error"),
                Some(ErrorClass::Retry),
                "server error",
            ),
            (
                "shutting down",
                closed(close::SHUTDOWN, "server shutting down"),
                Some(ErrorClass::Retry),
                "shutting down",
            ),
            (
                "idle session ended",
                closed(close::DONE, "request timed out"),
                Some(ErrorClass::Retry),
                "timed out",
            ),
            (
                "a code this build does not know",
                closed(77, "new reason"),
                Some(ErrorClass::Retry),
                "code 77",
            ),
            (
                "timed out",
                quinn::ConnectionError::TimedOut,
                Some(ErrorClass::Retry),
                "timed out",
            ),
            (
                "reset",
                quinn::ConnectionError::Reset,
                Some(ErrorClass::Retry),
                "reset",
            ),
        ];
        for (name, error, expected, says) in cases {
            let e = connection_error("fieldsync.test", error);
            assert_eq!(class(&e), expected, "{name}: {e:?}");
            assert_eq!(
                e.is_retryable(),
                expected == Some(ErrorClass::Retry),
                "{name}: {e:?}"
            );
            assert!(e.to_string().contains(says), "{name}: {e}");
        }
        assert!(matches!(
            connection_error("s", closed(close::UNAUTHORIZED, "")),
            ClientError::Refused {
                code: ErrorCode::Unauthorized,
                ..
            }
        ));
        assert!(matches!(
            connection_error("s", closed(close::SERVER_ERROR, "")),
            ClientError::Unavailable {
                code: ErrorCode::Internal,
                ..
            }
        ));
    }

    /// Every error reply becomes the variant of its code's class.
    #[test]
    fn error_replies_map_to_their_classes() {
        let cases = [
            (ErrorCode::Malformed, false),
            (ErrorCode::TooLarge, false),
            (ErrorCode::Version, false),
            (ErrorCode::BadCode, false),
            (ErrorCode::Unauthorized, false),
            (ErrorCode::RateLimited, true),
            (ErrorCode::Internal, true),
        ];
        for (code, retry) in cases {
            let e = ClientError::answered(code, "why".into());
            assert_eq!(e.is_retryable(), retry, "{code:?}: {e:?}");
            match e {
                ClientError::Unavailable { code: got, .. } => {
                    assert!(retry, "{code:?}");
                    assert_eq!(got, code);
                }
                ClientError::Refused { code: got, .. } => {
                    assert!(!retry, "{code:?}");
                    assert_eq!(got, code);
                }
                other => panic!("{code:?}: {other:?}"),
            }
        }
        let round = ClientError::from(RoundError::Server {
            code: ErrorCode::Internal,
            message: "storage failed: disk on fire".into(),
        });
        assert!(
            matches!(round, ClientError::Unavailable { .. }),
            "{round:?}"
        );
    }
}
