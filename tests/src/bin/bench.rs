//! `make bench`: starts the platform (release binaries) against the real servers, runs the benchmark
//! scenarios with the load generator, measures each figure's floor in the same run, and writes
//! `results.json` and `summary.md` into the output folder (charts are drawn from the JSON by
//! `tests/bench/charts.py`). `bench floor-ws` is the floor of the idle-connection scenario: a minimal
//! tokio-tungstenite server, run as its own process so that its memory is measured alone. The `centrifugo`
//! scenario runs the same idle, 1:1 and group loads against Centrifugo (`tests::centrifugo`), the peer a
//! team would weigh against us, without and with its history, in the same run.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use proto::v1;
use proto::v1::chat_service_client::ChatServiceClient;
use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tests::centrifugo::{ApiPublisher, Centrifugo, PeerConn};
use tests::cluster::{Cluster, ClusterOptions, Kind};
use tests::load::{self, Conn, Percentiles, Recorder};
use tests::platform::kafka_brokers;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "bench", about = "The platform's benchmarks, each beside its floor")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Where results go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Scenarios to run, comma separated: idle, scale, latency, storm, centrifugo (default: all).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// A small run of every scenario (for `make test`'s smoke run): fewer connections, shorter periods.
    #[arg(long)]
    smoke: bool,
    /// Where the service binaries are (default: target/release).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Rates of the 1:1 latency scenario, messages a second, comma separated (default: the scenario's).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<u64>,
    /// Rates of the groups' latency scenario, messages a second, comma separated (default: the scenario's).
    #[arg(long, value_delimiter = ',')]
    group_rates: Vec<u64>,
    /// Partitions of the platform's events topic (the Kafka floor keeps its own): every partition an owner
    /// holds commits its own transactions, so this sets how many records a transaction carries at a rate
    /// (docs/operations.md, "Choose the partition count").
    #[arg(long, default_value_t = PLATFORM_PARTITIONS)]
    partitions: i32,
}

#[derive(Subcommand)]
enum Command {
    /// A minimal tokio-tungstenite server that holds connections (the idle scenario's floor).
    FloorWs,
    /// Holds connections to one gateway for the scale-out scenario (one process may hold at most 20,000
    /// open files, so the scenario runs several): prints `connected N`, then `received N` as messages
    /// arrive (distinct numbers per connection); closes them and ends when its standard input closes.
    Hold(HoldArgs),
    /// Kafka's CPU for transactional writes, three ways: one producer per partition, each transaction writing
    /// its partition (the partition owners' way); one producer whose transactions write every partition;
    /// the same, fenced by a consumer group's generation (KIP-447).
    /// Needs only Kafka (`infra/local/servers.sh up kafka`).
    KafkaTransactions(TransactionArgs),
    /// Prints the summary of an earlier run from its `results.json` (what the run wrote to `summary.md`,
    /// drawn again by this build's tables).
    Summary {
        /// The run's `results.json`.
        results: PathBuf,
    },
}

#[derive(clap::Args)]
struct TransactionArgs {
    /// Records a second, over all partitions.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// How long each way writes.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
}

