//! The "morning burst" benchmark: every phone of every team comes back into signal at once.
//!
//! A fresh server (temporary data folder, real redb file) listens on 127.0.0.1:0 over real QUIC.
//! D devices, each with its own device store in its own temporary folder, enroll as D distinct
//! volunteers spread round-robin over T teams (default 10: `team:0` … `team:9`) and each record
//! R check-ins offline.
//! Then all D devices run one sync round at the same moment, each on its own OS thread with its
//! own single-threaded tokio runtime (as separate phones would), while the server runs on a
//! multi-threaded runtime in this same process. The headline wall time runs from the first
//! round's start until the last `client::sync` call has returned; a round returns only after the
//! server's durable redb commit of its pushes, after the device applied what its teammates had
//! already pushed, and after the QUIC connection was closed (`Endpoint::wait_idle`, which waits
//! out the draining period of 3 × PTO). Two earlier moments are reported too, taken from the
//! round's progress callback: when the last device had its pushes acknowledged, and when the last
//! round was complete before closing.
//!
//! Run: `cargo bench -p fieldsync-tests --bench morning_burst -- [--devices D] [--records R]
//! [--teams T] [--server-process]` (defaults 100 × 100, 10 teams). Teammates share a scope, so
//! each round also pulls down what the teammates that synced before it pushed; `--teams D` puts
//! every device in a team of its own and measures the push path alone. Exits non-zero unless the
//! server ends up holding exactly D × R records and accepted every push.
//!
//! Honest caveats, printed with the figures:
//! - devices and server share this machine's cores, so the wall time includes the devices' own
//!   work (loading pending documents, client TLS, applying received records, local commits);
//!   CPU time is reported per side to show the split, and so is the CPU that other processes on
//!   the machine used during the burst (a busy machine slows the figures down);
//! - peak RSS is this whole process (server and all simulated devices), measured from a reset of
//!   the high-water mark just before the burst;
//! - `--server-process` isolates the server: it builds the real `fieldsync-server` binary
//!   (`cargo build --release`), issues the codes with `fieldsync-server init` / `enroll` and runs
//!   `fieldsync-server serve` as a child process; the server's own CPU, VmRSS before and after
//!   the burst and peak RSS (VmHWM, over the server's whole life) are then read from
//!   `/proc/<pid>`, and the records it holds are counted with `fieldsync-server export` after it
//!   stopped on SIGTERM (its commit counters are not visible from outside, so not reported);
//! - the UDP byte counts are quinn's connection statistics and include the QUIC/TLS handshake
//!   (certificates both ways) and the close; an empty round by an extra idle device is measured
//!   after the burst as a baseline so the per-record marginal cost can be shown too.

use std::error::Error;
use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use fieldsync_device::client;
use fieldsync_device::store::DeviceStore;
use fieldsync_proto::Role;
use fieldsync_proto::model::{FieldValue, Kind};
use fieldsync_proto::protocol::{self, Batch, ClientMsg, Limits, PROTOCOL_VERSION, Pull};
use fieldsync_proto::sync::{BatchLimits, RoundReport, split_batches};
use fieldsync_server::DataDir;
use fieldsync_server::store::User;

type BoxError = Box<dyn Error + Send + Sync>;
type BenchResult<T> = Result<T, BoxError>;

/// Name of the server runtime's threads (workers and blocking pool).
const SERVER_THREAD: &str = "server-rt";
/// The server's group-commit thread (the kernel truncates thread names to 15 bytes).
const COMMIT_THREAD: &str = "fieldsync-commi";
/// Linux reports thread CPU time in USER_HZ ticks, 100 per second on every mainstream kernel.
const TICKS_PER_SEC: f64 = 100.0;

const ACTIVITIES: [&str; 4] = ["文明城市创建", "清洁家园", "双报到双服务", "社区网格化"];
const NOTES: [&str; 4] = [
    "清理楼道小广告，劝导文明停车",
    "打扫公共区域，分类投放垃圾",
    "走访独居老人，代购生活用品",
    "网格巡查，登记隐患两处",
];

struct Args {
    devices: usize,
    records: usize,
    teams: usize,
    /// Run the real server binary as a child process instead of in this process.
    server_process: bool,
}

