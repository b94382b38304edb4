//! The server side of the sync protocol over quinn: admit, authenticate, serve exchanges.
//!
//! Who is asking is settled before any request is read: the device's TLS client certificate
//! proved possession of its key in the handshake; here its key id is looked up in the device
//! table (on the blocking pool). Then each class of connection gets only what it needs
//! ([`crate::admission`]):
//!
//! - an enrolled device serves sync rounds; its requests (up to `Limits::max_frame_bytes`) are
//!   read on the async workers but inflated and decoded on the blocking pool, a few at a time;
//! - a stranger (a certificate not enrolled) may send one small, uncompressed `Enroll` within
//!   a short deadline, and is closed after the reply;
//! - a revoked device is closed at once as unauthorised.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fieldsync_device::tls;
use fieldsync_device::transport::{self, FrameError};
use fieldsync_proto::access::DeviceCtx;
use fieldsync_proto::protocol::close;
use fieldsync_proto::protocol::{
    self, ClientMsg, Enrollment, ErrorCode, Limits, PROTOCOL_VERSION, PushDoc, PushResult,
    ServerMsg,
};
use fieldsync_proto::sync::{ServerEffect, ServerExchange, ServerInput, StorageFailure};
use tokio::sync::{Semaphore, watch};

use crate::admission::{Admission, AdmissionLimits, Slot};
use crate::enrollment::{CodeGuard, normalize_code};
use crate::inflight::{Exchange, Inflight};
use crate::store::{Committer, ServerStore, StoreError};
use crate::{Metrics, oplog};

/// Everything a connection needs, shared by all of them.
pub struct Shared {
    pub store: ServerStore,
    pub committer: Committer,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// Connection slots per class, address and device.
    pub admission: Arc<Admission<quinn::Connection>>,
    rounds: Mutex<HashMap<String, Vec<Instant>>>,
    codes: CodeGuard,
    /// Requests being inflated and decoded at once.
    decoding: Arc<Semaphore>,
    /// Held by a dashboard change from loading the record until its commit: each office user
    /// writes under one fixed actor, so two changes built from the same stored version would
    /// both claim that actor's next sequence number and the second would be refused.
    pub office_changes: Mutex<()>,
    /// Exchanges from their request read until their reply reached the device.
    pub inflight: Inflight,
}

impl Shared {
    pub fn new(
        store: ServerStore,
        limits: Limits,
        admission: AdmissionLimits,
        metrics: Arc<Metrics>,
        fatal: watch::Sender<Option<String>>,
    ) -> Shared {
        let committer = Committer::start(store.clone(), limits.clone(), metrics.clone(), fatal);
        Shared {
            store,
            committer,
            limits,
            metrics,
            decoding: Arc::new(Semaphore::new(admission.max_decoding.max(1))),
            codes: CodeGuard::new(admission.code_cooldown),
            admission: Admission::new(admission),
            rounds: Mutex::new(HashMap::new()),
            office_changes: Mutex::new(()),
            inflight: Inflight::default(),
        }
    }

    /// Whether `device` may send another `Sync` now (a sliding one-minute window).
    ///
    /// Keyed by enrolled devices only, so the map is as large as the device table at most;
    /// devices with no round in the window are dropped from it.
    fn admit_round(&self, device: &str) -> bool {
        let mut rounds = self.rounds.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let window = Duration::from_secs(60);
        if rounds.len() > 1024 {
            rounds.retain(|_, recent| {
                recent
                    .last()
                    .is_some_and(|t| now.duration_since(*t) < window)
            });
        }
        let recent = rounds.entry(device.to_string()).or_default();
        recent.retain(|t| now.duration_since(*t) < window);
        if recent.len() >= self.limits.max_rounds_per_minute as usize {
            return false;
        }
        recent.push(now);
        true
    }
}

