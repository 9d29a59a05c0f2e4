//! The gateway's sends to one chat-service replica: every send of this gateway's clients rides one
//! long-lived `SendMessages` call to it ([`lifecycle::call_stream`]), answered by its call id. When the call
//! ends, the sends waiting on it are answered `unavailable` (nothing was acknowledged, and a send is
//! idempotent by its client id), so the pool sends them again to the next replica. A replica that does not
//! know the call (an older chat service during a rolling upgrade) gets one `SendMessage` call per send from
//! then on.

use std::time::Duration;

use lifecycle::call_stream::CallStream;
use proto::v1;
use proto::v1::chat_service_client::ChatServiceClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The sends of one replica.
#[derive(Default)]
pub struct SendStream {
    calls: CallStream<v1::SendMessagesRequest, v1::SendMessageResponse>,
}

impl SendStream {
    /// `send` made on `client`'s replica, answered within `timeout`.
    pub async fn send(
        &self,
        client: &ChatServiceClient<Channel>,
        send: &v1::SendMessageRequest,
        timeout: Duration,
    ) -> Result<v1::SendMessageResponse, Status> {
        if self.calls.refused() {
            return unary(client, send.clone(), timeout).await;
        }
        let mut c = client.clone();
        let start = move |requests| async move {
            let answers = c.send_messages(requests).await?.into_inner();
            Ok(answers.map(|a| a.map(outcome)))
        };
        let request = |call_id| v1::SendMessagesRequest { call_id, send: Some(send.clone()) };
        match self.calls.call(start, request, timeout).await {
            Err(status) if status.code() == Code::Unimplemented => {
                tracing::info!("a chat service without SendMessages: its sends go one call each");
                unary(client, send.clone(), timeout).await
            }
            answered => answered,
        }
    }
}

async fn unary(
    client: &ChatServiceClient<Channel>,
    send: v1::SendMessageRequest,
    timeout: Duration,
) -> Result<v1::SendMessageResponse, Status> {
    let mut client = client.clone();
    Ok(client.send_message(crate::session::with_deadline(send, timeout)).await?.into_inner())
}

/// An answer of the call, as the answer `SendMessage` would have given.
fn outcome(a: v1::SendMessagesResponse) -> (u64, Result<v1::SendMessageResponse, Status>) {
    use v1::send_messages_response::Result as Outcome;
    let answer = match a.result {
        Some(Outcome::Sent(sent)) => Ok(sent),
        Some(Outcome::Failed(f)) => Err(f.into()),
        None => Err(Status::internal("the chat service answered a send without its result")),
    };
    (a.call_id, answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_comes_back_with_its_code_and_message_and_a_missing_result_is_internal() {
        use v1::send_messages_response::Result as Outcome;
        let failed = v1::SendMessagesResponse {
            call_id: 7,
            result: Some(Outcome::Failed(v1::CallFailure {
                code: Code::PermissionDenied as i32,
                message: "not a member".into(),
            })),
        };
        let (id, answer) = outcome(failed);
        let status = answer.expect_err("failed");
        assert_eq!((id, status.code(), status.message()), (7, Code::PermissionDenied, "not a member"));
        let (_, answer) = outcome(v1::SendMessagesResponse { call_id: 8, result: None });
        assert_eq!(answer.expect_err("no result").code(), Code::Internal);
        let sent = v1::SendMessageResponse { seq: 3, ..Default::default() };
        let (id, answer) = outcome(v1::SendMessagesResponse { call_id: 9, result: Some(Outcome::Sent(sent)) });
        assert_eq!((id, answer.expect("sent").seq), (9, 3));
    }
}
