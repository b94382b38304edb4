//! The device's QUIC connection to a sync server: enroll, and run sync rounds.
//!
//! A thin driver: the round's logic is [`fieldsync_proto::sync::ClientRound`]; this module moves its
//! messages over quinn and runs its effects against the [`DeviceStore`].

use std::net::SocketAddr;
use std::sync::Arc;

use crate::store::{DeviceStore, EnrollmentInfo, StoreError};
use crate::tls::{self, KeyAndCert, TlsError};
use crate::transport::{self, FrameError};
use fieldsync_proto::protocol::{
    self, ClientMsg, Cursor, DocData, DocId, ErrorCode, Hash, Limits, PROTOCOL_VERSION,
    ProtocolError, SERVER_NAME, ServerMsg, close,
};
use fieldsync_proto::sync::{Progress, RoundDriver, RoundError, RoundReport, drive_round};

/// How long closing a connection may wait for the close to be sent.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

/// Why enrolling or syncing failed. Local data is untouched by every one of these.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The store has no enrollment: run `enroll` first.
    #[error("this device is not enrolled; enroll it with a one-time code first")]
    NotEnrolled,
    /// The server could not be reached or the connection broke.
    #[error("network: {0}")]
    Network(String),
    /// The server refused the device or the request.
    #[error("refused by the server ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    /// The server sent something that is not valid protocol.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Keys or TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl From<RoundError> for ClientError {
    fn from(e: RoundError) -> Self {
        match e {
            RoundError::Refused { code, message } => ClientError::Refused { code, message },
            RoundError::Unexpected(m) => ClientError::Network(format!("unexpected reply: {m}")),
        }
    }
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
        let addr = resolve(server).await?;
        let tls = tls::client_config(identity, fingerprint)?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Network(format!("QUIC TLS: {e}")))?;
        let limits = Limits::default();
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(Arc::new(transport::transport_config(
            limits.max_frame_bytes,
        )));
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0"
                .parse()
                .map_err(|_| ClientError::Network("bind".into()))?
        } else {
            "0.0.0.0:0"
                .parse()
                .map_err(|_| ClientError::Network("bind".into()))?
        };
        let mut endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| ClientError::Network(format!("cannot open a UDP socket: {e}")))?;
        endpoint.set_default_client_config(config);
        let conn = endpoint
            .connect(addr, SERVER_NAME)
            .map_err(|e| ClientError::Network(format!("cannot connect to {server}: {e}")))?
            .await
            .map_err(|e| connection_error(server, e))?;
        Ok(Connection {
            endpoint,
            conn,
            limits,
        })
    }

    /// Sends one request on its own stream and reads the one reply.
    pub async fn exchange(&self, msg: &ClientMsg) -> Result<ServerMsg, ClientError> {
        let frame = protocol::encode_frame(msg)?;
        let net = |e: &dyn std::fmt::Display| ClientError::Network(e.to_string());
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| self.closed(e))?;
        match send.write_all(&frame).await {
            Ok(()) => send.finish().map_err(|e| net(&e))?,
            // The server stops reading a request it refuses (too large, say) but still sends
            // its reason: read it rather than report a bare network error.
            Err(quinn::WriteError::Stopped(_)) => {}
            Err(e) => return Err(self.write_failed(e)),
        }
        match transport::read_frame(&mut recv, &self.limits).await {
            Ok(reply) => Ok(reply),
            Err(FrameError::Read { source, .. }) => Err(self.read_failed(source)),
            Err(FrameError::Protocol(e)) => Err(e.into()),
        }
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
        self.conn.close(close::DONE.into(), b"done");
        let _ = tokio::time::timeout(CLOSE_GRACE, self.endpoint.wait_idle()).await;
    }

    fn closed(&self, e: quinn::ConnectionError) -> ClientError {
        connection_error("the server", e)
    }

    fn write_failed(&self, e: quinn::WriteError) -> ClientError {
        match e {
            quinn::WriteError::ConnectionLost(c) => self.closed(c),
            other => ClientError::Network(other.to_string()),
        }
    }

    fn read_failed(&self, e: quinn::ReadExactError) -> ClientError {
        match e {
            quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => self.closed(c),
            other => ClientError::Network(format!("reading the reply: {other}")),
        }
    }
}

