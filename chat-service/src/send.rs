//! The send path: membership, the conditional claim of the next number, then the log and history.

use std::collections::HashMap;
use std::sync::Arc;

use chat_model::event::LogEvent;
use chat_model::{Body, ClientMsgId, ConversationId, DeviceId, Message, MessageId, Seq, UserId};
use chat_store::{CassandraStore, ClaimOutcome, Existing, now_ms};
use tokio::sync::Mutex;

use crate::error::ChatError;
use crate::event_log::KafkaEventLog;
use crate::members::Members;

/// A checked send request.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub sender_device_id: DeviceId,
    pub client_msg_id: ClientMsgId,
    pub body: Body,
}

/// The answer to a send: the message's id and place, and whether an earlier send already had them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub message_id: MessageId,
    pub seq: Seq,
    pub sent_at_ms: i64,
    pub duplicate: bool,
}

/// Number of lock stripes. Claims of conversations in one stripe are serialised within this process, so
/// that concurrent sends on one replica do not race each other's conditional writes; replicas still race,
/// and the store's condition settles those.
const STRIPES: usize = 256;
/// Cached heads per stripe before the stripe's cache is cleared.
const HEADS_PER_STRIPE: usize = 4096;
/// Claim attempts for one send before it gives up as contended (each failed attempt means another
/// message took the number, so the conversation is progressing).
const MAX_ATTEMPTS: usize = 1000;

/// Gives messages their numbers and publishes them.
#[derive(Clone)]
pub struct Sequencer {
    store: CassandraStore,
    log: KafkaEventLog,
    /// Per stripe: the last head this process saw for each conversation (a hint; the store decides).
    heads: Arc<Vec<Mutex<HashMap<ConversationId, u64>>>>,
    pub members: Members,
}

fn stripe_of(id: ConversationId) -> usize {
    let n = id.as_uuid().as_u128();
    // The low bits of a v7 UUID are random.
    (n % STRIPES as u128) as usize
}

impl Sequencer {
    pub fn new(store: CassandraStore, log: KafkaEventLog, members: Members) -> Sequencer {
        let heads = (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect();
        Sequencer { store, log, heads: Arc::new(heads), members }
    }

    /// Sends a message. Answers only once it is in the log and in history (P1); a retry with the same
    /// (sender, client id) returns the first answer and stores nothing new (P3).
    pub async fn send(&self, req: SendRequest) -> Result<Sent, ChatError> {
        if !self.members.is_member(req.conversation_id, &req.sender_id).await? {
            return Err(self.members.refusal(req.conversation_id).await);
        }
        let mut message = Message {
            conversation_id: req.conversation_id,
            seq: Seq::FIRST,
            message_id: MessageId::generate(),
            sender_id: req.sender_id,
            sender_device_id: req.sender_device_id,
            client_msg_id: req.client_msg_id,
            body: req.body,
            sent_at_ms: now_ms(),
        };
        if lifecycle::failpoint("chat-number-twice") {
            return self.send_at_taken_number(message).await;
        }
        let claimed = {
            let mut heads = self.heads[stripe_of(message.conversation_id)].lock().await;
            let mut head = match heads.get(&message.conversation_id) {
                Some(h) => *h,
                None => self.store.head(message.conversation_id).await?.ok_or(ChatError::ConversationNotFound)?,
            };
            let mut outcome = None;
            for _ in 0..MAX_ATTEMPTS {
                message.seq = Seq::new(head + 1).ok_or(ChatError::Contended)?;
                match self.store.claim(&message).await? {
                    ClaimOutcome::Claimed => {
                        head += 1;
                        outcome = Some(None);
                        break;
                    }
                    ClaimOutcome::HeadMoved(h) => head = h,
                    ClaimOutcome::Duplicate(existing) => {
                        outcome = Some(Some(existing));
                        break;
                    }
                    ClaimOutcome::NoConversation => return Err(ChatError::ConversationNotFound),
                }
            }
            if heads.len() >= HEADS_PER_STRIPE {
                heads.clear();
            }
            heads.insert(message.conversation_id, head);
            outcome.ok_or(ChatError::Contended)?
        };
        match claimed {
            None => {
                if lifecycle::failpoint("chat-crash-after-number") {
                    // A crash between numbering and the log append, at the worst moment (fault tests).
                    std::process::abort();
                }
                self.publish(&message).await?;
                Ok(Sent {
                    message_id: message.message_id,
                    seq: message.seq,
                    sent_at_ms: message.sent_at_ms,
                    duplicate: false,
                })
            }
            Some(existing) => self.complete_duplicate(&message, existing).await,
        }
    }

    /// The bug of failpoint `chat-number-twice`, which the fault tests must catch: the message is given the
    /// conversation's last number (already another message's) without a claim, stored and published.
    async fn send_at_taken_number(&self, mut message: Message) -> Result<Sent, ChatError> {
        let head = self.store.head(message.conversation_id).await?.ok_or(ChatError::ConversationNotFound)?;
        message.seq = Seq::new(head.max(1)).ok_or(ChatError::Contended)?;
        self.publish(&message).await?;
        Ok(Sent { message_id: message.message_id, seq: message.seq, sent_at_ms: message.sent_at_ms, duplicate: false })
    }

    /// A retry of an earlier send: finish publishing it if its first attempt did not, and answer as it would have.
    async fn complete_duplicate(&self, retry: &Message, existing: Existing) -> Result<Sent, ChatError> {
        if !existing.published
            && let Some(original) = self.store.claimed_message(retry.conversation_id, existing.seq).await?
        {
            self.publish(&original).await?;
        }
        Ok(Sent {
            message_id: existing.message_id,
            seq: existing.seq,
            sent_at_ms: existing.sent_at_ms,
            duplicate: true,
        })
    }

    /// Appends the claimed message to the log and writes its history row, together; then marks it published.
    async fn publish(&self, m: &Message) -> Result<(), ChatError> {
        let event = LogEvent::MessageSent(m.clone());
        let (logged, stored) = tokio::join!(self.log.append(&event, m.sent_at_ms), self.store.write_message(m));
        logged?;
        stored?;
        // Only an optimisation for retries (they skip re-publishing): a failure here changes no outcome.
        if let Err(e) = self.store.mark_published(m).await {
            tracing::warn!(conversation_id = %m.conversation_id, seq = %m.seq, error = %e, "could not mark message published");
        }
        Ok(())
    }
}
