//! The loop around the step: poll a record, hand it to its conversation's lane, and store offsets as
//! records complete. Records of one conversation (one key) always go to the same lane and are handled there
//! one after the other, in log order; lanes run concurrently, so one slow conversation (or gateway) does not
//! hold the others back. An offset is stored only once every record before it in its partition is fully
//! handled (the contiguous completed prefix), and committed in the background and at shutdown, so delivery
//! is at least once.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chat_model::event::{self, LogEvent};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message as _};
use tokio::sync::{mpsc, watch};

use crate::cursor::Cursors;
use crate::deliver::Deliverer;
use crate::metrics::Metrics;

/// Conversations whose delivery cursor is kept in memory.
const CURSOR_CAPACITY: usize = 100_000;

/// Notes rebalances, after which the in-memory cursors are dropped (another worker may have moved on).
#[derive(Default)]
pub struct WorkerContext {
    rebalanced: Arc<AtomicBool>,
}

impl ClientContext for WorkerContext {}

impl ConsumerContext for WorkerContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(?rebalance, "rebalanced");
        self.rebalanced.store(true, Ordering::SeqCst);
    }
}

pub type WorkerConsumer = StreamConsumer<WorkerContext>;

pub struct Loop {
    pub consumer: WorkerConsumer,
    pub deliverer: Deliverer,
    pub dead_letters: FutureProducer,
    pub dead_letter_topic: String,
    pub metrics: Arc<Metrics>,
    /// How long a lane lets delivery cursors' moves wait before writing them.
    pub cursor_save: Duration,
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
    consumer: Arc<WorkerConsumer>,
    deliverer: Deliverer,
    dead_letters: FutureProducer,
    dead_letter_topic: String,
    metrics: Arc<Metrics>,
    offsets: Mutex<Offsets>,
    cursor_save: Duration,
}

impl Loop {
    /// Runs until `shutdown` becomes true; then commits what was handled.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let Loop { consumer, deliverer, dead_letters, dead_letter_topic, metrics, cursor_save } = self;
        let handler = Arc::new(Handler {
            consumer: Arc::new(consumer),
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
        match handler.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "final commit failed; records since the last commit will be handled again")
            }
        }
        tracing::info!("delivery loop stopped");
    }
}

impl Handler {
    /// Takes records from Kafka and hands each to its lane, until shutdown.
    async fn poll(&self, lanes: &[mpsc::Sender<Job>], mut shutdown: watch::Receiver<bool>) {
        loop {
            let received = tokio::select! {
                r = self.consumer.recv() => r,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            if self.consumer.context().rebalanced.swap(false, Ordering::SeqCst) {
                lock(&self.offsets).partitions.clear();
                for lane in lanes {
                    if lane.send(Job::ClearCursors).await.is_err() {
                        return;
                    }
                }
            }
            let record = match received {
                Ok(r) => r.detach(),
                Err(e) => {
                    Metrics::add(&self.metrics.consumer_errors);
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
            Metrics::add(&self.metrics.records);
            let store = lock(&self.offsets).completed(record.topic(), record.partition(), record.offset());
            if let Some(offset) = store
                && let Err(e) = self.consumer.store_offset(record.topic(), record.partition(), offset)
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
                    tracing::debug!(event_id = %event.event_id(), ?outcome, "handled");
                    return true;
                }
                Err(e) => {
                    Metrics::add(&self.metrics.retries);
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
            let mut out = FutureRecord::to(&self.dead_letter_topic)
                .payload(record.payload().unwrap_or_default())
                .headers(headers);
            if let Some(key) = record.key() {
                out = out.key(key);
            }
            match self.dead_letters.send(out, Duration::from_secs(5)).await {
                Ok(_) => {
                    Metrics::add(&self.metrics.dead_letters);
                    return true;
                }
                Err((e, _)) => {
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
    fn one_key_always_takes_the_same_lane() {
        let a = lane_of(Some(b"conversation-a"), LANES);
        assert_eq!(a, lane_of(Some(b"conversation-a"), LANES));
        assert!(a < LANES);
        assert!(lane_of(None, LANES) < LANES);
    }
}
