//! The chat-service binary: configuration, logging, then [`chat_service::App`] until the shutdown signal.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config: chat_service::Config = match lifecycle::load("chat-service") {
        Ok(c) => c,
        Err(code) => return code,
    };
    lifecycle::init_tracing();
    let shutdown = lifecycle::Shutdown::on_signal();
    let app = match shutdown.start("chat service", chat_service::App::build(&config)).await {
        Ok(app) => app,
        Err(code) => return code,
    };
    match app.run(shutdown.requested()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => lifecycle::failed("chat service stopped with an error", &format!("{e:#}")),
    }
}
