//! The end-to-end harness: starts the platform's services in this process, on port 0, against the real
//! Kafka, Cassandra and Redis that `infra/local/servers.sh` runs, and drives them as clients do.
//!
//! Each [`Platform`] has its own Kafka topic, consumer group and Redis key prefix; all share one keyspace,
//! where every test's data is keyed by fresh conversation and user ids. Nothing here fakes a server.

pub mod arrivals;
pub mod centrifugo;
pub mod client;
pub mod cluster;
/// The test device is the client crate's ([`chat_client::device`]), with tokens signed by the test secret.
pub mod device {
    pub use chat_client::device::*;

    /// Tokens for `user`, signed with the platform's test secret, as the test devices present them.
    pub fn test_token(user: &str) -> TokenSource {
        let user = user.to_owned();
        std::sync::Arc::new(move || crate::client::token(&user, crate::platform::JWT_SECRET))
    }
}
pub mod group;
pub mod load;
pub mod logcheck;
pub mod pki;
pub mod platform;
pub mod prove;
pub mod raw;

pub use client::{WsClient, token};
pub use platform::{Platform, PlatformOptions};
