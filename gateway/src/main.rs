//! The gateway binary: configuration, logging, then [`gateway::App`] until the shutdown signal.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config: gateway::Config = match lifecycle::load("gateway") {
        Ok(c) => c,
        Err(code) => return code,
    };
    lifecycle::init_tracing();
    let shutdown = lifecycle::Shutdown::on_signal();
    let app = match shutdown.start("gateway", gateway::App::build(&config)).await {
        Ok(app) => app,
        Err(code) => return code,
    };
    match app.run(shutdown.requested()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => lifecycle::failed("gateway stopped with an error", &format!("{e:#}")),
    }
}
