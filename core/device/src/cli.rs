//! What both command lines (`fieldsync` and `fieldsync-server`) do around their commands.
//!
//! Logs go to standard error filtered by `RUST_LOG` (or the binary's default level), so
//! standard output stays the command's own result for scripts; an error is one line on
//! standard error and a non-zero exit code.

use std::process::ExitCode;

/// Sets up logging at `default_level` unless `RUST_LOG` says otherwise, runs `command`, and
/// turns its result into the process's exit code.
pub fn main_with(default_level: &str, command: impl FnOnce() -> Result<(), String>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match command() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
