//! The chat service's configuration: environment variables (and the same names as flags), checked at start.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// Every setting of a chat-service process. `--help` lists them with their environment variables.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-service", version, about = "Chat service: sequences, logs and stores messages")]
pub struct Config {
    /// Address of the gRPC server (chat.v1.ChatService, health, reflection).
    #[arg(long, env = "CHAT_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "CHAT_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    pub kafka_brokers: String,
    /// The event log topic.
    #[arg(long, env = "CHAT_EVENTS_TOPIC", default_value = "chat.events.v1")]
    pub events_topic: String,
    /// Cassandra/ScyllaDB contact points (host:port), comma separated.
    #[arg(long, env = "CHAT_CASSANDRA_NODES", default_value = "127.0.0.1:19042", value_delimiter = ',')]
    pub cassandra_nodes: Vec<String>,
    #[arg(long, env = "CHAT_CASSANDRA_KEYSPACE", default_value = "chat")]
    pub cassandra_keyspace: String,
    /// Longest time a send may take end to end (membership, numbering, the transaction's commit) before it
    /// fails as retryable.
    #[arg(long, env = "CHAT_SEND_TIMEOUT_MS", default_value_t = 10_000)]
    pub send_timeout_ms: u64,
    /// How long history keeps a message, in seconds; 0 keeps it forever. Reading before what is kept is
    /// answered OUT_OF_RANGE, naming the first number still held.
    #[arg(long, env = "CHAT_MESSAGE_TTL_SECS", default_value_t = 0)]
    pub message_ttl_secs: i32,
    /// How long the owner of a conversation's partition trusts that a sender is a member before reading
    /// membership again. Removals go through the owner, which forgets the removed members at once, and a
    /// partition's memory starts empty each time it is acquired; the bound only limits how long a store
    /// changed by hand goes unseen. 0: read on every send.
    #[arg(long, env = "CHAT_MEMBERS_CACHE_MS", default_value_t = 60_000)]
    pub members_cache_ms: u64,
    /// Timeout of one store request.
    #[arg(long, env = "CHAT_STORE_TIMEOUT_MS", default_value_t = 5_000)]
    pub store_timeout_ms: u64,
    /// The address other replicas forward a partition's writes to (default: the bound gRPC address).
    #[arg(long, env = "CHAT_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// The consumer group of the chat-service replicas: it decides which replica owns which partition.
    #[arg(long, env = "CHAT_OWNER_GROUP_ID", default_value = "chat-owners")]
    pub owner_group_id: String,
    /// The delivery workers' consumer group (their WORKER_GROUP_ID): what it committed is in the store, so a
    /// new owner reads the log only from there.
    #[arg(long, env = "CHAT_PROJECTOR_GROUP_ID", default_value = "delivery-worker")]
    pub projector_group_id: String,
    /// Most events in one transaction of a partition's owner.
    #[arg(long, env = "CHAT_BATCH_MAX", default_value_t = 256)]
    pub batch_max: usize,
    /// How long the first send of a batch waits for others, in microseconds.
    #[arg(long, env = "CHAT_BATCH_LINGER_US", default_value_t = 500)]
    pub batch_linger_us: u64,
    /// The least time from one transaction of a partition to its next, in microseconds: a busy partition
    /// commits at most once an interval (unless CHAT_BATCH_MAX sends pile up sooner), each transaction
    /// carrying more; one sending less often commits after the linger alone (0: as soon as the last is done).
    #[arg(long, env = "CHAT_BATCH_INTERVAL_US", default_value_t = 20_000)]
    pub batch_interval_us: u64,
    /// The broker aborts a transaction left open longer than this (a stalled owner's), in milliseconds.
    #[arg(long, env = "CHAT_TRANSACTION_TIMEOUT_MS", default_value_t = 10_000)]
    pub transaction_timeout_ms: u64,
    /// How long a replica that stopped answering keeps its partitions (the owners' group session timeout).
    #[arg(long, env = "CHAT_OWNER_SESSION_TIMEOUT_MS", default_value_t = 6_000)]
    pub owner_session_timeout_ms: u64,
    /// Where to serve the counters (`GET /metrics`, Prometheus text format); unset: not served.
    #[arg(long, env = "CHAT_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// TLS to Kafka (KAFKA_TLS*).
    #[command(flatten)]
    pub kafka_tls: lifecycle::kafka_tls::KafkaTlsArgs,
    /// Mutual TLS with the gateways (GRPC_TLS_*).
    #[command(flatten)]
    pub grpc_tls: lifecycle::grpc_tls::GrpcTlsArgs,
}

