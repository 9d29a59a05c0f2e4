//! `CassandraStore`: prepared statements and the domain operations built on them.

use std::sync::Arc;
use std::time::Duration;

use chat_model::{Body, ClientMsgId, ConversationId, ConversationKind, DeviceId, Message, MessageId, Seq, UserId};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use crate::{StoreError, now_ms};

/// Messages per history partition: `bucket = (seq - 1) / BUCKET_SIZE`.
pub const BUCKET_SIZE: u64 = 1000;

/// The history partition that holds `seq`.
pub fn bucket_of(seq: Seq) -> i64 {
    i64::try_from((seq.get() - 1) / BUCKET_SIZE).unwrap_or(i64::MAX)
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `host:port` of one or more nodes.
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub request_timeout: Duration,
    /// How long history keeps a message, in seconds; 0 keeps it forever.
    pub message_ttl_secs: i32,
}

/// A send's idempotency record, as projected from the log (`sends`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRecord {
    pub message_id: MessageId,
    pub seq: Seq,
    pub sent_at_ms: i64,
}

impl SendRecord {
    /// The record of a committed message.
    pub fn of(m: &Message) -> Self {
        SendRecord { message_id: m.message_id, seq: m.seq, sent_at_ms: m.sent_at_ms }
    }
}

/// A conversation to create.
#[derive(Debug, Clone)]
pub struct NewConversation {
    pub id: ConversationId,
    pub kind: ConversationKind,
    pub title: String,
    pub created_by: UserId,
    /// Every member, the creator included.
    pub members: Vec<UserId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRecord {
    pub id: ConversationId,
    pub kind: ConversationKind,
    pub title: String,
    pub members: Vec<UserId>,
    pub last_seq: u64,
    /// Members' read positions (members who never read are absent).
    pub read_positions: Vec<(UserId, u64)>,
}

/// The platform's CQL, behind domain operations. Cheap to clone.
#[derive(Clone)]
pub struct CassandraStore {
    session: Arc<Session>,
    st: Arc<Statements>,
    /// TTL of history rows (0: none).
    message_ttl: i32,
}

struct Statements {
    insert_conversation: PreparedStatement,
    insert_member: PreparedStatement,
    insert_by_user: PreparedStatement,
    delete_member: PreparedStatement,
    delete_by_user: PreparedStatement,
    select_conversation: PreparedStatement,
    select_members: PreparedStatement,
    select_member: PreparedStatement,
    select_messages: PreparedStatement,
    select_first_after: PreparedStatement,
    insert_device: PreparedStatement,
    select_devices: PreparedStatement,
    insert_inbox: PreparedStatement,
    select_inbox: PreparedStatement,
    select_inbox_after: PreparedStatement,
    delete_inbox_upto: PreparedStatement,
    select_cursor: PreparedStatement,
    update_cursor: PreparedStatement,
    select_send: PreparedStatement,
    select_last_send: PreparedStatement,
    select_last_in_bucket: PreparedStatement,
    upsert_read_mark: PreparedStatement,
    select_read_mark: PreparedStatement,
    select_read_marks: PreparedStatement,
    insert_owner: PreparedStatement,
    select_owner: PreparedStatement,
    select_user_conversations: PreparedStatement,
    select_created_at: PreparedStatement,
    select_sent_at: PreparedStatement,
    /// A message's history row and its send's idempotency record, in one request (an unlogged batch).
    project_message: Batch,
}

const MESSAGE_COLUMNS: &str = "seq, message_id, sender_id, sender_device_id, client_msg_id, body, sent_at";
type MessageRow = (i64, Uuid, String, String, String, String, CqlTimestamp);

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn kind_code(kind: ConversationKind) -> i8 {
    match kind {
        ConversationKind::Direct => 1,
        ConversationKind::Group => 2,
    }
}

impl CassandraStore {
    /// Connects to the cluster, uses the (already migrated) keyspace and prepares every statement.
    pub async fn connect(config: &StoreConfig) -> Result<CassandraStore, StoreError> {
        let session = connect_session(&config.nodes, config.request_timeout).await?;
        crate::migrate::check_keyspace_name(&config.keyspace)?;
        session.use_keyspace(&config.keyspace, false).await?;
        let st = Statements::prepare(&session).await?;
        let message_ttl = config.message_ttl_secs.max(0);
        Ok(CassandraStore { session: Arc::new(session), st: Arc::new(st), message_ttl })
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Writes a conversation's rows (members, the reverse index, then the descriptive row, so that it is
    /// visible only when whole): what the log's `ConversationCreated` says.
    pub async fn write_conversation(
        &self,
        id: ConversationId,
        kind: ConversationKind,
        title: &str,
        created_by: &UserId,
        members: &[UserId],
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let uuid = id.as_uuid();
        let at = CqlTimestamp(at_ms);
        for m in members {
            self.session.execute_unpaged(&self.st.insert_member, (uuid, m.as_str(), at)).await?;
            self.session.execute_unpaged(&self.st.insert_by_user, (m.as_str(), uuid)).await?;
        }
        self.session
            .execute_unpaged(&self.st.insert_conversation, (uuid, kind_code(kind), title, created_by.as_str(), at))
            .await?;
        Ok(())
    }

    pub async fn conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>, StoreError> {
        let row = self
            .session
            .execute_unpaged(&self.st.select_conversation, (id.as_uuid(),))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<i8>, Option<String>)>()?;
        let Some((kind, title)) = row else {
            return Ok(None);
        };
        let kind = match kind {
            Some(1) => ConversationKind::Direct,
            Some(2) => ConversationKind::Group,
            other => {
                return Err(StoreError::Corrupt { table: "conversations", reason: format!("kind {other:?}") });
            }
        };
        let members = self.members(id).await?;
        let last_seq = self.head(id).await?.unwrap_or(0);
        let read_positions = self.read_marks(id).await?;
        Ok(Some(ConversationRecord { id, kind, title: title.unwrap_or_default(), members, last_seq, read_positions }))
    }

