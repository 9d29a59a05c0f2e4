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
    /// HMAC secret for HS256/384/512 tokens (at least 32 bytes). Never logged.
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM file of the public key (RSA, EC or Ed25519) that checks RS*/PS*/ES*/EdDSA tokens.
    #[arg(long, env = "GATEWAY_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,
    /// Accepted token algorithms, comma separated; default: HS256 with a secret, else RS256, ES256 and EdDSA.
    #[arg(long, env = "GATEWAY_JWT_ALGORITHMS", value_delimiter = ',')]
    pub jwt_algorithms: Vec<String>,
    /// Clock skew allowed on a token's `exp` and `nbf`, in seconds.
    #[arg(long, env = "GATEWAY_JWT_LEEWAY_SECS", default_value_t = 30)]
    pub jwt_leeway_secs: u64,
    /// Required `iss` claim, if set.
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, if set.
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Allowed `Origin` values (exact match), comma separated. Empty: the Origin header is not checked.
    #[arg(long, env = "GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// A folder served read-only at `/app/`: the web chat (`clients/web`, which `make up` serves). Unset:
    /// nothing is served there.
    #[arg(long, env = "GATEWAY_WEB_DIR")]
    pub web_dir: Option<std::path::PathBuf>,
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
    /// The gateway pings every connection this often (WebSocket ping frames; clients answer them by
    /// themselves, browsers included).
    #[arg(long, env = "GATEWAY_PING_INTERVAL_MS", default_value_t = 20_000)]
    pub ping_interval_ms: u64,
    /// A connection from which nothing arrives for this long (no frame, no answer to a ping) is closed (4002).
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// Frames per second one connection may send (every data frame counts), and the burst above it.
    #[arg(long, env = "GATEWAY_RATE_PER_CONNECTION", default_value_t = 50)]
    pub rate_per_connection: u32,
    #[arg(long, env = "GATEWAY_BURST_PER_CONNECTION", default_value_t = 100)]
    pub burst_per_connection: u32,
    /// Frames per second all of one user's connections may send together, and the burst above it.
    #[arg(long, env = "GATEWAY_RATE_PER_USER", default_value_t = 100)]
    pub rate_per_user: u32,
    #[arg(long, env = "GATEWAY_BURST_PER_USER", default_value_t = 200)]
    pub burst_per_user: u32,
    /// Open sessions per user (over it the upgrade gets 429 `too_many_connections`).
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_USER", default_value_t = 32)]
    pub max_connections_per_user: usize,
    /// Open TCP connections per client address (over it the socket is closed at once). Behind a load
    /// balancer that is the balancer's address: raise it there.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 4096)]
    pub max_connections_per_address: usize,
    /// Open TCP connections in all; default: the process's open-file limit less 512 (for everything else).
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// PEM certificate chain for `wss://` (with GATEWAY_TLS_KEY_FILE); unset: plain `ws://`, e.g. behind a
    /// load balancer that ends TLS.
    #[arg(long, env = "GATEWAY_TLS_CERT_FILE")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, env = "GATEWAY_TLS_KEY_FILE")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Time allowed for a client's TLS handshake, and then for its HTTP request headers.
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// Where to serve the counters (`GET /metrics`, Prometheus text format), apart from the public
    /// WebSocket port; unset: not served.
    #[arg(long, env = "GATEWAY_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Mutual TLS with the chat services and the workers (GRPC_TLS_*).
    #[command(flatten)]
    pub grpc_tls: lifecycle::grpc_tls::GrpcTlsArgs,
    /// TLS to Redis: a rediss:// GATEWAY_REDIS_URL, and REDIS_TLS_CA_FILE.
    #[command(flatten)]
    pub redis_tls: lifecycle::redis_tls::RedisTlsArgs,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("ws_addr", &self.ws_addr)
            .field("grpc_addr", &self.grpc_addr)
            .field("metrics_addr", &self.metrics_addr)
            .field("chat_service_urls", &self.chat_service_urls)
            .field("redis_prefix", &self.redis_prefix)
            .field("jwt_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl lifecycle::Config for Config {
    fn validate(&self) -> Result<(), String> {
        if self.jwt_secret.is_none() && self.jwt_public_key_file.is_none() {
            return Err("set GATEWAY_JWT_SECRET or GATEWAY_JWT_PUBLIC_KEY_FILE".into());
        }
        if self.jwt_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err("GATEWAY_JWT_SECRET must be at least 32 bytes".into());
        }
        if self.rate_per_connection == 0
            || self.burst_per_connection == 0
            || self.rate_per_user == 0
            || self.burst_per_user == 0
        {
            return Err("GATEWAY_RATE_* and GATEWAY_BURST_* must be at least 1".into());
        }
        if self.max_connections_per_user == 0
            || self.max_connections_per_address == 0
            || self.max_connections == Some(0)
        {
            return Err("GATEWAY_MAX_CONNECTIONS* must be at least 1".into());
        }
        if self.jwt_leeway_secs > 300 {
            return Err("GATEWAY_JWT_LEEWAY_SECS must be at most 300".into());
        }
        crate::auth::Verifier::new(&self.token_policy()?).map_err(|e| format!("GATEWAY_JWT_*: {e}"))?;
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                crate::tls::acceptor(cert, key).map_err(|e| format!("GATEWAY_TLS_*: {e}"))?;
            }
            (None, None) => {}
            _ => return Err("set both GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE, or neither".into()),
        }
        if !(100..=600_000).contains(&self.ping_interval_ms) {
            return Err("GATEWAY_PING_INTERVAL_MS must be between 100 and 600000".into());
        }
        if self.idle_timeout_ms <= self.ping_interval_ms || self.idle_timeout_ms > 3_600_000 {
            return Err("GATEWAY_IDLE_TIMEOUT_MS must be over GATEWAY_PING_INTERVAL_MS and at most 3600000".into());
        }
        if !(100..=120_000).contains(&self.handshake_timeout_ms) {
            return Err("GATEWAY_HANDSHAKE_TIMEOUT_MS must be between 100 and 120000".into());
        }
        self.redis_tls.load(&self.redis_url)?;
        let scheme = lifecycle::grpc_tls::scheme(self.grpc_tls.load()?.as_ref());
        if self.chat_service_urls.is_empty()
            || self.chat_service_urls.iter().any(|u| !u.starts_with(&format!("{scheme}://")))
        {
            return Err(format!("GATEWAY_CHAT_SERVICE_URLS must list {scheme}:// URLs (https:// with GRPC_TLS_*)"));
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
        if let Some(dir) = &self.web_dir
            && !dir.join("index.html").is_file()
        {
            return Err(format!("GATEWAY_WEB_DIR {} has no index.html", dir.display()));
        }
        Ok(())
    }
}

