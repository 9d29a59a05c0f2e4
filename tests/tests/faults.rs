//! Fault scenarios (promises P1 to P6): the services run as separate processes against the real Kafka,
//! Cassandra and Redis; processes are killed with SIGKILL mid-traffic. Every acknowledged message must be
//! shown by every device of every member, in order, with no gap and no user-visible duplicate; raw
//! duplicates on the wire are counted and printed.
//!
//! `make test` runs the small version; `make faults` sets `FAULTS_SCALE=large` and prints the counts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
/// The deadline of one gRPC call made by the harness (the chat service's own send deadline is 10 s).
const CALL_DEADLINE: Duration = Duration::from_secs(15);

fn user(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

async fn chat(cluster: &Cluster, i: usize) -> anyhow::Result<ChatServiceClient<Channel>> {
    // A history page holds up to 4 MiB of bodies, plus their framing.
    // Every call has a deadline (a send sets a shorter one of its own).
    let channel = Channel::from_shared(format!("http://{}", cluster.chat_addrs[i]))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await?;
    Ok(ChatServiceClient::new(channel).max_decoding_message_size(16 << 20))
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
/// same client id, as the protocol asks. Each call has a deadline, and the send gives up after
/// [`CATCH_UP`] of failures, so that a scenario never waits on a call that does not return.
async fn send_grpc(chat: &mut ChatServiceClient<Channel>, conv: &str, sender: &str, id: &str) -> anyhow::Result<Ack> {
    let first = Instant::now();
    loop {
        let mut req = tonic::Request::new(v1::SendMessageRequest {
            conversation_id: conv.into(),
            sender_id: sender.into(),
            sender_device_id: "service".into(),
            client_msg_id: id.into(),
            body: format!("body of {id}"),
        });
        req.set_timeout(CALL_DEADLINE);
        // The deadline travels to the server; the local one also covers a connection that never answers.
        let answer = tokio::time::timeout(CALL_DEADLINE + Duration::from_secs(1), chat.send_message(req))
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer within the call's deadline")));
        match answer {
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
                ensure!(first.elapsed() < CATCH_UP, "send {id} still failing after {:?}: {s}", first.elapsed());
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

/// Checks that a conversation's history holds exactly the acknowledged messages (seq → message id), which
/// every device was checked to show: the history equals what was delivered.
async fn check_history(
    cluster: &Cluster,
    conv: &str,
    reader: &str,
    acked: &HashMap<u64, String>,
) -> anyhow::Result<()> {
    let h = history(&mut chat(cluster, 0).await?, conv, reader).await?;
    let stored: HashMap<u64, String> = h.iter().map(|m| (m.0, m.1.clone())).collect();
    ensure!(stored.len() == h.len(), "the history of {conv} repeats a number");
    ensure!(
        &stored == acked,
        "the history of {conv} ({} messages) differs from what was delivered ({})",
        stored.len(),
        acked.len()
    );
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
    let devices: Vec<Device> = users
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
    check_devices(devices.into_iter().map(|d| (d, conv.as_str(), &acked)), &mut tally).await?;
    check_history(&cluster, &conv, &users[0], &acked).await?;
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
    let readers: Vec<Device> = pairs
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
    check_readers(readers, &pairs, &acked_by_conv, &mut tally).await?;
    ensure!(tally.acknowledged == n, "{} acknowledged of {n}", tally.acknowledged);
    for (i, (_, r, conv)) in pairs.iter().enumerate() {
        check_history(&cluster, conv, r, &acked_by_conv[i]).await?;
    }
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
    let devices: Vec<Device> = users
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
    check_devices(devices.into_iter().map(|d| (d, conv.as_str(), &acked)), &mut tally).await?;
    check_history(&cluster, &conv, &users[0], &acked).await?;
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
    Device::spawn(&reader, "tablet", cluster.gateway_ws.clone(), 0, &names).stop().await?;
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
    let r = d.stop().await?;
    let mut tally = Tally { sent: n, acknowledged: acked.iter().map(|a| a.len()).sum(), ..Tally::default() };
    tally.raw_duplicates = r.raw_duplicates;
    for (j, name) in names.iter().enumerate() {
        check_view("reader", &r, name, &acked[j], &mut tally)?;
        check_history(&cluster, name, &reader, &acked[j]).await?;
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
    let bobs: Vec<Device> = ["phone", "laptop", "tablet"]
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
    check_devices(bobs.into_iter().map(|d| (d, conv.as_str(), &acked)), &mut tally).await?;
    alice_phone.stop().await?;
    check_history(&cluster, &conv, &alice, &acked).await?;
    print("9 three devices of one user", &tally);
    cluster.shutdown().await
}

/// One sender's acknowledgements: number → (message id, when acknowledged).
type Acks = HashMap<u64, (String, Instant)>;

/// Senders of a steady load: `conversations` direct conversations, each fed by its own task through the
/// chat service's gRPC API until `stop` is set; returns, per conversation, the acknowledged messages.
struct Load {
    pairs: Vec<(String, String, String)>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<AtomicUsize>,
    /// Per conversation, the last number acknowledged.
    latest: Arc<Vec<AtomicU64>>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Acks>>>,
}

/// What a load's readers showed, checked: counts, and per conversation (as in `pairs`) the reader's report
/// and when each number was acknowledged.
struct Checked {
    tally: Tally,
    pairs: Vec<(String, String, String)>,
    reports: Vec<Report>,
    acked_at: Vec<HashMap<u64, Instant>>,
}

impl Load {
    async fn start(cluster: &Cluster, conversations: usize, per_second: u64, tag: &str) -> anyhow::Result<Load> {
        let mut grpc = chat(cluster, 0).await?;
        let mut pairs = Vec::new();
        for i in 0..conversations {
            let (s, r) = (user(&format!("{tag}s{i}")), user(&format!("{tag}r{i}")));
            let conv = create(&mut grpc, &s, std::slice::from_ref(&r)).await?;
            pairs.push((s, r, conv));
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let latest: Arc<Vec<AtomicU64>> = Arc::new((0..conversations).map(|_| AtomicU64::new(0)).collect());
        let mut tasks = Vec::new();
        let pause = Duration::from_millis(1000 * conversations as u64 / per_second.max(1));
        for (i, (s, _, conv)) in pairs.iter().enumerate() {
            let mut chat = chat(cluster, i % cluster.chat_addrs.len()).await?;
            let (s, conv, stop, acked, tag) = (s.clone(), conv.clone(), stop.clone(), acked.clone(), tag.to_owned());
            let latest = latest.clone();
            tasks.push(tokio::spawn(async move {
                let mut acks = HashMap::new();
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    let a = send_grpc(&mut chat, &conv, &s, &format!("{tag}-{i}-{k}")).await?;
                    acks.insert(a.seq, (a.message_id, Instant::now()));
                    latest[i].fetch_max(a.seq, Ordering::Relaxed);
                    acked.fetch_add(1, Ordering::Relaxed);
                    k += 1;
                    tokio::time::sleep(pause).await;
                }
                anyhow::Ok(acks)
            }));
        }
        Ok(Load { pairs, stop, acked, latest, tasks })
    }

    /// Waits until every reader (as in `pairs`) has shown what was acknowledged so far.
    async fn wait_caught_up(&self, readers: &mut [Device]) -> anyhow::Result<()> {
        for (i, d) in readers.iter_mut().enumerate() {
            d.wait_shown(&self.pairs[i].2, self.latest[i].load(Ordering::Relaxed), CATCH_UP).await?;
        }
        Ok(())
    }

    /// Waits until `n` sends in all were acknowledged. Fails at once with a sender's error if one stops, and
    /// after [`CATCH_UP`] without progress.
    async fn wait_acked(&mut self, n: usize) -> anyhow::Result<()> {
        let mut last = (self.acked.load(Ordering::Relaxed), Instant::now());
        loop {
            let acked = self.acked.load(Ordering::Relaxed);
            if acked >= n {
                return Ok(());
            }
            if let Some(t) = self.tasks.iter_mut().find(|t| t.is_finished()) {
                t.await??;
                anyhow::bail!("a sender stopped without an error");
            }
            if acked > last.0 {
                last = (acked, Instant::now());
            }
            ensure!(last.1.elapsed() < CATCH_UP, "no send acknowledged for {CATCH_UP:?} ({acked} of {n})");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops sending, waits for every reader to show everything acknowledged, and checks each reader's view
    /// and each conversation's history.
    async fn finish_and_check(self, cluster: &Cluster, readers: Vec<Device>) -> anyhow::Result<Checked> {
        self.stop.store(true, Ordering::Relaxed);
        let (mut acked, mut acked_at) = (Vec::new(), Vec::new());
        for t in self.tasks {
            // A sender finishes its call in hand: at most `CATCH_UP` of retries.
            let acks =
                tokio::time::timeout(CATCH_UP + CALL_DEADLINE, t).await.context("a sender did not stop")???;
            acked.push(acks.iter().map(|(seq, (id, _))| (*seq, id.clone())).collect::<HashMap<u64, String>>());
            acked_at.push(acks.into_iter().map(|(seq, (_, at))| (seq, at)).collect());
        }
        let mut tally = Tally::default();
        tally.acknowledged = acked.iter().map(|a| a.len()).sum();
        tally.sent = tally.acknowledged;
        let reports = check_readers(readers, &self.pairs, &acked, &mut tally).await?;
        for (i, (_, reader, conv)) in self.pairs.iter().enumerate() {
            check_history(cluster, conv, reader, &acked[i]).await?;
        }
        Ok(Checked { tally, pairs: self.pairs, reports, acked_at })
    }
}

/// Readers of a load's conversations, one device each, spread over the gateways.
fn readers(cluster: &Cluster, pairs: &[(String, String, String)]) -> Vec<Device> {
    pairs
        .iter()
        .enumerate()
        .map(|(i, (_, r, conv))| {
            Device::spawn(r, "phone", cluster.gateway_ws.clone(), i % 2, std::slice::from_ref(conv))
        })
        .collect()
}

/// Readers of a load's conversations (one each, as in `pairs`): see [`check_devices`].
async fn check_readers(
    devices: Vec<Device>,
    pairs: &[(String, String, String)],
    acked: &[HashMap<u64, String>],
    tally: &mut Tally,
) -> anyhow::Result<Vec<Report>> {
    let each = devices.into_iter().zip(pairs).zip(acked).map(|((d, (_, _, conv)), a)| (d, conv.as_str(), a));
    check_devices(each, tally).await
}

/// Waits for each device to show everything acknowledged in its conversation, then stops it, checks its
/// view and adds its counts to `tally`; answers the reports, in order.
async fn check_devices<'a>(
    devices: impl IntoIterator<Item = (Device, &'a str, &'a HashMap<u64, String>)>,
    tally: &mut Tally,
) -> anyhow::Result<Vec<Report>> {
    let mut devices: Vec<_> = devices.into_iter().collect();
    for (d, conv, acked) in devices.iter_mut() {
        d.wait_shown(conv, acked.len() as u64, CATCH_UP).await?;
    }
    let mut reports = Vec::new();
    for (d, conv, acked) in devices {
        let name = format!("{}/{}", d.user, d.device);
        let r = d.stop().await?;
        tally.raw_duplicates += r.raw_duplicates;
        tally.reconnects += r.reconnects;
        check_view(&name, &r, conv, acked, tally)?;
        reports.push(r);
    }
    Ok(reports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_worker_churn_loses_nothing() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let (period, changes) = if large() { (Duration::from_secs(10), 12) } else { (Duration::from_secs(3), 4) };
    let options = ClusterOptions { workers: 1, ..ClusterOptions::default() };
    let partitions = options.partitions;
    let mut cluster = Cluster::start(options).await?;
    let (group, topic) = (cluster.worker_group(), cluster.topic.clone());
    tests::group::wait_settled(&group, &topic, 1, partitions).await?;
    let load = Load::start(&cluster, 10, 200, "s3").await?;
    let devices = readers(&cluster, &load.pairs);
    // Alternately add a worker and stop the oldest running one; after each change the group must settle:
    // stable, one member per running worker, each partition held by exactly one of them.
    let mut running: Vec<usize> = vec![0];
    let mut settle_times = Vec::new();
    for change in 0..changes {
        tokio::time::sleep(period).await;
        if change % 2 == 0 {
            running.push(cluster.add_worker().await?);
        } else {
            let oldest = running.remove(0);
            cluster.stop(Kind::Worker, oldest).await?;
        }
        settle_times.push(tests::group::wait_settled(&group, &topic, running.len(), partitions).await?);
    }
    let checked = load.finish_and_check(&cluster, devices).await?;
    let tally = checked.tally;
    println!(
        "[faults] 3 worker churn: the group settled after each of {changes} changes, within {:?} at most",
        settle_times.iter().max().copied().unwrap_or_default()
    );
    print("3 worker churn", &tally);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_kafka_outage_fails_sends_retryably_and_loses_nothing() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let mut load = Load::start(&cluster, 10, 200, "s5").await?;
    let devices = readers(&cluster, &load.pairs);
    load.wait_acked(scale(100, 1000)).await?;
    // Sends block and fail as UNAVAILABLE while Kafka is down; the senders retry with the same ids.
    tests::cluster::server("down", "kafka")?;
    tokio::time::sleep(Duration::from_secs(if large() { 20 } else { 5 })).await;
    tests::cluster::server("up", "kafka")?;
    let resumed = load.acked.load(Ordering::Relaxed) + scale(100, 1000);
    load.wait_acked(resumed).await?;
    let tally = load.finish_and_check(&cluster, devices).await?.tally;
    print("5 kafka stopped and restarted", &tally);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_a_killed_gateway_loses_no_client_message() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let (clients, per_group) = (scale(200, 1000), 20);
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let mut grpc = chat(&cluster, 0).await?;
    let groups = clients / per_group;
    let mut convs = Vec::new();
    let mut devices = Vec::new();
    for g in 0..groups {
        let members: Vec<String> = (0..per_group).map(|m| user(&format!("s7g{g}m{m}"))).collect();
        let conv = create(&mut grpc, &members[0], &members[1..]).await?;
        for m in &members {
            // Every client starts on gateway 0; its next gateway is gateway 1.
            devices.push((g, Device::spawn(m, "phone", cluster.gateway_ws.clone(), 0, std::slice::from_ref(&conv))));
        }
        convs.push((members[0].clone(), conv));
    }
    let rounds = 10;
    let mut acked: Vec<HashMap<u64, String>> = vec![HashMap::new(); groups];
    for round in 0..rounds {
        if round == rounds / 2 {
            cluster.kill(Kind::Gateway, 0)?;
        }
        for (g, (sender, conv)) in convs.iter().enumerate() {
            let a = send_grpc(&mut grpc, conv, sender, &format!("s7-{g}-{round}")).await?;
            acked[g].insert(a.seq, a.message_id);
        }
    }
    let mut tally = Tally { sent: rounds * groups, acknowledged: rounds * groups, ..Tally::default() };
    check_devices(devices.into_iter().map(|(g, d)| (d, convs[g].1.as_str(), &acked[g])), &mut tally).await?;
    ensure!(tally.reconnects >= clients as u64, "{} reconnects for {clients} clients", tally.reconnects);
    for (g, (sender, conv)) in convs.iter().enumerate() {
        check_history(&cluster, conv, sender, &acked[g]).await?;
    }
    print("7 kill -9 a gateway holding the clients", &tally);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_a_client_that_stops_reading_is_closed_and_loses_nothing() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    // Loopback sockets buffer about 10 MB between a gateway and a client that does not read: the flood must
    // be well past that before the gateway's own queue fills.
    let n = scale(2000, 6000);
    // The gateway waits for the client longer than the flood lasts, so that the close frame reaches it.
    let options =
        ClusterOptions { gateways: 1, send_queue: 64, write_timeout_ms: 120_000, ..ClusterOptions::default() };
    let cluster = Cluster::start(options).await?;
    let mut grpc = chat(&cluster, 0).await?;
    let (alice, bob) = (user("s10a"), user("s10b"));
    let conv = create(&mut grpc, &alice, std::slice::from_ref(&bob)).await?;
    // Bob connects and then never reads.
    let mut stalled = tests::WsClient::connect(cluster.gateway_ws[0], &bob, "phone").await?;
    stalled.sync().await?;
    let before = cluster.rss_kib(Kind::Gateway, 0).context("gateway memory")?;
    let mut peak = before;
    let mut acked = HashMap::new();
    let body = "x".repeat(12 * 1024);
    for k in 0..n {
        let r = grpc
            .send_message(v1::SendMessageRequest {
                conversation_id: conv.clone(),
                sender_id: alice.clone(),
                sender_device_id: "service".into(),
                client_msg_id: format!("s10-{k}"),
                body: body.clone(),
            })
            .await?
            .into_inner();
        acked.insert(r.seq, r.message_id);
        if k % 100 == 0 {
            peak = peak.max(cluster.rss_kib(Kind::Gateway, 0).unwrap_or(0));
        }
    }
    // Now Bob reads what the socket holds: the frames that fit, then the close frame with 4008.
    let code = loop {
        match stalled.recv().await {
            Ok(_) => continue,
            Err(e) => break e.to_string(),
        }
    };
    ensure!(code.contains("4008") || code.contains("Library(4008)"), "closed without 4008: {code}");
    println!(
        "[faults] 10 slow client: gateway resident memory {before} KiB before, {peak} KiB at most during a {n}-message flood"
    );
    ensure!(peak < before + 64 * 1024, "gateway memory grew by {} KiB", peak - before);
    // Reconnecting, Bob resumes by cursor and misses nothing.
    let mut d = Device::spawn(&bob, "phone", cluster.gateway_ws.clone(), 0, std::slice::from_ref(&conv));
    d.wait_shown(&conv, n as u64, CATCH_UP).await?;
    let r = d.stop().await?;
    let mut tally = Tally { sent: n, acknowledged: acked.len(), ..Tally::default() };
    tally.raw_duplicates = r.raw_duplicates;
    check_view("bob", &r, &conv, &acked, &mut tally)?;
    check_history(&cluster, &conv, &bob, &acked).await?;
    print("10 slow client", &tally);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_a_store_outage_lost_presence_and_a_hung_gateway_lose_nothing() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    // 100 messages a second: well within what two workers of a debug build deliver on a loaded machine, so
    // that the hang's cost is not hidden in a backlog.
    let mut load = Load::start(&cluster, 10, 100, "s6").await?;
    let mut devices = readers(&cluster, &load.pairs);
    let step = scale(100, 1000);
    load.wait_acked(step).await?;
    // Cassandra down: claims fail as UNAVAILABLE and are retried; workers retry their records.
    tests::cluster::server("down", "cassandra")?;
    tokio::time::sleep(Duration::from_secs(if large() { 20 } else { 5 })).await;
    tests::cluster::server("up", "cassandra")?;
    let after_store = load.acked.load(Ordering::Relaxed) + step;
    load.wait_acked(after_store).await?;
    load.wait_caught_up(&mut devices).await?;
    // A few seconds of steady delivery, the baseline of the hang's cost.
    let baseline_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Presence pointing at a gateway that does not answer: gateway 1 hangs (SIGSTOP: its ports still accept
    // connections, nothing answers). A worker's first push to it costs one push deadline; then its devices'
    // messages go to their inbox at once, and the readers on gateway 0 keep getting theirs without waiting.
    let hung_from = Instant::now();
    cluster.pause(Kind::Gateway, 1)?;
    let while_hung = load.acked.load(Ordering::Relaxed) + step;
    load.wait_acked(while_hung).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hung_until = Instant::now();
    // When it answers again, the workers' probe asks it to send the inbox to its devices.
    cluster.resume(Kind::Gateway, 1)?;
    let after_hang = load.acked.load(Ordering::Relaxed) + step;
    load.wait_acked(after_hang).await?;
    // Redis restarted empty: presence is gone until the gateways refresh it; meanwhile messages go to inboxes,
    // which the gateways send again when they find their entries missing.
    let redis_at = Instant::now();
    tests::cluster::server("down", "redis")?;
    tests::cluster::server("up", "redis")?;
    let after_presence = load.acked.load(Ordering::Relaxed) + step;
    load.wait_acked(after_presence).await?;
    let checked = load.finish_and_check(&cluster, devices).await?;
    // Readers with an even index are on gateway 0 (see `readers`).
    // The slowest delivery to a reader on gateway 0 (even index, see `readers`) of a message acknowledged in
    // a window: (slowest, how many).
    let slowest_in = |window: std::ops::Range<Instant>| {
        let mut worst = (Duration::ZERO, 0);
        for (i, (_, _, conv)) in checked.pairs.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            let shown_at = &checked.reports[i].shown_at[conv];
            for (seq, acked_at) in &checked.acked_at[i] {
                if window.contains(acked_at) {
                    worst = (worst.0.max(shown_at[seq].saturating_duration_since(*acked_at)), worst.1 + 1);
                }
            }
        }
        worst
    };
    let (baseline, _) = slowest_in(baseline_from..hung_from);
    let (worst, measured) = slowest_in(hung_from..hung_until);
    // The slowest delivery of the whole run, whatever phase it fell in (for the report).
    let mut slowest = (Duration::ZERO, String::new());
    for (i, (_, _, conv)) in checked.pairs.iter().enumerate() {
        let shown_at = &checked.reports[i].shown_at[conv];
        for (seq, acked_at) in &checked.acked_at[i] {
            let waited = shown_at[seq].saturating_duration_since(*acked_at);
            if waited > slowest.0 {
                let at = acked_at.duration_since(started);
                slowest = (waited, format!("reader {i}, number {seq}, acknowledged {at:?} into the scenario"));
            }
        }
    }
    let deadline = Duration::from_millis(cluster.options().push_timeout_ms);
    println!(
        "[faults] 6 hung gateway: {measured} messages to readers on the other gateway while it hung, acknowledgement to \
         shown at most {worst:?} (push deadline {deadline:?}; at most {baseline:?} in the 5 s before); slowest delivery of the run {:?} ({})",
        slowest.0, slowest.1
    );
    println!(
        "[faults] 6 phases: the gateway hung {:?} and redis restarted {:?} into the scenario",
        hung_from - started,
        redis_at - started
    );
    ensure!(measured > 0, "no message was sent while the gateway hung");
    // One deadline over the steady state just before, plus room for a loaded machine; a deadline paid per
    // message would pass this within seconds.
    ensure!(
        worst < baseline + deadline + Duration::from_secs(2),
        "readers on a live gateway waited {worst:?} (before the hang: {baseline:?})"
    );
    let tally = checked.tally;
    print("6 cassandra stopped and restarted, redis restarted empty, a gateway hung", &tally);
    cluster.shutdown().await
}
