//! Presence in Redis (format: `chat_model::presence`): a gateway writes the entries of the devices it holds;
//! anyone routing to devices reads them. Soft state: a failed write is logged and delivery falls back to the
//! inbox and resume by cursor; a failed read means nobody is online.

use std::collections::HashMap;
use std::time::Duration;

use chat_model::presence::{self, Entry};
use chat_model::{DeviceId, UserId, now_ms};
use redis::aio::ConnectionManager;

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
    conn: ConnectionManager,
    prefix: String,
    push_addr: String,
    ttl: Duration,
}

/// One connection's entry to write.
pub struct Holder<'a> {
    pub user: &'a UserId,
    pub device: &'a DeviceId,
    pub conn_id: u64,
}

impl Presence {
    /// `push_addr` is what this process writes as its address (a gateway's push address; empty for a reader).
    pub async fn connect(url: &str, prefix: &str, push_addr: &str, ttl: Duration) -> redis::RedisResult<Presence> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Presence { conn, prefix: prefix.to_owned(), push_addr: push_addr.to_owned(), ttl })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Writes (or refreshes) the entries of `holders` in one round trip. Answers, for each holder, whether
    /// its entry was missing (so it had been lost, unless this is its first write).
    pub async fn set(&self, holders: &[Holder<'_>]) -> redis::RedisResult<Vec<bool>> {
        if holders.is_empty() {
            return Ok(Vec::new());
        }
        let expires_at_ms = now_ms() + i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let mut pipe = redis::pipe();
        for h in holders {
            let key = presence::key(&self.prefix, h.user);
            let entry = Entry { push_addr: self.push_addr.clone(), conn_id: h.conn_id, expires_at_ms };
            // HSET answers 1 for a new field, 0 for an update.
            pipe.hset(&key, h.device.as_str(), entry.encode());
            pipe.pexpire(&key, ttl_ms).ignore();
        }
        let mut conn = self.conn.clone();
        let added: Vec<i64> = pipe.query_async(&mut conn).await?;
        Ok(added.into_iter().map(|n| n == 1).collect())
    }

    /// Removes a connection's entry, unless the device has connected again since.
    pub async fn remove(&self, user: &UserId, device: &DeviceId, conn_id: u64) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::Script::new(REMOVE_IF_OWNED)
            .key(presence::key(&self.prefix, user))
            .arg(device.as_str())
            .arg(Entry::owner_prefix(&self.push_addr, conn_id))
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
    }

    /// The live presence of `users`' devices: (user, device) to the push address of the gateway holding it.
    /// Redis being unreadable means nobody is online (every device gets the inbox; resume covers the rest).
    pub async fn online(&self, users: &[UserId]) -> HashMap<(UserId, DeviceId), String> {
        let mut pipe = redis::pipe();
        for u in users {
            pipe.hgetall(presence::key(&self.prefix, u));
        }
        let mut conn = self.conn.clone();
        let hashes: Vec<Vec<(String, String)>> = match pipe.query_async(&mut conn).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "presence unreadable; nobody counts as online");
                return HashMap::new();
            }
        };
        let now = now_ms();
        let mut out = HashMap::new();
        for (user, fields) in users.iter().zip(hashes) {
            for (device, entry) in presence::live_devices(fields, now) {
                out.insert((user.clone(), device), entry.push_addr);
            }
        }
        out
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
    }
}
