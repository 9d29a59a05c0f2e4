//! The chat-service process: connects to the store and the log, binds, serves until shutdown.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use chat_store::CassandraStore;
use proto::v1::chat_service_server::ChatServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::event_log::KafkaEventLog;
use crate::grpc::ChatGrpc;
use crate::members::Members;
use crate::owned::Owned;
use crate::owner::Batching;
use crate::owner::group::{Owners, OwnersConfig, partition_count};
use crate::owner::kafka::LogConfig;
use crate::route::Router;
use crate::sends::Sender;

/// Largest gRPC message the service accepts or sends: a page of history at the largest body size, with room.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Added to the longest work a call does, for its own answer to be the one the caller gets.
const CALL_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

pub struct App {
    listener: TcpListener,
    service: ChatGrpc,
    /// This replica's share of the log's partitions.
    owners: Owners,
    tls: Option<lifecycle::grpc_tls::GrpcTls>,
    /// Longest any call may run (a caller's shorter `grpc-timeout` wins).
    call_timeout: std::time::Duration,
    /// Where the counters are served, when they are (CHAT_METRICS_ADDR).
    metrics: Option<TcpListener>,
    /// Ends the open `SendMessages` calls at shutdown, which would otherwise hold the graceful stop forever.
    stop_sends: tokio::sync::watch::Sender<bool>,
}

impl App {
    /// Connects to Cassandra and Kafka and binds the gRPC address (port 0 picks a free one).
    pub async fn build(config: &Config) -> anyhow::Result<App> {
        let tls = config.grpc_tls.load().map_err(anyhow::Error::msg)?;
        let store = CassandraStore::connect(&config.store_config()).await.context("connecting to cassandra")?;
        let listener =
            TcpListener::bind(config.grpc_addr).await.with_context(|| format!("binding {}", config.grpc_addr))?;
        let bound = listener.local_addr()?;
        let advertise = config.advertise_addr.clone().unwrap_or_else(|| bound.to_string());
        let log_config = LogConfig {
            kafka: config.kafka(),
            topic: config.events_topic.clone(),
            transactional_prefix: config.owner_group_id.clone(),
            call_timeout: config.send_timeout() / 2,
            transaction_timeout: Duration::from_millis(config.transaction_timeout_ms),
            projector_group: config.projector_group_id.clone(),
        };
        let partitions = partition_count(&log_config).await.context("reading the events topic's partitions")?;
        let log = KafkaEventLog::new(&config.kafka(), &config.events_topic, partitions, config.send_timeout())
            .context("creating the kafka producer")?;
        let members = Members::new(store.clone(), Duration::from_millis(config.members_cache_ms));
        let owners = Owners::start(
            OwnersConfig {
                log: log_config,
                group: config.owner_group_id.clone(),
                advertise: advertise.clone(),
                batching: Batching {
                    max: config.batch_max,
                    linger: Duration::from_micros(config.batch_linger_us),
                    interval: Duration::from_micros(config.batch_interval_us),
                    ..Batching::default()
                },
                session_timeout: Duration::from_millis(config.owner_session_timeout_ms),
            },
            store.clone(),
        )
        .await
        .context("joining the owners' group")?;
        // Serve once the group has given this replica its partitions and each is acquired (or after the
        // wait: then a write for a partition not served yet is forwarded, or answered `unavailable` until the
        // group settles).
        if !owners.wait_serving(Duration::from_millis(config.owner_session_timeout_ms) * 3).await {
            tracing::warn!("the partitions assigned here are not all acquired yet; serving anyway");
        }
        let router = Router::new(
            store.clone(),
            &config.events_topic,
            &advertise,
            tls.as_ref().map(|t| t.client()),
            config.send_timeout(),
        );
        let owned = Arc::new(Owned { owners: owners.clone(), store: store.clone(), members, router });
        let (stop_sends, stopping) = tokio::sync::watch::channel(false);
        let sender = Sender { owned: owned.clone(), timeout: config.send_timeout() };
        let service = ChatGrpc { store, owned, log, sender, stopping };
        // A send may take its whole timeout; a history page a few store requests.
        let call_timeout = config.send_timeout().max(config.store_config().request_timeout * 4) + CALL_MARGIN;
        let metrics = match config.metrics_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?),
            None => None,
        };
        Ok(App { listener, service, owners, tls, call_timeout, metrics, stop_sends })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Where the counters are served, when they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then finishes the calls in flight.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<ChatServiceServer<ChatGrpc>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // Only what this port serves (the descriptor set also describes the other service of chat.v1).
            .with_service_name(proto::v1::chat_service_server::SERVICE_NAME)
            .with_service_name(tonic_health::pb::health_server::SERVICE_NAME)
            .with_service_name(tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME)
            .build_v1()
            .context("building the reflection service")?;
        let chat = ChatServiceServer::new(self.service)
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
        tracing::info!(addr = %self.listener.local_addr()?, "chat service listening");
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        let served = self.metrics.map(|listener| {
            let owners = self.owners.clone();
            tokio::spawn(lifecycle::metrics::serve(listener, move || crate::metrics::render(&owners), async {
                let _ = metrics_stopped.await;
            }))
        });
        let mut server = tonic::transport::Server::builder().timeout(self.call_timeout);
        if let Some(tls) = &self.tls {
            server = server.tls_config(tls.server()).context("mutual TLS")?;
        }
        // TCP_NODELAY on every accepted connection (tonic sets it only on listeners it binds itself): without
        // it, a response written in several small pieces waited for the peer's delayed ACK, about 40 ms
        // (measured: every push to a gateway took 50 to 60 ms).
        let stop_sends = self.stop_sends;
        let shutdown = async move {
            shutdown.await;
            let _ = stop_sends.send(true);
        };
        server
            .add_service(health)
            .add_service(reflection)
            .add_service(chat)
            .serve_with_incoming_shutdown(TcpIncoming::from(self.listener).with_nodelay(Some(true)), shutdown)
            .await
            .context("grpc server")?;
        // Leaving the owners' group hands this replica's partitions to the others at once.
        self.owners.stop().await;
        let _ = stop_metrics.send(());
        if let Some(served) = served {
            let _ = served.await;
        }
        Ok(())
    }
}
