//! The whole path of a message, on the real Kafka, Cassandra and Redis: gateway, chat service, log, store,
//! delivery worker, presence, push and inbox.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use chat_model::event::{self, LogEvent};
use chat_model::{ConversationId, DeviceId, UserId, presence};
use proto::v1;
use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::{Value, json};
use tests::platform::kafka_brokers;
use tests::{Platform, PlatformOptions, WsClient, token};

/// A user name unique to this test run.
fn user(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

async fn conversation(
    p: &Platform,
    kind: v1::ConversationKind,
    creator: &str,
    others: &[&str],
) -> anyhow::Result<String> {
    let mut chat = p.chat_client().await?;
    let r = chat
        .create_conversation(v1::CreateConversationRequest {
            kind: kind as i32,
            created_by: creator.into(),
            member_ids: others.iter().map(|s| s.to_string()).collect(),
            title: String::new(),
        })
        .await?
        .into_inner();
    Ok(r.conversation.context("no conversation")?.conversation_id)
}

/// Polls `check` until it returns Some, for at most 20 s (each poll waits for an event in a real server).
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `user`'s `device` has no presence entry (its connection closed).
async fn presence_gone(p: &Platform, user: &str, device: &str) -> anyhow::Result<()> {
    let redis = p.redis().await?;
    let key = presence::key(&p.redis_prefix, &UserId::parse(user)?);
    eventually(&format!("{user}/{device}'s presence to go"), || {
        let mut redis = redis.clone();
        let key = key.clone();
        async move {
            let exists: bool = redis::cmd("HEXISTS").arg(&key).arg(device).query_async(&mut redis).await?;
            Ok((!exists).then_some(()))
        }
    })
    .await
}

/// Reads the conversation's records back from the Kafka topic, with a consumer of its own.
async fn events_in_topic(topic: &str, conversation: &str, expected: usize) -> anyhow::Result<Vec<chat_model::Message>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", format!("e2e-reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut found = Vec::new();
    while found.len() < expected {
        let record = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .context("the event did not show up in the topic")??;
        if record.key() != Some(conversation.as_bytes()) {
            continue;
        }
        match event::decode(record.payload().unwrap_or_default())? {
            LogEvent::MessageSent(m) => found.push(m),
            LogEvent::ReceiptRecorded(_) | LogEvent::ConversationCreated(_) | LogEvent::MembersChanged(_) => {}
        }
    }
    Ok(found)
}

/// Rows of the conversation in the history table: (seq, message_id, body).
async fn history_rows(p: &Platform, conversation: &str) -> anyhow::Result<Vec<(i64, uuid::Uuid, String)>> {
    let id = ConversationId::parse(conversation)?;
    let rows = p
        .store
        .session()
        .query_unpaged(
            "SELECT seq, message_id, body FROM chat_e2e.messages WHERE conversation_id = ? AND bucket = 0",
            (id.as_uuid(),),
        )
        .await?
        .into_rows_result()?;
    let mut out = Vec::new();
    for r in rows.rows::<(i64, uuid::Uuid, String)>()? {
        out.push(r?);
    }
    Ok(out)
}

/// Sends a last message from `sender` and reads `reader` up to it: every message frame before it is returned.
/// Delivery is ordered per conversation, so any duplicate of an earlier message arrives before the sentinel.
async fn read_until_sentinel(
    sender: &mut WsClient,
    reader: &mut WsClient,
    conversation: &str,
) -> anyhow::Result<Vec<Value>> {
    let ack = sender.send_message(conversation, "sentinel", "sentinel").await?;
    let mut before = Vec::new();
    loop {
        let f = reader.expect("message").await?;
        if f["seq"] == ack["seq"] {
            return Ok(before);
        }
        before.push(f);
    }
}

