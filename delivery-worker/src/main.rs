//! The delivery-worker binary: configuration, logging, then [`delivery_worker::App`] until the shutdown signal.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config: delivery_worker::Config = match lifecycle::load("delivery-worker") {
        Ok(c) => c,
        Err(code) => return code,
    };
    lifecycle::init_tracing();
    let shutdown = lifecycle::Shutdown::on_signal();
    let app = match shutdown.start("delivery worker", delivery_worker::App::build(&config)).await {
        Ok(app) => app,
        Err(code) => return code,
    };
    match app.run(shutdown.requested()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => lifecycle::failed("delivery worker stopped with an error", &format!("{e:#}")),
    }
}
