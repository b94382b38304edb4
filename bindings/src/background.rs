//! Background sync: the rounds an app runs without the user, one at a time, and their state
//! for the UI.
//!
//! A phone in the field loses its signal for minutes or days. The app should not make the user
//! press "sync" until it works: it creates one [`BackgroundSync`] per store, calls
//! `request_sync()` whenever a round is worth trying (the app starts, a record was saved,
//! connectivity came back, a timer it owns fired, the user pulled to refresh), and shows the
//! [`SyncState`] its listener gets.
//!
//! The state machine (one worker task per `BackgroundSync`, so never two rounds at once):
//!
//! ```text
//!              request                      round ok
//!   Idle ─────────────────▶ Syncing ───────────────────────▶ Idle { last: report }
//!    ▲                      │  ▲  │ Network (after the round's own reconnects),
//!    │                      │  │  │ ServerUnavailable (the server's own trouble)
//!    │                      │  │  └────────────────────────▶ WaitingToRetry { at, reason }
//!    │                      │  └── timer at `at`, or a request ◀──┘
//!    │                      │ Unauthorized, Certificate, Refused, NotEnrolled, Storage
//!    │                      └──────────────────────────────▶ Failed { kind, reason }
//!    └──────────── (Idle and Failed wait for the next request; nothing is retried on its own)
//! ```
//!
//! - Requests coalesce: any number of `request_sync()` calls during a round make exactly one
//!   more round after it; a request while waiting to retry runs the round at once.
//! - Only the retry class is retried on its own (`Network`; `ServerUnavailable`: the server's
//!   storage failed, it is restarting, it asked for fewer syncs), after a jittered, capped
//!   exponential backoff
//!   ([`Backoff`], the same schedule type the link uses between reconnects; here it runs
//!   between whole rounds, without a deadline, until the app stops the scheduler). The other
//!   failures are answers (revoked, wrong certificate, refused) or the phone's own trouble:
//!   trying again would get the same answer, so the state says what the user has to do.
//!   A success or such a failure starts the backoff afresh.
//! - `stop()` (or dropping the object) ends the worker: a round in flight is cut off, which
//!   loses nothing (a round cut off at any point is simply run again), and the listener is not
//!   called after `stop()` returns, except by a call already under way.
//!
//! Why here and not in `fieldsync-device`: when to retry and what to tell a screen is app
//! policy over core's `sync_with` (which already reconnects within a round); the CLI and the
//! tests' simulated devices run single rounds. The logic is kept apart from uniffi and from the
//! network ([`Round`], [`Timing`]) so its tests script round outcomes on tokio's paused clock.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldsync_proto::sync::Backoff;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::types::{SyncProgress, SyncReport};
use crate::{FieldStore, FieldSyncError};

/// What the background sync is doing, as the UI shows it.
#[derive(Clone, Debug, PartialEq, uniffi::Enum)]
pub enum SyncState {
    /// Nothing running; waits for `request_sync()`. `last` is the report of the last round,
    /// if one ran and succeeded since the scheduler was created.
    Idle { last: Option<SyncReport> },
    /// A round is running. Starts at all zeros, then counts as the round goes (across
    /// reconnects, the totals known once the round has read what is pending).
    Syncing { progress: SyncProgress },
    /// The last round could not reach the server (no signal, or it vanished) within its
    /// deadline, or the server could not take it (its own trouble; `reason` says which); the
    /// next one starts on its own at `at_unix_ms` (ms since the Unix epoch), or at once on
    /// `request_sync()`. Nothing is lost: the records wait as pending.
    WaitingToRetry { at_unix_ms: i64, reason: String },
    /// The last round got an answer that trying again will not change; `kind` says what the
    /// user has to do. Not retried on its own: the next `request_sync()` runs a round again.
    Failed { kind: SyncFailure, reason: String },
}

/// Why background sync stopped trying, by what the user has to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum SyncFailure {
    /// The phone is not enrolled: show the enrollment screen.
    NotEnrolled,
    /// The server does not know this phone, or it was revoked: enroll again with a new code.
    Unauthorized,
    /// The server did not present the certificate pinned at enrollment (a wrong fingerprint,
    /// or something posing as the server): nothing was sent; check the fingerprint with the
    /// office.
    Certificate,
    /// The server refused the round (another protocol version, a request too large or
    /// malformed): show the reason. The server's own trouble is never this: it is retried.
    Refused,
    /// The phone's own store failed.
    Storage,
}

impl SyncFailure {
    /// The kind of `error`, or `None` for the retry class, the failures worth retrying alone.
    pub(crate) fn of(error: &FieldSyncError) -> Option<SyncFailure> {
        match error {
            FieldSyncError::Network { .. } | FieldSyncError::ServerUnavailable { .. } => None,
            FieldSyncError::NotEnrolled { .. } => Some(SyncFailure::NotEnrolled),
            FieldSyncError::Unauthorized { .. } => Some(SyncFailure::Unauthorized),
            FieldSyncError::Certificate { .. } => Some(SyncFailure::Certificate),
            FieldSyncError::Refused { .. } => Some(SyncFailure::Refused),
            // A sync fails with these only when what the store holds is damaged (a stored
            // fingerprint that does not parse, say): the phone's storage, for the user.
            FieldSyncError::InvalidInput { .. }
            | FieldSyncError::NotFound { .. }
            | FieldSyncError::Storage { .. } => Some(SyncFailure::Storage),
        }
    }
}