    /// The conversations `user` is a member of (the reverse index `conversations_by_user`), in no order.
    pub async fn conversations_of(&self, user: &UserId) -> Result<Vec<ConversationId>, StoreError> {
        use futures::StreamExt;
        let mut pager = self
            .session
            .execute_iter(self.st.select_user_conversations.clone(), (user.as_str(),))
            .await?
            .rows_stream::<(Uuid,)>()?;
        let mut out = Vec::new();
        while let Some(row) = pager.next().await {
            out.push(ConversationId::from_uuid(row?.0));
        }
        Ok(out)
    }

    /// When the conversation last changed, in milliseconds since the epoch: the time of its message
    /// `last_seq` (its last), or of its creation when it has none (or history no longer holds that one).
    pub async fn last_activity_ms(&self, id: ConversationId, last_seq: u64) -> Result<i64, StoreError> {
        if let Some(seq) = Seq::new(last_seq) {
            let sent = self
                .session
                .execute_unpaged(&self.st.select_sent_at, (id.as_uuid(), bucket_of(seq), to_i64(last_seq)))
                .await?
                .into_rows_result()?
                .maybe_first_row::<(Option<CqlTimestamp>,)>()?;
            if let Some((Some(at),)) = sent {
                return Ok(at.0);
            }
        }
        let created = self
            .session
            .execute_unpaged(&self.st.select_created_at, (id.as_uuid(),))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<CqlTimestamp>,)>()?;
        Ok(created.and_then(|(at,)| at).map_or(0, |at| at.0))
    }

    pub async fn members(&self, id: ConversationId) -> Result<Vec<UserId>, StoreError> {
        let rows = self.session.execute_unpaged(&self.st.select_members, (id.as_uuid(),)).await?.into_rows_result()?;
        let mut out = Vec::new();
        for r in rows.rows::<(String,)>()? {
            let (user,) = r?;
            out.push(parse_user(&user, "members")?);
        }
        Ok(out)
    }

    pub async fn is_member(&self, id: ConversationId, user: &UserId) -> Result<bool, StoreError> {
        let row = self
            .session
            .execute_unpaged(&self.st.select_member, (id.as_uuid(), user.as_str()))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(String,)>()?;
        Ok(row.is_some())
    }

