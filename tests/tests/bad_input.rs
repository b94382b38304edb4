//! Bad input against a real server: real QUIC on 127.0.0.1, a real redb data folder in a
//! temporary directory, real device stores.
//!
//! Every case checks the three promises of DESIGN.md §Non-negotiables for bad input: the sender
//! gets a clear error, the server stores nothing, and the server keeps serving (the same
//! connection where that is possible, and always another, well-behaved device).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ObjType, ROOT};
use fieldsync_device::client::{self, ClientError, Connection};
use fieldsync_device::{DeviceStore, tls};
use fieldsync_proto::protocol::SERVER_NAME;
use fieldsync_proto::protocol::{
    self, Batch, ClientMsg, ErrorCode, LENGTH_PREFIX, Limits, Outcome, PROTOCOL_VERSION, Pull,
    PushDoc, ServerMsg, SyncReply,
};
use fieldsync_proto::{FieldValue, Kind, Role};
use fieldsync_server::store::User;
use fieldsync_server::{DataDir, Running};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The server runs with small limits so that "too large" is cheap to reach.
const MAX_FRAME: usize = 64 << 10;
const MAX_INFLATED: usize = 256 << 10;

/// No single network step of these tests should take anywhere near this long; it only turns
/// a hang into a failure.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

fn limits() -> Limits {
    Limits {
        max_frame_bytes: MAX_FRAME,
        max_inflated_bytes: MAX_INFLATED,
        ..Limits::default()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {STEP_TIMEOUT:?} (hang?)"),
    }
}

fn volunteer() -> User {
    User {
        id: "u1".into(),
        name: "张三".into(),
        role: Role::Volunteer,
        scopes: vec!["team:1".parse().expect("scope")],
    }
}

fn good_fields(activity: &str) -> Vec<(String, FieldValue)> {
    vec![
        ("volunteer_id".into(), FieldValue::Text("u1".into())),
        ("activity".into(), FieldValue::Text(activity.into())),
        ("place".into(), FieldValue::Text("社区服务中心".into())),
        (
            "started_at".into(),
            FieldValue::Text("2026-11-28T08:00:00+08:00".into()),
        ),
        ("status".into(), FieldValue::Text("submitted".into())),
    ]
}

/// A running server over a fresh data folder, with one enrolled, well-behaved device.
struct Server {
    tmp: tempfile::TempDir,
    dir: DataDir,
    running: Option<Running>,
    good: DeviceStore,
    /// Records the server is known to hold.
    stored: usize,
    /// Good records created so far (names their activity).
    good_rounds: usize,
}

impl Server {
    async fn start() -> Result<Server, Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = DataDir::init(&tmp.path().join("data"))?;
        dir.store
            .create_code(&volunteer(), "GOOD", unix_now() + 3600)?;
        let running = fieldsync_server::start(&dir, "127.0.0.1:0".parse()?, limits())?;
        let good = DeviceStore::open(&tmp.path().join("good"))?;
        within(
            "enrolling the good device",
            client::enroll(&good, &running.addr.to_string(), &dir.fingerprint(), "GOOD"),
        )
        .await?;
        let mut server = Server {
            tmp,
            dir,
            running: Some(running),
            good,
            stored: 0,
            good_rounds: 0,
        };
        server.assert_still_serving().await?;
        Ok(server)
    }

    fn addr(&self) -> SocketAddr {
        self.running
            .as_ref()
            .map(|r| r.addr)
            .expect("server is running")
    }

    fn fingerprint(&self) -> [u8; 32] {
        tls::fingerprint(&self.dir.identity.cert)
    }

    /// A new device store in the temporary folder (not enrolled).
    fn device(&self, name: &str) -> Result<DeviceStore, Box<dyn std::error::Error>> {
        Ok(DeviceStore::open(&self.tmp.path().join(name))?)
    }

    /// A new device of user u1 (team:1), enrolled with its own fresh code.
    async fn enrolled(&self, name: &str) -> Result<DeviceStore, Box<dyn std::error::Error>> {
        let code = format!("CODE-{name}");
        self.dir
            .store
            .create_code(&volunteer(), &code, unix_now() + 3600)?;
        let store = self.device(name)?;
        within(
            "enrolling a device",
            client::enroll(
                &store,
                &self.addr().to_string(),
                &self.dir.fingerprint(),
                &code,
            ),
        )
        .await?;
        Ok(store)
    }

    async fn connect(&self, store: &DeviceStore) -> Result<Connection, ClientError> {
        within(
            "connecting",
            Connection::connect(
                &self.addr().to_string(),
                self.fingerprint(),
                store.identity(),
            ),
        )
        .await
    }

    async fn raw(&self, store: &DeviceStore) -> Result<RawClient, Box<dyn std::error::Error>> {
        within(
            "connecting (raw)",
            RawClient::connect(self.addr(), self.fingerprint(), store),
        )
        .await
    }

    fn record_count(&self) -> usize {
        self.dir
            .store
            .records(None, None)
            .expect("reading the server's records")
            .len()
    }

    /// The server holds exactly the records it held before the bad input.
    fn assert_stored_nothing(&self, case: &str) {
        assert_eq!(
            self.record_count(),
            self.stored,
            "{case}: the server stored something"
        );
    }

    /// Notes that a record was deliberately stored (a positive control).
    fn note_stored(&mut self, n: usize) {
        self.stored += n;
        assert_eq!(self.record_count(), self.stored);
    }

    /// The good device creates a record and syncs it: accepted and stored.
    async fn assert_still_serving(&mut self) -> TestResult {
        self.good_rounds += 1;
        let view = self.good.create(
            Kind::CheckIn,
            "team:1",
            &good_fields(&format!("清洁家园 #{}", self.good_rounds)),
        )?;
        let (report, _) = within(
            "the good device's sync",
            client::sync(&self.good, &mut |_| {}),
        )
        .await?;
        assert_eq!(
            report.sent, 1,
            "the good record was not accepted: {report:?}"
        );
        assert!(report.refused.is_empty(), "good record refused: {report:?}");
        assert_eq!(self.good.pending_count()?, 0);
        self.stored += 1;
        let records = self.dir.store.records(None, None)?;
        assert_eq!(records.len(), self.stored);
        assert!(records.iter().any(|r| r.id == view.id));
        Ok(())
    }

    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            within("stopping the server", running.stop()).await;
        }
    }
}

