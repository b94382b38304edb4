//! The `abuse` soak benchmark: enrolled phones syncing while strangers attack the server.
//!
//! The server is the release `fieldsync-server` binary as a child process (so its memory is
//! its own), on a fresh data folder on 127.0.0.1, with phones enrolled through its `enroll`
//! command. Two phases of the same length:
//!
//! - **quiet**: every phone records a check-in and syncs, then waits a second, over and over;
//! - **abuse**: the same, while `--strangers` tasks each keep a connection from a
//!   self-signed certificate nobody enrolled, from eight loopback addresses: connect, send a
//!   deflate bomb (`--bomb-mib` MiB of zeros, deflated), hold the connection until the server
//!   ends it, connect again.
//!
//! Reported per phase: the phones' rounds that succeeded and failed, p50/p99/max round time,
//! the server's peak resident memory (sampled from /proc every 100 ms), and the strangers'
//! connections: handshakes completed, and those turned away (handshake refused, or closed at
//! once for want of a slot). Every round has a 30 s deadline, so a locked-out
//! phone counts as a failure rather than stalling the run.
//!
//! Run: `cargo bench -p fieldsync-tests --bench abuse -- [--phones 8] [--seconds 20]
//! [--strangers 1100] [--bomb-mib 4] [--server-bin PATH] [--quick]`. `--server-bin` runs another
//! build of the server (say an older commit's) with this build's phones and attackers, for a
//! before/after comparison. `--quick` is a small CI smoke run. Exits non-zero if a quiet round
//! fails.

use std::error::Error;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fieldsync_device::client::{self, SyncOptions};
use fieldsync_device::store::DeviceStore;
use fieldsync_proto::protocol::close;
use fieldsync_tests::attack;

type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

struct Args {
    phones: usize,
    seconds: u64,
    strangers: usize,
    bomb_mib: usize,
    server_bin: PathBuf,
}

impl Args {
    fn parse() -> BenchResult<Args> {
        let mut args = Args {
            phones: 8,
            seconds: 20,
            strangers: 1100,
            bomb_mib: 4,
            server_bin: fieldsync_tests::binary("fieldsync-server"),
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let mut value = || it.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "--phones" => args.phones = value()?.parse()?,
                "--seconds" => args.seconds = value()?.parse()?,
                "--strangers" => args.strangers = value()?.parse()?,
                "--bomb-mib" => args.bomb_mib = value()?.parse()?,
                "--server-bin" => args.server_bin = value()?.into(),
                "--quick" => {
                    args.phones = 3;
                    args.seconds = 4;
                    args.strangers = 100;
                    args.bomb_mib = 1;
                }
                // cargo bench passes --bench to every bench binary.
                "--bench" => {}
                other => return Err(format!("unknown argument {other}").into()),
            }
        }
        Ok(args)
    }
}

/// What one phase measured.
struct Phase {
    name: &'static str,
    round_times: Vec<Duration>,
    failed: u64,
    peak_rss_kib: u64,
    strangers_connected: u64,
    strangers_turned_away: u64,
}

fn main() -> BenchResult<()> {
    let args = Args::parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tmp = tempfile::tempdir()?;
    let (codes, fingerprint) = prepare(&args.server_bin, &tmp.path().join("data"), args.phones)?;
    let mut server = Server::spawn(&args.server_bin, &tmp.path().join("data"))?;
    let result = rt.block_on(run(&args, &server, tmp.path(), &codes, &fingerprint));
    server.stop();
    let phases = result?;
    println!(
        "abuse: {} phones, {} s per phase, {} strangers holding connections with {} MiB deflate bombs; server {}",
        args.phones,
        args.seconds,
        args.strangers,
        args.bomb_mib,
        args.server_bin.display()
    );
    println!(
        "{:<8} {:>7} {:>7} {:>9} {:>9} {:>9} {:>12} {:>12} {:>12}",
        "phase",
        "rounds",
        "failed",
        "p50 ms",
        "p99 ms",
        "max ms",
        "peak RSS MB",
        "strangers",
        "turned away"
    );
    for p in &phases {
        let mut times = p.round_times.clone();
        times.sort();
        let at = |q: f64| {
            times
                .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "{:<8} {:>7} {:>7} {:>9.0} {:>9.0} {:>9.0} {:>12.1} {:>12} {:>12}",
            p.name,
            times.len(),
            p.failed,
            at(0.5),
            at(0.99),
            times.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
            p.peak_rss_kib as f64 / 1024.0,
            p.strangers_connected,
            p.strangers_turned_away
        );
    }
    if phases.first().is_some_and(|quiet| quiet.failed > 0) {
        return Err("rounds failed without any abuse".into());
    }
    Ok(())
}

async fn run(
    args: &Args,
    server: &Server,
    root: &Path,
    codes: &[String],
    fingerprint: &str,
) -> BenchResult<Vec<Phase>> {
    let addr = server.addr.to_string();
    let mut phones = Vec::new();
    for (i, code) in codes.iter().enumerate() {
        let store = DeviceStore::open(&root.join(format!("phone-{i}")))?;
        client::enroll(&store, &addr, fingerprint, code).await?;
        phones.push(store);
    }
    let pinned = fieldsync_device::tls::parse_fingerprint(fingerprint)?;
    let quiet = phase("quiet", args, server, &phones, None).await?;
    let bomb = Arc::new(
        tokio::task::spawn_blocking({
            let mib = args.bomb_mib;
            move || attack::deflate_bomb(mib << 20)
        })
        .await?,
    );
    let attack = Attack {
        server: server.addr,
        pinned,
        bomb,
        strangers: args.strangers,
    };
    let abused = phase("abuse", args, server, &phones, Some(attack)).await?;
    Ok(vec![quiet, abused])
}

