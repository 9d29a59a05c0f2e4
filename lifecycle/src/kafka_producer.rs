//! The services' Kafka producer: rdkafka's `BaseProducer` with a polling thread of its own, which hands
//! each record's delivery report (its offset, or why it failed) to a one-shot channel. Used by the chat
//! service's partition writers and its receipts, and by the workers' dead letters.
//!
//! Why not rdkafka's `FutureProducer`, which does the same: its thread polls in windows of 100 ms, and each
//! window ends in a busy wait (rdkafka rounds the time left down to whole milliseconds, librdkafka's wait
//! returns up to a millisecond early, and the loop asks again with 0 until the window is over). With one
//! producer per owned partition, that was most of an idle replica's CPU: 50 to 60 ms a second for 8
//! partitions (perf: `Deadline::elapsed` and `clock_gettime` on the "producer polling" threads), and each
//! idle worker's dead-letter producer still spent 9 ms a second on it. Here a window lasts
//! [`POLL_WINDOW`]; a report is still served the moment it arrives.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::Message as _;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use tokio::sync::oneshot;

/// How long one poll of the thread lasts: the thread ends at most this long after the last handle on the
/// producer is dropped.
const POLL_WINDOW: Duration = Duration::from_secs(1);

/// Where a record's delivery report goes.
pub type Report = oneshot::Sender<KafkaResult<i64>>;

/// Routes each delivery report to its record's channel.
pub struct Reports;

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Report>;

    fn delivery(&self, result: &DeliveryResult<'_>, report: Box<Report>) {
        // The receiver may be gone (its commit gave up): nobody waits for this report any more.
        let _ = report.send(match result {
            Ok(m) => Ok(m.offset()),
            Err((e, _)) => Err(e.clone()),
        });
    }
}

/// One record to write.
pub struct Record<'a> {
    pub topic: &'a str,
    /// `None`: the partition its key hashes to.
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub headers: OwnedHeaders,
}

/// A producer and its polling thread; clones share both. The thread stops once every clone is dropped.
#[derive(Clone)]
pub struct LogProducer {
    producer: Arc<BaseProducer<Reports>>,
    _poller: Arc<Poller>,
}

/// Tells the polling thread to stop when dropped.
struct Poller {
    stop: Arc<AtomicBool>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl LogProducer {
    /// A producer with `config`, whose polling thread is named `thread` (as `top -H` shows it).
    pub fn create(config: &ClientConfig, thread: &str) -> KafkaResult<LogProducer> {
        let producer: Arc<BaseProducer<Reports>> = Arc::new(config.create_with_context(Reports)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (polled, stopped) = (producer.clone(), stop.clone());
        std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    polled.poll(POLL_WINDOW);
                }
            })
            .map_err(|e| KafkaError::ClientCreation(format!("starting the polling thread: {e}")))?;
        Ok(LogProducer { producer, _poller: Arc::new(Poller { stop }) })
    }

    /// Queues `record`; its report (the offset it was written at) comes on the answer. A full queue fails
    /// at once.
    pub fn send(&self, record: Record<'_>) -> Result<oneshot::Receiver<KafkaResult<i64>>, KafkaError> {
        let (report, answer) = oneshot::channel();
        let mut queued =
            BaseRecord::with_opaque_to(record.topic, Box::new(report)).payload(record.payload).headers(record.headers);
        if let Some(p) = record.partition {
            queued = queued.partition(p);
        }
        if let Some(k) = record.key {
            queued = queued.key(k);
        }
        self.producer.send(queued).map_err(|(e, _)| e)?;
        Ok(answer)
    }

    /// Sends `record` and waits for its report: the offset, or why it was not written (within the
    /// producer's `message.timeout.ms`; a lost report counts as a failure).
    pub async fn write(&self, record: Record<'_>) -> KafkaResult<i64> {
        self.send(record)?.await.unwrap_or(Err(KafkaError::Canceled))
    }

    /// The producer, for its transactional calls.
    pub fn get(&self) -> &BaseProducer<Reports> {
        &self.producer
    }
}