    /// Adds members, as of `at_ms` (the time of the log's event, so that a replay writes the same rows).
    pub async fn add_members(&self, id: ConversationId, users: &[UserId], at_ms: i64) -> Result<(), StoreError> {
        let now = CqlTimestamp(at_ms);
        for u in users {
            self.session.execute_unpaged(&self.st.insert_member, (id.as_uuid(), u.as_str(), now)).await?;
            self.session.execute_unpaged(&self.st.insert_by_user, (u.as_str(), id.as_uuid())).await?;
        }
        Ok(())
    }

    pub async fn remove_members(&self, id: ConversationId, users: &[UserId]) -> Result<(), StoreError> {
        for u in users {
            self.session.execute_unpaged(&self.st.delete_member, (id.as_uuid(), u.as_str())).await?;
            self.session.execute_unpaged(&self.st.delete_by_user, (u.as_str(), id.as_uuid())).await?;
        }
        Ok(())
    }

    /// The conversation's last number (see [`Self::projected_head`]), or `None` when it does not exist.
    pub async fn head(&self, id: ConversationId) -> Result<Option<u64>, StoreError> {
        if !self.conversation_exists(id).await? {
            return Ok(None);
        }
        self.projected_head(id).await.map(Some)
    }

    pub async fn conversation_exists(&self, id: ConversationId) -> Result<bool, StoreError> {
        let row = self
            .session
            .execute_unpaged(&self.st.select_conversation, (id.as_uuid(),))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<i8>, Option<String>)>()?;
        Ok(row.is_some())
    }

    /// The last number history holds for a conversation (0 for none): history is dense and written in
    /// order by the delivery workers, so from their delivery cursor (a lower bound, saved lazily) the
    /// buckets are read forward to the last row.
    pub async fn projected_head(&self, id: ConversationId) -> Result<u64, StoreError> {
        let mut head = self.delivery_cursor(id).await?;
        loop {
            let Some(next) = Seq::new(head + 1) else { return Ok(head) };
            let bucket = bucket_of(next);
            let row = self
                .session
                .execute_unpaged(&self.st.select_last_in_bucket, (id.as_uuid(), bucket))
                .await?
                .into_rows_result()?
                .maybe_first_row::<(i64,)>()?;
            match row.and_then(|(n,)| u64::try_from(n).ok()) {
                Some(last) if last > head => {
                    head = last;
                    // The bucket is full up to its end: the next one may hold more.
                    if last % BUCKET_SIZE != 0 {
                        return Ok(head);
                    }
                }
                _ => return Ok(head),
            }
        }
    }

    /// The idempotency record of (sender, client id) in a conversation, once the workers projected it.
    pub async fn send_record(
        &self,
        id: ConversationId,
        sender: &UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<SendRecord>, StoreError> {
        let row = self
            .session
            .execute_unpaged(&self.st.select_send, (id.as_uuid(), sender.as_str(), client_msg_id.as_str()))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<i64>, Option<Uuid>, Option<CqlTimestamp>)>()?;
        row.map(send_record).transpose()
    }

    /// The idempotency record with the greatest client id (in the store's order of text: by bytes) that
    /// `sender` has in conversation `id`, once the workers projected it: no send of theirs there has a
    /// greater one.
    pub async fn last_send(
        &self,
        id: ConversationId,
        sender: &UserId,
    ) -> Result<Option<(ClientMsgId, SendRecord)>, StoreError> {
        let row = self
            .session
            .execute_unpaged(&self.st.select_last_send, (id.as_uuid(), sender.as_str()))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(String, Option<i64>, Option<Uuid>, Option<CqlTimestamp>)>()?;
        let Some((client_msg_id, seq, message_id, sent_at)) = row else { return Ok(None) };
        let client_msg_id = ClientMsgId::parse(&client_msg_id)
            .map_err(|e| StoreError::Corrupt { table: "sends", reason: format!("client_msg_id: {e}") })?;
        Ok(Some((client_msg_id, send_record((seq, message_id, sent_at))?)))
    }

    /// Records which replica owns a partition of `topic` (its advertised address).
    pub async fn set_partition_owner(&self, topic: &str, partition: i32, owner: &str) -> Result<(), StoreError> {
        self.session.execute_unpaged(&self.st.insert_owner, (topic, partition, owner, CqlTimestamp(now_ms()))).await?;
        Ok(())
    }

    /// The replica last recorded as the owner of a partition of `topic`.
    pub async fn partition_owner(&self, topic: &str, partition: i32) -> Result<Option<String>, StoreError> {
        let row = self
            .session
            .execute_unpaged(&self.st.select_owner, (topic, partition))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<String>,)>()?;
        Ok(row.and_then(|(o,)| o))
    }

    /// Writes a message's immutable history row and its send's idempotency record, in one request: an
    /// unlogged batch (two partitions, no batch log), so either may be written without the other when it
    /// fails, as with two requests. Idempotent: a replay writes the same values.
    pub async fn write_message_and_send(&self, m: &Message) -> Result<(), StoreError> {
        let history = (
            m.conversation_id.as_uuid(),
            bucket_of(m.seq),
            to_i64(m.seq.get()),
            m.message_id.as_uuid(),
            m.sender_id.as_str(),
            m.sender_device_id.as_str(),
            m.client_msg_id.as_str(),
            m.body.as_str(),
            CqlTimestamp(m.sent_at_ms),
            self.message_ttl,
        );
        let send = (
            m.conversation_id.as_uuid(),
            m.sender_id.as_str(),
            m.client_msg_id.as_str(),
            to_i64(m.seq.get()),
            m.message_id.as_uuid(),
            CqlTimestamp(m.sent_at_ms),
            self.message_ttl,
        );
        self.session.batch(&self.st.project_message, (history, send)).await?;
        Ok(())
    }

    /// Messages with `after < seq <= up_to`, oldest first, at most `limit`, with no gap. History is dense
    /// (the workers write it in log order); a number missing below `up_to` has expired (history's
    /// retention), which is answered as [`StoreError::Expired`] with the first number still held.
    pub async fn messages_between(
        &self,
        id: ConversationId,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let mut out: Vec<Message> = Vec::new();
        let Some(first) = Seq::new(after + 1) else {
            return Ok(out);
        };
        if first.get() > up_to || limit == 0 {
            return Ok(out);
        }
        let last = up_to.min(after.saturating_add(limit as u64));
        let mut bucket = bucket_of(first);
        let last_bucket = Seq::new(last).map(bucket_of).unwrap_or(bucket);
        while bucket <= last_bucket {
            let rows = self
                .session
                .execute_unpaged(&self.st.select_messages, (id.as_uuid(), bucket, to_i64(after), to_i64(last)))
                .await?
                .into_rows_result()?;
            for r in rows.rows::<MessageRow>()? {
                out.push(message_from_row(id, r?, "messages")?);
            }
            bucket += 1;
        }
        // The first number missing, if any.
        let missing = out
            .iter()
            .enumerate()
            .find(|(i, m)| m.seq.get() != first.get() + *i as u64)
            .map(|(i, _)| first.get() + i as u64)
            .or_else(|| (first.get() + (out.len() as u64) <= last).then(|| first.get() + out.len() as u64));
        if let Some(missing) = missing {
            let seq =
                Seq::new(missing).ok_or_else(|| StoreError::Corrupt { table: "messages", reason: "seq 0".into() })?;
            let first_available = self.first_retained_after(id, seq, up_to).await?;
            return Err(StoreError::Expired { first_available });
        }
        Ok(out)
    }

    /// The first number above `seq` that history still holds, or `up_to + 1` when none up to `up_to` is.
    async fn first_retained_after(&self, id: ConversationId, seq: Seq, up_to: u64) -> Result<u64, StoreError> {
        let mut bucket = bucket_of(seq);
        let last_bucket = Seq::new(up_to).map(bucket_of).unwrap_or(bucket);
        while bucket <= last_bucket {
            let row = self
                .session
                .execute_unpaged(&self.st.select_first_after, (id.as_uuid(), bucket, to_i64(seq.get())))
                .await?
                .into_rows_result()?
                .maybe_first_row::<(i64,)>()?;
            if let Some((n,)) = row {
                return Ok(u64::try_from(n).unwrap_or(0));
            }
            bucket += 1;
        }
        Ok(up_to + 1)
    }

    /// Remembers a device of a user, so that the delivery worker keeps an inbox for it while it is offline.
    pub async fn register_device(&self, user: &UserId, device: &DeviceId) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(&self.st.insert_device, (user.as_str(), device.as_str(), CqlTimestamp(now_ms())))
            .await?;
        Ok(())
    }

    pub async fn devices(&self, user: &UserId) -> Result<Vec<DeviceId>, StoreError> {
        let rows = self.session.execute_unpaged(&self.st.select_devices, (user.as_str(),)).await?.into_rows_result()?;
        let mut out = Vec::new();
        for r in rows.rows::<(String,)>()? {
            let (d,) = r?;
            out.push(DeviceId::parse(&d).map_err(|e| StoreError::Corrupt { table: "devices", reason: e.to_string() })?);
        }
        Ok(out)
    }

    pub async fn put_inbox(&self, user: &UserId, device: &DeviceId, m: &Message) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(
                &self.st.insert_inbox,
                (
                    user.as_str(),
                    device.as_str(),
                    m.conversation_id.as_uuid(),
                    to_i64(m.seq.get()),
                    m.message_id.as_uuid(),
                    m.sender_id.as_str(),
                    m.sender_device_id.as_str(),
                    m.client_msg_id.as_str(),
                    m.body.as_str(),
                    CqlTimestamp(m.sent_at_ms),
                ),
            )
            .await?;
        Ok(())
    }

    /// A device's inbox, ordered by conversation then sequence, starting after `after` when given.
    pub async fn inbox(
        &self,
        user: &UserId,
        device: &DeviceId,
        after: Option<(ConversationId, Seq)>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let result = match after {
            None => {
                self.session.execute_unpaged(&self.st.select_inbox, (user.as_str(), device.as_str(), limit)).await?
            }
            Some((conv, seq)) => {
                self.session
                    .execute_unpaged(
                        &self.st.select_inbox_after,
                        (user.as_str(), device.as_str(), conv.as_uuid(), to_i64(seq.get()), limit),
                    )
                    .await?
            }
        };
        let rows = result.into_rows_result()?;
        let mut out = Vec::new();
        for r in rows.rows::<(Uuid, i64, Uuid, String, String, String, String, CqlTimestamp)>()? {
            let (conv, seq, mid, snd, dev, cid, body, at) = r?;
            out.push(message_from_row(ConversationId::from_uuid(conv), (seq, mid, snd, dev, cid, body, at), "inbox")?);
        }
        Ok(out)
    }

    /// Removes a device's inbox entries of one conversation up to and including `up_to`.
    pub async fn ack_inbox(
        &self,
        user: &UserId,
        device: &DeviceId,
        id: ConversationId,
        up_to: Seq,
    ) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(
                &self.st.delete_inbox_upto,
                (user.as_str(), device.as_str(), id.as_uuid(), to_i64(up_to.get())),
            )
            .await?;
        Ok(())
    }
}

