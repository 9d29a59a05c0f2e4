//! The doors of the platform (promise P10), against the running services and the real servers: who may
//! upgrade, with which token and from which origin, what a non-member can do, and what an undecodable record
//! on the log does. Each refusal must change nothing else.

use std::time::Duration;

use anyhow::{Context, ensure};
use chat_model::{UserId, presence};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use proto::v1;
use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tests::client::Refused;
use tests::platform::{JWT_SECRET, kafka_brokers};
use tests::{Platform, PlatformOptions, WsClient};
use tests::{broken, promise};

fn user(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

fn now() -> i64 {
    chat_model::now_ms() / 1000
}

async fn conversation(p: &Platform, creator: &str, other: &str) -> anyhow::Result<String> {
    let r = p
        .chat_client()
        .await?
        .create_conversation(v1::CreateConversationRequest {
            kind: v1::ConversationKind::Direct as i32,
            created_by: creator.into(),
            member_ids: vec![other.into()],
            title: String::new(),
        })
        .await?
        .into_inner();
    Ok(r.conversation.context("no conversation")?.conversation_id)
}

/// Whether the user has any presence entry (a refused upgrade must write none).
async fn present(p: &Platform, user: &str) -> anyhow::Result<bool> {
    let mut redis = p.redis().await?;
    let key = presence::key(&p.redis_prefix, &UserId::parse(user)?);
    Ok(redis::cmd("EXISTS").arg(key).query_async(&mut redis).await?)
}

/// How long a test waits for a refusal or a close before counting it as not happening: a timeout is never
/// taken for a refusal.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Requires that an upgrade attempt is refused before the upgrade with HTTP `status` and the JSON body's
/// `code` (exactly), within [`ANSWER_WAIT`].
async fn refused_with(
    attempt: impl std::future::Future<Output = Result<WsClient, Refused>>,
    status: u16,
    code: &str,
    what: &str,
) -> anyhow::Result<()> {
    let r = match tokio::time::timeout(ANSWER_WAIT, attempt).await {
        Err(_) => broken!("{what}: neither upgraded nor refused within {ANSWER_WAIT:?}"),
        Ok(Ok(_)) => broken!("{what}: upgraded"),
        Ok(Err(r)) => r,
    };
    let body_code = serde_json::from_str::<Value>(&r.body).ok().and_then(|b| b["code"].as_str().map(str::to_owned));
    promise!(
        r.status == status && body_code.as_deref() == Some(code),
        "{what}: refused with {} {:?}, not {status} {code}",
        r.status,
        r.body
    );
    Ok(())
}

/// Every byte the gateway sends on `stream` until it closes the connection (end of stream, or a reset),
/// within `within`; `None` when the connection is still open then.
async fn until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all).await.ok()?;
    Some(got)
}

/// Opens a TCP connection to `addr`, sends `request` (maybe nothing), and answers what [`until_closed`]
/// does. A write that fails counts as closed: the gateway closed first.
async fn knock(addr: std::net::SocketAddr, request: &[u8], within: Duration) -> anyhow::Result<Option<Vec<u8>>> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    if !request.is_empty() && stream.write_all(request).await.is_err() {
        return Ok(Some(Vec::new()));
    }
    Ok(until_closed(&mut stream, within).await)
}

/// Requires that the gateway closes a connection over a cap before reading anything: the client, which
/// sends `request` (maybe nothing), gets no byte, and sees the end of the stream or a reset within
/// [`ANSWER_WAIT`]. A connection still open then is not a refusal.
async fn closed_at_accept(addr: std::net::SocketAddr, request: &[u8], what: &str) -> anyhow::Result<()> {
    match knock(addr, request, ANSWER_WAIT).await? {
        Some(answer) if answer.is_empty() => Ok(()),
        Some(answer) => broken!("{what}: answered {:?} instead of closed", String::from_utf8_lossy(&answer)),
        None => broken!("{what}: still open after {ANSWER_WAIT:?} (a timeout is not a refusal)"),
    }
}

