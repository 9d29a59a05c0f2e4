//! Which partitions this replica owns: the chat-service replicas are the members of one Kafka consumer
//! group over the events topic, and a replica owns the partitions the group assigns it.
//!
//! The group's consumer runs on a thread of its own, where the rebalance callbacks run: on an assignment,
//! each new partition is acquired (its writer opened, which fences the previous owner; its tail read; its
//! owner written to the store for the other replicas to forward to), then served; on a revocation the
//! partition stops taking sends, and its batcher finishes the batch in hand before the callback returns.
//! The consumer never reads records itself: its partitions are paused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chat_model::ConversationId;
use chat_store::CassandraStore;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::kafka::{KafkaPartition, LogConfig};
use super::{Batcher, Batching, Job, OwnerStats, Projected, SharedKnown};

/// Jobs waiting per partition; past it callers wait (backpressure).
const QUEUE: usize = 4096;

/// How a replica takes part in ownership.
#[derive(Debug, Clone)]
pub struct OwnersConfig {
    pub log: LogConfig,
    /// The owners' consumer group (every chat-service replica of one deployment).
    pub group: String,
    /// The address other replicas forward sends to (written to the store with each owned partition).
    pub advertise: String,
    pub batching: Batching,
    /// The group's session timeout: how long a replica that stopped answering keeps its partitions.
    pub session_timeout: Duration,
}

/// A partition this replica owns and serves.
#[derive(Clone)]
pub struct Local {
    pub partition: i32,
    pub jobs: mpsc::Sender<Job>,
    pub known: SharedKnown,
    revoked: Arc<AtomicBool>,
}

/// The store's half of what a new owner needs (see [`Projected`]).
pub struct StoreProjected {
    store: CassandraStore,
    log: LogConfig,
    partition: i32,
}

impl Projected for StoreProjected {
    async fn head(&self, conversation: ConversationId) -> Result<u64, String> {
        self.store.projected_head(conversation).await.map_err(|e| e.to_string())
    }

    async fn projected_offset(&self) -> Result<i64, String> {
        super::kafka::projected_offset(&self.log, self.partition).await
    }
}

#[derive(Default)]
struct State {
    /// Partitions assigned to this replica, each with the epoch of its assignment.
    assigned: HashMap<i32, u64>,
    /// Assigned partitions that are acquired and served, with their batcher task.
    serving: HashMap<i32, (Local, tokio::task::JoinHandle<()>)>,
}

struct Inner {
    config: OwnersConfig,
    store: CassandraStore,
    runtime: Handle,
    partitions: i32,
    state: Mutex<State>,
    epochs: AtomicU64,
    stop: AtomicBool,
    /// Per partition: held by whoever writes it in this process (its acquisition, then its batcher).
    gates: Mutex<HashMap<i32, Arc<tokio::sync::Mutex<()>>>>,
    pub stats: Arc<OwnerStats>,
    acquisitions: AtomicU64,
}

