//! Many calls of one kind on one long-lived gRPC stream to one server, each matched with its answer by a
//! call id: what a gateway sends its clients' messages on, and a delivery worker its pushes. A call then
//! costs a frame each way on an open HTTP/2 stream instead of a stream of its own (headers, trailers, a task
//! on each side), which measured about a fifth of the CPU of both ends per message.
//!
//! The stream is opened by the first call and again by the first call after it ended. When it ends (the
//! server stopped, the connection broke), every call waiting on it is answered with why, as `unavailable`:
//! the caller treats that as it treated a call that could not be made (another replica, the inbox). A call
//! not answered within its timeout is answered `unavailable` too. A server that does not know the stream
//! (an older one, during a rolling upgrade) ends it `unimplemented`, which is passed on as it is, and
//! [`CallStream::refused`] tells the caller to make a call per request from then on.
//! The reader of the answers does not hold the request half: once the `CallStream` and every call let go
//! of the stream, its request half closes and the server ends the stream.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Status};

/// Requests queued for a stream's request half before a caller waits.
const REQUESTS_BUFFERED: usize = 1024;

/// What a stream's reader yields: each answer with its call id.
pub type Answered<A> = Result<(u64, Result<A, Status>), Status>;

/// The calls to one server; `R` is the stream's request message, `A` a call's answer.
pub struct CallStream<R, A> {
    open: Mutex<Option<Arc<Open<R, A>>>>,
    next_id: AtomicU64,
    /// Set once the server answered the stream UNIMPLEMENTED.
    refused: Arc<AtomicBool>,
}

impl<R, A> Default for CallStream<R, A> {
    fn default() -> Self {
        CallStream { open: Mutex::new(None), next_id: AtomicU64::new(0), refused: Arc::default() }
    }
}

impl<R, A> CallStream<R, A> {
    /// Whether the server does not know the stream: its calls are to be made one call each.
    pub fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }
}

impl<R: Send + 'static, A: Send + 'static> CallStream<R, A> {
    /// The call `request(call_id)` on the open stream, or on one `start` opens (given the request half, it
    /// makes the gRPC call and answers the stream of answers); answered within `timeout`.
    pub async fn call<S, Fut, Rs>(
        &self,
        start: S,
        request: impl FnOnce(u64) -> R,
        timeout: Duration,
    ) -> Result<A, Status>
    where
        S: FnOnce(ReceiverStream<R>) -> Fut,
        Fut: Future<Output = Result<Rs, Status>> + Send + 'static,
        Rs: Stream<Item = Answered<A>> + Send + Unpin + 'static,
    {
        let call_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // A stream that ended between being found open and being waited on is opened again, once.
        let (open, unused) = self.open(start);
        let (open, answer) = match (open.waiting.wait(call_id), unused) {
            (Ok(answer), _) => (open, answer),
            (Err(_), Some(start)) => {
                let (open, _) = self.open(start);
                let answer = open.waiting.wait(call_id)?;
                (open, answer)
            }
            (Err(ended), None) => return Err(ended),
        };
        let _forget = Forget { waiting: &open.waiting, call_id };
        tokio::time::timeout(timeout, async {
            // A closed request half means the stream is ending: its reader answers every waiting call, this one
            // too, with why.
            let _ = open.requests.send(request(call_id)).await;
            answer.await.unwrap_or_else(|_| Err(open.waiting.ended_status()))
        })
        .await
        .unwrap_or_else(|_| Err(Status::unavailable(format!("no answer within {} ms", timeout.as_millis()))))
    }

    /// The open stream (and `start` handed back, unused), or a new one `start` opened.
    fn open<S, Fut, Rs>(&self, start: S) -> (Arc<Open<R, A>>, Option<S>)
    where
        S: FnOnce(ReceiverStream<R>) -> Fut,
        Fut: Future<Output = Result<Rs, Status>> + Send + 'static,
        Rs: Stream<Item = Answered<A>> + Send + Unpin + 'static,
    {
        let mut slot = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = slot.as_ref()
            && !open.waiting.ended()
        {
            return (open.clone(), Some(start));
        }
        let (requests, rx) = mpsc::channel(REQUESTS_BUFFERED);
        let open = Arc::new(Open { requests, waiting: Arc::default() });
        *slot = Some(open.clone());
        tokio::spawn(read(start(ReceiverStream::new(rx)), open.waiting.clone(), self.refused.clone()));
        (open, None)
    }
}

