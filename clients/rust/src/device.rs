//! [`Device`]: a chat app's device as `docs/protocol.md` describes it, running as a task, built to report
//! what the servers did rather than to repair it.
//!
//! It reconnects (to the next gateway) whenever its connection ends, retries unanswered sends with the same
//! id, resumes every conversation it knows by cursor after each connect, deduplicates by number, and shows
//! messages in order. What it records is the truth of the wire: per (conversation, number), every way the
//! message arrived ([`Channel`]: its own `sent` answer, pushed live, from the inbox, or read from history),
//! when, in which session, and with which message id. A number seen with two message ids, or a live push
//! of a number below one already pushed in the same session, is a [`violation`](Report::violations), and
//! [`Device::wait_shown`] fails at once on one. Filling gaps from history (protocol rule 2) and resuming
//! from history (rule 4) are [`Rules`], so that a scenario can require that only the push or the inbox path
//! delivered: a device that fills no gap shows nothing past a number the servers failed to deliver.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::Broken;

/// Answers a valid token for the device's user (asked at every connect).
pub type TokenSource = Arc<dyn Fn() -> String + Send + Sync>;

/// Fails with a [`Broken`] error.
macro_rules! broken {
    ($($arg:tt)+) => {
        return Err(anyhow::Error::new(Broken(format!($($arg)+))))
    };
}

/// A send's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    pub message_id: String,
    pub duplicate: bool,
}

/// How a message reached the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// The answer (`sent`) to the device's own send.
    Own,
    /// A live `message` frame.
    Pushed,
    /// A `message` frame marked `inbox` (sent from the device's inbox at connect or at a resync).
    Inbox,
    /// An entry of a `history` answer.
    History,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Own, Channel::Pushed, Channel::Inbox, Channel::History];
}

/// Everything that arrived for one (conversation, number).
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The message id of the first arrival (a later one with another id is a violation).
    pub message_id: String,
    /// The body, when the arrival carried one (`sent` answers do not; the device knows its own).
    pub body: Option<String>,
    /// Who sent it (the device's own user for its own sends).
    pub sender: Option<String>,
    /// Per channel: when it first came by that channel, in which session, and how many times in all.
    pub by: BTreeMap<Channel, Came>,
}

#[derive(Debug, Clone, Copy)]
pub struct Came {
    pub first_at: Instant,
    pub session: usize,
    pub times: u32,
}

impl Arrival {
    /// When it first arrived, by any channel.
    pub fn first_at(&self) -> Instant {
        self.by.values().map(|c| c.first_at).min().unwrap_or_else(Instant::now)
    }

    /// How many times it arrived, by all channels together.
    pub fn times(&self) -> u32 {
        self.by.values().map(|c| c.times).sum()
    }
}

/// One connection of the device: from its upgrade to its end.
#[derive(Debug, Clone)]
pub struct Session {
    pub gateway: SocketAddr,
    pub started: Instant,
    /// When `synced` came: from then on every message for the device is pushed (or, where a push failed,
    /// kept in the inbox and sent at a resync).
    pub synced: Option<Instant>,
    pub ended: Option<Instant>,
    /// The close code the gateway sent, if the session ended with one.
    pub close_code: Option<u16>,
}

/// What a device saw, for the checks at the end of a scenario.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Per conversation and number, what arrived.
    pub arrivals: HashMap<String, BTreeMap<u64, Arrival>>,
    /// Every (channel, session) by which each (conversation, number) arrived, in arrival order.
    pub trail: HashMap<String, BTreeMap<u64, Vec<(Channel, usize)>>>,
    /// Per conversation, the (seq, message id) shown to the user, in the order shown.
    pub shown: HashMap<String, Vec<(u64, String)>>,
    /// Per conversation, when each number was shown.
    pub shown_at: HashMap<String, HashMap<u64, Instant>>,
    /// Broken promises seen on the wire (two ids at one number; a live push out of order).
    pub violations: Vec<String>,
    pub sessions: Vec<Session>,
    /// Sends put on the wire again (after a reconnect, an `unavailable`, or no answer in time).
    pub resends: u64,
    /// `sent` answers with `duplicate: true`.
    pub duplicate_acks: u64,
}

