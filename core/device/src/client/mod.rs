//! The device's side of sync over QUIC: enroll, and run sync rounds that outlive the signal.
//!
//! A thin driver: the round's logic is [`fieldsync_proto::sync::ClientRound`]; this module
//! moves its messages over a [`Link`] (which reconnects when the connection drops) and runs
//! its effects against the [`DeviceStore`] on blocking threads, so a long apply never starves
//! the connection's keep-alives on a single-threaded runtime.

mod link;

use std::sync::Arc;
use std::time::Duration;

pub use link::{Connection, Dial, Link};

use crate::store::{DeviceStore, EnrollmentInfo, StoreError};
use crate::tls::{self, TlsError};
use fieldsync_proto::protocol::{
    Changed, ClientMsg, Cursor, DocData, DocId, ErrorClass, ErrorCode, Hash, PROTOCOL_VERSION,
    ProtocolError, ServerMsg,
};
use fieldsync_proto::sync::{
    BatchLimits, Progress, RoundDriver, RoundError, RoundReport, RoundStart, drive_round,
};

/// Why enrolling or syncing failed. Local data is untouched by every one of these.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The store has no enrollment: run `enroll` first.
    #[error("this device is not enrolled; enroll it with a one-time code first")]
    NotEnrolled,
    /// The server could not be reached or the connection broke, and did not come back
    /// within the deadline: try again later.
    #[error("network: {0}")]
    Network(String),
    /// The server refused the device or the request: a code of the refused or the
    /// unauthorized class ([`ErrorCode::class`]); sending the same again gets the same answer.
    #[error("refused by the server ({code:?}): {message}")]
    Refused {
        /// What kind of refusal.
        code: ErrorCode,
        /// The server's reason.
        message: String,
    },
    /// The server could not serve the request now (its storage failed, it could not look the
    /// device up, too many rounds in a minute): a code of the retry class. Nothing that was
    /// not stored was acknowledged; try again later.
    #[error("the server could not serve this sync now ({code:?}): {message}")]
    Unavailable {
        /// What went wrong (`Internal`, `RateLimited`).
        code: ErrorCode,
        /// The server's reason.
        message: String,
    },
    /// The TLS handshake failed: the server's certificate is not the pinned one (a wrong
    /// fingerprint at enrollment, or something posing as the server), or the server refused
    /// the device's certificate.
    #[error("certificate: {0}")]
    Certificate(String),
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

impl ClientError {
    /// The error for a server's error reply, by the class of its code: the one mapping from
    /// [`ErrorCode`] to what the device does.
    pub fn answered(code: ErrorCode, message: String) -> ClientError {
        match code.class() {
            ErrorClass::Retry => ClientError::Unavailable { code, message },
            ErrorClass::Refused | ErrorClass::Unauthorized => {
                ClientError::Refused { code, message }
            }
        }
    }

    /// Whether trying again later may succeed: trouble on the way or at the server is; the
    /// server's refusals and the device's own state are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Network(_) | ClientError::Unavailable { .. } => true,
            ClientError::Refused { code, .. } => code.class() == ErrorClass::Retry,
            _ => false,
        }
    }
}

impl From<RoundError> for ClientError {
    fn from(e: RoundError) -> Self {
        match e {
            RoundError::Server { code, message } => ClientError::answered(code, message),
            RoundError::Unexpected(m) => ClientError::Network(format!("unexpected reply: {m}")),
        }
    }
}

/// How a sync or enrollment runs.
#[derive(Clone)]
pub struct SyncOptions {
    /// How long it may take, reconnecting as often as the link drops; what is not done by
    /// then stays pending for the next sync.
    pub deadline: Duration,
    /// How large one batch of pushed documents may be.
    pub batch: BatchLimits,
    /// A UDP socket to use instead of a new one (tests and benchmarks pass an impaired link).
    pub socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
    /// How long a connection may go silent before it is given up and made again (see
    /// [`crate::transport::IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
}

/// A round's deadline unless the caller says otherwise: two minutes ride out the outages of
/// a 2G link without holding a user who has no signal at all for long.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            deadline: DEFAULT_DEADLINE,
            batch: BatchLimits::default(),
            socket: None,
            idle_timeout: crate::transport::IDLE_TIMEOUT,
        }
    }
}

/// Enrolls the store's device with a one-time code and pins the server's certificate.
pub async fn enroll(
    store: &DeviceStore,
    server: &str,
    fingerprint_hex: &str,
    code: &str,
) -> Result<EnrollmentInfo, ClientError> {
    enroll_with(
        store,
        server,
        fingerprint_hex,
        code,
        &SyncOptions::default(),
    )
    .await
}