#[derive(clap::Args)]
struct HoldArgs {
    #[arg(long)]
    gateway: SocketAddr,
    /// Users are `<prefix><i>` for i in from..from+count.
    #[arg(long)]
    prefix: String,
    #[arg(long)]
    from: usize,
    #[arg(long)]
    count: usize,
    /// Source addresses to bind, in turn (127.0.0.x).
    #[arg(long, value_delimiter = ',')]
    sources: Vec<IpAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Command::FloorWs) => return floor_ws().await,
        Some(Command::Hold(h)) => return hold_for_scale(h).await,
        Some(Command::KafkaTransactions(t)) => return kafka_transactions(t).await,
        Some(Command::Summary { results }) => {
            let text = std::fs::read_to_string(&results).with_context(|| format!("reading {}", results.display()))?;
            let report: Report = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a bench run's results", results.display()))?;
            print!("{}", report.markdown());
            return Ok(());
        }
        None => {}
    }
    let started = Instant::now();
    let all = ["idle", "scale", "latency", "storm", "centrifugo"];
    let wanted: Vec<&str> = if args.scenarios.is_empty() {
        all.to_vec()
    } else {
        let w: Vec<&str> = args.scenarios.iter().map(String::as_str).collect();
        if let Some(bad) = w.iter().find(|s| !all.contains(s)) {
            bail!("unknown scenario {bad}; known: {all:?}");
        }
        w
    };
    let mut size = if args.smoke { Size::smoke() } else { Size::full() };
    if !args.rates.is_empty() {
        size.rates = args.rates.clone();
    }
    if !args.group_rates.is_empty() {
        size.group_rates = args.group_rates.clone();
    }
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| workspace().join("target").join("release"));
    std::fs::create_dir_all(&args.out)?;
    ensure!(args.partitions >= 1, "--partitions must be at least 1");
    let layout = Layout { chat_services: 1, workers: 2, partitions: args.partitions };
    let mut report = Report { machine: machine(), smoke: args.smoke, layout, ..Report::default() };
    let options = ClusterOptions {
        chat_services: layout.chat_services,
        gateways: size.scale_gateways,
        workers: layout.workers,
        partitions: args.partitions,
        bin_dir: Some(bin_dir.clone()),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(options).await?;
    let run = async {
        if wanted.contains(&"idle") {
            report.idle = Some(idle(&cluster, size.idle).await.context("idle scenario")?);
        }
        if wanted.contains(&"scale") {
            report.scale = Some(scale(&cluster, &size).await.context("scale-out scenario")?);
        }
        if wanted.contains(&"latency") {
            report.latency = latency(&cluster, &size, 2, size.pairs, &size.rates, size.jvm_warmup)
                .await
                .context("latency scenario")?;
            report.groups =
                latency(&cluster, &size, size.group_members, size.groups, &size.group_rates, Duration::ZERO)
                    .await
                    .context("groups")?;
        }
        if wanted.contains(&"storm") {
            report.storm = Some(storm(&cluster, &size).await.context("reconnect storm")?);
        }
        if wanted.contains(&"centrifugo") {
            for history in [false, true] {
                report.peers.push(peer(&size, history, &args.out).await.context("centrifugo")?);
            }
        }
        anyhow::Ok(())
    };
    let outcome = run.await;
    // Shutting down deletes the platform's topic.
    cluster.shutdown().await?;
    outcome?;
    report.seconds = started.elapsed().as_secs_f64();
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(args.out.join("results.json"), &json)?;
    let summary = report.markdown();
    std::fs::write(args.out.join("summary.md"), &summary)?;
    println!("{summary}");
    Ok(())
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// How big each scenario is.
struct Size {
    idle: usize,
    scale_gateways: usize,
    scale_per_gateway: usize,
    /// One connection in this many gets a message.
    scale_sample_every: usize,
    pairs: usize,
    rates: Vec<u64>,
    groups: usize,
    group_members: usize,
    group_rates: Vec<u64>,
    warmup: Duration,
    /// Before the first rate of the latency scenario: traffic at [`JVM_WARMUP_RATE`] for this long, so that
    /// Kafka's and Cassandra's JVMs have compiled their hot paths before anything is measured.
    jvm_warmup: Duration,
    measure: Duration,
    storm_groups: usize,
    storm_members: usize,
    storm_missed: usize,
}

impl Size {
    fn full() -> Size {
        Size {
            idle: 18_000,
            scale_gateways: 3,
            scale_per_gateway: 17_000,
            scale_sample_every: 100,
            pairs: 250,
            rates: vec![250, 500, 1_000, 2_000, 3_000, 5_000],
            groups: 10,
            group_members: 100,
            // Up to where Centrifugo, the peer, stops keeping p99 under 100 ms too, so that its figure is a
            // limit found rather than the most tried.
            group_rates: vec![10, 25, 50, 100, 250, 300, 400, 500, 600, 800, 1_000],
            warmup: Duration::from_secs(3),
            jvm_warmup: Duration::from_secs(60),
            measure: Duration::from_secs(10),
            storm_groups: 100,
            storm_members: 100,
            storm_missed: 10,
        }
    }

    fn smoke() -> Size {
        Size {
            idle: 200,
            scale_gateways: 3,
            scale_per_gateway: 100,
            scale_sample_every: 10,
            pairs: 10,
            rates: vec![100],
            groups: 2,
            group_members: 5,
            group_rates: vec![10],
            warmup: Duration::from_secs(1),
            jvm_warmup: Duration::from_secs(1),
            measure: Duration::from_secs(2),
            storm_groups: 4,
            storm_members: 10,
            storm_missed: 3,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Report {
    machine: Machine,
    smoke: bool,
    /// Absent from the results of runs before it was recorded (they ran 8 partitions).
    #[serde(default)]
    layout: Layout,
    seconds: f64,
    idle: Option<Idle>,
    scale: Option<Scale>,
    latency: Vec<Latency>,
    groups: Vec<Latency>,
    storm: Option<Storm>,
    /// Centrifugo, without and with history.
    peers: Vec<Peer>,
}

/// The platform the run measured, besides the gateways (their counts are the scenarios').
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Layout {
    chat_services: usize,
    workers: usize,
    partitions: i32,
}

impl Default for Layout {
    fn default() -> Self {
        Layout { chat_services: 1, workers: 2, partitions: 8 }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    memory_gib: f64,
    kernel: String,
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Machine {
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        cpu_model,
        memory_gib: kib / 1024.0 / 1024.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
    }
}

/// CPU time (user + system) a process has used, in seconds, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Context switches (voluntary and not) of every thread a process has now, from /proc. Threads that ended
/// are not counted: a count between two readings misses those of threads that ended meanwhile.
fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        for line in status.lines() {
            if let Some(n) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += n.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Some(total)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// The processes whose CPU time is counted, by kind: the platform's, the servers', and this one.
fn processes(cluster: &Cluster) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for (kind, name) in [(Kind::Gateway, "gateway"), (Kind::ChatService, "chat-service"), (Kind::Worker, "worker")] {
        for i in 0..cluster.count(kind) {
            if let Some(pid) = cluster.pid(kind, i) {
                out.push((name.to_owned(), pid));
            }
        }
    }
    for server in ["kafka", "cassandra", "redis"] {
        let file = workspace().join(".local").join("run").join(format!("{server}.pid"));
        if let Some(pid) = std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok()) {
            out.push((server.to_owned(), pid));
        }
    }
    out.push(("load-generator".to_owned(), std::process::id()));
    out
}

/// CPU seconds and context switches by process kind, between two calls.
struct CpuMeter {
    start: Vec<(String, u32, f64, Option<u64>)>,
}

/// What the processes of each kind used between a meter's start and stop.
struct Used {
    cpu_seconds: HashMap<String, f64>,
    context_switches: HashMap<String, f64>,
}

impl CpuMeter {
    fn start(cluster: &Cluster) -> CpuMeter {
        CpuMeter::of(processes(cluster))
    }

    fn of(processes: Vec<(String, u32)>) -> CpuMeter {
        let start = processes
            .into_iter()
            .filter_map(|(name, pid)| Some((name, pid, cpu_seconds(pid)?, context_switches(pid))))
            .collect();
        CpuMeter { start }
    }

    fn stop(&self) -> Used {
        let mut used = Used { cpu_seconds: HashMap::new(), context_switches: HashMap::new() };
        for (name, pid, cpu_before, switches_before) in &self.start {
            if let Some(after) = cpu_seconds(*pid) {
                *used.cpu_seconds.entry(name.clone()).or_default() += after - cpu_before;
            }
            if let (Some(before), Some(after)) = (switches_before, context_switches(*pid)) {
                *used.context_switches.entry(name.clone()).or_default() += after.saturating_sub(*before) as f64;
            }
        }
        used
    }
}

/// CPU time and context switches by process kind over a scenario, in all and per delivered message.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Cost {
    cpu_seconds: HashMap<String, f64>,
    cpu_seconds_per_message: HashMap<String, f64>,
    /// Absent from the results of runs before it was measured.
    #[serde(default)]
    context_switches_per_message: HashMap<String, f64>,
}

impl Cost {
    fn new(used: Used, delivered: u64) -> Cost {
        let per = |s: &f64| if delivered == 0 { 0.0 } else { s / delivered as f64 };
        let each = |m: &HashMap<String, f64>| m.iter().map(|(k, s)| (k.clone(), per(s))).collect();
        Cost {
            cpu_seconds_per_message: each(&used.cpu_seconds),
            context_switches_per_message: each(&used.context_switches),
            cpu_seconds: used.cpu_seconds,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Scenario 1: idle connections.

#[derive(Debug, Serialize, Deserialize)]
struct Idle {
    connections: usize,
    gateway_connected: usize,
    gateway_kib_per_connection: f64,
    floor_connected: usize,
    floor_kib_per_connection: f64,
    ratio: f64,
    target_ratio: f64,
}

async fn floor_ws() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening {}", listener.local_addr()?)?;
        stdout.flush()?;
    }
    // The same buffer sizes as the gateway's connections: a floor for what the gateway adds, not for
    // tungstenite's defaults.
    let config = gateway::http::ws_config(64 * 1024);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await {
                while let Some(Ok(_)) = ws.next().await {}
            }
        });
    }
}

/// Opens `n` connections (each its own user) and answers how many connected and the growth of `pid`'s
/// resident memory, measured once they settled; closes them.
async fn hold(gw: SocketAddr, pid: u32, n: usize, tag: &str, settle: Duration) -> anyhow::Result<(usize, u64)> {
    let users: Vec<String> = (0..n).map(|i| format!("{tag}{i}")).collect();
    let recorder = Arc::new(Recorder::default());
    let open = load::connect_many(gw, &[IpAddr::V4(Ipv4Addr::LOCALHOST)], &users, 200, recorder);
    resident_growth(pid, settle, open, load::Conn::close).await
}

/// Opens connections (`open`), and answers how many connected and the growth of `pid`'s resident memory
/// once they settled; then closes them (`close`).
async fn resident_growth<C>(
    pid: u32,
    settle: Duration,
    open: impl Future<Output = Vec<Option<C>>>,
    close: impl Fn(&C),
) -> anyhow::Result<(usize, u64)> {
    let before = rss_kib(pid).context("no such process")?;
    let conns = open.await;
    let connected = conns.iter().flatten().count();
    tokio::time::sleep(settle).await;
    let after = rss_kib(pid).context("the process died")?;
    for c in conns.iter().flatten() {
        close(c);
    }
    drop(conns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok((connected, after.saturating_sub(before)))
}

async fn idle(cluster: &Cluster, n: usize) -> anyhow::Result<Idle> {
    // The floor, in its own process.
    let exe = std::env::current_exe()?;
    let mut floor = tokio::process::Command::new(exe)
        .arg("floor-ws")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = floor.stdout.take().context("floor stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout);
    let mut first = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut first).await?;
    let floor_addr: SocketAddr = first.trim().strip_prefix("listening ").context("floor address")?.parse()?;
    let floor_pid = floor.id().context("floor pid")?;
    let (floor_connected, floor_kib) = hold(floor_addr, floor_pid, n, "floor", Duration::from_secs(3)).await?;
    floor.kill().await?;

    let gw = cluster.gateway_ws[0];
    let pid = cluster.pid(Kind::Gateway, 0).context("gateway pid")?;
    // Past the inbox's second read (3 s after connect), so that every session is in its resting state.
    let (connected, kib) = hold(gw, pid, n, "idle", Duration::from_secs(6)).await?;
    ensure!(connected > 0 && floor_connected > 0, "no connection held");
    let g = kib as f64 / connected as f64;
    let f = floor_kib as f64 / floor_connected as f64;
    Ok(Idle {
        connections: n,
        gateway_connected: connected,
        gateway_kib_per_connection: g,
        floor_connected,
        floor_kib_per_connection: f,
        ratio: g / f.max(0.001),
        target_ratio: 1.3,
    })
}

// ---------------------------------------------------------------------------------------------------------
// Scenario 2: scale-out.

#[derive(Debug, Serialize, Deserialize)]
struct Scale {
    gateways: usize,
    connections: usize,
    connected: usize,
    /// Resident memory of all gateways with every connection held, MiB.
    gateways_rss_mib: f64,
    sampled: usize,
    received: u64,
    seconds_to_arrive: f64,
    #[serde(flatten)]
    cost: Cost,
}

async fn hold_for_scale(a: HoldArgs) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt as _;
    ensure!(!a.sources.is_empty(), "no source address");
    let users: Vec<String> = (a.from..a.from + a.count).map(|i| format!("{}{i}", a.prefix)).collect();
    let recorder = Arc::new(Recorder::default());
    let conns = load::connect_many(a.gateway, &a.sources, &users, 200, recorder.clone()).await;
    let say = |line: String| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").and_then(|()| out.flush())
    };
    say(format!("connected {}", conns.iter().flatten().count()))?;
    let mut stdin = tokio::io::stdin();
    let mut eof = std::pin::pin!(async move {
        let mut sink = Vec::new();
        let _ = stdin.read_to_end(&mut sink).await;
    });
    let mut told = 0;
    loop {
        tokio::select! {
            () = &mut eof => break,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let received = recorder.messages.load(Ordering::Relaxed);
        if received != told {
            told = received;
            say(format!("received {received}"))?;
        }
    }
    for c in conns.iter().flatten() {
        c.close();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// One `bench hold` process: how many it connected, and how many messages it has received so far.
struct Holder {
    child: tokio::process::Child,
    connected: usize,
    received: Arc<AtomicU64>,
}

async fn start_holder(
    gw: SocketAddr,
    prefix: &str,
    from: usize,
    count: usize,
    sources: String,
) -> anyhow::Result<Holder> {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["hold", "--gateway", &gw.to_string(), "--prefix", prefix])
        .args(["--from", &from.to_string(), "--count", &count.to_string(), "--sources", &sources])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("holder stdout")?).lines();
    let first = tokio::time::timeout(Duration::from_secs(600), lines.next_line())
        .await
        .context("a holder did not connect within 10 minutes")??
        .context("a holder ended")?;
    let connected: usize = first.strip_prefix("connected ").context("holder's first line")?.parse()?;
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(n) = line.strip_prefix("received ").and_then(|n| n.parse().ok()) {
                r.store(n, Ordering::Relaxed);
            }
        }
    });
    Ok(Holder { child, connected, received })
}

