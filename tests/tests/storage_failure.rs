//! The server's storage fails mid-commit (a redb backend that refuses writes on demand): the
//! round is answered with a storage error of the retry class, nothing is acknowledged, nothing
//! committed before is lost, and after the server reopens its storage the phone's next round
//! lands everything once. Devices that connect while the storage is failed are told to try
//! again, never that they are unknown; and the rounds caught in a fatal failure get the
//! storage error before the server stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fieldsync_device::client::{self, ClientError, SyncOptions};
use fieldsync_device::tls::KeyAndCert;
use fieldsync_proto::Role;
use fieldsync_proto::protocol::{ErrorCode, Limits};
use fieldsync_server::store::User;
use fieldsync_server::{Running, ServerStore};
use fieldsync_tests::Phone;
use redb::ReadableTable;

/// Bytes in memory shared by every backend made from it, so a "restarted" server reopens what
/// the failed one left; writes and syncs fail while `fail` is set.
#[derive(Debug, Clone, Default)]
struct FlakyDisk {
    bytes: Arc<RwLock<Vec<u8>>>,
    fail: Arc<AtomicBool>,
}

impl FlakyDisk {
    /// Waits until no database holds this disk any more but the caller: a stopped server's
    /// commit thread lets go of its store a moment after `stop` returns, and two databases on
    /// one disk would corrupt it.
    async fn released(&self) {
        let started = std::time::Instant::now();
        while Arc::strong_count(&self.bytes) > 1 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the stopped server still holds its store"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn io_error(what: &str) -> std::io::Error {
    std::io::Error::other(format!("injected failure: {what}"))
}

impl redb::StorageBackend for FlakyDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.bytes.read().map_err(|_| io_error("lock"))?.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let bytes = self.bytes.read().map_err(|_| io_error("lock"))?;
        let start = offset as usize;
        let end = start + out.len();
        let src = bytes
            .get(start..end)
            .ok_or_else(|| io_error("read past end"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(io_error("set_len"));
        }
        self.bytes
            .write()
            .map_err(|_| io_error("lock"))?
            .resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(io_error("fsync"));
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(io_error("write"));
        }
        let mut bytes = self.bytes.write().map_err(|_| io_error("lock"))?;
        let start = offset as usize;
        let end = start + data.len();
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[start..end].copy_from_slice(data);
        Ok(())
    }
}

/// The ids of every record the store holds, in id order.
fn held_ids(store: &ServerStore) -> Vec<String> {
    store
        .records(None, None)
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect()
}

/// A server on a [`FlakyDisk`] with one enrolled volunteer phone.
struct Rig {
    disk: FlakyDisk,
    identity: KeyAndCert,
    store: ServerStore,
    server: Running,
    phone: Phone,
    _tmp: tempfile::TempDir,
}

impl Rig {
    async fn start() -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let disk = FlakyDisk::default();
        let identity = KeyAndCert::generate("fieldsync").unwrap();
        let fingerprint = hex::encode(fieldsync_device::tls::fingerprint(&identity.cert));
        let store = ServerStore::open_backend(disk.clone()).unwrap();
        let user = User {
            id: "v1".into(),
            name: "张三".into(),
            role: Role::Volunteer,
            scopes: vec!["team:1".parse().expect("scope")],
        };
        store
            .create_code(&user, "CODE", chrono::Utc::now().timestamp() + 600)
            .unwrap();
        let server = fieldsync_server::start_store(
            store.clone(),
            &identity,
            "127.0.0.1:0".parse().unwrap(),
            Limits::default(),
        )
        .unwrap();
        let phone = Phone::open(&tmp.path().join("phone"));
        client::enroll(&phone.store, &server.addr.to_string(), &fingerprint, "CODE")
            .await
            .unwrap();
        Rig {
            disk,
            identity,
            store,
            server,
            phone,
            _tmp: tmp,
        }
    }
}

/// A round with a deadline short enough for a test whose server may go away.
async fn sync_within(phone: &Phone, deadline: Duration) -> Result<usize, ClientError> {
    let options = SyncOptions {
        deadline,
        ..SyncOptions::default()
    };
    client::sync_with(&phone.store, &options, &mut |_| {})
        .await
        .map(|(report, _)| report.sent)
}

