//! A send, whichever call carries it: `SendMessage` (one send, one call) and `SendMessages` (many sends on one
//! long-lived call, what gateways use). Both check the request, route it to the partition's owner (here or
//! forwarded) and bound it by the send timeout in the same [`Sender::send`].
//!
//! On a `SendMessages` call each request is a send of its own, answered by its call id once it is done, in
//! whatever order the sends finish. A send's failure is its answer and the call goes on. The call stops
//! reading while [`MAX_IN_FLIGHT`] of its sends are under way, so a caller faster than the owners is held back
//! by HTTP/2's flow control rather than by memory. When the replica shuts down, the call stops reading,
//! answers the sends it took, and ends: the caller sends whatever it had not had answered elsewhere (a send
//! is idempotent by its client id), and the server's graceful shutdown is not held by a call that would
//! otherwise never end.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chat_model::{Body, ClientMsgId};
use futures::stream::{FuturesUnordered, Stream, StreamExt};
use proto::v1;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::error::ChatError;
use crate::grpc::{conversation, device, user};
use crate::owned::{Owned, SendRequest, Sent};

/// Most sends of one `SendMessages` call under way at once.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Answers of one call waiting for the caller to read them.
const ANSWERS_BUFFERED: usize = 256;

/// What every send goes through.
#[derive(Clone)]
pub struct Sender {
    pub owned: Arc<Owned>,
    pub timeout: Duration,
}

impl Sender {
    /// One send, checked, routed and bounded by the send timeout. `forwarded`: it came from another replica
    /// that took this one for the partition's owner (then it is not forwarded again).
    pub async fn send(&self, r: v1::SendMessageRequest, forwarded: bool) -> Result<v1::SendMessageResponse, ChatError> {
        let req = SendRequest {
            conversation_id: conversation(&r.conversation_id)?,
            sender_id: user("sender_id", &r.sender_id)?,
            sender_device_id: device("sender_device_id", &r.sender_device_id)?,
            client_msg_id: ClientMsgId::parse(&r.client_msg_id)
                .map_err(|e| ChatError::Invalid(format!("client_msg_id: {e}")))?,
            body: Body::parse(r.body.clone()).map_err(|e| ChatError::Invalid(e.to_string()))?,
        };
        let conversation_id = req.conversation_id;
        tokio::time::timeout(self.timeout, self.route(req, r, forwarded))
            .await
            .unwrap_or(Err(ChatError::Timeout))
            .inspect_err(|e| tracing::warn!(%conversation_id, error = %e, "send failed"))
    }

    async fn route(
        &self,
        req: SendRequest,
        raw: v1::SendMessageRequest,
        forwarded: bool,
    ) -> Result<v1::SendMessageResponse, ChatError> {
        let owned = &self.owned;
        match owned.route(req.conversation_id) {
            (_, Some(local)) => owned.send(local, req).await.map(send_response),
            (_, None) if forwarded => Err(ChatError::NotOwner),
            (p, None) => {
                let mut owner = owned.router.owner(p).await?;
                let answer = owner.send_message(owned.router.forwarded(raw)).await;
                crate::grpc::forwarded_answer(&owned.router, p, answer)
            }
        }
    }
}

fn send_response(sent: Sent) -> v1::SendMessageResponse {
    v1::SendMessageResponse {
        message_id: sent.message_id.to_string(),
        seq: sent.seq.get(),
        sent_at_ms: sent.sent_at_ms,
        duplicate: sent.duplicate,
    }
}

/// The answers of a `SendMessages` call whose requests are `incoming`, each send made by `send`, until the
/// caller closes its half and every send is answered, the call breaks, or `stopping` turns true.
pub fn serve<S, F, Fut>(
    incoming: S,
    send: F,
    stopping: watch::Receiver<bool>,
) -> ReceiverStream<Result<v1::SendMessagesResponse, Status>>
where
    S: Stream<Item = Result<v1::SendMessagesRequest, Status>> + Send + Unpin + 'static,
    F: Fn(v1::SendMessageRequest) -> Fut + Send + 'static,
    Fut: Future<Output = Result<v1::SendMessageResponse, Status>> + Send + 'static,
{
    let (answers, rx) = mpsc::channel(ANSWERS_BUFFERED);
    tokio::spawn(answer_all(incoming, send, stopping, answers));
    ReceiverStream::new(rx)
}

