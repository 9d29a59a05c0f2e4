//! The gateway: holds client WebSockets, forwards what clients send to the chat service over gRPC, and
//! takes pushes from delivery workers over gRPC.
//!
//! [`http`] accepts connections and upgrades them after checking the token ([`auth`]); [`session`] runs one
//! connection, speaking the JSON protocol of [`protocol`] (documented in `docs/protocol.md`); [`registry`]
//! holds this process's connections; the `routing` crate tells Redis which gateway holds which device; [`push`]
//! is the gRPC service the delivery workers call; [`metrics`] counts what happens, served at `GET /metrics`. The
//! gateway never talks to Cassandra or Kafka.

pub mod app;
pub mod auth;
pub mod chat_pool;
pub mod config;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod push;
pub mod registry;
pub mod send_stream;
pub mod session;
pub mod tls;

pub use app::App;
pub use config::Config;