/// This replica's share of the partitions. Cheap to clone.
#[derive(Clone)]
pub struct Owners {
    inner: Arc<Inner>,
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

struct OwnerContext {
    inner: Arc<Inner>,
}

impl ClientContext for OwnerContext {}

impl ConsumerContext for OwnerContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(?partitions, "partitions revoked");
            self.inner.revoke(&partitions);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "partitions assigned");
                // The consumer only holds the assignment; it reads nothing itself.
                if let Err(e) = consumer.pause(tpl) {
                    tracing::warn!(error = %e, "could not pause the owned partitions");
                }
                for p in partitions {
                    self.inner.assign(p, self.inner.clone());
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

impl Owners {
    /// Joins the owners' group; partitions are acquired as they are assigned.
    pub async fn start(config: OwnersConfig, store: CassandraStore) -> anyhow::Result<Owners> {
        let partitions = partition_count(&config.log).await?;
        let inner = Arc::new(Inner {
            config,
            store,
            runtime: Handle::current(),
            partitions,
            state: Mutex::new(State::default()),
            epochs: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            gates: Mutex::default(),
            stats: Arc::default(),
            acquisitions: AtomicU64::new(0),
        });
        let consumer: BaseConsumer<OwnerContext> = inner
            .config
            .log
            .kafka
            .config()
            .set("group.id", &inner.config.group)
            .set("client.id", format!("chat-service-{}", inner.config.advertise))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", inner.config.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", (inner.config.session_timeout.as_millis() / 4).max(100).to_string())
            .create_with_context(OwnerContext { inner: inner.clone() })?;
        consumer.subscribe(&[&inner.config.log.topic])?;
        let thread_inner = inner.clone();
        let thread = std::thread::Builder::new().name("owners-group".into()).spawn(move || {
            while !thread_inner.stop.load(Ordering::Relaxed) {
                if let Some(Err(e)) = consumer.poll(Duration::from_millis(200)) {
                    tracing::warn!(error = %e, "owners' group consumer");
                }
            }
            // Leaving the group revokes every partition (callbacks included) before the consumer is gone.
            drop(consumer);
        })?;
        let projections_inner = inner.clone();
        let projections = std::thread::Builder::new()
            .name("owners-projections".into())
            .spawn(move || watch_projections(&projections_inner))?;
        Ok(Owners { inner, threads: Arc::new(Mutex::new(vec![thread, projections])) })
    }

    /// Waits until the group has given this replica its partitions and every one of them is acquired and
    /// served, for at most `within`; answers whether it is so. (Waiting for the first one only let a replica
    /// start with the other partitions still being acquired, answering their sends `unavailable`.)
    pub async fn wait_serving(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.inner.serves_all_assigned() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn partitions(&self) -> i32 {
        self.inner.partitions
    }

    /// The partition of a conversation.
    pub fn partition_of(&self, conversation: ConversationId) -> i32 {
        chat_model::partition_of(conversation, self.inner.partitions)
    }

    /// The partition, if this replica owns and serves it.
    pub fn local(&self, partition: i32) -> Option<Local> {
        lock(&self.inner.state).serving.get(&partition).map(|(l, _)| l.clone())
    }

    /// Partitions this replica serves now.
    pub fn serving(&self) -> Vec<i32> {
        let mut p: Vec<i32> = lock(&self.inner.state).serving.keys().copied().collect();
        p.sort_unstable();
        p
    }

    pub fn stats(&self) -> &OwnerStats {
        &self.inner.stats
    }

    /// How many times a partition was acquired by this replica.
    pub fn acquisitions(&self) -> u64 {
        self.inner.acquisitions.load(Ordering::Relaxed)
    }

    /// Leaves the group (its partitions move to the other replicas at once) and stops the batchers.
    pub async fn stop(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut *lock(&self.threads));
        let _ = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join()))).await;
    }
}

/// How often the owners learn what the workers have projected.
const PROJECTIONS_EVERY: Duration = Duration::from_secs(1);

/// Tells every served partition, once a second, up to where the delivery workers have projected it (their
/// committed offsets), so that its owner forgets what the store holds ([`super::Known::projected`]). One
/// consumer of the workers' group (never subscribed) asks for all the partitions at once, on its own
/// thread: the batchers never wait for it.
fn watch_projections(inner: &Inner) {
    let consumer: Option<BaseConsumer> = match inner
        .config
        .log
        .kafka
        .config()
        .set("group.id", &inner.config.log.projector_group)
        .set("client.id", format!("chat-service-{}-projections", inner.config.advertise))
        .set("enable.auto.commit", "false")
        .create()
    {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the workers' offsets: owners keep every answer in memory");
            None
        }
    };
    let grace = inner.config.batching.grace;
    while !inner.stop.load(Ordering::Relaxed) {
        std::thread::sleep(PROJECTIONS_EVERY);
        let Some(consumer) = &consumer else { continue };
        let serving: Vec<(i32, SharedKnown)> =
            lock(&inner.state).serving.iter().map(|(p, (local, _))| (*p, local.known.clone())).collect();
        if serving.is_empty() {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, _) in &serving {
            tpl.add_partition(&inner.config.log.topic, *p);
        }
        let committed = match consumer.committed_offsets(tpl, inner.config.log.call_timeout) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "the workers' offsets not read; trying again");
                continue;
            }
        };
        let now = std::time::Instant::now();
        for (p, known) in &serving {
            let offset = committed.find_partition(&inner.config.log.topic, *p).map(|e| e.offset());
            if let Some(rdkafka::Offset::Offset(offset)) = offset {
                known.lock().projected(offset, now, grace);
            }
        }
    }
}

impl Inner {
    fn revoke(&self, partitions: &[i32]) {
        let mut tasks = Vec::new();
        {
            let mut state = lock(&self.state);
            for p in partitions {
                state.assigned.remove(p);
                if let Some((local, task)) = state.serving.remove(p) {
                    local.revoked.store(true, Ordering::SeqCst);
                    drop(local);
                    tasks.push(task);
                }
            }
        }
        // The batchers see their queue close once every sender is gone (callers hold clones only for the
        // time of one send, which includes its batch's wait: the linger or the rest of the interval since
        // the partition's last transaction); each finishes its batch in hand. Bounded: the partition moves
        // on regardless, and the next owner's fence settles whatever this one left open.
        let wait = self.config.log.call_timeout * 2;
        self.runtime.block_on(async {
            for mut t in tasks {
                if tokio::time::timeout(wait, &mut t).await.is_err() {
                    tracing::warn!("a revoked partition's batcher did not stop in time; stopping it");
                    t.abort();
                }
            }
        });
    }