impl CassandraStore {
    /// How far delivery has gone in a conversation (0 when nothing was delivered yet).
    pub async fn delivery_cursor(&self, id: ConversationId) -> Result<u64, StoreError> {
        let row = self
            .session
            .execute_unpaged(&self.st.select_cursor, (id.as_uuid(),))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<i64>,)>()?;
        Ok(row.and_then(|(n,)| n).and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
    }

    /// Records that every message up to `seq` is delivered. A plain write: a stale writer can only move it
    /// back, which costs duplicates on the wire, never a loss.
    pub async fn set_delivery_cursor(&self, id: ConversationId, seq: Seq) -> Result<(), StoreError> {
        self.session.execute_unpaged(&self.st.update_cursor, (to_i64(seq.get()), id.as_uuid())).await?;
        Ok(())
    }
}

impl CassandraStore {
    /// Moves a member's read position forward to `seq` (never back), with a plain write whose timestamp is
    /// the position: the highest write wins in any order, and a replay changes nothing. Answers the
    /// position after the call.
    pub async fn mark_read(&self, id: ConversationId, user: &UserId, seq: Seq) -> Result<u64, StoreError> {
        let n = to_i64(seq.get());
        self.session.execute_unpaged(&self.st.upsert_read_mark, (n, n, id.as_uuid(), user.as_str())).await?;
        let row = self
            .session
            .execute_unpaged(&self.st.select_read_mark, (id.as_uuid(), user.as_str()))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<i64>,)>()?;
        Ok(row.and_then(|(n,)| n).and_then(|n| u64::try_from(n).ok()).unwrap_or(seq.get()))
    }

    /// Every member's read position in a conversation (from `read_marks`).
    pub async fn read_marks(&self, id: ConversationId) -> Result<Vec<(UserId, u64)>, StoreError> {
        let rows =
            self.session.execute_unpaged(&self.st.select_read_marks, (id.as_uuid(),)).await?.into_rows_result()?;
        let mut out = Vec::new();
        for r in rows.rows::<(String, Option<i64>)>()? {
            let (user, seq) = r?;
            out.push((parse_user(&user, "read_marks")?, seq.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)));
        }
        Ok(out)
    }
}