async fn answer_all<S, F, Fut>(
    mut incoming: S,
    send: F,
    mut stopping: watch::Receiver<bool>,
    answers: mpsc::Sender<Result<v1::SendMessagesResponse, Status>>,
) where
    S: Stream<Item = Result<v1::SendMessagesRequest, Status>> + Unpin,
    F: Fn(v1::SendMessageRequest) -> Fut,
    Fut: Future<Output = Result<v1::SendMessageResponse, Status>>,
{
    let mut under_way = FuturesUnordered::new();
    let mut reading = !*stopping.borrow();
    loop {
        tokio::select! {
            next = incoming.next(), if reading && under_way.len() < MAX_IN_FLIGHT => match next {
                Some(Ok(v1::SendMessagesRequest { call_id, send: Some(s) })) => {
                    let sent = send(s);
                    under_way.push(async move { (call_id, sent.await) });
                }
                Some(Ok(v1::SendMessagesRequest { call_id, send: None })) => {
                    let missing = Err(Status::invalid_argument("send: missing"));
                    if answers.send(Ok(answer(call_id, missing))).await.is_err() {
                        return;
                    }
                }
                // The caller's half broke (a frame that does not decode, a reset): its answer is the call's
                // end. Sends already taken go on at their owners; a retry finds them by their client ids.
                Some(Err(status)) => {
                    tracing::debug!(error = %status, "a send stream broke");
                    let _ = answers.send(Err(status)).await;
                    return;
                }
                None => reading = false,
            },
            Some((call_id, result)) = under_way.next() => {
                if answers.send(Ok(answer(call_id, result))).await.is_err() {
                    return;
                }
            }
            changed = stopping.changed(), if reading => {
                if changed.is_err() || *stopping.borrow() {
                    reading = false;
                }
            }
            else => return,
        }
    }
}

