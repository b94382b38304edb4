//! The background sync's state machine with scripted rounds on tokio's paused clock: each
//! round announces itself to the test and waits for the outcome the test sends it, so the
//! tests decide what every round does and when, and time moves only when all is idle.

use super::*;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

type Outcome = Result<SyncReport, FieldSyncError>;

/// A round under way, as the test sees it.
struct Started {
    reporter: Reporter,
    finish: oneshot::Sender<Outcome>,
    at: Instant,
}

/// A round that tells the test it started and ends with what the test sends it.
fn scripted() -> (impl Round, mpsc::UnboundedReceiver<Started>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let round = move |reporter: Reporter| {
        let tx = tx.clone();
        async move {
            let (finish, outcome) = oneshot::channel();
            let started = Started {
                reporter,
                finish,
                at: Instant::now(),
            };
            if tx.send(started).is_err() {
                return Err(network("the test is gone"));
            }
            outcome
                .await
                .unwrap_or_else(|_| Err(network("the test dropped the round")))
        }
    };
    (round, rx)
}

#[derive(Default)]
struct Recorder(Mutex<Vec<SyncState>>);

impl SyncStateListener for Recorder {
    fn on_state(&self, state: SyncState) {
        self.0.lock().unwrap().push(state);
    }
}

impl Recorder {
    fn states(&self) -> Vec<SyncState> {
        self.0.lock().unwrap().clone()
    }
}

/// The wall clock the tests' `at_unix_ms` is counted in: a fixed epoch plus paused time.
const T0_MS: i64 = 1_800_000_000_000;

fn unix_ms(base: Instant, at: Instant) -> i64 {
    T0_MS + i64::try_from((at - base).as_millis()).unwrap()
}

/// Retries after 10 s, doubling up to 40 s; every draw at the bottom of its range, so the
/// waits are exactly 5, 10, 20, 20, … s.
fn timing(base: Instant) -> Timing {
    Timing {
        first_retry: secs(10),
        max_retry: secs(40),
        draw: Box::new(|| 0.0),
        now_unix_ms: Box::new(move || unix_ms(base, Instant::now())),
    }
}

fn start(round: impl Round) -> (BackgroundSync, Arc<Recorder>, Instant) {
    let recorder = Arc::new(Recorder::default());
    let base = Instant::now();
    let sync = BackgroundSync::start(&Handle::current(), round, recorder.clone(), timing(base));
    (sync, recorder, base)
}

/// Lets every task run until all wait (the paused clock moves 1 ms).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn network(message: &str) -> FieldSyncError {
    FieldSyncError::Network {
        message: message.into(),
    }
}

fn report(sent: u64) -> SyncReport {
    SyncReport {
        sent,
        received: 0,
        refused: vec![],
        deferred: vec![],
        exchanges: 1,
        connections: 1,
        pushed: sent,
    }
}

fn progress(sent: u64, to_send: u64, received: u64, to_receive: u64) -> SyncProgress {
    SyncProgress {
        sent,
        to_send,
        received,
        to_receive,
    }
}

const IDLE: SyncState = SyncState::Idle { last: None };

fn syncing(p: SyncProgress) -> SyncState {
    SyncState::Syncing { progress: p }
}

fn idle(sent: u64) -> SyncState {
    SyncState::Idle {
        last: Some(report(sent)),
    }
}