fn parse_args() -> BenchResult<Args> {
    let mut args = Args {
        devices: 100,
        records: 100,
        teams: 10,
        server_process: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let target = match name.as_str() {
            "--bench" => continue,
            "--devices" | "-d" => &mut args.devices,
            "--records" | "-r" => &mut args.records,
            "--teams" | "-t" => &mut args.teams,
            "--server-process" => {
                args.server_process = true;
                continue;
            }
            "--help" | "-h" => {
                println!(
                    "usage: cargo bench -p fieldsync-tests --bench morning_burst -- \
                     [--devices D] [--records R] [--teams T] [--server-process]   \
                     (defaults 100, 100, 10; --server-process runs the fieldsync-server binary \
                     as a child process and reports its own CPU and memory)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)").into()),
        };
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("{name} needs a number"))?,
        };
        *target = value.parse().map_err(|e| format!("{name} {value}: {e}"))?;
    }
    if args.devices == 0 || args.records == 0 || args.teams == 0 {
        return Err("--devices, --records and --teams must be at least 1".into());
    }
    Ok(args)
}

/// One simulated phone after its burst round.
struct DeviceOutcome {
    report: RoundReport,
    udp_tx: u64,
    udp_rx: u64,
    /// `encode_frame` length of the `Sync` message this device sends (pending + cursors).
    sync_frame: usize,
    /// Sum of the pushed Automerge change bytes (before framing and deflate).
    change_bytes: usize,
    /// Sum of the JSON sizes of the records it created.
    json_bytes: usize,
    started: Instant,
    /// When the server's verdicts on its pushes were stored (they were durable on the server).
    acked: Instant,
    /// When the round was complete (pull applied), before the QUIC connection was closed.
    completed: Instant,
    /// When `client::sync` returned, after closing the connection (`Endpoint::wait_idle`).
    finished: Instant,
    cpu_secs: f64,
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("morning_burst failed: {e}");
            std::process::exit(2);
        }
    }
}

