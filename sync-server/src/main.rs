//! `fieldsync-server`: serve, initialise, enroll devices, revoke them, export records.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use fieldsync_core::Role;
use fieldsync_core::model::{Kind, check_scope};
use fieldsync_core::protocol::Limits;
use fieldsync_server::export::{self, Format};
use fieldsync_server::store::User;
use fieldsync_server::{DataDir, DataError};

#[derive(Parser)]
#[command(
    name = "fieldsync-server",
    version,
    about = "The fieldsync sync server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new data folder (redb file, server key and certificate).
    Init {
        #[arg(long)]
        data: PathBuf,
    },
    /// Serve devices over QUIC; initialises the data folder on first start.
    Serve {
        #[arg(long, default_value = "./data")]
        data: PathBuf,
        #[arg(long, default_value = "0.0.0.0:4433")]
        listen: SocketAddr,
    },
    /// Issue a one-time code that enrolls one device for a user.
    Enroll {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: RoleArg,
        /// A scope the user reads and writes (`team:<id>` or `village:<id>`); repeatable.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// How long the code stays valid: e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        expires: String,
    },
    /// Revoke a device; it is refused at its next connection.
    Revoke {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        device: String,
    },
    /// List enrolled devices.
    Devices {
        #[arg(long)]
        data: PathBuf,
    },
    /// Export the merged records as JSON or CSV (UTF-8 with a BOM) to standard output.
    Export {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        scope: Option<String>,
        #[arg(long, value_enum)]
        format: FormatArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Volunteer,
    Village,
    Office,
    Admin,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Json,
    Csv,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Init { data } => {
            let dir = DataDir::init(&data).map_err(|e| e.to_string())?;
            print_init(&dir);
            Ok(())
        }
        Command::Serve { data, listen } => serve(data, listen),
        Command::Enroll {
            data,
            user,
            name,
            role,
            scopes,
            expires,
        } => {
            let role = match role {
                RoleArg::Volunteer => Role::Volunteer,
                RoleArg::Village => Role::Village,
                RoleArg::Office => Role::Office,
                RoleArg::Admin => Role::Admin,
            };
            for scope in &scopes {
                let kind = if scope.starts_with("team:") {
                    Kind::CheckIn
                } else {
                    Kind::VillageSurvey
                };
                check_scope(kind, scope).map_err(|e| e.to_string())?;
            }
            let ttl = parse_duration(&expires)?;
            let dir = open(&data)?;
            let code = new_code()?;
            let expires_at = chrono::Utc::now().timestamp() + ttl;
            let user = User {
                id: user,
                name,
                role,
                scopes,
            };
            dir.store
                .create_code(&user, &code, expires_at)
                .map_err(|e| e.to_string())?;
            println!("code: {code}");
            println!("fingerprint: {}", dir.fingerprint());
            Ok(())
        }
        Command::Revoke { data, device } => {
            open(&data)?
                .store
                .revoke(&device)
                .map_err(|e| e.to_string())?;
            println!("revoked: {device}");
            Ok(())
        }
        Command::Devices { data } => {
            for d in open(&data)?.store.devices().map_err(|e| e.to_string())? {
                println!(
                    "{}\tuser={}\trevoked={}\tlast_sync={}",
                    d.device_id,
                    d.user_id,
                    d.revoked,
                    d.last_sync.map_or("never".to_string(), |t| t.to_string())
                );
            }
            Ok(())
        }
        Command::Export {
            data,
            kind,
            scope,
            format,
        } => {
            let kind = kind
                .map(|k| k.parse::<Kind>())
                .transpose()
                .map_err(|e| e.to_string())?;
            let dir = open(&data)?;
            let format = match format {
                FormatArg::Json => Format::Json,
                FormatArg::Csv => Format::Csv,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            export::export(&dir.store, kind, scope.as_deref(), format, &mut out)
                .map_err(|e| e.to_string())?;
            std::io::Write::flush(&mut out).map_err(|e| e.to_string())?;
            Ok(())
        }
    }
}

fn open(data: &std::path::Path) -> Result<DataDir, String> {
    DataDir::open(data).map_err(|e| e.to_string())
}

fn print_init(dir: &DataDir) {
    println!("initialised {}", dir.path.display());
    println!("fingerprint: {}", dir.fingerprint());
}

fn serve(data: PathBuf, listen: SocketAddr) -> Result<(), String> {
    let dir = if DataDir::is_initialised(&data) {
        DataDir::open(&data)
    } else {
        DataDir::init(&data).inspect(|d| {
            print_init(d);
            println!(
                "enroll a first device: stop the server, then `fieldsync-server enroll --data {} --user ID --name NAME --role volunteer --scope team:ID`",
                data.display()
            );
        })
    }
    .map_err(|e: DataError| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let running =
            fieldsync_server::start(&dir, listen, Limits::default()).map_err(|e| e.to_string())?;
        println!("fingerprint: {}", dir.fingerprint());
        println!("listening on {}", running.addr);
        tracing::info!(addr = %running.addr, "serving");
        wait_for_signal().await;
        tracing::info!("shutting down");
        running.stop().await;
        Ok(())
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A 10-character one-time code from an alphabet without look-alike characters.
fn new_code() -> Result<String, String> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 10];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "no system randomness".to_string())?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect())
}

/// Parses `30s`, `30m`, `24h` or `7d` into seconds.
fn parse_duration(s: &str) -> Result<i64, String> {
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("bad duration `{s}` (use e.g. 30m, 24h, 7d)"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("bad duration `{s}` (use e.g. 30m, 24h, 7d)")),
    };
    Ok(n * mult)
}
