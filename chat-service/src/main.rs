//! The chat-service binary: configuration, telemetry, then [`chat_service::App`].

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match chat_service::Config::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            eprintln!("{e}");
            return std::process::ExitCode::from(64);
        }
        Err(e) => {
            // --help and --version
            println!("{e}");
            return std::process::ExitCode::SUCCESS;
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("chat-service: invalid configuration: {e}");
        return std::process::ExitCode::from(64);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let app = match chat_service::App::build(&config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "chat service failed to start");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        #[cfg(unix)]
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    let signal = async move {
        tokio::select! { _ = shutdown => {}, _ = terminate => {} }
        tracing::info!("shutting down");
    };
    match app.run(signal).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "chat service stopped with an error");
            std::process::ExitCode::FAILURE
        }
    }
}
