//! The log is the source of truth (P9): `chatctl rebuild` replays every partition of the events topic from
//! its beginning into a keyspace (normally a fresh one), through the same projection the delivery workers
//! apply; `chatctl diff` compares what two keyspaces hold of each conversation.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::kafka_client::KafkaClient;
use chat_model::ConversationId;
use chat_model::event::{self, LogEvent};
use chat_store::{CassandraStore, StoreError};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message as _, Offset, TopicPartitionList};

/// Projections in flight at once while replaying (message events commute; membership changes wait).
const IN_FLIGHT: usize = 128;

/// What a rebuild read and applied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub partitions: usize,
    pub events: u64,
    /// Records that do not decode (the workers dead-letter them too).
    pub undecodable: u64,
}

/// Replays the whole topic into `store`, partition by partition, oldest first.
pub async fn rebuild(kafka: &KafkaClient, topic: &str, store: &CassandraStore) -> anyhow::Result<Replayed> {
    let partitions = crate::owner::group::partition_count(&crate::owner::kafka::LogConfig {
        kafka: kafka.clone(),
        topic: topic.to_owned(),
        transactional_prefix: String::new(),
        call_timeout: Duration::from_secs(10),
        transaction_timeout: Duration::from_secs(10),
        projector_group: String::new(),
    })
    .await?;
    let mut replayed = Replayed { partitions: partitions as usize, ..Replayed::default() };
    for p in 0..partitions {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Option<LogEvent>, String>>(1024);
        let (kafka, topic) = (kafka.clone(), topic.to_owned());
        let reader = tokio::task::spawn_blocking(move || read_partition(&kafka, &topic, p, &tx));
        let mut pending = FuturesUnordered::new();
        while let Some(next) = rx.recv().await {
            let Some(event) = next.map_err(anyhow::Error::msg)? else {
                replayed.undecodable += 1;
                continue;
            };
            replayed.events += 1;
            let commutes = matches!(event, LogEvent::MessageSent(_) | LogEvent::ReceiptRecorded(_));
            if !commutes {
                // A membership change applies after everything before it, and before anything after it.
                while let Some(r) = pending.next().await {
                    r?;
                }
                store.project(&event).await?;
                continue;
            }
            pending.push(project(store, event));
            if pending.len() >= IN_FLIGHT
                && let Some(r) = pending.next().await
            {
                r?;
            }
        }
        while let Some(r) = pending.next().await {
            r?;
        }
        reader.await??;
    }
    Ok(replayed)
}

async fn project(store: &CassandraStore, event: LogEvent) -> Result<(), StoreError> {
    store.project(&event).await
}

/// Reads one partition from its beginning to its end (its last stable offset), sending each record's event
/// (`None` for one that does not decode). Blocking.
fn read_partition(
    kafka: &KafkaClient,
    topic: &str,
    partition: i32,
    tx: &tokio::sync::mpsc::Sender<Result<Option<LogEvent>, String>>,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer<crate::owner::kafka::TailReader> = kafka
        .config()
        .set("group.id", "chatctl-rebuild")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create_with_context(crate::owner::kafka::TailReader)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut idle = 0;
    loop {
        match consumer.poll(Duration::from_millis(500)) {
            None => {
                idle += 1;
                anyhow::ensure!(idle < 120, "partition {partition}: no record and no end within 60 s");
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(()),
            Some(Err(e)) => anyhow::bail!("partition {partition}: {e}"),
            Some(Ok(record)) => {
                idle = 0;
                let event = event::decode(record.payload().unwrap_or_default()).ok();
                if tx.blocking_send(Ok(event)).is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// The differences between two keyspaces, conversation by conversation: those of `scope` (all the
/// conversations either keyspace holds when `None`). Each difference is a row one side has and the other
/// lacks (or holds otherwise), prefixed with the keyspace that has it.
pub async fn diff(
    a: (&str, &CassandraStore),
    b: (&str, &CassandraStore),
    scope: Option<Vec<ConversationId>>,
) -> anyhow::Result<(usize, Vec<String>)> {
    let ids: BTreeSet<ConversationId> = match scope {
        Some(ids) => ids.into_iter().collect(),
        None => {
            let mut ids: BTreeSet<ConversationId> = a.1.conversation_ids().await?.into_iter().collect();
            ids.extend(b.1.conversation_ids().await?);
            ids
        }
    };
    let mut differences = Vec::new();
    for id in &ids {
        let (left, right) = tokio::try_join!(a.1.snapshot(*id), b.1.snapshot(*id))?;
        for row in left.rows.difference(&right.rows) {
            differences.push(format!("only in {}: {row}", a.0));
        }
        for row in right.rows.difference(&left.rows) {
            differences.push(format!("only in {}: {row}", b.0));
        }
    }
    Ok((ids.len(), differences))
}
