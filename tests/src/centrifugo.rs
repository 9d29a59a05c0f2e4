//! Centrifugo (v6, built by `infra/local/bench-tools.sh` into `.local/bin`), the benchmarks' peer: its
//! process on loopback with a configuration written here, and clients of its JSON protocol over WebSocket.
//!
//! Channels stand for conversations: `direct:#a,b` for a one-to-one conversation (only users a and b may
//! be on it) and `group:<name>` for a group. Each member is subscribed by its connection token (the token's
//! `channels`: server-side subscriptions, as our gateways put a device on all its conversations), and a
//! member publishes with the protocol's `publish` command and waits for its reply, as our clients send and
//! wait for `sent`. A publication carries the load generator's stamp (`tests::load::stamp`), so that its
//! receipt is timed as ours are, and counted once per receiving connection.
//!
//! A backend may publish instead, through the HTTP API ([`ApiPublisher`]), as a team's own services would.
//!
//! Two configurations: without history (Centrifugo's default: a publication lives only in flight), and
//! with history and recovery on every channel (its last messages kept, and given back to a client that
//! reconnects): the closest it comes to our persistence.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::load::{Recorder, Seen, Sender, client_config, stamp};

/// The secret its connection tokens are signed with (HS256).
const TOKEN_SECRET: &str = "bench-centrifugo-token-secret-0123456789";

/// The pinned version `infra/local/bench-tools.sh` builds.
pub const VERSION: &str = "v6.9.1";

/// Where `infra/local/bench-tools.sh` puts the binary.
pub fn binary() -> PathBuf {
    let local = std::env::var_os("CHAT_LOCAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(".local"));
    local.join("bin").join("centrifugo")
}

/// The configuration: token auth, the `direct` and `group` namespaces, their members allowed to publish,
/// and with `history` the last 1,000 messages of each channel kept 10 minutes and recovered on reconnect.
pub fn config(port: u16, history: bool) -> serde_json::Value {
    let namespace = |name: &str, user_limited: bool| {
        let mut n = serde_json::json!({
            "name": name,
            "allow_publish_for_subscriber": true,
            "allow_user_limited_channels": user_limited,
        });
        if history {
            n["history_size"] = 1000.into();
            n["history_ttl"] = "600s".into();
            n["force_recovery"] = true.into();
        }
        n
    };
    serde_json::json!({
        "log": {"level": "error"},
        "http_server": {"address": "127.0.0.1", "port": port},
        "client": {"token": {"hmac_secret_key": TOKEN_SECRET}, "allowed_origins": []},
        "http_api": {"key": API_KEY},
        "health": {"enabled": true},
        "usage_stats": {"disabled": true},
        "channel": {"namespaces": [namespace("direct", true), namespace("group", false)]},
    })
}

/// The channel of the one-to-one conversation of `a` and `b`: theirs alone.
pub fn direct_channel(a: &str, b: &str) -> String {
    format!("direct:#{a},{b}")
}

/// A running Centrifugo.
pub struct Centrifugo {
    child: Child,
    pub addr: SocketAddr,
    pub history: bool,
}

impl Centrifugo {
    /// Writes its configuration into `dir` and starts it on a free loopback port; waits for `/health`.
    pub async fn start(history: bool, dir: &Path) -> anyhow::Result<Centrifugo> {
        let bin = binary();
        ensure!(
            bin.exists(),
            "{} is missing: infra/local/bench-tools.sh builds it (`make bench` runs it)",
            bin.display()
        );
        let port = crate::cluster::free_port()?;
        let name = if history { "centrifugo-history" } else { "centrifugo" };
        let config_file = dir.join(format!("{name}.json"));
        std::fs::write(&config_file, serde_json::to_string_pretty(&config(port, history))?)?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&config_file)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut c = Centrifugo { child, addr: ([127, 0, 0, 1], port).into(), history };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !healthy(c.addr).await {
            if let Some(status) = c.child.try_wait()? {
                bail!("centrifugo exited ({status}); its log: {}", dir.join(format!("{name}.log")).display());
            }
            ensure!(tokio::time::Instant::now() < deadline, "centrifugo was not healthy within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(c)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops it (SIGTERM, then SIGKILL after 10 s).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            self.child.kill().await?;
        }
        Ok(())
    }
}

/// Whether `GET /health` answers 200.
async fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else { return false };
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut answer)).await;
    read.is_ok() && answer.starts_with(b"HTTP/1.1 200")
}

/// A connection token for `user`, subscribed to `channels`.
pub fn token(user: &str, channels: &[String]) -> String {
    let claims = serde_json::json!({"sub": user, "channels": channels});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TOKEN_SECRET.as_bytes()),
    )
    .expect("HS256 signing of JSON claims does not fail")
}

enum Out {
    Publish { channel: String, stamp: String },
    Close,
}

/// One client connection: one task reads and writes it.
pub struct PeerConn {
    pub user: String,
    out: mpsc::UnboundedSender<Out>,
}

