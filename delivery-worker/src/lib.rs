//! The delivery worker: a Kafka consumer-group member that delivers each message of the log to every device
//! of every member of its conversation, by a push to the gateway holding the device, or into the device's
//! inbox when it is offline or the push fails.
//!
//! [`consumer`] is the loop (poll, handle, store offsets, back off); [`deliver`] is the step that handles one
//! message; [`cursor`] decides, per conversation, what must be delivered so that no number is skipped even
//! when the log holds a conversation's messages out of order; [`repair`] appends to the log a message whose
//! sender claimed its number and died before publishing it.

pub mod app;
pub mod config;
pub mod consumer;
pub mod cursor;
pub mod deliver;
pub mod metrics;
pub mod repair;

pub use app::App;
pub use config::Config;
