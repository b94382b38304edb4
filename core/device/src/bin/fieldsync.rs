//! `fieldsync`: the device side on the command line, for scripts, support staff and tests.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fieldsync_device::client;
use fieldsync_device::store::{CheckInForm, DeviceStore, Reverted, StoreError};
use fieldsync_proto::model::{self, FieldValue, Kind};
use fieldsync_proto::record::RecordView;
use fieldsync_proto::scope::{self, Scope};
use uuid::Uuid;

#[derive(Parser)]
#[command(
    name = "fieldsync",
    version,
    about = "fieldsync device store and sync client"
)]
struct Cli {
    /// The device store folder (created on first use).
    #[arg(long, global = true, default_value = "./fieldsync-store")]
    store: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this device with a one-time code; pins the server's certificate.
    Enroll {
        #[arg(long)]
        server: String,
        #[arg(long)]
        fingerprint: String,
        #[arg(long)]
        code: String,
    },
    /// Record a volunteer check-in for the enrolled user.
    Checkin {
        #[arg(long)]
        activity: String,
        #[arg(long)]
        place: String,
        #[arg(long)]
        start: String,
        #[arg(long)]
        end: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        lat: Option<f64>,
        #[arg(long, allow_hyphen_values = true)]
        lon: Option<f64>,
        #[arg(long)]
        accuracy: Option<f64>,
        #[arg(long)]
        note: Option<String>,
        /// Defaults to the user's first team scope.
        #[arg(long)]
        scope: Option<Scope>,
    },
    /// Create a record of any kind.
    New {
        kind: String,
        #[arg(long)]
        scope: Scope,
        /// FIELD=VALUE pairs; VALUE is parsed by the field's type, JSON accepted for any.
        fields: Vec<String>,
    },
    /// Edit a record.
    Set { id: Uuid, fields: Vec<String> },
    /// Show one record.
    Show {
        id: Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Who changed which fields of a record, and when.
    History { id: Uuid },
    /// List records.
    List {
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        scope: Option<Scope>,
        #[arg(long)]
        json: bool,
    },
    /// Run one sync round: push what is pending, pull what changed. The round rides out a
    /// dropped signal (reconnecting with backoff) until the deadline.
    Sync {
        /// How long the round may take, reconnecting as needed (e.g. 90s, 2m, 10m).
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
    },
    /// Take back what the server refused of a record: back to the server's version, or, for a
    /// record the server never had, drop it. Only refused records (see `status`).
    Revert { id: Uuid },
    /// Pending and refused records, and the enrollment.
    Status {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    fieldsync_device::cli::main_with("warn", || run(Cli::parse()))
}

fn run(cli: Cli) -> Result<(), String> {
    let store = DeviceStore::open(&cli.store).map_err(|e| e.to_string())?;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    match cli.command {
        Command::Enroll {
            server,
            fingerprint,
            code,
        } => {
            let info = runtime()?
                .block_on(client::enroll(&store, &server, &fingerprint, &code))
                .map_err(|e| err(&e))?;
            println!("device: {}", info.device_id);
            println!(
                "user: {} ({}), role {}, scopes {}",
                info.user_id,
                info.user_name,
                info.role,
                scope::join(&info.scopes, ", ")
            );
        }
        Command::Checkin {
            activity,
            place,
            start,
            end,
            lat,
            lon,
            accuracy,
            note,
            scope,
        } => {
            let form = CheckInForm {
                activity,
                place,
                started_at: start,
                ended_at: end,
                lat,
                lon,
                accuracy_m: accuracy,
                note,
                scope: scope.map(String::from),
            };
            let view = store.check_in(&form).map_err(write_err)?;
            println!("{}", view.id);
        }
        Command::New {
            kind,
            scope,
            fields,
        } => {
            let kind: Kind = kind.parse().map_err(|e| err(&e))?;
            let fields = parse_fields(kind, &fields)?;
            let view = store
                .create(kind, scope.as_str(), &fields)
                .map_err(write_err)?;
            println!("{}", view.id);
        }
        Command::Set { id, fields } => {
            let view = store
                .get(id)
                .map_err(|e| err(&e))?
                .ok_or(format!("no record {id}"))?;
            let fields = parse_fields(view.kind, &fields)?;
            let view = store.update(id, &fields).map_err(write_err)?;
            println!("{}", view.id);
        }
        Command::Show { id, json } => {
            let view = store
                .get(id)
                .map_err(|e| err(&e))?
                .ok_or(format!("no record {id}"))?;
            print_views(&[view], json, false)?;
        }
        Command::History { id } => {
            for h in store.history(id).map_err(|e| err(&e))? {
                let when = chrono::DateTime::from_timestamp(h.time, 0)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default();
                println!("{when}\t{}\t{}", h.actor, h.fields.join(","));
            }
        }
        Command::List { kind, scope, json } => {
            let kind = kind
                .map(|k| k.parse::<Kind>())
                .transpose()
                .map_err(|e| err(&e))?;
            let views = store
                .list(kind, scope.as_ref().map(Scope::as_str))
                .map_err(|e| err(&e))?;
            print_views(&views, json, true)?;
        }
        Command::Sync { deadline } => {
            let options = client::SyncOptions {
                deadline,
                ..client::SyncOptions::default()
            };
            let (report, (tx, rx)) = runtime()?
                .block_on(client::sync_with(&store, &options, &mut |_| {}))
                .map_err(|e| format!("sync failed, local data untouched: {e}"))?;
            println!(
                "sync: sent {}, received {}, refused {}, deferred {} ({} exchanges, {} connections, {tx} bytes out, {rx} bytes in)",
                report.sent,
                report.received,
                report.refused.len(),
                report.deferred.len(),
                report.exchanges,
                report.connections
            );
            for (id, reason) in &report.refused {
                eprintln!("refused {id}: {reason}");
            }
            for (id, reason) in &report.deferred {
                eprintln!("deferred {id} (kept pending, sent again next sync): {reason}");
            }
            if !report.refused.is_empty() {
                eprintln!("edit a refused record, or take it back with `fieldsync revert ID`");
            }
            // Either way not everything landed: a script must not take this round as done.
            match (report.refused.len(), report.deferred.len()) {
                (0, 0) => {}
                (refused, 0) => return Err(format!("the server refused {refused} record(s)")),
                (0, deferred) => {
                    return Err(format!(
                        "the server could not take {deferred} record(s) because of its own \
                         trouble; they stay pending for the next sync"
                    ));
                }
                (refused, deferred) => {
                    return Err(format!(
                        "the server refused {refused} record(s) and could not take {deferred} \
                         (pending for the next sync)"
                    ));
                }
            }
        }
        Command::Revert { id } => match store.revert(id).map_err(|e| err(&e))? {
            Reverted::ToServer(_) => println!("reverted {id} to the server's version"),
            Reverted::Dropped => println!("dropped {id}: the server never had it"),
        },
        Command::Status { json } => {
            let pending = store.pending_count().map_err(|e| err(&e))?;
            let refused: Vec<serde_json::Value> = store
                .refused()
                .map_err(|e| err(&e))?
                .into_iter()
                .map(|(id, reason)| serde_json::json!({"id": id.to_string(), "reason": reason}))
                .collect();
            let enrollment = store.enrollment().map_err(|e| err(&e))?;
            let status = serde_json::json!({
                "device": store.device_id(),
                "enrolled": enrollment.is_some(),
                "pending": pending,
                "refused": refused,
            });
            if json {
                println!("{status}");
            } else {
                println!(
                    "device {}: {pending} pending, {} refused",
                    store.device_id(),
                    refused.len()
                );
                for r in &refused {
                    let field = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                    println!("refused {}: {}", field("id"), field("reason"));
                }
            }
        }
    }
    Ok(())
}

/// A local write's error for the person at the command line: a rule's refusal says so and
/// that nothing was stored.
fn write_err(e: StoreError) -> String {
    match e {
        StoreError::Forbidden(reason) => {
            format!("not allowed for this device's role and scopes: {reason}; nothing was stored")
        }
        other => other.to_string(),
    }
}

fn parse_fields(kind: Kind, pairs: &[String]) -> Result<Vec<(String, FieldValue)>, String> {
    let schema = kind.schema();
    pairs
        .iter()
        .map(|pair| {
            let (name, raw) = pair
                .split_once('=')
                .ok_or(format!("`{pair}` is not FIELD=VALUE"))?;
            let spec = schema
                .field(name)
                .ok_or(format!("{kind} has no field `{name}`"))?;
            let value = model::parse_input(spec, raw).map_err(|e| e.to_string())?;
            Ok((name.to_string(), value))
        })
        .collect()
}

fn print_views(views: &[RecordView], json: bool, as_array: bool) -> Result<(), String> {
    let out = if as_array {
        serde_json::to_string(views)
    } else {
        serde_json::to_string(&views[0])
    };
    if json {
        println!("{}", out.map_err(|e| e.to_string())?);
    } else {
        for v in views {
            println!("{} {} {}", v.id, v.kind, v.scope);
            for (k, val) in &v.fields {
                let marker = if v.conflicts.contains_key(k) {
                    " (conflict)"
                } else {
                    ""
                };
                println!("  {k}: {}{marker}", val.to_cell());
            }
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}
