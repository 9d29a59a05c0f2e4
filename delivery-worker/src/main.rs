//! The delivery-worker binary: configuration, telemetry, then [`delivery_worker::App`].

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match delivery_worker::Config::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            eprintln!("{e}");
            return std::process::ExitCode::from(64);
        }
        Err(e) => {
            println!("{e}");
            return std::process::ExitCode::SUCCESS;
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("delivery-worker: invalid configuration: {e}");
        return std::process::ExitCode::from(64);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let app = match delivery_worker::App::build(&config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "delivery worker failed to start");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let terminate = async {
            if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                s.recv().await;
            }
        };
        tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
        tracing::info!("shutting down");
    };
    match app.run(shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "delivery worker stopped with an error");
            std::process::ExitCode::FAILURE
        }
    }
}