/// How long one request of an enrolled device may take to arrive; a stalled sender does not
/// hold a slot forever.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Accepts connections until `shutdown` turns true, then closes them and waits for commits.
pub async fn run(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let incoming = tokio::select! {
            _ = shutdown.changed() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let address = incoming.remote_address().ip();
        // Under load, a client must prove its address before it counts against one, so
        // spoofed sources cannot fill the per-address shares of real ones.
        if !incoming.remote_address_validated()
            && incoming.may_retry()
            && shared.admission.should_validate()
        {
            let _ = incoming.retry();
            continue;
        }
        let slot = match shared.admission.handshake(address, Instant::now()) {
            Ok(slot) => slot,
            Err(busy) => {
                oplog::connection_busy(address, &busy.to_string());
                shared.metrics.count(&shared.metrics.connections_busy);
                incoming.refuse();
                continue;
            }
        };
        let shared = shared.clone();
        tasks.spawn(async move {
            let timeout = shared.admission.limits().handshake_timeout;
            let conn = match tokio::time::timeout(timeout, incoming).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return oplog::handshake_failed(address, &e.to_string()),
                Err(_) => return tracing::debug!(%address, "handshake timed out"),
            };
            drop(slot);
            handle_connection(conn, shared).await
        });
        while tasks.try_join_next().is_some() {}
    }
    endpoint.close(close::SHUTDOWN.into(), b"server shutting down");
    // Rounds already being committed finish; their replies may not reach the device, which
    // simply runs the round again (nothing acknowledged is lost, nothing is stored twice).
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    endpoint.wait_idle().await;
}

