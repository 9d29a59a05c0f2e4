//! The process around each service's `App`, the same for all three binaries: configuration from the
//! environment (exit 64 when invalid), one logging init, one shutdown signal.

pub mod call_stream;
pub mod failpoints;
pub mod grpc_tls;
pub mod kafka_producer;
pub mod kafka_tls;
pub mod metrics;
pub mod redis_tls;

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

/// SIGTERM or Ctrl-C, watched from the moment [`Shutdown::on_signal`] is called: a signal that comes while
/// the service is still starting (joining a group, rebuilding state) stops it cleanly rather than killing it.
#[derive(Clone)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// Installs the handlers now (must run inside the runtime).
    pub fn on_signal() -> Shutdown {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, rx) = tokio::sync::watch::channel(false);
        let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
        tokio::spawn(async move {
            match handlers {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot watch for SIGTERM/SIGINT; stop with SIGKILL");
                    std::future::pending::<()>().await;
                }
            }
            tracing::info!("shutdown signal received");
            let _ = tx.send(true);
            // Kept open so that every clone still waiting sees the signal.
            std::future::pending::<()>().await;
        });
        Shutdown(rx)
    }

    /// Resolves once the signal has come.
    pub async fn requested(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Runs a service's start-up unless the signal comes first: `Err(SUCCESS)` then, since stopping while
    /// starting is what was asked; `Err(FAILURE)` when the start-up fails.
    pub async fn start<A, E: std::fmt::Display>(
        &self,
        what: &str,
        build: impl Future<Output = Result<A, E>>,
    ) -> Result<A, ExitCode> {
        tokio::select! {
            built = build => built.map_err(|e| failed(&format!("{what} failed to start"), &format!("{e:#}"))),
            () = self.clone().requested() => {
                tracing::warn!("{what} stopped while starting");
                Err(ExitCode::SUCCESS)
            }
        }
    }
}

/// Logs why a service could not start or stopped with an error, and gives the exit code.
pub fn failed(what: &str, error: &dyn std::fmt::Display) -> ExitCode {
    tracing::error!(error = %error, "{what}");
    ExitCode::FAILURE
}
