//! A connection's requests: the worker that answers them in order, one chat-service call each, and the
//! table from the chat service's statuses to the client's error codes.

use std::sync::Arc;
use std::time::Duration;

use chat_model::Seq;
use proto::v1;
use tokio::sync::mpsc;

use super::Shared;
use super::frames::{summary, wire};
use super::typing::route_typing;
use crate::auth::Identity;
use crate::protocol::{ClientFrame, ErrorCode, FrameError, ReadPosition, ServerFrame};
use crate::registry::ConnHandle;

/// Most requests a client may have waiting for the chat service; past it the reader waits (backpressure).
const PENDING_REQUESTS: usize = 32;

/// The connection's request worker (answers requests in order, while the connection goes on reading),
/// started on the first request: most connections rest, and a resting one should not hold a task and a
/// queue for it.
#[derive(Default)]
pub(super) struct Requests {
    pub(super) worker: Option<(mpsc::Sender<ClientFrame>, tokio::task::JoinHandle<()>)>,
    /// A request the worker had no room for: the connection reads nothing more until it is taken.
    pub(super) pending: Option<Box<ClientFrame>>,
}

impl Requests {
    /// Hands a request to the worker, without waiting: when its queue is full the request is kept as
    /// `pending` (see [`Requests::flush_pending`]). Answers at once only when the worker is gone.
    pub(super) fn enqueue(
        &mut self,
        r: ClientFrame,
        identity: &Identity,
        shared: &Arc<Shared>,
        handle: &Arc<ConnHandle>,
    ) -> Option<ServerFrame> {
        let (tx, _) = self.worker.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel::<ClientFrame>(PENDING_REQUESTS);
            let task = tokio::spawn(request_loop(rx, identity.clone(), shared.clone(), handle.clone()));
            (tx, task)
        });
        match tx.try_send(r) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(r)) => {
                self.pending = Some(Box::new(r));
                None
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Some(closing()),
        }
    }

    /// Waits for room in the worker's queue and hands it the pending request.
    pub(super) async fn flush_pending(&mut self) {
        let Some((tx, _)) = &self.worker else {
            self.pending = None;
            return;
        };
        match tx.reserve().await {
            Ok(permit) => {
                if let Some(r) = self.pending.take() {
                    permit.send(*r);
                }
            }
            // The worker is gone (the connection is closing): the request gets no answer.
            Err(_) => self.pending = None,
        }
    }
}

fn closing() -> ServerFrame {
    ServerFrame::error(FrameError { id: None, code: ErrorCode::Unavailable, message: "connection is closing".into() })
}

pub fn with_deadline<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// The client error code for a chat-service status: the gateway's half of the error table.
pub fn code_for_status(status: &tonic::Status) -> ErrorCode {
    use tonic::Code;
    if crate::chat_pool::unavailable(status) {
        return ErrorCode::Unavailable;
    }
    match status.code() {
        Code::InvalidArgument => ErrorCode::InvalidField,
        Code::OutOfRange => ErrorCode::BeyondRetention,
        Code::NotFound => ErrorCode::ConversationNotFound,
        Code::PermissionDenied | Code::Unauthenticated => ErrorCode::NotMember,
        Code::FailedPrecondition | Code::AlreadyExists => ErrorCode::FailedPrecondition,
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::ResourceExhausted | Code::Cancelled => {
            ErrorCode::Unavailable
        }
        _ => ErrorCode::Internal,
    }
}

/// The metadata key of the first number history holds, on an OUT_OF_RANGE answer (set by the chat service).
const FIRST_SEQ_METADATA: &str = "x-first-seq";

fn status_frame(id: Option<String>, status: &tonic::Status) -> ServerFrame {
    let mut frame =
        ServerFrame::error(FrameError { id, code: code_for_status(status), message: status.message().to_owned() });
    if let ServerFrame::Error { code: ErrorCode::BeyondRetention, first_seq, .. } = &mut frame {
        *first_seq =
            status.metadata().get(FIRST_SEQ_METADATA).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    }
    frame
}

async fn request_loop(mut rx: mpsc::Receiver<ClientFrame>, id: Identity, shared: Arc<Shared>, handle: Arc<ConnHandle>) {
    while let Some(request) = rx.recv().await {
        // Boxed: the gRPC calls' futures are large, and a resting connection should not carry their room.
        let reply = Box::pin(answer(request, &id, &shared)).await;
        if let Some(reply) = reply
            && handle.send(reply.to_text().into()).await.is_err()
        {
            return;
        }
    }
}

