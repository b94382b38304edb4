//! The server side of the sync protocol over quinn: accept, authenticate, serve exchanges.
//!
//! Authentication happens before any sync message is read: the device's TLS client certificate
//! proved possession of its key in the handshake; here its key id is looked up in the device
//! table. Unknown devices may only send `Enroll`; revoked ones are closed at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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

use crate::Metrics;
use crate::inflight::{Exchange, Inflight};
use crate::store::{Committer, ServerStore, StoreError};

/// Everything a connection needs, shared by all of them.
pub struct Shared {
    pub store: ServerStore,
    pub committer: Committer,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    rounds: Mutex<HashMap<String, Vec<Instant>>>,
    enroll_failures: Mutex<HashMap<std::net::IpAddr, Vec<Instant>>>,
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
        metrics: Arc<Metrics>,
        fatal: watch::Sender<Option<String>>,
    ) -> Shared {
        let committer = Committer::start(store.clone(), limits.clone(), metrics.clone(), fatal);
        Shared {
            store,
            committer,
            limits,
            metrics,
            rounds: Mutex::new(HashMap::new()),
            enroll_failures: Mutex::new(HashMap::new()),
            office_changes: Mutex::new(()),
            inflight: Inflight::default(),
        }
    }

    /// Whether `device` may send another `Sync` now (a sliding one-minute window).
    fn admit_round(&self, device: &str) -> bool {
        admit(
            &self.rounds,
            device.to_string(),
            self.limits.max_rounds_per_minute,
            true,
        )
    }

    /// Whether `ip` may try another enrollment code now.
    fn admit_enroll(&self, ip: std::net::IpAddr) -> bool {
        admit(
            &self.enroll_failures,
            ip,
            self.limits.max_enroll_failures_per_minute,
            false,
        )
    }

    fn enroll_failed(&self, ip: std::net::IpAddr) {
        if let Ok(mut failures) = self.enroll_failures.lock() {
            failures.entry(ip).or_default().push(Instant::now());
        }
    }
}

/// A sliding one-minute window per key: whether one more event is allowed, counting it if
/// `count` (failures are counted only once they happen).
fn admit<K: std::hash::Hash + Eq>(
    window: &Mutex<HashMap<K, Vec<Instant>>>,
    key: K,
    limit: u32,
    count: bool,
) -> bool {
    let Ok(mut events) = window.lock() else {
        return false;
    };
    let now = Instant::now();
    let recent = events.entry(key).or_default();
    recent.retain(|t| now.duration_since(*t) < Duration::from_secs(60));
    if recent.len() >= limit as usize {
        return false;
    }
    if count {
        recent.push(now);
    }
    true
}

/// How long one request may take to arrive; a stalled sender does not hold a slot forever.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Most connections served at once; more wait in the accept queue (backpressure).
pub const MAX_CONNECTIONS: usize = 1024;