impl Config {
    /// The token policy these settings describe (reads the public key file).
    pub fn token_policy(&self) -> Result<crate::auth::TokenPolicy, String> {
        let public_key_pem = match &self.jwt_public_key_file {
            Some(path) => {
                Some(std::fs::read(path).map_err(|e| format!("GATEWAY_JWT_PUBLIC_KEY_FILE {}: {e}", path.display()))?)
            }
            None => None,
        };
        let algorithms = if self.jwt_algorithms.is_empty() {
            let mut default = Vec::new();
            if self.jwt_secret.is_some() {
                default.push(jsonwebtoken::Algorithm::HS256);
            }
            if public_key_pem.is_some() {
                default.extend([
                    jsonwebtoken::Algorithm::RS256,
                    jsonwebtoken::Algorithm::ES256,
                    jsonwebtoken::Algorithm::EdDSA,
                ]);
            }
            default
        } else {
            self.jwt_algorithms
                .iter()
                .map(|a| crate::auth::parse_algorithm(a))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("GATEWAY_JWT_ALGORITHMS: {e}"))?
        };
        Ok(crate::auth::TokenPolicy {
            secret: self.jwt_secret.as_ref().map(|s| s.as_bytes().to_vec()),
            public_key_pem,
            algorithms,
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway_secs: self.jwt_leeway_secs,
        })
    }

    pub fn limits(&self) -> crate::limits::LimitConfig {
        let from_files = crate::limits::open_file_limit().map(|n| n.saturating_sub(512).max(64));
        crate::limits::LimitConfig {
            connection_rate: self.rate_per_connection,
            connection_burst: self.burst_per_connection,
            user_rate: self.rate_per_user,
            user_burst: self.burst_per_user,
            max_per_user: self.max_connections_per_user,
            max_per_address: self.max_connections_per_address,
            max_connections: self.max_connections.or(from_files).unwrap_or(10_000),
        }
    }

    pub fn presence_ttl(&self) -> Duration {
        Duration::from_millis(self.presence_ttl_ms)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use lifecycle::Config as _;

    use super::Config;

    fn check(args: &[&str]) -> Result<(), String> {
        let base = ["gateway", "--jwt-secret", "0123456789abcdef0123456789abcdef"];
        let config = Config::try_parse_from(base.iter().chain(args)).map_err(|e| e.to_string())?;
        config.validate()
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(check(&[]), Ok(()));
    }

    #[test]
    fn the_idle_timeout_must_exceed_the_ping_interval() {
        let e = check(&["--ping-interval-ms", "5000", "--idle-timeout-ms", "5000"]).expect_err("accepted");
        assert!(e.contains("GATEWAY_IDLE_TIMEOUT_MS"), "{e}");
        assert!(check(&["--ping-interval-ms", "10"]).is_err());
    }

    #[test]
    fn mutual_tls_settings_come_whole_and_ask_for_https_urls() {
        let e = check(&["--grpc-tls-cert-file", "/nonexistent.pem"]).expect_err("accepted");
        assert!(e.contains("GRPC_TLS_KEY_FILE"), "{e}");
        let e = check(&["--chat-service-urls", "ftp://chat:1"]).expect_err("accepted");
        assert!(e.contains("http://"), "{e}");
    }

    #[test]
    fn the_web_folder_must_hold_an_index() {
        let web = concat!(env!("CARGO_MANIFEST_DIR"), "/../clients/web");
        assert_eq!(check(&["--web-dir", web]), Ok(()));
        let e = check(&["--web-dir", env!("CARGO_MANIFEST_DIR")]).expect_err("accepted");
        assert!(e.contains("GATEWAY_WEB_DIR"), "{e}");
    }
}
