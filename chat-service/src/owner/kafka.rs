//! One partition of the events topic in Kafka, as its owner writes and reads it: a transactional producer
//! whose `transactional.id` names the topic and the partition (so a new owner's `init_transactions` fences
//! the old one), and a `read_committed` reader of the partition's tail.
//!
//! librdkafka's transactional calls block; they run on the blocking pool.

use std::time::Duration;

use chat_model::event::{self, LogEvent};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaError};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message as _, Offset, TopicPartitionList};

use super::{PartitionLog, WriteError};
use crate::kafka_client::{KafkaClient, record_headers};
use lifecycle::kafka_producer::{LogProducer, Record, Reports};

/// The context of a reader that reads a partition to its end: reaching the end is reported as an error
/// event (`enable.partition.eof`), which is what it waits for, not something to log.
pub struct TailReader;

impl rdkafka::ClientContext for TailReader {
    fn error(&self, error: KafkaError, reason: &str) {
        if !end_of_partition(&error) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

/// Whether `error` only says a partition was read to its end: the error callback gets it as a global error
/// of code PartitionEOF, a consumer's poll as PartitionEOF.
fn end_of_partition(error: &KafkaError) -> bool {
    matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF))
}

impl rdkafka::consumer::ConsumerContext for TailReader {}

/// How to reach the log, shared by the partitions' writers and readers.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The brokers, and TLS to them.
    pub kafka: KafkaClient,
    pub topic: String,
    /// Prefix of the partitions' transactional ids (`{prefix}.{topic}.{partition}`).
    pub transactional_prefix: String,
    /// Longest a transactional call (init, commit, abort) may take.
    pub call_timeout: Duration,
    /// The broker aborts a transaction left open longer than this (a stalled owner's).
    pub transaction_timeout: Duration,
    /// The consumer group of the projectors (the delivery workers): what they committed is in the store.
    pub projector_group: String,
}

impl LogConfig {
    pub fn transactional_id(&self, partition: i32) -> String {
        format!("{}.{}.{}", self.transactional_prefix, self.topic, partition)
    }
}

/// A partition's writer and reader.
pub struct KafkaPartition {
    config: LogConfig,
    partition: i32,
    producer: LogProducer,
    /// The highest offset this writer was answered or read (-1: none): every record it writes comes after.
    last: i64,
    /// Whether the next transaction is already begun: begun right after a commit, in the same blocking call
    /// (a begun transaction is local to the producer until its first record, so it never times out).
    begun: bool,
}

fn fenced(e: &RDKafkaError) -> bool {
    matches!(
        e.code(),
        RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch
    )
}

/// Runs a blocking librdkafka call on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, WriteError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| WriteError::Unknown(format!("blocking call failed: {e}")))
}

impl KafkaPartition {
    /// Creates the partition's transactional producer and fences every earlier writer of the partition
    /// (`init_transactions`, which also aborts a transaction an earlier owner left open).
    pub async fn open(config: LogConfig, partition: i32) -> Result<KafkaPartition, WriteError> {
        let producer = Self::producer(&config, partition).await?;
        Ok(KafkaPartition { config, partition, producer, last: -1, begun: false })
    }

