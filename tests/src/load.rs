//! The load generator: many WebSocket clients with small buffers (a tungstenite client pays a 128 KiB read
//! buffer per connection by default), bound to a chosen loopback source address (one address reaches about
//! 28,000 connections to one port), sending at a fixed rate and timing each message twice: send →
//! acknowledgement (`sent`) and send → receipt by the recipient (`message`).
//!
//! Times travel in the frames: a send's id (its client id, unique per sender) and its body carry the
//! microseconds since [`epoch`] at which it was written, so any connection of this process can time it.
//!
//! Deliveries are counted as the protocol counts them: distinct (conversation, number) per receiving
//! connection. Delivery is at least once, so a frame repeated (a push and the inbox's second read) is one
//! delivery, and a repeat can never stand in for a message that did not arrive.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::client::token;
use crate::platform::JWT_SECRET;

/// The instant all of this process's timestamps count from.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// Small buffers: the generator holds tens of thousands of connections.
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4 * 1024).write_buffer_size(0)
}

/// Latencies in microseconds, from 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

/// What every connection of a fleet records.
#[derive(Debug)]
pub struct Recorder {
    pub acked: Mutex<Histogram<u64>>,
    /// Send → receipt of each distinct delivery (a repeat of a number is not timed again).
    pub received: Mutex<Histogram<u64>>,
    /// Only messages sent at or after this (µs since [`epoch`]) are recorded: the warm-up is not.
    pub since_us: AtomicU64,
    /// Distinct deliveries: (conversation, number) pairs, counted once per receiving connection.
    pub messages: AtomicU64,
    /// `message` frames, repeats included.
    pub frames: AtomicU64,
    pub acks: AtomicU64,
    pub errors: AtomicU64,
    pub closed: AtomicU64,
    /// Moved on by [`Recorder::restart`]: each connection then forgets the numbers it had, as the
    /// histograms forget their times (so that a long run does not keep every number of every rate).
    generation: AtomicU64,
}

/// The (conversation, number) pairs one connection has received since the recorder's last restart.
#[derive(Debug, Default)]
pub struct Seen {
    generation: u64,
    numbers: HashSet<(u128, u64)>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            acked: Mutex::new(histogram()),
            received: Mutex::new(histogram()),
            since_us: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }
}

impl Recorder {
    /// Starts recording now, and forgets what was recorded before.
    pub fn restart(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.since_us.store(now_us(), Ordering::Relaxed);
        lock(&self.acked).reset();
        lock(&self.received).reset();
    }

    fn record(&self, which: &Mutex<Histogram<u64>>, sent_us: u64) {
        if sent_us >= self.since_us.load(Ordering::Relaxed) {
            let _ = lock(which).record(now_us().saturating_sub(sent_us).max(1));
        }
    }

    /// Records one frame of the platform's protocol received by a connection that has received `seen` so
    /// far.
    fn on_frame(&self, text: &str, seen: &mut Seen) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else { return };
        match v["type"].as_str() {
            Some("sent") => self.on_ack(v["id"].as_str().unwrap_or_default()),
            Some("message") => {
                self.frames.fetch_add(1, Ordering::Relaxed);
                let conversation = v["conversation_id"].as_str().and_then(|c| uuid::Uuid::parse_str(c).ok());
                if let (Some(conversation), Some(seq)) = (conversation, v["seq"].as_u64()) {
                    self.on_delivery(conversation.as_u128(), seq, v["body"].as_str().unwrap_or_default(), seen);
                }
            }
            Some("error") => self.on_error(),
            _ => {}
        }
    }

    /// An acknowledgement of the send stamped `stamp` (see [`stamp`]).
    pub fn on_ack(&self, stamp: &str) {
        self.acks.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = sent_at(stamp) {
            self.record(&self.acked, t);
        }
    }

    /// Message `seq` of `stream` (a conversation, a channel) arrived at a connection that has received
    /// `seen` so far, stamped `stamp`: a delivery unless that connection had it already.
    pub fn on_delivery(&self, stream: u128, seq: u64, stamp: &str, seen: &mut Seen) {
        let generation = self.generation.load(Ordering::Relaxed);
        if seen.generation != generation {
            seen.numbers.clear();
            seen.generation = generation;
        }
        if !seen.numbers.insert((stream, seq)) {
            return;
        }
        self.messages.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = sent_at(stamp) {
            self.record(&self.received, t);
        }
    }

    /// A send refused or failed.
    pub fn on_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The send time carried by an id or body: `t<µs>-...`.
fn sent_at(s: &str) -> Option<u64> {
    s.strip_prefix('t')?.split('-').next()?.parse().ok()
}

/// The stamp of send `n` made now: `t<µs since epoch>-<n>`, carried as a send's id and body. The time has a
/// fixed width, so that a sender's ids grow byte by byte as the SDK's do (a chat service knows such an id
/// new without a store read).
pub fn stamp(n: u64) -> String {
    format!("t{:014}-{n}", now_us())
}

/// A connection that can send one message to a conversation (or a channel) at a time: ours, or a peer's.
pub trait Sender {
    /// Sends message `n`, stamped now, to `to`; false if the connection is gone.
    fn send(&self, to: &str, n: u64) -> bool;
}

