//! Strangers cannot lock phones out: unenrolled certificates get a small, bounded share of the
//! sync server's connections for a short time and one small request; an enrolled device gets
//! a bounded number of connections. Real QUIC, real redb, on loopback (several 127.x source
//! addresses play several hosts).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use fieldsync_proto::Role;
use fieldsync_proto::protocol::{self, ClientMsg, ErrorCode, PROTOCOL_VERSION, ServerMsg, close};
use fieldsync_server::ServeOptions;
use fieldsync_server::admission::AdmissionLimits;
use fieldsync_tests::TestServer;
use fieldsync_tests::attack::{self, Answer};

fn server_with(root: &std::path::Path, admission: AdmissionLimits) -> TestServer {
    TestServer::start_options(
        root,
        ServeOptions {
            admission,
            ..ServeOptions::quic("127.0.0.1:0".parse().unwrap())
        },
    )
}

fn host(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn fingerprint(server: &TestServer) -> [u8; 32] {
    fieldsync_device::tls::parse_fingerprint(&server.dir.fingerprint()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_beyond_their_share_are_turned_away_while_phones_keep_syncing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let limits = AdmissionLimits {
        max_strangers: 6,
        max_strangers_per_address: 3,
        stranger_deadline: Duration::from_secs(3),
        ..Default::default()
    };
    let mut server = server_with(root, limits);
    let mut phones = Vec::new();
    for i in 0..3 {
        let user = format!("v{i}");
        phones.push(
            server
                .phone(root, &user, Role::Volunteer, &["team:1"])
                .await,
        );
    }
    let (addr, pinned) = (server.addr(), fingerprint(&server));

    // 40 strangers from four addresses, far more than the 6 slots strangers may hold (the
    // server had 1,024 slots for anyone, and held each stranger's for as long as it pinged).
    let bomb = std::sync::Arc::new(
        tokio::task::spawn_blocking(|| attack::deflate_bomb(64 << 20))
            .await
            .unwrap(),
    );
    let mut attackers = Vec::new();
    for h in 0..4u8 {
        let endpoint = attack::endpoint(host(10 + h)).unwrap();
        for _ in 0..10 {
            let (endpoint, bomb) = (endpoint.clone(), bomb.clone());
            attackers.push(tokio::spawn(async move {
                let started = Instant::now();
                let conn = attack::stranger(&endpoint, addr, pinned).await?;
                // Compressed junk first: refused unread, never inflated.
                let answer = attack::send(&conn, &bomb, limits_wait()).await;
                let ended = tokio::time::timeout(Duration::from_secs(30), conn.closed())
                    .await
                    .map_err(|_| "the server kept a stranger's connection open".to_string())?;
                Ok::<_, String>((answer, attack::close_code(&ended), started.elapsed()))
            }));
        }
    }

    // Meanwhile every enrolled phone keeps recording and syncing.
    for round in 0..3 {
        for phone in &phones {
            let id = phone.check_in("team:1", &format!("第{round}轮"));
            let report = phone
                .sync()
                .await
                .expect("an enrolled phone syncs under attack");
            assert_eq!(report.sent, 1);
            assert!(server.records().contains_key(&id));
        }
    }

    let (mut busy, mut served) = (0, 0);
    for attacker in attackers {
        let (answer, closed, lived) = attacker.await.unwrap().expect("stranger connected");
        match closed {
            Some((code, _)) if code == close::BUSY => busy += 1,
            Some((code, _)) if code == close::DONE => {
                served += 1;
                assert!(
                    matches!(
                        answer,
                        Answer::Reply(ServerMsg::Error {
                            code: ErrorCode::Unauthorized,
                            ..
                        })
                    ),
                    "a compressed request from a stranger is answered unread: {answer:?}"
                );
                assert!(
                    lived < Duration::from_secs(10),
                    "a stranger holds its slot for the deadline at most: {lived:?}"
                );
            }
            other => panic!("a stranger's connection ended unexpectedly: {other:?}"),
        }
    }
    assert_eq!(busy + served, 40);
    assert!(
        busy >= 40 - 3 * 4,
        "per-address shares held: {busy} turned away"
    );
    let metrics = &server.running.as_ref().unwrap().metrics;
    assert!(
        metrics
            .connections_busy
            .load(std::sync::atomic::Ordering::Relaxed)
            >= busy as u64
    );
    server.running.take().unwrap().stop().await;
}

/// Long enough for a reply on loopback, short against the stranger deadline.
fn limits_wait() -> Duration {
    Duration::from_secs(5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_gets_one_small_uncompressed_request_and_a_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let limits = AdmissionLimits {
        stranger_deadline: Duration::from_secs(2),
        ..Default::default()
    };
    let server = server_with(root, limits);
    let (addr, pinned) = (server.addr(), fingerprint(&server));
    let endpoint = attack::endpoint(host(1)).unwrap();
    let ask = |frame: Vec<u8>| {
        let endpoint = endpoint.clone();
        async move {
            let conn = attack::stranger(&endpoint, addr, pinned).await.unwrap();
            let first = attack::send(&conn, &frame, limits_wait()).await;
            let second = attack::send(&conn, &frame, limits_wait()).await;
            (first, second)
        }
    };
    let unauthorized = |answer: &Answer| {
        matches!(
            answer,
            Answer::Reply(ServerMsg::Error {
                code: ErrorCode::Unauthorized,
                ..
            })
        )
    };

    // A sync (or anything but Enroll), however small: not enrolled.
    let sync = ClientMsg::Sync {
        version: PROTOCOL_VERSION,
        batch: None,
        pull: None,
    };
    let (first, second) = ask(protocol::encode_frame(&sync).unwrap()).await;
    assert!(unauthorized(&first), "{first:?}");
    assert!(
        matches!(second, Answer::Closed(..) | Answer::Other(_)),
        "one request per stranger connection: {second:?}"
    );
    // A frame larger than an enrollment: answered from its length alone.
    let (big, _) = ask(attack::junk(64 * 1024)).await;
    assert!(unauthorized(&big), "{big:?}");
    // A deflate bomb: answered without inflating.
    let (bomb, _) = ask(attack::deflate_bomb(64 << 20)).await;
    assert!(unauthorized(&bomb), "{bomb:?}");
    // Small junk: malformed.
    let (junk, _) = ask(attack::junk(100)).await;
    assert!(
        matches!(
            junk,
            Answer::Reply(ServerMsg::Error {
                code: ErrorCode::Malformed,
                ..
            })
        ),
        "{junk:?}"
    );

    // A stranger that sends nothing is closed at the deadline, though it keeps pinging.
    let conn = attack::stranger(&endpoint, addr, pinned).await.unwrap();
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(15), conn.closed())
        .await
        .expect("the server ends a silent stranger's connection");
    assert_eq!(attack::close_code(&ended).map(|c| c.0), Some(close::DONE));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    server.running.unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_newest_connections_replace_its_oldest_beyond_its_share() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let limits = AdmissionLimits {
        max_connections_per_device: 2,
        ..Default::default()
    };
    let mut server = server_with(root, limits);
    let phone = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;
    let other = server.phone(root, "v2", Role::Volunteer, &["team:1"]).await;
    let (addr, pinned) = (server.addr(), fingerprint(&server));
    let endpoint = attack::endpoint(host(1)).unwrap();
    let mut conns = Vec::new();
    for _ in 0..5 {
        conns.push(
            attack::connect_as(&endpoint, addr, pinned, phone.store.identity())
                .await
                .unwrap(),
        );
    }
    let pull = protocol::encode_frame(&ClientMsg::Sync {
        version: PROTOCOL_VERSION,
        batch: None,
        pull: Some(protocol::Pull {
            cursors: Vec::new(),
            fresh: Vec::new(),
        }),
    })
    .unwrap();
    for (i, conn) in conns.iter().enumerate() {
        if i < 3 {
            let ended = tokio::time::timeout(limits_wait(), conn.closed())
                .await
                .expect("an old connection is closed");
            let closed = attack::close_code(&ended);
            assert!(
                matches!(&closed, Some((code, reason)) if *code == close::DONE && reason.contains("newer")),
                "connection {i} was replaced: {closed:?}"
            );
        } else {
            let answer = attack::send(conn, &pull, limits_wait()).await;
            assert!(
                matches!(answer, Answer::Reply(ServerMsg::SyncReply(_))),
                "connection {i} is served: {answer:?}"
            );
        }
    }
    // Another device is not affected, and the phone's own syncs still work.
    other.sync().await.expect("another device syncs");
    phone
        .sync()
        .await
        .expect("the phone syncs on a new connection");
    server.running.unwrap().stop().await;
}
