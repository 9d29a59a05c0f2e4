//! One client connection, from the moment it is upgraded: register, sync the inbox, then live until closed.
//!
//! Per connection there are three tasks: this one reads frames; the writer owns the socket's sink and is fed
//! by the bounded send queue; the request worker (`requests.rs`) calls the chat service one request at a
//! time (so one client's sends keep their order). A fourth, short-lived task sends the inbox at connect
//! (`inbox.rs`). `frames.rs` turns the chat service's answers into client frames; `typing.rs` routes typing
//! indicators.

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
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};

use crate::auth::Identity;
use crate::chat_pool::ChatPool;
use crate::limits::{Bucket, Limits};
use crate::protocol::{self, ClientFrame, ErrorCode, FrameError, ServerFrame, close};
use crate::registry::{CONNECTED_AGAIN, CloseReason, ConnHandle, Registry};
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
}

pub async fn run<S>(ws: WebSocketStream<S>, identity: Identity, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn_id = shared.registry.next_conn_id();
    // The bug of failpoint `gateway-unbounded-queue`, which the slow-client scenario must catch.
    let send_queue = if lifecycle::failpoint("gateway-unbounded-queue") { 1 << 24 } else { shared.send_queue };
    let (out_tx, out_rx) = mpsc::channel::<Utf8Bytes>(send_queue);
    let (close_tx, close_rx) = watch::channel::<Option<CloseReason>>(None);
    let handle = Arc::new(ConnHandle::new(
        conn_id,
        identity.user.clone(),
        identity.device.clone(),
        out_tx.clone(),
        close_tx,
        send_queue,
    ));
    // The bug of failpoint `gateway-keep-replaced`, which the tests of close code 4000 must catch: the
    // device's older connection, on this gateway or another, is left open.
    let keep_replaced = lifecycle::failpoint("gateway-keep-replaced");
    if let Some(old) = shared.registry.insert(handle.clone())
        && !keep_replaced
    {
        old.close_with(CONNECTED_AGAIN);
    }
    let (sink, stream) = ws.split();
    let token_left = Duration::from_secs(u64::try_from(identity.expires_at - chat_model::now_ms() / 1000).unwrap_or(0));
    let writer = tokio::spawn(write_loop(
        sink,
        out_rx,
        handle.clone(),
        shared.shutdown.clone(),
        token_left,
        shared.write_timeout,
        shared.ping_interval,
    ));

    // The device is known (it gets an inbox) and present before the client hears anything: once a client has
    // its welcome, every message for it is either pushed or kept.
    let holder = Holder { user: &identity.user, device: &identity.device, conn_id };
    match Box::pin(shared.presence.set(&[holder])).await {
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
    let register =
        v1::RegisterDeviceRequest { user_id: identity.user.to_string(), device_id: identity.device.to_string() };
    let timeout = shared.rpc_timeout;
    let registered = shared.chat.call(|mut c| {
        let r = with_deadline(register.clone(), timeout);
        async move { c.register_device(r).await }
    });
    match Box::pin(registered).await {
        Ok(_) => handle.registered.store(true, std::sync::atomic::Ordering::Relaxed),
        Err(e) => tracing::warn!(user = %identity.user, error = %e,
            "device not registered yet; the presence refresh tries again (until then, only presence routes to it)"),
    }
    let welcome = ServerFrame::Welcome {
        user_id: identity.user.to_string(),
        device_id: identity.device.to_string(),
        session_id: format!("{conn_id}"),
    };
    let _ = out_tx.send(welcome.to_text().into()).await;

    let inbox_task = tokio::spawn({
        let (handle, identity, shared, out_tx) = (handle.clone(), identity.clone(), shared.clone(), out_tx.clone());
        async move { inbox::inbox(&handle, &identity, &shared, &out_tx).await }
    });
    let mut requests = Requests { identity: &identity, shared: &shared, out_tx: &out_tx, worker: None };

    let limits = shared.limits.config();
    let mut limiter = Limiter {
        limits: &shared.limits,
        user: &identity.user,
        bucket: Bucket::new(limits.connection_rate, limits.connection_burst),
        refused: 0,
        patience: limits.connection_burst.max(10),
    };
    let mut stream = stream;
    read_loop(&mut stream, &handle, &mut requests, &out_tx, close_rx, &mut limiter, shared.idle_timeout).await;

    handle.close_with((1000, ""));
    let worker = requests.worker.take().map(|(tx, task)| {
        drop(tx);
        task
    });
    drop(out_tx);
    inbox_task.abort();
    // The writer bounds itself (what was queued, the close frame and the close, one write timeout each);
    // waiting that long keeps the socket until the close frame is out, so that `linger` runs after it: a
    // slow client that still had pings to answer would otherwise get a reset, which discards the close
    // frame it had not read yet.
    let writer_bound = shared.write_timeout * 3 + Duration::from_secs(1);
    let sink = tokio::time::timeout(writer_bound, writer).await.ok().and_then(Result::ok);
    if let Some(worker) = worker {
        worker.abort();
    }
    // Presence first, then the registry: a stopping gateway waits for its registry to empty, so its entries
    // are gone when it exits (otherwise workers would push to it until they expire). A device that
    // connected here again meanwhile is skipped; one that connected elsewhere keeps its entry anyway (the
    // removal compares the connection).
    let current = shared.registry.get(&identity.user, &identity.device).is_some_and(|c| c.conn_id == conn_id);
    if current && let Err(e) = Box::pin(shared.presence.remove(&identity.user, &identity.device, conn_id)).await {
        tracing::warn!(user = %identity.user, error = %e, "presence not removed; it expires with its TTL");
    }
    shared.registry.remove(&identity.user, &identity.device, conn_id);
    if let Some(sink) = sink
        && let Ok(mut ws) = stream.reunite(sink)
    {
        linger(ws.get_mut()).await;
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

/// A connection's rate limit: its own bucket and its user's shared one.
struct Limiter<'a> {
    limits: &'a Limits,
    user: &'a UserId,
    bucket: Bucket,
    /// Frames refused since the last one taken.
    refused: u32,
    /// Refused frames in a row after which the connection is closed (4029).
    patience: u32,
}

impl Limiter<'_> {
    /// Takes one frame, or answers the refusal to send (`None`: close the connection).
    fn take(&mut self, id: Option<String>) -> Result<(), Option<ServerFrame>> {
        let now = Instant::now();
        match self.bucket.take(now).and_then(|()| self.limits.take_user(self.user, now)) {
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
}

async fn read_loop<S>(
    stream: &mut futures::stream::SplitStream<WebSocketStream<S>>,
    handle: &ConnHandle,
    requests: &mut Requests<'_>,
    out_tx: &mpsc::Sender<Utf8Bytes>,
    mut close_rx: watch::Receiver<Option<CloseReason>>,
    limiter: &mut Limiter<'_>,
    idle_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    loop {
        let next = tokio::select! {
            // Closing first, then frames, then silence (a frame waiting while the reader was busy is not idle).
            biased;
            _ = async { let _ = close_rx.wait_for(|c| c.is_some()).await; } => {
                // We are closing: give the client a moment to answer our close frame, then stop reading.
                let _ = tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = stream.next().await {} }).await;
                return;
            }
            next = stream.next() => {
                idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                next
            }
            () = &mut idle => {
                handle.close_with((close::IDLE, "idle timeout"));
                continue;
            }
        };
        let frame = match next {
            None => return,
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                if let Some(reason) = close_for_error(&e) {
                    handle.close_with(reason);
                    continue;
                }
                return;
            }
        };
        // Every data frame counts against the rate limits, answered or not; a refused one is not handled.
        let parsed = match &frame {
            WsMessage::Text(text) => Some(protocol::parse(text.as_str())),
            _ => None,
        };
        if let WsMessage::Text(_) | WsMessage::Binary(_) = &frame {
            let id = match &parsed {
                Some(Ok(f)) => f.request_id(),
                Some(Err(e)) => e.id.clone(),
                None => None,
            };
            match limiter.take(id) {
                Ok(()) => {}
                Err(None) => {
                    handle.close_with((close::RATE_LIMITED, "rate limit exceeded"));
                    continue;
                }
                Err(Some(refusal)) => {
                    if out_tx.send(refusal.to_text().into()).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
        }
        match frame {
            WsMessage::Text(_) => {
                let Some(parsed) = parsed else { continue };
                let reply = match parsed {
                    // Pings are answered at once; everything else goes to the connection's request worker.
                    Ok(ClientFrame::Ping { id }) => Some(ServerFrame::Pong { id }),
                    Ok(request) => requests.enqueue(request).await,
                    Err(e) => Some(ServerFrame::error(e)),
                };
                if let Some(reply) = reply
                    && out_tx.send(reply.to_text().into()).await.is_err()
                {
                    return;
                }
            }
            WsMessage::Binary(_) => {
                let e = FrameError {
                    id: None,
                    code: ErrorCode::BadFrame,
                    message: "binary frames are not part of the protocol".into(),
                };
                if out_tx.send(ServerFrame::error(e).to_text().into()).await.is_err() {
                    return;
                }
            }
            WsMessage::Close(_) => return,
            // Pings are answered by tungstenite itself; pongs and raw frames need nothing.
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
        }
    }
}

/// The close code for a read error, or `None` when the socket is simply gone.
fn close_for_error(e: &tungstenite::Error) -> Option<CloseReason> {
    match e {
        tungstenite::Error::Capacity(_) => Some((close::TOO_BIG, "message too big")),
        tungstenite::Error::Utf8(_) => Some((close::INVALID_PAYLOAD, "text frame is not UTF-8")),
        tungstenite::Error::Protocol(_) => Some((close::PROTOCOL_ERROR, "protocol error")),
        _ => None,
    }
}

/// Writes queued frames until a close; answers the sink (for the session to linger on the socket).
async fn write_loop<S>(
    mut sink: futures::stream::SplitSink<WebSocketStream<S>, WsMessage>,
    mut out_rx: mpsc::Receiver<Utf8Bytes>,
    handle: Arc<ConnHandle>,
    mut shutdown: watch::Receiver<bool>,
    token_left: Duration,
    write_timeout: Duration,
    ping_interval: Duration,
) -> futures::stream::SplitSink<WebSocketStream<S>, WsMessage>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut close_rx = handle.closing();
    let token_expiry = tokio::time::sleep(token_left);
    tokio::pin!(token_expiry);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason: CloseReason = loop {
        tokio::select! {
            biased;
            r = async { close_rx.wait_for(|c| c.is_some()).await.ok().and_then(|c| *c) } => {
                break r.unwrap_or((1000, ""));
            }
            _ = stopped(&mut shutdown) => break (close::GOING_AWAY, "gateway shutting down, reconnect"),
            _ = &mut token_expiry => break (close::TOKEN_EXPIRED, "token expired"),
            _ = ping.tick() => {
                match tokio::time::timeout(write_timeout, sink.send(WsMessage::Ping(Default::default()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return sink,
                    Err(_) => break (close::SLOW_CONSUMER, "client not reading"),
                }
            }
            frame = out_rx.recv() => {
                let Some(text) = frame else { break (1000, "") };
                match tokio::time::timeout(write_timeout, sink.send(WsMessage::Text(text))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return sink,
                    // The client has not read for the whole timeout: too slow, like a full queue.
                    Err(_) => break (close::SLOW_CONSUMER, "client not reading"),
                }
            }
        }
    };
    // A close decided here (shutdown, token expiry, a write timeout) is the connection's close too: the
    // reader then gives the client a moment to answer the close frame and stops, rather than waiting for
    // the client (a stopping gateway waits for its sessions to end, and then for nobody).
    handle.close_with(reason);
    // What was queued before the close still goes out (the answers to a client's last frames, such as its
    // `rate_limited` refusals), within one write timeout in all; not to a client closed for not reading.
    if reason.0 != close::SLOW_CONSUMER {
        let deadline = tokio::time::Instant::now() + write_timeout;
        while let Ok(text) = out_rx.try_recv() {
            match tokio::time::timeout_at(deadline, sink.send(WsMessage::Text(text))).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    }
    let frame = CloseFrame { code: CloseCode::from(reason.0), reason: reason.1.into() };
    let _ = tokio::time::timeout(write_timeout, sink.send(WsMessage::Close(Some(frame)))).await;
    let _ = tokio::time::timeout(write_timeout, sink.close()).await;
    sink
}