async fn scale(cluster: &Cluster, size: &Size) -> anyhow::Result<Scale> {
    let gateways = cluster.gateway_ws.len();
    let id = run_id();
    let prefix = format!("sc{id}u");
    let total = gateways * size.scale_per_gateway;
    // The sample: every n-th user gets a direct conversation with one sender, created before they connect.
    let mut grpc = chat(cluster).await?;
    let sender = format!("sc{id}sender");
    let mut sample = Vec::new();
    for i in (0..total).step_by(size.scale_sample_every) {
        sample.push(create(&mut grpc, &sender, vec![format!("{prefix}{i}")]).await?);
    }
    // One holder process per gateway, each from two source addresses of its own.
    let mut holders = Vec::new();
    for (g, gw) in cluster.gateway_ws.iter().enumerate() {
        let sources = format!("127.0.0.{},127.0.0.{}", 2 + 2 * g, 3 + 2 * g);
        holders.push(start_holder(*gw, &prefix, g * size.scale_per_gateway, size.scale_per_gateway, sources));
    }
    let holders = futures::future::try_join_all(holders).await?;
    let connected: usize = holders.iter().map(|h| h.connected).sum();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let gateways_rss_kib: u64 = (0..gateways).filter_map(|g| cluster.pid(Kind::Gateway, g)).filter_map(rss_kib).sum();
    println!(
        "[bench] scale-out: {connected} of {total} connections held by {gateways} gateways ({} MiB resident)",
        gateways_rss_kib / 1024
    );
    let cpu = CpuMeter::start(cluster);
    let start = Instant::now();
    let sends = sample.iter().enumerate().map(|(k, conv)| {
        let mut grpc = grpc.clone();
        let sender = sender.clone();
        async move {
            grpc.send_message(v1::SendMessageRequest {
                conversation_id: conv.clone(),
                sender_id: sender,
                sender_device_id: "service".into(),
                client_msg_id: format!("scale-{k}"),
                body: format!("hello {k}"),
            })
            .await
        }
    });
    let sent = futures::stream::iter(sends).buffer_unordered(50).collect::<Vec<_>>().await;
    for r in sent {
        r?;
    }
    let expected = sample.len() as u64;
    let received = || holders.iter().map(|h| h.received.load(Ordering::Relaxed)).sum::<u64>();
    while received() < expected && start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu.stop();
    let got = received();
    for mut h in holders {
        drop(h.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(30), h.child.wait()).await;
    }
    println!("[bench] scale-out: {got} of {expected} sampled connections got their message in {seconds:.2} s");
    Ok(Scale {
        gateways,
        connections: total,
        connected,
        gateways_rss_mib: gateways_rss_kib as f64 / 1024.0,
        sampled: sample.len(),
        received: got,
        seconds_to_arrive: seconds,
        cost: Cost::new(cpu, got),
    })
}

// ---------------------------------------------------------------------------------------------------------
// Scenario 3: latency at fixed rates, beside produce → consume on the same broker.

/// The rate of the servers' warm-up before the latency scenario's first rate.
const JVM_WARMUP_RATE: u64 = 500;

#[derive(Debug, Serialize, Deserialize)]
struct Latency {
    /// Members of each conversation (the sender and `members - 1` recipients).
    members: usize,
    rate: u64,
    /// Whether every message was acknowledged and received within 30 s of the period's end.
    kept_up: bool,
    /// `error` frames the clients got while this rate was measured (a refused or failed send).
    errors: u64,
    sent: u64,
    received: u64,
    ack: Percentiles,
    receive: Percentiles,
    floor: Percentiles,
    ratio_p99: f64,
    /// Events per log transaction of the chat services while the rate was measured (0: not ours).
    events_per_transaction: f64,
    #[serde(flatten)]
    cost: Cost,
}

async fn chat(cluster: &Cluster) -> anyhow::Result<ChatServiceClient<Channel>> {
    Ok(ChatServiceClient::connect(format!("http://{}", cluster.chat_addrs[0])).await?)
}

async fn create(chat: &mut ChatServiceClient<Channel>, creator: &str, others: Vec<String>) -> anyhow::Result<String> {
    let kind = if others.len() == 1 { v1::ConversationKind::Direct } else { v1::ConversationKind::Group };
    let r = chat
        .create_conversation(v1::CreateConversationRequest {
            kind: kind as i32,
            created_by: creator.into(),
            member_ids: others,
            title: String::new(),
        })
        .await?
        .into_inner();
    Ok(r.conversation.context("no conversation")?.conversation_id)
}

fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

async fn latency(
    cluster: &Cluster,
    size: &Size,
    members: usize,
    conversations: usize,
    rates: &[u64],
    jvm_warmup: Duration,
) -> anyhow::Result<Vec<Latency>> {
    let mut grpc = chat(cluster).await?;
    let id = run_id();
    let mut users = Vec::new();
    let mut convs = Vec::new();
    // Each conversation's first member sends; the others receive.
    for c in 0..conversations {
        let group: Vec<String> = (0..members).map(|m| format!("lat{id}c{c}m{m}")).collect();
        convs.push(create(&mut grpc, &group[0], group[1..].to_vec()).await?);
        users.extend(group);
    }
    let recorder = Arc::new(Recorder::default());
    let conns =
        load::connect_many(cluster.gateway_ws[0], &[IpAddr::V4(Ipv4Addr::LOCALHOST)], &users, 100, recorder.clone())
            .await;
    let conns: Vec<Conn> = conns.into_iter().collect::<Option<Vec<_>>>().context("a client did not connect")?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let senders: Vec<(&Conn, &str)> = conns.iter().step_by(members).zip(convs.iter().map(String::as_str)).collect();
    let fleet = Fleet {
        recorder: &recorder,
        members,
        kafka_floor: true,
        meter: &|| CpuMeter::start(cluster),
        chat_metrics: &cluster.chat_metrics,
    };
    let out = at_rates(&fleet, &senders, size, rates, jvm_warmup).await;
    for c in &conns {
        c.close();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    out
}

/// Who is measured at fixed rates: the connections' recorder, the members per conversation, whether Kafka's
/// floor is measured beside each rate, the CPU meter of the processes that serve them, and where the chat
/// services serve their counters (none for a peer).
struct Fleet<'a> {
    recorder: &'a Recorder,
    members: usize,
    kafka_floor: bool,
    meter: &'a dyn Fn() -> CpuMeter,
    chat_metrics: &'a [SocketAddr],
}

