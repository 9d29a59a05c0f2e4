//! The delivery workers' consumer group as Kafka describes it: whether it has settled after a change.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::platform::kafka_brokers;

/// A group's state as seen once.
#[derive(Debug)]
pub struct GroupView {
    pub state: String,
    pub members: usize,
    /// How many members hold each partition of the topic.
    pub holders: HashMap<i32, usize>,
}

/// Describes `group` (a classic consumer group) and decodes its members' assignments of `topic`.
pub fn describe(group: &str, topic: &str) -> anyhow::Result<GroupView> {
    let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create()?;
    let list = client.fetch_group_list(Some(group), Duration::from_secs(5))?;
    let g = list.groups().first().context("group not described")?;
    let mut holders = HashMap::new();
    for m in g.members() {
        let Some(bytes) = m.assignment() else { continue };
        for (t, partitions) in decode_assignment(bytes).context("member assignment")? {
            if t == topic {
                for p in partitions {
                    *holders.entry(p).or_default() += 1;
                }
            }
        }
    }
    Ok(GroupView { state: g.state().to_owned(), members: g.members().len(), holders })
}

impl GroupView {
    /// Stable, with `members` members, and each of the topic's `partitions` held by exactly one of them.
    pub fn settled(&self, members: usize, partitions: i32) -> bool {
        self.state == "Stable"
            && self.members == members
            && (0..partitions).all(|p| self.holders.get(&p) == Some(&1))
            && self.holders.len() == partitions as usize
    }
}

/// Waits until the group has settled with `members` members over `partitions` partitions; answers how long
/// that took.
pub async fn wait_settled(group: &str, topic: &str, members: usize, partitions: i32) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < Duration::from_secs(90) {
        let (g, t) = (group.to_owned(), topic.to_owned());
        // A group Kafka cannot describe yet (no member has joined) is not settled.
        match tokio::task::spawn_blocking(move || describe(&g, &t)).await? {
            Ok(view) if view.settled(members, partitions) => return Ok(started.elapsed()),
            Ok(view) => last = Some(format!("{view:?}")),
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("group {group} did not settle on {members} members within 90 s; last seen: {}", last.unwrap_or_default())
}

/// The consumer protocol's assignment (any version): topics with their partitions; user data ignored.
fn decode_assignment(b: &[u8]) -> anyhow::Result<Vec<(String, Vec<i32>)>> {
    let mut r = Reader { b, at: 0 };
    let _version = r.i16()?;
    let topics = r.i32()?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = r.i16()?;
        let name = String::from_utf8(r.take(len.max(0) as usize)?.to_vec())?;
        let n = r.i32()?;
        let mut partitions = Vec::new();
        for _ in 0..n.max(0) {
            partitions.push(r.i32()?);
        }
        out.push((name, partitions));
    }
    Ok(out)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> anyhow::Result<&[u8]> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len()).context("assignment truncated")?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn i16(&mut self) -> anyhow::Result<i16> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into()?))
    }

    fn i32(&mut self) -> anyhow::Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into()?))
    }
}

/// The partitions of `topic` each member of `group` holds, by the member's client id.
pub fn assignments(group: &str, topic: &str) -> anyhow::Result<HashMap<String, Vec<i32>>> {
    let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create()?;
    let list = client.fetch_group_list(Some(group), Duration::from_secs(5))?;
    let g = list.groups().first().context("group not described")?;
    let mut out: HashMap<String, Vec<i32>> = HashMap::new();
    for m in g.members() {
        let held = out.entry(m.client_id().to_owned()).or_default();
        let Some(bytes) = m.assignment() else { continue };
        for (t, partitions) in decode_assignment(bytes).context("member assignment")? {
            if t == topic {
                held.extend(partitions);
            }
        }
    }
    Ok(out)
}

/// Per partition of `partitions`, how many records of `topic` the `group` has not yet committed: the
/// committed records (data only: a transaction's commit marker takes an offset too, and is never a record
/// a consumer handles) from the group's committed offset to the partition's end.
pub fn lag_of(group: &str, topic: &str, partitions: &[i32]) -> anyhow::Result<HashMap<i32, i64>> {
    let offsets: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).set("group.id", group).create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = offsets.committed_offsets(tpl, Duration::from_secs(5))?;
    let mut out = HashMap::new();
    for e in committed.elements() {
        let from = e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(0);
        out.insert(e.partition(), records_from(topic, e.partition(), from)?);
    }
    Ok(out)
}

/// How many committed records `partition` holds from `from` to its end as it was when asked (its high
/// watermark then): records appended while counting are not counted, so a partition written without pause
/// is counted as surely as a resting one.
fn records_from(topic: &str, partition: i32, from: i64) -> anyhow::Result<i64> {
    use rdkafka::Message as _;
    use rdkafka::error::KafkaError;
    let (_, high) = {
        let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create()?;
        c.fetch_watermarks(topic, partition, Duration::from_secs(5))?
    };
    if from >= high {
        return Ok(0);
    }
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", "e2e-lag-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(from))?;
    reader.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    // The last offsets below `high` may be transaction markers or aborted records, which a read_committed
    // reader never sees: once nothing comes for a while, or a record at or past `high - 1` came, it is done.
    let quiet = Duration::from_secs(3);
    let mut last_seen = Instant::now();
    let mut n = 0;
    loop {
        anyhow::ensure!(Instant::now() < deadline, "partition {partition} of {topic} not read to {high} in 30 s");
        match reader.poll(Duration::from_millis(200)) {
            None if last_seen.elapsed() >= quiet => return Ok(n),
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(n),
            Some(Err(e)) => anyhow::bail!("reading {topic}/{partition}: {e}"),
            Some(Ok(m)) => {
                last_seen = Instant::now();
                if m.offset() < high {
                    n += 1;
                }
                if m.offset() >= high - 1 {
                    return Ok(n);
                }
            }
        }
    }
}

/// How many records of `topic` the `group` has not yet committed, over all partitions.
pub fn lag(group: &str, topic: &str) -> anyhow::Result<i64> {
    let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create()?;
    let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    let t = metadata.topics().first().context("no such topic")?;
    let partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    Ok(lag_of(group, topic, &partitions)?.values().sum())
}

/// The broker (node id) leading partition `partition` of `topic` now. Blocking.
pub fn leader_of(topic: &str, partition: i32) -> anyhow::Result<i32> {
    let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create()?;
    let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let t = metadata.topics().first().context("no metadata for the topic")?;
    let p = t.partitions().iter().find(|p| p.id() == partition).context("no such partition")?;
    Ok(p.leader())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_decode_and_truncation_is_an_error() -> anyhow::Result<()> {
        let mut b = vec![0, 1, 0, 0, 0, 1, 0, 3];
        b.extend_from_slice(b"top");
        b.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 7, 0, 0, 0, 0]);
        assert_eq!(decode_assignment(&b)?, vec![("top".to_owned(), vec![4, 7])]);
        assert!(decode_assignment(&b[..10]).is_err());
        Ok(())
    }
}
