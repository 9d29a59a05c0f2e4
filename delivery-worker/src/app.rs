//! The delivery-worker process: connects to Kafka, Cassandra and Redis, then runs the loop until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chat_store::CassandraStore;
use lifecycle::kafka_producer::LogProducer;
use rdkafka::consumer::Consumer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Config;
use crate::consumer::{Loop, NewConsumer, STATISTICS_INTERVAL, WorkerConsumer, WorkerContext};
use crate::deliver::Deliverer;
use crate::metrics::Metrics;

/// How long a dead letter may take to be written before the attempt fails (and is made again).
const DEAD_LETTER_TIMEOUT: Duration = Duration::from_secs(5);

pub struct App {
    worker: Loop,
    metrics: Option<TcpListener>,
}

impl App {
    pub async fn build(config: &Config) -> anyhow::Result<App> {
        let grpc_tls = config.grpc_tls.load().map_err(anyhow::Error::msg)?;
        let store = CassandraStore::connect(&config.store_config()).await.context("connecting to cassandra")?;
        // The worker only reads presence: it writes no entries, so it has no push address of its own.
        let redis_ca = config.redis_tls.load(&config.redis_url).map_err(anyhow::Error::msg)?;
        let presence =
            routing::Presence::connect(&config.redis_url, redis_ca, &config.redis_prefix, "", Duration::from_secs(30))
                .await
                .context("connecting to redis")?;
        let new_consumer: NewConsumer = {
            let config = config.clone();
            Box::new(move || new_consumer(&config))
        };
        let consumer = new_consumer()?;
        // Appends dead letters.
        let dead_letters = LogProducer::create(
            config
                .kafka_client()
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("message.timeout.ms", DEAD_LETTER_TIMEOUT.as_millis().to_string()),
            "dead-letter-reports",
        )
        .context("creating the dead-letter producer")?;
        let deliverer = Deliverer::new(
            store,
            presence,
            routing::Pushers::with_tls(Duration::from_millis(config.push_timeout_ms), grpc_tls.map(|t| t.client())),
            Duration::from_millis(config.members_cache_ms),
            Duration::from_millis(config.devices_cache_ms),
        );
        let metrics = match config.metrics_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?),
            None => None,
        };
        let worker = Loop {
            consumer,
            new_consumer,
            deliverer,
            dead_letters,
            dead_letter_topic: config.dead_letter_topic.clone(),
            metrics: Arc::new(Metrics::default()),
            cursor_save: Duration::from_millis(config.cursor_save_ms),
            wedged_after: Duration::from_millis(config.group_wedged_after_ms),
        };
        Ok(App { worker, metrics })
    }

    /// Where the counters are served, when they are.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Runs until `shutdown` resolves, then finishes the record in hand and commits.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        let served = self.metrics.map(|listener| {
            let mut stop = rx.clone();
            let metrics = self.worker.metrics.clone();
            tokio::spawn(lifecycle::metrics::serve(listener, move || metrics.render(), async move {
                let _ = stop.wait_for(|s| *s).await;
            }))
        });
        self.worker.run(rx).await;
        if let Some(served) = served {
            let _ = served.await;
        }
        Ok(())
    }
}

/// A consumer of the worker group, subscribed to the events topic.
fn new_consumer(config: &Config) -> anyhow::Result<WorkerConsumer> {
    let mut client = config.kafka_client();
    if lifecycle::failpoint("worker-consumer-unreachable") {
        // Nothing listens there: the consumer never finds its group.
        client.set("bootstrap.servers", "127.0.0.1:9");
    }
    let consumer: WorkerConsumer = client
        .set("group.id", &config.group_id)
        // The process id tells, in a description of the group, which worker holds which partitions.
        .set("client.id", format!("delivery-worker-{}", std::process::id()))
        // A new group starts from the beginning of the log, not its end: nothing is skipped.
        .set("auto.offset.reset", "earliest")
        // Only committed transactions: a record of an aborted batch (its numbers given again) is never seen.
        .set("isolation.level", "read_committed")
        // Offsets are stored by the loop after a record is handled, and committed in the background.
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // The group's state, for the loop's check that the consumer has not been out of its group too long.
        .set("statistics.interval.ms", STATISTICS_INTERVAL.as_millis().to_string())
        .create_with_context(WorkerContext::default())
        .context("creating the kafka consumer")?;
    consumer.subscribe(&[config.events_topic.as_str()]).context("subscribing")?;
    Ok(consumer)
}
