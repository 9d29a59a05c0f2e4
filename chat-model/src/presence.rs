//! How presence is spelled in Redis: which gateway holds which device, until when.
//!
//! One hash per user, `{prefix}presence:{user}`; one field per device, whose value is
//! `{push address}|{connection id}|{expires at, ms since epoch}`. Gateways write it, delivery workers read it.
//! A field past its expiry is ignored by readers, so a gateway that dies stops receiving pushes within one TTL.
//!
//! One more field, [`DEVICES_CHANGED`], holds a random stamp that a gateway replaces each time it has registered
//! a device of the user in the store: a reader that keeps the user's device list may keep it while the stamp it
//! read before reading the list is unchanged. It is not a device (device ids cannot hold `~`).

use crate::{DeviceId, UserId};

/// The Redis key of a user's presence hash.
pub fn key(prefix: &str, user: &UserId) -> String {
    format!("{prefix}presence:{user}")
}

/// The field of a user's hash whose value changes after each registration of one of their devices.
pub const DEVICES_CHANGED: &str = "~devices";

/// Where one device is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The gRPC address of the gateway holding the connection (`host:port`).
    pub push_addr: String,
    /// The gateway's id for the connection; lets a gateway remove only its own entry.
    pub conn_id: u64,
    pub expires_at_ms: i64,
}

impl Entry {
    pub fn encode(&self) -> String {
        format!("{}|{}|{}", self.push_addr, self.conn_id, self.expires_at_ms)
    }

    /// The prefix that names this entry's connection regardless of its expiry.
    pub fn owner_prefix(push_addr: &str, conn_id: u64) -> String {
        format!("{push_addr}|{conn_id}|")
    }

    pub fn decode(value: &str) -> Option<Entry> {
        let mut parts = value.rsplitn(3, '|');
        let expires_at_ms = parts.next()?.parse().ok()?;
        let conn_id = parts.next()?.parse().ok()?;
        let push_addr = parts.next()?.to_owned();
        if push_addr.is_empty() {
            return None;
        }
        Some(Entry { push_addr, conn_id, expires_at_ms })
    }
}

/// The connection that a device's new connection, held by the gateway at `push_addr`, replaces on another
/// gateway: `previous` (what the device's field held before this gateway wrote it) when it names another
/// push address, which that gateway is then asked to close (4000). A previous entry of this same gateway
/// names a connection the gateway closes itself, from its own registry. An expired entry still counts: its
/// gateway may be alive but cut off from Redis, and still hold the connection.
pub fn replaced_elsewhere(previous: Option<Entry>, push_addr: &str) -> Option<Entry> {
    previous.filter(|e| e.push_addr != push_addr)
}

/// The live entries of a user's hash, as (device, entry); malformed and expired fields are left out.
pub fn live_devices(fields: Vec<(String, String)>, now_ms: i64) -> Vec<(DeviceId, Entry)> {
    let mut out = Vec::with_capacity(fields.len());
    for (device, value) in fields {
        let (Ok(device), Some(entry)) = (DeviceId::parse(&device), Entry::decode(&value)) else {
            continue;
        };
        if entry.expires_at_ms > now_ms {
            out.push((device, entry));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_expire() {
        let e = Entry { push_addr: "127.0.0.1:50061".into(), conn_id: 7, expires_at_ms: 1_000 };
        assert_eq!(Entry::decode(&e.encode()), Some(e.clone()));
        assert!(e.encode().starts_with(&Entry::owner_prefix("127.0.0.1:50061", 7)));
        assert_eq!(Entry::decode("nonsense"), None);
        assert_eq!(Entry::decode("|1|2"), None);
        let fields = vec![
            ("phone".to_owned(), e.encode()),
            ("tablet".to_owned(), Entry { expires_at_ms: 10, ..e.clone() }.encode()),
            ("bad device".to_owned(), e.encode()),
            ("laptop".to_owned(), "garbage".to_owned()),
            (DEVICES_CHANGED.to_owned(), "7f3a".to_owned()),
        ];
        let live = live_devices(fields, 500);
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].0.as_str(), "phone");
    }

    #[test]
    fn only_an_entry_of_another_gateway_is_replaced_elsewhere() {
        let here = "10.0.0.1:50061";
        let there = Entry { push_addr: "10.0.0.2:50061".into(), conn_id: 3, expires_at_ms: 1_000 };
        assert_eq!(replaced_elsewhere(None, here), None, "a first connection replaces nothing");
        let ours = Entry { push_addr: here.into(), ..there.clone() };
        assert_eq!(replaced_elsewhere(Some(ours), here), None, "this gateway closes its own from its registry");
        assert_eq!(replaced_elsewhere(Some(there.clone()), here), Some(there.clone()));
        let expired = Entry { expires_at_ms: 0, ..there };
        assert_eq!(replaced_elsewhere(Some(expired.clone()), here), Some(expired), "expired entries count too");
    }
}
