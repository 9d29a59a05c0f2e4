//! `chat.v1.ChatService` over gRPC: converts prost requests to checked domain values and back.
//! Prost types stop here.

use std::sync::Arc;

use chat_model::event::{LogEvent, Receipt, ReceiptKind, message_to_proto};
use chat_model::{ConversationId, ConversationKind, DeviceId, Message, Seq, UserId};
use chat_store::{CassandraStore, ConversationRecord, NewConversation};
use proto::v1::{self, chat_service_server::ChatService};
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::ChatError;
use crate::event_log::KafkaEventLog;
use crate::listing;
use crate::owned::Owned;
use crate::route::{CONVERSATION_ID, FORWARDED};
use crate::sends::Sender;

/// Most members a group may have.
pub const MAX_GROUP_MEMBERS: usize = 1000;
/// Longest conversation title, in bytes.
pub const MAX_TITLE_BYTES: usize = 256;
/// Most messages one history or inbox read returns.
pub const MAX_PAGE: u32 = 500;
const DEFAULT_PAGE: u32 = 100;

pub struct ChatGrpc {
    pub store: CassandraStore,
    /// The writes of the partitions this replica owns, and the forwarding of the others'.
    pub owned: Arc<Owned>,
    pub log: KafkaEventLog,
    /// What both send calls go through.
    pub sender: Sender,
    /// Turns true when the replica shuts down: the open `SendMessages` calls end.
    pub stopping: watch::Receiver<bool>,
}

/// The owner's answer to a forwarded call; an owner that did not answer is forgotten (read again next time).
pub(crate) fn forwarded_answer<T>(
    router: &crate::route::Router,
    partition: i32,
    r: Result<Response<T>, Status>,
) -> Result<T, ChatError> {
    match r {
        Ok(r) => Ok(r.into_inner()),
        Err(status) => {
            if status.code() == tonic::Code::Unavailable || std::error::Error::source(&status).is_some() {
                router.forget(partition);
                return Err(ChatError::Owner(format!("the partition's owner did not answer: {}", status.message())));
            }
            Err(ChatError::Forwarded(status))
        }
    }
}

pub(crate) fn user(field: &str, s: &str) -> Result<UserId, ChatError> {
    UserId::parse(s).map_err(|e| ChatError::Invalid(format!("{field}: {e}")))
}

pub(crate) fn device(field: &str, s: &str) -> Result<DeviceId, ChatError> {
    DeviceId::parse(s).map_err(|e| ChatError::Invalid(format!("{field}: {e}")))
}

pub(crate) fn conversation(s: &str) -> Result<ConversationId, ChatError> {
    ConversationId::parse(s).map_err(|e| ChatError::Invalid(format!("conversation_id: {e}")))
}

fn users(field: &str, list: &[String]) -> Result<Vec<UserId>, ChatError> {
    let mut out: Vec<UserId> = Vec::with_capacity(list.len());
    for s in list {
        let u = user(field, s)?;
        if !out.contains(&u) {
            out.push(u);
        }
    }
    Ok(out)
}

fn page(limit: u32) -> Result<usize, ChatError> {
    match limit {
        0 => Ok(DEFAULT_PAGE as usize),
        n if n <= MAX_PAGE => Ok(n as usize),
        n => Err(ChatError::Invalid(format!("limit {n} is over {MAX_PAGE}"))),
    }
}

/// Most bytes of bodies in one history page, counted as JSON text (at least one message is always sent):
/// a page of 500 messages of 16 KiB would otherwise be an 8 MiB frame (more with escapes), past what common
/// WebSocket libraries accept by default.
pub const MAX_PAGE_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The length of `s` as a JSON string's content: quotes and backslashes take 2 bytes, control characters 6.
fn json_text_len(s: &str) -> usize {
    s.chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if c < ' ' => 6,
            c => c.len_utf8(),
        })
        .sum()
}

