//! Fault scenarios (promises P1 to P6): the services run as separate processes against the real Kafka,
//! Cassandra and Redis; processes are killed with SIGKILL mid-traffic. Every acknowledged message must be
//! shown by every device of every member, in order, with no gap and no user-visible duplicate; raw
//! duplicates on the wire are counted and printed.
//!
//! `make test` runs the small version; `make faults` sets `FAULTS_SCALE=large` and prints the counts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use futures::future::join_all;
use proto::v1;
use proto::v1::chat_service_client::ChatServiceClient;
use tests::cluster::{Cluster, ClusterOptions, Kind};
use tests::device::{Ack, Device, Report};
use tokio::sync::Mutex;
use tonic::transport::Channel;

/// The scenarios share the machine's two cores and the servers: one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn large() -> bool {
    std::env::var("FAULTS_SCALE").is_ok_and(|s| s == "large")
}

fn scale(small: usize, big: usize) -> usize {
    if large() { big } else { small }
}

/// How long a device may take to show everything after the traffic (and the faults) end.
const CATCH_UP: Duration = Duration::from_secs(120);

fn user(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

async fn chat(cluster: &Cluster, i: usize) -> anyhow::Result<ChatServiceClient<Channel>> {
    Ok(ChatServiceClient::connect(format!("http://{}", cluster.chat_addrs[i])).await?)
}

async fn create(chat: &mut ChatServiceClient<Channel>, creator: &str, others: &[String]) -> anyhow::Result<String> {
    let kind = if others.len() == 1 { v1::ConversationKind::Direct } else { v1::ConversationKind::Group };
    let r = chat
        .create_conversation(v1::CreateConversationRequest {
            kind: kind as i32,
            created_by: creator.into(),
            member_ids: others.to_vec(),
            title: String::new(),
        })
        .await?
        .into_inner();
    Ok(r.conversation.context("no conversation")?.conversation_id)
}

/// The whole history of a conversation, paged: (seq, message id, client id).
async fn history(
    chat: &mut ChatServiceClient<Channel>,
    conv: &str,
    reader: &str,
) -> anyhow::Result<Vec<(u64, String, String)>> {
    let mut out = Vec::new();
    loop {
        let after = out.last().map(|m: &(u64, String, String)| m.0).unwrap_or(0);
        let page = chat
            .get_history(v1::GetHistoryRequest {
                conversation_id: conv.into(),
                user_id: reader.into(),
                after_seq: after,
                limit: 500,
            })
            .await?
            .into_inner();
        if page.messages.is_empty() {
            return Ok(out);
        }
        out.extend(page.messages.into_iter().map(|m| (m.seq, m.message_id, m.client_msg_id)));
    }
}

/// Sends through the chat service's gRPC API (an internal service), retrying retryable failures with the
/// same client id, as the protocol asks.
async fn send_grpc(chat: &mut ChatServiceClient<Channel>, conv: &str, sender: &str, id: &str) -> anyhow::Result<Ack> {
    let mut attempts = 0;
    loop {
        let req = v1::SendMessageRequest {
            conversation_id: conv.into(),
            sender_id: sender.into(),
            sender_device_id: "service".into(),
            client_msg_id: id.into(),
            body: format!("body of {id}"),
        };
        match chat.send_message(req).await {
            Ok(r) => {
                let r = r.into_inner();
                return Ok(Ack { seq: r.seq, message_id: r.message_id, duplicate: r.duplicate });
            }
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::Aborted | tonic::Code::DeadlineExceeded
                ) =>
            {
                attempts += 1;
                ensure!(attempts < 600, "send {id} still failing after {attempts} attempts: {s}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => anyhow::bail!("send {id} refused: {s}"),
        }
    }
}

/// Counts printed by every scenario.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    acknowledged: usize,
    /// Messages shown, summed over devices (each device shows each message once).
    delivered: usize,
    raw_duplicates: u64,
    user_duplicates: usize,
    reconnects: u64,
}

/// Checks a device's view of a conversation against the acknowledged messages (seq → message id):
/// exactly 1..=n shown, in order, once each, with the acknowledged ids.
fn check_view(
    name: &str,
    report: &Report,
    conv: &str,
    acked: &HashMap<u64, String>,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let shown = report.shown.get(conv).cloned().unwrap_or_default();
    let seqs: Vec<u64> = shown.iter().map(|s| s.0).collect();
    let distinct: HashSet<u64> = seqs.iter().copied().collect();
    tally.user_duplicates += seqs.len() - distinct.len();
    let expected: Vec<u64> = (1..=acked.len() as u64).collect();
    ensure!(seqs == expected, "{name}: shown {} numbers of {}, not 1..={} in order", seqs.len(), conv, acked.len());
    for (seq, id) in &shown {
        ensure!(
            acked.get(seq) == Some(id),
            "{name}: number {seq} shows message {id}, acknowledged as {:?}",
            acked.get(seq)
        );
    }
    tally.delivered += shown.len();
    Ok(())
}

fn print(scenario: &str, t: &Tally) {
    println!(
        "[faults] {scenario}: sent {} acknowledged {} delivered {} raw-duplicates {} user-duplicates {} reconnects {} (scale: {})",
        t.sent,
        t.acknowledged,
        t.delivered,
        t.raw_duplicates,
        t.user_duplicates,
        t.reconnects,
        if large() { "large" } else { "small" }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_concurrent_senders_share_one_order() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let n = scale(400, 2000);
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let users: Vec<String> = (0..4).map(|i| user(&format!("s1u{i}"))).collect();
    let conv = create(&mut chat(&cluster, 0).await?, &users[0], &users[1..]).await?;
    let mut devices: Vec<Device> = users
        .iter()
        .enumerate()
        .map(|(i, u)| Device::spawn(u, "phone", cluster.gateway_ws.clone(), i % 2, std::slice::from_ref(&conv)))
        .collect();
    // Four clients, on two gateways, whose sends go through two chat-service replicas, all at once.
    let sends = devices.iter().enumerate().map(|(i, d)| {
        let conv = conv.clone();
        async move {
            let mut acks = Vec::new();
            for k in 0..n / 4 {
                acks.push(d.send(&conv, &format!("s1-{i}-{k}"), &format!("{i}:{k}")).await?);
            }
            anyhow::Ok(acks)
        }
    });
    let mut acked: HashMap<u64, String> = HashMap::new();
    for acks in join_all(sends).await {
        for a in acks? {
            ensure!(acked.insert(a.seq, a.message_id.clone()).is_none(), "number {} given twice", a.seq);
        }
    }
    let mut tally = Tally { sent: n, acknowledged: acked.len(), ..Tally::default() };
    ensure!(acked.len() == n, "{} acknowledged of {n}", acked.len());
    for d in devices.iter_mut() {
        d.wait_shown(&conv, n as u64, CATCH_UP).await?;
    }
    for d in devices {
        let name = format!("{}/{}", d.user, d.device);
        let r = d.stop().await;
        tally.raw_duplicates += r.raw_duplicates;
        check_view(&name, &r, &conv, &acked, &mut tally)?;
    }
    let h = history(&mut chat(&cluster, 1).await?, &conv, &users[0]).await?;
    ensure!(
        h.iter().map(|m| (m.0, m.1.clone())).collect::<HashMap<_, _>>() == acked,
        "history differs from what was delivered"
    );
    ensure!(h.len() == n, "history holds {} messages, not {n}", h.len());
    print("1 concurrent senders", &tally);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_a_killed_worker_loses_nothing() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let n = scale(1000, 10_000);
    let conversations = 20;
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let mut grpc = [chat(&cluster, 0).await?, chat(&cluster, 1).await?];
    let mut pairs = Vec::new();
    for i in 0..conversations {
        let (s, r) = (user(&format!("s2s{i}")), user(&format!("s2r{i}")));
        let conv = create(&mut grpc[0], &s, std::slice::from_ref(&r)).await?;
        pairs.push((s, r, conv));
    }
    let mut readers: Vec<Device> = pairs
        .iter()
        .enumerate()
        .map(|(i, (_, r, conv))| {
            Device::spawn(r, "phone", cluster.gateway_ws.clone(), i % 2, std::slice::from_ref(conv))
        })
        .collect();
    let acked_count = Arc::new(AtomicUsize::new(0));
    let burst: Vec<_> = pairs
        .iter()
        .enumerate()
        .map(|(i, (s, _, conv))| {
            let mut chat = grpc[i % 2].clone();
            let count = acked_count.clone();
            let (s, conv) = (s.clone(), conv.clone());
            async move {
                let mut acks = HashMap::new();
                for k in 0..n / conversations {
                    let a = send_grpc(&mut chat, &conv, &s, &format!("s2-{i}-{k}")).await?;
                    acks.insert(a.seq, a.message_id);
                    count.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(acks)
            }
        })
        .collect();
    let burst = tokio::spawn(join_all(burst));
    // Mid-burst: SIGKILL one of the two workers, keep it down for a while, then start it again.
    while acked_count.load(Ordering::Relaxed) < n / 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill(Kind::Worker, 0)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.start_proc(Kind::Worker, 0).await?;
    let mut tally = Tally { sent: n, ..Tally::default() };
    let mut acked_by_conv = Vec::new();
    for acks in burst.await? {
        let acks = acks?;
        tally.acknowledged += acks.len();
        acked_by_conv.push(acks);
    }
    for (i, d) in readers.iter_mut().enumerate() {
        d.wait_shown(&pairs[i].2, acked_by_conv[i].len() as u64, CATCH_UP).await?;
    }
    for (i, d) in readers.into_iter().enumerate() {
        let name = format!("{}/{}", d.user, d.device);
        let r = d.stop().await;
        tally.raw_duplicates += r.raw_duplicates;
        check_view(&name, &r, &pairs[i].2, &acked_by_conv[i], &mut tally)?;
    }
    ensure!(tally.acknowledged == n, "{} acknowledged of {n}", tally.acknowledged);
    print("2 kill -9 a delivery worker", &tally);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_a_killed_chat_service_stores_each_send_once() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let per_sender = scale(100, 500);
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let users: Vec<String> = (0..4).map(|i| user(&format!("s4u{i}"))).collect();
    let conv = create(&mut chat(&cluster, 0).await?, &users[0], &users[1..]).await?;
    let mut devices: Vec<Device> = users
        .iter()
        .enumerate()
        .map(|(i, u)| Device::spawn(u, "phone", cluster.gateway_ws.clone(), i % 2, std::slice::from_ref(&conv)))
        .collect();
    let acked_count = Arc::new(AtomicUsize::new(0));
    let sends = devices.iter().enumerate().map(|(i, d)| {
        let conv = conv.clone();
        let count = acked_count.clone();
        async move {
            let mut acks = Vec::new();
            for k in 0..per_sender {
                let id = format!("s4-{i}-{k}");
                acks.push((id.clone(), d.send(&conv, &id, &id).await?));
                count.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(acks)
        }
    });
    let total = per_sender * 4;
    let killer = async {
        while acked_count.load(Ordering::Relaxed) < total / 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cluster.kill(Kind::ChatService, 0)?;
        while acked_count.load(Ordering::Relaxed) < 2 * total / 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cluster.start_proc(Kind::ChatService, 0).await
    };
    let (results, killed) = tokio::join!(join_all(sends), killer);
    killed?;
    let mut by_id: HashMap<String, Ack> = HashMap::new();
    let mut acked: HashMap<u64, String> = HashMap::new();
    for r in results {
        for (id, a) in r? {
            ensure!(acked.insert(a.seq, a.message_id.clone()).is_none(), "number {} acknowledged for two sends", a.seq);
            by_id.insert(id, a);
        }
    }
    let mut tally = Tally { sent: total, acknowledged: by_id.len(), ..Tally::default() };
    ensure!(by_id.len() == total, "{} of {total} sends acknowledged", by_id.len());
    let h = history(&mut chat(&cluster, 1).await?, &conv, &users[0]).await?;
    let stored_ids: Vec<&String> = h.iter().map(|m| &m.2).collect();
    let distinct: HashSet<&String> = stored_ids.iter().copied().collect();
    ensure!(stored_ids.len() == distinct.len(), "{} sends stored twice", stored_ids.len() - distinct.len());
    ensure!(h.len() == total, "history holds {} messages for {total} sends", h.len());
    for (seq, mid, cid) in &h {
        ensure!(
            by_id.get(cid).is_some_and(|a| a.seq == *seq && &a.message_id == mid),
            "send {cid} stored as {seq} but acknowledged otherwise"
        );
    }
    for d in devices.iter_mut() {
        d.wait_shown(&conv, total as u64, CATCH_UP).await?;
    }
    for d in devices {
        let name = format!("{}/{}", d.user, d.device);
        let r = d.stop().await;
        tally.raw_duplicates += r.raw_duplicates;
        tally.reconnects += r.reconnects;
        check_view(&name, &r, &conv, &acked, &mut tally)?;
    }
    print("4 kill -9 a chat-service replica", &tally);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_an_offline_device_gets_exactly_what_it_missed() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let (n, m) = (scale(200, 2000), scale(5, 20));
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let mut grpc = chat(&cluster, 0).await?;
    let reader = user("s8r");
    let mut convs = Vec::new();
    for j in 0..m {
        let s = user(&format!("s8s{j}"));
        convs.push((s.clone(), create(&mut grpc, &s, std::slice::from_ref(&reader)).await?));
    }
    let names: Vec<String> = convs.iter().map(|c| c.1.clone()).collect();
    // The device connects once, so the platform knows it, then goes offline.
    Device::spawn(&reader, "tablet", cluster.gateway_ws.clone(), 0, &names).stop().await;
    let mut acked: Vec<HashMap<u64, String>> = vec![HashMap::new(); m];
    for k in 0..n {
        let j = k % m;
        let a = send_grpc(&mut grpc, &convs[j].1, &convs[j].0, &format!("s8-{k}")).await?;
        acked[j].insert(a.seq, a.message_id);
    }
    let mut d = Device::spawn(&reader, "tablet", cluster.gateway_ws.clone(), 1, &names);
    for (j, name) in names.iter().enumerate() {
        d.wait_shown(name, acked[j].len() as u64, CATCH_UP).await?;
    }
    let r = d.stop().await;
    let mut tally = Tally { sent: n, acknowledged: acked.iter().map(|a| a.len()).sum(), ..Tally::default() };
    tally.raw_duplicates = r.raw_duplicates;
    for (j, name) in names.iter().enumerate() {
        check_view("reader", &r, name, &acked[j], &mut tally)?;
    }
    print("8 offline device catches up", &tally);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_every_device_of_a_user_gets_every_message() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let n = scale(100, 1000);
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let (alice, bob) = (user("s9a"), user("s9b"));
    let conv = create(&mut chat(&cluster, 0).await?, &alice, std::slice::from_ref(&bob)).await?;
    let mut bobs: Vec<Device> = ["phone", "laptop", "tablet"]
        .iter()
        .enumerate()
        .map(|(i, dev)| Device::spawn(&bob, dev, cluster.gateway_ws.clone(), i % 2, std::slice::from_ref(&conv)))
        .collect();
    let alice_phone = Device::spawn(&alice, "phone", cluster.gateway_ws.clone(), 0, std::slice::from_ref(&conv));
    let mut acked = HashMap::new();
    for k in 0..n {
        let a = alice_phone.send(&conv, &format!("s9-{k}"), "hello").await?;
        acked.insert(a.seq, a.message_id);
    }
    let mut tally = Tally { sent: n, acknowledged: acked.len(), ..Tally::default() };
    for d in bobs.iter_mut() {
        d.wait_shown(&conv, n as u64, CATCH_UP).await?;
    }
    for d in bobs {
        let name = format!("{}/{}", d.user, d.device);
        let r = d.stop().await;
        tally.raw_duplicates += r.raw_duplicates;
        check_view(&name, &r, &conv, &acked, &mut tally)?;
    }
    alice_phone.stop().await;
    print("9 three devices of one user", &tally);
    cluster.shutdown().await
}
