//! What both command lines (`fieldsync` and `fieldsync-server`) do around their commands.
//!
//! Logs go to standard error filtered by `RUST_LOG` (or the binary's default level), so
//! standard output stays the command's own result for scripts; an error is one line on
//! standard error and a non-zero exit code. Colours only when standard error is a terminal
//! (and `NO_COLOR` is unset), so files and log collectors get plain text; or one JSON object
//! per line, for logs that are collected and kept.

use std::io::IsTerminal;
use std::process::ExitCode;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message and every field at the top
    /// level, for a log collector.
    Json,
}

/// Sets up text logging at `default_level` unless `RUST_LOG` says otherwise, runs `command`,
/// and turns its result into the process's exit code.
pub fn main_with(default_level: &str, command: impl FnOnce() -> Result<(), String>) -> ExitCode {
    main_logging(default_level, LogFormat::Text, command)
}

/// Like [`main_with`], with the log lines in `format`.
pub fn main_logging(
    default_level: &str,
    format: LogFormat,
    command: impl FnOnce() -> Result<(), String>,
) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    match command() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Whether log lines may carry ANSI colours: only for a person at a terminal.
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
