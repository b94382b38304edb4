//! The `field_link` benchmark: a phone's sync over an emulated 2G link.
//!
//! Real QUIC from a phone's redb store through the in-process impaired socket
//! (`fieldsync_tests::link`: rate, delay, jitter, seeded loss, outages) to a real server on
//! 127.0.0.1 with its redb file. Enrollment and the setup go over a clean link and are not
//! counted. Scenarios:
//!
//! - an empty round (nothing to push, nothing new);
//! - a volunteer's day of work (50 check-ins, 10 of them edited) at 0 % and 20 % loss, and at
//!   20 % loss with a 20 s outage starting 2 s into the round (lossy cases with three seeds);
//! - a fresh village phone pulling 500 records (visits and a survey) at 20 % loss.
//!
//! For each: wall time of the one `sync` call, bytes each way (UDP payloads the link carried,
//! retransmissions included, as `LinkStats` counts them), bytes per record, connections the
//! round used, exchanges. The link is 64 kbit/s each way, 300 ms ± 50 ms one way (2G).
//!
//! Run: `cargo bench -p fieldsync-tests --bench field_link -- [--quick]` (`--quick`: a clean
//! fast link and a 2 s outage, for CI smoke runs). Exits non-zero if a round fails or the
//! server does not end up holding exactly the records.

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldsync_device::client::{self, SyncOptions};
use fieldsync_proto::Role;
use fieldsync_proto::model::{FieldValue, Kind};
use fieldsync_tests::link::{ImpairedSocket, LinkConfig};
use fieldsync_tests::{Phone, TestServer, text};

type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

struct Outcome {
    name: String,
    records: usize,
    wall: Duration,
    up: u64,
    down: u64,
    connections: usize,
    exchanges: usize,
    /// Datagrams the link dropped (loss and outage), up and down.
    dropped: (u64, u64),
}

fn main() -> BenchResult<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcomes = rt.block_on(run(quick))?;
    println!(
        "field_link: {} link, one sync call per row",
        if quick {
            "quick (no rate limit, 20 ms)"
        } else {
            "2G (64 kbit/s, 300 ± 50 ms one way)"
        }
    );
    println!(
        "{:<52} {:>8} {:>9} {:>9} {:>9} {:>9} {:>6} {:>6} {:>11}",
        "scenario",
        "records",
        "wall s",
        "up B",
        "down B",
        "B/record",
        "conns",
        "exch",
        "dropped u/d"
    );
    for o in &outcomes {
        let per = if o.records == 0 {
            "-".to_string()
        } else {
            format!("{:.0}", (o.up + o.down) as f64 / o.records as f64)
        };
        println!(
            "{:<52} {:>8} {:>9.2} {:>9} {:>9} {:>9} {:>6} {:>6} {:>11}",
            o.name,
            o.records,
            o.wall.as_secs_f64(),
            o.up,
            o.down,
            per,
            o.connections,
            o.exchanges,
            format!("{}/{}", o.dropped.0, o.dropped.1)
        );
    }
    Ok(())
}

fn link(quick: bool, loss: f64, outage: Option<(Duration, Duration)>, seed: u64) -> LinkConfig {
    let base = if quick {
        LinkConfig::clean().with_delay(Duration::from_millis(20), Duration::from_millis(5))
    } else {
        LinkConfig::two_g()
    };
    let config = base.with_loss(loss).with_seed(seed);
    match outage {
        Some((start, len)) => config.with_outage(start, len),
        None => config,
    }
}