    fn assign(&self, partition: i32, me: Arc<Inner>) {
        let epoch = self.epochs.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.state).assigned.insert(partition, epoch);
        self.runtime.spawn(async move { me.acquire(partition, epoch).await });
    }

    /// Whether the group gave this replica partitions and it serves every one of them.
    fn serves_all_assigned(&self) -> bool {
        let state = lock(&self.state);
        !state.assigned.is_empty() && state.assigned.keys().all(|p| state.serving.contains_key(p))
    }

    fn still_assigned(&self, partition: i32, epoch: u64) -> bool {
        lock(&self.state).assigned.get(&partition) == Some(&epoch)
    }

    /// Acquires a partition, retrying until it succeeds or the partition is no longer assigned here.
    async fn acquire(self: Arc<Self>, partition: i32, epoch: u64) {
        // One writer of a partition at a time in this process: an earlier acquisition or batcher of the
        // partition (revoked meanwhile) finishes first, so that its late `init_transactions` cannot fence
        // this one.
        let gate = lock(&self.gates).entry(partition).or_default().clone();
        let guard = gate.lock_owned().await;
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(100);
        while self.still_assigned(partition, epoch) && !self.stop.load(Ordering::Relaxed) {
            match self.try_acquire(partition).await {
                Ok(batcher) => {
                    let (jobs, rx) = mpsc::channel(QUEUE);
                    let local =
                        Local { partition, jobs, known: batcher.known.clone(), revoked: batcher.revoked.clone() };
                    let mut state = lock(&self.state);
                    if state.assigned.get(&partition) != Some(&epoch) {
                        return;
                    }
                    let me = self.clone();
                    let task = self.runtime.spawn(async move {
                        batcher.run(rx).await;
                        drop(guard);
                        me.after_batcher(partition, epoch);
                    });
                    state.serving.insert(partition, (local, task));
                    self.acquisitions.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(partition, took_ms = started.elapsed().as_millis() as u64, "partition acquired");
                    return;
                }
                Err(e) => {
                    tracing::warn!(partition, error = %e, "partition not acquired yet; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// A batcher stopped. If the partition is still assigned here, it was fenced by a writer of this
    /// partition that is gone now (a stale one, from before a revocation): acquire it again.
    fn after_batcher(self: &Arc<Self>, partition: i32, epoch: u64) {
        if !self.still_assigned(partition, epoch) || self.stop.load(Ordering::Relaxed) {
            return;
        }
        lock(&self.state).serving.remove(&partition);
        tracing::warn!(partition, "the partition's writer was fenced while still assigned here; acquiring it again");
        let me = self.clone();
        self.runtime.spawn(async move { me.acquire(partition, epoch).await });
    }

    async fn try_acquire(&self, partition: i32) -> Result<Batcher<KafkaPartition, StoreProjected>, String> {
        let log = KafkaPartition::open(self.config.log.clone(), partition).await.map_err(|e| e.to_string())?;
        let projected = Arc::new(StoreProjected { store: self.store.clone(), log: self.config.log.clone(), partition });
        let mut batcher = Batcher {
            log,
            projected,
            known: SharedKnown::default(),
            batching: self.config.batching,
            stats: self.stats.clone(),
            revoked: Arc::default(),
        };
        batcher.acquire().await?;
        self.store
            .set_partition_owner(&self.config.log.topic, partition, &self.config.advertise)
            .await
            .map_err(|e| e.to_string())?;
        Ok(batcher)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The topic's partition count, from the brokers' metadata.
///
/// A topic created a moment ago may not be in every broker's metadata yet (seen on a Kafka just started:
/// the topic answered with no partitions), so a topic without partitions is asked for again, every 200 ms
/// for at most the call timeout, before the service gives up.
pub async fn partition_count(log: &LogConfig) -> anyhow::Result<i32> {
    let (kafka, topic, timeout) = (log.kafka.clone(), log.topic.clone(), log.call_timeout);
    tokio::task::spawn_blocking(move || -> anyhow::Result<i32> {
        let consumer: BaseConsumer = kafka.config().create()?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
            let n = metadata.topics().first().map_or(0, |t| t.partitions().len());
            if n > 0 {
                return Ok(i32::try_from(n)?);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "topic {topic} has no partitions (create it with `chatctl create-topics`)"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await?
}