impl Report {
    /// Messages that arrived (all channels but `Own`), counting every repeat.
    pub fn raw_messages(&self) -> u64 {
        self.count(|c| c != Channel::Own, u64::from)
    }

    /// Arrivals beyond the first of each number: what the client had to drop.
    pub fn raw_duplicates(&self) -> u64 {
        self.arrivals.values().flat_map(|a| a.values()).map(|a| u64::from(a.times().saturating_sub(1))).sum()
    }

    /// Numbers that first arrived by `channel`, over all conversations.
    pub fn first_by(&self, channel: Channel) -> u64 {
        let mut n = 0;
        for a in self.arrivals.values().flat_map(|a| a.values()) {
            let first = a.by.iter().min_by_key(|(_, c)| c.first_at).map(|(ch, _)| *ch);
            if first == Some(channel) {
                n += 1;
            }
        }
        n
    }

    /// Distinct numbers that arrived by `channel` at least once, over all conversations.
    pub fn numbers_by(&self, channel: Channel) -> u64 {
        self.count(|c| c == channel, |_| 1)
    }

    fn count(&self, channel: impl Fn(Channel) -> bool, each: impl Fn(u32) -> u64) -> u64 {
        let mut n = 0;
        for a in self.arrivals.values().flat_map(|a| a.values()) {
            for (c, came) in &a.by {
                if channel(*c) {
                    n += each(came.times);
                }
            }
        }
        n
    }

    /// Connections after the first.
    pub fn reconnects(&self) -> u64 {
        self.sessions.len().saturating_sub(1) as u64
    }

    /// The close codes the gateway sent, in order.
    pub fn close_codes(&self) -> Vec<u16> {
        self.sessions.iter().filter_map(|s| s.close_code).collect()
    }

    /// The session that was live (synced, not ended) at `at`, if any.
    pub fn live_at(&self, at: Instant) -> Option<usize> {
        self.sessions.iter().position(|s| s.synced.is_some_and(|t| t <= at) && s.ended.is_none_or(|e| e > at))
    }
}

/// Which of the protocol's client rules the device follows.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Rule 2: ask history for a gap still open after a short grace. Off, a number the servers failed to
    /// deliver holds everything after it back, and only push and inbox deliver while a session lasts.
    pub fill_gaps: bool,
    /// Rule 4: read each conversation's history from the cursor after every connect. Off, only the inbox
    /// can bring what was missed while away.
    pub resume: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { fill_gaps: true, resume: true }
    }
}

impl Rules {
    /// What the fault scenarios use: no gap filling (push and inbox must deliver), resume after a reconnect.
    pub const STRICT: Rules = Rules { fill_gaps: false, resume: true };
    /// Only push and the inbox deliver: no history at all.
    pub const INBOX_ONLY: Rules = Rules { fill_gaps: false, resume: false };
}

enum Cmd {
    Send { conversation: String, id: String, body: String, done: oneshot::Sender<anyhow::Result<Ack>> },
    Disconnect,
    Stop,
}

/// What [`Device::wait_shown`] watches.
#[derive(Debug, Default, Clone)]
struct Progress {
    /// Per conversation, the highest number shown (everything up to it was).
    shown: HashMap<String, u64>,
    violations: usize,
}

