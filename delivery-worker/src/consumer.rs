//! The loop around the step: poll a record, decode it, handle it until it succeeds, store its offset.
//! Offsets are stored only after a record is fully handled, and committed in the background and at
//! shutdown, so delivery is at least once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chat_model::event::{self, LogEvent};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message as _};
use tokio::sync::watch;

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
}

impl Loop {
    /// Runs until `shutdown` becomes true; then commits what was handled.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut cursors = Cursors::new(CURSOR_CAPACITY);
        loop {
            let received = tokio::select! {
                r = self.consumer.recv() => r,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            if self.consumer.context().rebalanced.swap(false, Ordering::SeqCst) {
                cursors.clear();
            }
            let record = match received {
                Ok(r) => r,
                Err(e) => {
                    Metrics::add(&self.metrics.consumer_errors);
                    tracing::warn!(error = %e, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if !self.handle_record(&record, &mut cursors, &mut shutdown).await {
                break;
            }
            Metrics::add(&self.metrics.records);
            if let Err(e) = self.consumer.store_offset_from_message(&record) {
                tracing::warn!(error = %e, "offset not stored; the record may be handled again");
            }
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "final commit failed; records since the last commit will be handled again")
            }
        }
        tracing::info!("delivery loop stopped");
    }

    /// Handles one record until it succeeds. Returns false when shutdown interrupted it (offset not stored).
    async fn handle_record(
        &self,
        record: &BorrowedMessage<'_>,
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
    async fn dead_letter(
        &self,
        record: &BorrowedMessage<'_>,
        reason: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
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
