//! The chat service's answers as client frames (`protocol.rs` types): messages, inbox messages, list entries.

use proto::v1;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::{ConversationSummary, ServerFrame, WireMessage};

pub(super) fn summary(c: v1::ConversationSummary) -> ConversationSummary {
    let kind = match v1::ConversationKind::try_from(c.kind) {
        Ok(v1::ConversationKind::Group) => "group",
        _ => "direct",
    };
    ConversationSummary {
        conversation_id: c.conversation_id,
        kind,
        title: c.title,
        member_ids: c.member_ids,
        last_seq: c.last_seq,
        last_activity_ms: c.last_activity_ms,
        read_seq: c.read_seq,
        unread: c.unread,
    }
}

pub(super) fn wire(m: &v1::Message) -> WireMessage {
    WireMessage {
        conversation_id: m.conversation_id.clone(),
        message_id: m.message_id.clone(),
        seq: m.seq,
        sender_id: m.sender_id.clone(),
        body: m.body.clone(),
        sent_at_ms: m.sent_at_ms,
        inbox: false,
    }
}

/// The frame text of a pushed message.
pub fn message_frame(m: &v1::Message) -> Utf8Bytes {
    ServerFrame::Message(wire(m)).to_text().into()
}

/// The frame text of a message from the device's inbox (marked `inbox`).
pub(super) fn inbox_frame(m: &v1::Message) -> Utf8Bytes {
    ServerFrame::Message(WireMessage { inbox: true, ..wire(m) }).to_text().into()
}