struct Attack {
    server: SocketAddr,
    pinned: [u8; 32],
    bomb: Arc<Vec<u8>>,
    strangers: usize,
}

async fn phase(
    name: &'static str,
    args: &Args,
    server: &Server,
    phones: &[DeviceStore],
    attack: Option<Attack>,
) -> BenchResult<Phase> {
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicU64::new(0));
    let turned_away = Arc::new(AtomicU64::new(0));
    let mut attackers = tokio::task::JoinSet::new();
    if let Some(attack) = attack {
        let endpoints: Vec<quinn::Endpoint> = (0..8u8)
            .map(|h| attack::endpoint(IpAddr::from([127, 0, 0, 10 + h])))
            .collect::<Result<_, _>>()?;
        for i in 0..attack.strangers {
            let endpoint = endpoints[i % endpoints.len()].clone();
            let (stop, connected, turned_away) =
                (stop.clone(), connected.clone(), turned_away.clone());
            let (server, pinned, bomb) = (attack.server, attack.pinned, attack.bomb.clone());
            attackers.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(conn) = attack::stranger(&endpoint, server, pinned).await else {
                        turned_away.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    connected.fetch_add(1, Ordering::Relaxed);
                    let _ = attack::send(&conn, &bomb, Duration::from_secs(30)).await;
                    tokio::select! {
                        ended = conn.closed() => {
                            if attack::close_code(&ended).is_some_and(|(code, _)| code == close::BUSY) {
                                turned_away.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ = wait_for(&stop) => conn.close(0u32.into(), b"done"),
                    }
                }
            });
        }
        // Let the strangers take what they can before the phones are measured.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, rss, pid) = (stop.clone(), rss.clone(), server.child.id());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                rss.fetch_max(resident_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let mut syncing = tokio::task::JoinSet::new();
    for (i, phone) in phones.iter().enumerate() {
        let phone = phone.clone();
        syncing.spawn(async move {
            let (mut times, mut failed, mut round) = (Vec::new(), 0u64, 0);
            let options = SyncOptions {
                deadline: Duration::from_secs(30),
                ..SyncOptions::default()
            };
            while Instant::now() < until {
                round += 1;
                let form = fieldsync_device::store::CheckInForm {
                    activity: format!("巡查 {i}-{round}"),
                    place: "社区".into(),
                    started_at: chrono::Utc::now().to_rfc3339(),
                    ..Default::default()
                };
                let started = Instant::now();
                let ok = match phone.check_in(&form) {
                    Ok(_) => client::sync_with(&phone, &options, &mut |_| {})
                        .await
                        .is_ok(),
                    Err(_) => false,
                };
                if ok {
                    times.push(started.elapsed());
                } else {
                    failed += 1;
                }
                // A phone syncs at most once a second: the server's rate limit allows two.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            (times, failed)
        });
    }
    let (mut round_times, mut failed) = (Vec::new(), 0);
    while let Some(done) = syncing.join_next().await {
        let (times, f) = done?;
        round_times.extend(times);
        failed += f;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while attackers.join_next().await.is_some() {}
    })
    .await;
    attackers.abort_all();
    Ok(Phase {
        name,
        round_times,
        failed,
        peak_rss_kib: rss.load(Ordering::Relaxed),
        strangers_connected: connected.load(Ordering::Relaxed),
        strangers_turned_away: turned_away.load(Ordering::Relaxed),
    })
}

async fn wait_for(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The resident memory of process `pid` in KiB (0 if it cannot be read).
fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Initialises a data folder with `server_bin` and issues a code per phone; returns the codes
/// and the server's fingerprint.
fn prepare(server_bin: &Path, data: &Path, phones: usize) -> BenchResult<(Vec<String>, String)> {
    let run = |args: &[&str]| -> BenchResult<String> {
        let out = Command::new(server_bin).args(args).output()?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let data_arg = data.to_str().ok_or("data path is not UTF-8")?;
    run(&["init", "--data", data_arg])?;
    let (mut codes, mut fingerprint) = (Vec::new(), String::new());
    for i in 0..phones {
        let user = format!("v{i}");
        let out = run(&[
            "enroll",
            "--data",
            data_arg,
            "--user",
            &user,
            "--name",
            &user,
            "--role",
            "volunteer",
            "--scope",
            "team:1",
        ])?;
        let value = |prefix: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|v| v.trim().to_string())
        };
        codes.push(value("code:").ok_or("no code printed")?);
        fingerprint = value("fingerprint:").ok_or("no fingerprint printed")?;
    }
    Ok((codes, fingerprint))
}

/// `fieldsync-server serve` as a child process.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn spawn(server_bin: &Path, data: &Path) -> BenchResult<Server> {
        use std::io::BufRead;
        let mut child = Command::new(server_bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().ok_or("the server exited before listening")??;
            if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.parse()?;
            }
        };
        // Keep reading stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Server { child, addr })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
