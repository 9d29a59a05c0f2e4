//! The delivery-worker binary: configuration, logging, then [`delivery_worker::App`] until the shutdown signal.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config: delivery_worker::Config = match lifecycle::load("delivery-worker") {
        Ok(c) => c,
        Err(code) => return code,
    };
    lifecycle::init_tracing();
    let app = match delivery_worker::App::build(&config).await {
        Ok(app) => app,
        Err(e) => return lifecycle::failed("delivery worker failed to start", &format!("{e:#}")),
    };
    match app.run(lifecycle::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => lifecycle::failed("delivery worker stopped with an error", &format!("{e:#}")),
    }
}