/// The chat services' transactions and their events so far, summed (zero when they serve no counters).
async fn transactions(chat_metrics: &[SocketAddr]) -> (u64, u64) {
    let (mut transactions, mut events) = (0, 0);
    for addr in chat_metrics {
        transactions += tests::platform::metric_at(*addr, "chat_owner_transactions_total").await.unwrap_or(0);
        events += tests::platform::metric_at(*addr, "chat_owner_events_total").await.unwrap_or(0);
    }
    (transactions, events)
}

/// Sends at each rate in turn (after `jvm_warmup` at [`JVM_WARMUP_RATE`], and `size.warmup` at the rate
/// itself), and measures send→ack and send→receive; stops after the first rate not kept up with.
async fn at_rates<S: load::Sender>(
    fleet: &Fleet<'_>,
    senders: &[(&S, &str)],
    size: &Size,
    rates: &[u64],
    jvm_warmup: Duration,
) -> anyhow::Result<Vec<Latency>> {
    let (recorder, members) = (fleet.recorder, fleet.members);
    let recipients = (members - 1) as u64;
    let counter = AtomicU64::new(0);
    if !jvm_warmup.is_zero() {
        println!("[bench] warming the servers up: {JVM_WARMUP_RATE} messages/s for {jvm_warmup:?}");
        load::send_at_rate(senders, JVM_WARMUP_RATE, jvm_warmup, &counter).await;
    }
    let mut out = Vec::new();
    for &rate in rates {
        load::send_at_rate(senders, rate, size.warmup, &counter).await;
        recorder.restart();
        let errors_before = recorder.errors.load(Ordering::Relaxed);
        let cpu = (fleet.meter)();
        let committed_before = transactions(fleet.chat_metrics).await;
        let sent = load::send_at_rate(senders, rate, size.measure, &counter).await;
        let committed = transactions(fleet.chat_metrics).await;
        let (txns, events) = (committed.0 - committed_before.0, committed.1 - committed_before.1);
        let events_per_transaction = if txns == 0 { 0.0 } else { events as f64 / txns as f64 };
        // Let the last messages arrive: everything sent so far acknowledged, and what was sent in the
        // measured period received (at most 30 s more).
        let draining = Instant::now();
        let total = counter.load(Ordering::Relaxed);
        let caught_up = loop {
            let received = recorder.received.lock().unwrap_or_else(|p| p.into_inner()).len();
            if recorder.acks.load(Ordering::Relaxed) >= total && received >= sent * recipients {
                break true;
            }
            if draining.elapsed() > Duration::from_secs(30) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let cpu = cpu.stop();
        let ack = Percentiles::of(&recorder.acked.lock().unwrap_or_else(|p| p.into_inner()));
        let receive = Percentiles::of(&recorder.received.lock().unwrap_or_else(|p| p.into_inner()));
        // Deliveries of the messages sent in the measured period (those sent before are not counted).
        let received = receive.count;
        let errors = recorder.errors.load(Ordering::Relaxed) - errors_before;
        let floor = if fleet.kafka_floor { kafka_floor(rate, size.measure).await? } else { Percentiles::default() };
        println!(
            "[bench] {members} members, {rate} messages/s: sent {sent}, deliveries {received}, error answers {errors}; p99 ack {:.1} ms, receive {:.1} ms; kafka floor p99 {:.1} ms; {txns} transactions, {events_per_transaction:.2} events each",
            ack.p99_ms, receive.p99_ms, floor.p99_ms
        );
        out.push(Latency {
            members,
            rate,
            sent,
            received,
            errors,
            kept_up: caught_up,
            ack,
            receive,
            floor,
            ratio_p99: if fleet.kafka_floor { receive.p99_ms / floor.p99_ms.max(0.001) } else { 0.0 },
            events_per_transaction,
            cost: Cost::new(cpu, received),
        });
        if !caught_up {
            // Higher rates would only queue more behind this one.
            println!("[bench] {rate} messages/s was not kept up with: no higher rate is tried");
            break;
        }
    }
    Ok(out)
}

/// What one way of writing transactions cost Kafka.
struct TransactionCost {
    records: u64,
    transactions: u64,
    kafka_cpu_seconds: f64,
    seconds: f64,
}

/// `bench kafka-transactions`: Kafka's CPU per record when each transaction writes one partition (a producer
/// per partition, as the partition owners write), when each writes every partition (one producer), and when
/// those also commit a group member's offsets (the fence such a producer would need), at the same rate. Each producer commits, transaction after transaction, what has fallen due; a
/// `read_committed` consumer reads it all, as the delivery workers do.
async fn kafka_transactions(args: TransactionArgs) -> anyhow::Result<()> {
    ensure!(args.rate > 0 && args.seconds > 0, "--rate and --seconds must be at least 1");
    let pid_file = workspace().join(".local").join("run").join("kafka.pid");
    let kafka: u32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| format!("no Kafka started by infra/local/servers.sh ({})", pid_file.display()))?;
    println!(
        "| transactions write | records | transactions | records per transaction | Kafka CPU, ms/s | Kafka CPU per record |"
    );
    println!("|---|---|---|---|---|---|");
    for (way, writers, group_fenced) in [
        ("one partition (a producer per partition)", (0..PARTITIONS).map(|p| vec![p]).collect::<Vec<_>>(), false),
        ("every partition (one producer)", vec![(0..PARTITIONS).collect()], false),
        ("every partition, fenced by a group's generation (one producer)", vec![(0..PARTITIONS).collect()], true),
    ] {
        let topic = format!("bench.transactions.{}", run_id());
        tests::platform::create_topic(&topic, PARTITIONS).await?;
        let (rate, period) = (args.rate, Duration::from_secs(args.seconds));
        let written = topic.clone();
        let cost = tokio::task::spawn_blocking(move || {
            write_transactions(kafka, &written, writers, group_fenced, rate, period)
        })
        .await??;
        tests::platform::delete_topics(&[&topic]).await?;
        println!(
            "| {way} | {} | {} | {:.1} | {:.0} | {:.0} µs |",
            cost.records,
            cost.transactions,
            cost.records as f64 / cost.transactions.max(1) as f64,
            cost.kafka_cpu_seconds * 1000.0 / cost.seconds,
            cost.kafka_cpu_seconds * 1e6 / cost.records.max(1) as f64
        );
    }
    Ok(())
}

