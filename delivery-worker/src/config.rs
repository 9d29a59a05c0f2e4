//! The delivery worker's configuration: environment variables (and the same names as flags), checked at start.

use std::time::Duration;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(name = "delivery-worker", version, about = "Delivery worker: from the log to every device")]
pub struct Config {
    #[arg(long, env = "WORKER_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    pub kafka_brokers: String,
    #[arg(long, env = "WORKER_EVENTS_TOPIC", default_value = "chat.events.v1")]
    pub events_topic: String,
    /// Records that cannot be decoded go here, with the reason in a header.
    #[arg(long, env = "WORKER_DEAD_LETTER_TOPIC", default_value = "chat.events.v1.dlq")]
    pub dead_letter_topic: String,
    /// The consumer group; every worker of a deployment shares it.
    #[arg(long, env = "WORKER_GROUP_ID", default_value = "delivery-worker")]
    pub group_id: String,
    #[arg(long, env = "WORKER_CASSANDRA_NODES", default_value = "127.0.0.1:19042", value_delimiter = ',')]
    pub cassandra_nodes: Vec<String>,
    #[arg(long, env = "WORKER_CASSANDRA_KEYSPACE", default_value = "chat")]
    pub cassandra_keyspace: String,
    #[arg(long, env = "WORKER_REDIS_URL", default_value = "redis://127.0.0.1:16379/")]
    pub redis_url: String,
    #[arg(long, env = "WORKER_REDIS_PREFIX", default_value = "chat:")]
    pub redis_prefix: String,
    /// Deadline of one push to a gateway; past it the device counts as offline (its inbox gets the message).
    #[arg(long, env = "WORKER_PUSH_TIMEOUT_MS", default_value_t = 2_000)]
    pub push_timeout_ms: u64,
    /// History's retention, as the chat service's CHAT_MESSAGE_TTL_SECS (the worker writes history rows).
    #[arg(long, env = "WORKER_MESSAGE_TTL_SECS", default_value_t = 0)]
    pub message_ttl_secs: i32,
    /// Longest time a conversation's member list is reused before it is read again. The list changes only
    /// through events of the conversation's own partition, which this worker applies in log order
    /// (forgetting the list), and every list is forgotten at a rebalance; the bound only limits how long a
    /// list read from a store changed by hand is trusted.
    #[arg(long, env = "WORKER_MEMBERS_CACHE_MS", default_value_t = 60_000)]
    pub members_cache_ms: u64,
    /// Longest time a user's device list is reused before it is read again. A gateway that registers a
    /// device replaces the user's device-list stamp in presence, and a list is reused only while the stamp
    /// read before it is unchanged (never while presence is unreadable); the bound only limits how long a
    /// list read from a store changed by hand is trusted.
    #[arg(long, env = "WORKER_DEVICES_CACHE_MS", default_value_t = 60_000)]
    pub devices_cache_ms: u64,
    /// How often each lane writes the delivery cursors that moved (at most one write per conversation per
    /// interval). Longer saves writes; on a failover, the messages of the last interval are delivered again
    /// (duplicates, which clients drop). 0: after every record.
    #[arg(long, env = "WORKER_CURSOR_SAVE_MS", default_value_t = 1_000)]
    pub cursor_save_ms: u64,
    /// How long the Kafka consumer may be out of its group (its coordinator unknown or unreachable) before
    /// it is replaced by a new one, which joins afresh; doubled after each replacement that did not help, up
    /// to 16 times. Counted in worker_consumer_replacements_total.
    #[arg(long, env = "WORKER_GROUP_WEDGED_AFTER_MS", default_value_t = 60_000)]
    pub group_wedged_after_ms: u64,
    /// Where to serve the counters (`GET /metrics`, Prometheus text format); unset: not served.
    #[arg(long, env = "WORKER_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Mutual TLS towards the gateways (GRPC_TLS_*).
    #[command(flatten)]
    pub grpc_tls: lifecycle::grpc_tls::GrpcTlsArgs,
    /// TLS to Kafka (KAFKA_TLS*).
    #[command(flatten)]
    pub kafka_tls: lifecycle::kafka_tls::KafkaTlsArgs,
    /// TLS to Redis: a rediss:// WORKER_REDIS_URL, and REDIS_TLS_CA_FILE.
    #[command(flatten)]
    pub redis_tls: lifecycle::redis_tls::RedisTlsArgs,
}

impl lifecycle::Config for Config {
    fn validate(&self) -> Result<(), String> {
        if self.kafka_brokers.trim().is_empty() {
            return Err("WORKER_KAFKA_BROKERS is empty".into());
        }
        if self.group_id.is_empty() {
            return Err("WORKER_GROUP_ID is empty".into());
        }
        if self.cursor_save_ms > 60_000 {
            return Err("WORKER_CURSOR_SAVE_MS must be at most 60000".into());
        }
        if !(5_000..=3_600_000).contains(&self.group_wedged_after_ms) {
            return Err("WORKER_GROUP_WEDGED_AFTER_MS must be between 5000 and 3600000".into());
        }
        if !(50..=60_000).contains(&self.push_timeout_ms) {
            return Err("WORKER_PUSH_TIMEOUT_MS must be between 50 and 60000".into());
        }
        self.grpc_tls.load()?;
        self.kafka_tls.validate()?;
        self.redis_tls.load(&self.redis_url)?;
        Ok(())
    }
}

impl Config {
    /// A Kafka client configuration with what every client of the worker starts from (the brokers, TLS with
    /// KAFKA_TLS*, see [`lifecycle::kafka_tls::KafkaTlsArgs::client_properties`]).
    pub fn kafka_client(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        for (key, value) in self.kafka_tls.client_properties(&self.kafka_brokers) {
            c.set(key, value);
        }
        c
    }

    pub fn store_config(&self) -> chat_store::StoreConfig {
        chat_store::StoreConfig {
            nodes: self.cassandra_nodes.clone(),
            keyspace: self.cassandra_keyspace.clone(),
            request_timeout: Duration::from_secs(5),
            message_ttl_secs: self.message_ttl_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks a command's flags and variables (unique names among the flattened groups, and so on)
    /// only when debug assertions are on, and then by panicking at start: here rather than in a process.
    #[test]
    fn the_flags_and_variables_are_well_formed() {
        super::Config::command().debug_assert();
    }
}
