//! The gateway's configuration: environment variables (and the same names as flags), checked at start.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// Every setting of a gateway process. `--help` lists them with their environment variables.
#[derive(Clone, Parser)]
#[command(name = "gateway", version, about = "Gateway: client WebSockets in, pushes from delivery workers out")]
pub struct Config {
    /// Address of the WebSocket (HTTP) listener.
    #[arg(long, env = "GATEWAY_WS_ADDR", default_value = "127.0.0.1:8080")]
    pub ws_addr: SocketAddr,
    /// Address of the gRPC server that delivery workers push to.
    #[arg(long, env = "GATEWAY_GRPC_ADDR", default_value = "127.0.0.1:50061")]
    pub grpc_addr: SocketAddr,
    /// The push address written to presence (what workers dial); defaults to the bound gRPC address.
    #[arg(long, env = "GATEWAY_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Chat service endpoints (http://host:port), comma separated; calls are balanced over them.
    #[arg(long, env = "GATEWAY_CHAT_SERVICE_URLS", default_value = "http://127.0.0.1:50051", value_delimiter = ',')]
    pub chat_service_urls: Vec<String>,
    #[arg(long, env = "GATEWAY_REDIS_URL", default_value = "redis://127.0.0.1:16379/")]
    pub redis_url: String,
    /// Prefix of every Redis key (lets several deployments or tests share one Redis).
    #[arg(long, env = "GATEWAY_REDIS_PREFIX", default_value = "chat:")]
    pub redis_prefix: String,
    /// HMAC secret for HS256 tokens (at least 32 bytes). Never logged.
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Required `iss` claim, if set.
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, if set.
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Allowed `Origin` values (exact match), comma separated. Empty: the Origin header is not checked.
    #[arg(long, env = "GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Frames a connection's send queue holds before the client counts as too slow and is closed (4008).
    #[arg(long, env = "GATEWAY_SEND_QUEUE", default_value_t = 256)]
    pub send_queue: usize,
    /// Largest client message (and frame), in bytes; over it the connection is closed with 1009.
    #[arg(long, env = "GATEWAY_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,
    /// Presence entries expire this long after the gateway last refreshed them.
    #[arg(long, env = "GATEWAY_PRESENCE_TTL_MS", default_value_t = 30_000)]
    pub presence_ttl_ms: u64,
    /// After a connection's inbox is drained, the inbox is read once more after this delay, to catch rows
    /// that a worker wrote while the device was coming online (see ARCHITECTURE.md).
    #[arg(long, env = "GATEWAY_INBOX_RECHECK_MS", default_value_t = 3_000)]
    pub inbox_recheck_ms: u64,
    /// Deadline of each call to the chat service.
    #[arg(long, env = "GATEWAY_RPC_TIMEOUT_MS", default_value_t = 10_000)]
    pub rpc_timeout_ms: u64,
    /// Longest a write to a client's socket may wait for the client to read; past it the client is closed
    /// as too slow (4008), and a close frame waits as long before the socket is dropped.
    #[arg(long, env = "GATEWAY_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,
    /// Time allowed for a client to send its HTTP request headers.
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("ws_addr", &self.ws_addr)
            .field("grpc_addr", &self.grpc_addr)
            .field("chat_service_urls", &self.chat_service_urls)
            .field("redis_prefix", &self.redis_prefix)
            .field("jwt_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl lifecycle::Config for Config {
    fn validate(&self) -> Result<(), String> {
        if self.jwt_secret.len() < 32 {
            return Err("GATEWAY_JWT_SECRET must be at least 32 bytes".into());
        }
        if self.chat_service_urls.is_empty() || self.chat_service_urls.iter().any(|u| !u.starts_with("http")) {
            return Err("GATEWAY_CHAT_SERVICE_URLS must list http:// or https:// URLs".into());
        }
        if !(1..=65_536).contains(&self.send_queue) {
            return Err("GATEWAY_SEND_QUEUE must be between 1 and 65536".into());
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err("GATEWAY_MAX_MESSAGE_BYTES must be between 1024 and 16777216".into());
        }
        if self.presence_ttl_ms < 1_000 {
            return Err("GATEWAY_PRESENCE_TTL_MS must be at least 1000".into());
        }
        if self.allowed_origins.iter().any(|o| o.trim().is_empty()) {
            return Err("GATEWAY_ALLOWED_ORIGINS has an empty entry".into());
        }
        Ok(())
    }
}

impl Config {
    pub fn presence_ttl(&self) -> Duration {
        Duration::from_millis(self.presence_ttl_ms)
    }
}