impl lifecycle::Config for Config {
    fn validate(&self) -> Result<(), String> {
        if self.kafka_brokers.trim().is_empty() {
            return Err("CHAT_KAFKA_BROKERS is empty".into());
        }
        if self.events_topic.is_empty() || self.events_topic.len() > 249 {
            return Err("CHAT_EVENTS_TOPIC must be 1 to 249 characters".into());
        }
        if self.cassandra_nodes.iter().all(|n| n.trim().is_empty()) {
            return Err("CHAT_CASSANDRA_NODES is empty".into());
        }
        if self.message_ttl_secs < 0 {
            return Err("CHAT_MESSAGE_TTL_SECS must be 0 (forever) or positive".into());
        }
        if self.members_cache_ms > 60_000 {
            return Err("CHAT_MEMBERS_CACHE_MS must be at most 60000".into());
        }
        if !(100..=120_000).contains(&self.send_timeout_ms) {
            return Err("CHAT_SEND_TIMEOUT_MS must be between 100 and 120000".into());
        }
        if !(1..=10_000).contains(&self.batch_max) {
            return Err("CHAT_BATCH_MAX must be between 1 and 10000".into());
        }
        if self.batch_linger_us > 100_000 {
            return Err("CHAT_BATCH_LINGER_US must be at most 100000".into());
        }
        if self.batch_interval_us > 100_000 {
            return Err("CHAT_BATCH_INTERVAL_US must be at most 100000".into());
        }
        // A send may wait the linger or the interval before its commit even starts; the commit itself may
        // take half the send timeout (the log's call timeout).
        if (self.batch_linger_us + self.batch_interval_us) * 4 > self.send_timeout_ms * 1_000 {
            return Err("CHAT_BATCH_LINGER_US plus CHAT_BATCH_INTERVAL_US must be at most a quarter of \
                        CHAT_SEND_TIMEOUT_MS"
                .into());
        }
        if !(1_000..=900_000).contains(&self.transaction_timeout_ms) {
            return Err("CHAT_TRANSACTION_TIMEOUT_MS must be between 1000 and 900000".into());
        }
        if !(1_000..=300_000).contains(&self.owner_session_timeout_ms) {
            return Err("CHAT_OWNER_SESSION_TIMEOUT_MS must be between 1000 and 300000".into());
        }
        if self.owner_group_id.is_empty() || self.projector_group_id.is_empty() {
            return Err("CHAT_OWNER_GROUP_ID and CHAT_PROJECTOR_GROUP_ID must not be empty".into());
        }
        self.grpc_tls.load()?;
        self.kafka_tls.validate()?;
        Ok(())
    }
}

impl Config {
    /// How this replica's Kafka clients reach the brokers.
    pub fn kafka(&self) -> crate::kafka_client::KafkaClient {
        crate::kafka_client::KafkaClient { brokers: self.kafka_brokers.clone(), tls: self.kafka_tls.clone() }
    }

    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }

    pub fn store_config(&self) -> chat_store::StoreConfig {
        chat_store::StoreConfig {
            nodes: self.cassandra_nodes.clone(),
            keyspace: self.cassandra_keyspace.clone(),
            request_timeout: Duration::from_millis(self.store_timeout_ms),
            message_ttl_secs: self.message_ttl_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};
    use lifecycle::Config as _;

    /// The configuration the command line `chat-service args…` gives.
    fn parse(args: &[&str]) -> super::Config {
        super::Config::try_parse_from(["chat-service"].iter().chain(args)).expect("parses")
    }

    /// clap checks a command's flags and variables (unique names among the flattened groups, and so on)
    /// only when debug assertions are on, and then by panicking at start: here rather than in a process.
    #[test]
    fn the_flags_and_variables_are_well_formed() {
        super::Config::command().debug_assert();
    }

    #[test]
    fn a_batch_interval_beyond_a_tenth_of_a_second_is_refused() {
        let interval = |us: &str| parse(&["--batch-interval-us", us]);
        assert_eq!(interval("0").validate(), Ok(()), "0: commit as soon as the last commit ended");
        assert_eq!(interval("100000").validate(), Ok(()));
        let refused = interval("100001").validate().expect_err("refused");
        assert!(refused.contains("CHAT_BATCH_INTERVAL_US"), "{refused}");
    }

    #[test]
    fn a_batch_wait_that_leaves_a_send_no_time_to_commit_is_refused() {
        let tight = ["--send-timeout-ms", "200", "--batch-linger-us", "10000", "--batch-interval-us"];
        let ok = parse(&[&tight[..], &["40000"]].concat());
        assert_eq!(ok.validate(), Ok(()), "50 ms of waiting is a quarter of 200 ms");
        let refused = parse(&[&tight[..], &["40001"]].concat()).validate().expect_err("refused");
        assert!(refused.contains("CHAT_SEND_TIMEOUT_MS"), "{refused}");
    }
}