/// A session whose default profile reads and writes at LOCAL_QUORUM and runs conditional writes at LOCAL_SERIAL.
pub async fn connect_session(nodes: &[String], request_timeout: Duration) -> Result<Session, StoreError> {
    let profile = ExecutionProfile::builder()
        .consistency(Consistency::LocalQuorum)
        .serial_consistency(Some(SerialConsistency::LocalSerial))
        .request_timeout(Some(request_timeout))
        .build();
    let session = SessionBuilder::new()
        .known_nodes(nodes)
        .connection_timeout(Duration::from_secs(5))
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await?;
    Ok(session)
}

/// A row of `sends` (seq, message_id, sent_at) as the record of a send.
fn send_record(
    (seq, message_id, sent_at): (Option<i64>, Option<Uuid>, Option<CqlTimestamp>),
) -> Result<SendRecord, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt { table: "sends", reason: reason.to_owned() };
    let seq = seq.and_then(|s| u64::try_from(s).ok()).and_then(Seq::new).ok_or_else(|| corrupt("seq"))?;
    let message_id = MessageId::from_uuid(message_id.ok_or_else(|| corrupt("message_id"))?);
    Ok(SendRecord { message_id, seq, sent_at_ms: sent_at.map(|t| t.0).unwrap_or(0) })
}