#[tokio::test(start_paused = true)]
async fn requests_during_a_round_make_exactly_one_more_round() {
    let (round, mut rounds) = scripted();
    let (sync, recorder, _) = start(round);
    tokio::time::sleep(secs(3600)).await;
    assert!(
        rounds.try_recv().is_err(),
        "nothing runs until the app asks"
    );
    assert_eq!(recorder.states(), [IDLE]);

    sync.request_sync();
    let first = rounds.recv().await.unwrap();
    for _ in 0..5 {
        sync.request_sync();
    }
    tokio::time::sleep(secs(60)).await;
    assert!(rounds.try_recv().is_err(), "a second round while one runs");
    first.finish.send(Ok(report(1))).unwrap();
    let second = rounds.recv().await.unwrap();
    settle().await;
    assert!(rounds.try_recv().is_err(), "a third round while one runs");
    second.finish.send(Ok(report(2))).unwrap();
    tokio::time::sleep(secs(3600)).await;
    assert!(
        rounds.try_recv().is_err(),
        "five requests during a round make one more round, not five"
    );
    let zero = SyncProgress::default();
    assert_eq!(
        recorder.states(),
        [IDLE, syncing(zero), idle(1), syncing(zero), idle(2)]
    );
    assert_eq!(sync.state(), idle(2));

    // Idle again: the next request runs a round at once.
    sync.request_sync();
    rounds
        .recv()
        .await
        .unwrap()
        .finish
        .send(Ok(report(0)))
        .unwrap();
    settle().await;
    assert_eq!(sync.state(), idle(0));
}