/// A QUIC connection that writes whatever bytes it is given on a request stream.
struct RawClient {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl RawClient {
    async fn connect(
        addr: SocketAddr,
        fingerprint: [u8; 32],
        store: &DeviceStore,
    ) -> Result<RawClient, Box<dyn std::error::Error>> {
        let tls = tls::client_config(store.identity(), fingerprint)?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(Arc::new(fieldsync_device::transport::phone_transport(
            Limits::default().max_frame_bytes,
        )));
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(config);
        let conn = endpoint.connect(addr, SERVER_NAME)?.await?;
        Ok(RawClient { endpoint, conn })
    }

    /// Sends `bytes` as one whole request (the stream is finished) and reads the reply frame.
    async fn send(&self, bytes: &[u8]) -> ServerMsg {
        within("a raw exchange", async {
            let (mut send, mut recv) = self.conn.open_bi().await.expect("open a stream");
            send.write_all(bytes).await.expect("write the request");
            send.finish().expect("finish the request");
            read_reply(&mut recv).await
        })
        .await
    }

    /// A well-formed Sync with nothing to push: the connection is still being served.
    async fn assert_connection_alive(&self) {
        let frame = protocol::encode_frame(&sync_msg(Vec::new())).expect("encode");
        match self.send(&frame).await {
            ServerMsg::SyncReply(r) => assert!(r.batch.is_none() && r.pull.is_some()),
            other => panic!("the connection is no longer served: {other:?}"),
        }
    }

    async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        within("closing", self.endpoint.wait_idle()).await;
    }
}

async fn read_reply(recv: &mut quinn::RecvStream) -> ServerMsg {
    let bytes = recv.read_to_end(1 << 20).await.expect("read the reply");
    protocol::decode_frame::<ServerMsg>(&bytes, &Limits::default()).expect("decode the reply")
}

/// Asserts a whole-request error with `code`, returning its message.
fn expect_error(reply: ServerMsg, code: ErrorCode, case: &str) -> String {
    match reply {
        ServerMsg::Error { code: c, message } => {
            assert_eq!(c, code, "{case}: wrong error code ({message})");
            assert!(!message.trim().is_empty(), "{case}: empty error message");
            message
        }
        other => panic!("{case}: expected an error {code:?}, got {other:?}"),
    }
}

fn assert_mentions(text: &str, needles: &[&str], case: &str) {
    for needle in needles {
        assert!(
            text.contains(needle),
            "{case}: `{text}` does not mention `{needle}`"
        );
    }
}

/// A frame with the given announced body length and body bytes (which may disagree).
fn raw_frame(announced: u32, body: &[u8]) -> Vec<u8> {
    let mut frame = announced.to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

/// A frame whose body is `encoding` followed by `payload`, with a correct length.
fn frame_with(encoding: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![encoding];
    body.extend_from_slice(payload);
    raw_frame(body.len() as u32, &body)
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).expect("deflate");
    enc.finish().expect("deflate")
}

/// A Sync pushing `push` as one batch (none if empty) and pulling from the start.
fn sync_msg(push: Vec<PushDoc>) -> ClientMsg {
    ClientMsg::Sync {
        version: PROTOCOL_VERSION,
        batch: (!push.is_empty()).then(|| Batch {
            id: uuid::Uuid::now_v7().as_u64_pair().1,
            docs: push,
        }),
        pull: Some(Pull::default()),
    }
}

fn push_doc(kind: Kind, scope: &str, changes: Vec<u8>) -> PushDoc {
    PushDoc {
        id: *uuid::Uuid::now_v7().as_bytes(),
        kind,
        scope: scope.into(),
        changes,
    }
}