/// Counts a connection as open for `/metrics` until it is dropped, however the handler ends.
struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    fn count(metrics: &Arc<Metrics>) -> OpenConnection {
        metrics
            .connections_open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenConnection(metrics.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0
            .connections_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Who a connection's certificate belongs to.
enum Peer {
    Enrolled(DeviceCtx),
    Revoked,
    Stranger,
}

async fn handle_connection(conn: quinn::Connection, shared: Arc<Shared>) {
    shared.metrics.count(&shared.metrics.connections);
    let _open = OpenConnection::count(&shared.metrics);
    let Some(device_id) = peer_device_id(&conn) else {
        conn.close(close::UNAUTHORIZED.into(), b"no device certificate");
        return;
    };
    let id = device_id.clone();
    let peer = on_store(&shared, move |store| match store.device_ctx(&id)? {
        Some(ctx) => Ok(Peer::Enrolled(ctx)),
        None if store.device_known(&id)? => Ok(Peer::Revoked),
        None => Ok(Peer::Stranger),
    })
    .await;
    let address = conn.remote_address().ip();
    match peer {
        Err(e) => server_error(&conn, &device_id, &e.0),
        Ok(Peer::Revoked) => {
            oplog::revoked_device(&device_id, address);
            conn.close(close::UNAUTHORIZED.into(), b"this device has been revoked");
        }
        Ok(Peer::Enrolled(ctx)) => match shared.admission.device(&device_id, conn.clone()) {
            Ok((slot, replaced)) => {
                for old in replaced {
                    old.close(close::DONE.into(), b"replaced by a newer connection");
                }
                serve_device(&conn, &shared, &ctx, slot).await;
            }
            Err(busy) => close_busy(&conn, &shared, busy),
        },
        Ok(Peer::Stranger) => match shared.admission.stranger(address) {
            Ok(slot) => serve_stranger(&conn, &shared, &device_id, address, slot).await,
            Err(busy) => close_busy(&conn, &shared, busy),
        },
    }
}

fn close_busy(conn: &quinn::Connection, shared: &Shared, busy: crate::admission::Busy) {
    oplog::connection_busy(conn.remote_address().ip(), &busy.to_string());
    shared.metrics.count(&shared.metrics.connections_busy);
    conn.close(close::BUSY.into(), busy.to_string().as_bytes());
}

/// Serves an enrolled device's requests until it closes the connection.
async fn serve_device(
    conn: &quinn::Connection,
    shared: &Arc<Shared>,
    ctx: &DeviceCtx,
    _slot: Slot<quinn::Connection>,
) {
    let address = conn.remote_address().ip();
    loop {
        let (send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let read = tokio::time::timeout(
            REQUEST_READ_TIMEOUT,
            read_request_body(&mut recv, shared.limits.max_frame_bytes),
        );
        let Ok(body) = read.await else {
            tracing::info!(device = %ctx.device_id, "request not received in time; closing");
            conn.close(close::DONE.into(), b"request timed out");
            return;
        };
        let exchange = shared.inflight.enter();
        let request = match body {
            Ok(body) => decode_off_workers(shared, body).await,
            Err(e) => Err(e),
        };
        let reply = match request {
            Err(e) => {
                tracing::info!(device = %ctx.device_id, error = %e, "bad request");
                ServerMsg::Error {
                    code: e.code(),
                    message: e.to_string(),
                }
            }
            // An enrolled device may send its code again: its first reply may have been lost.
            Ok(ClientMsg::Enroll { version, code }) => {
                enroll_guarded(shared, &ctx.device_id, address, version, &code).await
            }
            // Every Sync counts, so one long-lived connection cannot get around the limit.
            Ok(ClientMsg::Sync { .. }) if !shared.admit_round(&ctx.device_id) => {
                oplog::rounds_rate_limited(&ctx.device_id, &ctx.user_id);
                ServerMsg::Error {
                    code: ErrorCode::RateLimited,
                    message: format!(
                        "more than {} sync rounds in a minute; try again shortly",
                        shared.limits.max_rounds_per_minute
                    ),
                }
            }
            Ok(msg) => {
                let pull_only = matches!(
                    msg,
                    ClientMsg::Sync {
                        batch: None,
                        pull: Some(_),
                        ..
                    }
                );
                let reply = serve_exchange(shared, ctx, msg).await;
                if pull_only && matches!(reply, ServerMsg::SyncReply(_)) {
                    touch(shared, ctx);
                }
                if let ServerMsg::SyncReply(protocol::SyncReply {
                    batch: Some(ack), ..
                }) = &reply
                {
                    oplog::records_refused(&ctx.device_id, &ctx.user_id, &ack.refused);
                }
                reply
            }
        };
        if !send_reply(send, &reply, exchange).await {
            return;
        }
    }
}

/// Serves a connection whose certificate is not enrolled: one small, uncompressed request
/// within the stranger deadline, which must be `Enroll`; then the connection is done.
async fn serve_stranger(
    conn: &quinn::Connection,
    shared: &Arc<Shared>,
    device_id: &str,
    address: IpAddr,
    _slot: Slot<quinn::Connection>,
) {
    let limits = *shared.admission.limits();
    let served = tokio::time::timeout(limits.stranger_deadline, async {
        let (mut send, mut recv) = conn.accept_bi().await.ok()?;
        let request = match read_request_body(&mut recv, limits.max_stranger_frame).await {
            Ok(body) => protocol::decode_plain_body::<ClientMsg>(&body),
            Err(e) => Err(e),
        };
        let reply = match request {
            Ok(ClientMsg::Enroll { version, code }) => {
                enroll_guarded(shared, device_id, address, version, &code).await
            }
            // Only a sync can be large or compressed, and only an enrolled device may sync:
            // said without reading or inflating any of it.
            Ok(_)
            | Err(
                protocol::ProtocolError::Compressed | protocol::ProtocolError::FrameTooLarge { .. },
            ) => {
                oplog::unenrolled_request(device_id, address);
                ServerMsg::Error {
                    code: ErrorCode::Unauthorized,
                    message: "this device is not enrolled".into(),
                }
            }
            Err(e) => {
                tracing::info!(device = %device_id, %address, error = %e, "bad request from an unenrolled device");
                ServerMsg::Error {
                    code: e.code(),
                    message: e.to_string(),
                }
            }
        };
        let exchange = shared.inflight.enter();
        write_reply(&mut send, &reply).await.ok()?;
        // Closing at once would drop a reply still in flight: wait until the device has
        // acknowledged it (or closed the connection itself), within the deadline.
        tokio::select! {
            _ = send.stopped() => {}
            _ = conn.closed() => {}
        }
        drop(exchange);
        Some(())
    })
    .await;
    if served.is_err() {
        tracing::debug!(device = %device_id, %address, "unenrolled connection ran out of time");
    }
    conn.close(close::DONE.into(), b"enroll first");
}

/// Writes a reply on its stream and finishes the stream.
async fn write_reply(send: &mut quinn::SendStream, reply: &ServerMsg) -> Result<(), ()> {
    let frame = protocol::encode_frame(reply).map_err(|e| {
        tracing::error!(error = %e, "cannot encode reply");
    })?;
    send.write_all(&frame).await.map_err(|_| ())?;
    send.finish().map_err(|_| ())
}

/// Decodes (inflating if compressed) a request body on the blocking pool, a few at a time:
/// inflation is CPU work that may reach `Limits::max_inflated_bytes`.
async fn decode_off_workers(
    shared: &Arc<Shared>,
    body: Vec<u8>,
) -> Result<ClientMsg, protocol::ProtocolError> {
    let Ok(_permit) = shared.decoding.clone().acquire_owned().await else {
        return Err(protocol::ProtocolError::Encoding(
            "server shutting down".into(),
        ));
    };
    let limits = shared.limits.clone();
    tokio::task::spawn_blocking(move || protocol::decode_body(&body, &limits))
        .await
        .unwrap_or_else(|e| {
            Err(protocol::ProtocolError::Encoding(format!(
                "decoding failed: {e}"
            )))
        })
}

/// Enrolls a device unless its code has had too many wrong tries lately.
async fn enroll_guarded(
    shared: &Arc<Shared>,
    device_id: &str,
    address: IpAddr,
    version: u16,
    typed: &str,
) -> ServerMsg {
    let code = normalize_code(typed);
    if let Err(wait) = shared.codes.check(&code, Instant::now()) {
        oplog::code_rate_limited(device_id, address);
        return ServerMsg::Error {
            code: ErrorCode::RateLimited,
            message: format!(
                "this enrollment code was tried wrongly too often; try again in {} s",
                wait.as_secs().max(1)
            ),
        };
    }
    let reply = enroll(shared, device_id, version, &code).await;
    match &reply {
        ServerMsg::Enrolled(e) => oplog::device_enrolled(device_id, &e.user_id, address),
        ServerMsg::Error {
            code: ErrorCode::BadCode,
            message,
        } => oplog::code_refused(device_id, address, message),
        _ => {}
    }
    reply
}

/// Closes a connection whose device could not be looked up: the server's trouble, which the
/// device retries ([`close::SERVER_ERROR`]), never UNAUTHORIZED (which apps show as "enroll
/// again").
fn server_error(conn: &quinn::Connection, device_id: &str, e: &dyn std::fmt::Display) {
    tracing::error!(device = %device_id, error = %e, "device lookup failed");
    conn.close(close::SERVER_ERROR.into(), b"server error; try again later");
}

/// How long a reply's delivery is waited for (off the connection's loop) before its exchange
/// no longer counts as in flight.
const REPLY_DELIVERY: Duration = Duration::from_secs(3);

/// Writes one reply; whether the stream took it. The exchange stays in flight until the
/// device has acknowledged the whole reply (or [`REPLY_DELIVERY`] passed), waited for on a
/// task of its own so the connection's next request is not held up.
async fn send_reply(mut send: quinn::SendStream, reply: &ServerMsg, exchange: Exchange) -> bool {
    if write_reply(&mut send, reply).await.is_err() {
        return false;
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REPLY_DELIVERY, send.stopped()).await;
        drop(exchange);
    });
    true
}

/// Answers one request of an enrolled device by driving the proto crate's exchange: merges and
/// feed reads run on the blocking pool, and the group commit is awaited, so a waiting round
/// holds no thread.
async fn serve_exchange(shared: &Arc<Shared>, ctx: &DeviceCtx, msg: ClientMsg) -> ServerMsg {
    let (mut exchange, mut effect) = ServerExchange::start(msg, &shared.limits);
    loop {
        let input = match effect {
            ServerEffect::Reply(reply) => return reply,
            ServerEffect::Commit { batch, docs } => {
                ServerInput::Committed(commit(shared, ctx, batch, docs).await)
            }
            ServerEffect::ReadFeed {
                cursors,
                fresh,
                limit,
                budget,
            } => {
                let ctx = ctx.clone();
                ServerInput::Feed(
                    on_store(shared, move |store| {
                        store.changes_since(&ctx, &cursors, &fresh, limit, budget)
                    })
                    .await,
                )
            }
            ServerEffect::Fetch { want, budget } => {
                let ctx = ctx.clone();
                ServerInput::Fetched(
                    on_store(shared, move |store| store.fetch(&ctx, &want, budget)).await,
                )
            }
        };
        effect = exchange.handle(input);
    }
}

/// Records, in the next group commit, that a device synced by only pulling (a push stamps it
/// with its own commit). Off the reply's path: the device need not wait for it.
fn touch(shared: &Arc<Shared>, ctx: &DeviceCtx) {
    let committer = shared.committer.clone();
    let ctx = ctx.clone();
    tokio::spawn(async move {
        if let Err(e) = committer.touch(&ctx).await {
            tracing::warn!(device = %ctx.device_id, error = %e, "cannot record the sync time");
        }
    });
}

/// Stores a device's batch: answered from its record if the device's last committed batch
/// has this id (its reply was lost), else merged on the blocking pool (so concurrent rounds
/// merge on every core) and committed by the commit thread in a shared durable transaction.
async fn commit(
    shared: &Arc<Shared>,
    ctx: &DeviceCtx,
    batch: u64,
    push: Vec<PushDoc>,
) -> Result<Vec<PushResult>, StorageFailure> {
    let limits = shared.limits.clone();
    let merge_ctx = ctx.clone();
    let found = on_store(shared, move |store| {
        match store.recorded_batch(&merge_ctx.device_id, batch)? {
            Some(outcomes) => Ok(BatchFound::Committed(outcomes)),
            None => Ok(BatchFound::New(store.prepare(&merge_ctx, push, &limits)?)),
        }
    })
    .await?;
    let results = match found {
        BatchFound::Committed(recorded) => {
            tracing::info!(device = %ctx.device_id, batch, "batch already committed; answered from its record");
            recorded
        }
        BatchFound::New(prepared) => shared
            .committer
            .commit(ctx, Some(batch), prepared)
            .await
            .map_err(|e| StorageFailure(e.to_string()))?,
    };
    shared.metrics.record_results(&results);
    Ok(results)
}

/// A pushed batch as the store finds it.
enum BatchFound {
    /// The device's last committed batch has this id: its recorded outcomes.
    Committed(Vec<PushResult>),
    /// A batch not seen yet, merged and ready for the commit thread.
    New(Vec<crate::store::Prepared>),
}

/// Runs a store read on the blocking pool: redb reads block on the file.
async fn on_store<T: Send + 'static>(
    shared: &Arc<Shared>,
    work: impl FnOnce(&ServerStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StorageFailure> {
    let store = shared.store.clone();
    match tokio::task::spawn_blocking(move || work(&store)).await {
        Ok(result) => result.map_err(|e| StorageFailure(e.to_string())),
        Err(e) => Err(StorageFailure(format!("storage task failed: {e}"))),
    }
}

async fn enroll(shared: &Arc<Shared>, device_id: &str, version: u16, code: &str) -> ServerMsg {
    if version != PROTOCOL_VERSION {
        return ServerMsg::Error {
            code: ErrorCode::Version,
            message: format!("protocol version {version} is not supported"),
        };
    }
    let store = shared.store.clone();
    let (device, typed) = (device_id.to_string(), code.to_string());
    let now = chrono::Utc::now().timestamp();
    let result = tokio::task::spawn_blocking(move || store.enroll(&typed, &device, now)).await;
    match result {
        Ok(Ok((user, device))) => {
            shared.codes.used(code);
            tracing::info!(device = %device.device_id, user = %user.id, "device enrolled");
            ServerMsg::Enrolled(Enrollment {
                device_id: device.device_id,
                user_id: user.id,
                user_name: user.name,
                role: user.role,
                scopes: user.scopes,
            })
        }
        Ok(Err(StoreError::BadCode(message))) => ServerMsg::Error {
            code: ErrorCode::BadCode,
            message,
        },
        Ok(Err(e @ StoreError::WrongCode(_))) => {
            if let StoreError::WrongCode(id) = &e {
                shared.codes.wrong(id, Instant::now());
            }
            ServerMsg::Error {
                code: ErrorCode::BadCode,
                message: e.to_string(),
            }
        }
        Ok(Err(e)) => ServerMsg::Error {
            code: ErrorCode::Internal,
            message: e.to_string(),
        },
        Err(e) => ServerMsg::Error {
            code: ErrorCode::Internal,
            message: e.to_string(),
        },
    }
}

/// Reads one request frame's body (at most `max_frame_bytes`), undecoded; a stream that ends
/// or breaks first is a truncated frame.
async fn read_request_body(
    recv: &mut quinn::RecvStream,
    max_frame_bytes: usize,
) -> Result<Vec<u8>, protocol::ProtocolError> {
    transport::read_body(recv, max_frame_bytes)
        .await
        .map_err(|e| match e {
            FrameError::Protocol(e) => e,
            FrameError::Read { expected, source } => protocol::ProtocolError::Truncated {
                expected,
                got: match source {
                    quinn::ReadExactError::FinishedEarly(n) => n,
                    _ => 0,
                },
            },
        })
}

fn peer_device_id(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    let cert = certs.first()?;
    tls::device_key_id(cert).ok().map(hex::encode)
}