#[tokio::test(start_paused = true)]
async fn a_round_s_progress_is_its_syncing_state() {
    let (round, mut rounds) = scripted();
    let (sync, recorder, _) = start(round);
    sync.request_sync();
    let r = rounds.recv().await.unwrap();
    r.reporter.progress(progress(0, 3, 0, 0));
    r.reporter.progress(progress(2, 3, 0, 4));
    assert_eq!(sync.state(), syncing(progress(2, 3, 0, 4)));
    r.reporter.progress(progress(3, 3, 4, 4));
    r.finish.send(Ok(report(3))).unwrap();
    settle().await;
    assert_eq!(
        recorder.states(),
        [
            IDLE,
            syncing(SyncProgress::default()),
            syncing(progress(0, 3, 0, 0)),
            syncing(progress(2, 3, 0, 4)),
            syncing(progress(3, 3, 4, 4)),
            idle(3),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn network_failures_wait_with_a_capped_backoff_and_retry_on_their_own() {
    let (round, mut rounds) = scripted();
    let (sync, recorder, base) = start(round);
    sync.request_sync();
    let mut r = rounds.recv().await.unwrap();
    let mut expected_at = vec![];
    for wait in [5, 10, 20, 20, 20] {
        let failed_at = Instant::now();
        r.finish.send(Err(network("no route to host"))).unwrap();
        settle().await;
        let at = unix_ms(base, failed_at + secs(wait));
        assert_eq!(
            sync.state(),
            SyncState::WaitingToRetry {
                at_unix_ms: at,
                reason: "no route to host".into()
            }
        );
        expected_at.push(at);
        // No request: the next round starts on its own, exactly when it said it would.
        r = rounds.recv().await.unwrap();
        assert_eq!(r.at - failed_at, secs(wait), "wait after a failure");
    }
    let waiting: Vec<i64> = recorder
        .states()
        .into_iter()
        .filter_map(|s| match s {
            SyncState::WaitingToRetry { at_unix_ms, .. } => Some(at_unix_ms),
            SyncState::Failed { .. } => panic!("a network failure failed: {s:?}"),
            _ => None,
        })
        .collect();
    assert_eq!(waiting, expected_at);

    // The signal is back: the round succeeds, and the backoff starts afresh.
    r.finish.send(Ok(report(2))).unwrap();
    settle().await;
    assert_eq!(sync.state(), idle(2));
    tokio::time::sleep(secs(3600)).await;
    assert!(rounds.try_recv().is_err(), "a success is not retried");
    sync.request_sync();
    let r = rounds.recv().await.unwrap();
    let failed_at = Instant::now();
    r.finish.send(Err(network("gone again"))).unwrap();
    let r = rounds.recv().await.unwrap();
    assert_eq!(
        r.at - failed_at,
        secs(5),
        "the first wait again after a success"
    );
}

/// The server's own trouble (storage failed, restarting, too many syncs) waits and retries
/// on its own like a lost signal, sharing its backoff; it never ends as `Failed`.
#[tokio::test(start_paused = true)]
async fn server_trouble_is_retried_like_the_network() {
    let (round, mut rounds) = scripted();
    let (sync, recorder, base) = start(round);
    sync.request_sync();
    let mut r = rounds.recv().await.unwrap();
    let unavailable = |message: &str| FieldSyncError::ServerUnavailable {
        message: message.into(),
    };
    for (wait, error) in [
        (5, unavailable("storage failed: disk full")),
        (10, network("no signal")),
        (20, unavailable("more than 120 sync rounds in a minute")),
    ] {
        let failed_at = Instant::now();
        let reason = error.to_string();
        r.finish.send(Err(error)).unwrap();
        settle().await;
        assert_eq!(
            sync.state(),
            SyncState::WaitingToRetry {
                at_unix_ms: unix_ms(base, failed_at + secs(wait)),
                reason
            }
        );
        r = rounds.recv().await.unwrap();
        assert_eq!(r.at - failed_at, secs(wait), "retried on its own");
    }
    r.finish.send(Ok(report(1))).unwrap();
    settle().await;
    assert_eq!(sync.state(), idle(1));
    assert!(
        !recorder
            .states()
            .iter()
            .any(|s| matches!(s, SyncState::Failed { .. })),
        "{:?}",
        recorder.states()
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_while_waiting_to_retry_runs_the_round_at_once() {
    let (round, mut rounds) = scripted();
    let (sync, _recorder, _) = start(round);
    sync.request_sync();
    let r = rounds.recv().await.unwrap();
    r.finish.send(Err(network("no signal"))).unwrap();
    tokio::time::sleep(secs(2)).await;
    assert!(matches!(sync.state(), SyncState::WaitingToRetry { .. }));
    // Connectivity came back after 2 s of the 5 s wait: the app asks.
    let asked = Instant::now();
    sync.request_sync();
    let r = rounds.recv().await.unwrap();
    assert_eq!(r.at, asked, "the round runs at once");
    r.finish.send(Ok(report(1))).unwrap();
    tokio::time::sleep(secs(3600)).await;
    assert!(
        rounds.try_recv().is_err(),
        "the retry timer went with the round it was for"
    );
    assert_eq!(sync.state(), idle(1));
}

#[tokio::test(start_paused = true)]
async fn answers_of_the_server_and_local_trouble_fail_and_are_not_retried() {
    let (round, mut rounds) = scripted();
    let (sync, recorder, _) = start(round);
    type Make = fn(String) -> FieldSyncError;
    let cases: [(Make, SyncFailure); 6] = [
        (
            |message| FieldSyncError::Unauthorized { message },
            SyncFailure::Unauthorized,
        ),
        (
            |message| FieldSyncError::Certificate { message },
            SyncFailure::Certificate,
        ),
        (
            |message| FieldSyncError::Refused { message },
            SyncFailure::Refused,
        ),
        (
            |message| FieldSyncError::NotEnrolled { message },
            SyncFailure::NotEnrolled,
        ),
        (
            |message| FieldSyncError::Storage { message },
            SyncFailure::Storage,
        ),
        (
            |message| FieldSyncError::InvalidInput { message },
            SyncFailure::Storage,
        ),
    ];
    for (error, kind) in cases {
        // A network failure first, so a retry is scheduled that the answer must cancel.
        sync.request_sync();
        let r = rounds.recv().await.unwrap();
        r.finish.send(Err(network("no signal"))).unwrap();
        let r = rounds.recv().await.unwrap();
        let reason = format!("{kind:?} says no");
        r.finish.send(Err(error(reason.clone()))).unwrap();
        tokio::time::sleep(secs(24 * 3600)).await;
        assert!(rounds.try_recv().is_err(), "{kind:?} was retried");
        assert_eq!(sync.state(), SyncState::Failed { kind, reason });
    }
    // Failed waits for the app: the next request runs a round, and it can succeed.
    sync.request_sync();
    rounds
        .recv()
        .await
        .unwrap()
        .finish
        .send(Ok(report(1)))
        .unwrap();
    settle().await;
    assert_eq!(recorder.states().last(), Some(&idle(1)));
}

#[tokio::test(start_paused = true)]
async fn stop_cuts_the_round_off_and_nothing_runs_or_reports_after_it() {
    let (round, mut rounds) = scripted();
    let (sync, recorder, _) = start(round);
    sync.request_sync();
    let r = rounds.recv().await.unwrap();
    r.reporter.progress(progress(0, 2, 0, 0));
    sync.stop();
    settle().await;
    assert!(r.finish.is_closed(), "the round in flight was dropped");
    let seen = recorder.states();
    r.reporter.progress(progress(1, 2, 0, 0));
    sync.request_sync();
    sync.stop();
    tokio::time::sleep(secs(3600)).await;
    assert_eq!(
        recorder.states(),
        seen,
        "the listener was called after stop"
    );
    // The worker is gone, and with it the round (its end of the channel).
    assert!(rounds.recv().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_stops_a_pending_retry() {
    let (round, mut rounds) = scripted();
    let (sync, recorder, _) = start(round);
    sync.request_sync();
    rounds
        .recv()
        .await
        .unwrap()
        .finish
        .send(Err(network("no signal")))
        .unwrap();
    settle().await;
    assert!(matches!(sync.state(), SyncState::WaitingToRetry { .. }));
    let seen = recorder.states();
    drop(sync);
    assert!(rounds.recv().await.is_none(), "the worker ended");
    assert_eq!(recorder.states(), seen);
}

#[test]
fn options_are_checked_and_the_store_round_runs_on_the_sync_thread() {
    let dir = tempfile::tempdir().unwrap();
    let store = FieldStore::open(dir.path().to_string_lossy().into_owned()).unwrap();
    let recorder = Arc::new(Recorder::default());
    let bad = [
        BackgroundSyncOptions {
            deadline_seconds: Some(0),
            ..BackgroundSyncOptions::default()
        },
        BackgroundSyncOptions {
            first_retry_seconds: 0,
            ..BackgroundSyncOptions::default()
        },
        BackgroundSyncOptions {
            first_retry_seconds: 60,
            max_retry_seconds: 30,
            ..BackgroundSyncOptions::default()
        },
    ];
    for options in bad {
        let result = BackgroundSync::new(store.clone(), recorder.clone(), Some(options.clone()));
        assert!(
            matches!(result, Err(FieldSyncError::InvalidInput { .. })),
            "{options:?}"
        );
    }

    // The real round over the store, without a server: an unenrolled phone fails at once.
    let sync = BackgroundSync::new(store.clone(), recorder.clone(), None).unwrap();
    sync.request_sync();
    let started = std::time::Instant::now();
    while !matches!(sync.state(), SyncState::Failed { .. }) {
        assert!(started.elapsed() < secs(20), "still {:?}", sync.state());
        std::thread::sleep(Duration::from_millis(10));
    }
    let SyncState::Failed { kind, reason } = sync.state() else {
        unreachable!()
    };
    assert_eq!(kind, SyncFailure::NotEnrolled);
    assert!(reason.contains("enroll"), "{reason}");
    assert_eq!(
        recorder.states(),
        [
            IDLE,
            syncing(SyncProgress::default()),
            SyncState::Failed { kind, reason }
        ]
    );
    sync.stop();
}

#[test]
fn jitter_draws_are_spread_over_the_unit_range() {
    let draws: Vec<f64> = (0..1000).map(|_| random_unit()).collect();
    assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
    let low = draws.iter().filter(|d| **d < 0.5).count();
    assert!((350..650).contains(&low), "{low} of 1000 below 0.5");
}