/// [`enroll`] with options. Sending the same code again with the same device key after the
/// server took it (its reply was lost) is answered with the same enrollment, so a retry within
/// the deadline simply finishes.
pub async fn enroll_with(
    store: &DeviceStore,
    server: &str,
    fingerprint_hex: &str,
    code: &str,
    options: &SyncOptions,
) -> Result<EnrollmentInfo, ClientError> {
    let fingerprint = tls::parse_fingerprint(fingerprint_hex)?;
    let dial = Dial {
        server: server.to_string(),
        fingerprint,
        identity: store.identity().clone(),
        socket: options.socket.clone(),
        idle_timeout: options.idle_timeout,
    };
    let mut link = Link::open(&dial, options.deadline).await?;
    let request = ClientMsg::Enroll {
        version: PROTOCOL_VERSION,
        code: code.to_string(),
    };
    let reply = match tokio::time::timeout(options.deadline, link.exchange(&request)).await {
        Ok(reply) => reply,
        Err(_) => Err(ClientError::Network(format!(
            "enrollment did not finish within {} s",
            options.deadline.as_secs()
        ))),
    };
    link.close().await;
    match reply? {
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
            let writer = store.clone();
            let saved = info.clone();
            blocking(move || writer.set_enrollment(&saved)).await?;
            Ok(info)
        }
        ServerMsg::Error { code, message } => Err(ClientError::answered(code, message)),
        other => Err(ClientError::Network(format!("unexpected reply {other:?}"))),
    }
}

/// Runs one sync round for the store's device, reporting its progress as it goes; returns
/// the round's counts and the bytes it sent and received on the wire.
pub async fn sync(
    store: &DeviceStore,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(RoundReport, (u64, u64)), ClientError> {
    sync_with(store, &SyncOptions::default(), progress).await
}

/// [`sync`] with options: the round reconnects whenever the link drops and goes on where it
/// was, until it is done or `options.deadline` has passed.
pub async fn sync_with(
    store: &DeviceStore,
    options: &SyncOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(RoundReport, (u64, u64)), ClientError> {
    let info = store.enrollment()?.ok_or(ClientError::NotEnrolled)?;
    let dial = Dial {
        server: info.server.clone(),
        fingerprint: tls::parse_fingerprint(&info.fingerprint)?,
        identity: store.identity().clone(),
        socket: options.socket.clone(),
        idle_timeout: options.idle_timeout,
    };
    let reader = store.clone();
    let (pending, cursors) = blocking(move || Ok((reader.pending()?, reader.cursors()?))).await?;
    let link = Link::open(&dial, options.deadline).await?;
    let mut driver = QuicDriver {
        link,
        store,
        progress,
        pushed: 0,
    };
    let start = RoundStart {
        pending,
        cursors,
        first_batch: link::random_batch_id(),
        limits: options.batch,
    };
    // The link gives up at the deadline between attempts; this bounds a round whose link
    // stays up but crawls.
    let result = match tokio::time::timeout(options.deadline, drive_round(&mut driver, start)).await
    {
        Ok(result) => result,
        Err(_) => Err(ClientError::Network(format!(
            "the round did not finish within {} s; what is not acknowledged stays pending",
            options.deadline.as_secs()
        ))),
    };
    let bytes = driver.link.wire_bytes();
    let connections = driver.link.connections();
    let pushed = driver.pushed;
    driver.link.close().await;
    result.map(|mut report| {
        report.connections = connections;
        report.pushed = pushed;
        (report, bytes)
    })
}

/// Runs store work on a blocking thread: redb commits wait on the disk.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ClientError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => Ok(result?),
        Err(e) => Err(ClientError::Store(StoreError::Corrupt(format!(
            "store task failed: {e}"
        )))),
    }
}

struct QuicDriver<'a> {
    link: Link,
    store: &'a DeviceStore,
    progress: &'a mut (dyn FnMut(Progress) + Send),
    /// Documents put on the wire, counting a batch again each time it is sent again.
    pushed: usize,
}

impl RoundDriver for QuicDriver<'_> {
    type Error = ClientError;

    async fn exchange(&mut self, msg: ClientMsg) -> Result<ServerMsg, ClientError> {
        let batch = match &msg {
            ClientMsg::Sync { batch: Some(b), .. } => b.docs.len(),
            _ => 0,
        };
        let reply = self.link.exchange(&msg).await;
        self.pushed += batch * self.link.sends();
        reply
    }

    async fn acknowledge(
        &mut self,
        accepted: Vec<(DocId, Vec<Hash>)>,
        refused: Vec<(DocId, String)>,
    ) -> Result<(), ClientError> {
        let store = self.store.clone();
        blocking(move || store.acknowledge(&accepted, &refused)).await
    }

    async fn local_heads(
        &mut self,
        changed: Vec<Changed>,
    ) -> Result<Vec<(DocId, Vec<Hash>)>, ClientError> {
        let store = self.store.clone();
        blocking(move || store.local_heads(&changed)).await
    }

    async fn apply(&mut self, docs: Vec<DocData>, cursors: Vec<Cursor>) -> Result<(), ClientError> {
        let store = self.store.clone();
        blocking(move || store.apply(&docs, &cursors)).await
    }

    fn progress(&mut self, progress: Progress) {
        (self.progress)(progress)
    }
}
