//! [`Cluster`]: the platform's services as separate processes (the binaries in `target/debug`), which a
//! test can kill with SIGKILL, stop gracefully and restart; and the real servers, which it can stop and
//! start through `infra/local/servers.sh`.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::platform::{JWT_SECRET, KEYSPACE, cassandra_node, kafka_brokers, migrate_once, redis_url};

/// The kinds of process a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    ChatService,
    Gateway,
    Worker,
}

impl Kind {
    /// The prefix of this kind's failpoint names (see `lifecycle::failpoints`).
    fn failpoint_prefix(self) -> &'static str {
        match self {
            Kind::ChatService => "chat-",
            Kind::Gateway => "gateway-",
            Kind::Worker => "worker-",
        }
    }

    fn binary(self) -> &'static str {
        match self {
            Kind::ChatService => "chat-service",
            Kind::Gateway => "gateway",
            Kind::Worker => "delivery-worker",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub chat_services: usize,
    pub gateways: usize,
    pub workers: usize,
    pub partitions: i32,
    /// Frames a gateway queues per connection before closing it as too slow.
    pub send_queue: usize,
    /// How long a gateway's write may wait for a client that does not read.
    pub write_timeout_ms: u64,
    /// The workers' push deadline.
    pub push_timeout_ms: u64,
    /// The gateways' limit on open files (soft and hard), when not inherited.
    pub gateway_open_files: Option<u64>,
    /// Where the service binaries are (default: the debug build of this workspace).
    pub bin_dir: Option<PathBuf>,
    /// Runs chat-service replica i with the group id `base + i`, so that [`Cluster::cut_off_kafka`] can
    /// drop its packets to Kafka by iptables' owner match (needs root).
    pub chat_gid_base: Option<u32>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            chat_services: 2,
            gateways: 2,
            workers: 2,
            partitions: 8,
            send_queue: 256,
            write_timeout_ms: 10_000,
            push_timeout_ms: 1_000,
            gateway_open_files: None,
            bin_dir: None,
            chat_gid_base: None,
        }
    }
}

/// One service process: how to start it again, and the running child if any.
struct Proc {
    kind: Kind,
    env: Vec<(String, String)>,
    /// The port to wait for after a start (none for workers).
    port: Option<u16>,
    log: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub id: String,
    pub topic: String,
    pub redis_prefix: String,
    /// WebSocket addresses of the gateways, by index.
    pub gateway_ws: Vec<SocketAddr>,
    /// gRPC addresses of the chat services, by index.
    pub chat_addrs: Vec<SocketAddr>,
    /// Where each chat service serves its counters (`GET /metrics`), by index.
    pub chat_metrics: Vec<SocketAddr>,
    procs: HashMap<(Kind, usize), Proc>,
    options: ClusterOptions,
}

/// Next candidate for [`free_port`]; starts at a place that depends on the process, so that test binaries
/// running one after the other do not walk the same ports.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// Ports handed to child processes come from here: below the kernel's ephemeral range (32768 and up by
/// default), so that no outgoing connection can take one between our check and the child's bind.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port on loopback that is free now (checked by binding it), for a child process to bind.
pub fn free_port() -> anyhow::Result<u16> {
    let span = PORTS.end - PORTS.start;
    let _ = NEXT_PORT.compare_exchange(
        0,
        (std::process::id() % u32::from(span)) as u16 + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let port = PORTS.start + n % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in {PORTS:?}")
}

fn bin_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    target.join("debug")
}

fn log_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(".local").join("logs").join("faults")
}