/// Accepts connections until `shutdown` turns true, then closes them and waits for commits.
pub async fn run(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.changed() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let incoming = tokio::select! {
            _ = shutdown.changed() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let shared = shared.clone();
        tasks.spawn(async move {
            let _permit = permit;
            match incoming.await {
                Ok(conn) => handle_connection(conn, shared).await,
                Err(e) => tracing::debug!(error = %e, "handshake failed"),
            }
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

async fn handle_connection(conn: quinn::Connection, shared: Arc<Shared>) {
    shared
        .metrics
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _open = OpenConnection::count(&shared.metrics);
    let Some(device_id) = peer_device_id(&conn) else {
        conn.close(close::UNAUTHORIZED.into(), b"no device certificate");
        return;
    };
    let mut ctx = match look_up(&shared, &device_id) {
        Ok(Lookup::Enrolled(ctx)) => Some(ctx),
        Ok(Lookup::Unknown) => None,
        Ok(Lookup::Revoked) => {
            tracing::info!(device = %device_id, "revoked device refused");
            conn.close(close::UNAUTHORIZED.into(), b"this device has been revoked");
            return;
        }
        Err(e) => {
            server_error(&conn, &device_id, &e);
            return;
        }
    };
    let remote_ip = conn.remote_address().ip();
    loop {
        let (send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let request = tokio::time::timeout(
            REQUEST_READ_TIMEOUT,
            read_request(&mut recv, &shared.limits),
        );
        let Ok(request) = request.await else {
            tracing::info!(device = %device_id, "request not received in time; closing");
            conn.close(close::DONE.into(), b"request timed out");
            return;
        };
        let exchange = shared.inflight.enter();
        let reply = match (request, &ctx) {
            (Err(e), _) => {
                tracing::info!(device = %device_id, error = %e, "bad request");
                ServerMsg::Error {
                    code: e.code(),
                    message: e.to_string(),
                }
            }
            // An enrolled device may send its code again: its first reply may have been lost.
            (Ok(ClientMsg::Enroll { .. }), _) if !shared.admit_enroll(remote_ip) => {
                ServerMsg::Error {
                    code: ErrorCode::RateLimited,
                    message:
                        "too many refused enrollment codes from this address; try again in a minute"
                            .into(),
                }
            }
            (Ok(ClientMsg::Enroll { version, code }), _) => {
                let reply = enroll(&shared, &device_id, version, &code).await;
                match reply {
                    ServerMsg::Enrolled(_) => match shared.store.device_ctx(&device_id) {
                        Ok(found) => ctx = found,
                        Err(e) => {
                            server_error(&conn, &device_id, &e);
                            return;
                        }
                    },
                    ServerMsg::Error {
                        code: ErrorCode::BadCode,
                        ..
                    } => shared.enroll_failed(remote_ip),
                    _ => {}
                }
                reply
            }
            (Ok(_), None) => ServerMsg::Error {
                code: ErrorCode::Unauthorized,
                message: "this device is not enrolled".into(),
            },
            // Every Sync counts, so one long-lived connection cannot get around the limit.
            (Ok(ClientMsg::Sync { .. }), Some(known)) if !shared.admit_round(&known.device_id) => {
                ServerMsg::Error {
                    code: ErrorCode::RateLimited,
                    message: format!(
                        "more than {} sync rounds in a minute; try again shortly",
                        shared.limits.max_rounds_per_minute
                    ),
                }
            }
            (Ok(msg), Some(known)) => {
                let pull_only = matches!(
                    msg,
                    ClientMsg::Sync {
                        batch: None,
                        pull: Some(_),
                        ..
                    }
                );
                let reply = serve_exchange(&shared, known, msg).await;
                if pull_only && matches!(reply, ServerMsg::SyncReply(_)) {
                    touch(&shared, known);
                }
                reply
            }
        };
        if !send_reply(send, &reply, exchange).await {
            return;
        }
    }
}

/// Who a connecting device is, as the server's tables say.
enum Lookup {
    /// Enrolled and not revoked.
    Enrolled(DeviceCtx),
    /// Never enrolled (or its user is gone): it may only send `Enroll`.
    Unknown,
    /// Enrolled once, revoked since.
    Revoked,
}

/// Looks the device up; a storage error stays an error, never "unknown".
fn look_up(shared: &Shared, device_id: &str) -> Result<Lookup, StoreError> {
    if let Some(ctx) = shared.store.device_ctx(device_id)? {
        return Ok(Lookup::Enrolled(ctx));
    }
    Ok(if shared.store.device_known(device_id)? {
        Lookup::Revoked
    } else {
        Lookup::Unknown
    })
}

/// Closes a connection whose device could not be looked up: the server's trouble, which the
/// device retries ([`close::SERVER_ERROR`]), never UNAUTHORIZED (which apps show as "enroll
/// again").
fn server_error(conn: &quinn::Connection, device_id: &str, e: &StoreError) {
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
    let frame = match protocol::encode_frame(reply) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode reply");
            return false;
        }
    };
    if send.write_all(&frame).await.is_err() || send.finish().is_err() {
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
    let (device, code) = (device_id.to_string(), code.to_string());
    let now = chrono::Utc::now().timestamp();
    let result = tokio::task::spawn_blocking(move || store.enroll(&code, &device, now)).await;
    match result {
        Ok(Ok((user, device))) => {
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

/// Reads one request frame; a stream that ends or breaks first is a truncated frame.
async fn read_request(
    recv: &mut quinn::RecvStream,
    limits: &Limits,
) -> Result<ClientMsg, protocol::ProtocolError> {
    transport::read_frame(recv, limits)
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