impl Sender for PeerConn {
    fn send(&self, channel: &str, n: u64) -> bool {
        self.out.send(Out::Publish { channel: channel.to_owned(), stamp: stamp(n) }).is_ok()
    }
}

impl PeerConn {
    pub fn close(&self) {
        let _ = self.out.send(Out::Close);
    }
}

/// Connects `user` to `channels` and waits for the connect reply.
pub async fn connect(
    addr: SocketAddr,
    user: &str,
    channels: &[String],
    recorder: Arc<Recorder>,
) -> anyhow::Result<PeerConn> {
    // WebSocket ping frames (answered by tungstenite) instead of the protocol's `{}` pings.
    let url = format!("ws://{addr}/connection/websocket?cf_ws_frame_ping_pong=true");
    let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await??;
    stream.set_nodelay(true)?;
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::client_async_with_config(url, stream, Some(client_config())),
    )
    .await??;
    let connect = serde_json::json!({"id": 1, "connect": {"token": token(user, channels)}});
    ws.send(Message::text(connect.to_string())).await?;
    let mut replied = false;
    while !replied {
        let frame =
            tokio::time::timeout(Duration::from_secs(30), ws.next()).await?.context("closed while connecting")??;
        let Message::Text(text) = frame else { continue };
        for line in text.as_str().split('\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if v["id"] == 1 {
                ensure!(v.get("error").is_none(), "connect refused: {}", v["error"]);
                replied = true;
            }
        }
    }
    let (out, mut rx) = mpsc::unbounded_channel();
    let me = user.to_owned();
    tokio::spawn(async move {
        let mut pending: HashMap<u64, String> = HashMap::new();
        let mut seen = Seen::default();
        let mut next_id = 1u64;
        loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(Out::Publish { channel, stamp }) => {
                        next_id += 1;
                        let frame = serde_json::json!({
                            "id": next_id, "publish": {"channel": channel, "data": {"t": &stamp, "s": &me}},
                        });
                        pending.insert(next_id, stamp);
                        if ws.send(Message::text(frame.to_string())).await.is_err() {
                            break;
                        }
                    }
                    Some(Out::Close) | None => {
                        let _ = ws.close(None).await;
                        break;
                    }
                },
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        for line in text.as_str().split('\n').filter(|l| !l.is_empty()) {
                            on_line(line, &me, &mut pending, &recorder, &mut seen);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
            }
        }
        recorder.closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    Ok(PeerConn { user: user.to_owned(), out })
}

/// One message of a frame from Centrifugo: a publish reply (the send's acknowledgement), an error reply,
/// or a publication pushed on a channel (a delivery, unless it is the connection's own).
fn on_line(line: &str, me: &str, pending: &mut HashMap<u64, String>, recorder: &Recorder, seen: &mut Seen) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { return };
    if let Some(id) = v["id"].as_u64() {
        if let Some(stamp) = pending.remove(&id) {
            if v.get("error").is_some() {
                recorder.on_error();
            } else {
                recorder.on_ack(&stamp);
            }
        }
        return;
    }
    let publication = &v["push"]["pub"];
    let (Some(channel), Some(stamp)) = (v["push"]["channel"].as_str(), publication["data"]["t"].as_str()) else {
        return;
    };
    if publication["data"]["s"] == me {
        return;
    }
    let Some(n) = stamp.rsplit('-').next().and_then(|n| n.parse().ok()) else { return };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    channel.hash(&mut h);
    recorder.on_delivery(u128::from(h.finish()), n, stamp, seen);
}

/// The key of its HTTP API (`http_api.key` in [`config`]).
const API_KEY: &str = "bench-centrifugo-api-key";

