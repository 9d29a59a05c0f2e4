//! Completing the log (P9). A number the worker delivered from the store before its record arrived (a gap
//! fill) is normally in the log already, or about to be: replicas race, and N+1's record may come first.
//! But a sender that died between claiming N and appending it leaves N in the store and never in the log,
//! unless its client retries. So, some time after a gap fill, the repair reads the send's idempotency row:
//! still not published, it appends the message to the log itself and marks it published. Should the sender
//! only have been slow, the log holds N twice, which is harmless: every reader goes by (conversation, seq).

use std::sync::Arc;
use std::time::Duration;

use chat_model::Message;
use chat_model::event::{self, LogEvent};
use chat_store::CassandraStore;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Semaphore;

/// Checks waiting at once; past that, gap fills are not checked (and a warning says so).
const MAX_PENDING: usize = 10_000;

#[derive(Clone)]
pub struct LogRepair {
    store: CassandraStore,
    producer: FutureProducer,
    topic: String,
    delay: Duration,
    pending: Arc<Semaphore>,
}

impl LogRepair {
    /// Appends to `topic` with `producer` (idempotent, acks=all) what is still unpublished `delay` after its
    /// gap fill; `delay` must exceed the longest a send may take to publish.
    pub fn new(store: CassandraStore, producer: FutureProducer, topic: &str, delay: Duration) -> LogRepair {
        LogRepair { store, producer, topic: topic.to_owned(), delay, pending: Arc::new(Semaphore::new(MAX_PENDING)) }
    }

    /// Checks `m` (just delivered from the store) after the delay, in the background.
    pub fn check_later(&self, m: &Message) {
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            tracing::warn!(conversation_id = %m.conversation_id, seq = %m.seq, "too many log checks waiting; not checked");
            return;
        };
        let (this, m) = (self.clone(), m.clone());
        tokio::spawn(async move {
            let _permit = permit;
            tokio::time::sleep(this.delay).await;
            if let Err(e) = this.check(&m).await {
                tracing::warn!(conversation_id = %m.conversation_id, seq = %m.seq, error = %e, "log check failed");
            }
        });
    }

    /// Appends `m` to the log if its send is still unpublished; answers whether it did.
    pub async fn check(&self, m: &Message) -> anyhow::Result<bool> {
        let record = self.store.idempotency_record(m.conversation_id, &m.sender_id, &m.client_msg_id).await?;
        // No row: the idempotency window has passed (long after any publish). Another number: not this send.
        if !record.is_some_and(|e| e.seq == m.seq && !e.published) {
            return Ok(false);
        }
        let payload = event::encode(&LogEvent::MessageSent(m.clone()), m.sent_at_ms);
        let key = m.conversation_id.to_string();
        self.producer
            .send(FutureRecord::to(&self.topic).key(&key).payload(&payload), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("append: {e}"))?;
        self.store.mark_published(m).await?;
        tracing::warn!(conversation_id = %m.conversation_id, seq = %m.seq, "appended a message its sender never published");
        Ok(true)
    }
}
