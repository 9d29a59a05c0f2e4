//! Messages and conversations as the domain sees them.

use crate::{ClientMsgId, ConversationId, DeviceId, MessageId, Seq, UserId};

/// Largest message body, in bytes of UTF-8.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body is empty")]
    Empty,
    #[error("body is longer than {MAX_BODY_BYTES} bytes")]
    TooLong,
}

/// A message's text: 1 to [`MAX_BODY_BYTES`] bytes (Rust strings are valid UTF-8 already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body(String);

impl Body {
    pub fn parse(s: String) -> Result<Body, BodyError> {
        if s.is_empty() {
            return Err(BodyError::Empty);
        }
        if s.len() > MAX_BODY_BYTES {
            return Err(BodyError::TooLong);
        }
        Ok(Body(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A stored message, with its place in the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub conversation_id: ConversationId,
    pub seq: Seq,
    pub message_id: MessageId,
    pub sender_id: UserId,
    pub sender_device_id: DeviceId,
    pub client_msg_id: ClientMsgId,
    pub body: Body,
    /// Server time at which the message was numbered, in milliseconds since the Unix epoch.
    pub sent_at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationKind {
    /// Exactly two members.
    Direct,
    Group,
}