async fn run(quick: bool) -> BenchResult<Vec<Outcome>> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let mut server = TestServer::start(root);
    let mut out = Vec::new();
    let outage = if quick { 2 } else { 20 };

    let idle = server
        .phone(root, "idle", Role::Volunteer, &["team:9"])
        .await;
    idle.sync().await?;
    out.push(measure("empty round, 0 % loss", &idle, 0, link(quick, 0.0, None, 1)).await?);

    // Loss is drawn per datagram from a seeded generator; a round is a few dozen datagrams, so
    // each lossy case runs with three seeds.
    let cut = Some((Duration::from_secs(2), Duration::from_secs(outage)));
    let mut cases = vec![(
        "day's work (50 + 10 edits), 0 % loss".to_string(),
        0.0,
        None,
        1,
    )];
    for seed in 1..=3 {
        cases.push((
            format!("day's work, 20 % loss, seed {seed}"),
            0.2,
            None,
            seed,
        ));
    }
    for seed in 1..=3 {
        let name = format!("day's work, 20 % loss + {outage} s outage, seed {seed}");
        cases.push((name, 0.2, cut, seed));
    }
    let mut expected = 0;
    for (n, (name, loss, outage, seed)) in cases.into_iter().enumerate() {
        let team = format!("team:{n}");
        let phone = server
            .phone(root, &format!("v{n}"), Role::Volunteer, &[&team])
            .await;
        phone.sync().await?;
        let ids: Vec<String> = (0..50)
            .map(|i| phone.check_in(&team, &format!("第{i}次活动")))
            .collect();
        for id in &ids[..10] {
            phone.set(id, &[("note", text("补充说明"))]);
        }
        expected += 50;
        out.push(measure(&name, &phone, 50, link(quick, loss, outage, seed)).await?);
    }

    // A village team's records, pushed over a clean link; then a new phone of the village.
    let team = server
        .phone(root, "cun1", Role::Village, &["village:1"])
        .await;
    for i in 0..499 {
        team.create(
            Kind::VillageVisit,
            "village:1",
            &[
                ("village", text("大坪村")),
                ("household", text(&format!("{i}号户"))),
                ("visited_at", text("2026-11-28T09:00:00+08:00")),
                ("findings", text("老人独居，需定期探访")),
                (
                    "visitors",
                    FieldValue::TextList(vec!["李四".into(), "王五".into()]),
                ),
            ],
        );
    }
    team.create(
        Kind::VillageSurvey,
        "village:1",
        &[
            ("village", text("大坪村")),
            ("licensed_doctors", FieldValue::Integer(2)),
        ],
    );
    team.sync().await?;
    expected += 500;
    for seed in 1..=3 {
        let fresh = server
            .phone(
                root,
                &format!("cun-new{seed}"),
                Role::Village,
                &["village:1"],
            )
            .await;
        let name = format!("fresh village phone pulls 500, 20 % loss, seed {seed}");
        let pulled = measure(&name, &fresh, 500, link(quick, 0.2, None, seed)).await?;
        if fresh.records().len() != 500 {
            return Err(format!("the fresh phone holds {} records", fresh.records().len()).into());
        }
        out.push(pulled);
    }

    let held = server.records().len();
    if held != expected {
        return Err(format!("the server holds {held} records, expected {expected}").into());
    }
    if let Some(running) = server.running.take() {
        running.stop().await;
    }
    Ok(out)
}

async fn measure(
    name: &str,
    phone: &Phone,
    records: usize,
    config: LinkConfig,
) -> BenchResult<Outcome> {
    let socket: Arc<ImpairedSocket> = ImpairedSocket::bind("127.0.0.1:0".parse()?, config)?;
    let handle = socket.handle();
    let options = SyncOptions {
        deadline: Duration::from_secs(180),
        socket: Some(socket),
        ..SyncOptions::default()
    };
    let started = Instant::now();
    let (report, _) = client::sync_with(&phone.store, &options, &mut |_| {})
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let wall = started.elapsed();
    if phone.store.pending_count()? != 0 {
        return Err(format!("{name}: records left pending").into());
    }
    let stats = handle.stats();
    Ok(Outcome {
        name: name.to_string(),
        records,
        wall,
        up: stats.up.sent_bytes,
        down: stats.down.sent_bytes,
        connections: report.connections,
        exchanges: report.exchanges,
        dropped: (stats.up.dropped(), stats.down.dropped()),
    })
}
