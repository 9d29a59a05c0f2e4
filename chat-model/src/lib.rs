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

/// The partition of the events topic that holds a conversation's events, out of `partitions`: FNV-1a over
/// the id's 16 bytes, so every process (and any language) computes the same. The chat service writes each
/// event to this partition explicitly, rather than through a client library's partitioner. Changing the
/// partition count moves conversations: see `docs/operations.md`.
pub fn partition_of(conversation: ConversationId, partitions: i32) -> i32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in conversation.as_uuid().as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let n = u64::try_from(partitions.max(1)).unwrap_or(1);
    i32::try_from(hash % n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_has_one_partition_and_conversations_spread() {
        let id = ConversationId::parse("01a23eb0-ce1c-743f-be2f-be966182dec3").expect("valid");
        // Fixed (the same FNV-1a computed in Python): a change would move every conversation elsewhere.
        assert_eq!(partition_of(id, 8), 0);
        assert_eq!(partition_of(id, 7), 5);
        assert_eq!(partition_of(id, 64), 40);
        assert_eq!(partition_of(id, 1), 0);
        let mut counts = [0_u32; 8];
        for _ in 0..8000 {
            counts[partition_of(ConversationId::generate(), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (700..1300).contains(c)), "uneven: {counts:?}");
    }
}