/// Reads a stream's answers until it ends, then answers whatever still waits.
async fn read<A, Fut, Rs>(started: Fut, waiting: Arc<Waiting<A>>, refused: Arc<AtomicBool>)
where
    Fut: Future<Output = Result<Rs, Status>>,
    Rs: Stream<Item = Answered<A>> + Unpin,
{
    let end = match started.await {
        Err(status) => status,
        Ok(mut answers) => loop {
            match answers.next().await {
                Some(Ok((call_id, answer))) => waiting.answer(call_id, answer),
                Some(Err(status)) => break status,
                None => break Status::unavailable("the server ended the stream"),
            }
        },
    };
    tracing::debug!(error = %end, "a call stream ended");
    if end.code() == Code::Unimplemented {
        refused.store(true, Ordering::Relaxed);
    }
    waiting.end(end);
}

/// One open stream.
struct Open<R, A> {
    requests: mpsc::Sender<R>,
    waiting: Arc<Waiting<A>>,
}

/// The calls waiting on a stream for their answers.
struct Waiting<A>(Mutex<Calls<A>>);

struct Calls<A> {
    answers: HashMap<u64, oneshot::Sender<Result<A, Status>>>,
    /// Why the stream ended, once it has.
    ended: Option<Status>,
}

impl<A> Default for Waiting<A> {
    fn default() -> Self {
        Waiting(Mutex::new(Calls { answers: HashMap::new(), ended: None }))
    }
}

impl<A> Waiting<A> {
    fn lock(&self) -> MutexGuard<'_, Calls<A>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ended(&self) -> bool {
        self.lock().ended.is_some()
    }

    /// Why the stream ended, as the answer of a call it did not answer.
    fn ended_status(&self) -> Status {
        self.lock().ended.clone().unwrap_or_else(|| Status::unavailable("the call stream ended"))
    }

    /// Where the answer to `call_id` will come; refused once the stream ended.
    fn wait(&self, call_id: u64) -> Result<oneshot::Receiver<Result<A, Status>>, Status> {
        let mut calls = self.lock();
        if let Some(end) = &calls.ended {
            return Err(end.clone());
        }
        let (tx, rx) = oneshot::channel();
        calls.answers.insert(call_id, tx);
        Ok(rx)
    }

    /// An answer to the call that waits for it; dropped when none does (it gave up).
    fn answer(&self, call_id: u64, answer: Result<A, Status>) {
        if let Some(tx) = self.lock().answers.remove(&call_id) {
            let _ = tx.send(answer);
        }
    }

    /// Every waiting call answered with why the stream ended: as `unavailable`, or `unimplemented` as is.
    fn end(&self, why: Status) {
        let why = match why.code() {
            Code::Unimplemented => why,
            _ => Status::unavailable(format!("the call stream ended: {}", why.message())),
        };
        let answers = {
            let mut calls = self.lock();
            calls.ended = Some(why.clone());
            std::mem::take(&mut calls.answers)
        };
        for (_, tx) in answers {
            let _ = tx.send(Err(why.clone()));
        }
    }
}

/// Forgets a call's place among the waiting when its caller stops waiting (answered, timed out, dropped).
struct Forget<'a, A> {
    waiting: &'a Waiting<A>,
    call_id: u64,
}