fn run() -> BenchResult<bool> {
    let args = parse_args()?;
    let (d, r, teams) = (args.devices, args.records, args.teams);
    let root = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;

    // One volunteer per device, teams assigned round-robin, and one extra idle device in a team of
    // its own for the baseline round after the burst. Their one-time codes are issued before the
    // server starts: the server binary holds its redb file exclusively while it serves.
    let mut users: Vec<User> = (0..d)
        .map(|i| User {
            id: format!("vol-{i:04}"),
            name: format!("志愿者{i:04}"),
            role: Role::Volunteer,
            scopes: vec![format!("team:{}", i % teams).parse().expect("scope")],
        })
        .collect();
    users.push(User {
        id: "vol-idle".into(),
        name: "空闲设备".into(),
        role: Role::Volunteer,
        scopes: vec!["team:idle".parse().expect("scope")],
    });
    let server_dir = root.path().join("server");
    let (server, codes) = if args.server_process {
        Server::child(&server_dir, &users)?
    } else {
        Server::in_process(&server_dir, &users)?
    };
    let (addr, fingerprint) = (server.addr.clone(), server.fingerprint.clone());
    println!(
        "morning burst: {d} devices × {r} check-ins, {teams} teams, server on {addr} ({})",
        server.describe()
    );

    // Enrollment of the D devices.
    let setup = Instant::now();
    let mut stores = Vec::with_capacity(d);
    for (i, (user, code)) in users.iter().zip(&codes).take(d).enumerate() {
        let store = DeviceStore::open(&root.path().join(format!("device-{i:04}")))?;
        let info = server
            .rt
            .block_on(client::enroll(&store, &addr, &fingerprint, code))
            .map_err(|e| format!("enrolling device {i}: {e}"))?;
        stores.push((Arc::new(store), info.user_id, user.name.clone(), i % teams));
    }
    let enroll_secs = setup.elapsed().as_secs_f64();

    // Offline recording, then the burst. Each device thread records its check-ins, prepares its
    // runtime, and waits at the gates so that every round starts at the same moment.
    let recording = Instant::now();
    let gates = Arc::new(Gates {
        ready: Barrier::new(d + 1),
        go: Barrier::new(d + 1),
    });
    let mut handles = Vec::with_capacity(d);
    for (i, (store, user_id, user_name, team)) in stores.iter().cloned().enumerate() {
        let gates = gates.clone();
        let handle = std::thread::Builder::new()
            .name(format!("device-{i:04}"))
            .stack_size(1 << 20)
            .spawn(move || device(i, &store, &user_id, &user_name, team, r, &gates));
        // On failure the process exits, which also ends the threads waiting at the gates.
        handles.push(handle.map_err(|e| format!("cannot start device thread {i}: {e}"))?);
    }
    // Every device thread passes `ready` once its records are written (or it failed) and then
    // waits at `go`; in between, with every thread idle, the counters are read.
    gates.ready.wait();
    let record_secs = recording.elapsed().as_secs_f64();
    let self_proc = Path::new("/proc/self");
    let server_proc = server.child_proc();
    let server_proc = server_proc.as_deref();
    let counters_before = server.counters();
    let process_cpu_before = cpu_secs(self_proc);
    let server_cpu_before = server_proc.and_then(cpu_secs);
    let commit_cpu_before = named_thread_cpu_secs(server_proc.unwrap_or(self_proc), COMMIT_THREAD);
    let machine_before = machine_cpu();
    let udp_before = udp_counters();
    let rss_reset = reset_peak_rss();
    let rss_before = proc_status_kb(self_proc, "VmRSS");
    let server_rss_before = server_proc.and_then(|p| proc_status_kb(p, "VmRSS"));
    gates.go.wait();

    let mut outcomes = Vec::with_capacity(d);
    let mut failures = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => failures.push(format!("device {i}: {e}")),
            Err(_) => failures.push(format!("device {i}: thread panicked")),
        }
    }
    let peak_rss = proc_status_kb(self_proc, "VmHWM");
    let server_rss_after = server_proc.and_then(|p| proc_status_kb(p, "VmRSS"));
    let server_peak_rss = server_proc.and_then(|p| proc_status_kb(p, "VmHWM"));
    let process_cpu = cpu_secs(self_proc).unwrap_or(0.0) - process_cpu_before.unwrap_or(0.0);
    // The child server's CPU during the burst; `None` when the server runs in this process.
    let child_cpu = server_proc
        .and_then(cpu_secs)
        .zip(server_cpu_before)
        .map(|(a, b)| a - b);
    let commit_cpu =
        named_thread_cpu_secs(server_proc.unwrap_or(self_proc), COMMIT_THREAD) - commit_cpu_before;
    let machine = machine_cpu()
        .zip(machine_before)
        .map(|(a, b)| (a.0 - b.0, a.1 - b.1));
    let udp_drops = udp_counters().zip(udp_before).map(|(a, b)| a - b);
    let counters = server
        .counters()
        .zip(counters_before)
        .map(|(a, b)| (a.0 - b.0, a.1 - b.1));
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("{f}");
        }
        return Err(format!("{} of {d} device rounds failed", failures.len()).into());
    }

    // Baseline: an extra device with nothing to push in a team of its own runs one round; its
    // UDP bytes are the fixed cost of a round (handshake, certificates, one empty exchange, close).
    let idle = DeviceStore::open(&root.path().join("device-idle"))?;
    server
        .rt
        .block_on(client::enroll(&idle, &addr, &fingerprint, &codes[d]))
        .map_err(|e| format!("enrolling the idle device: {e}"))?;
    let idle_started = Instant::now();
    let (idle_report, (base_tx, base_rx)) = server
        .rt
        .block_on(client::sync(&idle, &mut |_| {}))
        .map_err(|e| format!("baseline round: {e}"))?;
    let idle_secs = idle_started.elapsed().as_secs_f64();

    let held = server.finish()?;

    // Figures.
    let expected = d * r;
    let start = outcomes
        .iter()
        .map(|o| o.started)
        .min()
        .ok_or("no devices")?;
    let end = outcomes
        .iter()
        .map(|o| o.finished)
        .max()
        .ok_or("no devices")?;
    let wall = end.duration_since(start).as_secs_f64();
    let until = |f: fn(&DeviceOutcome) -> Instant| {
        let last = outcomes.iter().map(f).max().unwrap_or(start);
        last.duration_since(start).as_secs_f64()
    };
    let wall_acked = until(|o| o.acked);
    let wall_completed = until(|o| o.completed);
    let sorted = |f: fn(&DeviceOutcome) -> f64| {
        let mut v: Vec<f64> = outcomes.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let latencies = sorted(|o| o.finished.duration_since(o.started).as_secs_f64());
    let closing = sorted(|o| o.finished.duration_since(o.completed).as_secs_f64());
    let sent: usize = outcomes.iter().map(|o| o.report.sent).sum();
    let refused: usize = outcomes.iter().map(|o| o.report.refused.len()).sum();
    let received: usize = outcomes.iter().map(|o| o.report.received).sum();
    let trips: Vec<usize> = outcomes.iter().map(|o| o.report.exchanges + 1).collect();
    let trips_min = trips.iter().copied().min().unwrap_or(0);
    let trips_max = trips.iter().copied().max().unwrap_or(0);
    let trips_mean = trips.iter().sum::<usize>() as f64 / d as f64;
    let sum = |f: fn(&DeviceOutcome) -> u64| outcomes.iter().map(f).sum::<u64>() as f64;
    let udp_tx = sum(|o| o.udp_tx);
    let udp_rx = sum(|o| o.udp_rx);
    let frames = sum(|o| o.sync_frame as u64);
    let changes = sum(|o| o.change_bytes as u64);
    let json = sum(|o| o.json_bytes as u64);
    let device_cpu: f64 = outcomes.iter().map(|o| o.cpu_secs).sum();
    let n = expected as f64;
    let per_rec = |total: f64| total / n;
    let marginal = |total: f64, base: u64| (total - base as f64 * d as f64) / n;

    let mut t = Table::default();
    t.head("setup (not timed)");
    t.row(
        "enroll D devices, sequentially",
        format!("{enroll_secs:.2} s"),
    );
    t.row(
        "record D×R check-ins offline (1 redb commit each)",
        format!("{record_secs:.2} s"),
    );
    t.row(
        "mean JSON size of a check-in (RecordView)",
        format!("{:.0} B", json / n),
    );
    t.row(
        "mean Automerge change bytes per check-in",
        format!("{:.0} B", changes / n),
    );
    t.head("burst: D concurrent rounds, one each");
    t.row(
        "wall time, first start → last sync() returned",
        format!("{wall:.3} s"),
    );
    t.row("records/s (D×R / wall)", format!("{:.0}", n / wall));
    t.row(
        "  … → last push durably committed and acknowledged",
        format!("{wall_acked:.3} s"),
    );
    t.row(
        "  … → last round complete (pull applied), before close",
        format!("{wall_completed:.3} s"),
    );
    let pcts = |v: &[f64]| {
        format!(
            "{:.3} / {:.3} / {:.3} s",
            percentile(v, 0.50),
            percentile(v, 0.95),
            percentile(v, 1.0)
        )
    };
    t.row(
        "per-device sync() latency p50 / p95 / max",
        pcts(&latencies),
    );
    t.row(
        "  of which closing the connection (wait_idle)",
        pcts(&closing),
    );
    t.row(
        "one empty round alone, idle server (latency floor)",
        format!("{idle_secs:.3} s (includes QUIC close drain)"),
    );
    t.row(
        "round trips per round (exchanges + 1 handshake)",
        format!("min {trips_min}, mean {trips_mean:.2}, max {trips_max}"),
    );
    t.row(
        "records accepted / refused",
        format!("{sent} / {refused} (expected {expected} / 0)"),
    );
    t.row(
        "teammates' records pulled down in the same round",
        format!(
            "{received} total, {:.0} per device",
            received as f64 / d as f64
        ),
    );
    t.row(
        "server durable commits (group commit)",
        match counters {
            Some((commits, rounds)) => format!("{commits} commits for {rounds} rounds"),
            None => "n/a (server in its own process)".into(),
        },
    );
    t.head("bytes per pushed record");
    t.row(
        "up, application frame (Sync message)",
        format!("{:.1} B", per_rec(frames)),
    );
    t.row(
        "up, UDP total (incl. handshake, certs)",
        format!("{:.1} B", per_rec(udp_tx)),
    );
    t.row(
        "up, UDP minus an empty round's cost",
        format!("{:.1} B", marginal(udp_tx, base_tx)),
    );
    t.row(
        "down, UDP total (incl. teammates' records)",
        format!("{:.1} B", per_rec(udp_rx)),
    );
    t.row(
        "down, UDP minus an empty round's cost",
        format!("{:.1} B", marginal(udp_rx, base_rx)),
    );
    t.row(
        "empty round (idle device) UDP up / down",
        format!(
            "{base_tx} / {base_rx} B, {} round trips",
            idle_report.exchanges + 1
        ),
    );
    match child_cpu {
        Some(cpu) => {
            t.head("resources during the burst (server in its own process)");
            t.row("CPU, server process", format!("{cpu:.2} s"));
        }
        None => {
            t.head("resources during the burst (devices and server share this process)");
            t.row(
                "CPU, server side (process minus device threads)",
                format!("{:.2} s", (process_cpu - device_cpu).max(0.0)),
            );
        }
    }
    t.row(
        "  of which the group-commit thread (serial)",
        format!("{commit_cpu:.2} s"),
    );
    t.row("CPU, device threads", format!("{device_cpu:.2} s"));
    t.row(
        "CPU, other processes on this machine / iowait",
        match machine {
            Some((busy, iowait)) => format!(
                "{:.2} s / {iowait:.2} s (of {:.2} s = wall × cores)",
                (busy - process_cpu - child_cpu.unwrap_or(0.0)).max(0.0),
                wall * cores()
            ),
            None => "n/a".into(),
        },
    );
    t.row(
        "UDP datagrams dropped by the kernel",
        udp_drops.map_or("n/a".into(), |n| n.to_string()),
    );
    if server_proc.is_some() {
        t.row(
            "server process peak RSS (VmHWM, since it started)",
            fmt_kb(server_peak_rss),
        );
        t.row(
            "server process RSS (VmRSS) before / after the burst",
            format!(
                "{} / {}",
                fmt_kb(server_rss_before),
                fmt_kb(server_rss_after)
            ),
        );
    }
    t.row(
        if server_proc.is_some() {
            "RSS before burst / peak during burst (bench: devices only)"
        } else {
            "RSS before burst / peak during burst (whole process)"
        },
        format!(
            "{} / {}{}",
            fmt_kb(rss_before),
            fmt_kb(peak_rss),
            if rss_reset {
                ""
            } else {
                " (peak not reset: since start)"
            }
        ),
    );
    t.head("check");
    t.row(
        "records held by the server",
        format!("{held} (expected {expected})"),
    );
    t.print();

    println!();
    println!("targets (issue):");
    let ok = |b: bool| if b { "met" } else { "NOT met" };
    if d == 100 && r == 100 {
        println!(
            "  wall ≤ 2 s for 100×100 on 2 cores: {wall:.3} s — {}",
            ok(wall <= 2.0)
        );
    } else {
        println!("  wall ≤ 2 s applies to 100×100 only: {wall:.3} s here");
    }
    println!(
        "  ≤ 4 round trips per device round: max {trips_max} — {}",
        ok(trips_max <= 4)
    );
    println!(
        "  ≤ 270 B up per new check-in: frame {:.1} B — {}; UDP {:.1} B — {}",
        per_rec(frames),
        ok(per_rec(frames) <= 270.0),
        per_rec(udp_tx),
        ok(per_rec(udp_tx) <= 270.0)
    );

    let good = held == expected && sent == expected && refused == 0;
    if !good {
        eprintln!(
            "FAILED: the server holds {held} records, {sent} accepted, {refused} refused; \
             expected {expected}, {expected}, 0"
        );
    }
    Ok(good)
}

