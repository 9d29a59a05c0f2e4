//! `chat.v1.GatewayService`: delivery workers hand this gateway a message for some of its devices (`Push`,
//! or `PushMessages`, many on one call); other gateways ask it to close a connection whose device connected
//! to them (`Disconnect`).

use std::pin::Pin;
use std::sync::Arc;

use chat_model::{ConversationId, DeviceId, UserId};
use futures::{Stream, StreamExt};
use proto::v1::{self, gateway_service_server::GatewayService};
use tonic::{Request, Response, Status, Streaming};

use crate::metrics;
use crate::protocol::ServerFrame;
use crate::registry::{CONNECTED_AGAIN, PushOutcome};
use crate::session::{Shared, message_frame};

pub struct PushGrpc {
    pub shared: Arc<Shared>,
}

#[tonic::async_trait]
impl GatewayService for PushGrpc {
    async fn push(&self, request: Request<v1::PushRequest>) -> Result<Response<v1::PushResponse>, Status> {
        Ok(Response::new(push(&self.shared, request.into_inner())?))
    }

    type PushMessagesStream = Pin<Box<dyn Stream<Item = Result<v1::PushMessagesResponse, Status>> + Send>>;

    /// Each push handled as it is read (a push only queues frames, it never waits), so the answers keep the
    /// pushes' order and the call reads no faster than its answers are taken. Ended at shutdown, or the
    /// graceful stop of the gRPC server would wait on it forever.
    async fn push_messages(
        &self,
        request: Request<Streaming<v1::PushMessagesRequest>>,
    ) -> Result<Response<Self::PushMessagesStream>, Status> {
        let shared = self.shared.clone();
        let mut stopping = shared.shutdown.clone();
        let answers = request.into_inner().map(move |r| {
            r.map(|r| {
                let pushed =
                    r.push.ok_or_else(|| Status::invalid_argument("push: missing")).and_then(|p| push(&shared, p));
                answer(r.call_id, pushed)
            })
        });
        let stopped = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        Ok(Response::new(Box::pin(answers.take_until(stopped))))
    }

    async fn resync(&self, request: Request<v1::ResyncRequest>) -> Result<Response<v1::ResyncResponse>, Status> {
        let mut held = 0;
        for d in request.into_inner().devices {
            let (Ok(user), Ok(device)) = (UserId::parse(&d.user_id), DeviceId::parse(&d.device_id)) else {
                continue;
            };
            if let Some(conn) = self.shared.registry.get(&user, &device) {
                conn.ask_resync();
                held += 1;
            }
        }
        Ok(Response::new(v1::ResyncResponse { held }))
    }

    async fn disconnect(
        &self,
        request: Request<v1::DisconnectRequest>,
    ) -> Result<Response<v1::DisconnectResponse>, Status> {
        let r = request.into_inner();
        let d = r.device.ok_or_else(|| Status::invalid_argument("device is required"))?;
        let user = UserId::parse(&d.user_id).map_err(|e| Status::invalid_argument(format!("device.user_id: {e}")))?;
        let device =
            DeviceId::parse(&d.device_id).map_err(|e| Status::invalid_argument(format!("device.device_id: {e}")))?;
        let closed = self.shared.registry.close_if(&user, &device, r.conn_id, CONNECTED_AGAIN);
        if closed {
            tracing::info!(
                user = %user, device = %device, conn_id = r.conn_id,
                "closing a connection replaced on another gateway"
            );
        }
        Ok(Response::new(v1::DisconnectResponse { closed }))
    }
}

/// One push: the devices of `r` this gateway holds are handed its frame; answers which took it.
fn push(shared: &Shared, r: v1::PushRequest) -> Result<v1::PushResponse, Status> {
    let (conversation, seq, frame) = match (r.message, r.receipt, r.typing) {
        (Some(message), None, None) => {
            let conversation = ConversationId::parse(&message.conversation_id)
                .map_err(|e| Status::invalid_argument(format!("message.conversation_id: {e}")))?;
            if message.seq == 0 {
                return Err(Status::invalid_argument("message.seq must be at least 1"));
            }
            (conversation, message.seq, message_frame(&message))
        }
        (None, Some(receipt), None) => {
            let conversation = ConversationId::parse(&receipt.conversation_id)
                .map_err(|e| Status::invalid_argument(format!("receipt.conversation_id: {e}")))?;
            let kind = match v1::ReceiptKind::try_from(receipt.kind) {
                Ok(v1::ReceiptKind::Delivered) => "delivered",
                Ok(v1::ReceiptKind::Read) => "read",
                _ => return Err(Status::invalid_argument("receipt.kind must be DELIVERED or READ")),
            };
            let frame = ServerFrame::Receipt {
                conversation_id: receipt.conversation_id,
                user_id: receipt.user_id,
                device_id: receipt.device_id,
                kind,
                up_to_seq: receipt.up_to_seq,
            };
            // Receipts carry no number of their own: 0 is never one a connection's inbox has sent.
            (conversation, 0, frame.to_text().into())
        }
        (None, None, Some(t)) => {
            let conversation = ConversationId::parse(&t.conversation_id)
                .map_err(|e| Status::invalid_argument(format!("typing.conversation_id: {e}")))?;
            let frame = ServerFrame::Typing {
                conversation_id: t.conversation_id,
                user_id: t.user_id,
                device_id: t.device_id,
                typing: t.typing,
            };
            (conversation, 0, frame.to_text().into())
        }
        _ => return Err(Status::invalid_argument("exactly one of message, receipt and typing must be set")),
    };
    let mut delivered = Vec::with_capacity(r.devices.len());
    // A device this gateway does not hold (or cannot name) is not delivered here; the worker keeps it in
    // the inbox.
    let conns = shared.registry.get_each(r.devices.iter().map(|d| (d.user_id.as_str(), d.device_id.as_str())));
    for (d, conn) in r.devices.into_iter().zip(conns) {
        let Some(conn) = conn else {
            metrics::bump(&shared.metrics.push_missed);
            continue;
        };
        if conn.push(conversation, seq, frame.clone()) == PushOutcome::Queued {
            metrics::bump(&shared.metrics.pushed);
            delivered.push(d);
        } else {
            metrics::bump(&shared.metrics.push_missed);
        }
    }
    Ok(v1::PushResponse { delivered })
}

fn answer(call_id: u64, pushed: Result<v1::PushResponse, Status>) -> v1::PushMessagesResponse {
    use v1::push_messages_response::Result as Outcome;
    let result = match pushed {
        Ok(pushed) => Outcome::Pushed(pushed),
        Err(status) => Outcome::Failed((&status).into()),
    };
    v1::PushMessagesResponse { call_id, result: Some(result) }
}
