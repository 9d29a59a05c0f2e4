//! The gateway binary: configuration, logging, then [`gateway::App`] until the shutdown signal.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config: gateway::Config = match lifecycle::load("gateway") {
        Ok(c) => c,
        Err(code) => return code,
    };
    lifecycle::init_tracing();
    let app = match gateway::App::build(&config).await {
        Ok(app) => app,
        Err(e) => return lifecycle::failed("gateway failed to start", &format!("{e:#}")),
    };
    match app.run(lifecycle::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => lifecycle::failed("gateway stopped with an error", &format!("{e:#}")),
    }
}