/// The numbers a history page covers, `after < seq <= up_to`: forwards the oldest `limit` above `after`;
/// backwards (`before > 0`) the newest `limit` below `before`, still above `after`.
fn page_range(after: u64, before: u64, last_seq: u64, limit: usize) -> (u64, u64) {
    if before == 0 {
        return (after, last_seq);
    }
    let up_to = last_seq.min(before - 1);
    (after.max(up_to.saturating_sub(limit as u64)), up_to)
}

/// Keeps a page within [`MAX_PAGE_BODY_BYTES`]: the oldest messages that fit when paging forwards, the newest
/// when paging backwards, so that the next page continues where this one stops with no gap.
fn cap_page_bytes(messages: &mut Vec<Message>, backwards: bool) {
    let mut total = 0;
    let mut fits = |m: &Message| {
        total += json_text_len(m.body.as_str());
        total <= MAX_PAGE_BODY_BYTES
    };
    if backwards {
        let keep = messages.iter().rev().take_while(|m| fits(m)).count().max(1);
        messages.drain(..messages.len().saturating_sub(keep));
    } else {
        let keep = messages.iter().take_while(|m| fits(m)).count().max(1);
        messages.truncate(keep);
    }
}

fn conversation_to_proto(c: &ConversationRecord) -> v1::Conversation {
    v1::Conversation {
        conversation_id: c.id.to_string(),
        kind: match c.kind {
            ConversationKind::Direct => v1::ConversationKind::Direct as i32,
            ConversationKind::Group => v1::ConversationKind::Group as i32,
        },
        member_ids: c.members.iter().map(|u| u.to_string()).collect(),
        title: c.title.clone(),
        last_seq: c.last_seq,
        read_positions: c
            .read_positions
            .iter()
            .map(|(u, seq)| v1::ReadPosition { user_id: u.to_string(), read_seq: *seq })
            .collect(),
    }
}

impl ChatGrpc {
    async fn member_conversation(&self, id: ConversationId, who: &UserId) -> Result<ConversationRecord, ChatError> {
        let c = self.store.conversation(id).await?.ok_or(ChatError::ConversationNotFound)?;
        if !c.members.contains(who) {
            return Err(ChatError::NotMember);
        }
        Ok(c)
    }

    /// The group `id` as `who`, a member, sees it: a direct conversation's members never change.
    async fn member_group(&self, id: ConversationId, who: &UserId) -> Result<ConversationRecord, ChatError> {
        let c = self.member_conversation(id, who).await?;
        if c.kind == ConversationKind::Direct {
            return Err(ChatError::FailedPrecondition("the members of a direct conversation do not change".into()));
        }
        Ok(c)
    }

    /// A conversation of `who` as the list shows it, with its place in the list; `None` when it is gone or
    /// `who` left it (the reverse index is written apart from the members).
    async fn summary(
        &self,
        id: ConversationId,
        who: &UserId,
    ) -> Result<Option<(listing::Place, v1::ConversationSummary)>, ChatError> {
        let Some(c) = self.store.conversation(id).await? else { return Ok(None) };
        if !c.members.contains(who) {
            return Ok(None);
        }
        let last_activity_ms = self.store.last_activity_ms(id, c.last_seq).await?;
        let read_seq = c.read_positions.iter().find(|(u, _)| u == who).map_or(0, |(_, seq)| *seq);
        let v1::Conversation { conversation_id, kind, member_ids, title, last_seq, .. } = conversation_to_proto(&c);
        let summary = v1::ConversationSummary {
            conversation_id,
            kind,
            title,
            member_ids,
            last_seq,
            last_activity_ms,
            read_seq,
            unread: last_seq.saturating_sub(read_seq),
        };
        Ok(Some((listing::Place::new(last_activity_ms, id), summary)))
    }

    async fn reload(&self, id: ConversationId) -> Result<v1::Conversation, ChatError> {
        let c = self.store.conversation(id).await?.ok_or(ChatError::ConversationNotFound)?;
        Ok(conversation_to_proto(&c))
    }
}