/// Writes `rate` records a second for `period` through one transactional producer per entry of `writers`
/// (the partitions each writes, in turn), while a `read_committed` consumer reads them; measures Kafka's
/// CPU (process `kafka`) meanwhile. `group_fenced`: each transaction also commits the offsets of a
/// consumer group's member with its generation (`send_offsets_to_transaction`, KIP-447), the fence a
/// producer that is not named after one partition would need.
fn write_transactions(
    kafka: u32,
    topic: &str,
    writers: Vec<Vec<i32>>,
    group_fenced: bool,
    rate: u64,
    period: Duration,
) -> anyhow::Result<TransactionCost> {
    use rdkafka::consumer::{BaseConsumer, ConsumerGroupMetadata};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", format!("{topic}.reader"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .create()?;
    reader.subscribe(&[topic])?;
    let producers = writers
        .iter()
        .enumerate()
        .map(|(i, _)| -> anyhow::Result<BaseProducer> {
            let p: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", kafka_brokers())
                .set("transactional.id", format!("{topic}.{i}"))
                .set("linger.ms", "0")
                .set("acks", "all")
                .create()?;
            p.init_transactions(Duration::from_secs(10))?;
            Ok(p)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The member whose generation fences the writer, and the offsets it commits with each transaction.
    let member: Option<(GroupMember, ConsumerGroupMetadata, TopicPartitionList)> = if group_fenced {
        let member = GroupMember(std::mem::ManuallyDrop::new(
            ClientConfig::new()
                .set("bootstrap.servers", kafka_brokers())
                .set("group.id", format!("{topic}.owners"))
                .set("enable.auto.commit", "false")
                .create::<BaseConsumer>()?,
        ));
        member.0.subscribe(&[topic])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while member.0.assignment()?.count() == 0 {
            ensure!(Instant::now() < deadline, "the owners' group gave its member no partition in 30 s");
            member.0.poll(Duration::from_millis(100));
        }
        let metadata = member.0.group_metadata().context("the member has no group metadata")?;
        let assigned = member.0.assignment()?;
        Some((member, metadata, assigned))
    } else {
        None
    };
    let fence = member.as_ref().map(|(_, metadata, assigned)| (metadata, assigned));
    let share = |parts: &[i32]| rate as f64 * parts.len() as f64 / PARTITIONS as f64;
    let before = cpu_seconds(kafka).context("reading Kafka's CPU time")?;
    let started = Instant::now();
    // The writers' total once they are done; the reader stops when it has read that many, or 10 s later.
    let committed = &AtomicU64::new(u64::MAX);
    let (records, transactions, seconds, after) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let read = scope.spawn(move || {
            let mut read = 0u64;
            while read < committed.load(Ordering::Relaxed) && started.elapsed() < period + Duration::from_secs(10) {
                if let Some(Ok(_)) = reader.poll(Duration::from_millis(100)) {
                    read += 1;
                }
            }
            read
        });
        let handles: Vec<_> = producers
            .iter()
            .zip(&writers)
            .map(|(producer, parts)| {
                let per_second = share(parts);
                scope.spawn(move || -> anyhow::Result<(u64, u64)> {
                    let (mut sent, mut transactions) = (0u64, 0u64);
                    while started.elapsed() < period {
                        let due = (started.elapsed().as_secs_f64() * per_second) as u64;
                        if due == sent {
                            std::thread::sleep(Duration::from_micros(200));
                            continue;
                        }
                        producer.begin_transaction()?;
                        for n in sent..due {
                            let partition = parts[n as usize % parts.len()];
                            let record =
                                BaseRecord::<str, str>::to(topic).partition(partition).key("k").payload("record");
                            producer.send(record).map_err(|(e, _)| e)?;
                        }
                        // Acknowledged first: the commit's own flush would wait in polls of 100 ms.
                        while producer.in_flight_count() > 0 {
                            producer.poll(Duration::from_millis(1));
                        }
                        if let Some((metadata, assigned)) = fence {
                            let mut offsets = TopicPartitionList::new();
                            for e in assigned.elements() {
                                offsets.add_partition_offset(e.topic(), e.partition(), Offset::Offset(due as i64))?;
                            }
                            producer.send_offsets_to_transaction(&offsets, metadata, Duration::from_secs(10))?;
                        }
                        producer.commit_transaction(Duration::from_secs(10))?;
                        sent = due;
                        transactions += 1;
                    }
                    Ok((sent, transactions))
                })
            })
            .collect();
        let mut total = (0, 0);
        for h in handles {
            let (sent, transactions) = h.join().map_err(|_| anyhow::anyhow!("a writer panicked"))??;
            total = (total.0 + sent, total.1 + transactions);
        }
        // Measured while writing: the reader's last records are read on an idle broker.
        let (seconds, after) = (started.elapsed().as_secs_f64(), cpu_seconds(kafka));
        committed.store(total.0, Ordering::Relaxed);
        let read = read.join().map_err(|_| anyhow::anyhow!("the reader panicked"))?;
        ensure!(read == total.0, "{} records committed, {read} read", total.0);
        Ok((total.0, total.1, seconds, after))
    })?;
    let kafka_cpu_seconds = after.context("reading Kafka's CPU time")? - before;
    Ok(TransactionCost { records, transactions, kafka_cpu_seconds, seconds })
}

/// A member of a consumer group that leaves the group when dropped, and is then left to the end of the
/// process: librdkafka 2.12.1's `rd_kafka_destroy` of this member (after transactions committed its
/// offsets) never returned here, its broker thread waiting forever, as in librdkafka issue #4674.
struct GroupMember(std::mem::ManuallyDrop<rdkafka::consumer::BaseConsumer>);

impl Drop for GroupMember {
    fn drop(&mut self) {
        let member = &self.0;
        if member.close_queue().is_ok() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !member.closed() && Instant::now() < deadline {
                member.poll(Duration::from_millis(100));
            }
        }
    }
}

/// Partitions of the Kafka floor's topic, and of `kafka-transactions`' topics.
const PARTITIONS: i32 = 8;

/// Partitions of the platform's events topic by default: one per delivery worker. On this 2-core box a
/// chat service owning 8 spent most of Kafka's CPU on transactions of about one record each (1:1 at
/// 1,000/s: 1.4 records a transaction, p99 53 ms; with 2 partitions 2.7 and 25 to 47 ms).
const PLATFORM_PARTITIONS: i32 = 2;

/// Produce (idempotent, acks=all, linger 1 ms: the chat service's settings) → consume latency on the same
/// broker, at `rate` records a second for `period`.
async fn kafka_floor(rate: u64, period: Duration) -> anyhow::Result<Percentiles> {
    let topic = format!("bench.floor.{}", run_id());
    tests::platform::create_topic(&topic, PARTITIONS).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", format!("{topic}.reader"))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    consumer.subscribe(&[&topic])?;
    // Until the consumer reads every partition, nothing is timed: one warm record in each, all received.
    // (It starts reading a partition only once its start offset is known; one warm record proved a single
    // partition, and records sent meanwhile to the others waited, up to 300 ms: measured.)
    for partition in 0..PARTITIONS {
        let warm = FutureRecord::to(&topic).partition(partition).key("warm").payload("warm");
        producer.send(warm, Duration::from_secs(10)).await.map_err(|(e, _)| e)?;
    }
    let mut warmed = std::collections::HashSet::new();
    while warmed.len() < PARTITIONS as usize {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .with_context(|| format!("the floor's consumer got {} of its warm records", warmed.len()))??;
        warmed.insert(m.partition());
    }
    let expected = (rate as f64 * period.as_secs_f64()) as u64;
    let reader = async {
        let mut h = load::histogram();
        let deadline = tokio::time::Instant::now() + period + Duration::from_secs(10);
        while h.len() < expected {
            let Ok(Ok(m)) = tokio::time::timeout_at(deadline, consumer.recv()).await else { break };
            if let Some(t) = m.payload().and_then(|p| std::str::from_utf8(p).ok()).and_then(|s| s.parse::<u64>().ok()) {
                let _ = h.record((load::epoch().elapsed().as_micros() as u64).saturating_sub(t).max(1));
            }
        }
        h
    };
    let writer = async {
        let start = Instant::now();
        let mut sent = 0u64;
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        while start.elapsed() < period {
            tick.tick().await;
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                let payload = (load::epoch().elapsed().as_micros() as u64).to_string();
                let key = format!("k{}", sent % 512);
                let p = producer.clone();
                let topic = topic.clone();
                pending.push(async move {
                    let record = FutureRecord::to(&topic).key(&key).payload(&payload);
                    p.send(record, Duration::from_secs(10)).await.is_ok()
                });
                sent += 1;
            }
            while let Some(Some(_)) = futures::FutureExt::now_or_never(pending.next()) {}
        }
        while pending.next().await.is_some() {}
    };
    let (h, ()) = tokio::join!(reader, writer);
    drop(consumer);
    tests::platform::delete_topics(&[&topic]).await?;
    Ok(Percentiles::of(&h))
}

