//! What one client may take: frames per second per connection and per user (token buckets), connections
//! per user, per address and in all. Each limit answers with a code (see docs/protocol.md) and changes
//! nothing else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chat_model::UserId;

/// The limits' settings.
#[derive(Debug, Clone, Copy)]
pub struct LimitConfig {
    /// Frames per second one connection may send, and how many at once above that.
    pub connection_rate: u32,
    pub connection_burst: u32,
    /// The same for all of one user's connections together.
    pub user_rate: u32,
    pub user_burst: u32,
    pub max_per_user: usize,
    pub max_per_address: usize,
    pub max_connections: usize,
}

/// A token bucket: `rate` tokens a second, at most `burst` saved.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate: u32, burst: u32) -> Bucket {
        let burst = f64::from(burst.max(1));
        Bucket { rate: f64::from(rate.max(1)), burst, tokens: burst, at: Instant::now() }
    }

    /// Takes a token, or answers how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[derive(Default)]
struct Counts {
    users: HashMap<UserId, (usize, Bucket)>,
    addresses: HashMap<IpAddr, usize>,
    total: usize,
}

/// The gateway's shared limits.
pub struct Limits {
    config: LimitConfig,
    counts: Mutex<Counts>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyForAddress,
    TooManyForUser,
    TooManyInAll,
}

impl Limits {
    pub fn new(config: LimitConfig) -> Arc<Limits> {
        Arc::new(Limits { config, counts: Mutex::new(Counts::default()) })
    }

    pub fn config(&self) -> LimitConfig {
        self.config
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new TCP connection from `addr`, counted until the guard drops.
    pub fn admit_address(self: &Arc<Self>, addr: IpAddr) -> Result<AddressGuard, Refusal> {
        let mut c = self.lock();
        if c.total >= self.config.max_connections {
            return Err(Refusal::TooManyInAll);
        }
        let n = c.addresses.entry(addr).or_default();
        if *n >= self.config.max_per_address {
            return Err(Refusal::TooManyForAddress);
        }
        *n += 1;
        c.total += 1;
        Ok(AddressGuard { limits: self.clone(), addr })
    }

    /// Admits a session of `user`, counted until the guard drops.
    pub fn admit_user(self: &Arc<Self>, user: &UserId) -> Result<UserGuard, Refusal> {
        let mut c = self.lock();
        let (rate, burst) = (self.config.user_rate, self.config.user_burst);
        let entry = c.users.entry(user.clone()).or_insert_with(|| (0, Bucket::new(rate, burst)));
        if entry.0 >= self.config.max_per_user {
            return Err(Refusal::TooManyForUser);
        }
        entry.0 += 1;
        Ok(UserGuard { limits: self.clone(), user: user.clone() })
    }

    /// Takes one frame from `user`'s shared bucket.
    pub fn take_user(&self, user: &UserId, now: Instant) -> Result<(), Duration> {
        match self.lock().users.get_mut(user) {
            Some((_, bucket)) => bucket.take(now),
            None => Ok(()),
        }
    }

    /// Connections admitted and not yet closed.
    pub fn connections(&self) -> usize {
        self.lock().total
    }
}

/// Holds one TCP connection's place in the address and total counts.
pub struct AddressGuard {
    limits: Arc<Limits>,
    addr: IpAddr,
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        let mut c = self.limits.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.addresses.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                c.addresses.remove(&self.addr);
            }
        }
    }
}

/// Holds one session's place in its user's count.
pub struct UserGuard {
    limits: Arc<Limits>,
    user: UserId,
}

impl Drop for UserGuard {
    fn drop(&mut self) {
        let mut c = self.limits.lock();
        if let Some(entry) = c.users.get_mut(&self.user) {
            entry.0 -= 1;
            if entry.0 == 0 {
                c.users.remove(&self.user);
            }
        }
    }
}

/// The process's limit on open files (the soft RLIMIT_NOFILE), read from /proc; None where unknown.
pub fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LimitConfig {
        LimitConfig {
            connection_rate: 10,
            connection_burst: 5,
            user_rate: 10,
            user_burst: 5,
            max_per_user: 2,
            max_per_address: 2,
            max_connections: 3,
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut b = Bucket::new(10, 5);
        for _ in 0..5 {
            assert!(b.take(start).is_ok());
        }
        let wait = b.take(start).expect_err("empty");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(b.take(start + Duration::from_millis(100)).is_ok(), "one token after 100 ms at 10/s");
        assert!(b.take(start + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn connection_counts_hold_and_are_given_back() -> Result<(), Refusal> {
        let limits = Limits::new(config());
        let (a, b): (IpAddr, IpAddr) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
        let g1 = limits.admit_address(a)?;
        let _g2 = limits.admit_address(a)?;
        assert_eq!(limits.admit_address(a).err(), Some(Refusal::TooManyForAddress));
        let _g3 = limits.admit_address(b)?;
        assert_eq!(limits.admit_address(b).err(), Some(Refusal::TooManyInAll));
        drop(g1);
        assert_eq!(limits.connections(), 2);
        let _g4 = limits.admit_address(a)?;

        let alice = UserId::parse("alice").map_err(|_| Refusal::TooManyForUser)?;
        let u1 = limits.admit_user(&alice)?;
        let _u2 = limits.admit_user(&alice)?;
        assert_eq!(limits.admit_user(&alice).err(), Some(Refusal::TooManyForUser));
        drop(u1);
        assert!(limits.admit_user(&alice).is_ok());
        Ok(())
    }
}