    async fn producer(config: &LogConfig, partition: i32) -> Result<LogProducer, WriteError> {
        let settings = config
            .kafka
            .config()
            .set("transactional.id", config.transactional_id(partition))
            .set("transaction.timeout.ms", config.transaction_timeout.as_millis().to_string())
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", config.call_timeout.as_millis().to_string())
            .set("client.id", format!("chat-service-owner-{partition}"))
            .clone();
        let producer = LogProducer::create(&settings, "owner-reports")
            .map_err(|e| WriteError::Unknown(format!("creating the producer: {e}")))?;
        let timeout = config.call_timeout;
        let p = producer.clone();
        match blocking(move || p.get().init_transactions(timeout)).await? {
            Ok(()) => Ok(producer),
            Err(KafkaError::Transaction(e)) if fenced(&e) => Err(WriteError::Fenced),
            Err(e) => Err(WriteError::Unknown(format!("init_transactions: {e}"))),
        }
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Aborts the open transaction; an abort that fails leaves the outcome unknown. It may take half the
    /// call timeout: a batch whose records were not acknowledged in time (a call timeout) is then settled
    /// within 1.5 call timeouts, before its senders' calls end (two call timeouts), so that they hear
    /// `unavailable` from the owner rather than a deadline of their own.
    async fn abort(&self, why: String) -> WriteError {
        let p = self.producer.clone();
        let timeout = self.config.call_timeout / 2;
        match blocking(move || p.get().abort_transaction(timeout)).await {
            Ok(Ok(())) => WriteError::Aborted(why),
            Ok(Err(KafkaError::Transaction(e))) if fenced(&e) => WriteError::Fenced,
            Ok(Err(e)) => WriteError::Unknown(format!("{why}; abort failed: {e}")),
            Err(e) => e,
        }
    }
}

/// A commit taking this long is logged with the time of each of its steps.
const SLOW_COMMIT: Duration = Duration::from_millis(50);

/// Waits, in steps of a millisecond, until librdkafka holds nothing more to deliver or report. rdkafka's
/// `commit_transaction` flushes first, and its flush waits in whole polls of 100 ms while anything is
/// left: often the report of the batch's last record, still being served on the poll thread after its
/// future resolved. Measured: that race alone put 100 to 200 ms on about one commit in fifty.
fn drain(producer: &BaseProducer<Reports>, within: Duration) -> Result<(), KafkaError> {
    let deadline = std::time::Instant::now() + within;
    while producer.in_flight_count() > 0 {
        if std::time::Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        // Ends after its millisecond with a timeout while anything is left: the loop asks again.
        let _ = producer.flush(Duration::from_millis(1));
    }
    Ok(())
}

impl PartitionLog for KafkaPartition {
    async fn commit(&mut self, events: Vec<LogEvent>) -> Result<Vec<i64>, WriteError> {
        let started = std::time::Instant::now();
        let p = self.producer.clone();
        if !std::mem::take(&mut self.begun) {
            match blocking(move || p.get().begin_transaction()).await? {
                Ok(()) => {}
                Err(KafkaError::Transaction(e)) if fenced(&e) => return Err(WriteError::Fenced),
                // A producer that cannot begin is in a state only a new one leaves.
                Err(e) => return Err(WriteError::Unknown(format!("begin_transaction: {e}"))),
            }
        }
        let mut deliveries = Vec::with_capacity(events.len());
        for ev in &events {
            let payload = event::encode(ev, created_at(ev));
            let key = ev.conversation_id().to_string();
            match self.producer.send(Record {
                topic: &self.config.topic,
                partition: Some(self.partition),
                key: Some(key.as_bytes()),
                payload: &payload,
                headers: record_headers(),
            }) {
                Ok(d) => deliveries.push(d),
                Err(e) => return Err(self.abort(format!("producing: {e}")).await),
            }
        }
        // The records' acknowledgements first (each gives its offset): then the commit's own flush has
        // nothing left to wait for (rdkafka's flush would otherwise poll in 100 ms steps).
        let begun = started.elapsed();
        let mut offsets = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            match tokio::time::timeout(self.config.call_timeout, d).await {
                Ok(Ok(Ok(offset))) => offsets.push(offset),
                Ok(Ok(Err(e))) => return Err(self.abort(format!("producing: {e}")).await),
                Ok(Err(_)) => return Err(self.abort("delivery report lost".into()).await),
                Err(_) => return Err(self.abort("records not acknowledged in time".into()).await),
            }
        }
        if let Some(why) = out_of_place(self.last, &offsets) {
            return Err(self.abort(why).await);
        }
        let acked = started.elapsed();
        let p = self.producer.clone();
        let timeout = self.config.call_timeout;
        let committed = blocking(move || {
            let at = std::time::Instant::now();
            let drained = drain(p.get(), timeout);
            let drain_took = at.elapsed();
            let committed = drained.and_then(|()| p.get().commit_transaction(timeout));
            // The next transaction begun here saves its own trip to the blocking pool; a failure to begin
            // is met again, and answered, by the next batch.
            let next = committed.is_ok() && p.get().begin_transaction().is_ok();
            (committed, drain_took, next)
        });
        let (committed, drain_took, next) = committed.await?;
        self.begun = next;
        let took = started.elapsed();
        if took >= SLOW_COMMIT {
            tracing::info!(
                partition = self.partition, records = events.len(), ?took, ?begun, produced = ?(acked - begun),
                drained = ?drain_took, committed = ?(took - acked - drain_took), "slow commit"
            );
        }
        match committed {
            Ok(()) => {
                self.last = offsets.iter().copied().fold(self.last, i64::max);
                Ok(offsets)
            }
            Err(KafkaError::Transaction(e)) if fenced(&e) => Err(WriteError::Fenced),
            Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => Err(self.abort(format!("commit: {e}")).await),
            // Timed out, retriable or fatal for another reason: the commit may have happened.
            Err(e) => Err(WriteError::Unknown(format!("commit: {e}"))),
        }
    }

