//! [`Device`]: a chat app's device as `docs/protocol.md` describes it, running as a task. It reconnects
//! (to the next gateway) whenever its connection ends, retries unanswered sends with the same id, resumes
//! every conversation it knows by cursor, deduplicates by number and fills gaps with `history`. It records
//! what it showed the user, and raw counts of what came on the wire, for the fault tests to check.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::client::token;
use crate::platform::JWT_SECRET;

/// A send's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    pub message_id: String,
    pub duplicate: bool,
}

/// What a device saw, for the checks at the end of a scenario.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Per conversation, the (seq, message id) shown to the user, in the order shown.
    pub shown: HashMap<String, Vec<(u64, String)>>,
    /// `message` frames (and history entries) received.
    pub raw_messages: u64,
    /// Of those, how many the client dropped as already shown.
    pub raw_duplicates: u64,
    /// Connections after the first.
    pub reconnects: u64,
    /// Close codes the gateway sent.
    pub close_codes: Vec<u16>,
    /// Per conversation, when each number was shown.
    pub shown_at: HashMap<String, HashMap<u64, Instant>>,
}

enum Cmd {
    Send { conversation: String, id: String, body: String, done: oneshot::Sender<anyhow::Result<Ack>> },
    Disconnect,
    Stop,
}

pub struct Device {
    pub user: String,
    pub device: String,
    cmds: mpsc::UnboundedSender<Cmd>,
    progress: watch::Receiver<HashMap<String, u64>>,
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
}

struct Outgoing {
    conversation: String,
    body: String,
    done: Option<oneshot::Sender<anyhow::Result<Ack>>>,
    /// When it was last put on the wire; unanswered for [`RESEND_AFTER`], it is sent again.
    sent_at: Option<tokio::time::Instant>,
}

/// How long a send may stay unanswered on a live connection before the client sends it again.
const RESEND_AFTER: Duration = Duration::from_secs(3);

const HISTORY_PAGE: u64 = 200;

/// How long a history request may stay unanswered before it is asked again.
const HISTORY_PATIENCE: Duration = Duration::from_secs(30);

/// How long a gap may stay open before the client asks for the missing numbers (protocol rule 2).
const GAP_GRACE: Duration = Duration::from_millis(500);

impl Device {
    /// Starts the device on `gateways[first]`; it knows `conversations` (and any it receives a message of).
    pub fn spawn(
        user: &str,
        device: &str,
        gateways: Vec<SocketAddr>,
        first: usize,
        conversations: &[String],
    ) -> Device {
        let (cmds, rx) = mpsc::unbounded_channel();
        let known: HashMap<String, u64> = conversations.iter().map(|c| (c.clone(), 0)).collect();
        let (progress_tx, progress) = watch::channel(known.clone());
        let report = Arc::new(Mutex::new(Report::default()));
        let runner = Runner {
            user: user.to_owned(),
            device: device.to_owned(),
            gateways,
            next_gateway: first,
            convs: known.keys().map(|c| (c.clone(), Conv::default())).collect(),
            outbox: BTreeMap::new(),
            progress: progress_tx,
            report: report.clone(),
        };
        let task = tokio::spawn(runner.run(rx));
        Device { user: user.to_owned(), device: device.to_owned(), cmds, progress, report, task }
    }

    /// Sends a message; retried with the same id across failures and reconnects until answered.
    pub async fn send(&self, conversation: &str, id: &str, body: &str) -> anyhow::Result<Ack> {
        let (done, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Send { conversation: conversation.into(), id: id.into(), body: body.into(), done })
            .map_err(|_| anyhow!("device stopped"))?;
        rx.await.map_err(|_| anyhow!("device stopped"))?
    }

    /// Drops the connection (as a network failure would); the device reconnects to the next gateway.
    pub fn disconnect(&self) {
        let _ = self.cmds.send(Cmd::Disconnect);
    }