pub struct Device {
    pub user: String,
    pub device: String,
    cmds: mpsc::UnboundedSender<Cmd>,
    progress: watch::Receiver<Progress>,
    report: Arc<Mutex<Report>>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Conv {
    /// The highest number shown; everything up to it was shown, in order.
    last: u64,
    /// Received above `last + 1`, waiting for the gap to close.
    pending: BTreeMap<u64, String>,
    /// A history request is in flight, since then.
    asking: Option<Instant>,
    /// Reading history after a (re)connect until caught up with the conversation's last number.
    resuming: bool,
    /// Since when a gap has been open (numbers held above a missing one).
    gap_since: Option<Instant>,
    /// The last number acknowledged with `delivered`.
    acked: u64,
    /// The highest number pushed live in the current session (pushes of one conversation come in order).
    top_pushed: u64,
}

struct Outgoing {
    conversation: String,
    body: String,
    done: Option<oneshot::Sender<anyhow::Result<Ack>>>,
    /// When it was last put on the wire; unanswered for [`RESEND_AFTER`], it is sent again.
    sent_at: Option<tokio::time::Instant>,
    /// Put on the wire at least once.
    sent_once: bool,
}

/// How long [`Device::send`] retries before it fails.
pub const SEND_PATIENCE: Duration = Duration::from_secs(90);

/// How long a send may stay unanswered on a live connection before the client sends it again.
const RESEND_AFTER: Duration = Duration::from_secs(3);

const HISTORY_PAGE: u64 = 200;

/// How long a history request may stay unanswered before it is asked again.
const HISTORY_PATIENCE: Duration = Duration::from_secs(30);

/// How long a gap may stay open before the client asks for the missing numbers (protocol rule 2).
const GAP_GRACE: Duration = Duration::from_millis(500);

impl Device {
    /// Starts the device on `gateways[first]` with the protocol's rules; it knows `conversations` (and any
    /// it receives a message of).
    pub fn spawn(
        user: &str,
        device: &str,
        token: TokenSource,
        gateways: Vec<SocketAddr>,
        first: usize,
        conversations: &[String],
    ) -> Device {
        Self::spawn_with(user, device, token, gateways, first, conversations, Rules::default())
    }

    /// Starts the device with the given [`Rules`].
    pub fn spawn_with(
        user: &str,
        device: &str,
        token: TokenSource,
        gateways: Vec<SocketAddr>,
        first: usize,
        conversations: &[String],
        rules: Rules,
    ) -> Device {
        let (cmds, rx) = mpsc::unbounded_channel();
        let known: HashMap<String, u64> = conversations.iter().map(|c| (c.clone(), 0)).collect();
        let (progress_tx, progress) = watch::channel(Progress { shown: known.clone(), violations: 0 });
        let report = Arc::new(Mutex::new(Report::default()));
        let runner = Runner {
            user: user.to_owned(),
            device: device.to_owned(),
            token,
            gateways,
            next_gateway: first,
            rules,
            convs: known.keys().map(|c| (c.clone(), Conv::default())).collect(),
            outbox: BTreeMap::new(),
            bodies: HashMap::new(),
            session: 0,
            progress: progress_tx,
            report: report.clone(),
        };
        let task = tokio::spawn(runner.run(rx));
        Device { user: user.to_owned(), device: device.to_owned(), cmds, progress, report, task }
    }

    /// Sends a message; retried with the same id across failures and reconnects until answered, for at
    /// most [`SEND_PATIENCE`].
    pub async fn send(&self, conversation: &str, id: &str, body: &str) -> anyhow::Result<Ack> {
        let (done, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Send { conversation: conversation.into(), id: id.into(), body: body.into(), done })
            .map_err(|_| anyhow!("device stopped"))?;
        match tokio::time::timeout(SEND_PATIENCE, rx).await {
            Ok(answer) => answer.map_err(|_| anyhow!("device stopped"))?,
            Err(_) => anyhow::bail!("{}/{}: send {id} unanswered after {SEND_PATIENCE:?}", self.user, self.device),
        }
    }

    /// Drops the connection (as a network failure would); the device reconnects to the next gateway.
    pub fn disconnect(&self) {
        let _ = self.cmds.send(Cmd::Disconnect);
    }

    /// Waits until the device has shown every number up to `seq` in `conversation`. Fails at once when the
    /// device sees a broken promise on the wire (a [`Broken`] error), and after
    /// `within` with what arrived and what is missing.
    pub async fn wait_shown(&mut self, conversation: &str, seq: u64, within: Duration) -> anyhow::Result<()> {
        let reached = tokio::time::timeout(within, async {
            self.progress
                .wait_for(|p| p.violations > 0 || p.shown.get(conversation).is_some_and(|s| *s >= seq))
                .await
                .is_ok()
        })
        .await;
        let report = self.report();
        if let Some(v) = report.violations.first() {
            broken!("{}/{}: {v}", self.user, self.device);
        }
        if reached == Ok(true) {
            return Ok(());
        }
        let at = self.progress.borrow().shown.get(conversation).copied().unwrap_or(0);
        let arrived = report.arrivals.get(conversation);
        let missing: Vec<u64> =
            (at + 1..=seq).filter(|n| arrived.is_none_or(|a| !a.contains_key(n))).take(10).collect();
        broken!(
            "{}/{}: showed up to {at} of {seq} in {conversation} within {within:?}; never arrived (first 10): \
             {missing:?}; {} sessions",
            self.user,
            self.device,
            report.sessions.len()
        )
    }