/// A platform stopped cleanly deletes its events and dead-letter topics: tests make one each, and a broker
/// that kept them all (3,857 partitions after many local runs) paused longer for every young collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_stopped_cleanly_deletes_its_topics() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions { gateways: 1, workers: 1, ..PlatformOptions::default() }).await?;
    let mine = [p.topic.clone(), format!("{}.dlq", p.topic)];
    let names = tokio::task::spawn_blocking(tests::platform::topic_names).await??;
    ensure!(mine.iter().all(|t| names.contains(t)), "the platform's topics {mine:?} were never made");
    p.stop().await?;
    eventually("the stopped platform's topics to be deleted", || async {
        let names = tokio::task::spawn_blocking(tests::platform::topic_names).await??;
        Ok((!mine.iter().any(|t| names.contains(t))).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_travels_from_one_gateway_to_the_other() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions::default()).await?;
    let (a, b) = (user("alice"), user("bob"));
    let conv = conversation(&p, v1::ConversationKind::Direct, &a, &[&b]).await?;
    let mut ca = WsClient::connect(p.gateways[0].ws_addr, &a, "phone").await?;
    let mut cb = WsClient::connect(p.gateways[1].ws_addr, &b, "laptop").await?;
    ensure!(ca.sync().await?.is_empty() && cb.sync().await?.is_empty());

    let ack = ca.send_message(&conv, "c-1", "hello bob").await?;
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["duplicate"], false);
    let got = cb.expect("message").await?;
    assert_eq!(got["message_id"], ack["message_id"]);
    assert_eq!(got["seq"], 1);
    assert_eq!(got["body"], "hello bob");
    assert_eq!(got["sender_id"], a.as_str());
    assert_eq!(got["conversation_id"], conv.as_str());

    let events = events_in_topic(&p.topic, &conv, 1).await?;
    assert_eq!(events[0].seq.get(), 1);
    assert_eq!(events[0].message_id.to_string(), ack["message_id"].as_str().unwrap_or_default());
    assert_eq!(events[0].body.as_str(), "hello bob");

    let rows = history_rows(&p, &conv).await?;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, 1);
    assert_eq!(rows[0].1.to_string(), ack["message_id"].as_str().unwrap_or_default());
    assert_eq!(rows[0].2, "hello bob");

    let mut redis = p.redis().await?;
    let key = presence::key(&p.redis_prefix, &UserId::parse(&b)?);
    let value: Option<String> = redis::cmd("HGET").arg(&key).arg("laptop").query_async(&mut redis).await?;
    let entry = presence::Entry::decode(&value.context("no presence for bob's laptop")?).context("bad presence")?;
    assert_eq!(entry.push_addr, p.gateways[1].grpc_addr.to_string());

    // The chat service's counters: its one replica serves every partition, and committed the conversation's
    // creation and the send.
    assert_eq!(p.chat_metric("chat_owner_partitions").await?, PlatformOptions::default().partitions as u64);
    let transactions = p.chat_metric("chat_owner_transactions_total").await?;
    let events = p.chat_metric("chat_owner_events_total").await?;
    ensure!(transactions >= 1 && events >= 2 && events >= transactions, "{transactions} transactions, {events} events");
    assert_eq!(p.chat_metric("chat_owner_fenced_total").await?, 0);

    // The gateways' counters: alice's gateway forwarded her one send, bob's took the one push.
    assert_eq!(p.gateway_metric(0, "gateway_connections").await?, 1);
    assert_eq!(p.gateway_metric(0, "gateway_sends_total").await?, 1);
    assert_eq!(p.gateway_metric(0, "gateway_send_errors_total").await?, 0);
    let pushed = p.gateway_metric(1, "gateway_pushed_total").await?;
    ensure!(pushed >= 1, "bob's gateway counted {pushed} pushes");
    assert_eq!(p.gateway_metric(1, "gateway_connections_opened_total").await?, 1);
    ca.close().await?;
    // Alice's session ends on her close: the gauge falls (once the session let go) and it was counted closed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.gateway_metric(0, "gateway_connections").await? > 0 {
        ensure!(tokio::time::Instant::now() < deadline, "alice's closed session still counted open after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(p.gateway_metric(0, "gateway_connections_closed_total").await?, 1);

    cb.close().await?;
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_gets_its_inbox_in_order_and_acks_clear_it() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions::default()).await?;
    let (a, b) = (user("alice"), user("bob"));
    let conv = conversation(&p, v1::ConversationKind::Direct, &a, &[&b]).await?;
    // Bob's phone connects once (so the platform knows the device), then goes offline.
    let cb = WsClient::connect(p.gateways[1].ws_addr, &b, "phone").await?;
    cb.close().await?;
    presence_gone(&p, &b, "phone").await?;

    let mut ca = WsClient::connect(p.gateways[0].ws_addr, &a, "phone").await?;
    ca.sync().await?;
    for i in 1..=3 {
        let ack = ca.send_message(&conv, &format!("c-{i}"), &format!("m{i}")).await?;
        assert_eq!(ack["seq"], i);
    }
    let (bu, bd) = (UserId::parse(&b)?, DeviceId::parse("phone")?);
    let inbox = eventually("three inbox rows", || {
        let store = p.store.clone();
        let (bu, bd) = (bu.clone(), bd.clone());
        async move {
            let rows = store.inbox(&bu, &bd, None, 100).await?;
            Ok((rows.len() == 3).then_some(rows))
        }
    })
    .await?;
    let seqs: Vec<u64> = inbox.iter().map(|m| m.seq.get()).collect();
    assert_eq!(seqs, vec![1, 2, 3]);

    let mut cb = WsClient::connect(p.gateways[0].ws_addr, &b, "phone").await?;
    let synced = cb.sync().await?;
    let got: Vec<(u64, String)> =
        synced.iter().map(|f| (f["seq"].as_u64().unwrap_or(0), f["body"].as_str().unwrap_or("").to_owned())).collect();
    assert_eq!(got, vec![(1, "m1".into()), (2, "m2".into()), (3, "m3".into())]);

    cb.send_json(json!({"v": 1, "type": "delivered", "conversation_id": conv, "seq": 3})).await?;
    eventually("an empty inbox", || {
        let store = p.store.clone();
        let (bu, bd) = (bu.clone(), bd.clone());
        async move { Ok(store.inbox(&bu, &bd, None, 100).await?.is_empty().then_some(())) }
    })
    .await?;
    ca.close().await?;
    cb.close().await?;
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_cover_every_number_once() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions::default()).await?;
    let (a, b) = (user("alice"), user("bob"));
    let conv = conversation(&p, v1::ConversationKind::Direct, &a, &[&b]).await?;
    let mut cb = WsClient::connect(p.gateways[1].ws_addr, &b, "laptop").await?;
    cb.sync().await?;
    let mut chat = p.chat_client().await?;
    for i in 1..=50u64 {
        let r = chat
            .send_message(v1::SendMessageRequest {
                conversation_id: conv.clone(),
                sender_id: a.clone(),
                sender_device_id: "bot".into(),
                client_msg_id: format!("h-{i}"),
                body: format!("message {i}"),
            })
            .await?
            .into_inner();
        assert_eq!(r.seq, i);
    }
    // History is projected from the log: it shows a message no later than it is delivered (P1), so once
    // number 50 has reached bob every page must be complete.
    loop {
        let f = cb.recv().await?;
        if f["type"] == "message" && f["seq"] == 50 {
            break;
        }
    }
    let mut seen = Vec::new();
    let mut after = 0;
    let mut pages = Vec::new();
    loop {
        cb.send_json(json!({"v": 1, "type": "history", "id": format!("h{after}"), "conversation_id": conv, "after_seq": after, "limit": 20}))
            .await?;
        let page = loop {
            let f = cb.recv().await?;
            if f["type"] == "history" {
                break f;
            }
        };
        assert_eq!(page["last_seq"], 50);
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        pages.push(messages.len());
        if messages.is_empty() {
            break;
        }
        for m in &messages {
            let seq = m["seq"].as_u64().unwrap_or(0);
            assert_eq!(m["body"], format!("message {seq}"));
            seen.push(seq);
        }
        after = *seen.last().unwrap_or(&0);
    }
    assert_eq!(pages, vec![20, 20, 10, 0]);
    assert_eq!(seen, (1..=50).collect::<Vec<u64>>());
    cb.close().await?;
    p.stop().await
}

/// Asks for one history page and answers the frame that names the request (`history` or `error`).
async fn history_page(c: &mut WsClient, request: Value) -> anyhow::Result<Value> {
    let id = request["id"].clone();
    c.send_json(request).await?;
    loop {
        let f = c.recv().await?;
        if (f["type"] == "history" || f["type"] == "error") && f["id"] == id {
            return Ok(f);
        }
    }
}

fn page_seqs(page: &Value) -> Vec<u64> {
    page["messages"].as_array().map(|m| m.iter().filter_map(|m| m["seq"].as_u64()).collect()).unwrap_or_default()
}

/// docs/protocol.md: history pages backwards with `before_seq`, a page holds at most 4 MiB of bodies (so
/// the largest frame stays within what WebSocket libraries accept), `after_seq` past the last number
/// answers an empty page, and a field of the wrong type or range is `invalid_field` with the request's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_backwards_within_their_bytes_and_bad_fields_name_the_request() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions::default()).await?;
    let (a, b) = (user("alice"), user("bob"));
    let conv = conversation(&p, v1::ConversationKind::Direct, &a, &[&b]).await?;
    let mut cb = WsClient::connect(p.gateways[1].ws_addr, &b, "laptop").await?;
    cb.sync().await?;
    // 300 bodies of 16 KiB: 4.7 MiB, more than one page may hold.
    let n = 300u64;
    let mut chat = p.chat_client().await?;
    let (c, sender) = (conv.clone(), a.clone());
    // Sent from a task while bob reads (a client that stops reading stops answering pings: 4002).
    let sends = tokio::spawn(async move {
        for i in 1..=n {
            let body = format!("{i:05}{}", "x".repeat(chat_model::MAX_BODY_BYTES - 5));
            chat.send_message(v1::SendMessageRequest {
                conversation_id: c.clone(),
                sender_id: sender.clone(),
                sender_device_id: "bot".into(),
                client_msg_id: format!("big-{i}"),
                body,
            })
            .await?;
        }
        anyhow::Ok(())
    });
    loop {
        let f = cb.recv().await?;
        if f["type"] == "message" && f["seq"] == n {
            break;
        }
    }
    sends.await??;
    let fit = 4 * 1024 * 1024 / chat_model::MAX_BODY_BYTES as u64;
    let page = |id: &str, extra: Value| {
        let mut r = json!({"v": 1, "type": "history", "id": id, "conversation_id": conv, "limit": 500});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            r[k] = v;
        }
        r
    };
    // Forwards: the oldest that fit, then the rest from where it stopped.
    let first = history_page(&mut cb, page("f1", json!({}))).await?;
    ensure!(first["type"] == "history", "{first}");
    assert_eq!(first["last_seq"], n);
    assert_eq!(page_seqs(&first), (1..=fit).collect::<Vec<_>>(), "a forward page holds the oldest 4 MiB");
    let rest = history_page(&mut cb, page("f2", json!({"after_seq": fit}))).await?;
    assert_eq!(page_seqs(&rest), (fit + 1..=n).collect::<Vec<_>>());
    for m in first["messages"].as_array().into_iter().flatten() {
        let seq = m["seq"].as_u64().unwrap_or(0);
        ensure!(m["body"].as_str().is_some_and(|b| b.starts_with(&format!("{seq:05}"))), "body of {seq}");
        ensure!(m["sender_id"] == a.as_str() && m["message_id"].is_string() && m["sent_at_ms"].is_i64(), "{m}");
    }
    // Backwards from the newest: the newest that fit, then the older ones.
    let newest = history_page(&mut cb, page("b1", json!({"before_seq": n + 1}))).await?;
    assert_eq!(page_seqs(&newest), (n - fit + 1..=n).collect::<Vec<_>>(), "a backward page holds the newest 4 MiB");
    let older = history_page(&mut cb, page("b2", json!({"before_seq": n - fit + 1}))).await?;
    assert_eq!(page_seqs(&older), (1..=n - fit).collect::<Vec<_>>());
    let small = history_page(&mut cb, page("b3", json!({"before_seq": 11, "limit": 5}))).await?;
    assert_eq!(page_seqs(&small), vec![6, 7, 8, 9, 10]);
    let between = history_page(&mut cb, page("b4", json!({"after_seq": 8, "before_seq": 11, "limit": 5}))).await?;
    assert_eq!(page_seqs(&between), vec![9, 10]);
    // Past the last number: an empty page that names the last number.
    let past = history_page(&mut cb, page("p1", json!({"after_seq": n + 50}))).await?;
    ensure!(past["type"] == "history" && page_seqs(&past).is_empty() && past["last_seq"] == n, "{past}");
    // Wrong types and ranges: invalid_field, naming the field, with the request's id; the connection stays.
    for (id, extra, field) in [
        ("bad1", json!({"limit": -1}), "limit"),
        ("bad2", json!({"limit": "5"}), "limit"),
        ("bad3", json!({"after_seq": -1}), "after_seq"),
        ("bad4", json!({"before_seq": 0}), "before_seq"),
    ] {
        let e = history_page(&mut cb, page(id, extra)).await?;
        ensure!(e["type"] == "error" && e["code"] == "invalid_field", "{id}: {e}");
        ensure!(e["message"].as_str().is_some_and(|m| m.contains(field)), "{id}: {e} does not name {field}");
    }
    cb.send_json(json!({"v": 1, "type": "send", "id": "typed", "conversation_id": conv, "body": 5})).await?;
    let e = cb.expect("error").await?;
    assert_eq!((e["code"].as_str(), e["id"].as_str()), (Some("invalid_field"), Some("typed")));
    cb.close().await?;
    p.stop().await
}

