//! The gateway process: binds both listeners, connects to Redis and the chat service, serves until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use proto::v1::gateway_service_server::GatewayServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::Config;
use crate::auth::Verifier;
use crate::chat_pool::ChatPool;
use crate::http::{self, Upgrader};
use crate::push::PushGrpc;
use crate::registry::Registry;
use crate::session::Shared;
use routing::{Holder, Presence};

/// Largest push the gateway accepts: one message at the largest body size, with room.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 1024 * 1024;
/// Deadline of a typing indicator's push to a gateway: late is useless.
const TYPING_DEADLINE: Duration = Duration::from_secs(1);
/// Longest a push or resync call may run here (a worker's own deadline is shorter).
const PUSH_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer taken from the chat service: a page of history (500 messages at the largest body size).
const MAX_CHAT_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

pub struct App {
    ws_listener: TcpListener,
    grpc_listener: TcpListener,
    upgrader: Arc<Upgrader>,
    shutdown_tx: watch::Sender<bool>,
    handshake_timeout: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Mutual TLS of the push server (and of the clients, already built into `upgrader`).
    grpc_tls: Option<lifecycle::grpc_tls::GrpcTls>,
    /// The listener of `GET /metrics`, when served.
    metrics: Option<TcpListener>,
}

impl App {
    pub async fn build(config: &Config) -> anyhow::Result<App> {
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key).map_err(anyhow::Error::msg)?),
            _ => None,
        };
        let grpc_tls = config.grpc_tls.load().map_err(anyhow::Error::msg)?;
        let ws_listener =
            TcpListener::bind(config.ws_addr).await.with_context(|| format!("binding {}", config.ws_addr))?;
        let grpc_listener =
            TcpListener::bind(config.grpc_addr).await.with_context(|| format!("binding {}", config.grpc_addr))?;
        let metrics = match config.metrics_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?),
            None => None,
        };
        let push_addr = match &config.advertise_addr {
            Some(a) => a.clone(),
            None => grpc_listener.local_addr()?.to_string(),
        };
        let redis_ca = config.redis_tls.load(&config.redis_url).map_err(anyhow::Error::msg)?;
        let presence =
            Presence::connect(&config.redis_url, redis_ca, &config.redis_prefix, &push_addr, config.presence_ttl())
                .await
                .context("connecting to redis")?;
        let chat = ChatPool::new(
            &config.chat_service_urls,
            Duration::from_millis(config.rpc_timeout_ms),
            MAX_CHAT_RESPONSE_BYTES,
            MAX_GRPC_MESSAGE_BYTES,
            grpc_tls.as_ref().map(|t| t.client()).as_ref(),
        )
        .map_err(anyhow::Error::msg)?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            registry: Registry::default(),
            presence,
            chat,
            send_queue: config.send_queue,
            inbox_recheck: Duration::from_millis(config.inbox_recheck_ms),
            rpc_timeout: Duration::from_millis(config.rpc_timeout_ms),
            write_timeout: Duration::from_millis(config.write_timeout_ms),
            ping_interval: Duration::from_millis(config.ping_interval_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            shutdown: shutdown_rx,
            pushers: routing::Pushers::with_tls(TYPING_DEADLINE, grpc_tls.as_ref().map(|t| t.client())),
            members: std::sync::Mutex::new(std::collections::HashMap::new()),
            limits: crate::limits::Limits::new(config.limits()),
            metrics: crate::metrics::Metrics::default(),
        });
        let upgrader = Arc::new(Upgrader {
            verifier: Verifier::new(&config.token_policy().map_err(anyhow::Error::msg)?).map_err(anyhow::Error::msg)?,
            allowed_origins: config.allowed_origins.clone(),
            web_dir: config.web_dir.clone(),
            ws_config: http::ws_config(config.max_message_bytes),
            shared,
        });
        Ok(App {
            ws_listener,
            grpc_listener,
            upgrader,
            shutdown_tx,
            handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
            tls,
            grpc_tls,
            metrics,
        })
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Where `GET /metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves until `shutdown` resolves; then stops accepting, closes every connection with 1001 (reconnect)
    /// and removes this gateway's presence entries.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let shared = self.upgrader.shared.clone();
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<GatewayServiceServer<PushGrpc>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // Only what this port serves (the descriptor set also describes the other service of chat.v1).
            .with_service_name(proto::v1::gateway_service_server::SERVICE_NAME)
            .with_service_name(tonic_health::pb::health_server::SERVICE_NAME)
            .with_service_name(tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME)
            .build_v1()
            .context("building the reflection service")?;
        let push = GatewayServiceServer::new(PushGrpc { shared: shared.clone() })
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
        let mut grpc_stop = shared.shutdown.clone();
        let mut server = tonic::transport::Server::builder().timeout(PUSH_CALL_TIMEOUT);
        if let Some(tls) = &self.grpc_tls {
            server = server.tls_config(tls.server()).context("mutual TLS")?;
        }
        // TCP_NODELAY on every accepted connection (tonic sets it only on listeners it binds itself): without
        // it, a response written in several small pieces waited for the peer's delayed ACK, about 40 ms
        // (measured: every push to a gateway took 50 to 60 ms).
        let grpc = server.add_service(health).add_service(reflection).add_service(push).serve_with_incoming_shutdown(
            TcpIncoming::from(self.grpc_listener).with_nodelay(Some(true)),
            async move {
                let _ = grpc_stop.wait_for(|s| *s).await;
            },
        );
        let grpc = tokio::spawn(grpc);
        let refresher = tokio::spawn(refresh_presence(shared.clone()));
        // Served until the sessions are gone, so that a scrape during the drain still sees them close.
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = self.metrics.map(|listener| {
            let shared = shared.clone();
            let render = move || shared.metrics.render(shared.registry.len());
            tokio::spawn(lifecycle::metrics::serve(listener, render, async {
                let _ = metrics_stopped.await;
            }))
        });
        tracing::info!(ws = %self.ws_listener.local_addr()?, "gateway listening");
        let http = tokio::spawn(http::serve(
            self.ws_listener,
            self.upgrader.clone(),
            self.handshake_timeout,
            self.tls.clone(),
            shared.shutdown.clone(),
        ));

        shutdown.await;
        tracing::info!(connections = shared.registry.len(), "shutting down: closing connections");
        let _ = self.shutdown_tx.send(true);
        let _ = http.await;
        // Sessions see the flag, send 1001 and end; give them a bounded time to drain.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !shared.registry.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        refresher.abort();
        let _ = grpc.await;
        let _ = stop_metrics.send(());
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        Ok(())
    }
}

/// Rewrites this gateway's presence entries every third of their TTL, so they expire only if the gateway dies.
/// An entry found missing had been lost (Redis restarted empty): while it was, workers put the device's
/// messages in its inbox, so its session sends the inbox again.
async fn refresh_presence(shared: Arc<Shared>) {
    let period = shared.presence.ttl() / 3;
    loop {
        tokio::time::sleep(period).await;
        let conns = shared.registry.all();
        for chunk in conns.chunks(500) {
            let holders: Vec<Holder<'_>> =
                chunk.iter().map(|c| Holder { user: &c.user, device: &c.device, conn_id: c.conn_id }).collect();
            match shared.presence.set(&holders).await {
                Ok(previous) => {
                    for (conn, previous) in chunk.iter().zip(previous) {
                        if previous.is_none() {
                            conn.ask_resync();
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "presence refresh failed"),
            }
        }
        register_again(&shared, &conns).await;
    }
}

/// Registers the devices whose registration failed at connect (the store was down): without it, a worker
/// that finds no presence for them keeps no inbox for them either. Each one registered is sent its inbox.
async fn register_again(shared: &Shared, conns: &[Arc<crate::registry::ConnHandle>]) {
    use std::sync::atomic::Ordering;
    for conn in conns.iter().filter(|c| !c.registered.load(Ordering::Relaxed)) {
        match shared.register_device(&conn.user, &conn.device).await {
            Ok(()) => {
                conn.registered.store(true, Ordering::Relaxed);
                conn.ask_resync();
            }
            // The store (or Redis) is still down: the next refresh tries again.
            Err(_) => return,
        }
    }
}
