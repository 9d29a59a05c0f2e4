//! Presence in Redis (format: `chat_model::presence`): a gateway writes the entries of the devices it holds;
//! anyone routing to devices reads them. Soft state: a failed write is logged and delivery falls back to the
//! inbox and resume by cursor; a failed read means nobody is online.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_model::presence::{self, Entry};
use chat_model::{DeviceId, UserId, now_ms};

use redis::aio::MultiplexedConnection;

/// Deletes a device's field only if this connection still owns it (another gateway may hold the device now).
const REMOVE_IF_OWNED: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and string.sub(v, 1, string.len(ARGV[2])) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
";

#[derive(Clone)]
pub struct Presence {
    link: Link,
    prefix: String,
    push_addr: String,
    ttl: Duration,
}

/// The presence of some users, read at once.
pub struct Lookup {
    /// (user, device) to the push address of the gateway holding it.
    pub online: HashMap<(UserId, DeviceId), String>,
    /// Each user's device-list stamp (`None` where the user has none), in the order asked; `None` when Redis
    /// could not be read, so that no kept device list can be trusted.
    pub device_stamps: Option<Vec<Option<String>>>,
}

/// One connection's entry to write.
pub struct Holder<'a> {
    pub user: &'a UserId,
    pub device: &'a DeviceId,
    pub conn_id: u64,
}

impl Presence {
    /// `push_addr` is what this process writes as its address (a gateway's push address; empty for a reader).
    /// A `rediss://` URL connects with TLS, checking the server's certificate against `tls_ca` (PEM) when
    /// given, the system's roots otherwise.
    pub async fn connect(
        url: &str,
        tls_ca: Option<Vec<u8>>,
        prefix: &str,
        push_addr: &str,
        ttl: Duration,
    ) -> redis::RedisResult<Presence> {
        let client = if url.starts_with("rediss://") {
            // rustls needs one process-wide provider; ring, as the rest of the platform uses.
            let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
            redis::Client::build_with_tls(url, redis::TlsCertificates { client_tls: None, root_cert: tls_ca })?
        } else {
            redis::Client::open(url)?
        };
        let link = Link::new(client);
        // Fail at start on a wrong address rather than at the first delivery.
        link.get().await?;
        Ok(Presence { link, prefix: prefix.to_owned(), push_addr: push_addr.to_owned(), ttl })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Writes (or refreshes) the entries of `holders` in one round trip, atomically (MULTI/EXEC: no other
    /// gateway's write to a field falls between reading it and writing it). Answers, for each holder, the
    /// entry its field held just before: `None` when it was missing (so it had been lost, unless this is its
    /// first write), another connection's entry when the device had connected elsewhere in the meantime
    /// (`chat_model::presence::replaced_elsewhere` says which one to close).
    pub async fn set(&self, holders: &[Holder<'_>]) -> redis::RedisResult<Vec<Option<Entry>>> {
        if holders.is_empty() {
            return Ok(Vec::new());
        }
        let expires_at_ms = now_ms() + i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for h in holders {
            let key = presence::key(&self.prefix, h.user);
            let entry = Entry { push_addr: self.push_addr.clone(), conn_id: h.conn_id, expires_at_ms };
            pipe.hget(&key, h.device.as_str());
            pipe.hset(&key, h.device.as_str(), entry.encode()).ignore();
            pipe.pexpire(&key, ttl_ms).ignore();
        }
        let previous: Vec<Option<String>> = self.link.query(&pipe).await?;
        // A value that does not decode counts as missing: the connection then only sends its inbox again.
        Ok(previous.into_iter().map(|v| v.as_deref().and_then(Entry::decode)).collect())
    }

    /// The push address this process writes in its entries.
    pub fn push_addr(&self) -> &str {
        &self.push_addr
    }

    /// Removes a connection's entry, unless the device has connected again since.
    pub async fn remove(&self, user: &UserId, device: &DeviceId, conn_id: u64) -> redis::RedisResult<()> {
        let mut conn = self.link.get().await?;
        let script = redis::Script::new(REMOVE_IF_OWNED);
        let mut invocation = script.key(presence::key(&self.prefix, user));
        invocation.arg(device.as_str()).arg(Entry::owner_prefix(&self.push_addr, conn_id));
        let result = tokio::time::timeout(COMMAND_TIMEOUT, invocation.invoke_async::<i64>(&mut conn)).await;
        self.link.settle(result).map(|_| ())
    }

    /// The live presence of `users`' devices: (user, device) to the push address of the gateway holding it.
    /// Redis being unreadable means nobody is online (every device gets the inbox; resume covers the rest).
    pub async fn online(&self, users: &[UserId]) -> HashMap<(UserId, DeviceId), String> {
        self.lookup(users).await.online
    }

    /// What [`Presence::online`] answers, with each user's device-list stamp ([`presence::DEVICES_CHANGED`]).
    pub async fn lookup(&self, users: &[UserId]) -> Lookup {
        let mut pipe = redis::pipe();
        for u in users {
            pipe.hgetall(presence::key(&self.prefix, u));
        }
        let hashes: Vec<Vec<(String, String)>> = match self.link.query(&pipe).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "presence unreadable; nobody counts as online");
                return Lookup { online: HashMap::new(), device_stamps: None };
            }
        };
        let now = now_ms();
        let mut online = HashMap::new();
        let mut stamps = Vec::with_capacity(users.len());
        for (user, mut fields) in users.iter().zip(hashes) {
            let stamp = fields.iter().position(|(f, _)| f == presence::DEVICES_CHANGED);
            stamps.push(stamp.map(|i| fields.swap_remove(i).1));
            for (device, entry) in presence::live_devices(fields, now) {
                online.insert((user.clone(), device), entry.push_addr);
            }
        }
        Lookup { online, device_stamps: Some(stamps) }
    }