/// docs/protocol.md: the sending device gets its `sent` answer and not its own message; the sender's other
/// devices and the other members get it pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_s_other_devices_get_its_message_and_the_sending_device_does_not() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions::default()).await?;
    let (a, b) = (user("alice"), user("bob"));
    let conv = conversation(&p, v1::ConversationKind::Direct, &a, &[&b]).await?;
    let mut phone = WsClient::connect(p.gateways[0].ws_addr, &a, "phone").await?;
    let mut laptop = WsClient::connect(p.gateways[1].ws_addr, &a, "laptop").await?;
    let mut cb = WsClient::connect(p.gateways[1].ws_addr, &b, "tablet").await?;
    for c in [&mut phone, &mut laptop, &mut cb] {
        c.sync().await?;
    }
    let ack = phone.send_message(&conv, "own-1", "from my phone").await?;
    for c in [&mut laptop, &mut cb] {
        let got = c.expect("message").await?;
        ensure!(got["message_id"] == ack["message_id"], "{got}");
    }
    // Bob's next message comes after alice's in the conversation's order: had alice's phone been sent its
    // own message, it would be read before this one.
    let before = read_until_sentinel(&mut cb, &mut phone, &conv).await?;
    ensure!(before.is_empty(), "the sending device was pushed its own message: {before:?}");
    for c in [phone, laptop, cb] {
        c.close().await?;
    }
    p.stop().await
}

/// Each gRPC port's reflection lists what that port serves: the chat service's port its service, a
/// gateway's push port its own, each with health and reflection (a client of the other would only be
/// answered `Unimplemented`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_grpc_port_s_reflection_lists_only_what_it_serves() -> anyhow::Result<()> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let p = Platform::start(PlatformOptions { gateways: 1, ..PlatformOptions::default() }).await?;
    for (addr, serves) in [(p.chat_addr, "chat.v1.ChatService"), (p.gateways[0].grpc_addr, "chat.v1.GatewayService")] {
        let mut client = ServerReflectionClient::new(p.grpc_channel(addr).await?);
        let ask = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = client.server_reflection_info(futures::stream::iter([ask])).await?.into_inner();
        let answer: ServerReflectionResponse = answers.message().await?.context("no reflection answer")?;
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            bail!("{addr}: not a list of services: {answer:?}");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        let mut expected = vec![serves, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"];
        expected.sort();
        assert_eq!(names, expected, "the services {addr} lists");
    }
    p.stop().await
}

/// Asks for one page of the user's conversation list; answers the frame that names the request.
async fn conversation_list(c: &mut WsClient, id: &str, extra: Value) -> anyhow::Result<Value> {
    let mut r = json!({"v": 1, "type": "conversations", "id": id});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        r[k] = v;
    }
    c.send_json(r).await?;
    loop {
        let f = c.recv().await?;
        if (f["type"] == "conversations" || f["type"] == "error") && f["id"] == id {
            return Ok(f);
        }
    }
}

/// Asks for the first page of the list until `done` holds for it (history and read positions are projected
/// from the log, so a moment after the acknowledgement); at most 20 s.
async fn list_until(
    c: &mut WsClient,
    what: &str,
    done: impl Fn(&[(String, u64, u64, u64)]) -> bool,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = conversation_list(c, "until", json!({})).await?;
        if done(&list_rows(&page)) {
            return Ok(page);
        }
        ensure!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The list's (conversation, last_seq, read_seq, unread) rows.
fn list_rows(page: &Value) -> Vec<(String, u64, u64, u64)> {
    page["conversations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let n = |k: &str| c[k].as_u64().unwrap_or(u64::MAX);
            (c["conversation_id"].as_str().unwrap_or_default().to_owned(), n("last_seq"), n("read_seq"), n("unread"))
        })
        .collect()
}

