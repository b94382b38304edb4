//! How fast the office gets a big export over HTTP: time to the first byte and to the last, for
//! CSV and JSON, against a server holding N check-ins (default 100,000) in a real redb file.
//!
//! `cargo bench -p fieldsync-tests --bench export -- [--records N]`
//!
//! The records go in through the server's own merge and commit path (1,000 per commit), so the
//! store holds real Automerge documents beside their projections. The export must read only the
//! projections; for comparison the bench also times one pass over them in-process.

use std::time::Instant;

use fieldsync_proto::access::{DeviceCtx, Role};
use fieldsync_proto::model::{FieldValue, Kind};
use fieldsync_proto::protocol::{Limits, PushDoc};
use fieldsync_proto::record::Record;
use fieldsync_server::store::{PreparedRound, User};
use fieldsync_server::{DataDir, ServeOptions};

const BATCH: usize = 1000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let records: usize = args
        .iter()
        .position(|a| a == "--records")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(100_000);
    let root = tempfile::tempdir()?;
    let dir = DataDir::init(&root.path().join("server"))?;

    let started = Instant::now();
    fill(&dir, records)?;
    let fill_secs = started.elapsed().as_secs_f64();
    let file_mib = std::fs::metadata(dir.path.join(fieldsync_server::store::DB_FILE))?.len() as f64
        / (1 << 20) as f64;
    println!(
        "stored {records} check-ins in {fill_secs:.1} s (redb file {file_mib:.0} MiB); RSS now {:.0} MiB",
        rss_mib()
    );

    let started = Instant::now();
    let mut seen = 0usize;
    dir.store.for_each_record(Some(Kind::CheckIn), None, |_| {
        seen += 1;
        Ok(())
    })?;
    let pass_secs = started.elapsed().as_secs_f64();
    println!("one in-process pass over the projections: {pass_secs:.2} s ({seen} records)");

    let staff = User {
        id: "office".into(),
        name: "办公室".into(),
        role: Role::Office,
        scopes: Vec::new(),
    };
    fieldsync_server::auth::add_staff(&dir.store, &staff, "bench password")?;
    let token = fieldsync_server::auth::issue_token(&dir.store, "office", 0)?;
    let options = ServeOptions {
        http: Some("127.0.0.1:0".parse()?),
        ..ServeOptions::quic("127.0.0.1:0".parse()?)
    };
    let running = fieldsync_server::start_with(dir.store.clone(), &dir.identity, options)?;
    let base = format!("http://{}", running.http_addr.ok_or("no http address")?);
    let client = reqwest::Client::new();

    println!("| format | first byte | complete | rows | size | MiB/s | RSS before → peak during |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for format in ["csv", "json"] {
        let rss_before = rss_mib();
        let mut rss_peak = rss_before;
        let started = Instant::now();
        let mut response = client
            .get(format!("{base}/export?kind=check_in&format={format}"))
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?;
        let mut first = None;
        let mut bytes = 0usize;
        let mut lines = 0usize;
        while let Some(chunk) = response.chunk().await? {
            first.get_or_insert_with(|| started.elapsed().as_secs_f64());
            bytes += chunk.len();
            lines += chunk.iter().filter(|b| **b == b'\n').count();
            rss_peak = rss_peak.max(rss_mib());
        }
        let total = started.elapsed().as_secs_f64();
        // CSV: a header line, then a line per row; JSON: `[`, a line per record, `]`.
        let rows = lines.saturating_sub(if format == "csv" { 1 } else { 2 });
        println!(
            "| {format} | {:.0} ms | {total:.2} s | {rows} | {:.1} MiB | {:.0} | {rss_before:.0} → {rss_peak:.0} MiB |",
            first.unwrap_or(total) * 1000.0,
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / (1 << 20) as f64 / total,
        );
        if rows != records {
            return Err(format!("{format} export has {rows} rows, expected {records}").into());
        }
    }
    running.stop().await;
    Ok(())
}

/// Stores `n` check-ins of 100 volunteers in 10 teams through the server's merge and commit.
fn fill(dir: &DataDir, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let limits = Limits::default();
    let mut made = 0;
    while made < n {
        let mut rounds = Vec::new();
        for volunteer in 0..100 {
            if made >= n {
                break;
            }
            let team = volunteer % 10;
            let user = format!("v{volunteer}");
            let actor = [volunteer as u8 + 1; 16];
            let ctx = DeviceCtx {
                device_id: hex::encode(actor),
                actor: actor.to_vec(),
                user_id: user.clone(),
                role: Role::Volunteer,
                scopes: vec![format!("team:{team}").parse().expect("scope")],
            };
            let mut push = Vec::new();
            for _ in 0..(BATCH / 100).min(n - made) {
                let day = 1 + made % 28;
                let fields: Vec<(String, FieldValue)> = [
                    ("volunteer_id", user.as_str()),
                    ("volunteer_name", "张三丰"),
                    ("team", "幸福社区志愿服务队"),
                    ("activity", "清洁家园"),
                    ("place", "幸福社区, \"东门\" 广场"),
                    ("started_at", &format!("2026-11-{day:02}T08:00:00+08:00")),
                    ("ended_at", &format!("2026-11-{day:02}T10:30:00+08:00")),
                    ("status", "submitted"),
                    ("note", "扫落叶，清理小广告"),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), FieldValue::Text(v.to_string())))
                .collect();
                let scope = format!("team:{team}");
                let mut record = Record::create(
                    Kind::CheckIn,
                    &scope,
                    automerge::ActorId::from(actor),
                    &fields,
                    1_764_288_000,
                )?;
                push.push(PushDoc {
                    id: *record.id().as_bytes(),
                    kind: Kind::CheckIn,
                    scope,
                    changes: record.changes_since(&[]),
                });
                made += 1;
            }
            let prepared = dir.store.prepare(&ctx, push, &limits)?;
            rounds.push(PreparedRound {
                ctx,
                batch: None,
                push: prepared,
            });
        }
        dir.store
            .commit_rounds(rounds, &limits, 1_764_300_000_000)?;
    }
    Ok(())
}

/// This process's resident set size in MiB (Linux; 0 elsewhere).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
