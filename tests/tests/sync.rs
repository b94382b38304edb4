//! End-to-end sync over real QUIC on loopback and real redb files: several phones offline,
//! conflicts, scopes and roles, authorship, and replay after a lost acknowledgement.

use automerge::transaction::Transactable;
use fieldsync_proto::Role;
use fieldsync_proto::model::{FieldValue, Kind};
use fieldsync_proto::protocol::{Batch, ClientMsg, PROTOCOL_VERSION, PushDoc, ServerMsg};
use fieldsync_tests::{TestServer, check_in_fields, text};

fn survey_fields(village: &str) -> Vec<(&'static str, FieldValue)> {
    vec![("village", text(village))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_converge_and_concurrent_field_shows_both_values() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut server = TestServer::start(root);
    let v1 = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;
    let v2 = server.phone(root, "v2", Role::Volunteer, &["team:1"]).await;
    let v3 = server.phone(root, "v3", Role::Volunteer, &["team:2"]).await;
    let a = server.phone(root, "a", Role::Village, &["village:9"]).await;
    let b = server.phone(root, "b", Role::Village, &["village:9"]).await;
    let office = server.phone(root, "o", Role::Office, &[]).await;

    // Offline: volunteers record check-ins; a village member starts the survey.
    let c1 = v1.check_in("team:1", "清洁家园");
    let c2 = v2.check_in("team:1", "文明城市创建");
    let c3 = v3.check_in("team:2", "社区网格化");
    let survey = a.create(Kind::VillageSurvey, "village:9", &survey_fields("大坪村"));
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    assert!(b.records().contains_key(&survey), "b received the survey");

    // Apart again: the same field and different fields.
    a.set(
        &survey,
        &[
            ("licensed_doctors", FieldValue::Integer(2)),
            ("bus_service", FieldValue::Bool(true)),
        ],
    );
    b.set(
        &survey,
        &[
            ("licensed_doctors", FieldValue::Integer(3)),
            ("tap_water_pct", FieldValue::Number(95.0)),
        ],
    );

    // Sync in a scrambled order, then once more each so everyone has everything.
    for phone in [&v2, &b, &v3, &a, &v1, &office] {
        phone.sync().await.unwrap();
    }
    for phone in [&v1, &v2, &v3, &a, &b, &office] {
        let report = phone.sync().await.unwrap();
        assert!(report.refused.is_empty(), "{:?}", report.refused);
    }

    let truth = server.records();
    assert_eq!(truth.len(), 4);
    let merged = &truth[&survey];
    assert_eq!(merged.fields["bus_service"], FieldValue::Bool(true));
    assert_eq!(merged.fields["tap_water_pct"], FieldValue::Number(95.0));
    let mut both = merged.conflicts["licensed_doctors"].clone();
    both.sort_by_key(|v| format!("{v:?}"));
    assert_eq!(both, vec![FieldValue::Integer(2), FieldValue::Integer(3)]);
    assert_eq!(
        merged.conflicts.len(),
        1,
        "only the field set concurrently conflicts"
    );

    // Every device that may read a record ends with identical fields and conflicts.
    for phone in [&a, &b, &office] {
        assert_eq!(&phone.records()[&survey], merged);
    }
    for phone in [&v1, &v2, &office] {
        assert_eq!(&phone.records()[&c1], &truth[&c1]);
        assert_eq!(&phone.records()[&c2], &truth[&c2]);
    }
    assert_eq!(office.records(), truth, "office reads everything");

    // Scopes: nobody receives what they may not read.
    let ids = |p: &fieldsync_tests::Phone| p.records().into_keys().collect::<Vec<_>>();
    let mut team1 = vec![c1.clone(), c2.clone()];
    team1.sort();
    assert_eq!(ids(&v1), team1);
    assert_eq!(ids(&v2), team1);
    assert_eq!(ids(&v3), vec![c3.clone()]);
    assert_eq!(ids(&a), vec![survey.clone()]);
    assert_eq!(truth[&c1].fields["hours"], FieldValue::Number(2.5));
    server.running.take().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_per_record_store_nothing_and_never_block_later_rounds() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut server = TestServer::start(root);
    let v1 = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;

    // The phone checks these rules itself before it stores anything; one whose rules are out
    // of date (or tampered with) writes what the server must still refuse.
    let good = v1.check_in("team:1", "清洁家园");
    let real = v1.believe(Role::Volunteer, &["team:1", "team:2"]);
    let wrong_team = v1.check_in("team:2", "越权");
    v1.believe(Role::Village, &["village:9"]);
    let survey = v1.create(Kind::VillageSurvey, "village:9", &survey_fields("大坪村"));
    v1.restore(&real);
    let report = v1.sync().await.unwrap();
    assert_eq!(report.sent, 1);
    let refused: Vec<String> = report
        .refused
        .iter()
        .map(|(id, _)| id.to_string())
        .collect();
    assert!(
        refused.contains(&wrong_team) && refused.contains(&survey),
        "{refused:?}"
    );
    let reason = &report
        .refused
        .iter()
        .find(|(id, _)| id.to_string() == wrong_team)
        .unwrap()
        .1;
    assert!(reason.contains("team:2"), "clear reason: {reason}");
    let truth = server.records();
    assert_eq!(
        truth.keys().cloned().collect::<Vec<_>>(),
        vec![good.clone()]
    );

    // A volunteer may not confirm their own check-in.
    v1.believe(Role::Office, &[]);
    v1.set(&good, &[("status", text("confirmed"))]);
    v1.restore(&real);
    let report = v1.sync().await.unwrap();
    assert_eq!(report.refused.len(), 1);
    assert!(
        report.refused[0].1.contains("status"),
        "{:?}",
        report.refused
    );
    assert_eq!(server.records()[&good].fields["status"], text("submitted"));

    // The refused records do not block later rounds.
    let later = v1.check_in("team:1", "双报到双服务");
    let report = v1.sync().await.unwrap();
    assert_eq!((report.sent, report.refused.len()), (1, 0));
    assert!(server.records().contains_key(&later));
    assert_eq!(v1.store.pending_count().unwrap(), 0);
    assert_eq!(v1.store.refused().unwrap().len(), 3);
    server.running.take().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_under_another_devices_actor_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut server = TestServer::start(root);
    let v1 = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;

    // A valid check-in, but written under someone else's actor id.
    let mut doc = automerge::AutoCommit::new().with_actor(automerge::ActorId::from([7u8; 16]));
    doc.put(automerge::ROOT, "kind", "check_in").unwrap();
    doc.put(automerge::ROOT, "schema", "check_in@1").unwrap();
    doc.put(automerge::ROOT, "scope", "team:1").unwrap();
    for (k, v) in check_in_fields("v1", "冒名") {
        if let FieldValue::Text(s) = v {
            doc.put(automerge::ROOT, k.as_str(), s.as_str()).unwrap();
        }
    }
    doc.commit();
    let changes: Vec<u8> = doc
        .get_changes(&[])
        .iter()
        .flat_map(|c| c.raw_bytes().to_vec())
        .collect();
    let conn = v1.connect().await;
    let id = *uuid::Uuid::now_v7().as_bytes();
    let msg = ClientMsg::Sync {
        version: PROTOCOL_VERSION,
        batch: Some(Batch {
            id: 1,
            docs: vec![PushDoc {
                id,
                kind: Kind::CheckIn,
                scope: "team:1".into(),
                changes,
            }],
        }),
        pull: None,
    };
    let ServerMsg::SyncReply(reply) = conn.exchange(&msg).await.unwrap() else {
        panic!("expected a sync reply");
    };
    match reply.batch.as_ref().map(|a| a.refused.as_slice()) {
        Some([refusal]) => {
            assert_eq!(refusal.id, id);
            assert!(refusal.reason.contains("actor"), "{}", refusal.reason)
        }
        other => panic!("forged change accepted: {other:?}"),
    }
    conn.close().await;
    assert!(server.records().is_empty());
    server.running.take().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_replayed_after_a_lost_acknowledgement_stores_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut server = TestServer::start(root);
    let v1 = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;
    let v2 = server.phone(root, "v2", Role::Volunteer, &["team:1"]).await;
    let ids: Vec<String> = (0..20)
        .map(|i| v1.check_in("team:1", &format!("活动{i}")))
        .collect();

    // The server commits the push, but the acknowledgement never reaches the phone.
    let conn = v1.connect().await;
    let push = v1
        .store
        .pending()
        .unwrap()
        .into_iter()
        .map(|p| p.push)
        .collect();
    let msg = ClientMsg::Sync {
        version: PROTOCOL_VERSION,
        batch: Some(Batch { id: 1, docs: push }),
        pull: None,
    };
    assert!(matches!(
        conn.exchange(&msg).await.unwrap(),
        ServerMsg::SyncReply(_)
    ));
    drop(conn);
    assert_eq!(server.records().len(), 20);
    assert_eq!(
        v1.store.pending_count().unwrap(),
        20,
        "not acknowledged on the phone"
    );

    // The phone runs the round again: everything is acknowledged, nothing is stored twice.
    let report = v1.sync().await.unwrap();
    assert_eq!(report.sent, 20);
    assert_eq!(v1.store.pending_count().unwrap(), 0);
    let truth = server.records();
    assert_eq!(truth.len(), 20);
    for id in &ids {
        let uuid = uuid::Uuid::parse_str(id).unwrap();
        assert_eq!(
            server.dir.store.receipts(uuid).unwrap().len(),
            1,
            "one receipt per change set"
        );
    }
    v2.sync().await.unwrap();
    assert_eq!(v2.records().len(), 20);
    let again = v2.sync().await.unwrap();
    assert_eq!(again.received, 0, "nothing is sent twice");
    server.running.take().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_beyond_the_per_minute_limit_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let limits = fieldsync_proto::protocol::Limits {
        max_rounds_per_minute: 3,
        ..Default::default()
    };
    let mut server = TestServer::start_with(root, limits);
    let v1 = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;
    for _ in 0..3 {
        v1.sync().await.unwrap();
    }
    let id = v1.check_in("team:1", "清洁家园");
    match v1.sync().await {
        // "Later", not "no": the retry class, the record neither refused nor acknowledged.
        Err(fieldsync_device::client::ClientError::Unavailable { code, message }) => {
            assert_eq!(code, fieldsync_proto::protocol::ErrorCode::RateLimited);
            assert!(message.contains("minute"), "{message}");
        }
        other => panic!("expected a rate limit (retry), got {other:?}"),
    }
    assert_eq!(v1.store.pending_count().unwrap(), 1);
    assert!(!server.records().contains_key(&id));
    server.running.take().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_larger_than_one_reply_arrives_in_several_replies() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let limits = fieldsync_proto::protocol::Limits {
        max_frame_bytes: 64 * 1024,
        ..Default::default()
    };
    let mut server = TestServer::start_with(root, limits);
    let v1 = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;
    // v2 has pulled the team before (it holds a cursor); v3 is a fresh phone.
    let v2 = server.phone(root, "v2", Role::Volunteer, &["team:1"]).await;
    v2.sync().await.unwrap();
    let v3 = server.phone(root, "v3", Role::Volunteer, &["team:1"]).await;
    for i in 0..200 {
        v1.check_in("team:1", &format!("第{i}次活动"));
    }
    assert_eq!(v1.sync().await.unwrap().sent, 200);

    let report = v2.sync().await.unwrap();
    assert_eq!(report.received, 200);
    assert!(
        report.exchanges >= 3,
        "the list of heads, then at least two fetches: {} exchanges",
        report.exchanges
    );
    assert_eq!(v2.records(), server.records());

    let fresh = v3.sync().await.unwrap();
    assert_eq!(fresh.received, 200);
    assert!(
        fresh.exchanges >= 2,
        "whole documents, paged over at least two replies: {} exchanges",
        fresh.exchanges
    );
    assert_eq!(v3.records(), server.records());

    for phone in [&v2, &v3] {
        let again = phone.sync().await.unwrap();
        assert_eq!(
            (again.received, again.exchanges),
            (0, 1),
            "cursors stored after the last page"
        );
    }
    server.running.take().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_a_live_code_slows_that_code_down_and_blocks_no_address() {
    use fieldsync_device::client::{self, ClientError};
    use fieldsync_proto::protocol::ErrorCode;
    use fieldsync_server::enrollment::{self, CodeGuard};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cooldown = std::time::Duration::from_secs(2);
    let options = fieldsync_server::ServeOptions {
        admission: fieldsync_server::admission::AdmissionLimits {
            code_cooldown: cooldown,
            ..Default::default()
        },
        ..fieldsync_server::ServeOptions::quic("127.0.0.1:0".parse().unwrap())
    };
    let server = TestServer::start_options(root, options);
    let user = |id: &str| fieldsync_server::store::User {
        id: id.into(),
        name: id.into(),
        role: Role::Volunteer,
        scopes: vec!["team:1".parse().unwrap()],
    };
    let good = enrollment::issue(&server.dir.store, &user("v1"), 3600)
        .unwrap()
        .code;
    let other = enrollment::issue(&server.dir.store, &user("v2"), 3600)
        .unwrap()
        .code;
    let (addr, fp) = (server.addr().to_string(), server.dir.fingerprint());
    let guesser = fieldsync_tests::Phone::open(&root.join("guesser"));
    let refused = |result: Result<_, ClientError>| match result {
        Err(ClientError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Guesses that name no live code cannot succeed: refused, never counted.
    for i in 0..20 {
        let guess = format!("ZZ{i:02}AAAAAAAA");
        let (code, _) = refused(client::enroll(&guesser.store, &addr, &fp, &guess).await);
        assert_eq!(code, ErrorCode::BadCode);
    }
    // Wrong guesses at the live code's id count against that code.
    let id = fieldsync_server::store::code_id(&good).to_string();
    for i in 0..CodeGuard::FREE_TRIES {
        let guess = format!("{id}{i:08}");
        let (code, _) = refused(client::enroll(&guesser.store, &addr, &fp, &guess).await);
        assert_eq!(code, ErrorCode::BadCode);
    }
    match client::enroll(&guesser.store, &addr, &fp, &good).await {
        Err(ClientError::Unavailable {
            code: ErrorCode::RateLimited,
            message,
        }) => assert!(message.contains("too often"), "{message}"),
        other => panic!("the code is slowed down (retry later), got {other:?}"),
    }
    // Nothing is held against the address: another person's code from it works at once, in
    // lower case and grouped as a person might type it.
    let neighbour = fieldsync_tests::Phone::open(&root.join("neighbour"));
    let typed = format!("{}-{}", &other[..6], &other[6..]).to_lowercase();
    client::enroll(&neighbour.store, &addr, &fp, &typed)
        .await
        .expect("another code from the same address");
    // After the cooldown the right code gets its try.
    tokio::time::sleep(cooldown).await;
    let owner = fieldsync_tests::Phone::open(&root.join("owner"));
    client::enroll(&owner.store, &addr, &fp, &good)
        .await
        .expect("the owner enrolls after the cooldown");
    assert!(guesser.store.enrollment().unwrap().is_none());
    assert_eq!(server.dir.store.devices().unwrap().len(), 2);
    server.running.unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_only_round_stamps_the_devices_last_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut server = TestServer::start(root);
    let reader = server.phone(root, "r1", Role::Volunteer, &["team:1"]).await;
    let last_sync = |server: &TestServer| {
        server
            .dir
            .store
            .devices()
            .unwrap()
            .into_iter()
            .find(|d| d.device_id == reader.store.device_id())
            .and_then(|d| d.last_sync)
    };
    assert_eq!(last_sync(&server), None, "enrolled, never synced");
    let report = reader.sync().await.unwrap();
    assert_eq!(report.sent, 0, "nothing pushed: a pull-only round");
    // The stamp goes into the next group commit, after the reply.
    let mut stamped = None;
    for _ in 0..200 {
        stamped = last_sync(&server);
        if stamped.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(stamped.is_some(), "last_sync is set by a pull-only round");
    server.running.take().unwrap().stop().await;
}
