//! The codec between domain events and the protobuf envelope written to the Kafka log.
//!
//! Decoding checks every field, so a consumer either gets a well-formed [`LogEvent`] or a
//! [`DecodeError`] that says why the record is unusable (it then goes to the dead-letter topic).

use prost::Message as _;
use proto::v1;

use crate::{Body, ClientMsgId, ConversationId, ConversationKind, DeviceId, IdError, Message, MessageId, Seq, UserId};

/// One fact on the log. The log is the source of truth; every table is a projection of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    MessageSent(Message),
    ReceiptRecorded(Receipt),
    ConversationCreated(Created),
    MembersChanged(MembersChange),
}

/// A conversation came to be, with its first members (the creator among them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub conversation_id: ConversationId,
    pub kind: ConversationKind,
    pub created_by: UserId,
    pub members: Vec<UserId>,
    pub title: String,
    pub created_at_ms: i64,
}

/// Members were added to or removed from a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersChange {
    pub conversation_id: ConversationId,
    pub added: Vec<UserId>,
    pub removed: Vec<UserId>,
    pub changed_by: UserId,
    pub at_ms: i64,
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
            LogEvent::ConversationCreated(c) => c.conversation_id,
            LogEvent::MembersChanged(c) => c.conversation_id,
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
            LogEvent::ConversationCreated(c) => format!("created/{}", c.conversation_id),
            LogEvent::MembersChanged(c) => format!("members/{}/{}/{}", c.conversation_id, c.changed_by, c.at_ms),
        }
    }
}

fn kind_to_proto(kind: ConversationKind) -> v1::ConversationKind {
    match kind {
        ConversationKind::Direct => v1::ConversationKind::Direct,
        ConversationKind::Group => v1::ConversationKind::Group,
    }
}

fn users(field: &str, ids: &[String]) -> Result<Vec<UserId>, DecodeError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(UserId::parse(id).map_err(|e| DecodeError::Field(format!("{field}: {e}")))?);
    }
    Ok(out)
}

fn strings(ids: &[UserId]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
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

/// The headers every record of the events topic carries (name, value), so that a reader who knows nothing of
/// this code (a console consumer, a connector) knows how to decode the value: a `chat.v1.Event` of
/// `proto/chat/v1/events.proto` in protobuf's binary encoding.
pub const RECORD_HEADERS: [(&str, &str); 2] = [("content-type", "application/x-protobuf"), ("schema", "chat.v1.Event")];

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
        LogEvent::ConversationCreated(c) => v1::Event {
            event_id: event.event_id(),
            conversation_id: c.conversation_id.to_string(),
            created_at_ms,
            traceparent: String::new(),
            kind: Some(v1::event::Kind::ConversationCreated(v1::ConversationCreated {
                kind: kind_to_proto(c.kind) as i32,
                created_by: c.created_by.to_string(),
                member_ids: strings(&c.members),
                title: c.title.clone(),
            })),
        },
        LogEvent::MembersChanged(c) => v1::Event {
            event_id: event.event_id(),
            conversation_id: c.conversation_id.to_string(),
            created_at_ms,
            traceparent: String::new(),
            kind: Some(v1::event::Kind::MembersChanged(v1::MembersChanged {
                added: strings(&c.added),
                removed: strings(&c.removed),
                changed_by: c.changed_by.to_string(),
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
        Some(v1::event::Kind::ConversationCreated(c)) => {
            let kind = match v1::ConversationKind::try_from(c.kind) {
                Ok(v1::ConversationKind::Direct) => ConversationKind::Direct,
                Ok(v1::ConversationKind::Group) => ConversationKind::Group,
                _ => return Err(DecodeError::Field(format!("conversation kind {}", c.kind))),
            };
            let members = users("member_ids", &c.member_ids)?;
            if members.is_empty() {
                return Err(DecodeError::Field("a conversation is created with its members".into()));
            }
            Ok(LogEvent::ConversationCreated(Created {
                conversation_id,
                kind,
                created_by: UserId::parse(&c.created_by)?,
                members,
                title: c.title,
                created_at_ms: envelope.created_at_ms,
            }))
        }
        Some(v1::event::Kind::MembersChanged(c)) => Ok(LogEvent::MembersChanged(MembersChange {
            conversation_id,
            added: users("added", &c.added)?,
            removed: users("removed", &c.removed)?,
            changed_by: UserId::parse(&c.changed_by)?,
            at_ms: envelope.created_at_ms,
        })),
        // Written by a newer producer: a consumer cannot use what it does not know.
        None => Err(DecodeError::UnknownKind),
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
    fn membership_events_survive_the_round_trip() {
        let conversation_id = ConversationId::generate();
        let alice = UserId::parse("alice").expect("valid");
        let bob = UserId::parse("bob").expect("valid");
        let created = LogEvent::ConversationCreated(Created {
            conversation_id,
            kind: ConversationKind::Group,
            created_by: alice.clone(),
            members: vec![alice.clone(), bob.clone()],
            title: "ünïcode".into(),
            created_at_ms: 11,
        });
        assert_eq!(decode(&encode(&created, 11)), Ok(created));
        let changed = LogEvent::MembersChanged(MembersChange {
            conversation_id,
            added: vec![bob.clone()],
            removed: vec![],
            changed_by: alice,
            at_ms: 12,
        });
        assert_eq!(decode(&encode(&changed, 12)), Ok(changed));
    }

    #[test]
    fn a_creation_without_members_or_kind_is_refused() {
        let envelope = v1::Event {
            event_id: "x".into(),
            conversation_id: ConversationId::generate().to_string(),
            created_at_ms: 1,
            traceparent: String::new(),
            kind: Some(v1::event::Kind::ConversationCreated(v1::ConversationCreated {
                kind: v1::ConversationKind::Group as i32,
                created_by: "alice".into(),
                member_ids: vec![],
                title: String::new(),
            })),
        };
        assert!(matches!(decode(&envelope.encode_to_vec()), Err(DecodeError::Field(_))));
        let mut no_kind = envelope;
        no_kind.kind = Some(v1::event::Kind::ConversationCreated(v1::ConversationCreated {
            kind: 0,
            created_by: "alice".into(),
            member_ids: vec!["alice".into()],
            title: String::new(),
        }));
        assert!(matches!(decode(&no_kind.encode_to_vec()), Err(DecodeError::Field(_))));
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