fn answer(call_id: u64, result: Result<v1::SendMessageResponse, Status>) -> v1::SendMessagesResponse {
    use v1::send_messages_response::Result as Answer;
    let result = match result {
        Ok(sent) => Answer::Sent(sent),
        Err(status) => Answer::Failed((&status).into()),
    };
    v1::SendMessagesResponse { call_id, result: Some(result) }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::oneshot;

    use super::*;

    type Requests = mpsc::UnboundedSender<Result<v1::SendMessagesRequest, Status>>;
    type Releases = Arc<std::sync::Mutex<HashMap<String, oneshot::Sender<Result<v1::SendMessageResponse, Status>>>>>;

    fn request(call_id: u64, body: &str) -> Result<v1::SendMessagesRequest, Status> {
        Ok(v1::SendMessagesRequest {
            call_id,
            send: Some(v1::SendMessageRequest { body: body.into(), ..Default::default() }),
        })
    }

    fn sent(seq: u64) -> v1::SendMessageResponse {
        v1::SendMessageResponse { seq, ..Default::default() }
    }

    /// A call whose sends wait until the test releases them by body, each answered with what it is given.
    struct Held {
        release: Releases,
        started: Arc<AtomicUsize>,
        requests: Requests,
        answers: ReceiverStream<Result<v1::SendMessagesResponse, Status>>,
        stop: watch::Sender<bool>,
    }

    impl Held {
        fn start() -> Held {
            let release = Arc::new(std::sync::Mutex::new(HashMap::new()));
            let started = Arc::new(AtomicUsize::new(0));
            let (requests, rx) = mpsc::unbounded_channel();
            let (stop, stopping) = watch::channel(false);
            let (r, s) = (release.clone(), started.clone());
            let answers = serve(
                tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
                move |send: v1::SendMessageRequest| {
                    let (tx, rx) = oneshot::channel();
                    r.lock().expect("lock").insert(send.body, tx);
                    s.fetch_add(1, Ordering::SeqCst);
                    async move { rx.await.unwrap_or_else(|_| Err(Status::cancelled("dropped"))) }
                },
                stopping,
            );
            Held { release, started, requests, answers, stop }
        }

        fn release(&self, body: &str, result: Result<v1::SendMessageResponse, Status>) {
            let tx = self.release.lock().expect("lock").remove(body).expect("a send with that body is under way");
            let _ = tx.send(result);
        }

        async fn until_started(&self, n: usize) {
            while self.started.load(Ordering::SeqCst) < n {
                tokio::task::yield_now().await;
            }
        }

        async fn next(&mut self) -> Option<Result<v1::SendMessagesResponse, Status>> {
            tokio::time::timeout(Duration::from_secs(5), self.answers.next()).await.expect("an answer in time")
        }
    }

    fn outcome(a: Result<v1::SendMessagesResponse, Status>) -> (u64, Result<u64, tonic::Code>) {
        use v1::send_messages_response::Result as Answer;
        let a = a.expect("an answer, not the call's end");
        match a.result.expect("a result") {
            Answer::Sent(s) => (a.call_id, Ok(s.seq)),
            Answer::Failed(f) => (a.call_id, Err(tonic::Code::from(f.code))),
        }
    }

    #[tokio::test]
    async fn each_send_is_answered_by_its_call_id_in_the_order_they_finish_and_a_failure_ends_nothing() {
        let mut call = Held::start();
        for (id, body) in [(7, "a"), (8, "b"), (9, "c")] {
            call.requests.send(request(id, body)).expect("send");
        }
        call.until_started(3).await;
        call.release("c", Ok(sent(3)));
        assert_eq!(outcome(call.next().await.expect("answer")), (9, Ok(3)));
        call.release("a", Err(Status::permission_denied("not a member")));
        assert_eq!(outcome(call.next().await.expect("answer")), (7, Err(tonic::Code::PermissionDenied)));
        // The call goes on after a failed send.
        call.requests.send(request(10, "d")).expect("send");
        call.until_started(4).await;
        call.release("d", Ok(sent(4)));
        call.release("b", Ok(sent(2)));
        let mut rest = vec![outcome(call.next().await.expect("answer")), outcome(call.next().await.expect("answer"))];
        rest.sort_by_key(|(id, _)| *id);
        assert_eq!(rest, vec![(8, Ok(2)), (10, Ok(4))]);
        // The caller closes its half: the call ends once nothing is under way.
        call.requests = mpsc::unbounded_channel().0;
        assert!(call.next().await.is_none());
    }

    #[tokio::test]
    async fn a_request_without_a_send_is_answered_invalid_and_the_call_goes_on() {
        let mut call = Held::start();
        call.requests.send(Ok(v1::SendMessagesRequest { call_id: 1, send: None })).expect("send");
        assert_eq!(outcome(call.next().await.expect("answer")), (1, Err(tonic::Code::InvalidArgument)));
        call.requests.send(request(2, "a")).expect("send");
        call.until_started(1).await;
        call.release("a", Ok(sent(1)));
        assert_eq!(outcome(call.next().await.expect("answer")), (2, Ok(1)));
    }

    #[tokio::test]
    async fn a_broken_request_half_ends_the_call_with_its_status() {
        let mut call = Held::start();
        call.requests.send(Err(Status::internal("failed to decode"))).expect("send");
        let end = call.next().await.expect("the end");
        assert_eq!(end.expect_err("the call's end").code(), tonic::Code::Internal);
        assert!(call.next().await.is_none());
    }

    #[tokio::test]
    async fn no_more_than_the_limit_is_taken_at_once() {
        let mut call = Held::start();
        for id in 0..=MAX_IN_FLIGHT as u64 {
            call.requests.send(request(id, &id.to_string())).expect("send");
        }
        call.until_started(MAX_IN_FLIGHT).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(call.started.load(Ordering::SeqCst), MAX_IN_FLIGHT, "one past the limit was taken");
        call.release("0", Ok(sent(1)));
        assert_eq!(outcome(call.next().await.expect("answer")), (0, Ok(1)));
        call.until_started(MAX_IN_FLIGHT + 1).await;
    }

    #[tokio::test]
    async fn stopping_takes_no_new_send_answers_the_taken_ones_and_ends() {
        let mut call = Held::start();
        call.requests.send(request(1, "a")).expect("send");
        call.until_started(1).await;
        call.stop.send(true).expect("stop");
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        call.requests.send(request(2, "b")).expect("send");
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(call.started.load(Ordering::SeqCst), 1, "a send was taken after the stop");
        call.release("a", Ok(sent(1)));
        assert_eq!(outcome(call.next().await.expect("answer")), (1, Ok(1)));
        assert!(call.next().await.is_none(), "the call goes on after its sends were answered");
    }
}