impl Sender for Conn {
    fn send(&self, to: &str, n: u64) -> bool {
        Conn::send(self, to, n)
    }
}

/// One client connection: a reader task feeding the recorder (and answering pings), and a writer task.
pub struct Conn {
    pub user: String,
    out: mpsc::UnboundedSender<Message>,
}

impl Conn {
    /// Sends a message into `conversation`, stamped with the time now; `n` makes the id unique.
    pub fn send(&self, conversation: &str, n: u64) -> bool {
        let stamp = stamp(n);
        let frame = serde_json::json!({
            "v": 1, "type": "send", "id": &stamp, "conversation_id": conversation, "body": &stamp,
        });
        self.out.send(Message::text(frame.to_string())).is_ok()
    }

    /// Closes the connection (the tasks end when the gateway answers).
    pub fn close(&self) {
        let _ = self.out.send(Message::Close(None));
    }
}

/// Opens one connection from `source` to the gateway at `gw` as `user`, and starts its tasks.
pub async fn connect(gw: SocketAddr, source: IpAddr, user: &str, recorder: Arc<Recorder>) -> anyhow::Result<Conn> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("binding {source}"))?;
    let stream: TcpStream = tokio::time::timeout(Duration::from_secs(10), socket.connect(gw)).await??;
    stream.set_nodelay(true)?;
    let mut req = format!("ws://{gw}/v1/ws?device_id=load").into_client_request()?;
    req.headers_mut().insert(http::header::AUTHORIZATION, format!("Bearer {}", token(user, JWT_SECRET)).parse()?);
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::client_async_with_config(req, stream, Some(client_config())),
    )
    .await??;
    Ok(spawn(ws, user, recorder))
}

fn spawn(ws: WebSocketStream<TcpStream>, user: &str, recorder: Arc<Recorder>) -> Conn {
    let (mut sink, mut stream) = ws.split();
    let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let closing = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || closing {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut seen = Seen::default();
        while let Some(Ok(m)) = stream.next().await {
            if let Message::Text(t) = m {
                recorder.on_frame(t.as_str(), &mut seen);
            }
        }
        recorder.closed.fetch_add(1, Ordering::Relaxed);
    });
    Conn { user: user.to_owned(), out }
}

/// Opens connections for `users` (at most `parallel` handshakes at a time), each from the next of
/// `sources`; answers those that connected, in the order of `users` (None where one failed).
pub async fn connect_many(
    gw: SocketAddr,
    sources: &[IpAddr],
    users: &[String],
    parallel: usize,
    recorder: Arc<Recorder>,
) -> Vec<Option<Conn>> {
    futures::stream::iter(users.iter().enumerate())
        .map(|(i, u)| {
            let source = sources[i % sources.len()];
            let recorder = recorder.clone();
            async move { connect(gw, source, u, recorder).await.ok() }
        })
        .buffered(parallel.max(1))
        .collect()
        .await
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

/// Sends `rate` messages a second for `period`, spread over `senders` (each with its conversation) in turn;
/// answers how many were sent.
pub async fn send_at_rate<S: Sender>(senders: &[(&S, &str)], rate: u64, period: Duration, counter: &AtomicU64) -> u64 {
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while start.elapsed() < period {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let (conn, conv) = senders[(sent as usize) % senders.len()];
            conn.send(conv, counter.fetch_add(1, Ordering::Relaxed));
            sent += 1;
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_grow_byte_by_byte_and_carry_their_time() {
        let first = stamp(9);
        std::thread::sleep(Duration::from_millis(2));
        let later = stamp(10);
        assert!(later > first, "{later} after {first}");
        assert!(sent_at(&later).is_some_and(|t| t > sent_at(&first).unwrap_or(u64::MAX)));
        assert_eq!(sent_at("t00000000001234-7"), Some(1234));
    }

    #[test]
    fn deliveries_are_distinct_numbers_per_connection() {
        let r = Recorder::default();
        let frame = |conv: &str, seq: u64| {
            serde_json::json!({"type": "message", "conversation_id": conv, "seq": seq, "body": "t1-0"}).to_string()
        };
        let (c1, c2) = ("01900000-0000-7000-8000-000000000001", "01900000-0000-7000-8000-000000000002");
        let (mut one, mut other) = (Seen::default(), Seen::default());
        for (conv, seq) in [(c1, 1), (c1, 1), (c1, 2), (c2, 1), (c1, 2)] {
            r.on_frame(&frame(conv, seq), &mut one);
        }
        // The same number at another connection is another delivery.
        r.on_frame(&frame(c1, 1), &mut other);
        assert_eq!(r.frames.load(Ordering::Relaxed), 6);
        assert_eq!(r.messages.load(Ordering::Relaxed), 4);
        assert_eq!(lock(&r.received).len(), 4, "a repeat is not timed again");
        // After a restart a connection counts afresh.
        r.restart();
        r.on_frame(&frame(c1, 1), &mut one);
        assert_eq!(r.messages.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn a_stamp_reads_back() {
        assert_eq!(sent_at("t1234-7"), Some(1234));
        assert_eq!(sent_at("x1234"), None);
        assert_eq!(sent_at("t-1"), None);
    }
}