fn connection_error(server: &str, e: quinn::ConnectionError) -> ClientError {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let message = String::from_utf8_lossy(&close.reason).to_string();
            let code = match u32::try_from(close.error_code.into_inner()) {
                Ok(close::UNAUTHORIZED) => ErrorCode::Unauthorized,
                _ => ErrorCode::Internal,
            };
            ClientError::Refused { code, message }
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

/// Enrolls the store's device with a one-time code and pins the server's certificate.
pub async fn enroll(
    store: &DeviceStore,
    server: &str,
    fingerprint_hex: &str,
    code: &str,
) -> Result<EnrollmentInfo, ClientError> {
    let fingerprint = tls::parse_fingerprint(fingerprint_hex)?;
    let conn = Connection::connect(server, fingerprint, store.identity()).await?;
    let reply = conn
        .exchange(&ClientMsg::Enroll {
            version: PROTOCOL_VERSION,
            code: code.to_string(),
        })
        .await?;
    conn.close().await;
    match reply {
        ServerMsg::Enrolled(e) => {
            let info = EnrollmentInfo {
                server: server.to_string(),
                fingerprint: hex::encode(fingerprint),
                device_id: e.device_id,
                user_id: e.user_id,
                user_name: e.user_name,
                role: e.role,
                scopes: e.scopes,
            };
            store.set_enrollment(&info)?;
            Ok(info)
        }
        ServerMsg::Error { code, message } => Err(ClientError::Refused { code, message }),
        other => Err(ClientError::Network(format!("unexpected reply {other:?}"))),
    }
}

/// Runs one sync round for the store's device, reporting its progress as it goes.
pub async fn sync(
    store: &DeviceStore,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(RoundReport, (u64, u64)), ClientError> {
    let info = store.enrollment()?.ok_or(ClientError::NotEnrolled)?;
    let fingerprint = tls::parse_fingerprint(&info.fingerprint)?;
    let conn = Connection::connect(&info.server, fingerprint, store.identity()).await?;
    let pending = store.pending()?;
    let cursors = store.cursors()?;
    let mut driver = QuicDriver {
        conn: &conn,
        store,
        progress,
    };
    let result = drive_round(&mut driver, pending, cursors).await;
    let bytes = conn.wire_bytes();
    conn.close().await;
    result.map(|r| (r, bytes))
}

struct QuicDriver<'a> {
    conn: &'a Connection,
    store: &'a DeviceStore,
    progress: &'a mut (dyn FnMut(Progress) + Send),
}

impl RoundDriver for QuicDriver<'_> {
    type Error = ClientError;

    async fn exchange(&mut self, msg: ClientMsg) -> Result<ServerMsg, ClientError> {
        self.conn.exchange(&msg).await
    }

    fn acknowledge(
        &mut self,
        accepted: Vec<(DocId, Vec<Hash>)>,
        refused: Vec<(DocId, String)>,
    ) -> Result<(), ClientError> {
        Ok(self.store.acknowledge(&accepted, &refused)?)
    }

    fn local_heads(
        &mut self,
        changed: &[protocol::Changed],
    ) -> Result<Vec<(DocId, Vec<Hash>)>, ClientError> {
        Ok(self.store.local_heads(changed)?)
    }

    fn apply(&mut self, docs: Vec<DocData>, cursors: Vec<Cursor>) -> Result<(), ClientError> {
        Ok(self.store.apply(&docs, &cursors)?)
    }

    fn progress(&mut self, progress: Progress) {
        (self.progress)(progress)
    }
}