    /// Waits until the device has shown every number up to `seq` in `conversation`.
    pub async fn wait_shown(&mut self, conversation: &str, seq: u64, within: Duration) -> anyhow::Result<()> {
        let reached = tokio::time::timeout(within, async {
            self.progress.wait_for(|p| p.get(conversation).is_some_and(|s| *s >= seq)).await.is_ok()
        })
        .await;
        match reached {
            Ok(true) => Ok(()),
            _ => {
                let at = self.progress.borrow().get(conversation).copied().unwrap_or(0);
                bail!("{}/{}: showed up to {at} of {seq} in {conversation} within {within:?}", self.user, self.device)
            }
        }
    }

    pub fn report(&self) -> Report {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the device and answers what it showed. Fails if the device does not stop within 30 s (a
    /// socket write that never completes), rather than waiting on it.
    pub async fn stop(mut self) -> anyhow::Result<Report> {
        let _ = self.cmds.send(Cmd::Stop);
        if tokio::time::timeout(Duration::from_secs(30), &mut self.task).await.is_err() {
            self.task.abort();
            bail!("{}/{}: did not stop within 30 s", self.user, self.device);
        }
        Ok(self.report.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

struct Runner {
    user: String,
    device: String,
    gateways: Vec<SocketAddr>,
    next_gateway: usize,
    convs: HashMap<String, Conv>,
    /// Sends not answered yet, by id: sent again after every reconnect.
    outbox: BTreeMap<String, Outgoing>,
    progress: watch::Sender<HashMap<String, u64>>,
    report: Arc<Mutex<Report>>,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum End {
    Reconnect,
    Stop,
}

impl Runner {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        let mut first = true;
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
            if !first {
                self.lock().reconnects += 1;
            }
            first = false;
            match self.session(ws, &mut cmds).await {
                End::Reconnect => continue,
                End::Stop => return self.fail_outbox(),
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

    /// Takes queued commands while disconnected; true when one of them is Stop.
    fn drain_commands(&mut self, cmds: &mut mpsc::UnboundedReceiver<Cmd>) -> bool {
        while let Ok(cmd) = cmds.try_recv() {
            match cmd {
                Cmd::Send { conversation, id, body, done } => {
                    self.outbox.insert(id, Outgoing { conversation, body, done: Some(done), sent_at: None });
                }
                Cmd::Disconnect => {}
                Cmd::Stop => return true,
            }
        }
        false
    }

    async fn connect(&self, gw: SocketAddr) -> anyhow::Result<Ws> {
        let url = format!("ws://{gw}/v1/ws?device_id={}", self.device);
        let mut req = url.into_client_request()?;
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, format!("Bearer {}", token(&self.user, JWT_SECRET)).parse()?);
        let (ws, _) = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(req)).await??;
        Ok(ws)
    }

    async fn session(&mut self, mut ws: Ws, cmds: &mut mpsc::UnboundedReceiver<Cmd>) -> End {
        // Resume every known conversation by cursor, and send again what is unanswered.
        for c in self.convs.values_mut() {
            c.asking = None;
            c.resuming = true;
        }
        let names: Vec<String> = self.convs.keys().cloned().collect();
        for conv in names {
            if self.ask_history(&mut ws, &conv).await.is_err() {
                return End::Reconnect;
            }
        }
        for o in self.outbox.values_mut() {
            o.sent_at = None;
        }
        if self.resend_due(&mut ws).await.is_err() {
            return End::Reconnect;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                frame = ws.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(c))) => {
                            if let Some(c) = c {
                                self.lock().close_codes.push(u16::from(c.code));
                            }
                            return End::Reconnect;
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => return End::Reconnect,
                    };
                    let Ok(f) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                    if self.on_frame(&mut ws, f).await.is_err() {
                        return End::Reconnect;
                    }
                }
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Send { conversation, id, body, done }) => {
                        let sent = send_frame(&mut ws, &id, &conversation, &body).await;
                        let sent_at = Some(tokio::time::Instant::now());
                        self.outbox.insert(id, Outgoing { conversation, body, done: Some(done), sent_at });
                        if sent.is_err() {
                            return End::Reconnect;
                        }
                    }
                    Some(Cmd::Disconnect) => return End::Reconnect,
                    Some(Cmd::Stop) | None => {
                        let _ = ws.close(None).await;
                        return End::Stop;
                    }
                },
                _ = tick.tick() => {
                    if self.on_tick(&mut ws).await.is_err() {
                        return End::Reconnect;
                    }
                }
            }
        }
    }

    async fn on_frame(&mut self, ws: &mut Ws, f: Value) -> anyhow::Result<()> {
        match f["type"].as_str() {
            Some("message") => {
                self.lock().raw_messages += 1;
                let conv = f["conversation_id"].as_str().unwrap_or_default().to_owned();
                self.receive(&conv, f["seq"].as_u64().unwrap_or(0), f["message_id"].as_str().unwrap_or_default());
            }
            Some("sent") => {
                let id = f["id"].as_str().unwrap_or_default().to_owned();
                let conv = f["conversation_id"].as_str().unwrap_or_default().to_owned();
                let ack = Ack {
                    seq: f["seq"].as_u64().unwrap_or(0),
                    message_id: f["message_id"].as_str().unwrap_or_default().to_owned(),
                    duplicate: f["duplicate"].as_bool().unwrap_or(false),
                };
                // The sender shows its own message at its number.
                self.receive_own(&conv, ack.seq, &ack.message_id);
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
                    self.lock().raw_messages += 1;
                    self.receive(&conv, m["seq"].as_u64().unwrap_or(0), m["message_id"].as_str().unwrap_or_default());
                }
                // While resuming, more to read as long as the conversation's last number is ahead of what is
                // shown; a gap still open means ask again (for the missing range only).
                let last_seq = f["last_seq"].as_u64().unwrap_or(0);
                let (more, gap) = match self.convs.get_mut(&conv) {
                    Some(c) => {
                        c.asking = None;
                        c.resuming &= !messages.is_empty() && c.last < last_seq;
                        (c.resuming, !c.pending.is_empty())
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

    /// Every 200 ms: ask for open gaps, send unanswered sends again, acknowledge what was shown.
    async fn on_tick(&mut self, ws: &mut Ws) -> anyhow::Result<()> {
        let gaps: Vec<String> = self
            .convs
            .iter()
            .filter(|(_, c)| {
                // A request unanswered for long is asked again (the gateway may have lost it).
                let free = c.asking.is_none_or(|at| at.elapsed() >= HISTORY_PATIENCE);
                let gap = c.gap_since.is_some_and(|at| at.elapsed() >= GAP_GRACE);
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
        for (id, o) in self.outbox.iter_mut() {
            if o.sent_at.is_none_or(|at| now.duration_since(at) >= RESEND_AFTER) {
                send_frame(ws, id, &o.conversation, &o.body).await?;
                o.sent_at = Some(now);
            }
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

    fn receive_own(&mut self, conv: &str, seq: u64, message_id: &str) {
        self.accept(conv, seq, message_id, false);
    }

    fn receive(&mut self, conv: &str, seq: u64, message_id: &str) {
        self.accept(conv, seq, message_id, true);
    }

    /// The client's rules: drop what is shown already, hold what is above a gap, show in order.
    fn accept(&mut self, conv: &str, seq: u64, message_id: &str, from_wire: bool) {
        let c = self.convs.entry(conv.to_owned()).or_default();
        if seq <= c.last || c.pending.contains_key(&seq) {
            if from_wire {
                self.report.lock().unwrap_or_else(|p| p.into_inner()).raw_duplicates += 1;
            }
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
            (false, None) => Some(Instant::now()),
            (false, since) => since,
        };
        let last = c.last;
        if !shown.is_empty() {
            let now = Instant::now();
            let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
            let at = report.shown_at.entry(conv.to_owned()).or_default();
            for (seq, _) in &shown {
                at.insert(*seq, now);
            }
            report.shown.entry(conv.to_owned()).or_default().extend(shown);
            drop(report);
            self.progress.send_modify(|p| {
                p.insert(conv.to_owned(), last);
            });
        }
    }
}

async fn send_frame(ws: &mut Ws, id: &str, conv: &str, body: &str) -> anyhow::Result<()> {
    let frame = json!({"v": 1, "type": "send", "id": id, "conversation_id": conv, "body": body});
    ws.send(Message::text(frame.to_string())).await?;
    Ok(())
}