/// docs/protocol.md, `conversations`: the user's conversations, most recently active first, each with its
/// last number, the user's read position and the unread count; paged by a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conversation_list_is_newest_first_with_unread_counts_and_pages() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions::default()).await?;
    let (a, b, c) = (user("alice"), user("bob"), user("carol"));
    let mut chat = p.chat_client().await?;
    let with_bob = conversation(&p, v1::ConversationKind::Direct, &a, &[&b]).await?;
    let team = chat
        .create_conversation(v1::CreateConversationRequest {
            kind: v1::ConversationKind::Group as i32,
            created_by: a.clone(),
            member_ids: vec![b.clone(), c.clone()],
            title: "team".into(),
        })
        .await?
        .into_inner()
        .conversation
        .context("no conversation")?
        .conversation_id;
    let with_carol = conversation(&p, v1::ConversationKind::Direct, &c, &[&a]).await?;
    let mut ca = WsClient::connect(p.gateways[0].ws_addr, &a, "phone").await?;
    ca.sync().await?;
    // Nothing sent yet: ordered by creation, newest first.
    let fresh = conversation_list(&mut ca, "l0", json!({})).await?;
    let order: Vec<String> = list_rows(&fresh).into_iter().map(|r| r.0).collect();
    assert_eq!(order, [with_carol.clone(), team.clone(), with_bob.clone()], "{fresh}");
    // Activity, oldest to newest: carol writes to alice, alice to the team, bob to alice three times.
    let send = |conv: &str, from: &str, n: u64| {
        let (conv, from) = (conv.to_owned(), from.to_owned());
        let mut chat = chat.clone();
        async move {
            for i in 1..=n {
                chat.send_message(v1::SendMessageRequest {
                    conversation_id: conv.clone(),
                    sender_id: from.clone(),
                    sender_device_id: "bot".into(),
                    client_msg_id: format!("list-{i}"),
                    body: format!("hello {i}"),
                })
                .await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        }
    };
    send(&with_carol, &c, 1).await?;
    send(&team, &a, 1).await?;
    send(&with_bob, &b, 3).await?;
    let expected = vec![(with_bob.clone(), 3, 0, 3), (team.clone(), 1, 0, 1), (with_carol.clone(), 1, 0, 1)];
    let all = list_until(&mut ca, "the list to show every message", |rows| rows == expected.as_slice()).await?;
    ensure!(all.get("next_page_token").is_none(), "one page holds all three: {all}");
    let first = &all["conversations"][0];
    ensure!(first["kind"] == "direct" && first["last_activity_ms"].as_i64().is_some_and(|t| t > 0), "{first}");
    let mut members: Vec<&str> =
        first["member_ids"].as_array().into_iter().flatten().filter_map(|m| m.as_str()).collect();
    members.sort();
    let mut both = vec![a.as_str(), b.as_str()];
    both.sort();
    assert_eq!(members, both);
    ensure!(all["conversations"][1]["kind"] == "group" && all["conversations"][1]["title"] == "team", "{all}");
    // Paged two at a time: the token leads to the rest, each once.
    let one = conversation_list(&mut ca, "p1", json!({"limit": 2})).await?;
    assert_eq!(list_rows(&one), expected[..2]);
    let token = one["next_page_token"].as_str().context("a next page")?.to_owned();
    let two = conversation_list(&mut ca, "p2", json!({"limit": 2, "page_token": token})).await?;
    assert_eq!(list_rows(&two), expected[2..]);
    ensure!(two.get("next_page_token").is_none(), "the last page has no token: {two}");
    // Reading moves the read position and the unread count.
    ca.send_json(json!({"v": 1, "type": "read", "conversation_id": with_bob, "seq": 3})).await?;
    let read = (with_bob.clone(), 3, 3, 0);
    list_until(&mut ca, "the read position in the list", |rows| rows.contains(&read)).await?;
    // Bad requests name the request; a user with no conversation gets an empty list.
    for (id, extra, field) in [
        ("bad1", json!({"limit": 0}), "limit"),
        ("bad2", json!({"limit": "2"}), "limit"),
        ("bad3", json!({"page_token": "not-ours"}), "page_token"),
    ] {
        let e = conversation_list(&mut ca, id, extra).await?;
        ensure!(e["type"] == "error" && e["code"] == "invalid_field", "{id}: {e}");
        ensure!(e["message"].as_str().is_some_and(|m| m.contains(field)), "{id}: {e} does not name {field}");
    }
    let mut loner = WsClient::connect(p.gateways[1].ws_addr, &user("dave"), "phone").await?;
    loner.sync().await?;
    let none = conversation_list(&mut loner, "n", json!({})).await?;
    ensure!(
        none["type"] == "conversations" && list_rows(&none).is_empty() && none.get("next_page_token").is_none(),
        "{none}"
    );
    loner.close().await?;
    ca.close().await?;
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_spread_over_both_gateways_sees_one_order() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions::default()).await?;
    let names = [user("xena"), user("yuri"), user("zoe")];
    let conv = conversation(&p, v1::ConversationKind::Group, &names[0], &[&names[1], &names[2]]).await?;
    let mut clients = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let mut c = WsClient::connect(p.gateways[i % 2].ws_addr, n, "phone").await?;
        c.sync().await?;
        clients.push(c);
    }
    // Each member sends two messages, then members 0 and 1 send one more each, so that every member's last
    // expected message comes from someone else: a duplicate of any earlier one would arrive before it.
    let mut acks: Vec<(usize, u64, String)> = Vec::new();
    let senders = [0, 1, 2, 0, 1, 2, 0, 1];
    for (k, &i) in senders.iter().enumerate() {
        let ack = clients[i].send_message(&conv, &format!("g-{k}"), &format!("message {k} from {i}")).await?;
        acks.push((i, ack["seq"].as_u64().unwrap_or(0), ack["message_id"].as_str().unwrap_or("").to_owned()));
    }
    let mut seqs: Vec<u64> = acks.iter().map(|a| a.1).collect();
    seqs.sort();
    assert_eq!(seqs, (1..=8).collect::<Vec<u64>>(), "eight messages, eight numbers, no gap");
    let by_seq: HashMap<u64, String> = acks.iter().map(|a| (a.1, a.2.clone())).collect();

    for (member, client) in clients.iter_mut().enumerate() {
        let mut expected: Vec<u64> = acks.iter().filter(|a| a.0 != member).map(|a| a.1).collect();
        expected.sort();
        let mut received = Vec::new();
        while received.len() < expected.len() {
            let f = client.expect("message").await?;
            let seq = f["seq"].as_u64().unwrap_or(0);
            assert_eq!(f["message_id"].as_str(), by_seq.get(&seq).map(String::as_str), "same id for the same number");
            received.push(seq);
        }
        assert_eq!(received, expected, "member {member} receives every other member's message once, in order");
    }
    for c in clients {
        c.close().await?;
    }
    p.stop().await
}

/// The log is the order: a plain consumer reading the topic finds, in each conversation's partition, the
/// numbers 1, 2, 3, ... in log order, none missing, none twice, each with the message acknowledged for it,
/// however many senders raced on however many gateways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_holds_each_conversation_in_order_as_a_plain_consumer_reads_it() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions::default()).await?;
    let names = [user("ana"), user("ben"), user("cid"), user("dee")];
    let mut convs = Vec::new();
    for k in 0..3 {
        let others: Vec<&str> = names.iter().filter(|n| **n != names[k]).map(String::as_str).collect();
        convs.push(conversation(&p, v1::ConversationKind::Group, &names[k], &others).await?);
    }
    // Every member sends to every conversation at once, through both gateways.
    let sends = names.iter().enumerate().map(|(i, n)| {
        let (gw, n, convs) = (p.gateways[i % 2].ws_addr, n.clone(), convs.clone());
        async move {
            let mut c = WsClient::connect(gw, &n, "phone").await?;
            c.sync().await?;
            let mut acks = Vec::new();
            for k in 0..15 {
                let conv = &convs[k % convs.len()];
                let ack = c.send_message(conv, &format!("o-{k}"), &format!("{n} {k}")).await?;
                acks.push((
                    conv.clone(),
                    ack["seq"].as_u64().unwrap_or(0),
                    ack["message_id"].as_str().unwrap_or("").to_owned(),
                ));
            }
            c.close().await?;
            anyhow::Ok(acks)
        }
    });
    let mut acked: HashMap<String, HashMap<u64, String>> = HashMap::new();
    for acks in futures::future::join_all(sends).await {
        for (conv, seq, id) in acks? {
            assert!(acked.entry(conv).or_default().insert(seq, id).is_none(), "a number acknowledged twice");
        }
    }
    let log = tests::logcheck::check_order(&p.topic).await?;
    for conv in &convs {
        let in_log: HashMap<u64, String> = log.get(conv).into_iter().flatten().cloned().collect();
        assert_eq!(in_log.len(), 20, "{conv}: every acknowledged message is in the log");
        assert_eq!(Some(&in_log), acked.get(conv), "{conv}: the log holds the acknowledged messages");
    }
    // A stock Kafka console consumer, as the README runs it (infra/local/kafka-tool.sh), reads the records
    // and the headers that name their schema.
    let tool = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/local/kafka-tool.sh");
    let out = tokio::process::Command::new(tool)
        .args(["console-consumer", "--bootstrap-server", &kafka_brokers(), "--topic", &p.topic])
        .args(["--from-beginning", "--max-messages", "1", "--timeout-ms", "30000", "--isolation-level"])
        .args(["read_committed", "--property", "print.headers=true", "--property", "print.value=false"])
        .output()
        .await
        .context("running kafka-tool.sh console-consumer")?;
    let printed = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && printed.contains("content-type:application/x-protobuf,schema:chat.v1.Event"),
        "the console consumer printed {printed:?} ({}; {})",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_send_is_stored_and_delivered_once() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions::default()).await?;
    let (a, b) = (user("alice"), user("bob"));
    let conv = conversation(&p, v1::ConversationKind::Direct, &a, &[&b]).await?;
    let mut ca = WsClient::connect(p.gateways[0].ws_addr, &a, "phone").await?;
    let mut cb = WsClient::connect(p.gateways[1].ws_addr, &b, "phone").await?;
    ca.sync().await?;
    cb.sync().await?;
    let first = ca.send_message(&conv, "same-id", "only once").await?;
    // The retry goes through the other gateway, as after a reconnect.
    let mut ca2 = WsClient::connect(p.gateways[1].ws_addr, &a, "phone").await?;
    ca2.sync().await?;
    let again = ca2.send_message(&conv, "same-id", "only once").await?;
    assert_eq!(again["message_id"], first["message_id"]);
    assert_eq!(again["seq"], first["seq"]);
    assert_eq!(again["duplicate"], true);
    // The id is the user's in the conversation, from any device, for good: reused with another body, the
    // answer is still the first message's, and the other body is stored nowhere (docs/protocol.md).
    let mut laptop = WsClient::connect(p.gateways[0].ws_addr, &a, "laptop").await?;
    laptop.sync().await?;
    let other = laptop.send_message(&conv, "same-id", "another body").await?;
    assert_eq!(
        (&other["message_id"], &other["seq"], &other["duplicate"]),
        (&first["message_id"], &first["seq"], &json!(true))
    );

    let before = read_until_sentinel(&mut ca2, &mut cb, &conv).await?;
    let seqs: Vec<u64> = before.iter().map(|f| f["seq"].as_u64().unwrap_or(0)).collect();
    assert_eq!(seqs, vec![1], "bob gets the message once");
    let rows = history_rows(&p, &conv).await?;
    let ids: HashSet<String> = rows.iter().map(|r| r.1.to_string()).collect();
    assert_eq!(rows.len(), 2, "one row for the message, one for the sentinel");
    assert!(ids.contains(first["message_id"].as_str().unwrap_or_default()));
    assert!(rows.iter().all(|r| r.2 != "another body"), "the reused id's other body was stored: {rows:?}");
    laptop.close().await?;
    cb.close().await?;
    ca2.close().await?;
    let _ = ca;
    p.stop().await
}

