//! [`Platform`]: a chat service, gateways and delivery workers, running in this process.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use chat_store::CassandraStore;
use proto::v1::chat_service_client::ChatServiceClient;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use tokio::sync::{OnceCell, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The secret every test gateway checks tokens with.
pub const JWT_SECRET: &str = "e2e-secret-e2e-secret-e2e-secret-0123";

/// Where the real servers listen; the same defaults and variables as `infra/local/env.sh`. Kafka is the
/// one-node Kafka, or the three-node one while a [`ThreeBrokers`] is alive.
pub fn kafka_brokers() -> String {
    if let Some(brokers) = three_brokers() {
        return brokers;
    }
    format!("127.0.0.1:{}", std::env::var("KAFKA_PORT").unwrap_or_else(|_| "19092".into()))
}

static THREE_BROKERS: std::sync::Mutex<bool> = std::sync::Mutex::new(false);

fn three_brokers() -> Option<String> {
    if !*THREE_BROKERS.lock().unwrap_or_else(|p| p.into_inner()) {
        return None;
    }
    Some((1..=3).map(|n| format!("127.0.0.1:{}", kafka3_port(n))).collect::<Vec<_>>().join(","))
}

/// The port of node `n` (1 to 3) of the three-node Kafka of `servers.sh up kafka3`.
pub fn kafka3_port(n: u16) -> u16 {
    let base: u16 = std::env::var("KAFKA3_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(19100);
    base + n
}

/// While alive, [`kafka_brokers`] (and so every topic, client and service this crate makes) is the three-node
/// Kafka of `servers.sh up kafka3`, and new topics have three replicas, two of them needed for a write. For
/// one scenario at a time in a test binary (the fault scenarios run one by one).
pub struct ThreeBrokers(());

impl ThreeBrokers {
    pub fn select() -> ThreeBrokers {
        *THREE_BROKERS.lock().unwrap_or_else(|p| p.into_inner()) = true;
        ThreeBrokers(())
    }
}

impl Drop for ThreeBrokers {
    fn drop(&mut self) {
        *THREE_BROKERS.lock().unwrap_or_else(|p| p.into_inner()) = false;
    }
}

/// The local broker's TLS listener (`infra/local/servers.sh` gives it a certificate for `localhost` signed
/// by [`kafka_tls_ca`]).
pub fn kafka_tls_brokers() -> String {
    format!("localhost:{}", std::env::var("KAFKA_TLS_PORT").unwrap_or_else(|_| "19094".into()))
}

/// The CA of the local servers' TLS listeners (Kafka's and Redis's).
pub fn kafka_tls_ca() -> std::path::PathBuf {
    // Where infra/local/env.sh puts it: CHAT_LOCAL_DIR, or .local in the repository.
    let local = std::env::var_os("CHAT_LOCAL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local"));
    local.join("tls/ca.pem")
}

/// The local Redis's TLS port (the same certificate as Kafka's TLS listener).
pub fn redis_tls_url() -> String {
    format!("rediss://localhost:{}/", std::env::var("REDIS_TLS_PORT").unwrap_or_else(|_| "16380".into()))
}

pub fn cassandra_node() -> String {
    format!("127.0.0.1:{}", std::env::var("CASSANDRA_PORT").unwrap_or_else(|_| "19042".into()))
}

pub fn redis_url() -> String {
    format!("redis://127.0.0.1:{}/", std::env::var("REDIS_PORT").unwrap_or_else(|_| "16379".into()))
}

/// The keyspace end-to-end tests share.
pub const KEYSPACE: &str = "chat_e2e";

static MIGRATED: OnceCell<()> = OnceCell::const_new();

pub async fn migrate_once() -> anyhow::Result<()> {
    MIGRATED
        .get_or_try_init(|| async {
            let session = chat_store::connect_session(&[cassandra_node()], Duration::from_secs(30))
                .await
                .context("cassandra is not reachable: run `make test`, which starts it (infra/local/servers.sh up)")?;
            chat_store::migrate(&session, KEYSPACE, "{'class': 'SimpleStrategy', 'replication_factor': 1}").await?;
            anyhow::Ok(())
        })
        .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct PlatformOptions {
    pub gateways: usize,
    pub workers: usize,
    pub partitions: i32,
    pub inbox_recheck_ms: u64,
    /// History retention of the chat service and workers (0: forever).
    pub message_ttl_secs: i32,
    /// The gateways' origin allow-list (empty: not checked).
    pub allowed_origins: Vec<String>,
    /// The gateways' GATEWAY_WEB_DIR.
    pub web_dir: Option<std::path::PathBuf>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    /// Besides the shared secret, a public key for asymmetric tokens, and the accepted algorithms.
    pub jwt_public_key_file: Option<std::path::PathBuf>,
    pub jwt_algorithms: Vec<String>,
    /// Frames per second per connection and per user (bursts of twice as many).
    pub rate_per_connection: u32,
    pub rate_per_user: u32,
    pub max_connections_per_user: usize,
    pub max_connections_per_address: usize,
    /// Time for a TLS handshake and for the request headers.
    pub handshake_timeout_ms: u64,
    /// The gateways' certificate and key files: `wss://` when set.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// How often the gateways ping each connection, and how long one may stay silent.
    pub ping_interval_ms: u64,
    pub idle_timeout_ms: u64,
    /// Mutual TLS between the services (the same files for all of them).
    pub grpc_tls: lifecycle::grpc_tls::GrpcTlsArgs,
    /// TLS to Kafka: when on, the services use the brokers' TLS listener ([`kafka_tls_brokers`]).
    pub kafka_tls: lifecycle::kafka_tls::KafkaTlsArgs,
    /// TLS to Redis: when set, the gateways and workers use Redis's TLS port ([`redis_tls_url`]).
    pub redis_tls: Option<lifecycle::redis_tls::RedisTlsArgs>,
}

impl Default for PlatformOptions {
    fn default() -> Self {
        PlatformOptions {
            gateways: 2,
            workers: 1,
            partitions: 4,
            inbox_recheck_ms: 3_000,
            message_ttl_secs: 0,
            allowed_origins: Vec::new(),
            web_dir: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_public_key_file: None,
            jwt_algorithms: Vec::new(),
            rate_per_connection: 10_000,
            rate_per_user: 10_000,
            max_connections_per_user: 1_000,
            max_connections_per_address: 100_000,
            handshake_timeout_ms: 10_000,
            ping_interval_ms: 20_000,
            idle_timeout_ms: 60_000,
            grpc_tls: Default::default(),
            kafka_tls: Default::default(),
            redis_tls: None,
            tls: None,
        }
    }
}

pub struct GatewayHandle {
    pub ws_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// Where it serves `GET /metrics`.
    pub metrics_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

struct Stoppable {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

pub struct Platform {
    pub id: String,
    pub topic: String,
    pub redis_prefix: String,
    pub chat_addr: SocketAddr,
    pub gateways: Vec<GatewayHandle>,
    pub store: CassandraStore,
    /// Where each worker serves its counters.
    pub worker_metrics: Vec<SocketAddr>,
    /// Where the chat service serves its counters.
    pub chat_metrics: SocketAddr,
    chat: Stoppable,
    /// The chat service's settings, to start it again ([`Platform::restart_chat`]).
    chat_config: chat_service::Config,
    workers: Vec<Stoppable>,
    /// The services' mutual TLS, which an internal client must use too.
    grpc_tls: Option<lifecycle::grpc_tls::GrpcTls>,
}

fn stoppable<F>(
    run: impl FnOnce(oneshot::Receiver<()>) -> F,
) -> (Option<oneshot::Sender<()>>, JoinHandle<anyhow::Result<()>>)
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    (Some(tx), tokio::spawn(run(rx)))
}

impl Platform {
    pub async fn start(opts: PlatformOptions) -> anyhow::Result<Platform> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        crate::prove::configure_in_process()?;
        migrate_once().await?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let topic = format!("e2e.{id}.events");
        create_topic(&topic, opts.partitions).await?;
        let redis_prefix = format!("e2e:{id}:");

        let chat_config = chat_service::Config {
            grpc_addr: "127.0.0.1:0".parse()?,
            kafka_brokers: if opts.kafka_tls.tls { kafka_tls_brokers() } else { kafka_brokers() },
            events_topic: topic.clone(),
            cassandra_nodes: vec![cassandra_node()],
            cassandra_keyspace: KEYSPACE.into(),
            send_timeout_ms: 10_000,
            members_cache_ms: 2_000,
            store_timeout_ms: 5_000,
            message_ttl_secs: opts.message_ttl_secs,
            advertise_addr: None,
            owner_group_id: format!("e2e.{id}.owners"),
            projector_group_id: format!("e2e.{id}.workers"),
            batch_max: 256,
            batch_linger_us: 500,
            batch_interval_us: 20_000,
            transaction_timeout_ms: 10_000,
            owner_session_timeout_ms: 6_000,
            grpc_tls: opts.grpc_tls.clone(),
            kafka_tls: opts.kafka_tls.clone(),
            metrics_addr: Some("127.0.0.1:0".parse()?),
        };
        lifecycle::Config::validate(&chat_config).map_err(anyhow::Error::msg)?;
        let grpc_tls = opts.grpc_tls.load().map_err(anyhow::Error::msg)?;
        let scheme = lifecycle::grpc_tls::scheme(grpc_tls.as_ref());
        let (chat, chat_addr, chat_metrics) = start_chat(&chat_config).await?;

        let mut gateways = Vec::new();
        for _ in 0..opts.gateways {
            let config = gateway::Config {
                ws_addr: "127.0.0.1:0".parse()?,
                grpc_addr: "127.0.0.1:0".parse()?,
                advertise_addr: None,
                chat_service_urls: vec![format!("{scheme}://{chat_addr}")],
                redis_url: if opts.redis_tls.is_some() { redis_tls_url() } else { redis_url() },
                redis_prefix: redis_prefix.clone(),
                jwt_secret: Some(JWT_SECRET.into()),
                jwt_public_key_file: opts.jwt_public_key_file.clone(),
                jwt_algorithms: opts.jwt_algorithms.clone(),
                jwt_leeway_secs: 30,
                jwt_issuer: opts.jwt_issuer.clone(),
                jwt_audience: opts.jwt_audience.clone(),
                allowed_origins: opts.allowed_origins.clone(),
                web_dir: opts.web_dir.clone(),
                send_queue: 256,
                max_message_bytes: 64 * 1024,
                presence_ttl_ms: 30_000,
                inbox_recheck_ms: opts.inbox_recheck_ms,
                rpc_timeout_ms: 10_000,
                handshake_timeout_ms: opts.handshake_timeout_ms,
                metrics_addr: Some("127.0.0.1:0".parse()?),
                tls_cert_file: opts.tls.as_ref().map(|t| t.0.clone()),
                tls_key_file: opts.tls.as_ref().map(|t| t.1.clone()),
                rate_per_connection: opts.rate_per_connection,
                burst_per_connection: opts.rate_per_connection * 2,
                rate_per_user: opts.rate_per_user,
                burst_per_user: opts.rate_per_user * 2,
                max_connections_per_user: opts.max_connections_per_user,
                max_connections_per_address: opts.max_connections_per_address,
                max_connections: None,
                write_timeout_ms: 10_000,
                ping_interval_ms: opts.ping_interval_ms,
                idle_timeout_ms: opts.idle_timeout_ms,
                grpc_tls: opts.grpc_tls.clone(),
                redis_tls: opts.redis_tls.clone().unwrap_or_default(),
            };
            lifecycle::Config::validate(&config).map_err(anyhow::Error::msg)?;
            let app = gateway::App::build(&config).await?;
            let (ws_addr, grpc_addr) = (app.ws_addr(), app.grpc_addr());
            let metrics_addr = app.metrics_addr().context("the gateway serves no metrics")?;
            let (stop, task) = stoppable(|rx| {
                app.run(async move {
                    let _ = rx.await;
                })
            });
            gateways.push(GatewayHandle { ws_addr, grpc_addr, metrics_addr, stop, task });
        }

        let mut workers = Vec::new();
        let mut worker_metrics = Vec::new();
        for _ in 0..opts.workers {
            let config = delivery_worker::Config {
                kafka_brokers: if opts.kafka_tls.tls { kafka_tls_brokers() } else { kafka_brokers() },
                events_topic: topic.clone(),
                dead_letter_topic: format!("{topic}.dlq"),
                group_id: format!("e2e.{id}.workers"),
                cassandra_nodes: vec![cassandra_node()],
                cassandra_keyspace: KEYSPACE.into(),
                redis_url: if opts.redis_tls.is_some() { redis_tls_url() } else { redis_url() },
                redis_prefix: redis_prefix.clone(),
                push_timeout_ms: 2_000,
                // The defaults: member lists are forgotten by the log's membership events, device lists by
                // their stamps in presence, not by time.
                members_cache_ms: 60_000,
                devices_cache_ms: 60_000,
                cursor_save_ms: 1_000,
                group_wedged_after_ms: 60_000,
                message_ttl_secs: opts.message_ttl_secs,
                metrics_addr: Some("127.0.0.1:0".parse()?),
                grpc_tls: opts.grpc_tls.clone(),
                kafka_tls: opts.kafka_tls.clone(),
                redis_tls: opts.redis_tls.clone().unwrap_or_default(),
            };
            lifecycle::Config::validate(&config).map_err(anyhow::Error::msg)?;
            let app = delivery_worker::App::build(&config).await?;
            worker_metrics.extend(app.metrics_addr());
            let (stop, task) = stoppable(|rx| {
                app.run(async move {
                    let _ = rx.await;
                })
            });
            workers.push(Stoppable { stop, task });
        }

        let store = CassandraStore::connect(&chat_store::StoreConfig {
            nodes: vec![cassandra_node()],
            keyspace: KEYSPACE.into(),
            request_timeout: Duration::from_secs(10),
            message_ttl_secs: 0,
        })
        .await?;
        Ok(Platform {
            id,
            topic,
            redis_prefix,
            chat_addr,
            gateways,
            store,
            chat,
            chat_config,
            workers,
            worker_metrics,
            chat_metrics,
            grpc_tls,
        })
    }

    /// A gRPC client of the chat service, as an internal service would use it.
    pub async fn chat_client(&self) -> anyhow::Result<ChatServiceClient<Channel>> {
        Ok(ChatServiceClient::new(self.grpc_channel(self.chat_addr).await?))
    }

    /// A gRPC channel to one of the platform's servers (with the services' mutual TLS when they use it).
    pub async fn grpc_channel(&self, addr: SocketAddr) -> anyhow::Result<Channel> {
        let scheme = lifecycle::grpc_tls::scheme(self.grpc_tls.as_ref());
        let mut endpoint = Channel::from_shared(format!("{scheme}://{addr}"))?.timeout(Duration::from_secs(30));
        if let Some(tls) = &self.grpc_tls {
            endpoint = endpoint.tls_config(tls.client())?;
        }
        Ok(endpoint.connect().await?)
    }

    /// The value of the counter `name` served by worker `i`.
    pub async fn worker_counter(&self, i: usize, name: &str) -> anyhow::Result<u64> {
        metric_at(*self.worker_metrics.get(i).context("no such worker")?, name).await
    }

    /// The value of the counter or gauge `name` served by gateway `i`.
    pub async fn gateway_metric(&self, i: usize, name: &str) -> anyhow::Result<u64> {
        metric_at(self.gateways.get(i).context("no such gateway")?.metrics_addr, name).await
    }

    /// The value of the counter or gauge `name` served by the chat service.
    pub async fn chat_metric(&self, name: &str) -> anyhow::Result<u64> {
        metric_at(self.chat_metrics, name).await
    }

    /// A Redis connection, to look at presence.
    pub async fn redis(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(redis_url())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// Stops gateway `i` gracefully, as its shutdown signal would (it closes its connections with 1001), and
    /// waits until it has ended; fails if it failed. Its addresses stay in [`Platform::gateways`], closed.
    pub async fn stop_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        let g = self.gateways.get_mut(i).context("no such gateway")?;
        let stop = g.stop.take().context("gateway already stopped")?;
        let _ = stop.send(());
        // A finished task in its place, for `stop` to await.
        let task = std::mem::replace(&mut g.task, tokio::spawn(async { anyhow::Ok(()) }));
        task.await?
    }

    /// Stops the chat service gracefully and starts it again on the same addresses (the gateways' calls go
    /// on there): its partitions are acquired anew, by an owner with nothing in memory.
    pub async fn restart_chat(&mut self) -> anyhow::Result<()> {
        if let Some(s) = self.chat.stop.take() {
            let _ = s.send(());
        }
        let task = std::mem::replace(&mut self.chat.task, tokio::spawn(async { anyhow::Ok(()) }));
        stopped_in_time("the chat service", task).await?;
        let config = chat_service::Config {
            grpc_addr: self.chat_addr,
            metrics_addr: Some(self.chat_metrics),
            ..self.chat_config.clone()
        };
        (self.chat, _, _) = start_chat(&config).await?;
        Ok(())
    }

    /// Stops every service, gracefully, and checks that none failed; then deletes the events topic.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for g in &mut self.gateways {
            if let Some(s) = g.stop.take() {
                let _ = s.send(());
            }
        }
        for g in self.gateways {
            g.task.await??;
        }
        for w in &mut self.workers {
            if let Some(s) = w.stop.take() {
                let _ = s.send(());
            }
        }
        for w in self.workers {
            w.task.await??;
        }
        if let Some(s) = self.chat.stop.take() {
            let _ = s.send(());
        }
        stopped_in_time("the chat service", self.chat.task).await?;
        forget_topic(&self.topic).await;
        Ok(())
    }
}