    pub fn report(&self) -> Report {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the device and answers what it saw. Fails if the device does not stop within 30 s (a socket
    /// write that never completes), rather than waiting on it.
    pub async fn stop(mut self) -> anyhow::Result<Report> {
        let _ = self.cmds.send(Cmd::Stop);
        if tokio::time::timeout(Duration::from_secs(30), &mut self.task).await.is_err() {
            self.task.abort();
            anyhow::bail!("{}/{}: did not stop within 30 s", self.user, self.device);
        }
        Ok(self.report.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

struct Runner {
    user: String,
    device: String,
    token: TokenSource,
    gateways: Vec<SocketAddr>,
    next_gateway: usize,
    rules: Rules,
    convs: HashMap<String, Conv>,
    /// Sends not answered yet, by id: sent again after every reconnect.
    outbox: BTreeMap<String, Outgoing>,
    /// The bodies of this device's own sends, by id (a `sent` answer carries none).
    bodies: HashMap<String, String>,
    /// The index of the current session in the report.
    session: usize,
    progress: watch::Sender<Progress>,
    report: Arc<Mutex<Report>>,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum End {
    Reconnect(Option<u16>),
    Stop,
}

impl Runner {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            let gw = self.gateways[self.next_gateway % self.gateways.len()];
            self.next_gateway += 1;
            let ws = match self.connect(gw).await {
                Ok(ws) => ws,
                Err(_) => {
                    // Take commands meanwhile, so sends queue up and a stop is honoured.
                    if self.drain_commands(&mut cmds) {
                        return self.fail_outbox();
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            self.session = {
                let mut report = self.lock();
                report.sessions.push(Session {
                    gateway: gw,
                    started: Instant::now(),
                    synced: None,
                    ended: None,
                    close_code: None,
                });
                report.sessions.len() - 1
            };
            let end = self.session(ws, &mut cmds).await;
            let close_code = match end {
                End::Reconnect(code) => code,
                End::Stop => None,
            };
            if let Some(s) = self.lock().sessions.last_mut() {
                s.ended = Some(Instant::now());
                s.close_code = close_code;
            }
            if let End::Stop = end {
                return self.fail_outbox();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Report> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail_outbox(&mut self) {
        for (_, o) in std::mem::take(&mut self.outbox) {
            if let Some(done) = o.done {
                let _ = done.send(Err(anyhow!("device stopped")));
            }
        }
    }

    fn queue(&mut self, conversation: String, id: String, body: String, done: oneshot::Sender<anyhow::Result<Ack>>) {
        self.bodies.insert(id.clone(), body.clone());
        self.outbox.insert(id, Outgoing { conversation, body, done: Some(done), sent_at: None, sent_once: false });
    }

    /// Takes queued commands while disconnected; true when one of them is Stop.
    fn drain_commands(&mut self, cmds: &mut mpsc::UnboundedReceiver<Cmd>) -> bool {
        while let Ok(cmd) = cmds.try_recv() {
            match cmd {
                Cmd::Send { conversation, id, body, done } => self.queue(conversation, id, body, done),
                Cmd::Disconnect => {}
                Cmd::Stop => return true,
            }
        }
        false
    }

    async fn connect(&self, gw: SocketAddr) -> anyhow::Result<Ws> {
        let url = format!("ws://{gw}/v1/ws?device_id={}", self.device);
        let mut req = url.into_client_request()?;
        req.headers_mut().insert(http::header::AUTHORIZATION, format!("Bearer {}", (self.token)()).parse()?);
        let (ws, _) = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(req)).await??;
        Ok(ws)
    }

    async fn session(&mut self, mut ws: Ws, cmds: &mut mpsc::UnboundedReceiver<Cmd>) -> End {
        for c in self.convs.values_mut() {
            c.asking = None;
            c.resuming = self.rules.resume;
            c.top_pushed = 0;
        }
        // Resume every known conversation by cursor, and send again what is unanswered.
        if self.rules.resume {
            let names: Vec<String> = self.convs.keys().cloned().collect();
            for conv in names {
                if self.ask_history(&mut ws, &conv).await.is_err() {
                    return End::Reconnect(None);
                }
            }
        }
        for o in self.outbox.values_mut() {
            o.sent_at = None;
        }
        if self.resend_due(&mut ws).await.is_err() {
            return End::Reconnect(None);
        }
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                frame = ws.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(c))) => return End::Reconnect(c.map(|c| u16::from(c.code))),
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => return End::Reconnect(None),
                    };
                    let Ok(f) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                    if self.on_frame(&mut ws, f).await.is_err() {
                        return End::Reconnect(None);
                    }
                }
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Send { conversation, id, body, done }) => {
                        self.queue(conversation, id, body, done);
                        if self.resend_due(&mut ws).await.is_err() {
                            return End::Reconnect(None);
                        }
                    }
                    Some(Cmd::Disconnect) => return End::Reconnect(None),
                    Some(Cmd::Stop) | None => {
                        self.close_handshake(&mut ws).await;
                        return End::Stop;
                    }
                },
                _ = tick.tick() => {
                    if self.on_tick(&mut ws).await.is_err() {
                        return End::Reconnect(None);
                    }
                }
            }
        }
    }

    /// Closes as a client should: sends the close frame, then reads until the gateway's close frame (at
    /// most 5 s). What the gateway sent before it saw the close still arrives and is recorded, and once this
    /// returns the gateway has stopped taking pushes for this connection (they go to the inbox): the device is
    /// offline in the servers' eyes, not only in its own.
    async fn close_handshake(&mut self, ws: &mut Ws) {
        if ws.close(None).await.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, ws.next()).await {
            match frame {
                Message::Text(t) => {
                    if let Ok(f) = serde_json::from_str::<Value>(t.as_str()) {
                        // Acknowledgements cannot be sent after the close frame; the frame is still recorded.
                        let _ = self.on_frame(ws, f).await;
                    }
                }
                Message::Close(_) => return,
                _ => {}
            }
        }
    }

