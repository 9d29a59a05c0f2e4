//! The chat service: the only writer of messages and conversations.
//!
//! A send is checked, given the conversation's next number by a conditional write in the store
//! ([`send::Sequencer`]), appended to the Kafka log and written to history, and only then answered
//! (promise P1). Everything else here is the gRPC surface ([`grpc`]) and the process around it ([`app`]).

pub mod app;
pub mod config;
pub mod error;
pub mod event_log;
pub mod grpc;
pub mod members;
pub mod owned;
pub mod owner;
pub mod rebuild;
pub mod route;
pub mod send;

pub use app::App;
pub use config::{Config, OrderKind};
