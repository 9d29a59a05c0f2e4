//! One client connection, from the moment it is upgraded: register, sync the inbox, then live until closed.
//!
//! A resting connection is one task (`run`): one loop over the unsplit socket that reads the client's
//! frames, writes what the connection's handle queued (pushes, answers, the inbox), pings, and closes.
//! Other tasks live only while there is work: the request worker (`requests.rs`, started on the first
//! request; it calls the chat service one request at a time, so one client's sends keep their order), and
//! the inbox sender (`inbox.rs`, at connect and on each resync). `frames.rs` turns the chat service's
//! answers into client frames; `typing.rs` routes typing indicators.

mod frames;
mod inbox;
mod requests;
mod typing;

pub use frames::message_frame;
pub use requests::with_deadline;

use requests::Requests;

/// Resolves once the flag (the process's shutdown) is true, holding no borrow of it across an await.
pub async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_model::{ConversationId, UserId, presence};
use futures::{SinkExt, StreamExt};
use proto::v1;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use crate::auth::Identity;
use crate::chat_pool::ChatPool;
use crate::limits::Bucket;
use crate::metrics;
use crate::protocol::{self, ClientFrame, ErrorCode, FrameError, ServerFrame, close};
use crate::registry::{CONNECTED_AGAIN, CloseReason, ConnHandle, Next, Registry};
use routing::{Holder, Presence};

/// What every session of the process shares.
pub struct Shared {
    pub registry: Registry,
    pub presence: Presence,
    pub chat: ChatPool,
    pub send_queue: usize,
    pub inbox_recheck: Duration,
    pub rpc_timeout: Duration,
    /// Longest a write to one socket may block before the connection is dropped.
    pub write_timeout: Duration,
    /// How often each connection is pinged, and how long it may stay silent before it is closed.
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// Becomes true when the process shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Push clients of the gateways (for typing indicators).
    pub pushers: routing::Pushers,
    /// Members of recently used conversations, for typing indicators.
    pub members: std::sync::Mutex<HashMap<ConversationId, (Instant, Vec<UserId>)>>,
    /// Rate and connection limits.
    pub limits: Arc<crate::limits::Limits>,
    /// What this process counts (`GET /metrics`).
    pub metrics: crate::metrics::Metrics,
}

impl Shared {
    /// Registers `user`'s `device` in the store (so that workers keep an inbox for it), then replaces the
    /// user's device-list stamp in presence (so that a worker holding the list from before reads it again).
    /// Done only when both are: a caller that gets an error registers again later.
    pub async fn register_device(&self, user: &UserId, device: &chat_model::DeviceId) -> Result<(), String> {
        let register = v1::RegisterDeviceRequest { user_id: user.to_string(), device_id: device.to_string() };
        let timeout = self.rpc_timeout;
        self.chat
            .call(|mut c| {
                let r = with_deadline(register.clone(), timeout);
                async move { c.register_device(r).await }
            })
            .await
            .map_err(|e| format!("registering in the store: {e}"))?;
        // The bug of failpoint `gateway-skip-device-stamp`, which the device-list test must catch.
        if lifecycle::failpoint("gateway-skip-device-stamp") {
            return Ok(());
        }
        self.presence.devices_changed(user).await.map_err(|e| format!("stamping the device list: {e}"))
    }
}

/// Serves one upgraded connection to its end. The socket comes boxed, and the steps before and after its
/// resting state are boxed too, so that the connection's task holds little more than the socket while it
/// rests (`make bench` measures it against a bare tokio-tungstenite server).
pub async fn run<S>(ws: Box<WebSocketStream<S>>, identity: Identity, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = Box::pin(open(ws, identity, shared)).await;
    let reason = conn.serve().await;
    Box::pin(conn.end(reason)).await;
}