/// The server under test: on a multi-threaded runtime in this process (default), or the real
/// `fieldsync-server` binary as a child process (`--server-process`).
struct Server {
    addr: String,
    fingerprint: String,
    /// Runs the bench's own client calls (enrollment, the baseline round); in this process it is
    /// also the server's runtime.
    rt: tokio::runtime::Runtime,
    kind: ServerKind,
}

enum ServerKind {
    InProcess {
        dir: DataDir,
        running: fieldsync_server::Running,
    },
    Child(ChildServer),
}

impl Server {
    /// Initialises `data`, issues one code per user and starts the server in this process.
    fn in_process(data: &Path, users: &[User]) -> BenchResult<(Server, Vec<String>)> {
        let dir = DataDir::init(data)?;
        let expires = unix_now() + 24 * 3600;
        let mut codes = Vec::with_capacity(users.len());
        for (i, user) in users.iter().enumerate() {
            let code = format!("BURST{i:04}");
            dir.store.create_code(user, &code, expires)?;
            codes.push(code);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name(SERVER_THREAD)
            .build()
            .map_err(|e| format!("server runtime: {e}"))?;
        let running = {
            let _in_runtime = rt.enter();
            fieldsync_server::start(&dir, "127.0.0.1:0".parse()?, Limits::default())?
        };
        let server = Server {
            addr: running.addr.to_string(),
            fingerprint: dir.fingerprint(),
            rt,
            kind: ServerKind::InProcess { dir, running },
        };
        Ok((server, codes))
    }

    /// Builds the server binary, runs `init` and one `enroll` per user on `data`, then starts
    /// `serve` as a child process.
    fn child(data: &Path, users: &[User]) -> BenchResult<(Server, Vec<String>)> {
        let bin = build_server()?;
        let data_arg = data.to_str().ok_or("temporary folder is not UTF-8")?;
        let out = run_cli(&bin, &["init", "--data", data_arg])?;
        let fingerprint = line_value(&out, "fingerprint:")?;
        let mut codes = Vec::with_capacity(users.len());
        for user in users {
            let role = match user.role {
                Role::Volunteer => "volunteer",
                _ => return Err("the bench enrolls volunteers only".into()),
            };
            let mut args = vec![
                "enroll", "--data", data_arg, "--user", &user.id, "--name", &user.name, "--role",
                role,
            ];
            for scope in &user.scopes {
                args.extend(["--scope", scope.as_str()]);
            }
            codes.push(line_value(&run_cli(&bin, &args)?, "code:")?);
        }
        let mut child = Command::new(&bin)
            .args(["serve", "--data", data_arg, "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout from serve")?;
        // From here on, dropping the `ChildServer` stops the process (on every error path too).
        let mut server = ChildServer {
            bin,
            data: data.to_path_buf(),
            child,
            stdout: BufReader::new(stdout).lines(),
        };
        let addr = loop {
            let line = server
                .stdout
                .next()
                .ok_or("`fieldsync-server serve` exited before listening")??;
            if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.trim().to_string();
            }
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("client runtime: {e}"))?;
        let server = Server {
            addr,
            fingerprint,
            rt,
            kind: ServerKind::Child(server),
        };
        Ok((server, codes))
    }

    fn describe(&self) -> String {
        match &self.kind {
            ServerKind::InProcess { .. } => "in this process".into(),
            ServerKind::Child(c) => format!("{} serve, pid {}", c.bin.display(), c.child.id()),
        }
    }

    /// `/proc/<pid>` of the child server; `None` when the server runs in this process.
    fn child_proc(&self) -> Option<PathBuf> {
        match &self.kind {
            ServerKind::InProcess { .. } => None,
            ServerKind::Child(c) => Some(PathBuf::from(format!("/proc/{}", c.child.id()))),
        }
    }

    /// The server's (durable commits, rounds) counters, when it runs in this process.
    fn counters(&self) -> Option<(u64, u64)> {
        match &self.kind {
            ServerKind::InProcess { running, .. } => Some((
                metric(&running.metrics.commits),
                metric(&running.metrics.rounds),
            )),
            ServerKind::Child(_) => None,
        }
    }

    /// Stops the server and returns the number of records it holds.
    fn finish(self) -> BenchResult<usize> {
        match self.kind {
            ServerKind::InProcess { dir, running } => {
                let held = dir.store.records(None, None)?.len();
                self.rt.block_on(running.stop());
                Ok(held)
            }
            ServerKind::Child(mut c) => {
                c.stop()?;
                let data = c.data.to_str().ok_or("temporary folder is not UTF-8")?;
                let out = run_cli(&c.bin, &["export", "--data", data, "--format", "json"])?;
                let records: serde_json::Value = serde_json::from_str(&out)?;
                let records = records
                    .as_array()
                    .ok_or("export did not print a JSON array")?;
                Ok(records.len())
            }
        }
    }
}

/// `fieldsync-server serve` running as a child process; dropped, it is stopped with SIGTERM.
struct ChildServer {
    bin: PathBuf,
    data: PathBuf,
    child: Child,
    /// Kept open so that the server never writes to a closed pipe.
    stdout: Lines<BufReader<ChildStdout>>,
}

impl ChildServer {
    /// SIGTERM (the server's clean shutdown), then waits for it to exit.
    fn stop(&mut self) -> BenchResult<()> {
        if self.child.try_wait()?.is_none() {
            let pid = self.child.id().to_string();
            let term = Command::new("kill").args(["-s", "TERM", &pid]).status()?;
            if !term.success() {
                return Err(format!("kill -s TERM {pid} failed").into());
            }
        }
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("`fieldsync-server serve` exited with {status}").into());
        }
        Ok(())
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.stop();
        }
    }
}