/// The Automerge actor of a device: its device id.
fn actor_of(store: &DeviceStore) -> ActorId {
    let id = tls::device_key_id(&store.identity().cert).expect("device key id");
    assert_eq!(hex_string(&id), store.device_id());
    ActorId::from(id)
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A check-in written directly with Automerge under `actor`: the header keys (with `kind`
/// given), every required field, then whatever `extra` writes; one change.
fn hand_made(
    actor: ActorId,
    kind: &str,
    extra: impl FnOnce(&mut AutoCommit) -> Result<(), automerge::AutomergeError>,
) -> Result<AutoCommit, automerge::AutomergeError> {
    let mut doc = AutoCommit::new().with_actor(actor);
    doc.put(ROOT, "kind", kind)?;
    doc.put(ROOT, "schema", "check_in@1")?;
    doc.put(ROOT, "scope", "team:1")?;
    doc.put(ROOT, "volunteer_id", "u1")?;
    doc.put(ROOT, "activity", "敬老院探访")?;
    doc.put(ROOT, "place", "敬老院")?;
    doc.put(ROOT, "started_at", "2026-11-28T08:00:00+08:00")?;
    doc.put(ROOT, "status", "submitted")?;
    extra(&mut doc)?;
    doc.commit();
    Ok(doc)
}

fn changes_of(doc: &mut AutoCommit) -> Vec<u8> {
    let mut out = Vec::new();
    for change in doc.get_changes(&[]) {
        out.extend_from_slice(change.raw_bytes());
    }
    out
}

/// Pushes documents as one batch and returns each outcome, in order (the wire names only
/// the refused and deferred ones; every other document of the batch is accepted).
async fn push(conn: &Connection, docs: Vec<PushDoc>) -> Vec<Outcome> {
    let ids: Vec<_> = docs.iter().map(|d| d.id).collect();
    let msg = sync_msg(docs);
    let sent = match &msg {
        ClientMsg::Sync { batch, .. } => batch.as_ref().map(|b| b.id),
        _ => None,
    };
    let reply = within("a push", conn.exchange(&msg))
        .await
        .expect("the push exchange");
    match reply {
        ServerMsg::SyncReply(SyncReply {
            batch: Some(ack), ..
        }) => {
            assert_eq!(Some(ack.id), sent, "the ack names the batch pushed");
            for r in &ack.refused {
                assert!(ids.contains(&r.id), "a refusal of a document not pushed");
            }
            for d in &ack.deferred {
                assert!(ids.contains(&d.id), "a deferral of a document not pushed");
            }
            ids.iter()
                .map(|id| {
                    let refused = ack.refused.iter().find(|r| r.id == *id);
                    let deferred = ack.deferred.iter().find(|d| d.id == *id);
                    match (refused, deferred) {
                        (Some(r), _) => Outcome::Refused {
                            reason: r.reason.clone(),
                        },
                        (None, Some(d)) => Outcome::Deferred {
                            reason: d.reason.clone(),
                        },
                        (None, None) => Outcome::Accepted { heads: Vec::new() },
                    }
                })
                .collect()
        }
        other => panic!("expected a batch acknowledgement, got {other:?}"),
    }
}

fn refusal(outcome: &Outcome, case: &str) -> String {
    match outcome {
        Outcome::Refused { reason } => {
            assert!(
                !reason.trim().is_empty(),
                "{case}: refused without a reason"
            );
            reason.clone()
        }
        Outcome::Accepted { .. } => panic!("{case}: accepted, should have been refused"),
        // Hostile input is the device's doing: deferring it would keep it pending forever.
        Outcome::Deferred { reason } => {
            panic!("{case}: deferred as the server's trouble ({reason}), should have been refused")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Random bytes as a request frame.

#[tokio::test(flavor = "multi_thread")]
async fn random_bytes_get_a_clear_error_and_change_nothing() -> TestResult {
    let mut h = Server::start().await?;
    let mallory = h.enrolled("mallory").await?;
    let raw = h.raw(&mallory).await?;

    // Pure noise: whatever its first four bytes announce, the error is the one that announcement
    // deserves.
    for seed in 1..=8u64 {
        let bytes = noise(seed, 1000);
        let announced = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let reply = raw.send(&bytes).await;
        let case = format!("noise seed {seed} announcing {announced} bytes");
        if announced > MAX_FRAME {
            let m = expect_error(reply, ErrorCode::TooLarge, &case);
            assert_mentions(&m, &[&announced.to_string(), &MAX_FRAME.to_string()], &case);
        } else if announced > bytes.len() - LENGTH_PREFIX {
            let m = expect_error(reply, ErrorCode::Malformed, &case);
            assert_mentions(&m, &["truncated"], &case);
        } else {
            expect_error(reply, ErrorCode::Malformed, &case);
        }
        h.assert_stored_nothing(&case);
    }

    // A correct length with noise behind it, under each encoding byte.
    for seed in 11..=14u64 {
        let payload = noise(seed, 300);
        for encoding in [0u8, 1] {
            let case = format!("noise payload {seed}, encoding {encoding}");
            let m = expect_error(
                raw.send(&frame_with(encoding, &payload)).await,
                ErrorCode::Malformed,
                &case,
            );
            if encoding == 1 {
                assert_mentions(&m, &["deflate"], &case);
            }
        }
    }
    let m = expect_error(
        raw.send(&frame_with(7, &noise(3, 50))).await,
        ErrorCode::Malformed,
        "unknown encoding byte",
    );
    assert_mentions(&m, &["unknown encoding byte 7"], "unknown encoding byte");
    let m = expect_error(
        raw.send(&raw_frame(0, &[])).await,
        ErrorCode::Malformed,
        "empty frame",
    );
    assert_mentions(&m, &["empty frame"], "empty frame");
    // Valid postcard that is not a message: a variant index past the last one.
    let m = expect_error(
        raw.send(&frame_with(0, &[9, 1, 0])).await,
        ErrorCode::Malformed,
        "unknown message variant",
    );
    assert_mentions(&m, &["malformed message"], "unknown message variant");

    h.assert_stored_nothing("random bytes");
    raw.assert_connection_alive().await;
    h.assert_still_serving().await?;
    raw.close().await;
    h.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Truncated frames.

#[tokio::test(flavor = "multi_thread")]
async fn truncated_frames_get_a_clear_error_and_change_nothing() -> TestResult {
    let mut h = Server::start().await?;
    let mallory = h.enrolled("mallory").await?;
    let raw = h.raw(&mallory).await?;

    // The prefix says 1000 bytes; 10 arrive and the stream ends.
    let m = expect_error(
        raw.send(&raw_frame(1000, &noise(5, 10))).await,
        ErrorCode::Malformed,
        "truncated body",
    );
    assert_mentions(&m, &["truncated", "1000", "10"], "truncated body");

    // The stream ends inside the length prefix itself.
    let m = expect_error(
        raw.send(&[0, 0]).await,
        ErrorCode::Malformed,
        "truncated prefix",
    );
    assert_mentions(&m, &["truncated", "4", "2"], "truncated prefix");

    // A real Sync carrying a valid record, cut three bytes short: not a byte of it is stored.
    let mut doc = hand_made(actor_of(&mallory), "check_in", |_| Ok(()))?;
    let msg = sync_msg(vec![push_doc(
        Kind::CheckIn,
        "team:1",
        changes_of(&mut doc),
    )]);
    let frame = protocol::encode_frame(&msg)?;
    let m = expect_error(
        raw.send(&frame[..frame.len() - 3]).await,
        ErrorCode::Malformed,
        "truncated sync",
    );
    assert_mentions(
        &m,
        &[
            "truncated",
            &(frame.len() - LENGTH_PREFIX).to_string(),
            &(frame.len() - LENGTH_PREFIX - 3).to_string(),
        ],
        "truncated sync",
    );
    h.assert_stored_nothing("truncated sync");

    // A frame that stalls half-way (stream left open) holds up only its own connection: the
    // good device is served meanwhile, then the stalled request is answered once it ends.
    let (mut send, mut recv) = within("open", raw.conn.open_bi()).await?;
    within("write", send.write_all(&raw_frame(500, &noise(6, 100)))).await?;
    h.assert_still_serving().await?;
    send.finish()?;
    let m = expect_error(
        within("stalled reply", read_reply(&mut recv)).await,
        ErrorCode::Malformed,
        "stalled then finished",
    );
    assert_mentions(&m, &["truncated", "500", "100"], "stalled then finished");

    h.assert_stored_nothing("truncated frames");
    raw.assert_connection_alive().await;
    h.assert_still_serving().await?;
    raw.close().await;
    h.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Oversized frames.

#[tokio::test(flavor = "multi_thread")]
async fn oversized_frames_are_refused_before_the_body_is_read() -> TestResult {
    let mut h = Server::start().await?;
    let mallory = h.enrolled("mallory").await?;
    let raw = h.raw(&mallory).await?;

    // Announcements past the cap, with (almost) nothing behind them: refused at the prefix.
    for announced in [MAX_FRAME as u32 + 1, 16 << 20, u32::MAX] {
        let case = format!("announced {announced}");
        let m = expect_error(
            raw.send(&raw_frame(announced, &[0, 1, 2])).await,
            ErrorCode::TooLarge,
            &case,
        );
        assert_mentions(
            &m,
            &[
                "exceeds the limit",
                &announced.to_string(),
                &MAX_FRAME.to_string(),
            ],
            &case,
        );
    }

    // A genuine Sync frame larger than the cap, really streamed: the server answers TooLarge
    // without waiting for the body (it could never arrive whole: the stream's flow-control
    // window is the cap), and stops the stream.
    let big = push_doc(Kind::CheckIn, "team:1", noise(99, MAX_FRAME * 2));
    let frame = protocol::encode_frame(&sync_msg(vec![big]))?;
    let body_len = frame.len() - LENGTH_PREFIX;
    assert!(body_len > MAX_FRAME);
    let (mut send, mut recv) = within("open", raw.conn.open_bi()).await?;
    let writer = tokio::spawn(async move {
        let written = send.write_all(&frame).await;
        if written.is_ok() {
            let _ = send.finish();
        }
        written
    });
    let m = expect_error(
        within("oversized reply", read_reply(&mut recv)).await,
        ErrorCode::TooLarge,
        "streamed oversized sync",
    );
    assert_mentions(
        &m,
        &[&body_len.to_string(), &MAX_FRAME.to_string()],
        "streamed oversized sync",
    );
    // The writer ends (stopped by the server) rather than hanging on flow control.
    let written = within("the oversized writer", writer).await?;
    assert!(
        written.is_err(),
        "the server should stop the oversized stream rather than read it"
    );

    h.assert_stored_nothing("oversized frames");
    raw.assert_connection_alive().await;
    h.assert_still_serving().await?;
    raw.close().await;
    h.stop().await;
    Ok(())
}

/// The device's own client, sending a request larger than the server's cap, must surface the
/// server's clear TooLarge answer rather than a bare transport error.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_request_from_the_client_gets_the_servers_clear_error() -> TestResult {
    let mut h = Server::start().await?;
    let mallory = h.enrolled("mallory").await?;

    // Straight through Connection::exchange.
    let conn = h.connect(&mallory).await?;
    let big = push_doc(Kind::CheckIn, "team:1", noise(98, MAX_FRAME * 2));
    let result = within("oversized exchange", conn.exchange(&sync_msg(vec![big]))).await;
    let text = match result {
        Ok(ServerMsg::Error { code, message }) => {
            assert_eq!(code, ErrorCode::TooLarge, "{message}");
            message
        }
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::TooLarge, "{message}");
            message
        }
        other => panic!("oversized exchange: expected the server's TooLarge, got {other:?}"),
    };
    assert_mentions(&text, &[&MAX_FRAME.to_string()], "oversized exchange");
    conn.close().await;

    // And as a user sees it: a record too large for the server's frame cap.
    let huge = hex_string(&noise(97, MAX_FRAME * 2));
    let mut fields = good_fields("大记录");
    fields.push(("note".into(), FieldValue::Text(huge)));
    mallory.create(Kind::CheckIn, "team:1", &fields)?;
    match within("oversized sync", client::sync(&mallory, &mut |_| {})).await {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::TooLarge, "{message}");
            assert_mentions(&message, &[&MAX_FRAME.to_string()], "oversized sync");
        }
        other => panic!("oversized sync: expected Refused(TooLarge), got {other:?}"),
    }
    assert_eq!(mallory.pending_count()?, 1, "nothing was acknowledged");

    h.assert_stored_nothing("oversized request from the client");
    h.assert_still_serving().await?;
    h.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Invalid Automerge bytes inside a valid Sync message.

#[tokio::test(flavor = "multi_thread")]
async fn invalid_automerge_bytes_are_refused_per_document() -> TestResult {
    let mut h = Server::start().await?;
    let mallory = h.enrolled("mallory").await?;
    let actor = actor_of(&mallory);
    let conn = h.connect(&mallory).await?;

    let mut valid = hand_made(actor.clone(), "check_in", |_| Ok(()))?;
    let valid_bytes = changes_of(&mut valid);

    // Garbage after good magic bytes, with a consistent chunk length.
    let mut fake_chunk = vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3, 4, 1, 40];
    fake_chunk.extend_from_slice(&noise(7, 40));
    // A real change cut short.
    let cut = valid_bytes[..valid_bytes.len() - 3].to_vec();
    // A saved document where changes belong.
    let saved = valid.save();

    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "not automerge",
            b"this is not automerge at all".to_vec(),
            &["magic"],
        ),
        ("empty-ish", vec![0x85, 0x6f], &["Automerge"]),
        ("garbage chunk", fake_chunk, &["Automerge"]),
        ("cut short", cut, &["chunk longer than the data"]),
        ("saved document", saved, &["not a change"]),
        ("noise", noise(8, 4000), &["Automerge"]),
    ];
    let docs: Vec<PushDoc> = cases
        .iter()
        .map(|(_, bytes, _)| push_doc(Kind::CheckIn, "team:1", bytes.clone()))
        .collect();
    let ids: Vec<_> = docs.iter().map(|d| d.id).collect();
    let outcomes = push(&conn, docs).await;
    for ((case, _, needles), outcome) in cases.iter().zip(&outcomes) {
        let reason = refusal(outcome, case);
        assert_mentions(&reason, needles, case);
    }
    h.assert_stored_nothing("invalid Automerge bytes");

    // In one push with a valid document, the invalid one is refused and the valid one lands.
    let good = push_doc(Kind::CheckIn, "team:1", valid_bytes);
    let good_id = uuid::Uuid::from_bytes(good.id).to_string();
    let bad = push_doc(Kind::CheckIn, "team:1", noise(9, 64));
    let outcomes = push(&conn, vec![bad, good]).await;
    refusal(&outcomes[0], "invalid next to a valid document");
    assert!(
        matches!(outcomes[1], Outcome::Accepted { .. }),
        "{outcomes:?}"
    );
    h.note_stored(1);
    let records = h.dir.store.records(None, None)?;
    assert!(records.iter().any(|r| r.id == good_id));
    for id in ids {
        let id = uuid::Uuid::from_bytes(id).to_string();
        assert!(records.iter().all(|r| r.id != id));
    }

    h.assert_still_serving().await?;
    conn.close().await;
    h.stop().await;
    Ok(())
}

