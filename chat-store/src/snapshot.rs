//! Everything the store holds of one conversation that is a projection of the log, as plain values that
//! two keyspaces can be compared by (`chatctl diff`, after `chatctl rebuild`): the conversation's row, its
//! members (and the reverse index), its history, its sends' idempotency records and its read positions.
//! Delivery state (inboxes, devices, delivery cursors) is not a projection and is not compared.

use std::collections::BTreeSet;

use chat_model::ConversationId;
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use crate::{BUCKET_SIZE, CassandraStore, StoreError};

/// One conversation's projected rows, each rendered as a line of text (table, key, values), sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversationSnapshot {
    pub rows: BTreeSet<String>,
}

impl CassandraStore {
    /// Every conversation id in the keyspace (a full scan of `conversations`).
    pub async fn conversation_ids(&self) -> Result<Vec<ConversationId>, StoreError> {
        let mut out = Vec::new();
        let mut pager = self
            .session()
            .query_iter("SELECT conversation_id FROM conversations", ())
            .await?
            .rows_stream::<(Uuid,)>()?;
        use futures::StreamExt;
        while let Some(row) = pager.next().await {
            let (id,) = row?;
            out.push(ConversationId::from_uuid(id));
        }
        Ok(out)
    }

    /// The projected rows of one conversation.
    pub async fn snapshot(&self, id: ConversationId) -> Result<ConversationSnapshot, StoreError> {
        let s = self.session();
        let uuid = id.as_uuid();
        let mut rows = BTreeSet::new();
        let conv = s
            .query_unpaged(
                "SELECT kind, title, created_by, created_at FROM conversations WHERE conversation_id = ?",
                (uuid,),
            )
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<i8>, Option<String>, Option<String>, Option<CqlTimestamp>)>()?;
        if let Some((kind, title, by, at)) = conv {
            rows.insert(format!("conversations {id} kind={kind:?} title={title:?} by={by:?} at={:?}", at.map(|t| t.0)));
        }
        let members = s
            .query_unpaged("SELECT user_id, added_at FROM members WHERE conversation_id = ?", (uuid,))
            .await?
            .into_rows_result()?;
        let mut users = Vec::new();
        for r in members.rows::<(String, Option<CqlTimestamp>)>()? {
            let (user, at) = r?;
            rows.insert(format!("members {id} {user} at={:?}", at.map(|t| t.0)));
            users.push(user);
        }
        for user in &users {
            let back = s
                .query_unpaged(
                    "SELECT conversation_id FROM conversations_by_user WHERE user_id = ? AND conversation_id = ?",
                    (user.as_str(), uuid),
                )
                .await?
                .into_rows_result()?
                .maybe_first_row::<(Uuid,)>()?;
            if back.is_some() {
                rows.insert(format!("conversations_by_user {user} {id}"));
            }
        }
        let mut senders = BTreeSet::new();
        let mut bucket: i64 = 0;
        loop {
            let page = s
                .query_unpaged(
                    "SELECT seq, message_id, sender_id, sender_device_id, client_msg_id, body, sent_at FROM messages \
                     WHERE conversation_id = ? AND bucket = ?",
                    (uuid, bucket),
                )
                .await?
                .into_rows_result()?;
            let mut n = 0;
            for r in page.rows::<(i64, Uuid, String, String, String, String, CqlTimestamp)>()? {
                let (seq, mid, sender, device, client, body, at) = r?;
                rows.insert(format!("messages {id} {seq} {mid} {sender} {device} {client} {body:?} {}", at.0));
                senders.insert(sender);
                n += 1;
            }
            // Buckets fill in order; an empty one ends history (a full one may have a successor).
            if n == 0 || (n as u64) < BUCKET_SIZE {
                break;
            }
            bucket += 1;
        }
        for sender in &senders {
            let sends = s
                .query_unpaged(
                    "SELECT client_msg_id, seq, message_id, sent_at FROM sends WHERE conversation_id = ? AND sender_id = ?",
                    (uuid, sender.as_str()),
                )
                .await?
                .into_rows_result()?;
            for r in sends.rows::<(String, Option<i64>, Option<Uuid>, Option<CqlTimestamp>)>()? {
                let (client, seq, mid, at) = r?;
                rows.insert(format!("sends {id} {sender} {client} {seq:?} {mid:?} {:?}", at.map(|t| t.0)));
            }
        }
        let marks = s
            .query_unpaged("SELECT user_id, read_seq FROM read_marks WHERE conversation_id = ?", (uuid,))
            .await?
            .into_rows_result()?;
        for r in marks.rows::<(String, Option<i64>)>()? {
            let (user, seq) = r?;
            rows.insert(format!("read_marks {id} {user} {seq:?}"));
        }
        Ok(ConversationSnapshot { rows })
    }
}