/// Receives every state of a [`BackgroundSync`]; implemented by the app.
///
/// Called on the background sync's own thread, one call at a time and in order, never
/// concurrently: hop to the UI thread before touching views, and return quickly (a round's
/// progress waits for the call). It must not throw.
#[uniffi::export(with_foreign)]
pub trait SyncStateListener: Send + Sync {
    fn on_state(&self, state: SyncState);
}

/// How a [`BackgroundSync`] runs its rounds and waits between them.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct BackgroundSyncOptions {
    /// Each round's deadline, reconnects included (see `FieldStore.sync`); `None`: core's
    /// default, two minutes.
    #[uniffi(default = None)]
    pub deadline_seconds: Option<u32>,
    /// The wait after the first round lost to the network; it doubles after each further
    /// one, up to `max_retry_seconds`, each wait drawn from the upper half of its step.
    #[uniffi(default = 15)]
    pub first_retry_seconds: u32,
    /// The longest wait between two rounds lost to the network.
    #[uniffi(default = 300)]
    pub max_retry_seconds: u32,
}

impl Default for BackgroundSyncOptions {
    fn default() -> Self {
        BackgroundSyncOptions {
            deadline_seconds: None,
            first_retry_seconds: 15,
            max_retry_seconds: 300,
        }
    }
}

/// Runs sync rounds of one store in the background, one at a time, retrying lost connections
/// on its own; see the module docs for its states.
///
/// Create one per store when the app starts (it does nothing until asked), keep it, and
/// `stop()` it when the app goes away. It shares the store's one-round-at-a-time lock with
/// `FieldStore.sync`, so a manual `sync` waits for a background round and the other way round.
#[derive(uniffi::Object)]
pub struct BackgroundSync {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

#[uniffi::export]
impl BackgroundSync {
    /// A background sync of `store` that reports to `listener`; its state is `Idle` (the
    /// listener gets it first) until the first `request_sync()`.
    ///
    /// Fails with `InvalidInput` for a deadline or first retry of 0 s, or a longest retry
    /// shorter than the first; with `Storage` only if the system refuses the sync thread.
    #[uniffi::constructor(default(options = None))]
    pub fn new(
        store: Arc<FieldStore>,
        listener: Arc<dyn SyncStateListener>,
        options: Option<BackgroundSyncOptions>,
    ) -> Result<Arc<BackgroundSync>, FieldSyncError> {
        let options = options.unwrap_or_default();
        let deadline = crate::deadline(options.deadline_seconds)?;
        let timing = Timing::from_options(&options)?;
        let round = move |reporter: Reporter| {
            let store = Arc::clone(&store);
            async move { store.round(deadline, move |p| reporter.progress(p)).await }
        };
        Ok(Arc::new(BackgroundSync::start(
            runtime()?.handle(),
            round,
            listener,
            timing,
        )))
    }

    /// Asks for a round: now if none is running, else exactly one more after the one
    /// running (however often it is asked meanwhile). Never blocks; does nothing after
    /// `stop()`.
    pub fn request_sync(&self) {
        self.shared.requests.notify_one();
    }

    /// The current state (the one the listener got last).
    pub fn state(&self) -> SyncState {
        lock(&self.shared.state).clone()
    }

    /// Stops for good: cuts a running round off (nothing is lost), cancels a retry, and
    /// makes no more listener calls. Idempotent; dropping the object does the same.
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.stop.send_replace(true);
    }
}

impl BackgroundSync {
    /// Starts the worker on `runtime` with `round` as what a round does.
    pub(crate) fn start(
        runtime: &tokio::runtime::Handle,
        round: impl Round,
        listener: Arc<dyn SyncStateListener>,
        timing: Timing,
    ) -> BackgroundSync {
        let shared = Arc::new(Shared {
            state: Mutex::new(SyncState::Idle { last: None }),
            listener,
            requests: Notify::new(),
            stopped: AtomicBool::new(false),
        });
        let (stop, stopped) = watch::channel(false);
        runtime.spawn(work(round, Arc::clone(&shared), stopped, timing));
        BackgroundSync { shared, stop }
    }
}

impl Drop for BackgroundSync {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one round does: the store's sync in the app, a script in the tests.
pub(crate) trait Round: Send + 'static {
    fn run(
        &mut self,
        progress: Reporter,
    ) -> impl Future<Output = Result<SyncReport, FieldSyncError>> + Send;
}

impl<F, Fut> Round for F
where
    F: FnMut(Reporter) -> Fut + Send + 'static,
    Fut: Future<Output = Result<SyncReport, FieldSyncError>> + Send,
{
    fn run(
        &mut self,
        progress: Reporter,
    ) -> impl Future<Output = Result<SyncReport, FieldSyncError>> + Send {
        self(progress)
    }
}

