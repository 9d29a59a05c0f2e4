//! The log's events applied to the store: every table that is not delivery state (history, idempotency
//! records, read positions, conversations and their members) is this function of the log. The delivery
//! workers apply each event before they deliver it, and `chatctl rebuild` applies the whole log to an
//! empty keyspace; every write is plain and idempotent, so applying an event twice changes nothing.

use chat_model::Message;
use chat_model::event::{LogEvent, ReceiptKind};

use crate::{CassandraStore, StoreError};

impl CassandraStore {
    /// Applies a `MessageSent`: its history row and its send's idempotency record, together.
    pub async fn project_message(&self, m: &Message) -> Result<(), StoreError> {
        self.write_message_and_send(m).await
    }

    /// Applies one event of the log.
    pub async fn project(&self, event: &LogEvent) -> Result<(), StoreError> {
        match event {
            LogEvent::MessageSent(m) => self.project_message(m).await,
            LogEvent::ReceiptRecorded(r) => match r.kind {
                ReceiptKind::Read => self.mark_read(r.conversation_id, &r.user_id, r.up_to).await.map(|_| ()),
                // Delivery receipts move no state the store keeps (the inbox is acknowledged directly).
                ReceiptKind::Delivered => Ok(()),
            },
            LogEvent::ConversationCreated(c) => {
                let at = c.created_at_ms;
                self.write_conversation(c.conversation_id, c.kind, &c.title, &c.created_by, &c.members, at).await
            }
            LogEvent::MembersChanged(c) => {
                self.add_members(c.conversation_id, &c.added, c.at_ms).await?;
                self.remove_members(c.conversation_id, &c.removed).await
            }
        }
    }
}
