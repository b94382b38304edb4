//! fieldsync-server: the QUIC sync server that keeps the merged truth in redb.
//!
//! A data folder holds `fieldsync.redb`, the server key `server.key` (PKCS#8 DER) and its
//! self-signed certificate `server.crt` (DER); devices pin the certificate's SHA-256.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod admission;
pub mod auth;
pub mod enrollment;
pub mod export;
pub mod http;
pub mod inflight;
pub mod office;
pub mod oplog;
pub mod session;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fieldsync_device::tls::{self, KeyAndCert};
use fieldsync_proto::protocol::{Limits, Outcome, PushResult};
use tokio::sync::watch;

pub use store::{ServerStore, StoreError};

const KEY_FILE: &str = "server.key";
const CERT_FILE: &str = "server.crt";

/// Why a data folder could not be initialised or opened.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// `init` was given a folder that already holds data.
    #[error("{0} already exists and is not empty; refusing to initialise it")]
    Exists(PathBuf),
    /// The folder is not a fieldsync data folder.
    #[error("{0} is not a fieldsync data folder (run `fieldsync-server init --data {0}` first)")]
    NotInitialised(PathBuf),
    /// Files could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An opened data folder: the store and the server's TLS identity.
pub struct DataDir {
    pub path: PathBuf,
    pub store: ServerStore,
    pub identity: KeyAndCert,
}

impl DataDir {
    /// Creates a new data folder; refuses one that already holds anything.
    pub fn init(path: &Path) -> Result<DataDir, DataError> {
        if path.exists() {
            let mut entries = std::fs::read_dir(path).map_err(io_err(path))?;
            if entries.next().is_some() {
                return Err(DataError::Exists(path.to_path_buf()));
            }
        }
        std::fs::create_dir_all(path).map_err(io_err(path))?;
        let identity = KeyAndCert::generate(fieldsync_proto::protocol::SERVER_NAME)?;
        write_private(&path.join(KEY_FILE), &identity.key_pkcs8)?;
        let cert_path = path.join(CERT_FILE);
        std::fs::write(&cert_path, &identity.cert).map_err(io_err(&cert_path))?;
        let store = ServerStore::open(path)?;
        Ok(DataDir {
            path: path.to_path_buf(),
            store,
            identity,
        })
    }

    /// Opens an existing data folder.
    pub fn open(path: &Path) -> Result<DataDir, DataError> {
        let key_path = path.join(KEY_FILE);
        let cert_path = path.join(CERT_FILE);
        if !key_path.exists() || !cert_path.exists() {
            return Err(DataError::NotInitialised(path.to_path_buf()));
        }
        let key_pkcs8 = std::fs::read(&key_path).map_err(io_err(&key_path))?;
        let cert = std::fs::read(&cert_path).map_err(io_err(&cert_path))?;
        let store = ServerStore::open(path)?;
        Ok(DataDir {
            path: path.to_path_buf(),
            store,
            identity: KeyAndCert { key_pkcs8, cert },
        })
    }

    /// Whether `path` has been initialised as a data folder.
    pub fn is_initialised(path: &Path) -> bool {
        path.join(KEY_FILE).exists()
    }

    /// The SHA-256 of the server certificate, as devices pin it (64 hex digits).
    pub fn fingerprint(&self) -> String {
        hex::encode(tls::fingerprint(&self.identity.cert))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io_err(path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err(path))
}

/// Counters for the people who run the server.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub connections_open: AtomicU64,
    /// Connections and handshakes closed at once for want of a slot (see [`admission`]).
    pub connections_busy: AtomicU64,
    pub rounds: AtomicU64,
    pub records_accepted: AtomicU64,
    pub records_refused: AtomicU64,
    /// Pushed records put off because of the server's own trouble with them (each round
    /// they are pushed again counts again): anything above zero wants an operator's look.
    pub records_deferred: AtomicU64,
    pub commits: AtomicU64,
    pub commit_micros_total: AtomicU64,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn record_commit(&self, took: Duration, rounds: usize) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.rounds.fetch_add(rounds as u64, Ordering::Relaxed);
        self.commit_micros_total
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn record_results(&self, results: &[PushResult]) {
        for r in results {
            match r.outcome {
                Outcome::Accepted { .. } => self.records_accepted.fetch_add(1, Ordering::Relaxed),
                Outcome::Refused { .. } => self.records_refused.fetch_add(1, Ordering::Relaxed),
                Outcome::Deferred { .. } => self.records_deferred.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

/// A bound QUIC endpoint ready for [`session::run`].
pub fn bind(
    identity: &KeyAndCert,
    addr: SocketAddr,
    limits: &Limits,
) -> Result<quinn::Endpoint, DataError> {
    let tls = tls::server_config(identity)?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| DataError::Tls(tls::TlsError::Certificate(e.to_string())))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(fieldsync_device::transport::server_transport(
        limits.max_frame_bytes,
    )));
    // Every phone reconnects when the signal comes back: a large socket buffer keeps bursts of
    // handshakes from being dropped, and the accept queue (not the kernel) does the waiting.
    let socket = std::net::UdpSocket::bind(addr).map_err(io_err(Path::new("socket")))?;
    let sock = socket2_buffers(socket);
    let runtime = quinn::default_runtime()
        .ok_or_else(|| DataError::Tls(tls::TlsError::Certificate("no async runtime".into())))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        sock,
        runtime,
    )
    .map_err(io_err(Path::new("endpoint")))
}

fn socket2_buffers(socket: std::net::UdpSocket) -> std::net::UdpSocket {
    // Best effort: the kernel caps these at net.core.rmem_max / wmem_max.
    let sock = socket2::Socket::from(socket);
    let _ = sock.set_recv_buffer_size(8 << 20);
    let _ = sock.set_send_buffer_size(8 << 20);
    sock.into()
}

/// How long [`Running::storage_failed`] waits for the replies in flight to reach their devices.
pub const REPLY_DRAIN: Duration = Duration::from_secs(5);

/// A running server: its bound addresses and a handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    /// The dashboard and API address, when HTTP is served.
    pub http_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub shared: Arc<session::Shared>,
    shutdown: watch::Sender<bool>,
    fatal: watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
    http_task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Waits until storage fails in a way only a restart mends; returns what failed.
    ///
    /// Returns once the replies of the exchanges in flight (the rounds caught in the failed
    /// commit among them) have reached their devices, or [`REPLY_DRAIN`] has passed, so a
    /// caller that then stops the server does not cut those storage errors off with "server
    /// shutting down".
    pub async fn storage_failed(&mut self) -> String {
        let failure = match self.fatal.wait_for(Option::is_some).await {
            Ok(failure) => failure.clone(),
            Err(_) => None,
        };
        match failure {
            Some(failure) => {
                if !self.shared.inflight.drained(REPLY_DRAIN).await {
                    tracing::warn!(
                        exchanges = self.shared.inflight.count(),
                        "replies still in flight when stopping for the storage failure"
                    );
                }
                failure
            }
            // The server is gone; nothing more will fail.
            None => std::future::pending().await,
        }
    }