/// Waits for a service told to stop: a graceful stop that hangs (a call that never ends holds it) is an
/// error, not a test that never finishes.
async fn stopped_in_time(what: &str, task: tokio::task::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    const GRACE: Duration = Duration::from_secs(60);
    tokio::time::timeout(GRACE, task).await.with_context(|| format!("{what} did not stop within {GRACE:?}"))??
}

/// Builds and runs a chat service: its handle, gRPC address and metrics address.
async fn start_chat(config: &chat_service::Config) -> anyhow::Result<(Stoppable, SocketAddr, SocketAddr)> {
    let app = chat_service::App::build(config).await?;
    let addr = app.local_addr();
    let metrics = app.metrics_addr().context("the chat service serves no metrics")?;
    let (stop, task) = stoppable(|rx| {
        app.run(async move {
            let _ = rx.await;
        })
    });
    Ok((Stoppable { stop, task }, addr, metrics))
}

/// An admin client of the brokers in use ([`kafka_brokers`]), and the options of its calls.
fn admin() -> anyhow::Result<(AdminClient<DefaultClientContext>, AdminOptions)> {
    let admin = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create()?;
    Ok((admin, AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))))
}

pub async fn create_topic(topic: &str, partitions: i32) -> anyhow::Result<()> {
    let (admin, opts) = admin()?;
    let dlq = format!("{topic}.dlq");
    // Replicated as `chatctl create-topics` makes them (kept for the broker's default, not forever: tests
    // make many topics).
    let (replication, min_insync) = if three_brokers().is_some() { (3, "2") } else { (1, "1") };
    let topics = [topic, &dlq].map(|name| {
        NewTopic::new(name, if name == topic { partitions } else { 1 }, TopicReplication::Fixed(replication))
            .set("min.insync.replicas", min_insync)
    });
    for r in admin.create_topics(&topics, &opts).await.context("kafka is not reachable: run `make test`")? {
        r.map_err(|(name, code)| anyhow::anyhow!("creating topic {name}: {code}"))?;
    }
    Ok(())
}

