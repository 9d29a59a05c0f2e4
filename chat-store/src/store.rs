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
use scylla::value::{CqlTimestamp, CqlValue, Row};
use uuid::Uuid;

use crate::{StoreError, now_ms};

/// Messages per history partition: `bucket = (seq - 1) / BUCKET_SIZE`.
pub const BUCKET_SIZE: u64 = 1000;

/// How long a send's idempotency record (and its claim row) is kept: a retry within this window returns the
/// original message; a retry after it is a new message. Seven days.
pub const IDEMPOTENCY_TTL_SECS: i32 = 7 * 24 * 3600;

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
    /// Where a conversation's last number comes from: the sequencer's head row (numbers claimed in the
    /// store), or history as the delivery workers projected it from the log (numbers given by the log's
    /// partition owners).
    pub heads: HeadSource,
}

/// See [`StoreConfig::heads`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadSource {
    #[default]
    Sequencer,
    Projected,
}

/// A send's idempotency record, as projected from the log (`sends`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRecord {
    pub message_id: MessageId,
    pub seq: Seq,
    pub sent_at_ms: i64,
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

/// The idempotency record of a send that already holds a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub message_id: MessageId,
    pub seq: Seq,
    pub sent_at_ms: i64,
    /// Set once the message is in Kafka and in the history table.
    pub published: bool,
}

/// What a claim attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The message now holds its number; its claim row and idempotency record are durable.
    Claimed,
    /// Another message took the expected number first: the conversation's head is now this.
    HeadMoved(u64),
    /// This (sender, client id) was sent before.
    Duplicate(Existing),
    /// The conversation has no head row: it does not exist.
    NoConversation,
}

/// The platform's CQL, behind domain operations. Cheap to clone.
#[derive(Clone)]
pub struct CassandraStore {
    session: Arc<Session>,
    st: Arc<Statements>,
    /// TTL of history rows (0: none).
    message_ttl: i32,
    /// TTL of claim rows: they only need to outlive publication, and must not outlive the history they repair.
    claim_ttl: i32,
    heads: HeadSource,
}

struct Statements {
    insert_conversation: PreparedStatement,
    insert_member: PreparedStatement,
    insert_by_user: PreparedStatement,
    delete_member: PreparedStatement,
    delete_by_user: PreparedStatement,
    insert_head: PreparedStatement,
    select_conversation: PreparedStatement,
    select_members: PreparedStatement,
    select_member: PreparedStatement,
    select_head: PreparedStatement,
    select_head_serial: PreparedStatement,
    claim_batch: Batch,
    select_idem_serial: PreparedStatement,
    mark_published: PreparedStatement,
    select_claim: PreparedStatement,
    insert_message: PreparedStatement,
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
    raise_read: PreparedStatement,
    insert_read: PreparedStatement,
    select_read_serial: PreparedStatement,
    select_reads: PreparedStatement,
    insert_send: PreparedStatement,
    select_send: PreparedStatement,
    select_last_in_bucket: PreparedStatement,
    upsert_read_mark: PreparedStatement,
    select_read_mark: PreparedStatement,
    select_read_marks: PreparedStatement,
    insert_owner: PreparedStatement,
    select_owner: PreparedStatement,
}

const MESSAGE_COLUMNS: &str = "seq, message_id, sender_id, sender_device_id, client_msg_id, body, sent_at";
type MessageRow = (i64, Uuid, String, String, String, String, CqlTimestamp);

fn head_key() -> &'static str {
    "head"
}

fn idem_key(sender: &UserId, client_msg_id: &ClientMsgId) -> String {
    // '/' is outside the id alphabet, so keys cannot collide.
    format!("c/{sender}/{client_msg_id}")
}

