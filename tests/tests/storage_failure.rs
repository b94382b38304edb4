//! The server's storage fails mid-commit (a redb backend that refuses writes on demand): the
//! round is answered with an error, nothing is acknowledged, nothing committed before is lost,
//! and after the server reopens its storage the phone's next round lands everything once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use fieldsync_device::client::{self, ClientError};
use fieldsync_device::tls::KeyAndCert;
use fieldsync_proto::Role;
use fieldsync_proto::protocol::{ErrorCode, Limits};
use fieldsync_server::ServerStore;
use fieldsync_server::store::User;
use fieldsync_tests::Phone;

/// Bytes in memory shared by every backend made from it, so a "restarted" server reopens what
/// the failed one left; writes and syncs fail while `fail` is set.
#[derive(Debug, Clone, Default)]
struct FlakyDisk {
    bytes: Arc<RwLock<Vec<u8>>>,
    fail: Arc<AtomicBool>,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commits_acknowledge_nothing_and_lose_nothing() {
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
    let mut server = fieldsync_server::start_store(
        store.clone(),
        &identity,
        "127.0.0.1:0".parse().unwrap(),
        Limits::default(),
    )
    .unwrap();
    let addr = server.addr;
    let phone = Phone::open(&tmp.path().join("phone"));
    client::enroll(&phone.store, &addr.to_string(), &fingerprint, "CODE")
        .await
        .unwrap();

    let before: Vec<String> = (0..3)
        .map(|i| phone.check_in("team:1", &format!("早班{i}")))
        .collect();
    phone.sync().await.unwrap();
    let during: Vec<String> = (0..5)
        .map(|i| phone.check_in("team:1", &format!("晚班{i}")))
        .collect();

    // The disk fails: the round is refused as a whole, nothing is marked acknowledged.
    disk.fail.store(true, Ordering::SeqCst);
    match phone.sync().await {
        Err(ClientError::Refused {
            code: ErrorCode::Internal,
            message,
        }) => {
            assert!(message.contains("storage"), "{message}")
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
    assert_eq!(phone.store.pending_count().unwrap(), 5);
    let failure = tokio::time::timeout(std::time::Duration::from_secs(5), server.storage_failed())
        .await
        .expect("the server reports the storage failure");
    assert!(failure.contains("injected"), "{failure}");

    // The disk recovers, the server restarts on what the disk holds.
    server.stop().await;
    drop(store);
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
