//! Where a partition's writes go when this replica does not own it: to its owner, whose advertised address
//! the owner wrote to the store when it took the partition. A forwarded call carries [`FORWARDED`], and a
//! replica never forwards such a call again (it answers `unavailable` instead), so a stale owner row can
//! cost one retry, never a loop.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chat_store::CassandraStore;
use proto::v1::chat_service_client::ChatServiceClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::app::MAX_GRPC_MESSAGE_BYTES;
use crate::error::ChatError;

/// The metadata key marking a call forwarded by another replica.
pub const FORWARDED: &str = "x-chat-forwarded";
/// On a forwarded `CreateConversation`: the id the forwarding replica chose (in the owner's partition).
pub const CONVERSATION_ID: &str = "x-chat-conversation-id";

/// How long a partition's owner, read from the store, is used before it is read again.
const OWNER_TTL: Duration = Duration::from_secs(5);

pub struct Router {
    store: CassandraStore,
    topic: String,
    /// This replica's own advertised address (a row naming it is stale: it no longer owns the partition).
    me: String,
    scheme: &'static str,
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
    owners: Mutex<HashMap<i32, (String, Instant)>>,
    clients: Mutex<HashMap<String, ChatServiceClient<Channel>>>,
}

impl Router {
    pub fn new(
        store: CassandraStore,
        topic: &str,
        me: &str,
        tls: Option<ClientTlsConfig>,
        timeout: Duration,
    ) -> Router {
        Router {
            store,
            topic: topic.to_owned(),
            me: me.to_owned(),
            scheme: if tls.is_some() { "https" } else { "http" },
            tls,
            timeout,
            owners: Mutex::default(),
            clients: Mutex::default(),
        }
    }

    /// A client of the partition's owner.
    pub async fn owner(&self, partition: i32) -> Result<ChatServiceClient<Channel>, ChatError> {
        let cached =
            lock(&self.owners).get(&partition).filter(|(_, at)| at.elapsed() < OWNER_TTL).map(|(a, _)| a.clone());
        let addr = match cached {
            Some(a) => a,
            None => {
                let a = self
                    .store
                    .partition_owner(&self.topic, partition)
                    .await?
                    .ok_or_else(|| ChatError::Owner(format!("partition {partition} has no owner yet")))?;
                lock(&self.owners).insert(partition, (a.clone(), Instant::now()));
                a
            }
        };
        if addr == self.me {
            self.forget(partition);
            return Err(ChatError::Owner(format!("partition {partition} is moving")));
        }
        if let Some(c) = lock(&self.clients).get(&addr) {
            return Ok(c.clone());
        }
        let mut endpoint = Endpoint::from_shared(format!("{}://{addr}", self.scheme))
            .map_err(|e| ChatError::Owner(format!("owner address {addr}: {e}")))?
            .timeout(self.timeout)
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| ChatError::Owner(e.to_string()))?;
        }
        let client = ChatServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
        lock(&self.clients).insert(addr, client.clone());
        Ok(client)
    }

    /// Forgets a partition's owner (a forwarded call failed): the next call reads it again.
    pub fn forget(&self, partition: i32) {
        lock(&self.owners).remove(&partition);
    }

    /// Marks a request as forwarded, with the caller's deadline.
    pub fn forwarded<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(self.timeout);
        r.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        r
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