impl<A> Drop for Forget<'_, A> {
    fn drop(&mut self) {
        self.waiting.lock().answers.remove(&self.call_id);
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::AtomicUsize;

    use tokio_stream::wrappers::UnboundedReceiverStream;

    use super::*;

    /// A request of the tests: its call id and a number.
    type Request = (u64, u64);
    type Answers = mpsc::UnboundedSender<Answered<u64>>;
    type Started = Pin<Box<dyn Future<Output = Result<UnboundedReceiverStream<Answered<u64>>, Status>> + Send>>;

    /// The server side of the tests: each stream opened arrives here, its requests and where to answer.
    struct Server {
        opened: Arc<AtomicUsize>,
        streams: mpsc::UnboundedReceiver<(ReceiverStream<Request>, Answers)>,
        tx: mpsc::UnboundedSender<(ReceiverStream<Request>, Answers)>,
    }

    impl Server {
        fn new() -> Server {
            let (tx, streams) = mpsc::unbounded_channel();
            Server { opened: Arc::default(), streams, tx }
        }

        /// What a caller gives to open a stream to this server.
        fn start(&self) -> impl FnOnce(ReceiverStream<Request>) -> Started + Send + 'static {
            let (tx, opened) = (self.tx.clone(), self.opened.clone());
            move |requests| {
                opened.fetch_add(1, Ordering::SeqCst);
                let (answers, rx) = mpsc::unbounded_channel();
                let _ = tx.send((requests, answers));
                Box::pin(async move { Ok(UnboundedReceiverStream::new(rx)) })
            }
        }

        async fn next_stream(&mut self) -> (ReceiverStream<Request>, Answers) {
            tokio::time::timeout(Duration::from_secs(5), self.streams.recv())
                .await
                .expect("a stream in time")
                .expect("a stream")
        }
    }

    fn call(
        calls: &Arc<CallStream<Request, u64>>,
        server: &Server,
        n: u64,
        timeout: Duration,
    ) -> tokio::task::JoinHandle<Result<u64, Status>> {
        let (calls, start) = (calls.clone(), server.start());
        tokio::spawn(async move { calls.call(start, |id| (id, n), timeout).await })
    }

    const LONG: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn calls_share_one_stream_and_each_gets_its_own_answer_whatever_their_order() {
        let mut server = Server::new();
        let calls = Arc::new(CallStream::default());
        let a = call(&calls, &server, 101, LONG);
        let (mut requests, answers) = server.next_stream().await;
        let (id_a, n) = requests.next().await.expect("a request");
        assert_eq!(n, 101);
        let b = call(&calls, &server, 102, LONG);
        let (id_b, n) = requests.next().await.expect("a request on the same stream");
        assert_eq!(n, 102);
        assert_ne!(id_a, id_b);
        answers.send(Ok((id_b, Ok(204)))).expect("answer");
        answers.send(Ok((id_a, Err(Status::permission_denied("no"))))).expect("answer");
        assert_eq!(b.await.expect("join").expect("answered"), 204);
        assert_eq!(a.await.expect("join").expect_err("refused").code(), Code::PermissionDenied);
        assert_eq!(server.opened.load(Ordering::SeqCst), 1, "one stream for both calls");
    }

    #[tokio::test]
    async fn the_end_of_a_stream_answers_its_calls_unavailable_and_the_next_call_opens_another() {
        let mut server = Server::new();
        let calls = Arc::new(CallStream::default());
        let a = call(&calls, &server, 201, LONG);
        let (mut requests, answers) = server.next_stream().await;
        requests.next().await.expect("a request");
        answers.send(Err(Status::internal("h2 protocol error: connection reset"))).expect("end");
        let status = a.await.expect("join").expect_err("the stream ended");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let b = call(&calls, &server, 202, LONG);
        let (mut requests, answers) = server.next_stream().await;
        let (id, n) = requests.next().await.expect("a request");
        assert_eq!(n, 202);
        answers.send(Ok((id, Ok(404)))).expect("answer");
        assert_eq!(b.await.expect("join").expect("answered"), 404);
        assert_eq!(server.opened.load(Ordering::SeqCst), 2);
        assert!(!calls.refused(), "a broken stream is not one the server does not know");
    }

    #[tokio::test]
    async fn an_unknown_stream_is_answered_unimplemented_for_the_caller_to_fall_back() {
        let calls: CallStream<u64, u64> = CallStream::default();
        let refused = calls
            .call(
                |_| async { Err::<tokio_stream::Empty<Answered<u64>>, _>(Status::unimplemented("unknown method")) },
                |_| 1,
                LONG,
            )
            .await;
        assert_eq!(refused.expect_err("unknown").code(), Code::Unimplemented);
        assert!(calls.refused(), "the caller is not told to fall back");
    }

    #[tokio::test]
    async fn a_call_not_answered_in_time_is_unavailable_and_leaves_nothing_behind() {
        let mut server = Server::new();
        let calls = Arc::new(CallStream::default());
        let late = call(&calls, &server, 301, Duration::from_millis(50));
        let status = late.await.expect("join").expect_err("no answer");
        assert_eq!(status.code(), Code::Unavailable);
        let open = calls.open.lock().expect("lock").clone().expect("the stream is open");
        assert!(open.waiting.lock().answers.is_empty(), "the call that gave up still waits");
        let (mut requests, answers) = server.next_stream().await;
        let (id, _) = requests.next().await.expect("a request");
        // Its late answer goes nowhere, and the stream serves the next call.
        answers.send(Ok((id, Ok(602)))).expect("answer");
        let next = call(&calls, &server, 302, LONG);
        let (id, n) = requests.next().await.expect("a request");
        assert_eq!(n, 302);
        answers.send(Ok((id, Ok(604)))).expect("answer");
        assert_eq!(next.await.expect("join").expect("answered"), 604);
        assert_eq!(server.opened.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn dropping_every_holder_closes_the_request_half() {
        let mut server = Server::new();
        let calls = Arc::new(CallStream::default());
        let a = call(&calls, &server, 401, LONG);
        let (mut requests, answers) = server.next_stream().await;
        let (id, _) = requests.next().await.expect("a request");
        answers.send(Ok((id, Ok(1)))).expect("answer");
        a.await.expect("join").expect("answered");
        drop(calls);
        let end = tokio::time::timeout(LONG, requests.next()).await.expect("the request half closed in time");
        assert_eq!(end, None);
    }
}
