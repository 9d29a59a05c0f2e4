//! The Kafka event log, as the chat service sees it: append an event, durably.

use std::time::Duration;

use chat_model::event::{self, LogEvent};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("kafka: {0}")]
    Kafka(String),
}

/// An idempotent, acks=all producer on the events topic. A record's key is its conversation id, so
/// one conversation's events share a partition.
#[derive(Clone)]
pub struct KafkaEventLog {
    producer: FutureProducer,
    topic: String,
}

impl KafkaEventLog {
    pub fn new(brokers: &str, topic: &str, delivery_timeout: Duration) -> Result<Self, LogError> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            // A record not acknowledged in time fails, and the send fails with it: never acknowledged and lost.
            .set("message.timeout.ms", delivery_timeout.as_millis().to_string())
            .set("client.id", "chat-service")
            .create()
            .map_err(|e| LogError::Kafka(e.to_string()))?;
        Ok(KafkaEventLog { producer, topic: topic.to_owned() })
    }

    /// Appends `event`; returns once the broker has it on every in-sync replica.
    pub async fn append(&self, ev: &LogEvent, created_at_ms: i64) -> Result<(), LogError> {
        let payload = event::encode(ev, created_at_ms);
        let key = ev.conversation_id().to_string();
        let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
        self.producer
            .send(record, Duration::from_secs(0))
            .await
            .map(|_| ())
            .map_err(|(e, _)| LogError::Kafka(e.to_string()))
    }
}