    async fn on_frame(&mut self, ws: &mut Ws, f: Value) -> anyhow::Result<()> {
        match f["type"].as_str() {
            Some("synced") => {
                let session = self.session;
                if let Some(s) = self.lock().sessions.get_mut(session) {
                    s.synced = Some(Instant::now());
                }
            }
            Some("message") => {
                let conv = f["conversation_id"].as_str().unwrap_or_default().to_owned();
                let channel = if f["inbox"].as_bool() == Some(true) { Channel::Inbox } else { Channel::Pushed };
                let seq = f["seq"].as_u64().unwrap_or(0);
                let id = f["message_id"].as_str().unwrap_or_default();
                self.accept(&conv, seq, (id, f["body"].as_str(), f["sender_id"].as_str()), channel);
            }
            Some("sent") => {
                let id = f["id"].as_str().unwrap_or_default().to_owned();
                let conv = f["conversation_id"].as_str().unwrap_or_default().to_owned();
                let ack = Ack {
                    seq: f["seq"].as_u64().unwrap_or(0),
                    message_id: f["message_id"].as_str().unwrap_or_default().to_owned(),
                    duplicate: f["duplicate"].as_bool().unwrap_or(false),
                };
                if ack.duplicate {
                    self.lock().duplicate_acks += 1;
                }
                // The sender shows its own message at its number.
                let body = self.bodies.remove(&id);
                let me = self.user.clone();
                self.accept(&conv, ack.seq, (&ack.message_id, body.as_deref(), Some(&me)), Channel::Own);
                if let Some(o) = self.outbox.remove(&id)
                    && let Some(done) = o.done
                {
                    let _ = done.send(Ok(ack));
                }
            }
            Some("history") => {
                let conv = f["conversation_id"].as_str().unwrap_or_default().to_owned();
                let messages = f["messages"].as_array().cloned().unwrap_or_default();
                for m in &messages {
                    let seq = m["seq"].as_u64().unwrap_or(0);
                    let id = m["message_id"].as_str().unwrap_or_default();
                    self.accept(&conv, seq, (id, m["body"].as_str(), m["sender_id"].as_str()), Channel::History);
                }
                // While resuming, more to read as long as the conversation's last number is ahead of what is
                // shown; with gap filling on, a gap still open means ask again (for the missing range only).
                let last_seq = f["last_seq"].as_u64().unwrap_or(0);
                let fill = self.rules.fill_gaps;
                let (more, gap) = match self.convs.get_mut(&conv) {
                    Some(c) => {
                        c.asking = None;
                        c.resuming &= !messages.is_empty() && c.last < last_seq;
                        (c.resuming, fill && !c.pending.is_empty())
                    }
                    None => (false, false),
                };
                if more || gap {
                    self.ask_history(ws, &conv).await?;
                }
            }
            Some("error") => {
                let id = f["id"].as_str().unwrap_or_default().to_owned();
                let retryable = f["retryable"].as_bool().unwrap_or(false);
                if let Some(conv) = id.strip_prefix("h:").and_then(|r| r.split(':').next()) {
                    // A failed history request is asked again at the next tick.
                    if let Some(c) = self.convs.get_mut(conv) {
                        c.asking = None;
                    }
                } else if !retryable {
                    if let Some(o) = self.outbox.remove(&id)
                        && let Some(done) = o.done
                    {
                        let _ = done.send(Err(anyhow!("send {id} refused: {f}")));
                    }
                } else if let Some(o) = self.outbox.get_mut(&id) {
                    // Retryable: the next tick sends it again, with the same id.
                    o.sent_at = None;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Every 200 ms: ask for open gaps (if the rules say so), send unanswered sends again, acknowledge what
    /// was shown.
    async fn on_tick(&mut self, ws: &mut Ws) -> anyhow::Result<()> {
        let fill = self.rules.fill_gaps;
        let gaps: Vec<String> = self
            .convs
            .iter()
            .filter(|(_, c)| {
                // A request unanswered for long is asked again (the gateway may have lost it).
                let free = c.asking.is_none_or(|at| at.elapsed() >= HISTORY_PATIENCE);
                let gap = fill && c.gap_since.is_some_and(|at| at.elapsed() >= GAP_GRACE);
                // A resume whose history request failed is asked again too.
                free && (gap || c.resuming)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for conv in gaps {
            self.ask_history(ws, &conv).await?;
        }
        self.resend_due(ws).await?;
        let acks: Vec<(String, u64)> =
            self.convs.iter().filter(|(_, c)| c.last > c.acked).map(|(k, c)| (k.clone(), c.last)).collect();
        for (conv, last) in acks {
            ws.send(Message::text(
                json!({"v": 1, "type": "delivered", "conversation_id": conv, "seq": last}).to_string(),
            ))
            .await?;
            if let Some(c) = self.convs.get_mut(&conv) {
                c.acked = last;
            }
        }
        Ok(())
    }

    /// Sends again every unanswered send that was never sent on this connection, failed retryably, or has
    /// waited longer than [`RESEND_AFTER`].
    async fn resend_due(&mut self, ws: &mut Ws) -> anyhow::Result<()> {
        let now = tokio::time::Instant::now();
        let mut resent = 0;
        for (id, o) in self.outbox.iter_mut() {
            if o.sent_at.is_none_or(|at| now.duration_since(at) >= RESEND_AFTER) {
                if o.sent_once {
                    resent += 1;
                }
                send_frame(ws, id, &o.conversation, &o.body).await?;
                o.sent_at = Some(now);
                o.sent_once = true;
            }
        }
        if resent > 0 {
            self.lock().resends += resent;
        }
        Ok(())
    }

    async fn ask_history(&mut self, ws: &mut Ws, conv: &str) -> anyhow::Result<()> {
        let c = self.convs.entry(conv.to_owned()).or_default();
        if c.asking.is_some_and(|at| at.elapsed() < HISTORY_PATIENCE) {
            return Ok(());
        }
        c.asking = Some(Instant::now());
        let after = c.last;
        // With numbers held above a gap, only the missing ones.
        let limit = match c.pending.keys().next() {
            Some(first_held) => (first_held - after - 1).clamp(1, HISTORY_PAGE),
            None => HISTORY_PAGE,
        };
        let frame = json!({"v": 1, "type": "history", "id": format!("h:{conv}:{after}"), "conversation_id": conv,
            "after_seq": after, "limit": limit});
        ws.send(Message::text(frame.to_string())).await?;
        Ok(())
    }

    /// Records an arrival, then applies the client's rules: drop what is shown already, hold what is above a
    /// gap, show in order.
    fn accept(&mut self, conv: &str, seq: u64, message: (&str, Option<&str>, Option<&str>), channel: Channel) {
        let (message_id, body, sender) = message;
        let now = Instant::now();
        let session = self.session;
        let c = self.convs.entry(conv.to_owned()).or_default();
        let mut violation = None;
        {
            let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
            let first_push_here = channel == Channel::Pushed
                && !report.trail.get(conv).and_then(|t| t.get(&seq)).is_some_and(|t| t.contains(&(channel, session)));
            if first_push_here {
                // One conversation's live pushes reach a device in order: a first push of a number below
                // one already pushed in this session means the servers reordered (or skipped and came back).
                if seq < c.top_pushed {
                    violation =
                        Some(format!("{conv}: number {seq} pushed after number {} in session {session}", c.top_pushed));
                }
                c.top_pushed = c.top_pushed.max(seq);
            }
            report.trail.entry(conv.to_owned()).or_default().entry(seq).or_default().push((channel, session));
            let arrival = report.arrivals.entry(conv.to_owned()).or_default().entry(seq).or_insert_with(|| Arrival {
                message_id: message_id.to_owned(),
                body: None,
                sender: None,
                by: BTreeMap::new(),
            });
            if arrival.message_id != message_id {
                violation = Some(format!(
                    "{conv}: number {seq} arrived as message {} and as message {message_id} ({channel:?})",
                    arrival.message_id
                ));
            }
            if arrival.body.is_none() {
                arrival.body = body.map(str::to_owned);
            }
            if arrival.sender.is_none() {
                arrival.sender = sender.map(str::to_owned);
            }
            let came = arrival.by.entry(channel).or_insert(Came { first_at: now, session, times: 0 });
            came.times += 1;
            if let Some(v) = &violation {
                report.violations.push(v.clone());
            }
        }
        if violation.is_some() {
            self.progress.send_modify(|p| p.violations += 1);
        }
        if seq <= c.last || c.pending.contains_key(&seq) {
            return;
        }
        c.pending.insert(seq, message_id.to_owned());
        let mut shown = Vec::new();
        while let Some(id) = c.pending.remove(&(c.last + 1)) {
            c.last += 1;
            shown.push((c.last, id));
        }
        c.gap_since = match (c.pending.is_empty(), c.gap_since) {
            (true, _) => None,
            (false, None) => Some(now),
            (false, since) => since,
        };
        let last = c.last;
        if !shown.is_empty() {
            let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
            let at = report.shown_at.entry(conv.to_owned()).or_default();
            for (seq, _) in &shown {
                at.insert(*seq, now);
            }
            report.shown.entry(conv.to_owned()).or_default().extend(shown);
            drop(report);
            self.progress.send_modify(|p| {
                p.shown.insert(conv.to_owned(), last);
            });
        }
    }
}

async fn send_frame(ws: &mut Ws, id: &str, conv: &str, body: &str) -> anyhow::Result<()> {
    let frame = json!({"v": 1, "type": "send", "id": id, "conversation_id": conv, "body": body});
    ws.send(Message::text(frame.to_string())).await?;
    Ok(())
}