/// After a test that passed, deletes its topics ([`delete_topics`]); a failure to is only reported: a topic
/// left behind costs the broker, not the test's verdict. A test that failed keeps its topics to look at.
pub async fn forget_topic(topic: &str) {
    if let Err(e) = delete_topics(&[topic]).await {
        eprintln!("[tests] topic {topic} not deleted: {e:#}");
    }
}

/// The names of the topics the brokers in use hold (their metadata, which creates nothing). Blocking.
pub fn topic_names() -> anyhow::Result<Vec<String>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    Ok(metadata.topics().iter().map(|t| t.name().to_owned()).collect())
}

/// Deletes `topics` and their dead-letter topics (as [`create_topic`] made them), for runs that make many:
/// a broker holding thousands of partitions spends more on each young collection (the benchmark's Kafka
/// after many runs: 3,857 partitions, young pauses of 40 to 66 ms where a fresh one took at most 27).
pub async fn delete_topics(topics: &[&str]) -> anyhow::Result<()> {
    let (admin, opts) = admin()?;
    let names: Vec<String> = topics.iter().flat_map(|t| [t.to_string(), format!("{t}.dlq")]).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for r in admin.delete_topics(&names, &opts).await.context("kafka is not reachable")? {
        r.map_err(|(name, code)| anyhow::anyhow!("deleting topic {name}: {code}"))?;
    }
    Ok(())
}

