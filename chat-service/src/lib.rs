//! The chat service: the only writer of the log's events.
//!
//! Each replica owns some partitions of the events topic ([`owner::group`]); the owner of a conversation's
//! partition numbers its sends in memory and appends them in Kafka transactions ([`owner`]), answering
//! each send once its transaction committed (promise P1). Writes of other partitions are forwarded to their
//! owner ([`route`]). Everything else here is the gRPC surface ([`grpc`], its sends in [`sends`]), the process around it ([`app`]),
//! its counters ([`metrics`]) and the rebuild of the store from the log ([`rebuild`]).

pub mod app;
pub mod config;
pub mod error;
pub mod event_log;
pub mod grpc;
pub mod kafka_client;
pub mod listing;
pub mod members;
pub mod metrics;
pub mod owned;
pub mod owner;
pub mod rebuild;
pub mod route;
pub mod sends;

pub use app::App;
pub use config::Config;
