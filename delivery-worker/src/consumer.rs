//! The loop around the step: poll a record, hand it to its conversation's lane, and store offsets as
//! records complete. Records of one conversation (one key) always go to the same lane and are handled there
//! one after the other, in log order; lanes run concurrently, so one slow conversation (or gateway) does not
//! hold the others back. An offset is stored only once every record before it in its partition is fully
//! handled (the contiguous completed prefix), and committed in the background and at shutdown, so delivery
//! is at least once.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chat_model::event::{self, LogEvent};
use lifecycle::kafka_producer::{LogProducer, Record};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message as _};
use tokio::sync::{mpsc, watch};

use crate::cursor::Cursors;
use crate::deliver::Deliverer;
use crate::metrics::Metrics;

/// Conversations whose delivery cursor is kept in memory.
const CURSOR_CAPACITY: usize = 100_000;

/// Notes rebalances, after which the in-memory cursors are dropped (another worker may have moved on), and
/// how long the consumer has been out of its group ([`GroupHealth`], from librdkafka's statistics).
#[derive(Default)]
pub struct WorkerContext {
    rebalanced: Arc<AtomicBool>,
    health: Mutex<GroupHealth>,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(group) = statistics.cgrp {
            lock(&self.health).observe(&group.state, &group.join_state, Instant::now());
        }
    }
}

/// How often librdkafka reports its state (the consumer's `statistics.interval.ms`).
pub const STATISTICS_INTERVAL: Duration = Duration::from_secs(5);

/// Whether the consumer's group membership works, from the statistics' group state.
#[derive(Debug, Default)]
pub struct GroupHealth {
    /// Since when the group has not been `up` (its coordinator known and connected); `None` while it is.
    out_since: Option<Instant>,
    /// The last state seen, for the log.
    last: String,
}

impl GroupHealth {
    fn observe(&mut self, state: &str, join_state: &str, now: Instant) {
        if state == "up" {
            self.out_since = None;
        } else if self.out_since.is_none() {
            self.out_since = Some(now);
        }
        self.last = format!("{state} (join state {join_state})");
    }

    /// The state, when the group has been out for `limit` or longer at `now`.
    fn wedged(&self, now: Instant, limit: Duration) -> Option<&str> {
        self.out_since.filter(|since| now.duration_since(*since) >= limit).map(|_| self.last.as_str())
    }

    fn up(&self) -> bool {
        self.out_since.is_none()
    }
}

/// How long the consumer may be out of its group before it is replaced, after `replaced` replacements in a
/// row (none of them found the group): doubling, up to 16 times `wedged_after`. While Kafka is away, the
/// replaced consumers, which may never finish closing, pile up slowly.
fn wedge_limit(wedged_after: Duration, replaced: u32) -> Duration {
    wedged_after * 2u32.pow(replaced.min(4))
}

impl ConsumerContext for WorkerContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(?rebalance, "rebalanced");
        self.rebalanced.store(true, Ordering::SeqCst);
    }
}

pub type WorkerConsumer = StreamConsumer<WorkerContext>;

/// Makes a consumer of the worker's group, subscribed: at start, and again to replace a wedged one.
pub type NewConsumer = Box<dyn Fn() -> anyhow::Result<WorkerConsumer> + Send + Sync>;

/// How long the final commit and the consumer's close may take at shutdown before the process goes anyway
/// (a consumer cut off from its group would wait for good; the records since the last commit are handled
/// again by the next owner of their partitions).
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

pub struct Loop {
    /// The first consumer (made by [`Loop::new_consumer`] at start, so that its errors stop the start).
    pub consumer: WorkerConsumer,
    pub new_consumer: NewConsumer,
    pub deliverer: Deliverer,
    pub dead_letters: LogProducer,
    pub dead_letter_topic: String,
    pub metrics: Arc<Metrics>,
    /// How long a lane lets delivery cursors' moves wait before writing them.
    pub cursor_save: Duration,
    /// How long the consumer may stay out of its group (no usable group coordinator) before it is replaced
    /// by a new one (WORKER_GROUP_WEDGED_AFTER_MS). librdkafka can stay there for good after the brokers it
    /// knew were all fenced and forgotten (make faults, scenario 13): it holds no partition, and the group's
    /// other members take them; with one worker, nothing is delivered.
    pub wedged_after: Duration,
}

/// Lanes, each handling its conversations' records in order.
const LANES: usize = 32;
/// Records waiting per lane; past it the poll loop waits (backpressure).
const LANE_QUEUE: usize = 64;

enum Job {
    Record(OwnedMessage),
    /// After a rebalance: forget the in-memory cursors (another worker may have moved on).
    ClearCursors,
}

/// Per partition: offsets handed to lanes and not yet done, and the highest handed out. The offset to store
/// is the last one before the first still pending.
#[derive(Default)]
struct Offsets {
    partitions: HashMap<(String, i32), Track>,
}