/// `cargo build --release` of the server binary (the bench itself runs in release); returns the
/// executable's path as cargo reports it.
fn build_server() -> BenchResult<PathBuf> {
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "fieldsync-server",
            "--bin",
            "fieldsync-server",
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo build of fieldsync-server failed: {}", out.status).into());
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "fieldsync-server")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo build did not report the fieldsync-server executable".into())
}

/// Runs one `fieldsync-server` command to completion and returns its standard output.
fn run_cli(bin: &Path, args: &[&str]) -> BenchResult<String> {
    let out = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`fieldsync-server {}` failed ({}): {}",
            args.first().copied().unwrap_or_default(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The value after `prefix` on the first line of `out` that starts with it.
fn line_value(out: &str, prefix: &str) -> BenchResult<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| format!("no `{prefix}` line in the output: {out}").into())
}

/// One phone: record offline, wait for the start signal, run one sync round.
fn device(
    i: usize,
    store: &DeviceStore,
    user_id: &str,
    user_name: &str,
    team: usize,
    records: usize,
    gates: &Gates,
) -> BenchResult<DeviceOutcome> {
    // Whatever happens here, pass both gates so that no other thread waits forever.
    let prepared = prepare(i, store, user_id, user_name, team, records);
    let cpu_before = thread_cpu_secs();
    gates.ready.wait();
    gates.go.wait();
    let (rt, sync_frame, change_bytes, json_bytes) = prepared?;
    let started = Instant::now();
    // Progress marks two moments inside the round: the first report with documents done comes
    // right after the server's verdicts on the pushes were stored (the server had committed them
    // durably before replying); the last comes when the round is complete, before the
    // connection is closed.
    let mut acked = None;
    let mut completed = None;
    let mut progress = |p: fieldsync_proto::sync::Progress| {
        let now = Instant::now();
        if p.sent > 0 && acked.is_none() {
            acked = Some(now);
        }
        completed = Some(now);
    };
    let (report, (udp_tx, udp_rx)) = rt
        .block_on(client::sync(store, &mut progress))
        .map_err(|e| format!("sync round: {e}"))?;
    let finished = Instant::now();
    let completed = completed.unwrap_or(finished);
    let acked = acked.unwrap_or(completed);
    let cpu_secs = thread_cpu_secs() - cpu_before;
    Ok(DeviceOutcome {
        report,
        udp_tx,
        udp_rx,
        sync_frame,
        change_bytes,
        json_bytes,
        started,
        acked,
        completed,
        finished,
        cpu_secs,
    })
}