fn claim_key(seq: Seq) -> String {
    format!("s/{:020}", seq.get())
}

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
        let claim_ttl = if message_ttl > 0 { message_ttl.min(IDEMPOTENCY_TTL_SECS) } else { IDEMPOTENCY_TTL_SECS };
        Ok(CassandraStore { session: Arc::new(session), st: Arc::new(st), message_ttl, claim_ttl, heads: config.heads })
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub async fn create_conversation(&self, c: &NewConversation) -> Result<(), StoreError> {
        let id = c.id.as_uuid();
        let now = CqlTimestamp(now_ms());
        // Members and the head first, the descriptive row last: a conversation is visible only when whole.
        for m in &c.members {
            self.session.execute_unpaged(&self.st.insert_member, (id, m.as_str(), now)).await?;
            self.session.execute_unpaged(&self.st.insert_by_user, (m.as_str(), id)).await?;
        }
        self.session.execute_unpaged(&self.st.insert_head, (id, head_key(), 0_i64)).await?;
        self.session
            .execute_unpaged(
                &self.st.insert_conversation,
                (id, kind_code(c.kind), c.title.as_str(), c.created_by.as_str(), now),
            )
            .await?;
        Ok(())
    }

    /// Writes a conversation's rows (members, the reverse index, then the descriptive row, so that it is
    /// visible only when whole), without the sequencer's head: what the log's `ConversationCreated` says.
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

    /// The conversation's last number, or `None` when it does not exist: the sequencer's head (a plain read
    /// that may lag a concurrent claim, which only costs that claim a retry), or the last number in history
    /// (see [`HeadSource`]).
    pub async fn head(&self, id: ConversationId) -> Result<Option<u64>, StoreError> {
        match self.heads {
            HeadSource::Sequencer => self.read_head(&self.st.select_head, id).await,
            HeadSource::Projected => {
                if !self.conversation_exists(id).await? {
                    return Ok(None);
                }
                self.projected_head(id).await.map(Some)
            }
        }
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
        let Some((seq, message_id, sent_at)) = row else { return Ok(None) };
        let corrupt = |reason: &str| StoreError::Corrupt { table: "sends", reason: reason.to_owned() };
        let seq = seq.and_then(|s| u64::try_from(s).ok()).and_then(Seq::new).ok_or_else(|| corrupt("seq"))?;
        let message_id = MessageId::from_uuid(message_id.ok_or_else(|| corrupt("message_id"))?);
        Ok(Some(SendRecord { message_id, seq, sent_at_ms: sent_at.map(|t| t.0).unwrap_or(0) }))
    }

    /// Writes a message's idempotency record. Idempotent: a replay writes the same values.
    pub async fn put_send_record(&self, m: &Message) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(
                &self.st.insert_send,
                (
                    m.conversation_id.as_uuid(),
                    m.sender_id.as_str(),
                    m.client_msg_id.as_str(),
                    to_i64(m.seq.get()),
                    m.message_id.as_uuid(),
                    CqlTimestamp(m.sent_at_ms),
                    self.message_ttl,
                ),
            )
            .await?;
        Ok(())
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

    async fn read_head(&self, st: &PreparedStatement, id: ConversationId) -> Result<Option<u64>, StoreError> {
        let row = self
            .session
            .execute_unpaged(st, (id.as_uuid(), head_key()))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<i64>,)>()?;
        Ok(row.map(|(n,)| u64::try_from(n.unwrap_or(0)).unwrap_or(0)))
    }

    /// Tries to give `message` the number `message.seq`, expecting the head to be `message.seq - 1`.
    ///
    /// One conditional batch in the conversation's sequencer partition moves the head forward, records the
    /// send's idempotency key and stores the claim (the whole message). Either all three happen or none does,
    /// so two messages can never hold one number, a number is never taken without its message, and a send
    /// can never hold two numbers.
    pub async fn claim(&self, message: &Message) -> Result<ClaimOutcome, StoreError> {
        let id = message.conversation_id.as_uuid();
        let seq = to_i64(message.seq.get());
        let sent_at = CqlTimestamp(message.sent_at_ms);
        let values = (
            (to_i64(message.seq.get()), id, head_key(), seq - 1),
            (
                id,
                idem_key(&message.sender_id, &message.client_msg_id),
                seq,
                message.message_id.as_uuid(),
                sent_at,
                IDEMPOTENCY_TTL_SECS,
            ),
            (
                id,
                claim_key(message.seq),
                seq,
                message.message_id.as_uuid(),
                message.sender_id.as_str(),
                message.sender_device_id.as_str(),
                message.client_msg_id.as_str(),
                message.body.as_str(),
                sent_at,
                self.claim_ttl,
            ),
        );
        let result = self.session.batch(&self.st.claim_batch, values).await?;
        if applied(result)? {
            return Ok(ClaimOutcome::Claimed);
        }
        // Not applied: find out which condition failed, reading at SERIAL so that we see every committed claim.
        if let Some(existing) =
            self.idempotency_record(message.conversation_id, &message.sender_id, &message.client_msg_id).await?
        {
            return Ok(ClaimOutcome::Duplicate(existing));
        }
        match self.read_head(&self.st.select_head_serial, message.conversation_id).await? {
            Some(head) => Ok(ClaimOutcome::HeadMoved(head)),
            None => Ok(ClaimOutcome::NoConversation),
        }
    }

    /// The idempotency record of (sender, client id) in a conversation, read at SERIAL consistency.
    pub async fn idempotency_record(
        &self,
        id: ConversationId,
        sender: &UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<Existing>, StoreError> {
        let row = self
            .session
            .execute_unpaged(&self.st.select_idem_serial, (id.as_uuid(), idem_key(sender, client_msg_id)))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<i64>, Option<Uuid>, Option<CqlTimestamp>, Option<bool>)>()?;
        let Some((seq, message_id, sent_at, published)) = row else {
            return Ok(None);
        };
        let corrupt = |reason: &str| StoreError::Corrupt { table: "sequencer", reason: reason.to_owned() };
        let seq = seq.and_then(|s| u64::try_from(s).ok()).and_then(Seq::new).ok_or_else(|| corrupt("seq"))?;
        let message_id = MessageId::from_uuid(message_id.ok_or_else(|| corrupt("message_id"))?);
        Ok(Some(Existing {
            message_id,
            seq,
            sent_at_ms: sent_at.map(|t| t.0).unwrap_or(0),
            published: published.unwrap_or(false),
        }))
    }

    /// Records that a send's message is in Kafka and in history, so that its retries need not publish it again.
    pub async fn mark_published(&self, message: &Message) -> Result<(), StoreError> {
        let key = idem_key(&message.sender_id, &message.client_msg_id);
        self.session
            .execute_unpaged(&self.st.mark_published, (IDEMPOTENCY_TTL_SECS, message.conversation_id.as_uuid(), key))
            .await?;
        Ok(())
    }

    /// The claim row of a number: the message as it was when it took the number.
    pub async fn claimed_message(&self, id: ConversationId, seq: Seq) -> Result<Option<Message>, StoreError> {
        let row = self
            .session
            .execute_unpaged(&self.st.select_claim, (id.as_uuid(), claim_key(seq)))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(
                Option<i64>,
                Option<Uuid>,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<CqlTimestamp>,
            )>()?;
        let Some(r) = row else { return Ok(None) };
        match r {
            (Some(s), Some(mid), Some(snd), Some(dev), Some(cid), Some(body), Some(at)) => {
                message_from_row(id, (s, mid, snd, dev, cid, body, at), "sequencer").map(Some)
            }
            _ => Err(StoreError::Corrupt { table: "sequencer", reason: format!("claim {seq} is incomplete") }),
        }
    }

    /// Writes the immutable history row of a message. Idempotent: a replay writes the same values.
    pub async fn write_message(&self, m: &Message) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(
                &self.st.insert_message,
                (
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
                ),
            )
            .await?;
        Ok(())
    }

    /// Messages with `after < seq <= up_to`, oldest first, at most `limit`, with no gap: a number whose history
    /// row is not written yet (its sender is between claim and publish, or died there) is read from its claim
    /// and its history row repaired.
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
        // Fill holes from the claims, in order.
        let mut filled = Vec::with_capacity(out.len());
        let mut rows = out.into_iter().peekable();
        let mut n = first.get();
        while n <= last {
            let seq = Seq::new(n).ok_or_else(|| StoreError::Corrupt { table: "messages", reason: "seq 0".into() })?;
            if rows.peek().is_some_and(|m| m.seq == seq) {
                if let Some(m) = rows.next() {
                    filled.push(m);
                }
            } else {
                match self.claimed_message(id, seq).await? {
                    Some(m) => {
                        self.write_message(&m).await?;
                        filled.push(m);
                    }
                    // Neither a history row nor a claim: the number has expired (history retention).
                    None => {
                        let first_available = self.first_retained_after(id, seq, up_to).await?;
                        return Err(StoreError::Expired { first_available });
                    }
                }
            }
            n += 1;
        }
        Ok(filled)
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

    /// Moves a member's read position forward to `seq` (never back); answers the position after the call.
    pub async fn raise_read_position(&self, id: ConversationId, user: &UserId, seq: Seq) -> Result<u64, StoreError> {
        let n = to_i64(seq.get());
        // Raise an existing row; create a missing one; if it appeared meanwhile, raise again.
        for _ in 0..3 {
            let raised = self.session.execute_unpaged(&self.st.raise_read, (n, id.as_uuid(), user.as_str(), n)).await?;
            if applied(raised)? {
                return Ok(seq.get());
            }
            let current = self.read_position(id, user).await?;
            if let Some(current) = current {
                return Ok(current);
            }
            let inserted = self.session.execute_unpaged(&self.st.insert_read, (id.as_uuid(), user.as_str(), n)).await?;
            if applied(inserted)? {
                return Ok(seq.get());
            }
        }
        Ok(self.read_position(id, user).await?.unwrap_or(0))
    }

    async fn read_position(&self, id: ConversationId, user: &UserId) -> Result<Option<u64>, StoreError> {
        let row = self
            .session
            .execute_unpaged(&self.st.select_read_serial, (id.as_uuid(), user.as_str()))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<i64>,)>()?;
        Ok(row.and_then(|(n,)| n).and_then(|n| u64::try_from(n).ok()))
    }

    /// Every member's read position in a conversation.
    pub async fn read_positions(&self, id: ConversationId) -> Result<Vec<(UserId, u64)>, StoreError> {
        let rows = self.session.execute_unpaged(&self.st.select_reads, (id.as_uuid(),)).await?.into_rows_result()?;
        let mut out = Vec::new();
        for r in rows.rows::<(String, Option<i64>)>()? {
            let (user, seq) = r?;
            out.push((parse_user(&user, "read_positions")?, seq.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)));
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

/// Whether a conditional statement applied: the first column of its one result row, `[applied]`.
fn applied(result: scylla::response::query_result::QueryResult) -> Result<bool, StoreError> {
    let rows = result.into_rows_result()?;
    let first = rows.maybe_first_row::<Row>()?;
    match first.and_then(|r| r.columns.into_iter().next()) {
        Some(Some(CqlValue::Boolean(b))) => Ok(b),
        other => Err(StoreError::Corrupt { table: "sequencer", reason: format!("no [applied] column: {other:?}") }),
    }
}

impl Statements {
    async fn prepare(s: &Session) -> Result<Statements, StoreError> {
        let mut claim_batch = Batch::new(BatchType::Logged);
        claim_batch.append_statement(
            s.prepare("UPDATE sequencer SET last_seq = ? WHERE conversation_id = ? AND key = ? IF last_seq = ?")
                .await?,
        );
        claim_batch.append_statement(
            s.prepare(
                "INSERT INTO sequencer (conversation_id, key, seq, message_id, sent_at) VALUES (?, ?, ?, ?, ?) \
                 IF NOT EXISTS USING TTL ?",
            )
            .await?,
        );
        claim_batch.append_statement(
            s.prepare(format!(
                "INSERT INTO sequencer (conversation_id, key, {MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 IF NOT EXISTS USING TTL ?"
            ))
            .await?,
        );
        let mut select_head_serial =
            s.prepare("SELECT last_seq FROM sequencer WHERE conversation_id = ? AND key = ?").await?;
        select_head_serial.set_consistency(Consistency::LocalSerial);
        let mut select_idem_serial = s
            .prepare("SELECT seq, message_id, sent_at, published FROM sequencer WHERE conversation_id = ? AND key = ?")
            .await?;
        select_idem_serial.set_consistency(Consistency::LocalSerial);
        Ok(Statements {
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
            insert_head: s.prepare("INSERT INTO sequencer (conversation_id, key, last_seq) VALUES (?, ?, ?)").await?,
            select_conversation: s.prepare("SELECT kind, title FROM conversations WHERE conversation_id = ?").await?,
            select_members: s.prepare("SELECT user_id FROM members WHERE conversation_id = ?").await?,
            select_member: s
                .prepare("SELECT user_id FROM members WHERE conversation_id = ? AND user_id = ?")
                .await?,
            select_head: s.prepare("SELECT last_seq FROM sequencer WHERE conversation_id = ? AND key = ?").await?,
            select_head_serial,
            claim_batch,
            select_idem_serial,
            mark_published: s
                .prepare("UPDATE sequencer USING TTL ? SET published = true WHERE conversation_id = ? AND key = ?")
                .await?,
            select_claim: s
                .prepare(format!("SELECT {MESSAGE_COLUMNS} FROM sequencer WHERE conversation_id = ? AND key = ?"))
                .await?,
            insert_message: s
                .prepare(format!(
                    "INSERT INTO messages (conversation_id, bucket, {MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                     USING TTL ?"
                ))
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
            raise_read: s
                .prepare("UPDATE read_positions SET read_seq = ? WHERE conversation_id = ? AND user_id = ? IF read_seq < ?")
                .await?,
            insert_read: s
                .prepare("INSERT INTO read_positions (conversation_id, user_id, read_seq) VALUES (?, ?, ?) IF NOT EXISTS")
                .await?,
            select_read_serial: {
                let mut st =
                    s.prepare("SELECT read_seq FROM read_positions WHERE conversation_id = ? AND user_id = ?").await?;
                st.set_consistency(Consistency::LocalSerial);
                st
            },
            select_reads: s.prepare("SELECT user_id, read_seq FROM read_positions WHERE conversation_id = ?").await?,
            insert_send: s
                .prepare(
                    "INSERT INTO sends (conversation_id, sender_id, client_msg_id, seq, message_id, sent_at) \
                     VALUES (?, ?, ?, ?, ?, ?) USING TTL ?",
                )
                .await?,
            select_send: s
                .prepare(
                    "SELECT seq, message_id, sent_at FROM sends \
                     WHERE conversation_id = ? AND sender_id = ? AND client_msg_id = ?",
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