/// A WebSocket upgrade request as any client sends it, for `user` on `device`.
fn upgrade_request(addr: std::net::SocketAddr, user: &str, device: &str) -> String {
    format!(
        "GET /v1/ws?device_id={device} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {}\r\n\r\n",
        tests::token(user, JWT_SECRET)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_the_allow_list_are_refused_before_the_upgrade() -> anyhow::Result<()> {
    let allowed = "https://chat.example.com";
    let p = Platform::start(PlatformOptions {
        gateways: 1,
        allowed_origins: vec![allowed.into()],
        ..PlatformOptions::default()
    })
    .await?;
    let gw = p.gateways[0].ws_addr;
    let alice = user("alice");
    let token = format!("Bearer {}", tests::token(&alice, JWT_SECRET));
    let refused_origins = [
        Some("https://evil.example.com"),
        // Look-alikes that contain or extend the listed one.
        Some("https://chat.example.com.evil.com"),
        Some("https://evil-chat.example.com"),
        Some("http://chat.example.com"),
        Some("https://chat.example.com:8443"),
        Some("HTTPS://CHAT.EXAMPLE.COM"),
        Some("null"),
        None,
    ];
    for origin in refused_origins {
        let mut headers = vec![("authorization", token.as_str())];
        headers.extend(origin.map(|o| ("origin", o)));
        let attempt = WsClient::connect_request(gw, &alice, "device_id=phone", "phone", &headers);
        refused_with(attempt, 403, "origin_not_allowed", &format!("origin {origin:?}")).await?;
    }
    promise!(!present(&p, &alice).await?, "a refused upgrade wrote presence");
    let headers = [("authorization", token.as_str()), ("origin", allowed)];
    let mut c = match WsClient::connect_request(gw, &alice, "device_id=phone", "phone", &headers).await {
        Ok(c) => c,
        Err(r) => broken!("the listed origin was refused: {r:?}"),
    };
    promise!(c.recv().await?["type"] == "welcome", "no welcome");
    c.close().await?;
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_at_the_upgrade_and_an_expiring_one_closes_with_4001() -> anyhow::Result<()> {
    let (issuer, audience) = ("https://auth.example", "chat");
    let p = Platform::start(PlatformOptions {
        gateways: 1,
        jwt_issuer: Some(issuer.into()),
        jwt_audience: Some(audience.into()),
        ..PlatformOptions::default()
    })
    .await?;
    let gw = p.gateways[0].ws_addr;
    let alice = user("alice");
    let key = EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let claims = |extra: Value| {
        let mut c = json!({"sub": alice, "exp": now() + 600, "iss": issuer, "aud": audience});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        c
    };
    let sign = |alg: Algorithm, key: &EncodingKey, c: &Value| encode(&Header::new(alg), c, key).unwrap_or_default();
    let unsigned = {
        use std::fmt::Write;
        let b64 = |bytes: &[u8]| {
            const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
                for i in 0..=chunk.len() {
                    let _ = out.write_char(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
                }
            }
            out
        };
        format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(claims(json!({})).to_string().as_bytes()))
    };
    let other_key = EncodingKey::from_secret(b"another-secret-another-secret-another");
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("expired past the leeway", Some(sign(Algorithm::HS256, &key, &claims(json!({"exp": now() - 120}))))),
        ("not valid yet", Some(sign(Algorithm::HS256, &key, &claims(json!({"nbf": now() + 120}))))),
        ("alg none", Some(unsigned)),
        ("wrong key", Some(sign(Algorithm::HS256, &other_key, &claims(json!({}))))),
        ("wrong algorithm", Some(sign(Algorithm::HS512, &key, &claims(json!({}))))),
        ("wrong audience", Some(sign(Algorithm::HS256, &key, &claims(json!({"aud": "billing"}))))),
        ("wrong issuer", Some(sign(Algorithm::HS256, &key, &claims(json!({"iss": "https://evil.example"}))))),
        ("garbage", Some("x.y.z".into())),
    ];
    for (what, token) in cases {
        let attempt = WsClient::connect_with(gw, &alice, "phone", token.as_deref());
        refused_with(attempt, 401, "unauthorized", &format!("a token that is {what}")).await?;
    }
    promise!(!present(&p, &alice).await?, "a refused upgrade wrote presence");

    // Browsers cannot set headers on a WebSocket: the token also works as `access_token` in the query.
    let short = sign(Algorithm::HS256, &key, &claims(json!({"exp": now() + 2})));
    let query = format!("device_id=phone&access_token={short}");
    let mut c = match WsClient::connect_request(gw, &alice, &query, "phone", &[]).await {
        Ok(c) => c,
        Err(r) => broken!("refused a valid token in the query: {r:?}"),
    };
    promise!(c.recv().await?["type"] == "welcome", "no welcome");
    // It expires two seconds later: the gateway closes the connection with 4001.
    let (code, reason) = c.recv_close(ANSWER_WAIT).await?;
    promise!(code == 4001, "the connection outlived its token: closed with {code} ({reason:?}), not 4001");
    p.stop().await
}

/// How long members' sockets are read after a non-member's attempt: what the attempt could have leaked
/// (a typing indicator pushed at once, a receipt routed through the log and a worker) arrives well within it.
const QUIET: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_can_neither_send_nor_read_and_changes_nothing() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions { gateways: 1, ..PlatformOptions::default() }).await?;
    let gw = p.gateways[0].ws_addr;
    let (alice, bob, mallory) = (user("alice"), user("bob"), user("mallory"));
    let conv = conversation(&p, &alice, &bob).await?;
    let own = conversation(&p, &mallory, &bob).await?;
    let mut a = WsClient::connect(gw, &alice, "phone").await?;
    a.sync().await?;
    let mut b = WsClient::connect(gw, &bob, "phone").await?;
    b.sync().await?;
    let first = a.send_message(&conv, "m1", "for bob only").await?;
    promise!(first["seq"] == 1, "first message at {}", first["seq"]);
    let got = b.expect("message").await?;
    promise!(got["seq"] == 1, "bob got {got}");
    let log_before = log_size(&p.topic).await?;

    let mut m = WsClient::connect(gw, &mallory, "laptop").await?;
    m.sync().await?;
    let attempts = [
        ("send", json!({"v": 1, "type": "send", "id": "intrude", "conversation_id": conv, "body": "hi"})),
        ("history", json!({"v": 1, "type": "history", "id": "peek", "conversation_id": conv, "after_seq": 0})),
        ("conversation", json!({"v": 1, "type": "conversation", "id": "look", "conversation_id": conv})),
        ("read", json!({"v": 1, "type": "read", "conversation_id": conv, "seq": 1})),
        ("delivered", json!({"v": 1, "type": "delivered", "conversation_id": conv, "seq": 1})),
        ("typing", json!({"v": 1, "type": "typing", "conversation_id": conv})),
    ];
    for (i, (kind, frame)) in attempts.iter().enumerate() {
        m.send_json(frame.clone()).await?;
        // Requests are handled in order: the answer to one about Mallory's own conversation comes after it.
        let sentinel = format!("sentinel-{i}");
        m.send_json(json!({"v": 1, "type": "conversation", "id": sentinel, "conversation_id": own})).await?;
        // The attempt is refused with `not_member`, once, naming its id when it had one.
        let mut answers = Vec::new();
        loop {
            let f = m.recv().await?;
            if f["type"] == "conversation" && f["id"] == sentinel.as_str() {
                break;
            }
            answers.push(f);
        }
        let refusal = json!({"code": "not_member", "id": frame.get("id")});
        let refused = answers.len() == 1
            && answers[0]["type"] == "error"
            && answers[0]["code"] == refusal["code"]
            && answers[0].get("id") == frame.get("id");
        promise!(refused, "the non-member's {kind} was answered {answers:?}, not once {refusal}");
        // Nothing of it reached the members: their sockets stay silent.
        let (to_alice, to_bob) = tokio::join!(a.stay_silent(QUIET), b.stay_silent(QUIET));
        let (to_alice, to_bob) = (to_alice?, to_bob?);
        promise!(
            to_alice.is_empty() && to_bob.is_empty(),
            "after the non-member's {kind}, alice got {to_alice:?} and bob got {to_bob:?}"
        );
    }
    // Nothing was stored or logged.
    let page = p
        .chat_client()
        .await?
        .get_history(v1::GetHistoryRequest {
            conversation_id: conv.clone(),
            user_id: alice.clone(),
            after_seq: 0,
            limit: 10,
            before_seq: 0,
        })
        .await?
        .into_inner();
    promise!(page.messages.len() == 1, "history holds {} messages", page.messages.len());
    let positions = p.store.read_marks(chat_model::ConversationId::parse(&conv)?).await?;
    promise!(positions.iter().all(|(u, _)| u.as_str() != mallory), "a read position for the non-member");
    promise!(log_size(&p.topic).await? == log_before, "the log grew");
    m.close().await?;
    a.close().await?;
    b.close().await?;
    p.stop().await
}

/// Records in the topic (all partitions), from the watermarks.
async fn log_size(topic: &str) -> anyhow::Result<i64> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let mut total = 0;
        for t in metadata.topics() {
            for part in t.partitions() {
                let (low, high) = consumer.fetch_watermarks(&topic, part.id(), Duration::from_secs(10))?;
                total += high - low;
            }
        }
        anyhow::Ok(total)
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_record_goes_to_the_dead_letter_topic_and_the_partition_goes_on() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions { gateways: 1, partitions: 1, ..PlatformOptions::default() }).await?;
    let gw = p.gateways[0].ws_addr;
    let (alice, bob) = (user("alice"), user("bob"));
    let conv = conversation(&p, &alice, &bob).await?;
    let mut b = WsClient::connect(gw, &bob, "phone").await?;
    b.sync().await?;
    ensure!(p.worker_counter(0, "worker_dead_letters_total").await? == 0, "dead letters before any garbage");
    // One partition: the garbage sits in front of the next message.
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create()?;
    let garbage: &[u8] = b"\xff\x00 not a chat.v1.Event \x01\x02";
    producer
        .send(FutureRecord::to(&p.topic).key(conv.as_str()).payload(garbage), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("producing: {e}"))?;
    let mut a = WsClient::connect(gw, &alice, "phone").await?;
    a.sync().await?;
    let ack = a.send_message(&conv, "after-garbage", "still delivered").await?;
    let got = b.expect("message").await?;
    ensure!(got["seq"] == ack["seq"] && got["body"] == "still delivered", "bob got {got}");

    let dlq: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", format!("dlq-reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()?;
    dlq.subscribe(&[&format!("{}.dlq", p.topic)])?;
    let record = tokio::time::timeout(Duration::from_secs(20), dlq.recv())
        .await
        .context("nothing in the dead-letter topic")??;
    ensure!(record.payload() == Some(garbage), "the dead letter is not the garbage record");
    ensure!(record.key() == Some(conv.as_bytes()), "the dead letter lost its key");
    let headers: Vec<String> =
        rdkafka::message::Headers::iter(rdkafka::Message::headers(&record).context("the dead letter has no headers")?)
            .map(|h| h.key.to_owned())
            .collect();
    ensure!(headers.contains(&"error".to_owned()) && headers.contains(&"origin".to_owned()), "headers {headers:?}");
    // The worker counts a dead letter once the topic has acknowledged it, a moment after it can be read.
    let mut dead = 0;
    for _ in 0..50 {
        dead = p.worker_counter(0, "worker_dead_letters_total").await?;
        if dead > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(dead == 1, "the worker counts {dead} dead letters, not 1");
    ensure!(p.worker_counter(0, "worker_records_total").await? >= 2, "the worker counts fewer records than it took");
    a.close().await?;
    b.close().await?;
    p.stop().await
}

