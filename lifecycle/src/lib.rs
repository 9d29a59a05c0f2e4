//! The process around each service's `App`, the same for all three binaries: configuration from the
//! environment (exit 64 when invalid), one logging init, one shutdown signal.

pub mod failpoints;
pub mod grpc_tls;

pub use failpoints::failpoint;

use std::process::ExitCode;

use clap::Parser;

/// A service configuration: parsed by clap from flags and environment variables, then checked.
pub trait Config: Parser {
    /// What the types alone do not check; the message names the variable.
    fn validate(&self) -> Result<(), String>;
}

/// Exit code for invalid configuration (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// Parses and checks the configuration; on `--help`/`--version` or an error, the code to exit with.
pub fn load<C: Config>(service: &str) -> Result<C, ExitCode> {
    let config = match C::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            eprintln!("{e}");
            return Err(ExitCode::from(EXIT_CONFIG));
        }
        Err(e) => {
            println!("{e}");
            return Err(ExitCode::SUCCESS);
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("{service}: invalid configuration: {e}");
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    Ok(config)
}

/// Structured logs to stderr; `RUST_LOG` sets the levels (default `info`).
/// Also configures the failpoints of a `failpoints` build (see [`failpoints`]).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    failpoints::setup();
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
    tracing::info!("shutdown signal received");
}

/// Logs why a service could not start or stopped with an error, and gives the exit code.
pub fn failed(what: &str, error: &dyn std::fmt::Display) -> ExitCode {
    tracing::error!(error = %error, "{what}");
    ExitCode::FAILURE
}
