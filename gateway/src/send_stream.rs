//! The gateway's half of `SendMessages`: one long-lived call per chat-service replica carries every send of
//! this gateway's clients to that replica, each answered by its call id. A message then costs a frame on an
//! open HTTP/2 stream rather than a stream (headers, trailers, a task on each side) of its own.
//!
//! The call is opened by the first send and again by the first send after it ended. When it ends (the
//! replica stopped, the connection broke), every send waiting on it is answered `unavailable`: nothing was
//! acknowledged, and a send is idempotent by its client id, so the pool sends it again to the next replica.
//! A send not answered within its timeout is answered `unavailable` too, as a unary call's timeout was. A
//! replica that does not know the call (an older chat service during a rolling upgrade) gets one
//! `SendMessage` call per send from then on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proto::v1;
use proto::v1::chat_service_client::ChatServiceClient;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Sends queued for a call's request half before a sender waits.
const REQUESTS_BUFFERED: usize = 1024;

type Answer = Result<v1::SendMessageResponse, Status>;

/// The sends of one replica.
#[derive(Default)]
pub struct SendStream {
    call: Mutex<Option<Arc<Call>>>,
    next_id: AtomicU64,
    /// Set once the replica answered the call UNIMPLEMENTED.
    unary_only: AtomicBool,
}

impl SendStream {
    /// `send` made on `client`'s replica, answered within `timeout`.
    pub async fn send(
        &self,
        client: &ChatServiceClient<Channel>,
        send: v1::SendMessageRequest,
        timeout: Duration,
    ) -> Result<v1::SendMessageResponse, Status> {
        if self.unary_only.load(Ordering::Relaxed) {
            return unary(client, send, timeout).await;
        }
        let call_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // A call that ended between being found open and being waited on is opened again, once.
        let (call, answer) = match self.open(client).wait(call_id) {
            Ok(waiting) => waiting,
            Err(_) => self.open(client).wait(call_id)?,
        };
        let _forget = Forget { call: &call, call_id };
        let request = v1::SendMessagesRequest { call_id, send: Some(send.clone()) };
        let answered = tokio::time::timeout(timeout, async {
            if call.requests.send(request).await.is_err() {
                return Err(call.answers.ended_status());
            }
            answer.await.unwrap_or_else(|_| Err(call.answers.ended_status()))
        })
        .await
        .unwrap_or_else(|_| {
            Err(Status::unavailable(format!(
                "the chat service did not answer the send within {} ms",
                timeout.as_millis()
            )))
        });
        match answered {
            Err(status) if status.code() == Code::Unimplemented && call.answers.ended() => {
                tracing::info!("a chat service without SendMessages: its sends go one call each");
                self.unary_only.store(true, Ordering::Relaxed);
                unary(client, send, timeout).await
            }
            answered => answered,
        }
    }