/// A backend publishing through Centrifugo's HTTP API (`POST /api/publish`), as a team's own services would:
/// `lanes` keep-alive HTTP/1.1 connections, each carrying one request at a time, taken in turn. The HTTP
/// answer is the acknowledgement. A publication names the conversation's first member as its sender, so
/// that, as with [`PeerConn`], only the other members' receipts count as deliveries.
pub struct ApiPublisher {
    lanes: Vec<mpsc::UnboundedSender<(String, String)>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Sender for ApiPublisher {
    fn send(&self, channel: &str, n: u64) -> bool {
        let lane = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.lanes.len();
        self.lanes[lane].send((channel.to_owned(), stamp(n))).is_ok()
    }
}

impl ApiPublisher {
    /// Opens `lanes` connections; `senders` names each channel's sender.
    pub async fn connect(
        addr: SocketAddr,
        lanes: usize,
        senders: HashMap<String, String>,
        recorder: Arc<Recorder>,
    ) -> anyhow::Result<ApiPublisher> {
        let senders = Arc::new(senders);
        let mut out = Vec::new();
        for _ in 0..lanes.max(1) {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(api_lane(stream, addr, rx, senders.clone(), recorder.clone()));
            out.push(tx);
        }
        Ok(ApiPublisher { lanes: out, next: std::sync::atomic::AtomicUsize::new(0) })
    }
}

/// One connection of an [`ApiPublisher`]: publishes what it is given, one request at a time.
async fn api_lane(
    mut stream: TcpStream,
    addr: SocketAddr,
    mut rx: mpsc::UnboundedReceiver<(String, String)>,
    senders: Arc<HashMap<String, String>>,
    recorder: Arc<Recorder>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    while let Some((channel, stamp)) = rx.recv().await {
        let sender = senders.get(&channel).map_or("", String::as_str);
        let body = serde_json::json!({"channel": channel, "data": {"t": &stamp, "s": sender}}).to_string();
        let request = format!(
            "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {API_KEY}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = async {
            stream.write_all(request.as_bytes()).await?;
            loop {
                if let Some((status, body, used)) = parse_response(&buf)? {
                    let ok = status == 200 && !body.windows(7).any(|w| w == b"\"error\"");
                    buf.drain(..used);
                    return anyhow::Ok(ok);
                }
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await?;
                ensure!(n > 0, "centrifugo closed the connection");
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        match tokio::time::timeout(Duration::from_secs(30), answer).await {
            Ok(Ok(true)) => recorder.on_ack(&stamp),
            Ok(Ok(false)) => recorder.on_error(),
            Ok(Err(_)) | Err(_) => {
                recorder.on_error();
                break;
            }
        }
    }
}

/// One HTTP/1.1 response at the start of `buf`, if it is all there: its status, its body and how many
/// bytes it took. A response without `Content-Length` (chunked) is refused: Centrifugo's answers to a
/// publish are small and carry one.
fn parse_response(buf: &[u8]) -> anyhow::Result<Option<(u16, &[u8], usize)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).context("no status")?;
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .context("a response without Content-Length")?;
    let start = end + 4;
    if buf.len() < start + length {
        return Ok(None);
    }
    Ok(Some((status, &buf[start..start + length], start + length)))
}

/// Connects every user with its channels (at most `parallel` at a time); None where one failed.
pub async fn connect_many(
    addr: SocketAddr,
    users: &[(String, Vec<String>)],
    parallel: usize,
    recorder: Arc<Recorder>,
) -> Vec<Option<PeerConn>> {
    futures::stream::iter(users)
        .map(|(u, channels)| {
            let recorder = recorder.clone();
            async move { connect(addr, u, channels, recorder).await.ok() }
        })
        .buffered(parallel.max(1))
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[test]
    fn replies_are_acknowledgements_and_pushes_of_others_are_deliveries() {
        let r = Recorder::default();
        let mut pending = HashMap::from([(2, "t5-1".to_owned()), (3, "t6-2".to_owned())]);
        let mut seen = Seen::default();
        let push = |s: &str, n: u64| {
            serde_json::json!({"push": {"channel": "group:g", "pub": {"data": {"t": format!("t7-{n}"), "s": s}}}})
                .to_string()
        };
        // Two messages in one frame are split by the caller; each line stands alone here.
        on_line(r#"{"id":2,"publish":{}}"#, "a", &mut pending, &r, &mut seen);
        on_line(r#"{"id":3,"error":{"code":103,"message":"permission denied"}}"#, "a", &mut pending, &r, &mut seen);
        on_line(r#"{"id":9,"publish":{}}"#, "a", &mut pending, &r, &mut seen);
        on_line(&push("b", 10), "a", &mut pending, &r, &mut seen);
        on_line(&push("b", 10), "a", &mut pending, &r, &mut seen);
        on_line(&push("a", 11), "a", &mut pending, &r, &mut seen);
        on_line(&push("b", 12), "a", &mut pending, &r, &mut seen);
        assert_eq!(r.acks.load(Ordering::Relaxed), 1, "one reply was for a pending publish");
        assert_eq!(r.errors.load(Ordering::Relaxed), 1);
        assert_eq!(r.messages.load(Ordering::Relaxed), 2, "a repeat and the connection's own are no delivery");
        assert!(pending.is_empty());
    }

    #[test]
    fn responses_are_read_whole_and_one_at_a_time() {
        let two = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"result\":{}}HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        let (status, body, used) = parse_response(two).expect("valid").expect("complete");
        assert_eq!((status, body), (200, &b"{\"result\":{}}"[..]));
        let (status, body, _) = parse_response(&two[used..]).expect("valid").expect("complete");
        assert_eq!((status, body), (200, &b"{}"[..]));
        assert!(parse_response(&two[..40]).expect("valid so far").is_none(), "the head is not all there");
        assert!(parse_response(&two[..used - 1]).expect("valid so far").is_none(), "the body is not all there");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    }

    #[test]
    fn the_configuration_keeps_history_only_when_asked() {
        let plain = config(8000, false);
        let kept = config(8000, true);
        let ns = |c: &serde_json::Value| c["channel"]["namespaces"].as_array().cloned().unwrap_or_default();
        assert!(ns(&plain).iter().all(|n| n.get("history_size").is_none()));
        assert!(ns(&kept).iter().all(|n| n["history_size"] == 1000 && n["force_recovery"] == true));
        assert_eq!(direct_channel("a", "b"), "direct:#a,b");
    }
}