/// Registers the connection (here and in presence, and the device in the store), queues the welcome and
/// starts the inbox's first pass.
async fn open<S>(ws: Box<WebSocketStream<S>>, identity: Identity, shared: Arc<Shared>) -> Connection<S> {
    let conn_id = shared.registry.next_conn_id();
    metrics::bump(&shared.metrics.opened);
    // The bug of failpoint `gateway-unbounded-queue`, which the slow-client scenario must catch.
    let send_queue = if lifecycle::failpoint("gateway-unbounded-queue") { 1 << 24 } else { shared.send_queue };
    let handle = Arc::new(ConnHandle::new(conn_id, identity.user.clone(), identity.device.clone(), send_queue));
    // The bug of failpoint `gateway-keep-replaced`, which the tests of close code 4000 must catch: the
    // device's older connection, on this gateway or another, is left open.
    let keep_replaced = lifecycle::failpoint("gateway-keep-replaced");
    if let Some(old) = shared.registry.insert(handle.clone())
        && !keep_replaced
    {
        old.close_with(CONNECTED_AGAIN);
    }

    // The device is known (it gets an inbox) and present before the client hears anything: once a client has
    // its welcome, every message for it is either pushed or kept.
    let holder = Holder { user: &identity.user, device: &identity.device, conn_id };
    match shared.presence.set(&[holder]).await {
        Ok(previous) => {
            // The entry this one replaced: a connection of the device on another gateway, closed there.
            let elsewhere =
                presence::replaced_elsewhere(previous.into_iter().next().flatten(), shared.presence.push_addr());
            if let Some(old) = elsewhere
                && !keep_replaced
            {
                disconnect_elsewhere(shared.pushers.clone(), &identity, old);
            }
        }
        Err(e) => {
            tracing::warn!(user = %identity.user, error = %e, "presence not written; delivery falls back to the inbox")
        }
    }
    match shared.register_device(&identity.user, &identity.device).await {
        Ok(()) => handle.registered.store(true, std::sync::atomic::Ordering::Relaxed),
        Err(e) => tracing::warn!(user = %identity.user, error = %e,
            "device not registered yet; the presence refresh tries again (until then, only presence routes to it)"),
    }
    let welcome = ServerFrame::Welcome {
        user_id: identity.user.to_string(),
        device_id: identity.device.to_string(),
        session_id: format!("{conn_id}"),
    };
    // The queue is empty: the welcome is its first frame.
    let _ = handle.send(welcome.to_text().into()).await;

    let limits = shared.limits.config();
    let now = tokio::time::Instant::now();
    let token_left = Duration::from_secs(u64::try_from(identity.expires_at - chat_model::now_ms() / 1000).unwrap_or(0));
    let inbox = Some(inbox::spawn(&handle, &identity, &shared, inbox::Pass::Connect));
    Connection {
        ws,
        requests: Requests::default(),
        bucket: Bucket::new(limits.connection_rate, limits.connection_burst),
        refused: 0,
        patience: limits.connection_burst.max(10),
        inbox,
        ping_at: now + shared.ping_interval,
        idle_at: now + shared.idle_timeout,
        token_at: now + token_left,
        handle,
        identity,
        shared,
    }
}

/// Asks the gateway named by `old` to close the device's connection there (4000), in the background: the new
/// connection never waits on another gateway, and a failure (that gateway dead, or unreachable within the
/// deadline) only leaves the old connection open until it ends by itself; pushes go to the new one, whose
/// presence entry is written.
fn disconnect_elsewhere(pushers: routing::Pushers, identity: &Identity, old: presence::Entry) {
    let device = v1::DeviceRef { user_id: identity.user.to_string(), device_id: identity.device.to_string() };
    let user = identity.user.clone();
    tokio::spawn(async move {
        match pushers.disconnect(&old.push_addr, device, old.conn_id).await {
            Ok(closed) => tracing::debug!(
                user = %user, gateway = %old.push_addr, conn_id = old.conn_id, closed,
                "asked to close the older connection"
            ),
            Err(status) => tracing::warn!(
                user = %user, gateway = %old.push_addr, conn_id = old.conn_id, %status,
                "the older connection on another gateway could not be closed"
            ),
        }
    });
}