    /// Stops accepting, lets in-flight commits finish, and waits until the sync address is
    /// free again.
    ///
    /// quinn's endpoint driver task releases the UDP socket a moment after the endpoint is
    /// dropped; a server restarted in the same process (an embedding app, the tests) on the same
    /// address would otherwise find it still in use. The wait is bounded (2 s).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        if let Some(http) = self.http_task {
            let _ = http.await;
        }
        let started = std::time::Instant::now();
        while std::net::UdpSocket::bind(self.addr).is_err()
            && started.elapsed() < std::time::Duration::from_secs(2)
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// How to serve: where, and with which limits.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The QUIC sync address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The dashboard and API address; None serves no HTTP.
    pub http: Option<SocketAddr>,
    pub limits: Limits,
    /// Cookies without `Secure`, for plain HTTP on a trusted network.
    pub insecure_cookies: bool,
    /// Connections the dashboard serves at once, and how long one may idle.
    pub http_limits: http::conn::HttpLimits,
    /// Caps on the sync connections per class, address and device.
    pub admission: admission::AdmissionLimits,
}

impl ServeOptions {
    /// QUIC only, on `listen`, with default limits.
    pub fn quic(listen: SocketAddr) -> ServeOptions {
        ServeOptions {
            listen,
            http: None,
            limits: Limits::default(),
            insecure_cookies: false,
            http_limits: http::conn::HttpLimits::default(),
            admission: admission::AdmissionLimits::default(),
        }
    }
}

/// Starts serving `data` on `addr` (port 0 picks a free port) in the current tokio runtime.
pub fn start(data: &DataDir, addr: SocketAddr, limits: Limits) -> Result<Running, DataError> {
    start_store(data.store.clone(), &data.identity, addr, limits)
}

/// Starts serving `store` with the TLS identity `identity`.
pub fn start_store(
    store: ServerStore,
    identity: &KeyAndCert,
    addr: SocketAddr,
    limits: Limits,
) -> Result<Running, DataError> {
    let options = ServeOptions {
        limits,
        ..ServeOptions::quic(addr)
    };
    start_with(store, identity, options)
}

/// Starts the QUIC sync server and, if asked, the dashboard and API beside it.
pub fn start_with(
    store: ServerStore,
    identity: &KeyAndCert,
    options: ServeOptions,
) -> Result<Running, DataError> {
    let endpoint = bind(identity, options.listen, &options.limits)?;
    let local = endpoint.local_addr().map_err(io_err(Path::new("socket")))?;
    let http_listener = match options.http {
        Some(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(io_err(Path::new("http socket")))?;
            Some(listener)
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let (fatal_tx, fatal) = watch::channel(None);
    let shared = Arc::new(session::Shared::new(
        store,
        options.limits,
        options.admission,
        metrics.clone(),
        fatal_tx,
    ));
    let (shutdown, rx) = watch::channel(false);
    let mut http_addr = None;
    let http_task = match http_listener {
        Some(listener) => {
            http_addr = Some(
                listener
                    .local_addr()
                    .map_err(io_err(Path::new("http socket")))?,
            );
            let state = Arc::new(http::HttpState {
                shared: shared.clone(),
                sync_addr: local,
                fingerprint: hex::encode(tls::fingerprint(&identity.cert)),
                secure_cookies: !options.insecure_cookies,
            });
            Some(tokio::spawn(http::run(
                listener,
                options.http_limits,
                state,
                rx.clone(),
            )))
        }
        None => None,
    };
    let task = tokio::spawn(session::run(endpoint, shared.clone(), rx));
    Ok(Running {
        addr: local,
        http_addr,
        metrics,
        shared,
        shutdown,
        fatal,
        task,
        http_task,
    })
}