/// The start line: every device is ready, the counters are read, then every round goes at once.
struct Gates {
    ready: Barrier,
    go: Barrier,
}

type Prepared = (tokio::runtime::Runtime, usize, usize, usize);

fn prepare(
    i: usize,
    store: &DeviceStore,
    user_id: &str,
    user_name: &str,
    team: usize,
    records: usize,
) -> BenchResult<Prepared> {
    let mut json_bytes = 0;
    for j in 0..records {
        let fields = check_in(i, j, user_id, user_name, team);
        let view = store
            .create(Kind::CheckIn, &format!("team:{team}"), &fields)
            .map_err(|e| format!("recording check-in {j}: {e}"))?;
        json_bytes += serde_json::to_vec(&view)?.len();
    }
    // The Sync messages the round will send: every pending document, in batches, the last one
    // with the pull.
    let pending = store.pending()?;
    let change_bytes = pending.iter().map(|p| p.push.changes.len()).sum();
    let batches = split_batches(pending, BatchLimits::default());
    let last = batches.len().saturating_sub(1);
    let mut sync_frame = 0;
    for (n, docs) in batches.into_iter().enumerate() {
        let msg = ClientMsg::Sync {
            version: PROTOCOL_VERSION,
            batch: Some(Batch {
                id: n as u64,
                docs: docs.into_iter().map(|p| p.push).collect(),
            }),
            pull: (n == last).then(|| Pull {
                cursors: Vec::new(),
                fresh: Vec::new(),
            }),
        };
        sync_frame += protocol::encode_frame(&msg)?.len();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("device runtime: {e}"))?;
    Ok((rt, sync_frame, change_bytes, json_bytes))
}