    async fn reopen(&mut self) -> Result<(), WriteError> {
        self.begun = false;
        self.producer = Self::producer(&self.config, self.partition).await?;
        Ok(())
    }

    async fn read_from(&mut self, from: i64) -> Result<Vec<(i64, LogEvent)>, WriteError> {
        let events = read_partition(&self.config, self.partition, from, self.config.call_timeout * 3).await?;
        self.last = events.iter().map(|(offset, _)| *offset).fold(self.last, i64::max);
        Ok(events)
    }
}

/// Why the offsets a transaction's records were answered (in the order they were sent) cannot all be
/// theirs, if so: each must come after `last`, the highest offset the writer has seen, and after the one
/// before it. A record answered with an earlier offset was taken by the broker for a duplicate of an earlier
/// record (a producer sequence number given twice) and is not in the log.
fn out_of_place(last: i64, offsets: &[i64]) -> Option<String> {
    let mut before = last;
    for offset in offsets {
        if *offset <= before {
            return Some(format!(
                "a record was answered with offset {offset}, not after {before}: the broker took it for an \
                 earlier record"
            ));
        }
        before = *offset;
    }
    None
}

/// The committed events of one partition from `from` to its end (its last stable offset), with offsets.
/// A record that does not decode is skipped (the workers dead-letter it). Fails after `within`.
pub async fn read_partition(
    config: &LogConfig,
    partition: i32,
    from: i64,
    within: Duration,
) -> Result<Vec<(i64, LogEvent)>, WriteError> {
    let (kafka, topic) = (config.kafka.clone(), config.topic.clone());
    blocking(move || {
        let consumer: BaseConsumer<TailReader> = kafka
            .config()
            .set("group.id", "chat-service-owner-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create_with_context(TailReader)
            .map_err(|e| WriteError::Unknown(format!("creating the reader: {e}")))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Offset(from.max(0)))
            .map_err(|e| WriteError::Unknown(e.to_string()))?;
        consumer.assign(&tpl).map_err(|e| WriteError::Unknown(format!("assigning: {e}")))?;
        let deadline = std::time::Instant::now() + within;
        let mut out = Vec::new();
        loop {
            if std::time::Instant::now() > deadline {
                return Err(WriteError::Unknown(format!(
                    "partition {partition} not read to its end within {within:?}"
                )));
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(out),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "reading the partition");
                    continue;
                }
                Some(Ok(record)) => {
                    if let Ok(ev) = event::decode(record.payload().unwrap_or_default()) {
                        out.push((record.offset(), ev));
                    }
                }
            }
        }
    })
    .await?
}

/// The first offset of `partition` the projectors (the delivery workers' group) have not committed: the
/// store holds everything before it. 0 when they never committed.
pub async fn projected_offset(config: &LogConfig, partition: i32) -> Result<i64, String> {
    let (kafka, topic, group, timeout) =
        (config.kafka.clone(), config.topic.clone(), config.projector_group.clone(), config.call_timeout);
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka
            .config()
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, partition);
        let committed = consumer.committed_offsets(tpl, timeout).map_err(|e| e.to_string())?;
        let offset = committed.elements().first().map(|e| e.offset()).unwrap_or(Offset::Invalid);
        Ok(match offset {
            Offset::Offset(n) if n >= 0 => n,
            _ => 0,
        })
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The time an event happened, which its envelope carries.
fn created_at(ev: &LogEvent) -> i64 {
    match ev {
        LogEvent::MessageSent(m) => m.sent_at_ms,
        LogEvent::ConversationCreated(c) => c.created_at_ms,
        LogEvent::MembersChanged(c) => c.at_ms,
        LogEvent::ReceiptRecorded(_) => chat_model::now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_answered_with_offsets_not_after_what_the_writer_saw_are_not_committed() {
        assert_eq!(out_of_place(-1, &[0, 1, 5]), None);
        assert_eq!(out_of_place(89, &[91, 93]), None);
        assert!(out_of_place(93, &[93]).is_some(), "the offset of a record already seen");
        assert!(out_of_place(89, &[96, 93]).is_some(), "a record before the one sent before it");
        assert!(out_of_place(89, &[96, 96]).is_some());
    }

    #[test]
    fn the_end_of_a_partition_is_not_an_error_but_a_broker_failure_is() {
        assert!(end_of_partition(&KafkaError::PartitionEOF(3)));
        assert!(end_of_partition(&KafkaError::Global(RDKafkaErrorCode::PartitionEOF)));
        assert!(!end_of_partition(&KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)));
    }
}
