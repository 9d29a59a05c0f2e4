//! The writes of the conversations whose partition this replica owns: a send, a conversation created,
//! members changed. Each is checked against the store, then handed to the partition's batcher
//! ([`crate::owner`]) and answered once the batcher's transaction committed. Writes of partitions owned
//! elsewhere are forwarded ([`crate::route`]).

use std::sync::atomic::Ordering;

use chat_model::event::{Created, LogEvent, MembersChange};
use chat_model::{ConversationId, ConversationKind, Message, MessageId, Seq, UserId};
use chat_store::{CassandraStore, NewConversation, SendRecord};
use tokio::sync::oneshot;

use crate::error::ChatError;
use crate::members::Members;
use crate::owner::group::{Local, Owners};
use crate::owner::{Earlier, EventJob, Job, OwnerError, SendJob, SendKey};
use crate::route::Router;

/// A checked send request.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub sender_device_id: chat_model::DeviceId,
    pub client_msg_id: chat_model::ClientMsgId,
    pub body: chat_model::Body,
}

/// The answer to a send: the message's id and place, and whether an earlier send already had them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub message_id: MessageId,
    pub seq: Seq,
    pub sent_at_ms: i64,
    pub duplicate: bool,
}

/// A send taking this long is logged with the time of its steps.
const SLOW_SEND: std::time::Duration = std::time::Duration::from_millis(50);

/// Ids tried for a new conversation before giving up on finding one in a partition this replica owns.
const ID_TRIES: usize = 256;

pub struct Owned {
    pub owners: Owners,
    pub store: CassandraStore,
    pub members: Members,
    pub router: Router,
}

impl From<OwnerError> for ChatError {
    fn from(e: OwnerError) -> Self {
        match e {
            OwnerError::NotOwner => ChatError::NotOwner,
            OwnerError::Retry(r) => ChatError::Owner(r),
        }
    }
}

impl Owned {
    /// The partition of a conversation, and this replica's handle on it if it owns it.
    pub fn route(&self, conversation: ConversationId) -> (i32, Option<Local>) {
        let p = self.owners.partition_of(conversation);
        (p, self.owners.local(p))
    }

    /// A send to a conversation of an owned partition: answered from what is known when it is a retry,
    /// numbered and committed otherwise.
    pub async fn send(&self, local: Local, req: SendRequest) -> Result<Sent, ChatError> {
        let started = std::time::Instant::now();
        let conversation = req.conversation_id;
        if !self.members.is_member(&local, conversation, &req.sender_id).await? {
            return Err(self.members.refusal(conversation).await);
        }
        let key = SendKey { conversation, sender: req.sender_id.clone(), client_msg_id: req.client_msg_id.clone() };
        if let Some(r) = self.earlier_send(&local, &key).await? {
            return Ok(Sent { message_id: r.message_id, seq: r.seq, sent_at_ms: r.sent_at_ms, duplicate: true });
        }
        let held = local.known.lock().holds(conversation);
        let store_head = if held { None } else { Some(self.store.projected_head(conversation).await?) };
        let message = Message {
            conversation_id: conversation,
            seq: Seq::FIRST,
            message_id: MessageId::generate(),
            sender_id: req.sender_id,
            sender_device_id: req.sender_device_id,
            client_msg_id: req.client_msg_id,
            body: req.body,
            sent_at_ms: chat_model::now_ms(),
        };
        let (reply, answer) = oneshot::channel();
        let checked = started.elapsed();
        local.jobs.send(Job::Send(SendJob { message, store_head, reply })).await.map_err(|_| ChatError::NotOwner)?;
        let (a, duplicate) = answer.await.map_err(|_| ChatError::NotOwner)??;
        let took = started.elapsed();
        if took >= SLOW_SEND {
            tracing::debug!(%conversation, ?took, ?checked, numbered_and_committed = ?(took - checked), "slow send");
        }
        Ok(Sent { message_id: a.message_id, seq: a.seq, sent_at_ms: a.sent_at_ms, duplicate })
    }