struct Track {
    pending: BTreeSet<i64>,
    highest: i64,
    stored: i64,
}

impl Offsets {
    fn dispatched(&mut self, topic: &str, partition: i32, offset: i64) {
        let t = self.partitions.entry((topic.to_owned(), partition)).or_insert(Track {
            pending: BTreeSet::new(),
            highest: offset - 1,
            stored: offset - 1,
        });
        t.pending.insert(offset);
        t.highest = t.highest.max(offset);
    }

    /// Marks `offset` done; answers the offset to store (every record up to it is done) if it moved.
    fn completed(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let t = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        if !t.pending.remove(&offset) {
            // Handed out before a rebalance reset the tracking: its partition's new owner decides.
            return None;
        }
        let done = t.pending.first().map_or(t.highest, |first| first - 1);
        (done > t.stored).then(|| {
            t.stored = done;
            done
        })
    }
}

/// What every lane shares.
struct Handler {
    /// The consumer in use: replaced when it is wedged (`wedged_after`).
    consumer: Mutex<Arc<WorkerConsumer>>,
    /// Replacements since the group was last seen up.
    replaced: std::sync::atomic::AtomicU32,
    wedged_after: Duration,
    new_consumer: NewConsumer,
    deliverer: Deliverer,
    dead_letters: LogProducer,
    dead_letter_topic: String,
    metrics: Arc<Metrics>,
    offsets: Mutex<Offsets>,
    cursor_save: Duration,
}

impl Loop {
    /// Runs until `shutdown` becomes true; then commits what was handled.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let Loop {
            consumer,
            new_consumer,
            deliverer,
            dead_letters,
            dead_letter_topic,
            metrics,
            cursor_save,
            wedged_after,
        } = self;
        let handler = Arc::new(Handler {
            consumer: Mutex::new(Arc::new(consumer)),
            replaced: Default::default(),
            wedged_after,
            new_consumer,
            deliverer,
            dead_letters,
            dead_letter_topic,
            metrics,
            offsets: Mutex::new(Offsets::default()),
            cursor_save,
        });
        let mut lanes = Vec::with_capacity(LANES);
        let mut tasks = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            let (tx, rx) = mpsc::channel(LANE_QUEUE);
            lanes.push(tx);
            tasks.push(tokio::spawn(handler.clone().lane(rx, shutdown.clone())));
        }
        handler.poll(&lanes, shutdown).await;
        drop(lanes);
        for t in tasks {
            let _ = t.await;
        }
        let consumer = handler.consumer();
        drop(handler);
        // On a thread of its own, holding the last reference: the commit and the close may never return.
        let (done, closed) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => tracing::warn!(error = %e,
                    "final commit failed; records since the last commit will be handled again"),
            }
            drop(consumer);
            let _ = done.send(());
        });
        if tokio::time::timeout(CLOSE_WITHIN, closed).await.is_err() {
            tracing::warn!(
                within_s = CLOSE_WITHIN.as_secs(),
                "the consumer did not commit and leave its group in time; stopping anyway \
                 (records since the last commit will be handled again)"
            );
        }
        tracing::info!("delivery loop stopped");
    }
}

/// What the poll loop does next.
enum Next {
    Record(rdkafka::error::KafkaResult<OwnedMessage>),
    /// The consumer has been out of its group too long: replace it (the state seen, for the log).
    Replace(String),
    Check,
}

impl Handler {
    fn consumer(&self) -> Arc<WorkerConsumer> {
        lock(&self.consumer).clone()
    }