    /// Records that a device of `user` was registered in the store: replaces the user's device-list stamp
    /// with a new random one, so that a reader holding the list from before reads it again. Called after
    /// the registration succeeded; when it fails, the registration counts as not done (and is done again).
    pub async fn devices_changed(&self, user: &UserId) -> redis::RedisResult<()> {
        let key = presence::key(&self.prefix, user);
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.hset(&key, presence::DEVICES_CHANGED, uuid::Uuid::new_v4().simple().to_string()).ignore();
        // The hash lives as long as its newest entry; without entries it goes with the stamp, which readers
        // then see as changed.
        pipe.pexpire(&key, ttl_ms).ignore();
        self.link.query(&pipe).await
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> bool {
        self.link.query::<String>(redis::pipe().cmd("PING")).await.is_ok()
    }
}

/// How long one Redis command (or connecting) may take. Presence is soft state: past this, the caller goes
/// on as if nobody were online rather than stall a partition or a connect.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed connect, commands fail at once for this long instead of each waiting to connect.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// One multiplexed connection, replaced after any connection error or timeout. (Redis's own reconnecting
/// manager was seen to leave every caller waiting about two minutes after a server restart.)
#[derive(Clone)]
struct Link {
    client: redis::Client,
    state: Arc<std::sync::Mutex<LinkState>>,
    connecting: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct LinkState {
    conn: Option<MultiplexedConnection>,
    failed_at: Option<Instant>,
}

impl Link {
    fn new(client: redis::Client) -> Link {
        Link { client, state: Arc::default(), connecting: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current connection, or a new one (one caller connects; the others wait for it).
    async fn get(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = self.lock().conn.clone() {
            return Ok(c);
        }
        let _connecting = self.connecting.lock().await;
        {
            let state = self.lock();
            if let Some(c) = state.conn.clone() {
                return Ok(c);
            }
            if state.failed_at.is_some_and(|at| at.elapsed() < RECONNECT_PAUSE) {
                return Err(unavailable("redis unreachable; retrying shortly"));
            }
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(COMMAND_TIMEOUT)
            .set_response_timeout(COMMAND_TIMEOUT);
        let made =
            tokio::time::timeout(COMMAND_TIMEOUT, self.client.get_multiplexed_async_connection_with_config(&config))
                .await
                .unwrap_or_else(|_| Err(unavailable("connecting to redis timed out")));
        let mut state = self.lock();
        match made {
            Ok(c) => {
                state.conn = Some(c.clone());
                state.failed_at = None;
                Ok(c)
            }
            Err(e) => {
                state.failed_at = Some(Instant::now());
                Err(e)
            }
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> redis::RedisResult<T> {
        let mut conn = self.get().await?;
        let result = tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async::<T>(&mut conn)).await;
        self.settle(result)
    }

    /// The result of a command under [`COMMAND_TIMEOUT`]; a timeout or a broken connection drops the
    /// connection, so that the next command makes a new one.
    fn settle<T>(&self, result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>) -> redis::RedisResult<T> {
        let result = result.unwrap_or_else(|_| Err(unavailable("redis command timed out")));
        if let Err(e) = &result
            && (e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error())
        {
            self.lock().conn = None;
        }
        result
    }
}

fn unavailable(what: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}