/// `SendMessages`, the call gateways send on: each send is answered by its call id with what `SendMessage`
/// would have answered, a bad send is answered and the call goes on, and the call ends when the caller
/// closes its half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_on_one_call_are_answered_each_by_its_id_and_a_bad_one_ends_nothing() -> anyhow::Result<()> {
    use v1::send_messages_response::Result as Outcome;
    let p = Platform::start(PlatformOptions::default()).await?;
    let (a, b, stranger) = (user("alice"), user("bob"), user("stranger"));
    let conv = conversation(&p, v1::ConversationKind::Direct, &a, &[&b]).await?;
    let send = |sender: &str, conversation: &str, id: &str| v1::SendMessageRequest {
        conversation_id: conversation.into(),
        sender_id: sender.into(),
        sender_device_id: "phone".into(),
        client_msg_id: id.into(),
        body: format!("body of {id}"),
    };
    let requests = vec![
        (1, Some(send(&a, &conv, "m1"))),
        (2, Some(send(&a, "not-a-conversation", "m2"))),
        (3, Some(send(&stranger, &conv, "m3"))),
        (4, None),
        (5, Some(send(&b, &conv, "m5"))),
        (6, Some(send(&a, &conv, "m1"))),
    ];
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut chat = p.chat_client().await?;
    let mut answers = chat.send_messages(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let mut got = HashMap::new();
    // One at a time, so that the two sends of the conversation are numbered in the order sent.
    for (call_id, send) in requests {
        tx.send(v1::SendMessagesRequest { call_id, send }).await?;
        let answer = tokio::time::timeout(Duration::from_secs(20), answers.message())
            .await
            .context("no answer in time")??
            .context("the call ended early")?;
        ensure!(answer.call_id == call_id, "answer to {} for the send {call_id}", answer.call_id);
        got.insert(call_id, answer.result.context("an answer without a result")?);
    }
    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(20), answers.message()).await.context("the call did not end")?;
    assert!(matches!(end, Ok(None)), "the call ended with {end:?}");

    let code = |id: u64| match &got[&id] {
        Outcome::Failed(f) => Some(tonic::Code::from(f.code)),
        Outcome::Sent(_) => None,
    };
    let sent = |id: u64| match &got[&id] {
        Outcome::Sent(s) => Some((s.seq, s.duplicate, s.message_id.clone())),
        Outcome::Failed(_) => None,
    };
    let (seq1, dup1, id1) = sent(1).context("the first send failed")?;
    assert_eq!((seq1, dup1), (1, false));
    assert_eq!(code(2), Some(tonic::Code::InvalidArgument));
    assert_eq!(code(3), Some(tonic::Code::PermissionDenied));
    assert_eq!(code(4), Some(tonic::Code::InvalidArgument));
    assert_eq!(sent(5).map(|s| (s.0, s.1)), Some((2, false)));
    assert_eq!(sent(6), Some((1, true, id1)), "the retry is answered with the first send's message");
    // Written once each, whatever the retries (the store's rows are written after the commit).
    eventually("the two messages in the store", || async {
        Ok(Some(history_rows(&p, &conv).await?.len()).filter(|n| *n >= 2))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = history_rows(&p, &conv).await?;
    assert_eq!(rows.len(), 2, "two messages stored: {rows:?}");
    p.stop().await
}

/// `PushMessages`, the call delivery workers push on: each push is answered by its call id with what `Push`
/// would have answered (the devices that took it), a bad push is answered and the call goes on, and the
/// gateway's graceful stop ends the call instead of waiting on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_on_one_call_are_answered_each_by_its_id_and_the_gateway_s_stop_ends_the_call() -> anyhow::Result<()> {
    use v1::push_messages_response::Result as Outcome;
    let mut p = Platform::start(PlatformOptions::default()).await?;
    let bob = user("bob");
    let mut cb = WsClient::connect(p.gateways[1].ws_addr, &bob, "phone").await?;
    cb.sync().await?;
    let conv = ConversationId::generate().to_string();
    let message = |seq: u64| v1::Message {
        conversation_id: conv.clone(),
        message_id: uuid::Uuid::new_v4().to_string(),
        seq,
        sender_id: "someone".into(),
        body: format!("pushed {seq}"),
        sent_at_ms: 1,
        client_msg_id: format!("c{seq}"),
    };
    let push = |message: v1::Message, device: &str| {
        Some(v1::PushRequest {
            message: Some(message),
            devices: vec![v1::DeviceRef { user_id: bob.clone(), device_id: device.into() }],
            receipt: None,
            typing: None,
        })
    };
    let requests = vec![
        (1, push(message(1), "phone")),
        (2, None),
        (3, push(v1::Message { conversation_id: "not-a-conversation".into(), ..message(2) }, "phone")),
        (4, push(message(2), "tablet")),
        (5, push(message(2), "phone")),
    ];
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut gateway =
        v1::gateway_service_client::GatewayServiceClient::new(p.grpc_channel(p.gateways[1].grpc_addr).await?);
    let mut answers = gateway.push_messages(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    for (call_id, push) in requests {
        tx.send(v1::PushMessagesRequest { call_id, push }).await?;
    }
    let mut got = HashMap::new();
    for _ in 0..5 {
        let answer = tokio::time::timeout(Duration::from_secs(20), answers.message())
            .await
            .context("no answer in time")??
            .context("the call ended early")?;
        got.insert(answer.call_id, answer.result.context("an answer without a result")?);
    }
    let took = |id: u64| match &got[&id] {
        Outcome::Pushed(r) => Ok(r.delivered.iter().map(|d| d.device_id.clone()).collect::<Vec<_>>()),
        Outcome::Failed(f) => Err(tonic::Code::from(f.code)),
    };
    assert_eq!(took(1), Ok(vec!["phone".to_string()]));
    assert_eq!(took(2), Err(tonic::Code::InvalidArgument));
    assert_eq!(took(3), Err(tonic::Code::InvalidArgument));
    assert_eq!(took(4), Ok(vec![]), "a device the gateway does not hold does not take it");
    assert_eq!(took(5), Ok(vec!["phone".to_string()]));
    for seq in [1, 2] {
        let f = next_of(&mut cb, "message").await?;
        assert_eq!((f["conversation_id"].as_str(), f["seq"].as_u64()), (Some(conv.as_str()), Some(seq)));
    }
    // The gateway stops gracefully though the call is open, and the call ends with it.
    tokio::time::timeout(Duration::from_secs(60), p.stop_gateway(1)).await.context("the gateway did not stop")??;
    let end = tokio::time::timeout(Duration::from_secs(20), answers.message()).await.context("the call did not end")?;
    assert!(!matches!(end, Ok(Some(_))), "an answer after the stop: {end:?}");
    drop(tx);
    p.stop().await
}

/// The chat service's counts of store reads made to tell sends from retries, and of sends known new
/// without one.
async fn id_checks(p: &Platform) -> anyhow::Result<(u64, u64)> {
    Ok((p.chat_metric("chat_send_id_reads_total").await?, p.chat_metric("chat_send_ids_unread_total").await?))
}

/// Sends `id` until it is acknowledged (a restarted chat service answers `unavailable` until it owns the
/// partition again): the acknowledgement's number and whether it was a duplicate.
async fn send_until_acked(c: &mut WsClient, conv: &str, id: &str) -> anyhow::Result<(u64, bool)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match c.send_message(conv, id, id).await {
            Ok(ack) => return Ok((ack["seq"].as_u64().context("no seq")?, ack["duplicate"] == json!(true))),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %e, id, "send not acknowledged yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.context(format!("sending {id}"))),
        }
    }
}