/// How a round reports its progress: as `Syncing` states.
#[derive(Clone)]
pub(crate) struct Reporter(Arc<Shared>);

impl Reporter {
    pub(crate) fn progress(&self, progress: SyncProgress) {
        self.0.emit(SyncState::Syncing { progress });
    }
}

/// The retry schedule and the clock it reports in, injected so tests are exact.
pub(crate) struct Timing {
    pub(crate) first_retry: Duration,
    pub(crate) max_retry: Duration,
    /// Uniform draws in [0, 1) for the jitter.
    pub(crate) draw: Box<dyn FnMut() -> f64 + Send>,
    /// Now, in ms since the Unix epoch (what `WaitingToRetry.at_unix_ms` counts in).
    pub(crate) now_unix_ms: Box<dyn Fn() -> i64 + Send>,
}

impl Timing {
    fn from_options(options: &BackgroundSyncOptions) -> Result<Timing, FieldSyncError> {
        if options.first_retry_seconds == 0 {
            return Err(FieldSyncError::invalid(
                "first_retry_seconds must be at least 1: a retry without a wait would spin",
            ));
        }
        if options.max_retry_seconds < options.first_retry_seconds {
            return Err(FieldSyncError::invalid(format!(
                "max_retry_seconds ({}) is shorter than first_retry_seconds ({})",
                options.max_retry_seconds, options.first_retry_seconds
            )));
        }
        Ok(Timing {
            first_retry: Duration::from_secs(u64::from(options.first_retry_seconds)),
            max_retry: Duration::from_secs(u64::from(options.max_retry_seconds)),
            draw: Box::new(random_unit),
            now_unix_ms: Box::new(system_unix_ms),
        })
    }

    /// A backoff between whole rounds: no deadline, the app stops it.
    fn backoff(&self) -> Backoff {
        Backoff::new(self.first_retry, self.max_retry, Duration::MAX)
    }

    /// The wait before the next round after one more round lost to the network.
    fn next_wait(&mut self, backoff: &mut Backoff) -> Duration {
        // With no deadline there is always a next delay; the cap is the fallback regardless.
        backoff
            .next_delay(Duration::ZERO, (self.draw)())
            .unwrap_or(self.max_retry)
    }
}

/// What the handle and the worker share.
struct Shared {
    state: Mutex<SyncState>,
    listener: Arc<dyn SyncStateListener>,
    /// A permit per pending request, at most one: requests coalesce.
    requests: Notify,
    /// Set by `stop()` before the worker sees it: no listener call starts after that.
    stopped: AtomicBool,
}

impl Shared {
    /// Records `state` and tells the listener. Only the worker task calls this, so states
    /// reach the listener one at a time and in order.
    fn emit(&self, state: SyncState) {
        *lock(&self.state) = state.clone();
        if !self.stopped.load(Ordering::SeqCst) {
            self.listener.on_state(state);
        }
    }
}

/// The worker: waits for a request (or the retry timer), runs a round, records what came of
/// it; until stopped.
async fn work(
    mut round: impl Round,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut timing: Timing,
) {
    let mut backoff = timing.backoff();
    let mut retry_at: Option<Instant> = None;
    let first = lock(&shared.state).clone();
    shared.emit(first);
    loop {
        let retry_timer = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = stopped(&mut stop) => return,
            () = shared.requests.notified() => {}
            () = retry_timer => {}
        }
        retry_at = None;
        shared.emit(SyncState::Syncing {
            progress: SyncProgress::default(),
        });
        let outcome = tokio::select! {
            biased;
            () = stopped(&mut stop) => return,
            outcome = round.run(Reporter(Arc::clone(&shared))) => outcome,
        };
        let next = match outcome {
            Ok(report) => {
                backoff = timing.backoff();
                SyncState::Idle { last: Some(report) }
            }
            Err(error) => match SyncFailure::of(&error) {
                None => {
                    let wait = timing.next_wait(&mut backoff);
                    retry_at = Some(Instant::now() + wait);
                    SyncState::WaitingToRetry {
                        at_unix_ms: (timing.now_unix_ms)()
                            .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
                        reason: error.to_string(),
                    }
                }
                Some(kind) => {
                    backoff = timing.backoff();
                    SyncState::Failed {
                        kind,
                        reason: error.to_string(),
                    }
                }
            },
        };
        shared.emit(next);
    }
}

/// Resolves once `stop()` was called or the handle is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender (the handle) was dropped: stop as well.
    let _ = stop.wait_for(|stopped| *stopped).await;
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A listener that panicked mid-call poisons nothing worth refusing: the state is whole.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The one thread background syncs run on (all of them, for every store of the process).
fn runtime() -> Result<&'static tokio::runtime::Runtime, FieldSyncError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("fieldsync-background-sync")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| FieldSyncError::Storage {
            message: format!("cannot start the background sync thread: {e}"),
        })
}

/// A uniform draw in [0, 1) for the jitter, from the standard library's per-process random
/// keys (jitter needs spread between phones, not secrecy).
fn random_unit() -> f64 {
    let bits = RandomState::new().hash_one(system_unix_ms());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

fn system_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
