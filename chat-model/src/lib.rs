//! The domain types that every service shares: identifiers checked once at the edge, messages,
//! conversations, and the codec between domain events and the protobuf envelope on the Kafka log.
//!
//! Nothing here does I/O. Prost types appear only in [`event`], the codec for the log.

pub mod event;
mod ids;
mod message;
pub mod presence;

pub use ids::{ClientMsgId, ConversationId, DeviceId, IdError, MessageId, Seq, UserId};
pub use message::{Body, BodyError, ConversationKind, MAX_BODY_BYTES, Message};

/// Milliseconds since the Unix epoch: the unit of every timestamp the platform stores or sends.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}
