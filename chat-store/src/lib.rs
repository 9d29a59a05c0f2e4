//! The store: every CQL statement the platform runs, against Cassandra locally and ScyllaDB in production.
//!
//! Only this crate knows CQL. The chat service writes conversations, claims and messages through it; the
//! delivery worker reads members and fills gaps through it and writes inboxes. The gateway never talks to
//! the store. Tables are projections of the Kafka log (promise P9), except the sequencer partition, which is
//! where a message's number is decided (see ARCHITECTURE.md, "The order of a conversation").

mod error;
mod migrate;
mod projection;
mod snapshot;
mod store;

pub use error::StoreError;
pub use migrate::{MIGRATIONS, migrate};
pub use snapshot::ConversationSnapshot;
pub use store::{
    BUCKET_SIZE, CassandraStore, ClaimOutcome, ConversationRecord, Existing, HeadSource, IDEMPOTENCY_TTL_SECS,
    NewConversation, SendRecord, StoreConfig, bucket_of, connect_session,
};

pub use chat_model::now_ms;