    /// The answer `key` was given, if it was sent before (in the owner's memory, or projected into the
    /// store). A client id greater than any its sender used in the conversation needs no store read
    /// ([`Earlier::New`]); the first send of a sender since the partition was acquired reads the greatest
    /// one the store holds, which also settles that send when it is the send's id (a retry) or below it
    /// (new); above it, the id itself is read.
    async fn earlier_send(&self, local: &Local, key: &SendKey) -> Result<Option<SendRecord>, ChatError> {
        let stats = self.owners.stats();
        let earlier = local.known.lock().earlier(key);
        let (checked, dropped) = match earlier {
            Earlier::Answered(answer) => return Ok(Some(answer)),
            Earlier::New => {
                stats.ids_unread.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            Earlier::Unknown { checked, dropped } => (checked, dropped),
        };
        if !checked {
            stats.id_reads.fetch_add(1, Ordering::Relaxed);
            let last = self.store.last_send(key.conversation, &key.sender).await?;
            let stored = last.as_ref().map(|(id, _)| id.clone());
            local.known.lock().check_bound(key.conversation, &key.sender, stored, dropped);
            match last {
                None => return Ok(None),
                Some((id, r)) if id == key.client_msg_id => return Ok(Some(r)),
                Some((id, _)) if id < key.client_msg_id => return Ok(None),
                Some(_) => {}
            }
        }
        stats.id_reads.fetch_add(1, Ordering::Relaxed);
        Ok(self.store.send_record(key.conversation, &key.sender, &key.client_msg_id).await?)
    }

    /// Commits one event through the partition's owner.
    async fn commit(&self, local: &Local, event: LogEvent) -> Result<(), ChatError> {
        let (reply, done) = oneshot::channel();
        local.jobs.send(Job::Event(EventJob { event, reply })).await.map_err(|_| ChatError::NotOwner)?;
        done.await.map_err(|_| ChatError::NotOwner)??;
        Ok(())
    }

    /// An id for a new conversation in a partition this replica owns (drawn until one falls there); `None`
    /// when it owns none.
    pub fn local_id(&self) -> Option<(ConversationId, Local)> {
        if self.owners.serving().is_empty() {
            return None;
        }
        for _ in 0..ID_TRIES {
            let id = ConversationId::generate();
            if let (_, Some(local)) = self.route(id) {
                return Some((id, local));
            }
        }
        None
    }

    /// Creates a conversation in a partition this replica owns: the event first, then the store's rows, so
    /// that a send right after the answer finds its members.
    pub async fn create(&self, local: Local, new: NewConversation) -> Result<ConversationId, ChatError> {
        let at = chat_model::now_ms();
        let created = Created {
            conversation_id: new.id,
            kind: new.kind,
            created_by: new.created_by.clone(),
            members: new.members.clone(),
            title: new.title.clone(),
            created_at_ms: at,
        };
        self.commit(&local, LogEvent::ConversationCreated(created)).await?;
        self.store.write_conversation(new.id, new.kind, &new.title, &new.created_by, &new.members, at).await?;
        Ok(new.id)
    }

    /// Adds and removes members of a group whose partition this replica owns: the event, then the rows.
    pub async fn change_members(
        &self,
        local: Local,
        id: ConversationId,
        kind: ConversationKind,
        by: UserId,
        added: Vec<UserId>,
        removed: Vec<UserId>,
    ) -> Result<(), ChatError> {
        if kind == ConversationKind::Direct {
            return Err(ChatError::FailedPrecondition("the members of a direct conversation do not change".into()));
        }
        let at_ms = chat_model::now_ms();
        let change = MembersChange {
            conversation_id: id,
            added: added.clone(),
            removed: removed.clone(),
            changed_by: by,
            at_ms,
        };
        // Forgotten before and after: a send checked meanwhile reads the store again.
        self.members.forget(&local, id, &removed);
        self.commit(&local, LogEvent::MembersChanged(change)).await?;
        self.store.add_members(id, &added, at_ms).await?;
        self.store.remove_members(id, &removed).await?;
        self.members.forget(&local, id, &removed);
        Ok(())
    }
}