    /// The replica's open call, or a new one.
    fn open(&self, client: &ChatServiceClient<Channel>) -> Arc<Call> {
        let mut slot = self.call.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(call) = slot.as_ref()
            && !call.answers.ended()
        {
            return call.clone();
        }
        let (requests, rx) = mpsc::channel(REQUESTS_BUFFERED);
        let call = Arc::new(Call { requests, answers: Arc::default() });
        *slot = Some(call.clone());
        // The reader holds the waiting sends, not the request half: once the pool and every send let go of
        // the call, its request half closes and the replica ends the call.
        tokio::spawn(run(client.clone(), rx, call.answers.clone()));
        call
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

/// Reads a call's answers until it ends, then answers whatever still waits.
async fn run(
    mut client: ChatServiceClient<Channel>,
    requests: mpsc::Receiver<v1::SendMessagesRequest>,
    waiting: Arc<Answers>,
) {
    let end = match client.send_messages(ReceiverStream::new(requests)).await {
        Err(status) => status,
        Ok(answers) => {
            let mut answers = answers.into_inner();
            loop {
                match answers.message().await {
                    Ok(Some(a)) => waiting.answer(a),
                    Ok(None) => break Status::unavailable("the chat service ended the send stream"),
                    Err(status) => break status,
                }
            }
        }
    };
    tracing::debug!(error = %end, "a send stream to the chat service ended");
    waiting.end(end);
}

/// One open `SendMessages` call.
struct Call {
    requests: mpsc::Sender<v1::SendMessagesRequest>,
    answers: Arc<Answers>,
}

impl Call {
    /// Where the answer to `call_id` will come; refused once the call ended.
    fn wait(self: Arc<Self>, call_id: u64) -> Result<(Arc<Call>, oneshot::Receiver<Answer>), Status> {
        let rx = self.answers.wait(call_id)?;
        Ok((self, rx))
    }
}

/// The sends waiting on a call for their answers.
#[derive(Default)]
struct Answers(Mutex<Waiting>);

#[derive(Default)]
struct Waiting {
    answers: HashMap<u64, oneshot::Sender<Answer>>,
    /// Why the call ended, once it has.
    ended: Option<Status>,
}

impl Answers {
    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ended(&self) -> bool {
        self.waiting().ended.is_some()
    }

    /// Why the call ended, as the answer of a send it did not answer.
    fn ended_status(&self) -> Status {
        self.waiting().ended.clone().unwrap_or_else(|| Status::unavailable("the send stream to the chat service ended"))
    }

    fn wait(&self, call_id: u64) -> Result<oneshot::Receiver<Answer>, Status> {
        let mut waiting = self.waiting();
        if let Some(end) = &waiting.ended {
            return Err(end.clone());
        }
        let (tx, rx) = oneshot::channel();
        waiting.answers.insert(call_id, tx);
        Ok(rx)
    }

    fn answer(&self, a: v1::SendMessagesResponse) {
        use v1::send_messages_response::Result as Outcome;
        let Some(tx) = self.waiting().answers.remove(&a.call_id) else { return };
        let answer = match a.result {
            Some(Outcome::Sent(sent)) => Ok(sent),
            Some(Outcome::Failed(f)) => Err(Status::new(Code::from(f.code), f.message)),
            None => Err(Status::internal("the chat service answered a send without its result")),
        };
        let _ = tx.send(answer);
    }

    /// Every waiting send answered with why the call ended, as `unavailable` (so sent again elsewhere), or
    /// as UNIMPLEMENTED (so sent again one call each).
    fn end(&self, why: Status) {
        let why = match why.code() {
            Code::Unimplemented => why,
            _ => Status::unavailable(format!("the send stream to the chat service ended: {}", why.message())),
        };
        let answers = {
            let mut waiting = self.waiting();
            waiting.ended = Some(why.clone());
            std::mem::take(&mut waiting.answers)
        };
        for (_, tx) in answers {
            let _ = tx.send(Err(why.clone()));
        }
    }
}

/// Forgets a send's place among the waiting when its sender stops waiting (answered, timed out, dropped).
struct Forget<'a> {
    call: &'a Call,
    call_id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.call.answers.waiting().answers.remove(&self.call_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> (Arc<Call>, mpsc::Receiver<v1::SendMessagesRequest>) {
        let (requests, rx) = mpsc::channel(8);
        (Arc::new(Call { requests, answers: Arc::default() }), rx)
    }

    fn sent(call_id: u64, seq: u64) -> v1::SendMessagesResponse {
        use v1::send_messages_response::Result as Outcome;
        v1::SendMessagesResponse {
            call_id,
            result: Some(Outcome::Sent(v1::SendMessageResponse { seq, ..Default::default() })),
        }
    }

    #[tokio::test]
    async fn answers_reach_their_senders_by_call_id_whatever_their_order() {
        let (call, _rx) = call();
        let (_, first) = call.clone().wait(1).expect("open");
        let (_, second) = call.clone().wait(2).expect("open");
        call.answers.answer(sent(2, 20));
        call.answers.answer(sent(1, 10));
        assert_eq!(first.await.expect("answered").expect("sent").seq, 10);
        assert_eq!(second.await.expect("answered").expect("sent").seq, 20);
        // An answer nobody waits for (its sender gave up) is dropped.
        call.answers.answer(sent(3, 30));
        assert!(call.answers.waiting().answers.is_empty());
    }

    #[tokio::test]
    async fn a_failure_comes_back_with_its_code() {
        use v1::send_messages_response::Result as Outcome;
        let (call, _rx) = call();
        let (_, answer) = call.clone().wait(1).expect("open");
        call.answers.answer(v1::SendMessagesResponse {
            call_id: 1,
            result: Some(Outcome::Failed(v1::SendFailure {
                code: Code::PermissionDenied as i32,
                message: "not a member".into(),
            })),
        });
        let status = answer.await.expect("answered").expect_err("failed");
        assert_eq!((status.code(), status.message()), (Code::PermissionDenied, "not a member"));
    }

    #[tokio::test]
    async fn the_end_of_a_call_answers_every_waiting_send_unavailable_and_refuses_new_ones() {
        let (call, _rx) = call();
        let (_, a) = call.clone().wait(1).expect("open");
        let (_, b) = call.clone().wait(2).expect("open");
        call.answers.end(Status::internal("h2 protocol error: connection reset"));
        for answer in [a, b] {
            let status = answer.await.expect("answered").expect_err("the call ended");
            assert!(crate::chat_pool::unavailable(&status), "{status:?} would not be sent to another replica");
        }
        let refused = call.clone().wait(3).err().expect("a call that ended takes no send");
        assert_eq!(refused.code(), Code::Unavailable);
        assert!(call.answers.ended());
    }

    #[tokio::test]
    async fn an_unknown_call_ends_as_unimplemented_so_the_sends_go_one_call_each() {
        let (call, _rx) = call();
        let (_, a) = call.clone().wait(1).expect("open");
        call.answers.end(Status::unimplemented("unknown method SendMessages"));
        assert_eq!(a.await.expect("answered").expect_err("ended").code(), Code::Unimplemented);
    }

    #[tokio::test]
    async fn a_sender_that_stops_waiting_leaves_nothing_behind() {
        let (call, _rx) = call();
        let (_, answer) = call.clone().wait(1).expect("open");
        drop(Forget { call: &call, call_id: 1 });
        drop(answer);
        assert!(call.answers.waiting().answers.is_empty());
    }
}
