//! The codec between domain events and the protobuf envelope written to the Kafka log.
//!
//! Decoding checks every field, so a consumer either gets a well-formed [`LogEvent`] or a
//! [`DecodeError`] that says why the record is unusable (it then goes to the dead-letter topic).

use prost::Message as _;
use proto::v1;

use crate::{Body, ClientMsgId, ConversationId, DeviceId, IdError, Message, MessageId, Seq, UserId};

/// One fact on the log. The log is the source of truth; every table is a projection of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    MessageSent(Message),
    ReceiptRecorded(Receipt),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptKind {
    Delivered,
    Read,
}

/// A member's device reached (delivered) or showed as read every message up to `up_to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub kind: ReceiptKind,
    pub up_to: Seq,
}

impl LogEvent {
    pub fn conversation_id(&self) -> ConversationId {
        match self {
            LogEvent::MessageSent(m) => m.conversation_id,
            LogEvent::ReceiptRecorded(r) => r.conversation_id,
        }
    }

    /// Replays of the same fact carry the same event id: a message's is its message id; a receipt's names
    /// who, which kind and up to where.
    pub fn event_id(&self) -> String {
        match self {
            LogEvent::MessageSent(m) => m.message_id.to_string(),
            LogEvent::ReceiptRecorded(r) => {
                format!("receipt/{}/{}/{}/{:?}/{}", r.conversation_id, r.user_id, r.device_id, r.kind, r.up_to)
            }
        }
    }
}