fn parse_user(s: &str, table: &'static str) -> Result<UserId, StoreError> {
    UserId::parse(s).map_err(|e| StoreError::Corrupt { table, reason: e.to_string() })
}

fn message_from_row(id: ConversationId, r: MessageRow, table: &'static str) -> Result<Message, StoreError> {
    let (seq, mid, snd, dev, cid, body, at) = r;
    let corrupt = |reason: String| StoreError::Corrupt { table, reason };
    Ok(Message {
        conversation_id: id,
        seq: u64::try_from(seq).ok().and_then(Seq::new).ok_or_else(|| corrupt(format!("seq {seq}")))?,
        message_id: MessageId::from_uuid(mid),
        sender_id: UserId::parse(&snd).map_err(|e| corrupt(e.to_string()))?,
        sender_device_id: DeviceId::parse(&dev).map_err(|e| corrupt(e.to_string()))?,
        client_msg_id: ClientMsgId::parse(&cid).map_err(|e| corrupt(e.to_string()))?,
        body: Body::parse(body).map_err(|e| corrupt(e.to_string()))?,
        sent_at_ms: at.0,
    })
}

impl Statements {
    async fn prepare(s: &Session) -> Result<Statements, StoreError> {
        let insert_message = s
            .prepare(format!(
                "INSERT INTO messages (conversation_id, bucket, {MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                     USING TTL ?"
            ))
            .await?;
        let insert_send = s
            .prepare(
                "INSERT INTO sends (conversation_id, sender_id, client_msg_id, seq, message_id, sent_at) \
                     VALUES (?, ?, ?, ?, ?, ?) USING TTL ?",
            )
            .await?;
        let mut project_message = Batch::new(BatchType::Unlogged);
        project_message.append_statement(insert_message);
        project_message.append_statement(insert_send);
        Ok(Statements {
            project_message,
            insert_conversation: s
                .prepare(
                    "INSERT INTO conversations (conversation_id, kind, title, created_by, created_at) VALUES (?, ?, ?, ?, ?)",
                )
                .await?,
            insert_member: s
                .prepare("INSERT INTO members (conversation_id, user_id, added_at) VALUES (?, ?, ?)")
                .await?,
            insert_by_user: s
                .prepare("INSERT INTO conversations_by_user (user_id, conversation_id) VALUES (?, ?)")
                .await?,
            delete_member: s.prepare("DELETE FROM members WHERE conversation_id = ? AND user_id = ?").await?,
            delete_by_user: s
                .prepare("DELETE FROM conversations_by_user WHERE user_id = ? AND conversation_id = ?")
                .await?,
            select_conversation: s.prepare("SELECT kind, title FROM conversations WHERE conversation_id = ?").await?,
            select_user_conversations: s
                .prepare("SELECT conversation_id FROM conversations_by_user WHERE user_id = ?")
                .await?,
            select_created_at: s.prepare("SELECT created_at FROM conversations WHERE conversation_id = ?").await?,
            select_sent_at: s
                .prepare("SELECT sent_at FROM messages WHERE conversation_id = ? AND bucket = ? AND seq = ?")
                .await?,
            select_members: s.prepare("SELECT user_id FROM members WHERE conversation_id = ?").await?,
            select_member: s
                .prepare("SELECT user_id FROM members WHERE conversation_id = ? AND user_id = ?")
                .await?,
            select_messages: s
                .prepare(format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND bucket = ? AND seq > ? AND seq <= ?"
                ))
                .await?,
            select_first_after: s
                .prepare("SELECT seq FROM messages WHERE conversation_id = ? AND bucket = ? AND seq > ? LIMIT 1")
                .await?,
            insert_device: s
                .prepare("INSERT INTO devices (user_id, device_id, registered_at) VALUES (?, ?, ?)")
                .await?,
            select_devices: s.prepare("SELECT device_id FROM devices WHERE user_id = ?").await?,
            insert_inbox: s
                .prepare(format!(
                    "INSERT INTO inbox (user_id, device_id, conversation_id, {MESSAGE_COLUMNS}) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL 2592000"
                ))
                .await?,
            select_inbox: s
                .prepare(format!(
                    "SELECT conversation_id, {MESSAGE_COLUMNS} FROM inbox WHERE user_id = ? AND device_id = ? LIMIT ?"
                ))
                .await?,
            select_inbox_after: s
                .prepare(format!(
                    "SELECT conversation_id, {MESSAGE_COLUMNS} FROM inbox WHERE user_id = ? AND device_id = ? \
                     AND (conversation_id, seq) > (?, ?) LIMIT ?"
                ))
                .await?,
            delete_inbox_upto: s
                .prepare(
                    "DELETE FROM inbox WHERE user_id = ? AND device_id = ? AND conversation_id = ? AND seq <= ?",
                )
                .await?,
            select_cursor: s.prepare("SELECT delivered_seq FROM delivery_cursors WHERE conversation_id = ?").await?,
            update_cursor: s
                .prepare("UPDATE delivery_cursors SET delivered_seq = ? WHERE conversation_id = ?")
                .await?,
            select_send: s
                .prepare(
                    "SELECT seq, message_id, sent_at FROM sends \
                     WHERE conversation_id = ? AND sender_id = ? AND client_msg_id = ?",
                )
                .await?,
            select_last_send: s
                .prepare(
                    "SELECT client_msg_id, seq, message_id, sent_at FROM sends \
                     WHERE conversation_id = ? AND sender_id = ? ORDER BY client_msg_id DESC LIMIT 1",
                )
                .await?,
            select_last_in_bucket: s
                .prepare("SELECT seq FROM messages WHERE conversation_id = ? AND bucket = ? ORDER BY seq DESC LIMIT 1")
                .await?,
            upsert_read_mark: s
                .prepare("UPDATE read_marks USING TIMESTAMP ? SET read_seq = ? WHERE conversation_id = ? AND user_id = ?")
                .await?,
            select_read_mark: s
                .prepare("SELECT read_seq FROM read_marks WHERE conversation_id = ? AND user_id = ?")
                .await?,
            select_read_marks: s.prepare("SELECT user_id, read_seq FROM read_marks WHERE conversation_id = ?").await?,
            insert_owner: s
                .prepare("INSERT INTO partition_owners (topic, partition, owner, since) VALUES (?, ?, ?, ?)")
                .await?,
            select_owner: s.prepare("SELECT owner FROM partition_owners WHERE topic = ? AND partition = ?").await?,
        })
    }
}