/// A realistic check-in: a 90-minute activity between 06:00 and 19:30 local time.
fn check_in(
    i: usize,
    j: usize,
    user_id: &str,
    user_name: &str,
    team: usize,
) -> Vec<(String, FieldValue)> {
    let day = 1 + (j / 12) % 28;
    let hour = 6 + j % 12;
    let minute = (j * 7 + i) % 60;
    let at = |h: usize, m: usize| format!("2025-06-{day:02}T{h:02}:{m:02}:00+08:00");
    let (end_h, end_m) = (hour + 1 + (minute + 30) / 60, (minute + 30) % 60);
    let jitter = ((i * 31 + j * 17) % 1000) as f64 / 100_000.0;
    let text = |s: &str| FieldValue::Text(s.to_string());
    vec![
        ("volunteer_id".into(), text(user_id)),
        ("volunteer_name".into(), text(user_name)),
        (
            "team".into(),
            FieldValue::Text(format!("第{}志愿服务队", team + 1)),
        ),
        (
            "activity".into(),
            text(ACTIVITIES[(i + j) % ACTIVITIES.len()]),
        ),
        (
            "place".into(),
            FieldValue::Text(format!("幸福社区{}号网格", j % 12 + 1)),
        ),
        ("lat".into(), FieldValue::Number(30.5928 + jitter)),
        ("lon".into(), FieldValue::Number(114.3055 - jitter)),
        ("started_at".into(), FieldValue::Text(at(hour, minute))),
        ("ended_at".into(), FieldValue::Text(at(end_h, end_m))),
        ("note".into(), text(NOTES[j % NOTES.len()])),
        ("status".into(), text("submitted")),
        ("device_time".into(), FieldValue::Text(at(end_h, end_m))),
    ]
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn metric(m: &std::sync::atomic::AtomicU64) -> u64 {
    m.load(std::sync::atomic::Ordering::Relaxed)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

/// utime + stime of a thread from its `/proc/.../stat` line, in seconds.
fn stat_cpu_secs(stat: &str) -> Option<f64> {
    // Fields after the parenthesised command name start at field 3 (state); utime is 14.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

fn thread_cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| stat_cpu_secs(&s))
        .unwrap_or(0.0)
}

/// CPU time of a whole process (every thread, including exited ones), in seconds; `proc` is
/// `/proc/self` or `/proc/<pid>`.
fn cpu_secs(proc: &Path) -> Option<f64> {
    std::fs::read_to_string(proc.join("stat"))
        .ok()
        .and_then(|s| stat_cpu_secs(&s))
}

/// CPU time of a process's live threads named `name`, in seconds.
fn named_thread_cpu_secs(proc: &Path, name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(proc.join("task")) else {
        return 0.0;
    };
    let mut total = 0.0;
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
            total += stat_cpu_secs(&stat).unwrap_or(0.0);
        }
    }
    total
}