/// A send's client id is told new or a retry whatever its order among its sender's ids: one past the
/// greatest is new without a store read, any other is read; before and after the partition changes owner
/// (the new owner starts with nothing in memory and reads the store's greatest id of the sender).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_is_told_new_or_a_retry_whatever_its_order_and_across_an_owner_change() -> anyhow::Result<()> {
    let mut p = Platform::start(PlatformOptions::default()).await?;
    let (a, b) = (user("alice"), user("bob"));
    let conv = conversation(&p, v1::ConversationKind::Direct, &a, &[&b]).await?;
    let mut ca = WsClient::connect(p.gateways[0].ws_addr, &a, "phone").await?;
    ca.sync().await?;
    let before = id_checks(&p).await?;
    // m5: the store's greatest is read (none: new); m7 is past it (no read); m3 is below (read: new).
    let mut answers = Vec::new();
    for id in ["m5", "m7", "m3"] {
        answers.push(send_until_acked(&mut ca, &conv, id).await?);
    }
    assert_eq!(answers, vec![(1, false), (2, false), (3, false)]);
    let after = id_checks(&p).await?;
    assert_eq!((after.0 - before.0, after.1 - before.1), (2, 1), "(store reads, ids known new without one)");

    // Once the workers have projected and committed all of it, a new owner learns nothing from the log:
    // everything is answered from the store.
    let workers = format!("e2e.{}.workers", p.id);
    let topic = p.topic.clone();
    eventually("the workers to commit every record", || {
        let (workers, topic) = (workers.clone(), topic.clone());
        async move {
            Ok((tokio::task::spawn_blocking(move || tests::group::lag(&workers, &topic)).await?? == 0).then_some(()))
        }
    })
    .await?;
    p.restart_chat().await?;
    assert_eq!(send_until_acked(&mut ca, &conv, "m7").await?, (2, true), "the store's greatest, read back");
    let before = id_checks(&p).await?;
    let mut answers = Vec::new();
    for id in ["m5", "m4", "m9", "m3"] {
        answers.push(send_until_acked(&mut ca, &conv, id).await?);
    }
    assert_eq!(answers, vec![(1, true), (4, false), (5, false), (3, true)]);
    let after = id_checks(&p).await?;
    assert!(after.0 - before.0 >= 3, "m5, m4 and m3 are below the greatest: each read ({before:?} -> {after:?})");
    assert!(after.1 > before.1, "m9 is past the greatest: no read ({before:?} -> {after:?})");
    let rows = eventually("five messages in history", || async {
        let rows = history_rows(&p, &conv).await?;
        Ok((rows.len() == 5).then_some(rows))
    })
    .await?;
    let bodies: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(bodies, vec!["m5", "m7", "m3", "m4", "m9"], "each id stored once, in number order");
    ca.close().await?;
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_and_bad_frames_answered() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions { gateways: 1, ..PlatformOptions::default() }).await?;
    let (a, b) = (user("mallory"), user("bob"));
    let gw = p.gateways[0].ws_addr;
    let none = WsClient::connect_with(gw, &a, "phone", None).await.err().context("upgraded without a token")?;
    assert_eq!(none.status, 401);
    assert!(none.body.contains("\"code\":\"unauthorized\""), "{}", none.body);
    let forged = token(&a, "a-different-secret-a-different-secret");
    let bad =
        WsClient::connect_with(gw, &a, "phone", Some(&forged)).await.err().context("upgraded with a forged token")?;
    assert_eq!(bad.status, 401);
    let mut redis = p.redis().await?;
    let exists: bool =
        redis::cmd("EXISTS").arg(presence::key(&p.redis_prefix, &UserId::parse(&a)?)).query_async(&mut redis).await?;
    assert!(!exists, "a refused upgrade writes no presence");

    let conv = conversation(&p, v1::ConversationKind::Direct, &a, &[&b]).await?;
    let mut c = WsClient::connect(gw, &a, "phone").await?;
    c.sync().await?;
    c.send_raw("{this is not json").await?;
    let e = c.expect("error").await?;
    assert_eq!(e["code"], "bad_frame");
    assert_eq!(e["retryable"], false);
    c.send_raw(r#"{"v":1,"type":"teleport"}"#).await?;
    assert_eq!(c.expect("error").await?["code"], "unknown_type");
    c.send_json(json!({"v": 1, "type": "send", "id": "x", "conversation_id": "nope", "body": "b"})).await?;
    let e = c.expect("error").await?;
    assert_eq!((e["code"].as_str(), e["id"].as_str()), (Some("invalid_field"), Some("x")));
    // The connection still works.
    c.send_json(json!({"v": 1, "type": "ping", "id": "p1"})).await?;
    assert_eq!(c.expect("pong").await?["id"], "p1");
    let ack = c.send_message(&conv, "after-errors", "still here").await?;
    assert_eq!(ack["seq"], 1);
    // Not a member: refused, nothing stored.
    let stranger = conversation(&p, v1::ConversationKind::Direct, &b, &[&user("carol")]).await?;
    c.send_json(json!({"v": 1, "type": "send", "id": "intrude", "conversation_id": stranger, "body": "hi"})).await?;
    let e = c.expect("error").await?;
    assert_eq!((e["code"].as_str(), e["id"].as_str()), (Some("not_member"), Some("intrude")));
    assert!(history_rows(&p, &stranger).await?.is_empty());
    c.close().await?;
    p.stop().await
}