/// A store on the end-to-end keyspace, as the services see it.
pub async fn store() -> anyhow::Result<CassandraStore> {
    migrate_once().await?;
    Ok(CassandraStore::connect(&chat_store::StoreConfig {
        nodes: vec![cassandra_node()],
        keyspace: KEYSPACE.into(),
        request_timeout: Duration::from_secs(10),
        message_ttl_secs: 0,
    })
    .await?)
}

/// Every committed event of `topic`, partition by partition, from its beginning to its end (records that
/// do not decode are skipped). Blocking.
pub fn read_topic(topic: &str) -> anyhow::Result<Vec<chat_model::event::LogEvent>> {
    read_topic_as(topic, "read_committed")
}

/// Every event of `topic` as a consumer of `isolation` (`read_committed`, or `read_uncommitted`: aborted
/// records too) reads it, partition by partition. Blocking.
pub fn read_topic_as(topic: &str, isolation: &str) -> anyhow::Result<Vec<chat_model::event::LogEvent>> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers as _;
    use rdkafka::types::RDKafkaErrorCode;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", "e2e-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions()).map(|p| p.id()).collect();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut done = std::collections::HashSet::new();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while done.len() < partitions.len() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "{topic} not read to its end within 60 s");
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            // A broker down (a fault scenario killed it): the client goes to the others.
            Some(Err(e))
                if matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)
                ) => {}
            Some(Err(e)) => anyhow::bail!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                // Every record names its schema, so that a reader who knows nothing of our code can decode it.
                let headers: Vec<(String, String)> = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                for (key, value) in chat_model::event::RECORD_HEADERS {
                    crate::promise!(
                        headers.iter().any(|(k, v)| k == key && v == value),
                        "the record at {}/{} lacks the header {key}: {value} (it has {headers:?})",
                        m.partition(),
                        m.offset()
                    );
                }
                if let Ok(e) = chat_model::event::decode(m.payload().unwrap_or_default()) {
                    out.push(e);
                }
            }
        }
    }
    Ok(out)
}

/// The body of `GET path` at `addr` (HTTP/1.1, one request); fails unless the status is 200.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await??;
    let response = String::from_utf8(response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("no end of headers")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {}", head.lines().next().unwrap_or_default());
    Ok(body.to_owned())
}

/// The value of the sample `name` in the Prometheus text that `addr` serves at `/metrics`.
pub async fn metric_at(addr: SocketAddr, name: &str) -> anyhow::Result<u64> {
    let body = http_get(addr, "/metrics").await?;
    let line = body
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .with_context(|| format!("no {name} in the metrics:\n{body}"))?;
    Ok(line.split_whitespace().nth(1).context("no value")?.parse()?)
}
