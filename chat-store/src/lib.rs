//! The store: every CQL statement the platform runs, against Cassandra locally and ScyllaDB in production.
//!
//! Only this crate knows CQL. The delivery workers project the log into it (`projection`): history, the
//! sends' idempotency records, read positions, conversations and members; the chat service reads them and
//! writes a conversation's rows with its creation event; inboxes, devices and delivery cursors are delivery
//! state. The gateway never talks to the store. Every table but the delivery state is a projection of the
//! Kafka log (promise P9): `snapshot` renders a conversation's rows for comparing keyspaces.

mod error;
mod migrate;
mod projection;
mod snapshot;
mod store;

pub use error::StoreError;
pub use migrate::{MIGRATIONS, migrate};
pub use snapshot::ConversationSnapshot;
pub use store::{
    BUCKET_SIZE, CassandraStore, ConversationRecord, NewConversation, SendRecord, StoreConfig, bucket_of,
    connect_session,
};

pub use chat_model::now_ms;