/// Reads and drops what the client still sends, for a moment (at most 1 s and 1 MiB), so that closing the
/// socket does not reset the connection: a reset would discard our close frame on its way to the client
/// (a client closed for an oversized message is typically still sending it).
async fn linger<S: AsyncRead + Unpin>(io: &mut S) {
    use tokio::io::AsyncReadExt;
    // On the heap, allocated only now: an array here would sit in every connection's future all its life.
    let mut buf = vec![0u8; 8192];
    let mut left: usize = 1 << 20;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// A connection's loop and what it holds: the socket, read and written by this one task.
struct Connection<S> {
    ws: Box<WebSocketStream<S>>,
    handle: Arc<ConnHandle>,
    identity: Identity,
    shared: Arc<Shared>,
    requests: Requests,
    /// The connection's rate limit (the user's shared one is in `shared.limits`), and the frames refused
    /// since the last one taken.
    bucket: Bucket,
    refused: u32,
    /// Refused frames in a row after which the connection is closed (4029).
    patience: u32,
    /// The inbox sender, while one runs (a resync asked meanwhile waits in the handle until it ended).
    inbox: Option<tokio::task::JoinHandle<()>>,
    /// When to ping, when the client has been silent too long, when its token expires: one timer waits for
    /// the earliest.
    ping_at: tokio::time::Instant,
    idle_at: tokio::time::Instant,
    token_at: tokio::time::Instant,
}

/// What one turn of the loop does after its wait.
enum Turn {
    Write(WsMessage),
    Read(Option<Result<WsMessage, tungstenite::Error>>),
    Close(CloseReason),
    /// The timer fired: ping, or close for silence or an expired token.
    Timer,
    /// Send the inbox again (none is being sent).
    Resync,
    /// The inbox sender ended.
    InboxDone,
    Nothing,
}

/// Resolves when the task ends (at once when there is none).
async fn finished(task: &mut Option<tokio::task::JoinHandle<()>>) {
    if let Some(t) = task {
        let _ = t.await;
    }
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Reads and writes until the connection is to close; answers why.
    async fn serve(&mut self) -> CloseReason {
        let mut shutdown = self.shared.shutdown.clone();
        let timer = tokio::time::sleep_until(self.ping_at.min(self.idle_at).min(self.token_at));
        tokio::pin!(timer);
        // Frames written since the client's side was last looked at: a queue that keeps filling must not
        // keep the client's own frames (and its answers to pings) unread.
        let mut written = 0;
        loop {
            let resync_allowed = self.inbox.is_none();
            let turn = tokio::select! {
                // The handle first (a close, then queued frames), so that a close is never overtaken.
                biased;
                next = self.handle.next(resync_allowed), if written < WRITES_BEFORE_READING => match next {
                    Next::Close(reason) => Turn::Close(reason),
                    Next::Frame(text) => Turn::Write(WsMessage::Text(text)),
                    Next::Resync => Turn::Resync,
                },
                _ = stopped(&mut shutdown) => Turn::Close((close::GOING_AWAY, "gateway shutting down, reconnect")),
                () = &mut timer => Turn::Timer,
                () = finished(&mut self.inbox), if self.inbox.is_some() => Turn::InboxDone,
                // The request worker's queue had no room: the client's frames wait (backpressure).
                () = self.requests.flush_pending(), if self.requests.pending.is_some() => Turn::Nothing,
                next = self.ws.next(), if self.requests.pending.is_none() => Turn::Read(next),
                // Nothing from the client: back to the queue.
                () = std::future::ready(()), if written >= WRITES_BEFORE_READING => Turn::Nothing,
            };
            match &turn {
                Turn::Write(WsMessage::Text(_)) => written += 1,
                _ => written = 0,
            }
            let reply = match turn {
                Turn::Nothing => continue,
                Turn::Resync => {
                    tracing::info!(user = %self.identity.user, device = %self.identity.device,
                        "sending the inbox again (presence lost or pushes missed)");
                    self.inbox = Some(inbox::spawn(&self.handle, &self.identity, &self.shared, inbox::Pass::Resync));
                    continue;
                }
                Turn::InboxDone => {
                    self.inbox = None;
                    continue;
                }
                Turn::Close(reason) => return reason,
                Turn::Timer => {
                    let now = tokio::time::Instant::now();
                    if now >= self.token_at {
                        return (close::TOKEN_EXPIRED, "token expired");
                    }
                    if now >= self.idle_at {
                        return (close::IDLE, "idle timeout");
                    }
                    let ping = now >= self.ping_at;
                    if ping {
                        self.ping_at = now + self.shared.ping_interval;
                    }
                    timer.as_mut().reset(self.ping_at.min(self.idle_at).min(self.token_at));
                    if !ping {
                        continue;
                    }
                    WsMessage::Ping(Default::default())
                }
                Turn::Write(message) => message,
                Turn::Read(next) => {
                    self.idle_at = tokio::time::Instant::now() + self.shared.idle_timeout;
                    match next {
                        None => return (1000, ""),
                        Some(Err(e)) => return close_for_error(&e).unwrap_or(GONE),
                        Some(Ok(frame)) => match self.on_frame(frame) {
                            Ok(None) => continue,
                            Ok(Some(reply)) => WsMessage::Text(reply.to_text().into()),
                            Err(reason) => return reason,
                        },
                    }
                }
            };
            if let Err(reason) = self.write(reply).await {
                return reason;
            }
        }
    }

    /// Handles one frame from the client: answers it at once (a ping, a refusal, a bad frame) or hands it
    /// to the request worker. `Err`: close the connection.
    fn on_frame(&mut self, frame: WsMessage) -> Result<Option<ServerFrame>, CloseReason> {
        // Every data frame counts against the rate limits, answered or not; a refused one is not handled.
        let parsed = match &frame {
            WsMessage::Text(text) => Some(protocol::parse(text.as_str())),
            _ => None,
        };
        if let WsMessage::Text(_) | WsMessage::Binary(_) = &frame {
            metrics::bump(&self.shared.metrics.frames_in);
            let id = match &parsed {
                Some(Ok(f)) => f.request_id(),
                Some(Err(e)) => e.id.clone(),
                None => None,
            };
            match self.take(id) {
                Ok(()) => {}
                Err(None) => return Err((close::RATE_LIMITED, "rate limit exceeded")),
                Err(Some(refusal)) => {
                    metrics::bump(&self.shared.metrics.rate_limited);
                    return Ok(Some(refusal));
                }
            }
        }
        match frame {
            WsMessage::Text(_) => match parsed {
                // Pings are answered at once; everything else goes to the connection's request worker.
                Some(Ok(ClientFrame::Ping { id })) => Ok(Some(ServerFrame::Pong { id })),
                Some(Ok(request)) => Ok(self.requests.enqueue(request, &self.identity, &self.shared, &self.handle)),
                Some(Err(e)) => Ok(Some(ServerFrame::error(e))),
                None => Ok(None),
            },
            WsMessage::Binary(_) => Ok(Some(ServerFrame::error(FrameError {
                id: None,
                code: ErrorCode::BadFrame,
                message: "binary frames are not part of the protocol".into(),
            }))),
            WsMessage::Close(_) => Err((1000, "")),
            // Pings are answered by tungstenite itself; pongs and raw frames need nothing.
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => Ok(None),
        }
    }

    /// Takes one frame from the connection's and the user's rate limits, or answers the refusal to send
    /// (`None`: close the connection).
    fn take(&mut self, id: Option<String>) -> Result<(), Option<ServerFrame>> {
        let now = Instant::now();
        match self.bucket.take(now).and_then(|()| self.shared.limits.take_user(&self.identity.user, now)) {
            Ok(()) => {
                self.refused = 0;
                Ok(())
            }
            Err(_) if self.refused >= self.patience => Err(None),
            Err(wait) => {
                self.refused += 1;
                let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
                let mut refusal = ServerFrame::error(FrameError {
                    id,
                    code: ErrorCode::RateLimited,
                    message: format!("too many frames; retry in {wait_ms} ms"),
                });
                if let ServerFrame::Error { retry_after_ms, .. } = &mut refusal {
                    *retry_after_ms = Some(wait_ms);
                }
                Err(Some(refusal))
            }
        }
    }

    /// Writes one frame within the write timeout. `Err`: close the connection (a client that has not read
    /// for the whole timeout is too slow, like one whose queue is full).
    async fn write(&mut self, message: WsMessage) -> Result<(), CloseReason> {
        match tokio::time::timeout(self.shared.write_timeout, self.ws.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(GONE),
            Err(_) => Err((close::SLOW_CONSUMER, "client not reading")),
        }
    }

    /// Closes with `reason` and lets go of the connection: what was queued before the close still goes out
    /// (the answers to a client's last frames, such as its `rate_limited` refusals) within one write
    /// timeout in all, unless the client was closed for not reading; then the close frame, and a moment
    /// for the client to answer it. Then presence and the registry, and a last linger on the socket.
    async fn end(mut self, reason: CloseReason) {
        self.handle.close_with(reason);
        let counted = &self.shared.metrics;
        metrics::bump(&counted.closed);
        match reason.0 {
            close::SLOW_CONSUMER => metrics::bump(&counted.closed_slow),
            close::RATE_LIMITED => metrics::bump(&counted.closed_rate_limited),
            _ => {}
        }
        if let Some((_, worker)) = self.requests.worker.take() {
            worker.abort();
        }
        if let Some(inbox) = self.inbox.take() {
            inbox.abort();
        }
        let write_timeout = self.shared.write_timeout;
        if reason != GONE {
            if reason.0 != close::SLOW_CONSUMER {
                let deadline = tokio::time::Instant::now() + write_timeout;
                while let Some(text) = self.handle.take_queued() {
                    match tokio::time::timeout_at(deadline, self.ws.send(WsMessage::Text(text))).await {
                        Ok(Ok(())) => {}
                        _ => break,
                    }
                }
            }
            self.handle.end();
            let frame = CloseFrame { code: CloseCode::from(reason.0), reason: reason.1.into() };
            let _ = tokio::time::timeout(write_timeout, self.ws.send(WsMessage::Close(Some(frame)))).await;
            // A moment for the client to answer the close frame, then no more reading.
            let _ =
                tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = self.ws.next().await {} })
                    .await;
        }
        self.handle.end();

        // Presence first, then the registry: a stopping gateway waits for its registry to empty, so its
        // entries are gone when it exits (otherwise workers would push to it until they expire). A device
        // that connected here again meanwhile is skipped; one that connected elsewhere keeps its entry
        // anyway (the removal compares the connection).
        let (shared, identity, conn_id) = (&self.shared, &self.identity, self.handle.conn_id);
        let current = shared.registry.get(&identity.user, &identity.device).is_some_and(|c| c.conn_id == conn_id);
        if current && let Err(e) = shared.presence.remove(&identity.user, &identity.device, conn_id).await {
            tracing::warn!(user = %identity.user, error = %e, "presence not removed; it expires with its TTL");
        }
        shared.registry.remove(&identity.user, &identity.device, conn_id);
        linger(self.ws.get_mut()).await;
    }
}

/// Queued frames written in a row before the client's side is looked at again.
const WRITES_BEFORE_READING: u32 = 32;

/// The close of a connection whose socket failed: nothing more can be written to it.
const GONE: CloseReason = (1006, "");

/// The close code for a read error, or `None` when the socket is simply gone.
fn close_for_error(e: &tungstenite::Error) -> Option<CloseReason> {
    match e {
        tungstenite::Error::Capacity(_) => Some((close::TOO_BIG, "message too big")),
        tungstenite::Error::Utf8(_) => Some((close::INVALID_PAYLOAD, "text frame is not UTF-8")),
        tungstenite::Error::Protocol(_) => Some((close::PROTOCOL_ERROR, "protocol error")),
        _ => None,
    }
}