/// Busy and iowait CPU seconds of the whole machine, summed over its cores, from `/proc/stat`.
fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
    Some((
        busy as f64 / TICKS_PER_SEC,
        *v.get(4)? as f64 / TICKS_PER_SEC,
    ))
}

/// UDP datagrams the kernel failed to deliver (InErrors, which includes RcvbufErrors) in this
/// network namespace.
fn udp_counters() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names = udp.next()?.split_whitespace();
    let values = udp.next()?.split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == "InErrors")
        .and_then(|(_, v)| v.parse().ok())
}

/// Resets this process's peak RSS (VmHWM) to its current RSS (`echo 5 > clear_refs`).
fn reset_peak_rss() -> bool {
    std::fs::write(Path::new("/proc/self/clear_refs"), b"5").is_ok()
}

/// A `kB` line of `/proc/self/status` or `/proc/<pid>/status`, e.g. `VmRSS` or `VmHWM`.
fn proc_status_kb(proc: &Path, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(proc.join("status")).ok()?;
    status.lines().find_map(|l| {
        let value = l.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

fn fmt_kb(kb: Option<u64>) -> String {
    match kb {
        Some(kb) => format!("{:.1} MiB", kb as f64 / 1024.0),
        None => "n/a".into(),
    }
}

#[derive(Default)]
struct Table {
    rows: Vec<Option<(String, String)>>,
    heads: Vec<(usize, String)>,
}

impl Table {
    fn head(&mut self, title: &str) {
        self.heads.push((self.rows.len(), title.to_string()));
        self.rows.push(None);
    }

    fn row(&mut self, label: &str, value: String) {
        self.rows.push(Some((label.to_string(), value)));
    }

    fn print(&self) {
        let width = self
            .rows
            .iter()
            .flatten()
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        let mut heads = self.heads.iter().peekable();
        for (i, row) in self.rows.iter().enumerate() {
            match row {
                Some((label, value)) => {
                    let pad = width - label.chars().count();
                    println!("  {label}{:pad$}  {value}", "");
                }
                None => {
                    if let Some((_, title)) = heads.next_if(|(at, _)| *at == i) {
                        println!("\n{title}");
                    }
                }
            }
        }
    }
}
