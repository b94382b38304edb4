//! `fieldsync-server`: serve, initialise, enroll devices, revoke them, export records.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use fieldsync_proto::model::Kind;
use fieldsync_proto::{Role, Scope};
use fieldsync_server::export::{self, Format};
use fieldsync_server::store::User;
use fieldsync_server::{DataDir, DataError, ServeOptions, auth, oplog};

/// Who the operator's log names for changes made with this command line: whoever runs it on
/// the server's host (the data folder's permissions decide who can).
const CLI_ACTOR: &str = "server command line";

#[derive(Parser)]
#[command(
    name = "fieldsync-server",
    version,
    about = "The fieldsync sync server"
)]
struct Cli {
    /// Write log lines as JSON objects (one per line, every field at the top level), for a log
    /// collector; operator events carry `target` `fieldsync::oplog` and an `event` field.
    #[arg(long, global = true)]
    log_json: bool,
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
        /// Also serve the office dashboard and JSON API on this address (e.g. 127.0.0.1:8080).
        #[arg(long)]
        http: Option<SocketAddr>,
        /// Send login cookies without `Secure`: only for plain HTTP on a trusted network
        /// (browsers accept secure cookies from localhost without it).
        #[arg(long)]
        insecure_cookies: bool,
    },
    /// Manage office and admin accounts (works while the server is stopped).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Issue an API token for an office or admin user; prints `token: <T>` once.
    Token {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        user: String,
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
        scopes: Vec<Scope>,
        /// How long the code stays valid: e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        expires: String,
        /// Change an existing user's role, name or scopes (their enrolled phones get the new
        /// rights); without it such a change is refused.
        #[arg(long)]
        replace: bool,
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
        scope: Option<Scope>,
        #[arg(long, value_enum)]
        format: FormatArg,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add an office or admin user with a password (again: a new name and password).
    ///
    /// An existing user of another role or with other scopes is refused unless `--replace`
    /// is given: their enrolled phones would act with the new role.
    Add {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: StaffRoleArg,
        /// Read the password from the first line of standard input (keeps it out of `ps`).
        #[arg(long, required = true)]
        password_stdin: bool,
        /// Replace an existing user of another role or with other scopes (their devices then
        /// act with this role).
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum StaffRoleArg {
    Office,
    Admin,
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
    let cli = Cli::parse();
    let format = if cli.log_json {
        fieldsync_device::cli::LogFormat::Json
    } else {
        fieldsync_device::cli::LogFormat::Text
    };
    fieldsync_device::cli::main_logging("info", format, || run(cli))
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Init { data } => {
            let dir = DataDir::init(&data).map_err(|e| e.to_string())?;
            print_init(&dir);
            Ok(())
        }
        Command::Serve {
            data,
            listen,
            http,
            insecure_cookies,
        } => serve(
            data,
            ServeOptions {
                http,
                insecure_cookies,
                ..ServeOptions::quic(listen)
            },
        ),
        Command::User {
            command:
                UserCommand::Add {
                    data,
                    user,
                    name,
                    role,
                    password_stdin: _,
                    replace,
                },
        } => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .map_err(|e| format!("reading the password from standard input: {e}"))?;
            let password = password.trim_end_matches(['\r', '\n']);
            let role = match role {
                StaffRoleArg::Office => Role::Office,
                StaffRoleArg::Admin => Role::Admin,
            };
            let dir = open(&data)?;
            let user = User {
                id: user,
                name,
                role,
                scopes: Vec::new(),
            };
            let added = auth::add_or_replace_staff(&dir.store, &user, password, replace)
                .map_err(|e| e.to_string())?;
            println!("user: {} ({})", user.id, user.role);
            match added {
                auth::StaffAdded::New => {}
                auth::StaffAdded::Updated => println!("updated: new name and password"),
                auth::StaffAdded::Replaced(old) => {
                    println!("replaced: {} was {}", old.id, old.role);
                }
            }
            Ok(())
        }
        Command::Token { data, user } => {
            let dir = open(&data)?;
            let token = auth::issue_token(&dir.store, &user, chrono::Utc::now().timestamp())
                .map_err(|e| e.to_string())?;
            println!("token: {token}");
            Ok(())
        }
        Command::Enroll {
            data,
            user,
            name,
            role,
            scopes,
            expires,
            replace,
        } => {
            let role = match role {
                RoleArg::Volunteer => Role::Volunteer,
                RoleArg::Village => Role::Village,
                RoleArg::Office => Role::Office,
                RoleArg::Admin => Role::Admin,
            };
            let ttl = parse_duration(&expires)?;
            let dir = open(&data)?;
            let user = User {
                id: user,
                name,
                role,
                scopes,
            };
            let issue = if replace {
                fieldsync_server::enrollment::issue_replacing
            } else {
                fieldsync_server::enrollment::issue
            };
            let code = issue(&dir.store, &user, ttl)?.code;
            oplog::office_action(
                CLI_ACTOR,
                "code_issued",
                &user.id,
                &format!("role {}", user.role),
            );
            println!("code: {code}");
            println!("fingerprint: {}", dir.fingerprint());
            Ok(())
        }
        Command::Revoke { data, device } => {
            open(&data)?
                .store
                .revoke(&device)
                .map_err(|e| e.to_string())?;
            oplog::office_action(CLI_ACTOR, "revoke", &device, "");
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
            let scope = scope.as_ref().map(Scope::as_str);
            export::export(&dir.store, kind, scope, format, &mut out).map_err(|e| e.to_string())?;
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

fn serve(data: PathBuf, options: ServeOptions) -> Result<(), String> {
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
        let running = fieldsync_server::start_with(dir.store.clone(), &dir.identity, options)
            .map_err(|e| e.to_string())?;
        println!("fingerprint: {}", dir.fingerprint());
        println!("listening on {}", running.addr);
        if let Some(addr) = running.http_addr {
            println!("dashboard on http://{addr}");
            let staff = dir.store.users().map_err(|e| e.to_string())?;
            if !staff.iter().any(|u| matches!(u.role, Role::Office | Role::Admin)) {
                println!(
                    "no dashboard accounts yet: stop the server, then `fieldsync-server user add --data {} --user ID --name NAME --role admin --password-stdin`",
                    dir.path.display()
                );
            }
        }
        tracing::info!(addr = %running.addr, "serving");
        let mut running = running;
        // A storage failure that only a reopen mends ends the process with an error, so its
        // supervisor restarts it instead of the server refusing every round from then on.
        let failure = tokio::select! {
            () = wait_for_signal() => None,
            failure = running.storage_failed() => Some(failure),
        };
        tracing::info!("shutting down");
        running.stop().await;
        match failure {
            None => Ok(()),
            Some(failure) => Err(format!("storage failed, restart needed: {failure}")),
        }
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

/// Parses `30s`, `30m`, `24h` or `7d` into seconds: a whole number above 0 and one unit.
fn parse_duration(s: &str) -> Result<i64, String> {
    let bad = || format!("bad duration `{s}` (use e.g. 30m, 24h, 7d)");
    // The unit is the last character, which need not be ASCII (`24时`): split on its boundary.
    let Some((at, unit)) = s.char_indices().next_back() else {
        return Err(bad());
    };
    let num = &s[..at];
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let mult: i64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return Err(bad()),
    };
    let too_long = || format!("duration `{s}` is too long");
    let n: i64 = num.parse().map_err(|_| too_long())?;
    match n.checked_mul(mult) {
        Some(0) => Err(format!("duration `{s}` must be longer than 0")),
        Some(secs) => Ok(secs),
        None => Err(too_long()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_parse_and_bad_ones_are_clear_errors_not_panics() {
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("24h"), Ok(86400));
        assert_eq!(parse_duration("7d"), Ok(7 * 86400));
        for bad in [
            "24时", "时", "", "h", "0", "-5h", "+5h", " 5h", "5 h", "5", "5x", "五h",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("duration"), "{bad}: {err}");
        }
        assert!(parse_duration("0h").is_err_and(|e| e.contains("longer than 0")));
        // Past i64 once multiplied, or past i64 at all: refused, never overflowed.
        for huge in [
            "9223372036854775807d",
            "9223372036854775808s",
            "99999999999999999999999h",
        ] {
            let err = parse_duration(huge).expect_err(huge);
            assert!(err.contains("too long"), "{huge}: {err}");
        }
        assert_eq!(parse_duration("9223372036854775807s"), Ok(i64::MAX));
    }
}