#[tonic::async_trait]
impl ChatService for ChatGrpc {
    async fn send_message(
        &self,
        request: Request<v1::SendMessageRequest>,
    ) -> Result<Response<v1::SendMessageResponse>, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED);
        Ok(Response::new(self.sender.send(request.into_inner(), forwarded).await?))
    }

    type SendMessagesStream = ReceiverStream<Result<v1::SendMessagesResponse, Status>>;

    async fn send_messages(
        &self,
        request: Request<Streaming<v1::SendMessagesRequest>>,
    ) -> Result<Response<Self::SendMessagesStream>, Status> {
        let sender = self.sender.clone();
        let send = move |r| {
            let sender = sender.clone();
            async move { sender.send(r, false).await.map_err(Status::from) }
        };
        Ok(Response::new(crate::sends::serve(request.into_inner(), send, self.stopping.clone())))
    }

    async fn get_history(
        &self,
        request: Request<v1::GetHistoryRequest>,
    ) -> Result<Response<v1::GetHistoryResponse>, Status> {
        let r = request.into_inner();
        let id = conversation(&r.conversation_id)?;
        let reader = user("user_id", &r.user_id)?;
        let limit = page(r.limit)?;
        if !self.store.is_member(id, &reader).await.map_err(ChatError::from)? {
            let missing = self.store.head(id).await.map_err(ChatError::from)?.is_none();
            return Err(if missing { ChatError::ConversationNotFound } else { ChatError::NotMember }.into());
        }
        let last_seq = self.store.head(id).await.map_err(ChatError::from)?.ok_or(ChatError::ConversationNotFound)?;
        let backwards = r.before_seq > 0;
        let (after, up_to) = page_range(r.after_seq, r.before_seq, last_seq, limit);
        let mut messages = self.store.messages_between(id, after, up_to, limit).await.map_err(ChatError::from)?;
        cap_page_bytes(&mut messages, backwards);
        Ok(Response::new(v1::GetHistoryResponse {
            messages: messages.iter().map(message_to_proto).collect(),
            last_seq,
        }))
    }

    async fn create_conversation(
        &self,
        request: Request<v1::CreateConversationRequest>,
    ) -> Result<Response<v1::CreateConversationResponse>, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED);
        // A forwarding replica names the id it chose; only a forwarded call may.
        let chosen = request
            .metadata()
            .get(CONVERSATION_ID)
            .filter(|_| forwarded)
            .and_then(|v| v.to_str().ok())
            .map(conversation)
            .transpose()?;
        let r = request.into_inner();
        let raw = r.clone();
        let creator = user("created_by", &r.created_by)?;
        let mut members = vec![creator.clone()];
        for u in users("member_ids", &r.member_ids)? {
            if !members.contains(&u) {
                members.push(u);
            }
        }
        let kind = match v1::ConversationKind::try_from(r.kind) {
            Ok(v1::ConversationKind::Direct) => {
                if members.len() != 2 {
                    return Err(ChatError::Invalid("a direct conversation has exactly one other member".into()).into());
                }
                ConversationKind::Direct
            }
            Ok(v1::ConversationKind::Group) => {
                if members.len() > MAX_GROUP_MEMBERS {
                    return Err(ChatError::Invalid(format!("a group has at most {MAX_GROUP_MEMBERS} members")).into());
                }
                ConversationKind::Group
            }
            _ => return Err(ChatError::Invalid("kind must be DIRECT or GROUP".into()).into()),
        };
        if r.title.len() > MAX_TITLE_BYTES {
            return Err(ChatError::Invalid(format!("title is longer than {MAX_TITLE_BYTES} bytes")).into());
        }
        let new =
            NewConversation { id: ConversationId::generate(), kind, title: r.title, created_by: creator, members };
        let owned = &self.owned;
        let id = match (chosen, owned.local_id()) {
            (Some(id), _) => {
                let local = owned.route(id).1.ok_or(ChatError::NotOwner)?;
                owned.create(local, NewConversation { id, ..new }).await?
            }
            (None, Some((id, local))) => owned.create(local, NewConversation { id, ..new }).await?,
            (None, None) if forwarded => return Err(ChatError::NotOwner.into()),
            // This replica owns no partition (yet): the owner of the new id's partition creates it.
            (None, None) => {
                let p = owned.route(new.id).0;
                let mut owner = owned.router.owner(p).await?;
                let mut request = owned.router.forwarded(raw);
                let id = new.id.to_string().parse().map_err(|_| ChatError::Invalid("conversation id".into()))?;
                request.metadata_mut().insert(CONVERSATION_ID, id);
                let answer = owner.create_conversation(request).await;
                return Ok(Response::new(forwarded_answer(&owned.router, p, answer)?));
            }
        };
        let conversation = self.reload(id).await?;
        Ok(Response::new(v1::CreateConversationResponse { conversation: Some(conversation) }))
    }

    async fn add_members(
        &self,
        request: Request<v1::AddMembersRequest>,
    ) -> Result<Response<v1::AddMembersResponse>, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED);
        let r = request.into_inner();
        let id = conversation(&r.conversation_id)?;
        let actor = user("acting_user_id", &r.acting_user_id)?;
        let add = users("user_ids", &r.user_ids)?;
        let owned = &self.owned;
        let (p, local) = owned.route(id);
        let Some(local) = local else {
            if forwarded {
                return Err(ChatError::NotOwner.into());
            }
            let mut owner = owned.router.owner(p).await?;
            let answer = owner.add_members(owned.router.forwarded(r)).await;
            return Ok(Response::new(forwarded_answer(&owned.router, p, answer)?));
        };
        let c = self.member_group(id, &actor).await?;
        let total = c.members.len() + add.iter().filter(|u| !c.members.contains(u)).count();
        if total > MAX_GROUP_MEMBERS {
            return Err(
                ChatError::FailedPrecondition(format!("a group has at most {MAX_GROUP_MEMBERS} members")).into()
            );
        }
        owned.change_members(local, id, c.kind, actor, add, Vec::new()).await?;
        Ok(Response::new(v1::AddMembersResponse { conversation: Some(self.reload(id).await?) }))
    }

    async fn remove_members(
        &self,
        request: Request<v1::RemoveMembersRequest>,
    ) -> Result<Response<v1::RemoveMembersResponse>, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED);
        let r = request.into_inner();
        let id = conversation(&r.conversation_id)?;
        let actor = user("acting_user_id", &r.acting_user_id)?;
        let remove = users("user_ids", &r.user_ids)?;
        let owned = &self.owned;
        let (p, local) = owned.route(id);
        let Some(local) = local else {
            if forwarded {
                return Err(ChatError::NotOwner.into());
            }
            let mut owner = owned.router.owner(p).await?;
            let answer = owner.remove_members(owned.router.forwarded(r)).await;
            return Ok(Response::new(forwarded_answer(&owned.router, p, answer)?));
        };
        let c = self.member_group(id, &actor).await?;
        owned.change_members(local, id, c.kind, actor, Vec::new(), remove).await?;
        Ok(Response::new(v1::RemoveMembersResponse { conversation: Some(self.reload(id).await?) }))
    }

    async fn get_conversation(
        &self,
        request: Request<v1::GetConversationRequest>,
    ) -> Result<Response<v1::GetConversationResponse>, Status> {
        let r = request.into_inner();
        let id = conversation(&r.conversation_id)?;
        let who = user("user_id", &r.user_id)?;
        let c = self.member_conversation(id, &who).await?;
        Ok(Response::new(v1::GetConversationResponse { conversation: Some(conversation_to_proto(&c)) }))
    }

    async fn list_conversations(
        &self,
        request: Request<v1::ListConversationsRequest>,
    ) -> Result<Response<v1::ListConversationsResponse>, Status> {
        use futures::{StreamExt, TryStreamExt};
        let r = request.into_inner();
        let who = user("user_id", &r.user_id)?;
        let limit = listing::limit(r.limit)?;
        let after = listing::Place::from_token(&r.page_token)?;
        let ids = self.store.conversations_of(&who).await.map_err(ChatError::from)?;
        let who = &who;
        let items: Vec<(listing::Place, v1::ConversationSummary)> = futures::stream::iter(ids)
            .map(|id| self.summary(id, who))
            .buffer_unordered(listing::READS_IN_FLIGHT)
            .try_filter_map(|s| async move { Ok(s) })
            .try_collect()
            .await?;
        let (conversations, next) = listing::page(items, after, limit);
        Ok(Response::new(v1::ListConversationsResponse { conversations, next_page_token: next.unwrap_or_default() }))
    }

    async fn register_device(
        &self,
        request: Request<v1::RegisterDeviceRequest>,
    ) -> Result<Response<v1::RegisterDeviceResponse>, Status> {
        let r = request.into_inner();
        let u = user("user_id", &r.user_id)?;
        let d = device("device_id", &r.device_id)?;
        self.store.register_device(&u, &d).await.map_err(ChatError::from)?;
        Ok(Response::new(v1::RegisterDeviceResponse {}))
    }

    async fn fetch_inbox(
        &self,
        request: Request<v1::FetchInboxRequest>,
    ) -> Result<Response<v1::FetchInboxResponse>, Status> {
        let r = request.into_inner();
        let u = user("user_id", &r.user_id)?;
        let d = device("device_id", &r.device_id)?;
        let limit = page(r.limit)?;
        let after = if r.after_conversation_id.is_empty() {
            None
        } else {
            let seq = Seq::new(r.after_seq).ok_or_else(|| ChatError::Invalid("after_seq must be at least 1".into()))?;
            Some((conversation(&r.after_conversation_id)?, seq))
        };
        let messages = self.store.inbox(&u, &d, after, limit).await.map_err(ChatError::from)?;
        Ok(Response::new(v1::FetchInboxResponse { messages: messages.iter().map(message_to_proto).collect() }))
    }

    async fn ack_inbox(&self, request: Request<v1::AckInboxRequest>) -> Result<Response<v1::AckInboxResponse>, Status> {
        let r = request.into_inner();
        let u = user("user_id", &r.user_id)?;
        let d = device("device_id", &r.device_id)?;
        let id = conversation(&r.conversation_id)?;
        let up_to = Seq::new(r.up_to_seq).ok_or_else(|| ChatError::Invalid("up_to_seq must be at least 1".into()))?;
        self.check_position(id, &u, up_to).await?;
        self.store.ack_inbox(&u, &d, id, up_to).await.map_err(ChatError::from)?;
        let receipt = Receipt { conversation_id: id, user_id: u, device_id: d, kind: ReceiptKind::Delivered, up_to };
        self.log.append(&LogEvent::ReceiptRecorded(receipt), chat_model::now_ms()).await.map_err(ChatError::from)?;
        Ok(Response::new(v1::AckInboxResponse {}))
    }

    async fn mark_read(&self, request: Request<v1::MarkReadRequest>) -> Result<Response<v1::MarkReadResponse>, Status> {
        let r = request.into_inner();
        let id = conversation(&r.conversation_id)?;
        let u = user("user_id", &r.user_id)?;
        let d = device("device_id", &r.device_id)?;
        let up_to = Seq::new(r.up_to_seq).ok_or_else(|| ChatError::Invalid("up_to_seq must be at least 1".into()))?;
        self.check_position(id, &u, up_to).await?;
        // The log first (the source of truth), then its projection.
        let receipt = Receipt { conversation_id: id, user_id: u.clone(), device_id: d, kind: ReceiptKind::Read, up_to };
        self.log.append(&LogEvent::ReceiptRecorded(receipt), chat_model::now_ms()).await.map_err(ChatError::from)?;
        let read_seq = self.store.mark_read(id, &u, up_to).await.map_err(ChatError::from)?;
        Ok(Response::new(v1::MarkReadResponse { read_seq }))
    }
}

