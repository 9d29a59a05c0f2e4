//! The gateway's clients of the chat-service replicas: round robin, skipping a replica for a moment after it
//! failed to answer, and trying the next replica when one is unavailable. Every chat-service call is safe to
//! repeat (a send is idempotent by its client id; the rest are reads or idempotent writes), so a call that
//! fails on one replica is simply made again on another. Sends ride one long-lived call per replica
//! ([`crate::send_stream`]); every other call is a call of its own.

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use proto::v1;
use proto::v1::chat_service_client::ChatServiceClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Response, Status};

use crate::send_stream::SendStream;

/// How long a replica that failed to answer is skipped.
const SKIP_FOR_MS: i64 = 1_000;

struct Replica {
    client: ChatServiceClient<Channel>,
    sends: SendStream,
    skip_until_ms: AtomicI64,
}

pub struct ChatPool {
    replicas: Vec<Replica>,
    next: AtomicUsize,
}

impl ChatPool {
    /// Lazily connected clients of `urls` (over mutual TLS when `tls` is set); calls time out after `timeout`.
    pub fn new(
        urls: &[String],
        timeout: Duration,
        max_response_bytes: usize,
        max_request_bytes: usize,
        tls: Option<&ClientTlsConfig>,
    ) -> Result<ChatPool, String> {
        let mut replicas = Vec::with_capacity(urls.len());
        for u in urls {
            let mut endpoint = Endpoint::from_shared(u.clone())
                .map_err(|e| format!("chat service url {u}: {e}"))?
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true);
            if let Some(tls) = tls {
                endpoint = endpoint.tls_config(tls.clone()).map_err(|e| format!("chat service url {u}: {e}"))?;
            }
            let client = ChatServiceClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(max_response_bytes)
                .max_encoding_message_size(max_request_bytes);
            replicas.push(Replica { client, sends: SendStream::default(), skip_until_ms: AtomicI64::new(0) });
        }
        if replicas.is_empty() {
            return Err("no chat service url".into());
        }
        Ok(ChatPool { replicas, next: AtomicUsize::new(0) })
    }

    /// Makes the call on one replica; if that replica is unavailable, on the next, until each was tried once.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(ChatServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.on_each(|r| {
            let answer = call(r.client.clone());
            async move { answer.await.map(Response::into_inner) }
        })
        .await
    }

    /// A send on one replica's send stream; if that replica is unavailable, on the next, until each was tried
    /// once. Each attempt is answered within `timeout`.
    pub async fn send(
        &self,
        send: &v1::SendMessageRequest,
        timeout: Duration,
    ) -> Result<v1::SendMessageResponse, Status> {
        self.on_each(|r| r.sends.send(&r.client, send, timeout)).await
    }

    async fn on_each<'a, T, F, Fut>(&'a self, attempt: F) -> Result<T, Status>
    where
        F: Fn(&'a Replica) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = chat_model::now_ms();
        // Replicas not marked as failing first, in round-robin order; the failing ones last, in case all are.
        let mut order: Vec<usize> = (0..n).map(|k| (start + k) % n).collect();
        order.sort_by_key(|&i| self.replicas[i].skip_until_ms.load(Ordering::Relaxed) > now);
        let mut last = Status::unavailable("no chat service replica answered");
        for i in order {
            let replica = &self.replicas[i];
            match attempt(replica).await {
                Ok(r) => return Ok(r),
                Err(status) if unavailable(&status) => {
                    replica.skip_until_ms.store(chat_model::now_ms() + SKIP_FOR_MS, Ordering::Relaxed);
                    last = status;
                }
                Err(status) => return Err(status),
            }
        }
        Err(last)
    }
}

/// Whether a call failed for want of a replica rather than by the replica's answer: UNAVAILABLE, or any
/// status made on this side from a transport failure (a reset connection mid-call carries its cause as the
/// source; statuses a replica sends never do).
pub fn unavailable(status: &Status) -> bool {
    status.code() == Code::Unavailable || std::error::Error::source(status).is_some()
}
