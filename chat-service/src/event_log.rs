//! The Kafka event log, as the chat service sees it: append an event, durably.
//!
//! A librdkafka producer can stay stuck after its only broker restarts (every record timing out although the
//! broker is back: confluentinc/librdkafka#3009), and an idempotent producer that hits a fatal error refuses
//! everything after it. Either way no send would succeed again until the process restarts, so the log
//! replaces its producer when one has failed for longer than its patience without a single success, or
//! reports a fatal error. A send in flight on the old producer fails (retryable); its retry is published
//! by the new one, and a record that both published is one duplicate in the log, which readers drop by
//! number.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chat_model::event::{self, LogEvent};
use rdkafka::config::ClientConfig;

use crate::kafka_client::{KafkaClient, record_headers};
use lifecycle::kafka_producer::{LogProducer, Record};
use rdkafka::producer::Producer;

/// The name of the producer's polling thread.
const REPORTS_THREAD: &str = "receipt-reports";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("kafka: {0}")]
    Kafka(String),
}

/// An idempotent, acks=all producer on the events topic. A record's key is its conversation id, so
/// one conversation's events share a partition.
#[derive(Clone)]
pub struct KafkaEventLog {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    topic: String,
    /// The topic's partition count: each event goes to its conversation's partition (`partition_of`).
    partitions: i32,
    /// The producer in use, and its generation (how many were replaced before it).
    producer: RwLock<(u64, LogProducer)>,
    /// When the producer in use last delivered a record, or was created (ms since the epoch).
    last_success_ms: AtomicI64,
    /// Failing this long with no success replaces the producer.
    patience: Duration,
    replaced: AtomicU64,
}

impl KafkaEventLog {
    /// Records not acknowledged within `delivery_timeout` fail (and the send with them: never acknowledged
    /// and lost); a producer failing for three times as long with no success is replaced.
    pub fn new(
        kafka: &KafkaClient,
        topic: &str,
        partitions: i32,
        delivery_timeout: Duration,
    ) -> Result<Self, LogError> {
        Self::with_patience(kafka, topic, partitions, delivery_timeout, delivery_timeout * 3)
    }

    pub fn with_patience(
        kafka: &KafkaClient,
        topic: &str,
        partitions: i32,
        delivery_timeout: Duration,
        patience: Duration,
    ) -> Result<Self, LogError> {
        let mut config = kafka.config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", delivery_timeout.as_millis().to_string())
            .set("client.id", "chat-service");
        let producer = LogProducer::create(&config, REPORTS_THREAD).map_err(|e| LogError::Kafka(e.to_string()))?;
        Ok(KafkaEventLog {
            inner: Arc::new(Inner {
                config,
                topic: topic.to_owned(),
                partitions,
                producer: RwLock::new((0, producer)),
                last_success_ms: AtomicI64::new(chat_model::now_ms()),
                patience,
                replaced: AtomicU64::new(0),
            }),
        })
    }

    /// Appends `event`; returns once the broker has it on every in-sync replica.
    pub async fn append(&self, ev: &LogEvent, created_at_ms: i64) -> Result<(), LogError> {
        let payload = event::encode(ev, created_at_ms);
        let key = ev.conversation_id().to_string();
        let partition = chat_model::partition_of(ev.conversation_id(), self.inner.partitions);
        let (generation, producer) = self.inner.current();
        match producer
            .write(Record {
                topic: &self.inner.topic,
                partition: Some(partition),
                key: Some(key.as_bytes()),
                payload: &payload,
                headers: record_headers(),
            })
            .await
        {
            Ok(_) => {
                self.inner.last_success_ms.fetch_max(chat_model::now_ms(), Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.inner.renew_if_stuck(generation, &producer);
                Err(LogError::Kafka(e.to_string()))
            }
        }
    }

    /// How many times the producer was replaced.
    pub fn replaced(&self) -> u64 {
        self.inner.replaced.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn current(&self) -> (u64, LogProducer) {
        let guard = self.producer.read().unwrap_or_else(|p| p.into_inner());
        (guard.0, guard.1.clone())
    }

    /// Replaces the producer of `generation` if it reported a fatal error, or has had no success for longer
    /// than the patience; once per generation (concurrent failures replace it once).
    fn renew_if_stuck(&self, generation: u64, producer: &LogProducer) {
        let fatal = producer.get().client().fatal_error();
        let silent_ms = chat_model::now_ms() - self.last_success_ms.load(Ordering::Relaxed);
        if fatal.is_none() && silent_ms < i64::try_from(self.patience.as_millis()).unwrap_or(i64::MAX) {
            return;
        }
        let mut guard = self.producer.write().unwrap_or_else(|p| p.into_inner());
        if guard.0 != generation {
            return;
        }
        match LogProducer::create(&self.config, REPORTS_THREAD) {
            Ok(fresh) => {
                tracing::warn!(generation, ?fatal, silent_ms, "kafka producer replaced: it was failing");
                *guard = (generation + 1, fresh);
                self.last_success_ms.store(chat_model::now_ms(), Ordering::Relaxed);
                self.replaced.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "kafka producer could not be replaced; keeping the old one"),
        }
    }
}

#[cfg(test)]
mod tests {
    use chat_model::{ConversationId, DeviceId, Message, MessageId, Seq, UserId};

    use super::*;

    fn event() -> Result<LogEvent, Box<dyn std::error::Error>> {
        Ok(LogEvent::MessageSent(Message {
            conversation_id: ConversationId::generate(),
            seq: Seq::FIRST,
            message_id: MessageId::generate(),
            sender_id: UserId::parse("alice")?,
            sender_device_id: DeviceId::parse("phone")?,
            client_msg_id: chat_model::ClientMsgId::parse("c1")?,
            body: chat_model::Body::parse("hello".into())?,
            sent_at_ms: chat_model::now_ms(),
        }))
    }

    /// No broker listens on the address: every append times out (librdkafka checks timeouts about once a
    /// second). Replacement is what is checked here; with a real broker, fault scenario 5 restarts Kafka
    /// under load. No check depends on how fast the machine is: a patience of an hour is never used up by
    /// a few failures, and a patience of zero is used up by every one.
    #[tokio::test]
    async fn a_producer_failing_past_its_patience_is_replaced_once_per_generation()
    -> Result<(), Box<dyn std::error::Error>> {
        let delivery = Duration::from_millis(200);
        let ev = event()?;

        // Failures within the patience replace nothing.
        let patient = KafkaEventLog::with_patience(
            &KafkaClient::plaintext("127.0.0.1:9"),
            "t",
            1,
            delivery,
            Duration::from_secs(3600),
        )?;
        for _ in 0..2 {
            assert!(patient.append(&ev, 0).await.is_err());
        }
        assert_eq!(patient.replaced(), 0, "replaced within its patience");

        // Past it, each failure of the producer in use replaces it, once.
        let impatient =
            KafkaEventLog::with_patience(&KafkaClient::plaintext("127.0.0.1:9"), "t", 1, delivery, Duration::ZERO)?;
        for n in 1..=2 {
            assert!(impatient.append(&ev, 0).await.is_err());
            assert_eq!(impatient.replaced(), n, "one replacement per failed generation");
        }
        // Appends in flight together on one producer fail together: it is replaced once, not once each.
        let together = futures::future::join_all((0..4).map(|_| impatient.append(&ev, 0))).await;
        assert!(together.iter().all(Result::is_err));
        assert_eq!(impatient.replaced(), 3, "concurrent failures of one generation replace it once");
        Ok(())
    }
}