impl ChatGrpc {
    /// A receipt's checks: the user is a member, and the position is within the conversation. Nothing is
    /// written (store or log) for a receipt that fails them.
    async fn check_position(&self, id: ConversationId, u: &UserId, up_to: Seq) -> Result<(), Status> {
        if !self.store.is_member(id, u).await.map_err(ChatError::from)? {
            let missing = self.store.head(id).await.map_err(ChatError::from)?.is_none();
            return Err(if missing { ChatError::ConversationNotFound } else { ChatError::NotMember }.into());
        }
        let last = self.store.head(id).await.map_err(ChatError::from)?.unwrap_or(0);
        if up_to.get() > last {
            return Err(ChatError::Invalid(format!("up_to_seq {up_to} is past the conversation's last {last}")).into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chat_model::{Body, ClientMsgId, MAX_BODY_BYTES, MessageId};

    use super::*;

    fn message(seq: u64, body_bytes: usize) -> Message {
        Message {
            conversation_id: ConversationId::generate(),
            seq: Seq::new(seq).expect("seq"),
            message_id: MessageId::generate(),
            sender_id: UserId::parse("a").expect("user"),
            sender_device_id: DeviceId::parse("d").expect("device"),
            client_msg_id: ClientMsgId::parse(&format!("c{seq}")).expect("client id"),
            body: Body::parse("x".repeat(body_bytes.max(1))).expect("body"),
            sent_at_ms: 0,
        }
    }

    #[test]
    fn pages_run_forwards_from_after_or_backwards_from_before() {
        // Forwards: everything above after_seq up to the head (the store stops at the limit).
        assert_eq!(page_range(10, 0, 50, 20), (10, 50));
        // Backwards: the newest `limit` below before_seq.
        assert_eq!(page_range(0, 41, 50, 20), (20, 40));
        // ...never below after_seq, never past the head.
        assert_eq!(page_range(30, 41, 50, 20), (30, 40));
        assert_eq!(page_range(0, 1000, 50, 20), (30, 50));
        assert_eq!(page_range(0, 5, 50, 20), (0, 4));
        // Past the head forwards: an empty range.
        assert_eq!(page_range(60, 0, 50, 20), (60, 50));
    }

    #[test]
    fn a_page_keeps_to_its_bytes_from_the_side_it_continues() {
        // 300 bodies of 16 KiB: 4.7 MiB, of which 256 fit.
        let page = || (1..=300).map(|s| message(s, MAX_BODY_BYTES)).collect::<Vec<_>>();
        let fit = MAX_PAGE_BODY_BYTES / MAX_BODY_BYTES;
        let mut forwards = page();
        cap_page_bytes(&mut forwards, false);
        assert_eq!(forwards.len(), fit);
        assert_eq!((forwards[0].seq.get(), forwards[fit - 1].seq.get()), (1, fit as u64));
        let mut backwards = page();
        cap_page_bytes(&mut backwards, true);
        assert_eq!(backwards.len(), fit);
        assert_eq!((backwards[0].seq.get(), backwards[fit - 1].seq.get()), (301 - fit as u64, 300));
        // One message is always sent, however large.
        let mut one = vec![message(1, MAX_BODY_BYTES)];
        cap_page_bytes(&mut one, true);
        assert_eq!(one.len(), 1);
        // Escapes count: a body of control characters takes 6 bytes of JSON per byte.
        assert_eq!(json_text_len("a\"\\\n\u{1}é"), 1 + 2 + 2 + 2 + 6 + 2);
        let mut escaped = (1..=100).map(|s| message(s, 0)).collect::<Vec<_>>();
        for m in &mut escaped {
            m.body = Body::parse("\u{1}".repeat(MAX_BODY_BYTES)).expect("body");
        }
        cap_page_bytes(&mut escaped, false);
        assert_eq!(escaped.len(), MAX_PAGE_BODY_BYTES / (6 * MAX_BODY_BYTES));
        let mut small = (1..=500).map(|s| message(s, 100)).collect::<Vec<_>>();
        cap_page_bytes(&mut small, true);
        assert_eq!(small.len(), 500);
    }
}