async fn wait_port(port: u16, child: &mut Child, log: &Path) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("process exited ({status}) before listening on {port}; log: {}", log.display());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("nothing listened on {port} within 60 s; log: {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Cluster {
    pub async fn start(options: ClusterOptions) -> anyhow::Result<Cluster> {
        crate::prove::check_names()?;
        migrate_once().await?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let topic = format!("faults.{id}.events");
        crate::platform::create_topic(&topic, options.partitions).await?;
        let redis_prefix = format!("faults:{id}:");
        std::fs::create_dir_all(log_dir())?;
        for b in [Kind::ChatService, Kind::Gateway, Kind::Worker] {
            let path = options.bin_dir.clone().unwrap_or_else(bin_dir).join(b.binary());
            if !path.exists() {
                bail!(
                    "{} is missing: build the binaries first (`cargo build --bins`; `make test` does)",
                    path.display()
                );
            }
        }

        let mut procs = HashMap::new();
        let mut chat_addrs = Vec::new();
        let mut chat_metrics = Vec::new();
        for i in 0..options.chat_services {
            let port = free_port()?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            chat_addrs.push(addr);
            let metrics: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
            chat_metrics.push(metrics);
            let env = vec![
                ("CHAT_GRPC_ADDR".into(), addr.to_string()),
                ("CHAT_METRICS_ADDR".into(), metrics.to_string()),
                ("CHAT_KAFKA_BROKERS".into(), kafka_brokers()),
                ("CHAT_EVENTS_TOPIC".into(), topic.clone()),
                ("CHAT_CASSANDRA_NODES".into(), cassandra_node()),
                ("CHAT_CASSANDRA_KEYSPACE".into(), KEYSPACE.into()),
                ("CHAT_OWNER_GROUP_ID".into(), owner_group(&id)),
                ("CHAT_PROJECTOR_GROUP_ID".into(), format!("faults.{id}.workers")),
            ];
            procs.insert((Kind::ChatService, i), Proc::new(Kind::ChatService, i, &id, env, Some(port)));
        }
        let urls: Vec<String> = chat_addrs.iter().map(|a| format!("http://{a}")).collect();
        let mut gateway_ws = Vec::new();
        for i in 0..options.gateways {
            let (ws, grpc) = (free_port()?, free_port()?);
            gateway_ws.push(([127, 0, 0, 1], ws).into());
            let env = vec![
                ("GATEWAY_WS_ADDR".into(), format!("127.0.0.1:{ws}")),
                ("GATEWAY_GRPC_ADDR".into(), format!("127.0.0.1:{grpc}")),
                ("GATEWAY_CHAT_SERVICE_URLS".into(), urls.join(",")),
                ("GATEWAY_REDIS_URL".into(), redis_url()),
                ("GATEWAY_REDIS_PREFIX".into(), redis_prefix.clone()),
                ("GATEWAY_JWT_SECRET".into(), JWT_SECRET.into()),
                ("GATEWAY_SEND_QUEUE".into(), options.send_queue.to_string()),
                ("GATEWAY_RPC_TIMEOUT_MS".into(), "5000".into()),
                ("GATEWAY_WRITE_TIMEOUT_MS".into(), options.write_timeout_ms.to_string()),
                // The scenarios' clients send as fast as they are answered, and 1,000 share one address.
                ("GATEWAY_RATE_PER_CONNECTION".into(), "10000".into()),
                ("GATEWAY_BURST_PER_CONNECTION".into(), "20000".into()),
                ("GATEWAY_RATE_PER_USER".into(), "10000".into()),
                ("GATEWAY_BURST_PER_USER".into(), "20000".into()),
                ("GATEWAY_MAX_CONNECTIONS_PER_ADDRESS".into(), "100000".into()),
            ];
            procs.insert((Kind::Gateway, i), Proc::new(Kind::Gateway, i, &id, env, Some(ws)));
        }
        for i in 0..options.workers {
            procs.insert(
                (Kind::Worker, i),
                Proc::new(Kind::Worker, i, &id, worker_env(&topic, &id, &redis_prefix, &options), None),
            );
        }
        let mut cluster = Cluster { id, topic, redis_prefix, gateway_ws, chat_addrs, chat_metrics, procs, options };
        for kind in [Kind::ChatService, Kind::Gateway, Kind::Worker] {
            for i in 0..cluster.count(kind) {
                cluster.start_proc(kind, i).await?;
            }
        }
        cluster.wait_owners_settled().await?;
        Ok(cluster)
    }

    /// Waits until every partition has exactly one owner among the running replicas, and each owner has
    /// recorded itself in the store (where the others forward to): before that, writes of a partition that
    /// is moving are answered `unavailable`, which a scenario would count as part of its fault.
    pub async fn wait_owners_settled(&self) -> anyhow::Result<()> {
        let group = self.owner_group();
        let replicas = self.chat_addrs.len();
        crate::group::wait_settled(&group, &self.topic, replicas, self.options.partitions).await?;
        let store = crate::platform::store().await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (g, t) = (group.clone(), self.topic.clone());
            let assigned = tokio::task::spawn_blocking(move || crate::group::assignments(&g, &t)).await??;
            let mut agreed = true;
            for (client, partitions) in &assigned {
                let addr = client.strip_prefix("chat-service-").unwrap_or(client);
                for p in partitions {
                    agreed &= store.partition_owner(&self.topic, *p).await?.as_deref() == Some(addr);
                }
            }
            if agreed {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the partitions' owners did not record themselves within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The partitions chat-service replica `i` holds in the owners' group, as the group coordinator sees it.
    pub async fn owner_partitions(&self, i: usize) -> anyhow::Result<Vec<i32>> {
        let client = format!("chat-service-{}", self.chat_addrs.get(i).context("no such replica")?);
        let (g, t) = (self.owner_group(), self.topic.clone());
        let mut held = tokio::task::spawn_blocking(move || crate::group::assignments(&g, &t)).await??;
        Ok(held.remove(&client).unwrap_or_default())
    }

    /// The chat-service replicas' owners group (`CHAT_OWNER_GROUP_ID`).
    pub fn owner_group(&self) -> String {
        owner_group(&self.id)
    }

    /// The delivery workers' consumer group.
    pub fn worker_group(&self) -> String {
        format!("faults.{}.workers", self.id)
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.procs.keys().filter(|(k, _)| *k == kind).count()
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// Starts (or restarts) one process and waits until it listens.
    pub async fn start_proc(&mut self, kind: Kind, i: usize) -> anyhow::Result<()> {
        let p = self.procs.get_mut(&(kind, i)).with_context(|| format!("no {kind:?} {i}"))?;
        if let Some(c) = p.child.as_mut()
            && c.try_wait()?.is_none()
        {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&p.log)?;
        let binary = self.options.bin_dir.clone().unwrap_or_else(bin_dir).join(p.kind.binary());
        let mut cmd = match self.options.gateway_open_files {
            // prlimit sets the limit and then becomes the service (same process).
            Some(n) if kind == Kind::Gateway => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(&binary);
                c
            }
            _ => Command::new(&binary),
        };
        if let (Kind::ChatService, Some(base)) = (kind, self.options.chat_gid_base) {
            std::os::unix::process::CommandExt::gid(&mut cmd, base + i as u32);
        }
        // The process's failpoints: its own (set by a scenario) or those of `FAULTS_FAILPOINTS` for its kind.
        cmd.env_remove("FAILPOINTS");
        if let Some(failpoints) = crate::prove::failpoints_for(kind.failpoint_prefix()) {
            cmd.env("FAILPOINTS", failpoints);
        }
        cmd.envs(p.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", std::env::var("FAULTS_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = cmd.spawn().with_context(|| format!("starting {kind:?} {i}"))?;
        if let Some(port) = p.port {
            wait_port(port, &mut child, &p.log).await?;
        }
        p.child = Some(child);
        Ok(())
    }

    /// Adds a delivery worker to the group; returns its index.
    pub async fn add_worker(&mut self) -> anyhow::Result<usize> {
        let i = self.count(Kind::Worker);
        let env = worker_env(&self.topic, &self.id, &self.redis_prefix, &self.options);
        self.procs.insert((Kind::Worker, i), Proc::new(Kind::Worker, i, &self.id, env, None));
        self.start_proc(Kind::Worker, i).await?;
        Ok(i)
    }

    /// SIGKILL: the process gets no chance to clean up. Fails if it had already died on its own.
    pub fn kill(&mut self, kind: Kind, i: usize) -> anyhow::Result<()> {
        self.check_running(kind, i)?;
        if let Some(mut c) = self.procs.get_mut(&(kind, i)).and_then(|p| p.child.take()) {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for a graceful exit, which must be a success: a process that had died on its
    /// own, that exits with a failure, or that is still running after 30 s (then SIGKILLed) fails.
    pub async fn stop(&mut self, kind: Kind, i: usize) -> anyhow::Result<()> {
        self.check_running(kind, i)?;
        let Some(p) = self.procs.get_mut(&(kind, i)) else { return Ok(()) };
        let log = p.log.clone();
        let Some(mut c) = p.child.take() else { return Ok(()) };
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while c.try_wait()?.is_none() {
            if tokio::time::Instant::now() > deadline {
                c.kill()?;
                c.wait()?;
                bail!("{kind:?} {i} did not stop within 30 s of SIGTERM; log: {}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = c.wait()?;
        if !status.success() {
            bail!("{kind:?} {i} exited with {status} after SIGTERM; log: {}", log.display());
        }
        Ok(())
    }

    /// Fails if the process was started and has exited since without being told to (a crash).
    pub fn check_running(&mut self, kind: Kind, i: usize) -> anyhow::Result<()> {
        let Some(p) = self.procs.get_mut(&(kind, i)) else { return Ok(()) };
        let Some(c) = p.child.as_mut() else { return Ok(()) };
        if let Some(status) = c.try_wait()? {
            let log = p.log.display().to_string();
            p.child = None;
            bail!("{kind:?} {i} died on its own ({status}); log: {log}");
        }
        Ok(())
    }

    /// Fails if any process that should be running has exited (see [`Self::check_running`]).
    pub fn check_all_running(&mut self) -> anyhow::Result<()> {
        let mut keys: Vec<(Kind, usize)> = self.procs.keys().copied().collect();
        keys.sort_by_key(|(k, i)| (k.binary(), *i));
        for (kind, i) in keys {
            self.check_running(kind, i)?;
        }
        Ok(())
    }

    /// SIGSTOP: the process hangs (its sockets still accept connections, nothing answers) until [`Self::resume`].
    pub fn pause(&self, kind: Kind, i: usize) -> anyhow::Result<()> {
        self.signal(kind, i, "-STOP")
    }

    /// SIGCONT: a paused process goes on.
    pub fn resume(&self, kind: Kind, i: usize) -> anyhow::Result<()> {
        self.signal(kind, i, "-CONT")
    }

    fn signal(&self, kind: Kind, i: usize, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid(kind, i).with_context(|| format!("{kind:?} {i} is not running"))?;
        let status = Command::new("kill").arg(signal).arg(pid.to_string()).status()?;
        if !status.success() {
            bail!("kill {signal} {pid} failed");
        }
        Ok(())
    }

    /// Cuts chat-service replica `i` off from Kafka, and from nothing else (its gateways, Cassandra and Redis
    /// still answer): an iptables rule drops every packet its processes send to a Kafka port, until the
    /// answer is dropped. Needs [`ClusterOptions::chat_gid_base`] and root.
    pub fn cut_off_kafka(&self, i: usize) -> anyhow::Result<KafkaCut> {
        let base = self.options.chat_gid_base.context("the cluster was started without chat_gid_base")?;
        let brokers = kafka_brokers();
        let ports: Vec<&str> = brokers.split(',').filter_map(|b| b.rsplit(':').next()).collect();
        let gid = (base + i as u32).to_string();
        KafkaCut::drop_tcp(&["-m", "owner", "--gid-owner", &gid], &ports.join(","))
    }

    /// Sets (or, with `None`, removes) an environment variable of a process, for its next start.
    pub fn set_env(&mut self, kind: Kind, i: usize, key: &str, value: Option<&str>) {
        if let Some(p) = self.procs.get_mut(&(kind, i)) {
            p.env.retain(|(k, _)| k != key);
            if let Some(v) = value {
                p.env.push((key.to_owned(), v.to_owned()));
            }
        }
    }

    /// Starts a process again if it died on its own (a crash the scenario expects); answers whether it had.
    pub async fn restart_if_dead(&mut self, kind: Kind, i: usize) -> anyhow::Result<bool> {
        if self.check_running(kind, i).is_ok() {
            return Ok(false);
        }
        self.start_proc(kind, i).await?;
        Ok(true)
    }

    /// The index of the chat-service replica whose advertised address is `addr`.
    pub fn chat_index(&self, addr: &str) -> Option<usize> {
        self.chat_addrs.iter().position(|a| a.to_string() == addr)
    }

    /// What a process has logged so far.
    pub fn log_of(&self, kind: Kind, i: usize) -> Option<String> {
        std::fs::read_to_string(&self.procs.get(&(kind, i))?.log).ok()
    }

    /// The process id of a running process.
    pub fn pid(&self, kind: Kind, i: usize) -> Option<u32> {
        self.procs.get(&(kind, i)).and_then(|p| p.child.as_ref()).map(|c| c.id())
    }

    /// Resident memory of a running process, in KiB (from /proc).
    pub fn rss_kib(&self, kind: Kind, i: usize) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(kind, i)?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// How many files (sockets included) the process has open.
    pub fn open_files(&self, kind: Kind, i: usize) -> Option<usize> {
        Some(std::fs::read_dir(format!("/proc/{}/fd", self.pid(kind, i)?)).ok()?.count())
    }

    pub fn is_running(&mut self, kind: Kind, i: usize) -> bool {
        self.procs.get_mut(&(kind, i)).and_then(|p| p.child.as_mut()).is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops every process gracefully; fails if one had died on its own or does not exit cleanly. Then
    /// deletes the events topic (kept when a process failed, to look at).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.check_all_running()?;
        let keys: Vec<(Kind, usize)> = self.procs.keys().copied().collect();
        let mut failures = Vec::new();
        for kind in [Kind::Gateway, Kind::Worker, Kind::ChatService] {
            for &(k, i) in &keys {
                if k == kind
                    && let Err(e) = self.stop(k, i).await
                {
                    failures.push(format!("{e:#}"));
                }
            }
        }
        if !failures.is_empty() {
            bail!("stopping the cluster: {}", failures.join("; "));
        }
        crate::platform::forget_topic(&self.topic).await;
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.values_mut() {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Proc {
    fn new(kind: Kind, i: usize, id: &str, env: Vec<(String, String)>, port: Option<u16>) -> Proc {
        let log = log_dir().join(format!("{id}-{}-{i}.log", kind.binary()));
        Proc { kind, env, port, log, child: None }
    }
}

fn worker_env(topic: &str, id: &str, redis_prefix: &str, options: &ClusterOptions) -> Vec<(String, String)> {
    vec![
        ("WORKER_KAFKA_BROKERS".into(), kafka_brokers()),
        ("WORKER_EVENTS_TOPIC".into(), topic.into()),
        ("WORKER_DEAD_LETTER_TOPIC".into(), format!("{topic}.dlq")),
        ("WORKER_GROUP_ID".into(), format!("faults.{id}.workers")), // = Cluster::worker_group
        ("WORKER_CASSANDRA_NODES".into(), cassandra_node()),
        ("WORKER_CASSANDRA_KEYSPACE".into(), KEYSPACE.into()),
        ("WORKER_REDIS_URL".into(), redis_url()),
        ("WORKER_REDIS_PREFIX".into(), redis_prefix.into()),
        ("WORKER_PUSH_TIMEOUT_MS".into(), options.push_timeout_ms.to_string()),
    ]
}

/// A rule of [`Cluster::cut_off_kafka`]; deleted when dropped, whatever the scenario's outcome.
pub struct KafkaCut {
    rule: Vec<String>,
}

impl KafkaCut {
    /// Drops every packet the local server listening on `from` sends to the local ports `to` (the answers
    /// of a broker to some clients; its followers still fetch), until the answer is dropped. Needs root.
    pub fn answers(from: u16, to: &[u16]) -> anyhow::Result<KafkaCut> {
        anyhow::ensure!(!to.is_empty(), "no client port to cut");
        let ports: Vec<String> = to.iter().map(u16::to_string).collect();
        KafkaCut::drop_tcp(&["-s", "127.0.0.1", "--sport", &from.to_string()], &ports.join(","))
    }

    /// Inserts a rule dropping the TCP packets sent from here that match `matches` and go to `dports`.
    fn drop_tcp(matches: &[&str], dports: &str) -> anyhow::Result<KafkaCut> {
        let rule: Vec<String> = ["OUTPUT", "-p", "tcp"]
            .iter()
            .chain(matches)
            .chain(&["-m", "multiport", "--dports", dports, "-j", "DROP"])
            .map(|s| (*s).to_owned())
            .collect();
        iptables("-I", &rule)?;
        Ok(KafkaCut { rule })
    }

    /// Deletes the rule: the replica reaches Kafka again.
    pub fn heal(mut self) -> anyhow::Result<()> {
        iptables("-D", &std::mem::take(&mut self.rule))
    }
}

impl Drop for KafkaCut {
    fn drop(&mut self) {
        if !self.rule.is_empty()
            && let Err(e) = iptables("-D", &self.rule)
        {
            eprintln!("[faults] deleting the iptables rule {:?}: {e:#}", self.rule);
        }
    }
}

/// The local ports of this process's established TCP connections to the local port `to` (`ss`).
pub fn my_connections_to(to: u16) -> anyhow::Result<Vec<u16>> {
    let out = Command::new("ss")
        .args(["-tnpH", "state", "established", "dst", &format!("127.0.0.1:{to}")])
        .output()
        .context("running ss (installed by infra/local/install.sh)")?;
    anyhow::ensure!(out.status.success(), "ss: {}", String::from_utf8_lossy(&out.stderr).trim());
    let me = format!("pid={},", std::process::id());
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&me))
        .filter_map(|l| l.split_whitespace().nth(2)?.rsplit(':').next()?.parse().ok())
        .collect())
}

/// Closes, on this side, every established TCP connection to the local port `to` (`ss --kill`): their
/// owners see them aborted at once, whatever the other side does.
pub fn abort_connections_to(to: u16) -> anyhow::Result<()> {
    let out = Command::new("ss")
        .args(["-K", "-tnH", "state", "established", "dst", &format!("127.0.0.1:{to}")])
        .output()
        .context("running ss (installed by infra/local/install.sh)")?;
    anyhow::ensure!(out.status.success(), "ss -K: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

fn iptables(action: &str, rule: &[String]) -> anyhow::Result<()> {
    let out = Command::new("iptables")
        .arg("-w")
        .arg(action)
        .args(rule)
        .output()
        .context("running iptables (installed by infra/local/install.sh)")?;
    if !out.status.success() {
        bail!("iptables {action} {}: {}", rule.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Sends a signal (`-STOP`, `-CONT`) to one of the real servers (`kafka`, `cassandra`, `redis`), by the pid
/// file `servers.sh` keeps.
pub fn signal_server(name: &str, signal: &str) -> anyhow::Result<()> {
    let pidfile =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(".local").join("run").join(format!("{name}.pid"));
    let pid = std::fs::read_to_string(&pidfile).with_context(|| format!("{name} is not running"))?;
    let status = Command::new("kill").arg(signal).arg(pid.trim()).status()?;
    if !status.success() {
        bail!("kill {signal} {name} failed");
    }
    Ok(())
}

/// Stops or starts one of the real servers through the project's script (`kafka`, `cassandra`, `redis`).
pub fn server(action: &str, name: &str) -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("infra").join("local").join("servers.sh");
    let status = Command::new(script).arg(action).arg(name).status()?;
    if !status.success() {
        bail!("servers.sh {action} {name} failed");
    }
    Ok(())
}

/// The owners group of the cluster `id`.
fn owner_group(id: &str) -> String {
    format!("faults.{id}.owners")
}