pub fn receipt_kind_to_proto(kind: ReceiptKind) -> v1::ReceiptKind {
    match kind {
        ReceiptKind::Delivered => v1::ReceiptKind::Delivered,
        ReceiptKind::Read => v1::ReceiptKind::Read,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is not a chat.v1.Event: {0}")]
    Protobuf(String),
    #[error("event has no kind (written by a newer producer, or corrupt)")]
    UnknownKind,
    #[error("invalid field: {0}")]
    Id(#[from] IdError),
    #[error("invalid field: {0}")]
    Field(String),
}

/// A message as the gRPC contracts carry it (chat history, inbox, pushes).
pub fn message_to_proto(m: &Message) -> v1::Message {
    v1::Message {
        conversation_id: m.conversation_id.to_string(),
        message_id: m.message_id.to_string(),
        seq: m.seq.get(),
        sender_id: m.sender_id.to_string(),
        body: m.body.as_str().to_owned(),
        sent_at_ms: m.sent_at_ms,
        client_msg_id: m.client_msg_id.to_string(),
    }
}

/// Encodes an event as the bytes of a `chat.v1.Event`.
pub fn encode(event: &LogEvent, created_at_ms: i64) -> Vec<u8> {
    let envelope = match event {
        LogEvent::ReceiptRecorded(r) => v1::Event {
            event_id: event.event_id(),
            conversation_id: r.conversation_id.to_string(),
            created_at_ms,
            traceparent: String::new(),
            kind: Some(v1::event::Kind::ReceiptRecorded(v1::ReceiptRecorded {
                user_id: r.user_id.to_string(),
                device_id: r.device_id.to_string(),
                kind: receipt_kind_to_proto(r.kind) as i32,
                up_to_seq: r.up_to.get(),
            })),
        },
        LogEvent::MessageSent(m) => v1::Event {
            event_id: event.event_id(),
            conversation_id: m.conversation_id.to_string(),
            created_at_ms,
            traceparent: String::new(),
            kind: Some(v1::event::Kind::MessageSent(v1::MessageSent {
                message_id: m.message_id.to_string(),
                seq: m.seq.get(),
                sender_id: m.sender_id.to_string(),
                sender_device_id: m.sender_device_id.to_string(),
                client_msg_id: m.client_msg_id.to_string(),
                body: m.body.as_str().to_owned(),
            })),
        },
    };
    envelope.encode_to_vec()
}

/// Decodes and checks a `chat.v1.Event`. `sent_at_ms` of a message is the envelope's creation time.
pub fn decode(bytes: &[u8]) -> Result<LogEvent, DecodeError> {
    let envelope = v1::Event::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    let conversation_id = ConversationId::parse(&envelope.conversation_id)?;
    match envelope.kind {
        Some(v1::event::Kind::MessageSent(m)) => {
            let seq = Seq::new(m.seq).ok_or_else(|| DecodeError::Field("seq is 0".into()))?;
            let body = Body::parse(m.body).map_err(|e| DecodeError::Field(e.to_string()))?;
            Ok(LogEvent::MessageSent(Message {
                conversation_id,
                seq,
                message_id: MessageId::parse(&m.message_id)?,
                sender_id: UserId::parse(&m.sender_id)?,
                sender_device_id: DeviceId::parse(&m.sender_device_id)?,
                client_msg_id: ClientMsgId::parse(&m.client_msg_id)?,
                body,
                sent_at_ms: envelope.created_at_ms,
            }))
        }
        Some(v1::event::Kind::ReceiptRecorded(r)) => {
            let kind = match v1::ReceiptKind::try_from(r.kind) {
                Ok(v1::ReceiptKind::Delivered) => ReceiptKind::Delivered,
                Ok(v1::ReceiptKind::Read) => ReceiptKind::Read,
                _ => return Err(DecodeError::Field(format!("receipt kind {}", r.kind))),
            };
            Ok(LogEvent::ReceiptRecorded(Receipt {
                conversation_id,
                user_id: UserId::parse(&r.user_id)?,
                device_id: DeviceId::parse(&r.device_id)?,
                kind,
                up_to: Seq::new(r.up_to_seq).ok_or_else(|| DecodeError::Field("up_to_seq is 0".into()))?,
            }))
        }
        // Membership events are not produced yet; a consumer cannot use what it does not know.
        Some(_) | None => Err(DecodeError::UnknownKind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message {
            conversation_id: ConversationId::generate(),
            seq: Seq::new(42).expect("non-zero"),
            message_id: MessageId::generate(),
            sender_id: UserId::parse("alice").expect("valid"),
            sender_device_id: DeviceId::parse("phone").expect("valid"),
            client_msg_id: ClientMsgId::parse("c-1").expect("valid"),
            body: Body::parse("héllo".into()).expect("valid"),
            sent_at_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn a_message_survives_the_round_trip() {
        let m = sample();
        let bytes = encode(&LogEvent::MessageSent(m.clone()), m.sent_at_ms);
        assert_eq!(decode(&bytes), Ok(LogEvent::MessageSent(m)));
    }

    #[test]
    fn a_receipt_survives_the_round_trip() {
        let r = Receipt {
            conversation_id: ConversationId::generate(),
            user_id: UserId::parse("bob").expect("valid"),
            device_id: DeviceId::parse("tablet").expect("valid"),
            kind: ReceiptKind::Read,
            up_to: Seq::new(7).expect("non-zero"),
        };
        let bytes = encode(&LogEvent::ReceiptRecorded(r.clone()), 5);
        assert_eq!(decode(&bytes), Ok(LogEvent::ReceiptRecorded(r)));
    }

    #[test]
    fn garbage_and_invalid_fields_are_named() {
        assert!(matches!(decode(b"\xff\xff\xff"), Err(DecodeError::Protobuf(_))));
        assert_eq!(decode(&[]), Err(DecodeError::Id(IdError::Empty { what: "conversation id" })));

        let m = sample();
        let mut envelope = v1::Event::decode(&encode(&LogEvent::MessageSent(m), 1)[..]).expect("decodes");
        if let Some(v1::event::Kind::MessageSent(ms)) = envelope.kind.as_mut() {
            ms.seq = 0;
        }
        assert_eq!(decode(&envelope.encode_to_vec()), Err(DecodeError::Field("seq is 0".into())));
        envelope.kind = None;
        assert_eq!(decode(&envelope.encode_to_vec()), Err(DecodeError::UnknownKind));
    }
}