/// The next frame of type `kind`, skipping live messages (a receipt may come before or after them).
async fn next_of(c: &mut WsClient, kind: &str) -> anyhow::Result<Value> {
    loop {
        let f = c.recv().await?;
        if f["type"] == kind {
            return Ok(f);
        }
        ensure!(f["type"] == "message", "expected {kind}, got {f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_reach_the_others_and_read_positions_survive_a_reconnect() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions::default()).await?;
    let (a, b) = (user("alice"), user("bob"));
    let conv = conversation(&p, v1::ConversationKind::Direct, &a, &[&b]).await?;
    let mut alice = WsClient::connect(p.gateways[0].ws_addr, &a, "phone").await?;
    let mut bob_phone = WsClient::connect(p.gateways[1].ws_addr, &b, "phone").await?;
    let mut bob_laptop = WsClient::connect(p.gateways[0].ws_addr, &b, "laptop").await?;
    for c in [&mut alice, &mut bob_phone, &mut bob_laptop] {
        c.sync().await?;
    }
    for i in 1..=5 {
        alice.send_message(&conv, &format!("r-{i}"), &format!("m{i}")).await?;
    }
    for _ in 0..5 {
        bob_phone.expect("message").await?;
    }
    // Bob's phone acknowledges and reads up to 5; Alice and Bob's other device are told.
    bob_phone.send_json(json!({"v": 1, "type": "delivered", "conversation_id": conv, "seq": 5})).await?;
    let delivered = next_of(&mut alice, "receipt").await?;
    assert_eq!(
        (
            delivered["kind"].as_str(),
            delivered["user_id"].as_str(),
            delivered["device_id"].as_str(),
            delivered["up_to_seq"].as_u64()
        ),
        (Some("delivered"), Some(b.as_str()), Some("phone"), Some(5))
    );
    bob_phone.send_json(json!({"v": 1, "type": "read", "conversation_id": conv, "seq": 4})).await?;
    let read = next_of(&mut alice, "receipt").await?;
    assert_eq!((read["kind"].as_str(), read["up_to_seq"].as_u64()), (Some("read"), Some(4)));
    let on_laptop = next_of(&mut bob_laptop, "receipt").await?;
    assert_eq!((on_laptop["kind"].as_str(), on_laptop["up_to_seq"].as_u64()), (Some("delivered"), Some(5)));
    let on_laptop = next_of(&mut bob_laptop, "receipt").await?;
    assert_eq!((on_laptop["kind"].as_str(), on_laptop["up_to_seq"].as_u64()), (Some("read"), Some(4)));
    // A read position never moves back; reading past the last message is refused.
    bob_laptop.send_json(json!({"v": 1, "type": "read", "conversation_id": conv, "seq": 2})).await?;
    bob_laptop.send_json(json!({"v": 1, "type": "read", "conversation_id": conv, "seq": 99})).await?;
    assert_eq!(next_of(&mut bob_laptop, "error").await?["code"], "invalid_field");

    // Alice comes back on the other gateway: the read position is state, not a message she had to catch.
    alice.close().await?;
    let mut alice = WsClient::connect(p.gateways[1].ws_addr, &a, "phone").await?;
    alice.sync().await?;
    alice.send_json(json!({"v": 1, "type": "conversation", "id": "c1", "conversation_id": conv})).await?;
    let c = next_of(&mut alice, "conversation").await?;
    assert_eq!(c["last_seq"], 5);
    let positions = c["read_positions"].as_array().cloned().unwrap_or_default();
    assert_eq!(positions, vec![json!({"user_id": b, "read_seq": 4})]);

    // Both receipts are events on the log.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", format!("e2e-reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[p.topic.as_str()])?;
    let mut receipts = Vec::new();
    while receipts.len() < 3 {
        let record = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .context("receipts not in the topic")??;
        if record.key() != Some(conv.as_bytes()) {
            continue;
        }
        if let LogEvent::ReceiptRecorded(r) = event::decode(record.payload().unwrap_or_default())? {
            receipts.push((format!("{:?}", r.kind), r.device_id.to_string(), r.up_to.get()));
        }
    }
    assert_eq!(
        receipts[..2],
        [("Delivered".to_owned(), "phone".to_owned(), 5), ("Read".to_owned(), "phone".to_owned(), 4)]
    );
    assert_eq!(
        receipts[2],
        ("Read".to_owned(), "laptop".to_owned(), 2),
        "the stale read is on the log; the position did not move"
    );
    for c in [alice, bob_phone, bob_laptop] {
        c.close().await?;
    }
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_online_members_and_is_stored_nowhere() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions::default()).await?;
    let (a, b, m) = (user("alice"), user("bob"), user("mallory"));
    let conv = conversation(&p, v1::ConversationKind::Group, &a, &[&b]).await?;
    let mut alice = WsClient::connect(p.gateways[0].ws_addr, &a, "phone").await?;
    let mut bob = WsClient::connect(p.gateways[1].ws_addr, &b, "phone").await?;
    let mut mallory = WsClient::connect(p.gateways[1].ws_addr, &m, "phone").await?;
    for c in [&mut alice, &mut bob, &mut mallory] {
        c.sync().await?;
    }
    alice.send_json(json!({"v": 1, "type": "typing", "conversation_id": conv})).await?;
    let t = bob.expect("typing").await?;
    assert_eq!(
        (t["user_id"].as_str(), t["device_id"].as_str(), t["typing"].as_bool()),
        (Some(a.as_str()), Some("phone"), Some(true))
    );
    assert_eq!(t["conversation_id"], conv.as_str());
    alice.send_json(json!({"v": 1, "type": "typing", "conversation_id": conv, "typing": false})).await?;
    assert_eq!(bob.expect("typing").await?["typing"], false);
    mallory.send_json(json!({"v": 1, "type": "typing", "conversation_id": conv})).await?;
    assert_eq!(mallory.expect("error").await?["code"], "not_member");

    // Nothing reached the log (this platform's topic is its own, and nothing else was sent but the
    // conversation's creation) nor the tables.
    let topic = p.topic.clone();
    let records = tokio::task::spawn_blocking(move || tests::platform::read_topic(&topic)).await??;
    let records = records.iter().filter(|e| !matches!(e, LogEvent::ConversationCreated(_))).count();
    assert_eq!(records, 0, "typing wrote to the log");
    assert!(history_rows(&p, &conv).await?.is_empty());
    assert!(p.store.inbox(&UserId::parse(&b)?, &DeviceId::parse("phone")?, None, 10).await?.is_empty());
    for c in [alice, bob, mallory] {
        c.close().await?;
    }
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_beyond_retention_is_told_so() -> anyhow::Result<()> {
    // History keeps messages 4 seconds here, so that the test can see them expire.
    let p = Platform::start(PlatformOptions { message_ttl_secs: 4, ..PlatformOptions::default() }).await?;
    let (a, b) = (user("alice"), user("bob"));
    let conv = conversation(&p, v1::ConversationKind::Direct, &a, &[&b]).await?;
    let mut chat = p.chat_client().await?;
    let send = |i: u64| v1::SendMessageRequest {
        conversation_id: conv.clone(),
        sender_id: a.clone(),
        sender_device_id: "bot".into(),
        client_msg_id: format!("t-{i}"),
        body: format!("m{i}"),
    };
    for i in 1..=3 {
        chat.send_message(send(i)).await?;
    }
    let read = |after: u64| v1::GetHistoryRequest {
        conversation_id: conv.clone(),
        user_id: b.clone(),
        after_seq: after,
        limit: 10,
        before_seq: 0,
    };
    // Each message expires 4 s after its own write, so 1 may be gone while 2 and 3 are still held (first
    // number 2, then 3): wait until all three are.
    let first_seq =
        |s: &tonic::Status| s.metadata().get("x-first-seq").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let expired = eventually("messages 1 to 3 to expire", || {
        let mut chat = chat.clone();
        let req = read(0);
        async move {
            match chat.get_history(req).await {
                Err(s) if s.code() == tonic::Code::OutOfRange => {
                    let first = first_seq(&s).context("OUT_OF_RANGE without x-first-seq")?;
                    ensure!(["2", "3", "4"].contains(&first.as_str()), "first number held {first}: {s:?}");
                    Ok((first == "4").then_some(s))
                }
                _ => Ok(None),
            }
        }
    })
    .await?;
    assert_eq!(first_seq(&expired).as_deref(), Some("4"), "{expired:?}");
    let mut cb = WsClient::connect(p.gateways[1].ws_addr, &b, "phone").await?;
    let _inbox = cb.sync().await?;
    for i in 4..=5 {
        assert_eq!(chat.send_message(send(i)).await?.into_inner().seq, i);
    }
    // History shows a message no later than it is delivered (P1): once 5 has reached bob, it holds 4 and 5.
    while next_of(&mut cb, "message").await?["seq"] != 5 {}
    // A client resuming from before what is kept is told so, with where history starts; from there it reads.
    cb.send_json(json!({"v": 1, "type": "history", "id": "h0", "conversation_id": conv, "after_seq": 0})).await?;
    let e = next_of(&mut cb, "error").await?;
    assert_eq!(
        (e["code"].as_str(), e["first_seq"].as_u64(), e["id"].as_str()),
        (Some("beyond_retention"), Some(4), Some("h0"))
    );
    cb.send_json(json!({"v": 1, "type": "history", "id": "h3", "conversation_id": conv, "after_seq": 3})).await?;
    let h = next_of(&mut cb, "history").await?;
    let seqs: Vec<u64> =
        h["messages"].as_array().map(|m| m.iter().filter_map(|x| x["seq"].as_u64()).collect()).unwrap_or_default();
    assert_eq!(seqs, vec![4, 5]);
    cb.close().await?;
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_can_no_longer_send_even_just_after_sending() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions::default()).await?;
    let (a, b, c) = (user("alice"), user("bob"), user("carol"));
    let conv = conversation(&p, v1::ConversationKind::Group, &a, &[&b, &c]).await?;
    let mut chat = p.chat_client().await?;
    let send = |sender: &str, id: &str| v1::SendMessageRequest {
        conversation_id: conv.clone(),
        sender_id: sender.into(),
        sender_device_id: "phone".into(),
        client_msg_id: id.into(),
        body: format!("from {sender}"),
    };
    // Carol's send makes the service remember her as a member; her removal must still take effect at once.
    let first = chat.send_message(send(&c, "c-1")).await?.into_inner();
    assert_eq!(first.seq, 1);
    chat.remove_members(v1::RemoveMembersRequest {
        conversation_id: conv.clone(),
        acting_user_id: a.clone(),
        user_ids: vec![c.clone()],
    })
    .await?;
    let refused = chat.send_message(send(&c, "c-2")).await.err().context("a removed member's send was taken")?;
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let second = chat.send_message(send(&b, "b-1")).await?.into_inner();
    assert_eq!(second.seq, 2, "the refused send took no number");
    // History is a projection of the log: it shows both once the workers have handled them.
    let bodies = eventually("both messages in history", || {
        let (mut chat, conv, b) = (chat.clone(), conv.clone(), b.clone());
        async move {
            let history = chat
                .get_history(v1::GetHistoryRequest {
                    conversation_id: conv,
                    user_id: b,
                    limit: 10,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let bodies: Vec<String> = history.messages.into_iter().map(|m| m.body).collect();
            Ok((bodies.len() >= 2).then_some(bodies))
        }
    })
    .await?;
    assert_eq!(bodies, vec![format!("from {c}"), format!("from {b}")]);
    p.stop().await
}

/// The worker keeps a user's device list while the user's device-list stamp in presence is unchanged, and a
/// gateway replaces the stamp after registering a device: a device that connected once after its user's list
/// was kept gets an inbox row for the very next message, with no wait for a cache to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_registered_after_its_users_list_was_kept_gets_the_next_message_kept() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions::default()).await?;
    let (a, b) = (user("alice"), user("bob"));
    let conv = conversation(&p, v1::ConversationKind::Direct, &a, &[&b]).await?;
    let mut ca = WsClient::connect(p.gateways[0].ws_addr, &a, "phone").await?;
    let mut cb = WsClient::connect(p.gateways[1].ws_addr, &b, "phone").await?;
    ensure!(ca.sync().await?.is_empty() && cb.sync().await?.is_empty());

    // The worker reads bob's device list [phone] for the first message, and keeps it.
    let first = ca.send_message(&conv, "m-1", "before the tablet").await?;
    assert_eq!(cb.expect("message").await?["seq"], first["seq"]);

    // Bob's tablet connects once (its welcome comes after its registration), then goes offline.
    let tablet = WsClient::connect(p.gateways[1].ws_addr, &b, "tablet").await?;
    tablet.close().await?;
    presence_gone(&p, &b, "tablet").await?;

    let second = ca.send_message(&conv, "m-2", "after the tablet").await?;
    assert_eq!(cb.expect("message").await?["seq"], second["seq"]);
    let (bu, bd) = (UserId::parse(&b)?, DeviceId::parse("tablet")?);
    let kept = eventually("the tablet's inbox", || {
        let store = p.store.clone();
        let (bu, bd) = (bu.clone(), bd.clone());
        async move {
            let rows = store.inbox(&bu, &bd, None, 100).await?;
            Ok((!rows.is_empty()).then_some(rows))
        }
    })
    .await;
    let Ok(kept) = kept else {
        tests::broken!("the tablet, registered after bob's device list was read, got no inbox row in 20 s");
    };
    let seqs: Vec<u64> = kept.iter().map(|m| m.seq.get()).collect();
    assert_eq!(Some(seqs), second["seq"].as_u64().map(|s| vec![s]), "the tablet's inbox holds the second message only");

    ca.close().await?;
    cb.close().await?;
    p.stop().await
}

/// The worker keeps member lists until the conversation's own membership events say otherwise: a member
/// added gets the very next message, a member removed gets none after the removal, with no wait for a cache
/// to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_reach_delivery_at_the_next_message() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions::default()).await?;
    let (a, b, c) = (user("alice"), user("bob"), user("carol"));
    let conv = conversation(&p, v1::ConversationKind::Group, &a, &[&b]).await?;
    let mut ca = WsClient::connect(p.gateways[0].ws_addr, &a, "phone").await?;
    let mut cb = WsClient::connect(p.gateways[1].ws_addr, &b, "phone").await?;
    let mut cc = WsClient::connect(p.gateways[1].ws_addr, &c, "phone").await?;
    ensure!(ca.sync().await?.is_empty() && cb.sync().await?.is_empty() && cc.sync().await?.is_empty());
    let mut chat = p.chat_client().await?;

    // The worker reads the member list [alice, bob] for the first message, and keeps it.
    let first = ca.send_message(&conv, "m-1", "before").await?;
    assert_eq!(cb.expect("message").await?["seq"], first["seq"]);

    chat.add_members(v1::AddMembersRequest {
        conversation_id: conv.clone(),
        acting_user_id: a.clone(),
        user_ids: vec![c.clone()],
    })
    .await?;
    let second = ca.send_message(&conv, "m-2", "carol is in").await?;
    assert_eq!(cc.expect("message").await?["seq"], second["seq"], "the added member got the next message");
    assert_eq!(cb.expect("message").await?["seq"], second["seq"]);

    chat.remove_members(v1::RemoveMembersRequest {
        conversation_id: conv.clone(),
        acting_user_id: a.clone(),
        user_ids: vec![b.clone()],
    })
    .await?;
    let third = ca.send_message(&conv, "m-3", "bob is out").await?;
    assert_eq!(cc.expect("message").await?["seq"], third["seq"]);
    // Carol got it by the same push round as bob would have: whatever bob was sent has arrived by now.
    let late = cb.stay_silent(Duration::from_millis(500)).await?;
    let messages: Vec<&Value> = late.iter().filter(|f| f["type"] == "message").collect();
    ensure!(messages.is_empty(), "the removed member got messages after his removal: {messages:?}");

    ca.close().await?;
    cb.close().await?;
    cc.close().await?;
    p.stop().await
}