// ---------------------------------------------------------------------------------------------------------
// Scenario 5: reconnect storm.

#[derive(Debug, Serialize, Deserialize)]
struct Storm {
    clients: usize,
    missed_each: usize,
    expected: u64,
    /// Distinct (conversation, number) per client: what counts as caught up.
    received: u64,
    /// `message` frames, repeats included (delivery is at least once).
    frames: u64,
    seconds_to_catch_up: f64,
    target_seconds: f64,
    #[serde(flatten)]
    cost: Cost,
}

async fn storm(cluster: &Cluster, size: &Size) -> anyhow::Result<Storm> {
    let mut grpc = chat(cluster).await?;
    let id = run_id();
    let mut convs = Vec::new();
    let mut users = Vec::new();
    for g in 0..size.storm_groups {
        let sender = format!("st{id}g{g}s");
        let members: Vec<String> = (0..size.storm_members).map(|m| format!("st{id}g{g}m{m}")).collect();
        convs.push((sender.clone(), create(&mut grpc, &sender, members.clone()).await?));
        users.extend(members);
    }
    let gw = cluster.gateway_ws[0];
    let sources = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
    // Each client connects once (its device becomes known) and goes away.
    let first = Arc::new(Recorder::default());
    let conns = load::connect_many(gw, &sources, &users, 200, first.clone()).await;
    ensure!(conns.iter().all(Option::is_some), "a client did not connect");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for c in conns.iter().flatten() {
        c.close();
    }
    let closing = Instant::now();
    while first.closed.load(Ordering::Relaxed) < users.len() as u64 && closing.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(conns);
    // The messages they miss, sent through the chat service, then delivered into their inboxes.
    for k in 0..size.storm_missed {
        let sends = convs.iter().map(|(sender, conv)| {
            let mut grpc = grpc.clone();
            async move {
                grpc.send_message(v1::SendMessageRequest {
                    conversation_id: conv.clone(),
                    sender_id: sender.clone(),
                    sender_device_id: "service".into(),
                    client_msg_id: format!("storm-{k}"),
                    body: format!("missed {k}"),
                })
                .await
            }
        });
        for r in futures::future::join_all(sends).await {
            r?;
        }
    }
    let waiting = Instant::now();
    while tests::group::lag(&cluster.worker_group(), &cluster.topic)? > 0 {
        ensure!(waiting.elapsed() < Duration::from_secs(300), "the workers did not deliver the missed messages");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // All at once.
    let expected = (users.len() * size.storm_missed) as u64;
    let again = Arc::new(Recorder::default());
    let cpu = CpuMeter::start(cluster);
    let start = Instant::now();
    let conns = load::connect_many(gw, &sources, &users, 1_000, again.clone()).await;
    ensure!(conns.iter().all(Option::is_some), "a client did not reconnect");
    while again.messages.load(Ordering::Relaxed) < expected && start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu.stop();
    let received = again.messages.load(Ordering::Relaxed);
    let frames = again.frames.load(Ordering::Relaxed);
    for c in conns.iter().flatten() {
        c.close();
    }
    println!(
        "[bench] reconnect storm: {} clients caught up on {received} of {expected} messages in {seconds:.2} s \
         ({frames} message frames)",
        users.len()
    );
    Ok(Storm {
        clients: users.len(),
        missed_each: size.storm_missed,
        expected,
        received,
        frames,
        seconds_to_catch_up: seconds,
        target_seconds: 10.0,
        cost: Cost::new(cpu, received),
    })
}

// ---------------------------------------------------------------------------------------------------------
// Scenario 6: the peer. Centrifugo under the idle, 1:1 and group loads above, at the same counts and rates.

#[derive(Debug, Serialize, Deserialize)]
struct Peer {
    name: String,
    version: String,
    history: bool,
    idle_connections: usize,
    idle_connected: usize,
    idle_kib_per_connection: f64,
    latency: Vec<Latency>,
    /// 1:1 again, published by a backend through its HTTP API rather than by the members' connections.
    api: Vec<Latency>,
    groups: Vec<Latency>,
}

/// Connections an [`ApiPublisher`] keeps to Centrifugo.
const API_LANES: usize = 32;

async fn peer(size: &Size, history: bool, dir: &std::path::Path) -> anyhow::Result<Peer> {
    let c = Centrifugo::start(history, dir).await?;
    let pid = c.pid().context("centrifugo pid")?;
    let label = if history { "with history" } else { "without history" };
    let run = async {
        let (idle_connected, kib) = peer_idle(&c, pid, size.idle).await?;
        println!("[bench] centrifugo {label}: {idle_connected} idle connections, {kib} KiB resident more");
        let latency = peer_latency(&c, pid, size, 2, size.pairs, &size.rates, Publish::Client).await?;
        let api = peer_latency(&c, pid, size, 2, size.pairs, &size.rates, Publish::Api).await?;
        let groups =
            peer_latency(&c, pid, size, size.group_members, size.groups, &size.group_rates, Publish::Client).await?;
        anyhow::Ok(Peer {
            name: "Centrifugo".into(),
            version: tests::centrifugo::VERSION.into(),
            history,
            idle_connections: size.idle,
            idle_connected,
            idle_kib_per_connection: kib as f64 / idle_connected.max(1) as f64,
            latency,
            api,
            groups,
        })
    };
    let outcome = run.await;
    c.stop().await?;
    outcome
}

/// Holds `n` connections, each subscribed to its user's own channel, and answers how many connected and
/// the growth of Centrifugo's resident memory once they settled.
async fn peer_idle(c: &Centrifugo, pid: u32, n: usize) -> anyhow::Result<(usize, u64)> {
    let id = run_id();
    let users: Vec<(String, Vec<String>)> = (0..n)
        .map(|i| {
            let u = format!("cfidle{id}u{i}");
            let own = format!("direct:#{u}");
            (u, vec![own])
        })
        .collect();
    let recorder = Arc::new(Recorder::default());
    let open = tests::centrifugo::connect_many(c.addr, &users, 200, recorder);
    resident_growth(pid, Duration::from_secs(6), open, PeerConn::close).await
}

/// Who publishes to Centrifugo.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Publish {
    /// Each conversation's first member, on its connection (the client protocol's `publish`).
    Client,
    /// A backend, through the HTTP API, in the name of each conversation's first member.
    Api,
}