/// Sends `n` pings at once, then reads until each has an answer or the connection closes; answers
/// (pongs, rate_limited refusals, the close frame's code and reason if it closed).
async fn ping_flood(c: &mut WsClient, tag: &str, n: usize) -> anyhow::Result<(usize, usize, Option<(u16, String)>)> {
    for i in 0..n {
        if c.send_json(json!({"v": 1, "type": "ping", "id": format!("{tag}-{i}")})).await.is_err() {
            break;
        }
    }
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < n {
        match c.recv().await {
            Ok(f) if f["type"] == "pong" => pongs += 1,
            Ok(f) if f["type"] == "error" && f["code"] == "rate_limited" => {
                promise!(f["retryable"] == true, "rate_limited is not retryable: {f}");
                promise!(f["id"].as_str().is_some_and(|id| id.starts_with(tag)), "refusal without the id: {f}");
                // The wait is a field (docs/protocol.md), not only words in the message.
                promise!(
                    f["retry_after_ms"].as_u64().is_some_and(|ms| (1..=60_000).contains(&ms)),
                    "rate_limited without a wait in retry_after_ms: {f}"
                );
                limited += 1;
            }
            Ok(f) => broken!("unexpected {f}"),
            // Closed (its close frame was read) or ended otherwise, which `recv_close` reports as broken.
            Err(_) => return Ok((pongs, limited, Some(c.recv_close(Duration::from_secs(1)).await?))),
        }
    }
    Ok((pongs, limited, None))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_user_is_throttled_then_closed_and_others_are_not() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions {
        gateways: 1,
        // Per connection 20 a second (bursts of 40); per user 5 a second (bursts of 10).
        rate_per_connection: 20,
        rate_per_user: 5,
        max_connections_per_user: 3,
        ..PlatformOptions::default()
    })
    .await?;
    let gw = p.gateways[0].ws_addr;
    let (alice, bob, mallory) = (user("alice"), user("bob"), user("mallory"));
    let conv = conversation(&p, &alice, &bob).await?;
    let mut a = WsClient::connect(gw, &alice, "phone").await?;
    a.sync().await?;

    // One connection far past its bursts: refusals that name each frame, then, after 40 in a row, close 4029.
    let mut m = WsClient::connect(gw, &mallory, "phone").await?;
    m.sync().await?;
    let (pongs, limited, closed) = ping_flood(&mut m, "flood", 400).await?;
    promise!(pongs <= 30, "{pongs} pings answered past the user's burst of 10 at 5/s");
    promise!(limited >= 1, "no rate_limited refusal ({pongs} pongs, closed: {closed:?})");
    let Some((code, reason)) = closed else { broken!("the flooding connection stayed open") };
    promise!(code == 4029, "the flooding connection was closed with {code} ({reason:?}), not 4029");

    // Alice, meanwhile, is unaffected: her pings and her send (within her own bursts) are answered.
    let (pongs, limited, closed) = ping_flood(&mut a, "alice", 8).await?;
    promise!((pongs, limited, closed.is_none()) == (8, 0, true), "alice: {pongs} pongs, {limited} refused, {closed:?}");
    let ack = a.send_message(&conv, "after-flood", "hello").await?;
    promise!(ack["seq"] == 1, "alice's send answered {ack}");

    // Two connections each within their own burst (15 < 40) but past the user's (10) together.
    let mut m1 = WsClient::connect(gw, &mallory, "tablet").await?;
    let mut m2 = WsClient::connect(gw, &mallory, "laptop").await?;
    m1.sync().await?;
    m2.sync().await?;
    let (r1, r2) = tokio::join!(ping_flood(&mut m1, "t", 15), ping_flood(&mut m2, "l", 15));
    let ((p1, l1, _), (p2, l2, _)) = (r1?, r2?);
    promise!(l1 + l2 >= 1, "the user's shared limit refused nothing ({p1} + {p2} answered)");
    promise!(p1 + p2 <= 25, "{} pings answered past the user's burst of 10", p1 + p2);

    // Connections per user: a fourth session of Mallory is refused with 429. (The flooding connection's place
    // is given back once its session has ended, which takes a moment after the close.)
    let mut m3 = None;
    for _ in 0..100 {
        if let Ok(c) = WsClient::connect(gw, &mallory, "watch").await {
            m3 = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(_m3) = m3 else { broken!("the closed connection's place was never given back") };
    let token = tests::token(&mallory, JWT_SECRET);
    let attempt = WsClient::connect_with(gw, &mallory, "desktop", Some(&token));
    refused_with(attempt, 429, "too_many_connections", "a fourth session of one user").await?;
    a.close().await?;
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped_and_given_back() -> anyhow::Result<()> {
    let cap = 5;
    let p = Platform::start(PlatformOptions {
        gateways: 1,
        max_connections_per_address: cap,
        ..PlatformOptions::default()
    })
    .await?;
    let gw = p.gateways[0].ws_addr;
    let mut open = Vec::new();
    for i in 0..cap {
        match WsClient::connect(gw, &user(&format!("u{i}")), "phone").await {
            Ok(c) => open.push(c),
            Err(e) => broken!("connection {} of {cap} from one address was not admitted: {e:#}", i + 1),
        }
    }
    // Over the cap, the gateway closes the TCP connection before reading anything: a client that sends
    // nothing sees it end, and one that sends a whole upgrade request gets no answer to it.
    let sixth = user("sixth");
    closed_at_accept(gw, b"", "a connection over the address cap that sends nothing").await?;
    let request = upgrade_request(gw, &sixth, "phone");
    closed_at_accept(gw, request.as_bytes(), "an upgrade over the address cap").await?;
    promise!(!present(&p, &sixth).await?, "the refused connection wrote presence");
    // One closes: its place is given back (once its session has ended, a moment after the close).
    if let Some(c) = open.pop() {
        c.close().await?;
    }
    let mut again = None;
    for _ in 0..50 {
        let attempt = WsClient::connect(gw, &sixth, "phone");
        if let Ok(Ok(c)) = tokio::time::timeout(ANSWER_WAIT, attempt).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    promise!(again.is_some(), "the freed place was not given back");
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_pinged_then_closed_with_4002_and_one_that_answers_stays() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions {
        gateways: 1,
        ping_interval_ms: 300,
        idle_timeout_ms: 1_500,
        ..PlatformOptions::default()
    })
    .await?;
    let gw = p.gateways[0].ws_addr;
    // A raw client reads but never answers a ping and sends nothing.
    let mute = user("mute");
    let mut raw = tests::raw::RawWs::connect(gw, &mute, "phone").await?;
    let opened = std::time::Instant::now();
    let code = raw.close_code(Duration::from_secs(10)).await?;
    let silent_for = opened.elapsed();
    ensure!(code == Some(4002), "a silent connection was closed with {code:?}, not 4002");
    ensure!(raw.pings >= 2, "only {} pings before the idle close", raw.pings);
    ensure!(silent_for >= Duration::from_millis(1_400), "closed after {silent_for:?}, before the idle timeout");
    // A client whose library answers the pings stays connected, silent, for several idle timeouts.
    let mut polite = WsClient::connect(gw, &user("polite"), "phone").await?;
    polite.sync().await?;
    polite.stay_silent(Duration::from_secs(5)).await?;
    polite.send_json(json!({"v": 1, "type": "ping", "id": "still-here"})).await?;
    let pong = polite.expect("pong").await?;
    ensure!(pong["id"] == "still-here", "the connection answered {pong} after staying silent");
    polite.close().await?;
    p.stop().await
}

/// How an internal gRPC call ended.
#[derive(Debug)]
enum Call {
    Answered,
    /// It failed before the deadline: the connection was refused (the reason as the client saw it).
    Refused(String),
    /// Nothing within [`ANSWER_WAIT`]: not a refusal.
    NoAnswer,
}

/// Tries one call on the chat service at `chat_addr` (reading `conv` as its member `member`) and one on the
/// gateway's push server at `gw`, as an internal client with `tls` (`None`: plaintext). The clients set no
/// timeout of their own, so an error can only come from the other side; the wait is bounded here.
async fn internal_calls(
    chat_addr: std::net::SocketAddr,
    gw: std::net::SocketAddr,
    (conv, member): (&str, &str),
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> (Call, Call) {
    async fn channel(
        addr: std::net::SocketAddr,
        tls: &Option<tonic::transport::ClientTlsConfig>,
    ) -> anyhow::Result<tonic::transport::Channel> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut e = tonic::transport::Channel::from_shared(format!("{scheme}://{addr}"))?;
        if let Some(tls) = tls {
            e = e.tls_config(tls.clone())?;
        }
        Ok(e.connect().await?)
    }
    let chat = async {
        let mut c = proto::v1::chat_service_client::ChatServiceClient::new(channel(chat_addr, &tls).await?);
        c.get_conversation(v1::GetConversationRequest { conversation_id: conv.into(), user_id: member.into() }).await?;
        anyhow::Ok(())
    };
    let push = async {
        let mut c = proto::v1::gateway_service_client::GatewayServiceClient::new(channel(gw, &tls).await?);
        c.resync(v1::ResyncRequest { devices: Vec::new() }).await?;
        anyhow::Ok(())
    };
    let ended = |r: Result<anyhow::Result<()>, tokio::time::error::Elapsed>| match r {
        Ok(Ok(())) => Call::Answered,
        Ok(Err(e)) => Call::Refused(format!("{e:#}")),
        Err(_) => Call::NoAnswer,
    };
    let (a, b) = tokio::join!(tokio::time::timeout(ANSWER_WAIT, chat), tokio::time::timeout(ANSWER_WAIT, push));
    (ended(a), ended(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_grpc_with_mutual_tls_refuses_plaintext_and_foreign_or_missing_certificates() -> anyhow::Result<()> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let internal = tests::pki::Ca::new("internal")?;
    let service = internal.leaf("service")?;
    let p = Platform::start(PlatformOptions {
        gateways: 1,
        // The inbox is read only at connect: bob gets the message only by a push from the worker.
        inbox_recheck_ms: 600_000,
        grpc_tls: service.grpc_tls(),
        ..PlatformOptions::default()
    })
    .await?;
    // The whole path over mutual TLS: gateway → chat service, worker → gateway, and an internal client.
    let (alice, bob) = (user("alice"), user("bob"));
    let conv = conversation(&p, &alice, &bob).await?;
    let gw = p.gateways[0].ws_addr;
    let mut a = WsClient::connect(gw, &alice, "phone").await?;
    let mut b = WsClient::connect(gw, &bob, "phone").await?;
    a.sync().await?;
    b.sync().await?;
    let sent = a.send_message(&conv, "m1", "over mutual TLS").await?;
    promise!(sent["type"] == "sent", "the send over mutual TLS was answered {sent}");
    let got = b.expect("message").await?;
    promise!(got["body"] == "over mutual TLS", "bob got {got}");

    let (chat_addr, push_addr) = (p.chat_addr, p.gateways[0].grpc_addr);
    let ca = Certificate::from_pem(std::fs::read(&service.ca)?);
    let identity = |leaf: &tests::pki::Leaf| -> anyhow::Result<Identity> {
        Ok(Identity::from_pem(std::fs::read(&leaf.cert)?, std::fs::read(&leaf.key)?))
    };
    let client = internal.leaf("client")?;
    let ok = ClientTlsConfig::new().ca_certificate(ca.clone()).identity(identity(&client)?);
    let (chat, push) = internal_calls(chat_addr, push_addr, (&conv, &alice), Some(ok)).await;
    promise!(
        matches!((&chat, &push), (Call::Answered, Call::Answered)),
        "a client of the internal CA was not answered: {chat:?} {push:?}"
    );

    let foreign_ca = tests::pki::Ca::new("foreign")?;
    let foreign = foreign_ca.leaf("intruder")?;
    // Each attempt is refused during the handshake. The server's alert names the reason (CertificateRequired,
    // UnknownCA), but a client still writing when the server closes sees only the socket closed under it,
    // so the reason is reported, not required; the control above shows the refusals are the certificates'.
    let attempts = [
        ("plaintext", None),
        ("TLS without a client certificate", Some(ClientTlsConfig::new().ca_certificate(ca.clone()))),
        (
            "a client certificate from another CA",
            Some(ClientTlsConfig::new().ca_certificate(ca.clone()).identity(identity(&foreign)?)),
        ),
    ];
    for (what, tls) in attempts {
        let (chat, push) = internal_calls(chat_addr, push_addr, (&conv, &alice), tls).await;
        let (chat, push) = match (chat, push) {
            (Call::Refused(chat), Call::Refused(push)) => (chat, push),
            (chat, push) => broken!("{what} was not refused: chat service {chat:?}, gateway's push server {push:?}"),
        };
        println!("[security] internal gRPC, {what}: chat service: {chat}; gateway: {push}");
    }
    // Nothing refused changed anything: the conversation still holds the one message.
    let h = p
        .chat_client()
        .await?
        .get_history(v1::GetHistoryRequest {
            conversation_id: conv.clone(),
            user_id: bob.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    promise!(h.messages.len() == 1, "history holds {} messages", h.messages.len());
    a.close().await?;
    b.close().await?;
    p.stop().await
}

/// Kafka and Redis over TLS (KAFKA_TLS and rediss://, MSK's and ElastiCache's TLS in production): with the
/// local servers' CA, the whole path works through their TLS ports (the chat service's owners and producers,
/// the workers' consumer and presence reads, the gateways' presence writes: bob's message is pushed, which
/// needs his presence); with a CA that did not sign the servers' certificate, the services do not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_reach_kafka_and_redis_over_tls_and_refuse_servers_they_cannot_verify() -> anyhow::Result<()> {
    use lifecycle::kafka_tls::KafkaTlsArgs;
    use lifecycle::redis_tls::RedisTlsArgs;
    let ca = tests::platform::kafka_tls_ca();
    ensure!(ca.exists(), "{} is missing: infra/local/servers.sh up makes it", ca.display());
    let over_tls = |ca: &std::path::Path, kafka: bool, redis: bool| PlatformOptions {
        gateways: 1,
        // The inbox is read only at connect: bob gets the message only by a push, after a presence lookup.
        inbox_recheck_ms: 600_000,
        kafka_tls: if kafka {
            KafkaTlsArgs { tls: true, ca_file: Some(ca.to_owned()) }
        } else {
            KafkaTlsArgs::default()
        },
        redis_tls: redis.then(|| RedisTlsArgs { ca_file: Some(ca.to_owned()) }),
        ..PlatformOptions::default()
    };
    let p = Platform::start(over_tls(&ca, true, true)).await?;
    let (alice, bob) = (user("alice"), user("bob"));
    let conv = conversation(&p, &alice, &bob).await?;
    let gw = p.gateways[0].ws_addr;
    let mut a = WsClient::connect(gw, &alice, "phone").await?;
    let mut b = WsClient::connect(gw, &bob, "phone").await?;
    a.sync().await?;
    b.sync().await?;
    let sent = a.send_message(&conv, "m1", "over TLS to kafka and redis").await?;
    promise!(sent["type"] == "sent", "the send was answered {sent}");
    let got = b.expect("message").await?;
    promise!(got["body"] == "over TLS to kafka and redis", "bob got {got}");
    promise!(got.get("inbox").is_none(), "bob's message came from the inbox, not a push: {got}");
    a.close().await?;
    b.close().await?;
    p.stop().await?;

    let foreign = tests::pki::Ca::new("foreign")?.leaf("nobody")?;
    for (what, kafka, redis) in [("Kafka", true, false), ("Redis", false, true)] {
        match Platform::start(over_tls(&foreign.ca, kafka, redis)).await {
            Ok(p) => {
                p.stop().await?;
                broken!("services trusting another CA started against {what}'s TLS port")
            }
            Err(e) => println!("[security] {what} over TLS with a foreign CA: the start failed: {e:#}"),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_at_its_open_file_limit_refuses_the_excess_and_goes_on_serving() -> anyhow::Result<()> {
    use tests::cluster::{Cluster, ClusterOptions, Kind};
    // 1,024 open files: by default the gateway admits 1,024 − 512 connections and keeps the rest for itself.
    let (limit, cap) = (1024, 512);
    let options = ClusterOptions {
        chat_services: 1,
        gateways: 1,
        workers: 1,
        gateway_open_files: Some(limit),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(options).await?;
    let gw = cluster.gateway_ws[0];
    let before = cluster.open_files(Kind::Gateway, 0).context("the gateway's open files")?;
    // Up to the cap every connection is admitted (upgraded); past it, each is closed before anything is
    // read: half of them send nothing, half a whole upgrade request.
    let mut open = Vec::new();
    for i in 0..cap {
        match tests::raw::RawWs::connect(gw, &user(&format!("fd{i}")), "phone").await {
            Ok(c) => open.push(c),
            Err(e) => broken!("connection {} of {cap}, within the cap, was not admitted: {e:#}", i + 1),
        }
    }
    let mut refused = 0;
    for i in 0..300 {
        let request = if i % 2 == 0 { String::new() } else { upgrade_request(gw, &user(&format!("over{i}")), "phone") };
        closed_at_accept(gw, request.as_bytes(), &format!("connection {} past the cap of {cap}", cap + i + 1)).await?;
        refused += 1;
    }
    let peak = cluster.open_files(Kind::Gateway, 0).context("the gateway's open files")?;
    println!(
        "[security] open-file limit {limit}: {} connections admitted, {refused} refused; gateway files {before} → {peak}",
        open.len()
    );
    promise!(open.len() == cap && refused == 300, "{} admitted and {refused} refused, not {cap} and 300", open.len());
    promise!(peak < limit as usize, "the gateway holds {peak} files, at its limit of {limit}");
    drop(open);
    // Everything given back: a client connects and a message goes through this gateway both ways.
    let mut chat =
        proto::v1::chat_service_client::ChatServiceClient::connect(format!("http://{}", cluster.chat_addrs[0])).await?;
    let (alice, bob) = (user("fd-alice"), user("fd-bob"));
    let conv = chat
        .create_conversation(v1::CreateConversationRequest {
            kind: v1::ConversationKind::Direct as i32,
            created_by: alice.clone(),
            member_ids: vec![bob.clone()],
            title: String::new(),
        })
        .await?
        .into_inner()
        .conversation
        .context("no conversation")?
        .conversation_id;
    let mut connected = None;
    for _ in 0..50 {
        if let Ok(c) = WsClient::connect(gw, &alice, "phone").await {
            connected = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(mut a) = connected else { broken!("no connection admitted after the others closed") };
    let mut b = WsClient::connect(gw, &bob, "phone").await?;
    a.sync().await?;
    b.sync().await?;
    a.send_message(&conv, "after-the-limit", "still serving").await?;
    let got = b.expect("message").await?;
    promise!(got["body"] == "still serving", "bob got {got}");
    a.close().await?;
    b.close().await?;
    cluster.shutdown().await
}

type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A `wss://` connection trusting `ca_pem` only, with at most TLS `version`; answers the first frame too.
async fn wss(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    version: &'static tokio_rustls::rustls::SupportedProtocolVersion,
    user: &str,
) -> anyhow::Result<(Wss, Value)> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = connector.connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp).await?;
    let mut request = "wss://localhost/v1/ws?device_id=phone".into_client_request()?;
    request.headers_mut().insert("authorization", format!("Bearer {}", tests::token(user, JWT_SECRET)).parse()?);
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls).await?;
    let first = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut ws))
        .await?
        .context("closed before the first frame")??;
    Ok((ws, serde_json::from_str(first.to_text()?)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_tls_1_2_and_1_3_and_stalled_handshakes_are_cut() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    use tokio_rustls::rustls::version::{TLS12, TLS13};
    // The gateway's certificate, from a CA the clients trust (its files go with `ca`).
    let ca = tests::pki::Ca::new("wss")?;
    let leaf = ca.leaf("gateway")?;
    let (cert, key, pem) = (leaf.cert.clone(), leaf.key.clone(), std::fs::read_to_string(ca.ca_file())?);
    let p = Platform::start(PlatformOptions {
        gateways: 1,
        handshake_timeout_ms: 2_000,
        tls: Some((cert, key)),
        ..PlatformOptions::default()
    })
    .await?;
    let gw = p.gateways[0].ws_addr;
    for version in [&TLS13, &TLS12] {
        let (mut ws, welcome) = wss(gw, &pem, version, &user("alice")).await?;
        promise!(welcome["type"] == "welcome", "over {version:?}: {welcome}");
        ws.close(None).await?;
    }
    // A client that does not trust the certificate refuses it (its own check, unknown issuer), and a plain
    // ws:// client gets no HTTP answer, only the connection closed (after a TLS alert, at most): no session.
    let other = tests::pki::Ca::new("other")?;
    let other_pem = std::fs::read_to_string(other.ca_file())?;
    let eve = user("eve");
    match tokio::time::timeout(ANSWER_WAIT, wss(gw, &other_pem, &TLS13, &eve)).await {
        Err(_) => broken!("a client trusting another CA got no answer within {ANSWER_WAIT:?}"),
        Ok(Ok(_)) => broken!("a client trusting another CA connected"),
        Ok(Err(e)) => {
            use tokio_rustls::rustls::{CertificateError, Error as TlsError};
            let reason = e.chain().find_map(|c| {
                c.downcast_ref::<TlsError>()
                    .or_else(|| c.downcast_ref::<std::io::Error>()?.get_ref()?.downcast_ref::<TlsError>())
            });
            promise!(
                matches!(reason, Some(TlsError::InvalidCertificate(CertificateError::UnknownIssuer))),
                "a client trusting another CA failed otherwise than on the certificate's issuer: {e:#}"
            );
        }
    }
    let plain = user("plain");
    match knock(gw, upgrade_request(gw, &plain, "phone").as_bytes(), ANSWER_WAIT).await? {
        None => broken!("plain ws:// to the TLS port: still open after {ANSWER_WAIT:?}"),
        Some(answer) => promise!(
            !answer.starts_with(b"HTTP/"),
            "plain ws:// to the TLS port got an HTTP answer: {:?}",
            String::from_utf8_lossy(&answer)
        ),
    }
    promise!(!present(&p, &eve).await? && !present(&p, &plain).await?, "a refused client wrote presence");

    // A thousand connections stalled in the TLS handshake (half sent part of a ClientHello, half nothing):
    // each is cut within the handshake timeout, while a normal client still connects.
    let started = std::time::Instant::now();
    let mut stalled = Vec::new();
    for i in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(gw).await?;
        if i % 2 == 0 {
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await?;
        }
        stalled.push(s);
    }
    let (mut ws, welcome) = wss(gw, &pem, &TLS13, &user("bob")).await?;
    promise!(welcome["type"] == "welcome", "a normal client among stalled ones: {welcome}");
    ws.close(None).await?;
    // Cut: the connection ended (end of stream or a reset) with nothing sent, within 10 s of the start.
    let deadline = started + Duration::from_secs(10);
    let mut cut = 0;
    for mut s in stalled {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if until_closed(&mut s, left).await.is_some_and(|answer| answer.is_empty()) {
            cut += 1;
        }
    }
    let took = started.elapsed();
    promise!(cut == 1000, "{cut} of 1000 stalled handshakes were cut within 10 s (took {took:?})");
    println!("[security] 1000 stalled TLS handshakes cut within {took:?} (timeout 2 s)");
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_headers_are_cut_while_others_connect() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let p = Platform::start(PlatformOptions { gateways: 1, handshake_timeout_ms: 2_000, ..PlatformOptions::default() })
        .await?;
    let gw = p.gateways[0].ws_addr;
    let started = std::time::Instant::now();
    let mut stalled = Vec::new();
    for i in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(gw).await?;
        if i % 2 == 0 {
            // Half a request: the headers never end.
            s.write_all(b"GET /v1/ws HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\n").await?;
        }
        stalled.push(s);
    }
    let mut c = WsClient::connect(gw, &user("alice"), "phone").await?;
    c.sync().await?;
    // Cut: the connection ended within 10 s of the start, after nothing or hyper's 408 answer.
    let deadline = started + Duration::from_secs(10);
    let mut cut = 0;
    for mut s in stalled {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if until_closed(&mut s, left)
            .await
            .is_some_and(|answer| answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"))
        {
            cut += 1;
        }
    }
    let took = started.elapsed();
    promise!(cut == 1000, "{cut} of 1000 stalled requests were cut within 10 s (took {took:?})");
    println!("[security] 1000 stalled HTTP requests cut within {took:?} (timeout 2 s)");
    c.close().await?;
    p.stop().await
}

/// One kind of malformed frame, and the close codes the gateway may answer it with.
struct Malformed {
    what: &'static str,
    bytes: fn() -> Vec<Vec<u8>>,
    codes: &'static [u16],
    /// The client is still writing when the gateway closes: TCP may then reset the connection, and the reset
    /// discards the close frame on its way. Ending without a close frame is accepted for these.
    reset_allowed: bool,
}

fn malformed_kinds() -> Vec<Malformed> {
    use tests::raw::{frame, text};
    vec![
        Malformed {
            what: "reserved opcode",
            bytes: || vec![frame(true, 0, 0x3, true, b"x")],
            codes: &[1002],
            reset_allowed: false,
        },
        Malformed {
            what: "reserved control opcode",
            bytes: || vec![frame(true, 0, 0xb, true, b"")],
            codes: &[1002],
            reset_allowed: false,
        },
        Malformed {
            what: "reserved bits",
            bytes: || vec![frame(true, 4, 0x1, true, b"{}")],
            codes: &[1002],
            reset_allowed: false,
        },
        Malformed {
            what: "unmasked client frame",
            bytes: || vec![frame(true, 0, 0x1, false, b"{}")],
            codes: &[1002],
            reset_allowed: false,
        },
        Malformed {
            what: "invalid UTF-8",
            bytes: || vec![text(&[b'{', 0xff, 0xfe, b'}'])],
            codes: &[1007],
            reset_allowed: false,
        },
        Malformed {
            // tungstenite answers an invalid close code itself and ends the connection; now and then (about
            // one time in forty here) its close frame was not read by the client before the end.
            what: "close code 999",
            bytes: || vec![frame(true, 0, 0x8, true, &[0x03, 0xe7])],
            codes: &[1002],
            reset_allowed: true,
        },
        Malformed {
            what: "close code 1005",
            bytes: || vec![frame(true, 0, 0x8, true, &[0x03, 0xed])],
            codes: &[1002],
            reset_allowed: true,
        },
        Malformed {
            what: "control frame of 126 bytes",
            bytes: || vec![frame(true, 0, 0x9, true, &[0; 126])],
            codes: &[1002],
            reset_allowed: false,
        },
        Malformed {
            what: "fragmented ping",
            bytes: || vec![frame(false, 0, 0x9, true, b"")],
            codes: &[1002],
            reset_allowed: false,
        },
        Malformed {
            what: "continuation first",
            bytes: || vec![frame(true, 0, 0x0, true, b"x")],
            codes: &[1002],
            reset_allowed: false,
        },
        Malformed {
            what: "absurd length",
            bytes: || {
                let mut f = vec![0x81, 0x80 | 127];
                f.extend_from_slice(&(1u64 << 62).to_be_bytes());
                f.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
                vec![f]
            },
            codes: &[1009, 1002],
            reset_allowed: false,
        },
        Malformed {
            what: "message over the limit",
            bytes: || vec![text(&[b'a'; 70 * 1024])],
            codes: &[1009],
            reset_allowed: false,
        },
        Malformed {
            what: "fragments over the limit",
            bytes: || {
                let mut frames = vec![frame(false, 0, 0x1, true, &[b'a'; 1024])];
                frames.extend((0..70).map(|_| frame(false, 0, 0x0, true, &[b'a'; 1024])));
                vec![frames.concat()]
            },
            codes: &[1009],
            reset_allowed: false,
        },
    ]
}

/// Text frames of the protocol with a few bytes changed (still UTF-8): each answered with an error or handled.
fn mutated_frames(n: usize, seed: u64) -> Vec<u8> {
    let valid = br#"{"v":1,"type":"history","id":"h-1","conversation_id":"01900000-0000-7000-8000-000000000001","after_seq":0}"#;
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::new();
    for _ in 0..n {
        let mut payload = valid.to_vec();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() % payload.len() as u64) as usize;
            let alphabet = b" {}[]\":,0123456789abcxyz";
            payload[at] = alphabet[(next() % alphabet.len() as u64) as usize];
        }
        if next() % 5 == 0 {
            payload.truncate((next() % payload.len() as u64) as usize);
        }
        out.extend(tests::raw::text(&payload));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_closed_with_their_code_and_the_gateway_stays_up() -> anyhow::Result<()> {
    use tests::cluster::{Cluster, ClusterOptions, Kind};
    let options = ClusterOptions { chat_services: 1, gateways: 1, workers: 1, ..ClusterOptions::default() };
    let cluster = Cluster::start(options).await?;
    let gw = cluster.gateway_ws[0];
    // Warm the gateway up (allocator, pools) before taking its memory.
    for i in 0..50 {
        let mut c = WsClient::connect(gw, &user(&format!("warm{i}")), "phone").await?;
        c.sync().await?;
        c.close().await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cluster.rss_kib(Kind::Gateway, 0).context("gateway memory")?;
    let kinds = malformed_kinds();
    let per_kind = 16;
    let frames_each = 490;
    let mut frames_sent = 0;
    let mut closes: std::collections::BTreeMap<&str, Vec<Option<u16>>> = Default::default();
    for round in 0..per_kind {
        let attempts = kinds.iter().enumerate().map(|(k, kind)| async move {
            let mut ws = tests::raw::RawWs::connect(gw, &user(&format!("raw{k}r{round}")), "phone").await?;
            ws.send(&mutated_frames(frames_each, (round * 100 + k) as u64)).await?;
            for bytes in (kind.bytes)() {
                // The gateway may close before all of an oversized frame is written.
                let _ = ws.send(&bytes).await;
            }
            anyhow::Ok((kind.what, ws.close_code(Duration::from_secs(30)).await?))
        });
        for r in futures::future::join_all(attempts).await {
            let (what, code) = r?;
            closes.entry(what).or_default().push(code);
            frames_sent += frames_each + 1;
        }
    }
    for kind in &kinds {
        let seen = &closes[kind.what];
        ensure!(
            seen.iter().all(|c| c.map_or(kind.reset_allowed, |c| kind.codes.contains(&c))),
            "{}: closed with {seen:?}, expected one of {:?}",
            kind.what,
            kind.codes
        );
    }
    // Still up and serving, and its memory back near where it was.
    let mut c = WsClient::connect(gw, &user("after"), "phone").await?;
    c.sync().await?;
    c.send_json(json!({"v": 1, "type": "ping", "id": "after"})).await?;
    ensure!(c.expect("pong").await?["id"] == "after", "no pong after the flood");
    c.close().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = cluster.rss_kib(Kind::Gateway, 0).context("gateway memory")?;
    let ended_without_close = closes.values().flatten().filter(|c| c.is_none()).count();
    println!(
        "[security] {frames_sent} malformed or mutated frames over {} connections: each closed with its code \
         ({ended_without_close} ended without a close frame, where allowed); gateway resident memory {before} KiB \
         before, {after} KiB after",
        kinds.len() * per_kind
    );
    ensure!(after < before + 16 * 1024, "gateway memory grew from {before} to {after} KiB");
    cluster.shutdown().await
}

/// The presence entry of `user`'s `device`, as written (push address, connection id), if any.
async fn presence_entry(p: &Platform, user: &str, device: &str) -> anyhow::Result<Option<presence::Entry>> {
    let mut redis = p.redis().await?;
    let key = presence::key(&p.redis_prefix, &UserId::parse(user)?);
    let value: Option<String> = redis::cmd("HGET").arg(key).arg(device).query_async(&mut redis).await?;
    Ok(value.as_deref().and_then(presence::Entry::decode))
}

/// Connects `user` on `device` to `gw` and reads its inbox; answers the connection and its session id.
async fn online(gw: std::net::SocketAddr, user: &str, device: &str) -> anyhow::Result<(WsClient, u64)> {
    let mut c = WsClient::connect_with(gw, user, device, Some(&tests::token(user, JWT_SECRET)))
        .await
        .map_err(|r| anyhow::anyhow!("{user}/{device} refused: {r:?}"))?;
    let welcome = c.expect("welcome").await?;
    let session = welcome["session_id"].as_str().and_then(|s| s.parse().ok()).context("no session id")?;
    c.sync().await?;
    Ok((c, session))
}

/// Requires that `c` is closed with 4000 (`what`: which connection replaced it).
async fn closed_as_replaced(c: &mut WsClient, what: &str) -> anyhow::Result<()> {
    let (code, reason) = c.recv_close(ANSWER_WAIT).await?;
    promise!(code == 4000, "the older connection, replaced {what}, was closed with {code} ({reason:?}), not 4000");
    Ok(())
}

/// Requires that `c` is open and answers a ping.
async fn still_open(c: &mut WsClient, what: &str) -> anyhow::Result<()> {
    c.send_json(json!({"v": 1, "type": "ping", "id": "still-open"})).await?;
    match c.expect("pong").await {
        Ok(pong) => promise!(pong["id"] == "still-open", "{what}: answered {pong}"),
        Err(e) => broken!("{what} is not open: {e:#}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_connecting_again_to_the_same_gateway_closes_its_older_connection_with_4000() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions { gateways: 1, ..PlatformOptions::default() }).await?;
    let gw = p.gateways[0].ws_addr;
    let (alice, bob) = (user("alice"), user("bob"));
    let conv = conversation(&p, &bob, &alice).await?;
    let (mut first, _) = online(gw, &alice, "phone").await?;
    let (mut second, session) = online(gw, &alice, "phone").await?;
    closed_as_replaced(&mut first, "on the same gateway").await?;
    // The newer connection stays, is the device's presence, and gets the device's messages.
    still_open(&mut second, "the newer connection").await?;
    holds_the_device(&p, (&alice, &mut second, 0, session), (&bob, gw), &conv).await?;
    second.close().await?;
    p.stop().await
}

/// The device's connection `(user, conn, gateway index, session)`, which replaced older ones, is the one
/// presence names and the one that gets the device's messages: one from `sender` on `sender_gw` arrives.
async fn holds_the_device(
    p: &Platform,
    (user, conn, gateway, session): (&str, &mut WsClient, usize, u64),
    (sender, sender_gw): (&str, std::net::SocketAddr),
    conv: &str,
) -> anyhow::Result<()> {
    let entry = presence_entry(p, user, "phone").await?;
    let expected = p.gateways[gateway].grpc_addr.to_string();
    promise!(
        entry.as_ref().is_some_and(|e| e.push_addr == expected && e.conn_id == session),
        "presence names {entry:?}, not the newest connection {session} on {expected}"
    );
    let (mut b, _) = online(sender_gw, sender, "phone").await?;
    b.send_message(conv, "to-the-newest", "hello").await?;
    let got = conn.expect("message").await?;
    promise!(got["body"] == "hello", "the newest connection got {got}");
    b.close().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_connecting_again_to_another_gateway_closes_its_older_connection_with_4000() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions { gateways: 2, ..PlatformOptions::default() }).await?;
    let (gw0, gw1) = (p.gateways[0].ws_addr, p.gateways[1].ws_addr);
    let (alice, bob) = (user("alice"), user("bob"));
    let conv = conversation(&p, &bob, &alice).await?;
    let (mut on0, _) = online(gw0, &alice, "phone").await?;
    let (mut on1, _) = online(gw1, &alice, "phone").await?;
    closed_as_replaced(&mut on0, "on another gateway").await?;
    still_open(&mut on1, "the newer connection").await?;
    // And back: the device returns to the first gateway, which closes the connection on the second. The
    // first gateway's own, newer connection is not closed by the request naming the older one there.
    let (mut back, session) = online(gw0, &alice, "phone").await?;
    closed_as_replaced(&mut on1, "on the first gateway again").await?;
    still_open(&mut back, "the newest connection").await?;
    holds_the_device(&p, (&alice, &mut back, 0, session), (&bob, gw1), &conv).await?;
    back.close().await?;
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_shutting_down_closes_its_connections_with_1001_and_they_resume_elsewhere() -> anyhow::Result<()> {
    let mut p = Platform::start(PlatformOptions { gateways: 2, ..PlatformOptions::default() }).await?;
    let (gw0, gw1) = (p.gateways[0].ws_addr, p.gateways[1].ws_addr);
    let (alice, bob) = (user("alice"), user("bob"));
    let conv = conversation(&p, &bob, &alice).await?;
    let (mut a, _) = online(gw0, &alice, "phone").await?;
    let (mut b, _) = online(gw1, &bob, "phone").await?;
    // The client reads while the gateway stops: the gateway waits for its sessions to end.
    let (stopped, closed) = tokio::join!(p.stop_gateway(0), a.recv_close(ANSWER_WAIT));
    stopped?;
    let (code, reason) = closed?;
    promise!(code == 1001, "a stopping gateway closed its connection with {code} ({reason:?}), not 1001");
    promise!(presence_entry(&p, &alice, "phone").await?.is_none(), "the stopped gateway left its presence");
    // Bob, on the other gateway, is untouched; Alice reconnects there and gets what is sent to her.
    still_open(&mut b, "a connection on the other gateway").await?;
    let (mut again, _) = online(gw1, &alice, "phone").await?;
    b.send_message(&conv, "after-the-stop", "hello again").await?;
    let got = again.expect("message").await?;
    promise!(got["body"] == "hello again", "alice, reconnected, got {got}");
    again.close().await?;
    b.close().await?;
    p.stop().await
}

/// Sends `request` over a new TCP connection and answers the response's status and body (the gateway
/// closes the connection after it: `Connection: close`); no complete HTTP answer in time is broken.
async fn http_exchange(addr: std::net::SocketAddr, request: &str) -> anyhow::Result<(u16, String)> {
    let Some(answer) = knock(addr, request.as_bytes(), ANSWER_WAIT).await? else {
        broken!("no complete answer within {ANSWER_WAIT:?}")
    };
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let parsed = answer.split_once("\r\n\r\n").and_then(|(head, body)| {
        let status = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
        Some((status, body.to_owned()))
    });
    match parsed {
        Some(answer) => Ok(answer),
        None => broken!("not an HTTP answer: {answer:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_are_no_websocket_upgrade_or_name_no_device_are_refused_with_400() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions { gateways: 1, ..PlatformOptions::default() }).await?;
    let gw = p.gateways[0].ws_addr;
    let alice = user("alice");
    let token = tests::token(&alice, JWT_SECRET);
    // A plain GET, and an upgrade of another WebSocket version, each with a valid token and device.
    let plain = format!(
        "GET /v1/ws?device_id=phone HTTP/1.1\r\nHost: {gw}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    );
    let version_8 = format!(
        "GET /v1/ws?device_id=phone HTTP/1.1\r\nHost: {gw}\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    for (what, request) in [("a plain GET", plain), ("a version 8 upgrade", version_8)] {
        let (status, body) = http_exchange(gw, &request).await?;
        let code = serde_json::from_str::<Value>(&body).ok().and_then(|b| b["code"].as_str().map(str::to_owned));
        promise!(
            status == 400 && code.as_deref() == Some("not_websocket"),
            "{what} to /v1/ws was answered {status} {body:?}, not 400 not_websocket"
        );
    }
    // The device: named by neither the query nor the token, or by both differently.
    let key = EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let with_device = |did: &str| {
        encode(&Header::default(), &json!({"sub": alice, "exp": now() + 600, "did": did}), &key).unwrap_or_default()
    };
    let bearer = format!("Bearer {token}");
    let headers = [("authorization", bearer.as_str())];
    let attempt = WsClient::connect_request(gw, &alice, "", "phone", &headers);
    refused_with(attempt, 400, "bad_device", "no device id").await?;
    let tablet = format!("Bearer {}", with_device("tablet"));
    let headers = [("authorization", tablet.as_str())];
    let attempt = WsClient::connect_request(gw, &alice, "device_id=phone", "phone", &headers);
    refused_with(attempt, 400, "bad_device", "the query's device phone and the token's tablet").await?;
    promise!(!present(&p, &alice).await?, "a refused upgrade wrote presence");
    // The token's device alone, or both agreeing, is accepted.
    let phone = format!("Bearer {}", with_device("phone"));
    for query in ["", "device_id=phone"] {
        match WsClient::connect_request(gw, &alice, query, "phone", &[("authorization", phone.as_str())]).await {
            Ok(mut c) => {
                let welcome = c.expect("welcome").await?;
                promise!(welcome["device_id"] == "phone", "query {query:?}: welcomed as {welcome}");
                c.close().await?;
            }
            Err(r) => broken!("the token's device with the query {query:?} was refused: {r:?}"),
        }
    }
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_frame_is_answered_bad_frame_and_the_connection_stays_open() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions { gateways: 1, ..PlatformOptions::default() }).await?;
    let gw = p.gateways[0].ws_addr;
    let (mut c, _) = online(gw, &user("alice"), "phone").await?;
    c.send_binary(br#"{"v":1,"type":"ping","id":"in-binary"}"#).await?;
    let f = match c.recv().await {
        Ok(f) => f,
        Err(e) => broken!("a binary frame was not answered: {e:#}"),
    };
    promise!(
        f["type"] == "error" && f["code"] == "bad_frame" && f["retryable"] == false && f.get("id").is_none(),
        "a binary frame was answered {f}, not an error bad_frame"
    );
    still_open(&mut c, "the connection after a binary frame").await?;
    c.close().await?;
    p.stop().await
}

/// GATEWAY_WEB_DIR: its files, and only its files, are served at `/app/`, with headers that keep the page
/// from being framed or sniffed; without the setting `/app/` is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_folder_is_served_at_app_and_nothing_outside_it() -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("web-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let web = root.join("web");
    std::fs::create_dir_all(web.join("js"))?;
    std::fs::write(web.join("index.html"), "<!doctype html><title>chat</title>")?;
    std::fs::write(web.join("js/app.js"), "export const app = 1;")?;
    std::fs::write(root.join("secret.txt"), "the secret next to the web folder")?;
    let p = Platform::start(PlatformOptions { gateways: 1, web_dir: Some(web), ..PlatformOptions::default() }).await?;
    let gw = p.gateways[0].ws_addr;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {gw}\r\nConnection: close\r\n\r\n");
    let (status, body) = http_exchange(gw, &get("/app/")).await?;
    promise!(status == 200 && body.contains("<title>chat</title>"), "/app/ answered {status}: {body:?}");
    let Some(raw) = knock(gw, get("/app/js/app.js").as_bytes(), ANSWER_WAIT).await? else {
        broken!("no answer for /app/js/app.js")
    };
    let head = String::from_utf8_lossy(&raw).to_lowercase();
    for header in ["content-type: text/javascript", "x-content-type-options: nosniff", "x-frame-options: deny"] {
        promise!(head.contains(header), "/app/js/app.js lacks {header}: {head}");
    }
    promise!(head.contains("content-security-policy: default-src 'self'"), "no content security policy: {head}");
    for escape in ["/app/../secret.txt", "/app/%2e%2e/secret.txt", "/app/..%2fsecret.txt", "/app/js/../../secret.txt"] {
        let (status, body) = http_exchange(gw, &get(escape)).await?;
        promise!(status >= 400 && !body.contains("the secret"), "{escape} answered {status}: {body:?}");
    }
    let (status, _) = http_exchange(gw, &get("/app/missing.js")).await?;
    promise!(status == 404, "a missing file answered {status}");
    p.stop().await?;
    // Without the setting, nothing is served there.
    let bare = Platform::start(PlatformOptions { gateways: 1, ..PlatformOptions::default() }).await?;
    let gw = bare.gateways[0].ws_addr;
    let (status, _) =
        http_exchange(gw, &format!("GET /app/ HTTP/1.1\r\nHost: {gw}\r\nConnection: close\r\n\r\n")).await?;
    promise!(status == 404, "/app/ without GATEWAY_WEB_DIR answered {status}");
    bare.stop().await?;
    std::fs::remove_dir_all(root)?;
    Ok(())
}
