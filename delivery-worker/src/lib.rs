//! The delivery worker: a Kafka consumer-group member that delivers each message of the log to every device
//! of every member of its conversation, by a push to the gateway holding the device, or into the device's
//! inbox when it is offline or the push fails.
//!
//! [`consumer`] is the loop (poll, handle, store offsets, back off); [`deliver`] is the step that handles one
//! event: it projects it into the store (history, idempotency records, read positions, members), then
//! delivers it; [`cursor`] skips, per conversation, what was delivered already (delivery is at least once).

pub mod app;
pub mod config;
pub mod consumer;
pub mod cursor;
pub mod deliver;
pub mod metrics;

pub use app::App;
pub use config::Config;