/// As [`latency`]: `conversations` channels of `members` users, the first of each publishing.
async fn peer_latency(
    c: &Centrifugo,
    pid: u32,
    size: &Size,
    members: usize,
    conversations: usize,
    rates: &[u64],
    publish: Publish,
) -> anyhow::Result<Vec<Latency>> {
    let id = run_id();
    let mut users: Vec<(String, Vec<String>)> = Vec::new();
    let mut channels = Vec::new();
    for conv in 0..conversations {
        let group: Vec<String> = (0..members).map(|m| format!("cf{id}c{conv}m{m}")).collect();
        let channel = if members == 2 {
            tests::centrifugo::direct_channel(&group[0], &group[1])
        } else {
            format!("group:{id}c{conv}")
        };
        users.extend(group.into_iter().map(|u| (u, vec![channel.clone()])));
        channels.push(channel);
    }
    let recorder = Arc::new(Recorder::default());
    let conns = tests::centrifugo::connect_many(c.addr, &users, 100, recorder.clone()).await;
    let conns: Vec<PeerConn> = conns.into_iter().collect::<Option<Vec<_>>>().context("a client did not connect")?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let first: Vec<&PeerConn> = conns.iter().step_by(members).collect();
    let meter =
        || CpuMeter::of(vec![("centrifugo".to_owned(), pid), ("load-generator".to_owned(), std::process::id())]);
    let fleet = Fleet { recorder: &recorder, members, kafka_floor: false, meter: &meter, chat_metrics: &[] };
    let out = match publish {
        Publish::Client => {
            let senders: Vec<(&PeerConn, &str)> = first.into_iter().zip(channels.iter().map(String::as_str)).collect();
            at_rates(&fleet, &senders, size, rates, Duration::ZERO).await
        }
        Publish::Api => {
            let names = channels.iter().cloned().zip(first.iter().map(|c| c.user.clone())).collect();
            let publisher = ApiPublisher::connect(c.addr, API_LANES, names, recorder.clone()).await?;
            let senders: Vec<(&ApiPublisher, &str)> = channels.iter().map(|ch| (&publisher, ch.as_str())).collect();
            at_rates(&fleet, &senders, size, rates, Duration::ZERO).await
        }
    };
    for conn in &conns {
        conn.close();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    out
}

// ---------------------------------------------------------------------------------------------------------
// The summary.

impl Report {
    fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = format!(
            "# Benchmarks{}\n\nMachine: {} CPUs ({}), {:.1} GiB, Linux {}. Run took {:.0} s. Platform: {} chat \
             service, {} delivery workers, {} partitions of the events topic.\n\n",
            if self.smoke { " (smoke run: sizes far below the targets')" } else { "" },
            m.cpus,
            m.cpu_model,
            m.memory_gib,
            m.kernel,
            self.seconds,
            self.layout.chat_services,
            self.layout.workers,
            self.layout.partitions
        );
        s.push_str("| scenario | figure | ours | floor | ratio | target | met |\n|---|---|---|---|---|---|---|\n");
        if let Some(i) = &self.idle {
            s.push_str(&format!(
                "| 1 idle connections ({} held; floor {}) | resident KiB per connection | {:.1} | {:.1} (bare tokio-tungstenite, same buffers) | {:.2} | ≤ {:.1}× | {} |\n",
                i.gateway_connected,
                i.floor_connected,
                i.gateway_kib_per_connection,
                i.floor_kib_per_connection,
                i.ratio,
                i.target_ratio,
                yes(i.ratio <= i.target_ratio)
            ));
        }
        if let Some(sc) = &self.scale {
            s.push_str(&format!(
                "| 2 scale-out ({} of {} connections held by {} gateways, {:.0} MiB resident in all) | sampled connections that got a message; seconds until all arrived | {} of {}; {:.2} s | | | ≥ 50,000 connections, all arrive | {} |\n",
                sc.connected,
                sc.connections,
                sc.gateways,
                sc.gateways_rss_mib,
                sc.received,
                sc.sampled,
                sc.seconds_to_arrive,
                yes(sc.connected >= 50_000 && sc.received >= sc.sampled as u64)
            ));
        }
        for l in &self.latency {
            s.push_str(&format!(
                "| 3 latency, 1:1, {}/s ({} sent, {} received{}) | p50 / p99 / p99.9 send→ack, ms | {:.1} / {:.1} / {:.1} | | | | |\n",
                l.rate, l.sent, l.received, if l.kept_up { "" } else { "; not kept up with" }, l.ack.p50_ms, l.ack.p99_ms, l.ack.p999_ms
            ));
            let under_50 =
                if l.rate == 1_000 { format!(" and < 50 ms: {}", yes(l.receive.p99_ms < 50.0)) } else { String::new() };
            s.push_str(&format!(
                "| 3 latency, 1:1, {}/s | p50 / p99 / p99.9 send→receive, ms | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} (Kafka produce→consume) | {:.2} (p99) | p99 ≤ 3× floor{} | {} |\n",
                l.rate,
                l.receive.p50_ms,
                l.receive.p99_ms,
                l.receive.p999_ms,
                l.floor.p50_ms,
                l.floor.p99_ms,
                l.floor.p999_ms,
                l.ratio_p99,
                under_50,
                yes(l.kept_up && l.ratio_p99 <= 3.0 && (l.rate != 1_000 || l.receive.p99_ms < 50.0))
            ));
        }
        for g in &self.groups {
            s.push_str(&format!(
                "| 4 groups of {}, {} messages/s ({} deliveries/s offered; {} delivered{}) | p50 / p99 send→receive, ms | {:.1} / {:.1} | {:.1} / {:.1} (Kafka) | {:.2} (p99) | | |\n",
                g.members,
                g.rate,
                g.rate * (g.members as u64 - 1),
                g.received,
                if g.kept_up { "" } else { "; not kept up with" },
                g.receive.p50_ms,
                g.receive.p99_ms,
                g.floor.p50_ms,
                g.floor.p99_ms,
                g.ratio_p99
            ));
        }
        if !self.latency.is_empty() {
            let best = held(&self.latency);
            s.push_str(&format!(
                "| 4 throughput, 1:1 | persisted messages/s held with p99 send→receive < 100 ms, every lower rate too (highest rate tried: {}) | {best} | | | ≥ 5,000 | {} |\n",
                self.latency.last().map(|l| l.rate).unwrap_or(0),
                yes(best >= 5_000)
            ));
        }
        if !self.groups.is_empty() {
            let best = held(&self.groups);
            s.push_str(&format!(
                "| 4 throughput, groups of {} | deliveries/s held with p99 send→receive < 100 ms, every lower rate too | {best} | | | ≥ 25,000 | {} |\n",
                self.groups[0].members,
                yes(best >= 25_000)
            ));
        }
        if let Some(st) = &self.storm {
            s.push_str(&format!(
                "| 5 reconnect storm ({} clients, {} missed each) | seconds until all caught up ({} of {} messages) | {:.2} | | | ≤ {:.0} s | {} |\n",
                st.clients,
                st.missed_each,
                st.received,
                st.expected,
                st.seconds_to_catch_up,
                st.target_seconds,
                yes(st.received >= st.expected && st.seconds_to_catch_up <= st.target_seconds)
            ));
        }
        s.push_str(&self.peer_markdown());
        s.push_str(
            "\n## CPU-seconds per delivered message (one delivery: one message to one recipient), by process kind\n\n",
        );
        s.push_str(&self.cost_table(|c| &c.cpu_seconds_per_message, |v| format!("{:.1} µs", v * 1e6)));
        let switches = |c: &Cost| !c.context_switches_per_message.is_empty();
        if self.latency.iter().any(|l| switches(&l.cost)) || self.groups.iter().any(|g| switches(&g.cost)) {
            s.push_str(
                "\n## Context switches per delivered message, by process kind (every thread's, voluntary or \
                 not)\n\n",
            );
            s.push_str(&self.cost_table(|c| &c.context_switches_per_message, |v| format!("{v:.2}")));
        }
        s
    }

    /// One row per scenario and rate, one column per process kind: what `figure` picks from its cost, as
    /// `cell` writes it (empty where it was not measured).
    fn cost_table(&self, figure: impl Fn(&Cost) -> &HashMap<String, f64>, cell: impl Fn(f64) -> String) -> String {
        let mut rows: Vec<(String, &Cost)> =
            self.latency.iter().map(|l| (format!("1:1, {}/s", l.rate), &l.cost)).collect();
        rows.extend(self.groups.iter().map(|g| (format!("groups of {}, {} messages/s", g.members, g.rate), &g.cost)));
        if let Some(st) = &self.storm {
            rows.push(("reconnect storm".into(), &st.cost));
        }
        if let Some(sc) = &self.scale {
            rows.push(("scale-out sample".into(), &sc.cost));
        }
        let kinds = ["gateway", "chat-service", "worker", "kafka", "cassandra", "redis", "load-generator"];
        let mut s = format!("| scenario | {} |\n|---|{}\n", kinds.join(" | "), "---|".repeat(kinds.len()));
        for (name, cost) in rows {
            let per = figure(cost);
            let cells: Vec<String> = kinds.iter().map(|k| per.get(*k).map(|v| cell(*v)).unwrap_or_default()).collect();
            s.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
        }
        s
    }
}