    /// Takes records from Kafka and hands each to its lane, until shutdown.
    async fn poll(&self, lanes: &[mpsc::Sender<Job>], mut shutdown: watch::Receiver<bool>) {
        let mut check = tokio::time::interval(STATISTICS_INTERVAL);
        loop {
            let consumer = self.consumer();
            let next = tokio::select! {
                r = consumer.recv() => Next::Record(r.map(|m| m.detach())),
                _ = check.tick() => {
                    let health = lock(&consumer.context().health);
                    if health.up() {
                        self.replaced.store(0, Ordering::Relaxed);
                    }
                    let limit = wedge_limit(self.wedged_after, self.replaced.load(Ordering::Relaxed));
                    match health.wedged(Instant::now(), limit) {
                        Some(state) => Next::Replace(state.to_owned()),
                        None => Next::Check,
                    }
                }
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let received = match next {
                Next::Record(r) => r,
                Next::Check => continue,
                Next::Replace(state) => {
                    drop(consumer);
                    if !self.replace_consumer(&state, lanes, &mut shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            if consumer.context().rebalanced.swap(false, Ordering::SeqCst) && !self.forget_tracking(lanes).await {
                return;
            }
            let record = match received {
                Ok(r) => r,
                Err(e) => {
                    lifecycle::metrics::bump(&self.metrics.consumer_errors);
                    tracing::warn!(error = %e, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            lock(&self.offsets).dispatched(record.topic(), record.partition(), record.offset());
            let lane = lane_of(record.key(), lanes.len());
            let sent = tokio::select! {
                r = lanes[lane].send(Job::Record(record)) => r.is_ok(),
                _ = shutdown.wait_for(|s| *s) => false,
            };
            if !sent {
                return;
            }
        }
    }

    /// After a rebalance or a new consumer: the offsets handed out, the cursors and the member lists are
    /// forgotten (the partitions' new owners decide). False when the lanes are gone.
    async fn forget_tracking(&self, lanes: &[mpsc::Sender<Job>]) -> bool {
        lock(&self.offsets).partitions.clear();
        self.deliverer.forget_members();
        for lane in lanes {
            if lane.send(Job::ClearCursors).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Replaces a wedged consumer with a new one, which joins the group afresh. The old one leaves its
    /// subscription and closes on a thread of its own (it may never manage to). False on shutdown.
    async fn replace_consumer(
        &self,
        state: &str,
        lanes: &[mpsc::Sender<Job>],
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let replaced = self.replaced.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            state,
            out_for_s = wedge_limit(self.wedged_after, replaced).as_secs(),
            "the kafka consumer has been out of its group too long; replacing it with a new one"
        );
        let fresh = loop {
            match (self.new_consumer)() {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not make a new kafka consumer; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait_for(|s| *s) => return false,
                    }
                }
            }
        };
        let old = std::mem::replace(&mut *lock(&self.consumer), Arc::new(fresh));
        lifecycle::metrics::bump(&self.metrics.consumer_replacements);
        std::thread::spawn(move || {
            // Should it find its group again, it must not take partitions it would never read.
            old.unsubscribe();
            drop(old);
        });
        self.forget_tracking(lanes).await
    }

    /// One lane: handles its jobs in order until its queue closes or shutdown, and writes the delivery
    /// cursors that moved at most once per `cursor_save` (and before forgetting them, and at the end).
    async fn lane(self: Arc<Self>, mut jobs: mpsc::Receiver<Job>, mut shutdown: watch::Receiver<bool>) {
        let mut cursors = Cursors::new(CURSOR_CAPACITY / LANES);
        let mut save_at: Option<tokio::time::Instant> = None;
        loop {
            let job = tokio::select! {
                job = jobs.recv() => job,
                () = sleep_until(save_at), if save_at.is_some() => {
                    save_at = (!self.save_cursors(&mut cursors).await).then(|| tokio::time::Instant::now() + self.cursor_save);
                    continue;
                }
            };
            let Some(job) = job else { break };
            if *shutdown.borrow() {
                break;
            }
            let record = match job {
                Job::ClearCursors => {
                    self.save_cursors(&mut cursors).await;
                    cursors.clear();
                    save_at = None;
                    continue;
                }
                Job::Record(r) => r,
            };
            if !self.handle_record(&record, &mut cursors, &mut shutdown).await {
                break;
            }
            lifecycle::metrics::bump(&self.metrics.records);
            let store = lock(&self.offsets).completed(record.topic(), record.partition(), record.offset());
            if let Some(offset) = store
                && let Err(e) = self.consumer().store_offset(record.topic(), record.partition(), offset)
            {
                tracing::warn!(error = %e, "offset not stored; records may be handled again");
            }
            if save_at.is_none() && cursors.has_unsaved() {
                save_at = Some(tokio::time::Instant::now() + self.cursor_save);
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.save_cursors(&mut cursors)).await;
    }

    /// Writes the cursors' unsaved moves; answers whether they are all saved (if not, they wait for the
    /// next turn: a cursor behind only costs duplicates after a failover).
    async fn save_cursors(&self, cursors: &mut Cursors) -> bool {
        if !cursors.has_unsaved() {
            return true;
        }
        match self.deliverer.save_cursors(cursors).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "delivery cursors not saved; trying again later");
                false
            }
        }
    }

    /// Handles one record until it succeeds. Returns false when shutdown interrupted it (offset not stored).
    async fn handle_record(
        &self,
        record: &OwnedMessage,
        cursors: &mut Cursors,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let payload = record.payload().unwrap_or_default();
        let event = match event::decode(payload) {
            Ok(e) => e,
            Err(e) => return self.dead_letter(record, &e.to_string(), shutdown).await,
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let handled = match &event {
                LogEvent::MessageSent(m) => self.deliverer.handle(cursors, m).await,
                LogEvent::ReceiptRecorded(r) => self.deliverer.deliver_receipt(r).await,
                LogEvent::ConversationCreated(_) | LogEvent::MembersChanged(_) => {
                    self.deliverer.apply_membership(&event).await
                }
            };
            match handled {
                Ok(outcome) => {
                    // age_ms: how long after its append the record was handled (read only when debug is on;
                    // a skewed clock only skews this log line).
                    tracing::debug!(event_id = %event.event_id(), ?outcome,
                        age_ms = ?record.timestamp().to_millis().map(|t| chat_model::now_ms() - t), "handled");
                    return true;
                }
                Err(e) => {
                    lifecycle::metrics::bump(&self.metrics.retries);
                    tracing::warn!(event_id = %event.event_id(), error = %e,
                        retry_in_ms = backoff.as_millis() as u64, "delivery failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.wait_for(|s| *s) => return false,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Copies an unusable record to the dead-letter topic, with the reason and its origin in headers.
    async fn dead_letter(&self, record: &OwnedMessage, reason: &str, shutdown: &mut watch::Receiver<bool>) -> bool {
        tracing::warn!(
            partition = record.partition(),
            offset = record.offset(),
            reason,
            "record to the dead-letter topic"
        );
        let origin = format!("{}/{}/{}", record.topic(), record.partition(), record.offset());
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header { key: "error", value: Some(reason) })
                .insert(Header { key: "origin", value: Some(origin.as_str()) });
            let out = Record {
                topic: &self.dead_letter_topic,
                partition: None,
                key: record.key(),
                payload: record.payload().unwrap_or_default(),
                headers,
            };
            match self.dead_letters.write(out).await {
                Ok(_) => {
                    lifecycle::metrics::bump(&self.metrics.dead_letters);
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dead-letter write failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait_for(|s| *s) => return false,
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The lane of a record: by its key (the conversation id), so one conversation's records keep their order.
fn lane_of(key: Option<&[u8]>, lanes: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.unwrap_or_default().hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_is_stored_only_after_every_earlier_one_completes() {
        let mut o = Offsets::default();
        for off in 10..15 {
            o.dispatched("t", 0, off);
        }
        assert_eq!(o.completed("t", 0, 12), None, "10 and 11 are still pending");
        assert_eq!(o.completed("t", 0, 10), Some(10));
        assert_eq!(o.completed("t", 0, 11), Some(12), "11 completes the prefix up to 12");
        assert_eq!(o.completed("t", 0, 14), None, "13 is pending");
        assert_eq!(o.completed("t", 0, 13), Some(14));
        assert_eq!(o.completed("t", 0, 13), None, "completed twice");
    }

    #[test]
    fn partitions_are_tracked_apart_and_a_reset_forgets_what_was_handed_out() {
        let mut o = Offsets::default();
        o.dispatched("t", 0, 5);
        o.dispatched("t", 1, 7);
        assert_eq!(o.completed("t", 1, 7), Some(7));
        o.partitions.clear();
        assert_eq!(o.completed("t", 0, 5), None, "handed out before the reset");
        o.dispatched("t", 0, 3);
        assert_eq!(o.completed("t", 0, 3), Some(3));
    }

    #[test]
    fn a_consumer_out_of_its_group_for_the_limit_is_wedged_and_back_up_it_is_not() {
        const WEDGED_AFTER: Duration = Duration::from_secs(60);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut h = GroupHealth::default();
        h.observe("up", "steady", t0);
        assert!(h.up());
        assert_eq!(h.wedged(t0 + s(600), WEDGED_AFTER), None, "up for ten minutes");
        h.observe("query-coord", "wait-incr-unassign-to-complete", t0 + s(10));
        h.observe("wait-coord", "wait-incr-unassign-to-complete", t0 + s(15));
        assert!(!h.up());
        assert_eq!(h.wedged(t0 + s(69), WEDGED_AFTER), None, "out since 10 s, not 15 s: 59 s");
        assert_eq!(h.wedged(t0 + s(70), WEDGED_AFTER), Some("wait-coord (join state wait-incr-unassign-to-complete)"));
        h.observe("up", "wait-join", t0 + s(71));
        assert_eq!(h.wedged(t0 + s(500), WEDGED_AFTER), None, "its coordinator found again");
    }

    #[test]
    fn replacements_in_a_row_wait_longer_each_time_up_to_sixteen_times() {
        let m = Duration::from_secs(60);
        assert_eq!(wedge_limit(m, 0), m);
        assert_eq!(wedge_limit(m, 1), m * 2);
        assert_eq!(wedge_limit(m, 4), m * 16);
        assert_eq!(wedge_limit(m, 40), m * 16);
    }

    #[test]
    fn one_key_always_takes_the_same_lane() {
        let a = lane_of(Some(b"conversation-a"), LANES);
        assert_eq!(a, lane_of(Some(b"conversation-a"), LANES));
        assert!(a < LANES);
        assert!(lane_of(None, LANES) < LANES);
    }
}
