//! How every Kafka client of the chat service and of chatctl reaches the brokers: their addresses and TLS
//! (`KAFKA_TLS`, see [`lifecycle::kafka_tls`]).

use lifecycle::kafka_tls::KafkaTlsArgs;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};

#[derive(Debug, Clone, Default)]
pub struct KafkaClient {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    pub tls: KafkaTlsArgs,
}

impl KafkaClient {
    /// Plaintext, as the local servers and the tests run.
    pub fn plaintext(brokers: &str) -> KafkaClient {
        KafkaClient { brokers: brokers.to_owned(), tls: KafkaTlsArgs::default() }
    }

    /// A client configuration with what every client starts from (the brokers, TLS; see
    /// [`KafkaTlsArgs::client_properties`]); the caller adds what its client needs.
    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (key, value) in self.tls.client_properties(&self.brokers) {
            c.set(key, value);
        }
        c
    }
}

/// The headers of a record of the events topic ([`chat_model::event::RECORD_HEADERS`]).
pub fn record_headers() -> OwnedHeaders {
    chat_model::event::RECORD_HEADERS
        .iter()
        .fold(OwnedHeaders::new_with_capacity(2), |h, (key, value)| h.insert(Header { key, value: Some(*value) }))
}