impl Report {
    /// The table beside Centrifugo: each figure of ours, Centrifugo's without and with history, and our
    /// ratio to Centrifugo with history (its closest to our persistence).
    fn peer_markdown(&self) -> String {
        let (Some(plain), Some(kept)) = (self.peers.iter().find(|p| !p.history), self.peers.iter().find(|p| p.history))
        else {
            return String::new();
        };
        let mut s = format!(
            "\n## Beside {} {} (same machine, same run, same counts and rates)\n\nWe persist every message \
             before acknowledging it; Centrifugo without history persists nothing, with history it keeps each \
             channel's last 1,000 messages in memory for recovery. Ratio: ours ÷ Centrifugo with history; below 1 \
             is ahead for memory, latency and CPU, above 1 for rates held.\n\n\
             | figure | ours | Centrifugo, no history | Centrifugo, history | ratio |\n|---|---|---|---|---|\n",
            kept.name, kept.version
        );
        let ratio = |ours: f64, theirs: f64| if theirs > 0.0 { format!("{:.2}", ours / theirs) } else { "–".into() };
        if let Some(i) = &self.idle {
            s.push_str(&format!(
                "| resident KiB per idle connection ({} connections) | {:.1} | {:.1} | {:.1} | {} |\n",
                i.connections,
                i.gateway_kib_per_connection,
                plain.idle_kib_per_connection,
                kept.idle_kib_per_connection,
                ratio(i.gateway_kib_per_connection, kept.idle_kib_per_connection)
            ));
        }
        for (what, ours, a, b) in [
            ("1:1", &self.latency, &plain.latency, &kept.latency),
            ("1:1, Centrifugo's publishes through its HTTP API", &self.latency, &plain.api, &kept.api),
            ("groups", &self.groups, &plain.groups, &kept.groups),
        ] {
            let at = |runs: &[Latency], rate: u64| {
                runs.iter()
                    .find(|l| l.rate == rate)
                    .map(|l| format!("{:.1} / {:.1}", l.receive.p50_ms, l.receive.p99_ms))
            };
            let p99 = |runs: &[Latency], rate: u64| runs.iter().find(|l| l.rate == rate).map(|l| l.receive.p99_ms);
            let mut rates: Vec<u64> = ours.iter().chain(a).chain(b).map(|l| l.rate).collect();
            rates.sort_unstable();
            rates.dedup();
            let members = ours.iter().chain(a).map(|l| l.members).next().unwrap_or(2);
            for rate in rates {
                let cell = |runs: &[Latency]| at(runs, rate).unwrap_or_else(|| "not run".into());
                s.push_str(&format!(
                    "| {what}, {rate} messages/s ({} deliveries/s): p50 / p99 send→receive, ms | {} | {} | {} | {} |\n",
                    rate * (members as u64 - 1),
                    cell(ours),
                    cell(a),
                    cell(b),
                    match (p99(ours, rate), p99(b, rate)) {
                        (Some(o), Some(t)) => ratio(o, t),
                        _ => "–".into(),
                    }
                ));
            }
            let (o, x, y) = (held(ours), held(a), held(b));
            s.push_str(&format!(
                "| {what}: deliveries/s held with p99 send→receive < 100 ms, every lower rate too | {o} | {x} | {y} | {} |\n",
                ratio(o as f64, y as f64)
            ));
        }
        // CPU per delivery (fan-out per core is its inverse): 1:1 at 1,000 messages/s, and groups at 100
        // messages/s, where neither side is near its limit. Every process of ours (servers included), and
        // for groups also our gateway alone, the part that does what Centrifugo does there (the fan-out to
        // the connections), against Centrifugo's process.
        let cpu = |runs: &[Latency], rate: u64, kinds: &[&str]| {
            runs.iter().find(|l| l.rate == rate).map(|l| {
                l.cost
                    .cpu_seconds_per_message
                    .iter()
                    .filter(|(k, _)| kinds.contains(&k.as_str()))
                    .map(|(_, v)| v)
                    .sum::<f64>()
            })
        };
        let everything = ["gateway", "chat-service", "worker", "kafka", "cassandra", "redis"];
        for (what, ours, a, b, rate, kinds) in [
            (
                "1:1 at 1,000/s (ours: services, Kafka, Cassandra, Redis)",
                &self.latency,
                &plain.latency,
                &kept.latency,
                1_000,
                &everything[..],
            ),
            (
                "groups of 100 at 100 messages/s (ours: services, Kafka, Cassandra, Redis)",
                &self.groups,
                &plain.groups,
                &kept.groups,
                100,
                &everything[..],
            ),
            (
                "groups of 100 at 100 messages/s (ours: the gateways alone)",
                &self.groups,
                &plain.groups,
                &kept.groups,
                100,
                &["gateway"][..],
            ),
        ] {
            if let (Some(o), Some(x), Some(y)) =
                (cpu(ours, rate, kinds), cpu(a, rate, &["centrifugo"]), cpu(b, rate, &["centrifugo"]))
            {
                // Whole microseconds from 100 up.
                let us =
                    |v: f64| if v >= 100e-6 { format!("{:.0} µs", v * 1e6) } else { format!("{:.1} µs", v * 1e6) };
                s.push_str(&format!(
                    "| CPU per delivery, {what} | {} | {} | {} | {} |\n",
                    us(o),
                    us(x),
                    us(y),
                    ratio(o, y)
                ));
            }
        }
        s
    }
}

/// The highest rate of `runs` held with every message through and p99 send→receive under 100 ms, every
/// lower rate tried held as well (a rate held above one missed says more of the noise than of a ceiling),
/// in deliveries a second (0 if none).
fn held(runs: &[Latency]) -> u64 {
    let mut runs: Vec<&Latency> = runs.iter().collect();
    runs.sort_by_key(|l| l.rate);
    runs.iter()
        .take_while(|l| l.kept_up && l.receive.p99_ms < 100.0)
        .map(|l| l.rate * (l.members as u64 - 1))
        .max()
        .unwrap_or(0)
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "**no**" }
}

// Named apart from the `tests` crate, which the code above names by path.
#[cfg(test)]
mod summary_tests {
    use super::*;

    fn run(rate: u64, p99_ms: f64) -> Latency {
        Latency {
            members: 2,
            rate,
            kept_up: true,
            errors: 0,
            sent: 0,
            received: 0,
            ack: Percentiles::default(),
            receive: Percentiles { p99_ms, ..Percentiles::default() },
            floor: Percentiles::default(),
            ratio_p99: 0.0,
            events_per_transaction: 0.0,
            cost: Cost::default(),
        }
    }

    #[test]
    fn a_rate_counts_as_held_only_with_every_lower_rate_held() {
        assert_eq!(held(&[run(1000, 40.0), run(2000, 90.0), run(3000, 300.0)]), 2000);
        assert_eq!(held(&[run(3000, 80.0), run(1000, 40.0), run(2000, 140.0)]), 1000, "3,000 after a miss");
        assert_eq!(held(&[run(1000, 120.0), run(2000, 60.0)]), 0);
        let mut lost = run(1000, 10.0);
        lost.kept_up = false;
        assert_eq!(held(&[lost, run(2000, 10.0)]), 0, "messages not all through");
        let mut group = run(100, 20.0);
        group.members = 100;
        assert_eq!(held(&[group]), 9900, "in deliveries a second");
    }

    #[test]
    fn the_meter_counts_the_context_switches_of_every_thread_and_splits_them_per_message() {
        let me = std::process::id();
        let meter = CpuMeter::of(vec![("load-generator".to_owned(), me)]);
        // Each sleep gives the core up once: on a thread of its own, which the main thread's count misses.
        std::thread::spawn(|| (0..50).for_each(|_| std::thread::sleep(Duration::from_millis(1))));
        let busy = std::thread::spawn(|| {
            (0..50).for_each(|_| std::thread::sleep(Duration::from_millis(1)));
            std::thread::sleep(Duration::from_secs(1));
        });
        std::thread::sleep(Duration::from_millis(300));
        let cost = Cost::new(meter.stop(), 10);
        let switches = cost.context_switches_per_message["load-generator"];
        // The first thread has most likely ended (its switches are then not counted); the second, still
        // there, slept 50 times.
        assert!(switches >= 5.0, "{switches} switches per message, from at least 50 over 10 messages");
        assert!(cost.cpu_seconds_per_message.contains_key("load-generator"), "the CPU is measured beside them");
        busy.join().expect("the sleeping thread");
        assert!(context_switches(u32::MAX).is_none(), "no such process");
    }
}