/// A change chunk whose checksum does not match its content is not a valid change: Automerge
/// itself refuses to load such bytes, so storing them would leave a record that neither the
/// server nor any device can load again.
#[tokio::test(flavor = "multi_thread")]
async fn a_change_with_a_bad_checksum_is_refused() -> TestResult {
    let mut h = Server::start().await?;
    let mallory = h.enrolled("mallory").await?;
    let conn = h.connect(&mallory).await?;

    let mut doc = hand_made(actor_of(&mallory), "check_in", |_| Ok(()))?;
    let mut bytes = changes_of(&mut doc);
    assert!(automerge::AutoCommit::load(&bytes).is_ok());
    // Only the four checksum bytes change; the content is a perfectly valid check-in.
    for b in &mut bytes[4..8] {
        *b ^= 0xff;
    }
    assert!(
        automerge::AutoCommit::load(&bytes).is_err(),
        "Automerge refuses to load a chunk with a bad checksum"
    );
    let pushed = push_doc(Kind::CheckIn, "team:1", bytes);
    let outcomes = push(&conn, vec![pushed]).await;
    let accepted = matches!(outcomes[0], Outcome::Accepted { .. });
    if accepted {
        // Show the consequence before failing: the good device of the same scope can no
        // longer sync at all.
        let synced = within("sync after the poison", client::sync(&h.good, &mut |_| {})).await;
        panic!(
            "a change with a bad checksum was accepted and stored; the next sync of another \
             device in its scope gives: {synced:?}"
        );
    }
    let reason = refusal(&outcomes[0], "bad checksum");
    assert_mentions(&reason, &["checksum"], "bad checksum");

    h.assert_stored_nothing("bad checksum");
    h.assert_still_serving().await?;
    conn.close().await;
    h.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Compressed input that inflates past the cap: a deflated frame, and an Automerge
//    compressed change chunk.

/// 8 MiB of zeros, deflated (about 8 KiB): 32 times the server's inflate cap.
fn zero_bomb() -> Vec<u8> {
    deflate(&vec![0u8; 8 << 20])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deflate_bomb_frame_is_refused() -> TestResult {
    let mut h = Server::start().await?;
    let mallory = h.enrolled("mallory").await?;
    let raw = h.raw(&mallory).await?;

    let bomb = zero_bomb();
    assert!(bomb.len() < MAX_FRAME, "the bomb itself fits in a frame");
    let m = expect_error(
        raw.send(&frame_with(1, &bomb)).await,
        ErrorCode::TooLarge,
        "deflate bomb frame",
    );
    assert_mentions(
        &m,
        &["inflates past the limit", &MAX_INFLATED.to_string()],
        "deflate bomb frame",
    );

    // Just over the cap is refused too; the cap is exact.
    let just_over = deflate(&vec![0u8; MAX_INFLATED + 1]);
    let m = expect_error(
        raw.send(&frame_with(1, &just_over)).await,
        ErrorCode::TooLarge,
        "one byte over",
    );
    assert_mentions(&m, &[&MAX_INFLATED.to_string()], "one byte over");

    h.assert_stored_nothing("deflate bomb frame");
    raw.assert_connection_alive().await;
    h.assert_still_serving().await?;
    raw.close().await;
    h.stop().await;
    Ok(())
}

/// An Automerge compressed change chunk (type 2) around `deflated`.
fn compressed_chunk(deflated: &[u8]) -> Vec<u8> {
    let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83, 0xde, 0xad, 0xbe, 0xef, 2];
    let mut len = deflated.len() as u64;
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            chunk.push(byte);
            break;
        }
        chunk.push(byte | 0x80);
    }
    chunk.extend_from_slice(deflated);
    chunk
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compressed_change_chunk_bomb_is_refused() -> TestResult {
    let mut h = Server::start().await?;
    let mallory = h.enrolled("mallory").await?;
    let conn = h.connect(&mallory).await?;

    let bomb = compressed_chunk(&zero_bomb());
    // A compressed chunk under the cap whose content is not a change.
    let small_junk = compressed_chunk(&deflate(&noise(4, 2000)));
    // The bomb after a valid change of the same document: the whole document is refused.
    let mut valid = hand_made(actor_of(&mallory), "check_in", |_| Ok(()))?;
    let mut valid_then_bomb = changes_of(&mut valid);
    valid_then_bomb.extend_from_slice(&bomb);

    let outcomes = push(
        &conn,
        vec![
            push_doc(Kind::CheckIn, "team:1", bomb),
            push_doc(Kind::CheckIn, "team:1", small_junk),
            push_doc(Kind::CheckIn, "team:1", valid_then_bomb),
        ],
    )
    .await;
    let reason = refusal(&outcomes[0], "chunk bomb");
    assert_mentions(&reason, &["limit", &MAX_INFLATED.to_string()], "chunk bomb");
    let reason = refusal(&outcomes[1], "junk compressed chunk");
    assert_mentions(&reason, &["Automerge"], "junk compressed chunk");
    let reason = refusal(&outcomes[2], "valid change then bomb");
    assert_mentions(&reason, &["limit"], "valid change then bomb");

    h.assert_stored_nothing("compressed change chunk bomb");
    h.assert_still_serving().await?;
    conn.close().await;
    h.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. A deeply nested document.

#[tokio::test(flavor = "multi_thread")]
async fn a_deeply_nested_document_is_refused() -> TestResult {
    let mut h = Server::start().await?;
    let mallory = h.enrolled("mallory").await?;
    let conn = h.connect(&mallory).await?;

    let mut doc = hand_made(actor_of(&mallory), "check_in", |doc| {
        let mut obj = doc.put_object(ROOT, "note", ObjType::Map)?;
        for _ in 1..1000 {
            obj = doc.put_object(&obj, "deeper", ObjType::Map)?;
        }
        doc.put(&obj, "bottom", "!")?;
        Ok(())
    })?;
    let changes = changes_of(&mut doc);
    assert!(
        changes.len() < MAX_FRAME,
        "the nested change fits in a frame"
    );
    let outcomes = push(&conn, vec![push_doc(Kind::CheckIn, "team:1", changes)]).await;
    let reason = refusal(&outcomes[0], "1000 levels of nesting");
    assert_mentions(&reason, &["note"], "1000 levels of nesting");
    assert!(
        reason.contains("nested") || reason.contains("deep"),
        "1000 levels of nesting: `{reason}` does not say why"
    );

    h.assert_stored_nothing("deeply nested document");
    h.assert_still_serving().await?;
    conn.close().await;
    h.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. Unknown kinds.

#[test]
fn an_unknown_kind_name_is_a_clear_error() {
    let err = "parade".parse::<Kind>().expect_err("parade is no kind");
    let text = err.to_string();
    assert_mentions(&text, &["unknown kind", "parade", "check_in"], "parse");
    for kind in Kind::ALL {
        assert_eq!(kind.as_str().parse::<Kind>(), Ok(kind));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_kind_is_refused() -> TestResult {
    let mut h = Server::start().await?;
    let mallory = h.enrolled("mallory").await?;
    let actor = actor_of(&mallory);
    let conn = h.connect(&mallory).await?;

    // The document's own kind is "parade"; pushed as a check-in.
    let mut parade = hand_made(actor.clone(), "parade", |_| Ok(()))?;
    // A document that claims another (known) kind than it is pushed as.
    let mut survey = hand_made(actor.clone(), "village_survey", |_| Ok(()))?;
    // A document with no kind at all.
    let mut kindless = AutoCommit::new().with_actor(actor.clone());
    kindless.put(ROOT, "scope", "team:1")?;
    kindless.put(ROOT, "volunteer_id", "u1")?;
    kindless.commit();

    let outcomes = push(
        &conn,
        vec![
            push_doc(Kind::CheckIn, "team:1", changes_of(&mut parade)),
            push_doc(Kind::CheckIn, "team:1", changes_of(&mut survey)),
            push_doc(Kind::CheckIn, "team:1", changes_of(&mut kindless)),
        ],
    )
    .await;
    let reason = refusal(&outcomes[0], "kind parade");
    assert_mentions(&reason, &["unknown kind", "parade"], "kind parade");
    refusal(&outcomes[1], "kind mismatch");
    let reason = refusal(&outcomes[2], "no kind");
    assert_mentions(&reason, &["kind"], "no kind");
    h.assert_stored_nothing("unknown kind");

    // On the wire the kind is an enum: a discriminant past the last kind is a malformed
    // message, refused whole.
    let raw = h.raw(&mallory).await?;
    let doc = push_doc(Kind::CheckIn, "team:1", changes_of(&mut parade));
    let id = doc.id;
    let msg = ClientMsg::Sync {
        version: PROTOCOL_VERSION,
        batch: Some(Batch {
            id: 1,
            docs: vec![doc],
        }),
        pull: None,
    };
    let mut body = postcard::to_stdvec(&msg)?;
    // Sync variant, the version, a batch (Some) with id 1 and one document, its 16 id bytes,
    // then the kind.
    assert_eq!(&body[..5], &[1, PROTOCOL_VERSION as u8, 1, 1, 1]);
    assert_eq!(&body[5..21], &id);
    assert_eq!(body[21], 0, "CheckIn is the first kind");
    body[21] = Kind::ALL.len() as u8;
    let m = expect_error(
        raw.send(&frame_with(0, &body)).await,
        ErrorCode::Malformed,
        "kind discriminant out of range",
    );
    assert_mentions(&m, &["malformed message"], "kind discriminant out of range");

    h.assert_stored_nothing("unknown kind on the wire");
    raw.assert_connection_alive().await;
    h.assert_still_serving().await?;
    raw.close().await;
    conn.close().await;
    h.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. Wrong field types.

#[tokio::test(flavor = "multi_thread")]
async fn wrong_field_types_are_refused() -> TestResult {
    let mut h = Server::start().await?;
    let mallory = h.enrolled("mallory").await?;
    let actor = actor_of(&mallory);
    let conn = h.connect(&mallory).await?;

    // Positive control: the same hand-made check-in, well typed, is accepted.
    let mut fine = hand_made(actor.clone(), "check_in", |doc| {
        doc.put(ROOT, "lat", 26.58)?;
        Ok(())
    })?;
    let outcomes = push(
        &conn,
        vec![push_doc(Kind::CheckIn, "team:1", changes_of(&mut fine))],
    )
    .await;
    assert!(
        matches!(outcomes[0], Outcome::Accepted { .. }),
        "{outcomes:?}"
    );
    h.note_stored(1);

    type Extra = Box<dyn FnOnce(&mut AutoCommit) -> Result<(), automerge::AutomergeError>>;
    let cases: Vec<(&str, Extra, &[&str])> = vec![
        (
            "lat as text",
            Box::new(|d| d.put(ROOT, "lat", "north").map(|_| ())),
            &["lat", "number", "north"],
        ),
        (
            "started_at not a timestamp",
            Box::new(|d| d.put(ROOT, "started_at", "yesterday").map(|_| ())),
            &["started_at", "RFC 3339"],
        ),
        (
            "accuracy as bool",
            Box::new(|d| d.put(ROOT, "accuracy_m", true).map(|_| ())),
            &["accuracy_m", "number"],
        ),
        (
            "activity as integer",
            Box::new(|d| d.put(ROOT, "activity", 42).map(|_| ())),
            &["activity", "text"],
        ),
        (
            "status unknown",
            Box::new(|d| d.put(ROOT, "status", "approved").map(|_| ())),
            &["status", "approved"],
        ),
        (
            "required field missing",
            Box::new(|d| d.delete(ROOT, "place")),
            &["place", "required"],
        ),
        (
            "derived field written",
            Box::new(|d| d.put(ROOT, "hours", 8.0).map(|_| ())),
            &["hours", "derived"],
        ),
        (
            "note as a list of numbers",
            Box::new(|d| {
                let list = d.put_object(ROOT, "note", ObjType::List)?;
                d.insert(&list, 0, 1).map(|_| ())
            }),
            &["note"],
        ),
    ];
    let mut docs = Vec::new();
    let mut expectations = Vec::new();
    for (case, extra, needles) in cases {
        let mut doc = hand_made(actor.clone(), "check_in", extra)?;
        docs.push(push_doc(Kind::CheckIn, "team:1", changes_of(&mut doc)));
        expectations.push((case, needles));
    }
    let outcomes = push(&conn, docs).await;
    for ((case, needles), outcome) in expectations.iter().zip(&outcomes) {
        let reason = refusal(outcome, case);
        assert_mentions(&reason, needles, case);
    }

    h.assert_stored_nothing("wrong field types");
    h.assert_still_serving().await?;
    conn.close().await;
    h.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 9. Unknown and revoked devices.

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_device_is_unauthorized() -> TestResult {
    let mut h = Server::start().await?;
    let stranger = h.device("stranger")?;

    // Without an enrollment the client does not even try.
    assert!(matches!(
        client::sync(&stranger, &mut |_| {}).await,
        Err(ClientError::NotEnrolled)
    ));

    // Speaking the protocol directly with an unenrolled key: Sync and Fetch are refused, one
    // request per connection (an unenrolled connection ends after its one request).
    let conn = h.connect(&stranger).await?;
    let mut doc = hand_made(actor_of(&stranger), "check_in", |_| Ok(()))?;
    let sync = sync_msg(vec![push_doc(
        Kind::CheckIn,
        "team:1",
        changes_of(&mut doc),
    )]);
    let m = expect_error(
        within("unknown sync", conn.exchange(&sync)).await?,
        ErrorCode::Unauthorized,
        "unknown device sync",
    );
    assert_mentions(&m, &["not enrolled"], "unknown device sync");
    let fetch = ClientMsg::Fetch {
        version: PROTOCOL_VERSION,
        want: Vec::new(),
    };
    let second = within("a second request", conn.exchange(&fetch)).await;
    assert!(
        matches!(second, Err(ClientError::Network(_))),
        "no second request on an unenrolled connection: {second:?}"
    );
    conn.close().await;
    let conn = h.connect(&stranger).await?;
    expect_error(
        within("unknown fetch", conn.exchange(&fetch)).await?,
        ErrorCode::Unauthorized,
        "unknown device fetch",
    );
    conn.close().await;
    h.assert_stored_nothing("unknown device");

    // A device that believes it is enrolled (forged local enrollment) with a pending record.
    stranger.set_enrollment(&fieldsync_device::store::EnrollmentInfo {
        server: h.addr().to_string(),
        fingerprint: h.dir.fingerprint(),
        device_id: stranger.device_id(),
        user_id: "u1".into(),
        user_name: "张三".into(),
        role: Role::Volunteer,
        scopes: vec!["team:1".parse().expect("scope")],
    })?;
    stranger.create(Kind::CheckIn, "team:1", &good_fields("冒充"))?;
    match within("forged sync", client::sync(&stranger, &mut |_| {})).await {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::Unauthorized, "{message}");
            assert_mentions(&message, &["not enrolled"], "forged enrollment");
        }
        other => panic!("forged enrollment: expected Refused, got {other:?}"),
    }
    assert_eq!(stranger.pending_count()?, 1, "nothing was acknowledged");
    assert!(
        h.dir
            .store
            .devices()?
            .iter()
            .all(|d| d.device_id != stranger.device_id())
    );

    h.assert_stored_nothing("unknown device");
    h.assert_still_serving().await?;
    h.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_device_is_refused() -> TestResult {
    let mut h = Server::start().await?;
    let lost = h.enrolled("lost-phone").await?;

    // Before revocation it syncs like any device.
    lost.create(Kind::CheckIn, "team:1", &good_fields("修路"))?;
    let (report, _) = within("sync before revoke", client::sync(&lost, &mut |_| {})).await?;
    assert_eq!(report.sent, 1);
    h.note_stored(1);

    h.dir.store.revoke(&lost.device_id())?;
    lost.create(Kind::CheckIn, "team:1", &good_fields("被盗后"))?;
    match within("sync after revoke", client::sync(&lost, &mut |_| {})).await {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::Unauthorized, "{message}");
            assert_mentions(&message, &["revoked"], "revoked sync");
        }
        other => panic!("revoked device: expected Refused, got {other:?}"),
    }
    assert_eq!(lost.pending_count()?, 1, "nothing was acknowledged");
    h.assert_stored_nothing("revoked device sync");

    // Speaking the protocol directly does not help either.
    match h.connect(&lost).await {
        Ok(conn) => {
            let reply = within("revoked exchange", conn.exchange(&sync_msg(Vec::new()))).await;
            assert!(
                matches!(
                    reply,
                    Err(ClientError::Refused {
                        code: ErrorCode::Unauthorized,
                        ..
                    })
                ),
                "revoked exchange: {reply:?}"
            );
        }
        Err(e) => assert!(
            matches!(
                e,
                ClientError::Refused {
                    code: ErrorCode::Unauthorized,
                    ..
                }
            ),
            "revoked connect: {e:?}"
        ),
    }

    // Nor does enrolling again with a fresh code: the key stays revoked.
    h.dir
        .store
        .create_code(&volunteer(), "SECOND", unix_now() + 3600)?;
    match within(
        "re-enroll",
        client::enroll(&lost, &h.addr().to_string(), &h.dir.fingerprint(), "SECOND"),
    )
    .await
    {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::Unauthorized, "{message}");
        }
        other => panic!("revoked device re-enrolling: expected Refused, got {other:?}"),
    }
    let devices = h.dir.store.devices()?;
    let entry = devices
        .iter()
        .find(|d| d.device_id == lost.device_id())
        .expect("the revoked device is still listed");
    assert!(entry.revoked);

    h.assert_stored_nothing("revoked device");
    h.assert_still_serving().await?;
    h.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 10. Expired, reused and unknown enrollment codes.

#[tokio::test(flavor = "multi_thread")]
async fn expired_reused_and_unknown_codes_are_refused() -> TestResult {
    let mut h = Server::start().await?;
    let server = h.addr().to_string();
    let fingerprint = h.dir.fingerprint();
    let devices_before = h.dir.store.devices()?.len();

    let expect_bad_code = |result: Result<_, ClientError>, needle: &str, case: &str| match result {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::BadCode, "{case}: {message}");
            assert_mentions(&message, &[needle], case);
        }
        other => panic!("{case}: expected Refused(BadCode), got {other:?}"),
    };

    // Expired.
    h.dir.store.create_code(
        &User {
            id: "u2".into(),
            name: "李四".into(),
            role: Role::Volunteer,
            scopes: vec!["team:1".parse().expect("scope")],
        },
        "OLD",
        unix_now() - 60,
    )?;
    let late = h.device("late")?;
    expect_bad_code(
        within(
            "expired",
            client::enroll(&late, &server, &fingerprint, "OLD"),
        )
        .await,
        "expired",
        "expired code",
    );
    assert!(
        late.enrollment()?.is_none(),
        "a refused enrollment is not kept"
    );

    // Reused: the first device takes it, the second is refused.
    h.dir
        .store
        .create_code(&volunteer(), "ONCE", unix_now() + 3600)?;
    let first = h.device("first")?;
    let second = h.device("second")?;
    within(
        "first",
        client::enroll(&first, &server, &fingerprint, "ONCE"),
    )
    .await?;
    expect_bad_code(
        within(
            "reused",
            client::enroll(&second, &server, &fingerprint, "ONCE"),
        )
        .await,
        "already used",
        "reused code",
    );
    assert!(second.enrollment()?.is_none());

    // Unknown.
    expect_bad_code(
        within(
            "unknown",
            client::enroll(&second, &server, &fingerprint, "NOPE"),
        )
        .await,
        "unknown enrollment code",
        "unknown code",
    );

    // Exactly one new device exists: the first one.
    let devices = h.dir.store.devices()?;
    assert_eq!(devices.len(), devices_before + 1);
    assert!(devices.iter().any(|d| d.device_id == first.device_id()));
    for refused in [&late, &second] {
        assert!(devices.iter().all(|d| d.device_id != refused.device_id()));
        assert!(matches!(
            client::sync(refused, &mut |_| {}).await,
            Err(ClientError::NotEnrolled)
        ));
    }

    // The refused second device can still enroll with a good code of its own.
    h.dir
        .store
        .create_code(&volunteer(), "FRESH", unix_now() + 3600)?;
    within(
        "fresh",
        client::enroll(&second, &server, &fingerprint, "FRESH"),
    )
    .await?;

    h.assert_stored_nothing("enrollment codes");
    h.assert_still_serving().await?;
    h.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Versions.

#[tokio::test(flavor = "multi_thread")]
async fn another_protocol_version_is_refused() -> TestResult {
    let mut h = Server::start().await?;
    let mallory = h.enrolled("mallory").await?;
    let conn = h.connect(&mallory).await?;
    let mut doc = hand_made(actor_of(&mallory), "check_in", |_| Ok(()))?;
    let msg = ClientMsg::Sync {
        version: PROTOCOL_VERSION + 1,
        batch: Some(Batch {
            id: 1,
            docs: vec![push_doc(Kind::CheckIn, "team:1", changes_of(&mut doc))],
        }),
        pull: Some(Pull::default()),
    };
    let m = expect_error(
        within("version", conn.exchange(&msg)).await?,
        ErrorCode::Version,
        "future version",
    );
    assert_mentions(&m, &[&(PROTOCOL_VERSION + 1).to_string()], "future version");
    h.assert_stored_nothing("another protocol version");
    h.assert_still_serving().await?;
    conn.close().await;
    h.stop().await;
    Ok(())
}
