//! Sync over a bad link: real QUIC through the in-process impaired socket (`fieldsync_tests::
//! link`), a real server and real redb files on both ends.
//!
//! What the field does to a round: the signal drops for tens of seconds, replies are lost,
//! one packet in three goes missing. Each test shows one of these ending well in one `sync`
//! (or `enroll`) call, with nothing stored twice and little sent twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fieldsync_device::client::{self, SyncOptions};
use fieldsync_proto::Role;
use fieldsync_proto::sync::BatchLimits;
use fieldsync_tests::link::{ImpairedSocket, LinkConfig};
use fieldsync_tests::{Phone, TestServer, text};

fn options(socket: Arc<ImpairedSocket>, deadline: Duration) -> SyncOptions {
    SyncOptions {
        deadline,
        socket: Some(socket),
        ..SyncOptions::default()
    }
}

fn impaired(config: LinkConfig) -> Arc<ImpairedSocket> {
    ImpairedSocket::bind("127.0.0.1:0".parse().expect("addr"), config).expect("impaired socket")
}

/// A volunteer's day of work: 50 check-ins, 10 of them edited.
fn day_of_work(phone: &Phone) -> Vec<String> {
    let ids: Vec<String> = (0..50)
        .map(|i| phone.check_in("team:1", &format!("第{i}次活动")))
        .collect();
    for id in &ids[..10] {
        phone.set(id, &[("note", text("补充说明"))]);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_rides_out_a_20_second_outage_in_one_sync() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let mut server = TestServer::start(root);
    let phone = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;
    let ids = day_of_work(&phone);

    let link = impaired(
        LinkConfig::clean()
            .with_rate(256_000)
            .with_delay(Duration::from_millis(100), Duration::from_millis(20))
            .with_loss(0.05)
            .with_seed(9),
    );
    let handle = link.handle();
    // The signal goes the moment the first batch is acknowledged: the rest of the round
    // happens across the outage.
    let cut = AtomicBool::new(false);
    let mut progress = |p: fieldsync_proto::sync::Progress| {
        if p.sent > 0 && !cut.swap(true, Ordering::SeqCst) {
            handle.outage_now(Duration::from_secs(20));
        }
    };
    let (report, _) = client::sync_with(
        &phone.store,
        &options(link.clone(), Duration::from_secs(90)),
        &mut progress,
    )
    .await
    .expect("the round finishes within its deadline, across the outage");

    assert!(cut.load(Ordering::SeqCst), "the outage happened mid-round");
    assert!(
        link.handle().stats().up.dropped_outage + link.handle().stats().down.dropped_outage > 0,
        "the outage dropped traffic"
    );
    assert_eq!(report.sent, 50);
    assert_eq!(phone.store.pending_count().expect("pending"), 0);
    let batch = BatchLimits::default().max_docs;
    assert!(
        (50..=50 + batch).contains(&report.pushed),
        "acknowledged batches are never sent again; at most the one in flight is: {} pushed",
        report.pushed
    );
    let held = server.records();
    assert_eq!(held.len(), 50, "every record once");
    for id in &ids {
        let receipts = server
            .dir
            .store
            .receipts(uuid::Uuid::parse_str(id).expect("uuid"))
            .expect("receipts");
        assert_eq!(receipts.len(), 1, "stored once");
    }
    for id in &ids[..10] {
        assert_eq!(held[id].fields["note"], text("补充说明"), "edits arrived");
    }
    server.running.take().expect("running").stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_push_reply_costs_at_most_one_batch() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let mut server = TestServer::start(root);
    let phone = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;
    day_of_work(&phone);

    // 300 ms each way: the last batch's reply is still on the link when the server has
    // committed; an outage longer than the (shortened) idle timeout then kills the connection,
    // so the reply is truly lost and the round must send the batch again on a new one.
    let link = impaired(LinkConfig::clean().with_delay(Duration::from_millis(300), Duration::ZERO));
    let store = server.dir.store.clone();
    let watcher = outage_once(&link, move || {
        store.records(None, None).map(|r| r.len()).unwrap_or(0) == 50
    });
    let options = SyncOptions {
        idle_timeout: Duration::from_secs(2),
        ..options(link.clone(), Duration::from_secs(60))
    };
    let (report, _) = client::sync_with(&phone.store, &options, &mut |_| {})
        .await
        .expect("the round finishes on a new connection");
    assert!(
        watcher.await.expect("watcher"),
        "the server committed everything"
    );
    assert!(
        report.connections >= 2,
        "the lost reply cost the connection: {} connections",
        report.connections
    );
    let batch = BatchLimits::default().max_docs;
    assert!(
        report.pushed > 50 && report.pushed <= 50 + batch,
        "exactly the unanswered batch was sent again: {} pushed",
        report.pushed
    );
    assert_eq!(report.sent, 50);
    assert_eq!(phone.store.pending_count().expect("pending"), 0);
    assert_eq!(server.records().len(), 50, "nothing stored twice");
    server.running.take().expect("running").stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_enrollment_reply_then_a_retry_ends_enrolled() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let mut server = TestServer::start(root);
    let code = server.code("zhang3", Role::Volunteer, &["team:1"]);
    let addr = server.addr().to_string();
    let fingerprint = server.dir.fingerprint();

    // The phone as it was before enrolling: its key, no enrollment.
    let path = root.join("phone");
    let before = root.join("phone-before");
    drop(Phone::open(&path));
    copy_dir(&path, &before);

    // The server takes the code, but the phone never hears back (its store is put back as it
    // was, so it still says not enrolled, with the same key).
    let phone = Phone::open(&path);
    let first = client::enroll(&phone.store, &addr, &fingerprint, &code)
        .await
        .expect("first enrollment");
    drop(phone);
    std::fs::remove_dir_all(&path).expect("remove");
    copy_dir(&before, &path);
    let phone = Phone::open(&path);
    assert!(phone.store.enrollment().expect("enrollment").is_none());

    // Trying again with the same code ends enrolled, as the same device and user.
    let again = client::enroll(&phone.store, &addr, &fingerprint, &code)
        .await
        .expect("the same code from the same device is answered again");
    assert_eq!(again.device_id, first.device_id);
    assert_eq!(again.user_id, "zhang3");
    assert_eq!(again.scopes, first.scopes);
    phone.check_in("team:1", "清洁家园");
    assert_eq!(phone.sync().await.expect("sync").sent, 1);

    // Another phone (another key) with that used code is still refused.
    let other = Phone::open(&root.join("other"));
    match client::enroll(&other.store, &addr, &fingerprint, &code).await {
        Err(client::ClientError::Refused { code, message }) => {
            assert_eq!(code, fieldsync_proto::protocol::ErrorCode::BadCode);
            assert!(message.contains("already used"), "{message}");
        }
        other => panic!("a used code enrolled another device: {other:?}"),
    }
    server.running.take().expect("running").stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_rides_out_an_outage_after_the_server_took_the_code() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let mut server = TestServer::start(root);
    let code = server.code("li4", Role::Volunteer, &["team:1"]);
    let phone = Phone::open(&root.join("phone"));
    let device = phone.store.device_id();
    let link = impaired(LinkConfig::clean().with_delay(Duration::from_millis(300), Duration::ZERO));
    let store = server.dir.store.clone();
    let watcher = outage_once(&link, move || store.device_known(&device).unwrap_or(false));
    let options = SyncOptions {
        idle_timeout: Duration::from_secs(2),
        ..options(link, Duration::from_secs(60))
    };
    let info = client::enroll_with(
        &phone.store,
        &server.addr().to_string(),
        &server.dir.fingerprint(),
        &code,
        &options,
    )
    .await
    .expect("enrolled despite the lost reply");
    assert!(watcher.await.expect("watcher"), "the server took the code");
    assert_eq!(info.user_id, "li4");
    assert!(phone.store.enrollment().expect("enrollment").is_some());
    server.running.take().expect("running").stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_and_rounds_complete_at_30_percent_loss() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let mut server = TestServer::start(root);
    // One seed: at 30 % loss each way a handshake takes tens of seconds of probe timeouts.
    for seed in [1u64] {
        let user = format!("v{seed}");
        let code = server.code(&user, Role::Volunteer, &["team:1"]);
        let phone = Phone::open(&root.join(&user));
        let lossy = || {
            impaired(
                LinkConfig::clean()
                    .with_delay(Duration::from_millis(50), Duration::from_millis(10))
                    .with_loss(0.3)
                    .with_seed(seed),
            )
        };
        client::enroll_with(
            &phone.store,
            &server.addr().to_string(),
            &server.dir.fingerprint(),
            &code,
            &options(lossy(), Duration::from_secs(120)),
        )
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: enrollment at 30 % loss: {e}"));
        for i in 0..5 {
            phone.check_in("team:1", &format!("活动{i}"));
        }
        let (report, _) = client::sync_with(
            &phone.store,
            &options(lossy(), Duration::from_secs(120)),
            &mut |_| {},
        )
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: sync at 30 % loss: {e}"));
        assert_eq!(report.sent, 5, "seed {seed}");
    }
    assert_eq!(server.records().len(), 5);
    server.running.take().expect("running").stop().await;
}

/// Cuts the link for 4 s the moment `happened` turns true (checked every 2 ms, for 6 s at
/// most); the task's result says whether it did.
fn outage_once(
    link: &ImpairedSocket,
    happened: impl Fn() -> bool + Send + 'static,
) -> tokio::task::JoinHandle<bool> {
    let handle = link.handle();
    tokio::spawn(async move {
        for _ in 0..3000 {
            if happened() {
                handle.outage_now(Duration::from_secs(4));
                return true;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        false
    })
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}