/// The storage error a round must end with: the retry class, naming storage.
fn assert_storage_error(result: Result<usize, ClientError>, case: &str) {
    match result {
        Err(
            ref e @ ClientError::Unavailable {
                code: ErrorCode::Internal,
                ref message,
            },
        ) => {
            assert!(e.is_retryable(), "{case}: {e:?}");
            assert!(message.contains("storage"), "{case}: {message}");
        }
        other => panic!("{case}: expected the storage error (retry), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commits_acknowledge_nothing_and_lose_nothing() {
    let Rig {
        disk,
        identity,
        store,
        mut server,
        phone,
        _tmp,
    } = Rig::start().await;
    let addr = server.addr;

    let before: Vec<String> = (0..3)
        .map(|i| phone.check_in("team:1", &format!("早班{i}")))
        .collect();
    phone.sync().await.unwrap();
    let during: Vec<String> = (0..5)
        .map(|i| phone.check_in("team:1", &format!("晚班{i}")))
        .collect();

    // The disk fails: the round fails as a whole with a storage error of the retry class,
    // nothing is marked acknowledged, nothing is marked refused.
    disk.fail.store(true, Ordering::SeqCst);
    assert_storage_error(phone.sync().await.map(|r| r.sent), "the failing commit");
    assert_eq!(phone.store.pending_count().unwrap(), 5);
    assert!(phone.store.refused().unwrap().is_empty());
    let failure = tokio::time::timeout(Duration::from_secs(5), server.storage_failed())
        .await
        .expect("the server reports the storage failure");
    assert!(failure.contains("injected"), "{failure}");

    // The disk recovers, the server restarts on what the disk holds.
    server.stop().await;
    drop(store);
    disk.released().await;
    disk.fail.store(false, Ordering::SeqCst);
    let store = ServerStore::open_backend(disk.clone()).unwrap();
    let held = held_ids(&store);
    assert_eq!(
        held, before,
        "what was acknowledged before the failure is all there, and only it"
    );
    let server =
        fieldsync_server::start_store(store.clone(), &identity, addr, Limits::default()).unwrap();

    let report = phone.sync().await.unwrap();
    assert_eq!(report.sent, 5);
    assert_eq!(phone.store.pending_count().unwrap(), 0);
    let mut expected: Vec<String> = before.into_iter().chain(during).collect();
    expected.sort();
    let held = held_ids(&store);
    assert_eq!(held, expected, "everything once, nothing twice");
    server.stop().await;
}

/// A device entry the server cannot read (damaged bytes in its redb) is the server's trouble:
/// the phone must hear "try again", not "unknown device" (which the apps show as "enroll
/// again"), and it syncs once the entry is mended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_lookup_that_fails_is_server_trouble_not_unauthorized() {
    let Rig {
        disk,
        identity,
        store,
        server,
        phone,
        _tmp,
    } = Rig::start().await;
    let addr = server.addr;
    phone.check_in("team:1", "早班");
    server.stop().await;
    drop(store);
    disk.released().await;

    // Damage the device's entry straight in the server's redb, keeping the good bytes.
    let devices = redb::TableDefinition::<&str, &[u8]>::new("devices");
    let device = phone.store.device_id();
    let good = {
        let db = redb::Database::builder()
            .create_with_backend(disk.clone())
            .unwrap();
        let tx = db.begin_write().unwrap();
        let good = {
            let mut table = tx.open_table(devices).unwrap();
            let good = table
                .get(device.as_str())
                .unwrap()
                .unwrap()
                .value()
                .to_vec();
            table.insert(device.as_str(), &b"{not json"[..]).unwrap();
            good
        };
        tx.commit().unwrap();
        good
    };
    let store = ServerStore::open_backend(disk.clone()).unwrap();
    let server =
        fieldsync_server::start_store(store.clone(), &identity, addr, Limits::default()).unwrap();
    match sync_within(&phone, Duration::from_secs(3)).await {
        Err(e @ ClientError::Unavailable { .. }) => {
            assert!(e.is_retryable(), "{e:?}");
            assert!(e.to_string().contains("server error"), "{e}");
        }
        other => panic!("a failed device lookup: expected retry, got {other:?}"),
    }
    assert_eq!(phone.store.pending_count().unwrap(), 1);
    assert!(phone.store.enrollment().unwrap().is_some());
    server.stop().await;
    drop(store);
    disk.released().await;

    // Mended: the same phone, not enrolled again, syncs what waited.
    {
        let db = redb::Database::builder()
            .create_with_backend(disk.clone())
            .unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(devices)
            .unwrap()
            .insert(device.as_str(), good.as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    let store = ServerStore::open_backend(disk.clone()).unwrap();
    let server =
        fieldsync_server::start_store(store.clone(), &identity, addr, Limits::default()).unwrap();
    assert_eq!(
        sync_within(&phone, Duration::from_secs(10)).await.unwrap(),
        1
    );
    assert_eq!(phone.store.pending_count().unwrap(), 0);
    server.stop().await;
}

/// The main binary stops the server as soon as the committer reports a fatal storage failure
/// (`Running::storage_failed`, then `stop`); the rounds caught in that commit must still get
/// their storage error, not "server shutting down".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rounds_caught_in_a_fatal_failure_get_the_storage_error() {
    for attempt in 0..3 {
        let Rig {
            disk,
            mut server,
            phone,
            ..
        } = Rig::start().await;
        phone.check_in("team:1", &format!("第{attempt}次"));
        // As `fieldsync-server serve` does: stop once storage has failed for good.
        let stopper = tokio::spawn(async move {
            let failure = server.storage_failed().await;
            server.stop().await;
            failure
        });
        disk.fail.store(true, Ordering::SeqCst);
        assert_storage_error(
            sync_within(&phone, Duration::from_secs(4)).await,
            &format!("attempt {attempt}"),
        );
        let failure = tokio::time::timeout(Duration::from_secs(10), stopper)
            .await
            .expect("the server stops")
            .expect("stopper");
        assert!(failure.contains("injected"), "{failure}");
        assert_eq!(phone.store.pending_count().unwrap(), 1);
        assert!(phone.store.refused().unwrap().is_empty());
    }
}

/// Replaces record `id`'s stored document in the server's redb with `bytes` (the server
/// stopped); returns what was there.
fn swap_document(disk: &FlakyDisk, id: &str, bytes: &[u8]) -> Vec<u8> {
    let docs = redb::TableDefinition::<u128, &[u8]>::new("docs");
    let key = uuid::Uuid::parse_str(id).unwrap().as_u128();
    let db = redb::Database::builder()
        .create_with_backend(disk.clone())
        .unwrap();
    let tx = db.begin_write().unwrap();
    let old = {
        let mut table = tx.open_table(docs).unwrap();
        let old = table.get(key).unwrap().unwrap().value().to_vec();
        table.insert(key, bytes).unwrap();
        old
    };
    tx.commit().unwrap();
    old
}

/// A stored document the server cannot load is the server's trouble: that record is deferred
/// (kept pending on the phone, not refused), the others of the round land, and it lands too
/// once the document is mended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_stored_document_defers_its_record_and_keeps_it_pending() {
    let Rig {
        disk,
        identity,
        store,
        server,
        phone,
        _tmp,
    } = Rig::start().await;
    let addr = server.addr;
    let damaged = phone.check_in("team:1", "早班");
    assert_eq!(phone.sync().await.unwrap().sent, 1);
    phone.set(&damaged, &[("note", fieldsync_tests::text("改了"))]);
    let fresh = phone.check_in("team:1", "晚班");
    server.stop().await;
    drop(store);
    disk.released().await;
    let good = swap_document(&disk, &damaged, b"not an automerge document");

    let store = ServerStore::open_backend(disk.clone()).unwrap();
    let server =
        fieldsync_server::start_store(store.clone(), &identity, addr, Limits::default()).unwrap();
    let report = phone.sync().await.expect("the round itself succeeds");
    assert_eq!(report.sent, 1, "{report:?}");
    assert!(report.refused.is_empty(), "{report:?}");
    assert_eq!(report.deferred.len(), 1, "{report:?}");
    assert_eq!(report.deferred[0].0.to_string(), damaged);
    assert!(report.deferred[0].1.contains("unreadable"), "{report:?}");
    assert_eq!(
        phone.store.pending_count().unwrap(),
        1,
        "the damaged one stays pending"
    );
    assert!(
        phone.store.refused().unwrap().is_empty(),
        "and is not refused"
    );
    assert!(held_ids(&store).contains(&fresh), "the other record landed");
    let deferred = server
        .metrics
        .records_deferred
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(deferred, 1);
    // Pushed again next round, deferred again while the copy stays damaged.
    let again = phone.sync().await.unwrap();
    assert_eq!((again.sent, again.deferred.len()), (0, 1), "{again:?}");
    server.stop().await;
    drop(store);
    disk.released().await;

    swap_document(&disk, &damaged, &good);
    let store = ServerStore::open_backend(disk.clone()).unwrap();
    let server =
        fieldsync_server::start_store(store.clone(), &identity, addr, Limits::default()).unwrap();
    let report = phone.sync().await.unwrap();
    assert_eq!((report.sent, report.deferred.len()), (1, 0), "{report:?}");
    assert_eq!(phone.store.pending_count().unwrap(), 0);
    let view = store
        .record_view(uuid::Uuid::parse_str(&damaged).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(view.fields["note"], fieldsync_tests::text("改了"));
    server.stop().await;
}