/// The answer to one client request (`None`: nothing to answer).
async fn answer(request: ClientFrame, id: &Identity, shared: &Shared) -> Option<ServerFrame> {
    let timeout = shared.rpc_timeout;
    match request {
        ClientFrame::Send { id: client_id, conversation_id, body } => {
            let req = v1::SendMessageRequest {
                conversation_id: conversation_id.to_string(),
                sender_id: id.user.to_string(),
                sender_device_id: id.device.to_string(),
                client_msg_id: client_id.to_string(),
                body: body.into_string(),
            };
            let sent = shared.chat.send(&req, timeout);
            crate::metrics::bump(&shared.metrics.sends);
            let sent = sent.await;
            if sent.is_err() {
                crate::metrics::bump(&shared.metrics.send_errors);
            }
            match sent {
                Ok(r) => Some(ServerFrame::Sent {
                    id: client_id.to_string(),
                    conversation_id: conversation_id.to_string(),
                    message_id: r.message_id,
                    seq: r.seq,
                    sent_at_ms: r.sent_at_ms,
                    duplicate: r.duplicate,
                }),
                Err(status) => Some(status_frame(Some(client_id.to_string()), &status)),
            }
        }
        ClientFrame::History { id: req_id, conversation_id, after_seq, before_seq, limit } => {
            let req = v1::GetHistoryRequest {
                conversation_id: conversation_id.to_string(),
                user_id: id.user.to_string(),
                after_seq,
                limit,
                before_seq: before_seq.map_or(0, Seq::get),
            };
            let page = shared.chat.call(|mut c| {
                let r = with_deadline(req.clone(), timeout);
                async move { c.get_history(r).await }
            });
            match page.await {
                Ok(r) => Some(ServerFrame::History {
                    id: req_id,
                    conversation_id: conversation_id.to_string(),
                    messages: r.messages.iter().map(wire).collect(),
                    last_seq: r.last_seq,
                }),
                Err(status) => Some(status_frame(Some(req_id), &status)),
            }
        }
        ClientFrame::Delivered { conversation_id, seq } => {
            let req = v1::AckInboxRequest {
                user_id: id.user.to_string(),
                device_id: id.device.to_string(),
                conversation_id: conversation_id.to_string(),
                up_to_seq: seq.get(),
            };
            let acked = shared.chat.call(|mut c| {
                let r = with_deadline(req.clone(), timeout);
                async move { c.ack_inbox(r).await }
            });
            match acked.await {
                Ok(_) => None,
                Err(status) => Some(status_frame(None, &status)),
            }
        }
        ClientFrame::Read { conversation_id, seq } => {
            let req = v1::MarkReadRequest {
                conversation_id: conversation_id.to_string(),
                user_id: id.user.to_string(),
                device_id: id.device.to_string(),
                up_to_seq: seq.get(),
            };
            let marked = shared.chat.call(|mut c| {
                let r = with_deadline(req.clone(), timeout);
                async move { c.mark_read(r).await }
            });
            match marked.await {
                Ok(_) => None,
                Err(status) => Some(status_frame(None, &status)),
            }
        }
        ClientFrame::Conversation { id: req_id, conversation_id } => {
            let req = v1::GetConversationRequest {
                conversation_id: conversation_id.to_string(),
                user_id: id.user.to_string(),
            };
            let got = shared.chat.call(|mut c| {
                let r = with_deadline(req.clone(), timeout);
                async move { c.get_conversation(r).await }
            });
            match got.await {
                Ok(r) => {
                    let c = r.conversation.unwrap_or_default();
                    Some(ServerFrame::Conversation {
                        id: req_id,
                        conversation_id: c.conversation_id,
                        member_ids: c.member_ids,
                        last_seq: c.last_seq,
                        read_positions: c
                            .read_positions
                            .into_iter()
                            .map(|p| ReadPosition { user_id: p.user_id, read_seq: p.read_seq })
                            .collect(),
                    })
                }
                Err(status) => Some(status_frame(Some(req_id), &status)),
            }
        }
        ClientFrame::Conversations { id: req_id, limit, page_token } => {
            let req = v1::ListConversationsRequest {
                user_id: id.user.to_string(),
                limit,
                page_token: page_token.unwrap_or_default(),
            };
            let listed = shared.chat.call(|mut c| {
                let r = with_deadline(req.clone(), timeout);
                async move { c.list_conversations(r).await }
            });
            match listed.await {
                Ok(r) => Some(ServerFrame::Conversations {
                    id: req_id,
                    conversations: r.conversations.into_iter().map(summary).collect(),
                    next_page_token: Some(r.next_page_token).filter(|t| !t.is_empty()),
                }),
                Err(status) => Some(status_frame(Some(req_id), &status)),
            }
        }
        ClientFrame::Typing { conversation_id, typing } => {
            match route_typing(shared, id, conversation_id, typing).await {
                Ok(()) => None,
                Err(status) => Some(status_frame(None, &status)),
            }
        }
        ClientFrame::Ping { id } => Some(ServerFrame::Pong { id }),
    }
}
