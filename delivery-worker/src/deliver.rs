//! The step: deliver one message to every device of every member, by push or into the inbox.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_model::event::Receipt;
use chat_model::{ConversationId, DeviceId, Message, Seq, UserId};
use chat_store::{CassandraStore, StoreError};
use futures::future::join_all;
use proto::v1;
use routing::{Presence, Pushers};

use crate::cursor::{Cursors, Plan};

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The store could not be read or written: the record is handled again later (nothing is skipped).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What handling one record did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Messages delivered (0 or 1).
    pub messages: usize,
    /// Devices that took a message by push.
    pub pushed: usize,
    /// Inbox rows written.
    pub inboxed: usize,
    /// The record was already delivered.
    pub skipped: bool,
}

pub struct Deliverer {
    store: CassandraStore,
    presence: Presence,
    pushers: Pushers,
    members: TtlCache<ConversationId, Vec<UserId>>,
    devices: TtlCache<UserId, Devices>,
}

/// A user's device list, with the presence stamp read before it ([`chat_model::presence::DEVICES_CHANGED`]):
/// kept while the stamp is unchanged.
struct Devices {
    stamp: Option<String>,
    list: Vec<DeviceId>,
}

/// Values reused for a short time. Bounded: when full it is cleared, which only costs reads.
struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, Arc<V>)>>,
}

const CACHE_CAPACITY: usize = 100_000;

/// Device lists read at once for one message.
const DEVICE_READS: usize = 64;

/// A delivery taking this long is logged (debug) with the time of its steps.
const SLOW_DELIVERY: Duration = Duration::from_millis(50);

impl<K: std::hash::Hash + Eq + Clone, V> TtlCache<K, V> {
    fn new(ttl: Duration) -> Self {
        TtlCache { ttl, entries: Mutex::new(HashMap::new()) }
    }

    fn forget(&self, key: &K) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    fn clear(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The cached value of `key`, or the one `load` reads (then cached).
    async fn get<F, Fut>(&self, key: &K, load: F) -> Result<Arc<V>, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, StoreError>>,
    {
        self.get_if(key, |_| true, load).await
    }

    /// The cached value of each of `keys` for which `still` (given its index) holds, under one lock; `None`
    /// where there is none.
    fn get_each(&self, keys: &[K], still: impl Fn(usize, &V) -> bool) -> Vec<Option<Arc<V>>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter().enumerate().map(|(i, k)| self.kept(entries.get(k), |v| still(i, v))).collect()
    }

    /// The value of a cache entry still in its time and for which `still` holds.
    fn kept(&self, entry: Option<&(Instant, Arc<V>)>, still: impl Fn(&V) -> bool) -> Option<Arc<V>> {
        entry.filter(|(at, v)| at.elapsed() < self.ttl && still(v)).map(|(_, v)| v.clone())
    }

    /// The cached value of `key` if `still` holds for it, or the one `load` reads (then cached).
    async fn get_if<F, Fut>(&self, key: &K, still: impl Fn(&V) -> bool, load: F) -> Result<Arc<V>, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, StoreError>>,
    {
        let kept = self.kept(self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(key), still);
        if let Some(v) = kept {
            return Ok(v);
        }
        let v = Arc::new(load().await?);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_CAPACITY {
            entries.clear();
        }
        entries.insert(key.clone(), (Instant::now(), v.clone()));
        Ok(v)
    }
}

impl Deliverer {
    /// Pushes go through `pushers` (whose deadline bounds each); member lists are reused for at most
    /// `members_ttl` (each is forgotten sooner by its conversation's membership events, and all of them by
    /// [`Deliverer::forget_members`]), device lists for `devices_ttl`.
    pub fn new(
        store: CassandraStore,
        presence: Presence,
        pushers: Pushers,
        members_ttl: Duration,
        devices_ttl: Duration,
    ) -> Deliverer {
        Deliverer { store, presence, pushers, members: TtlCache::new(members_ttl), devices: TtlCache::new(devices_ttl) }
    }

    /// Forgets every member list: after a rebalance, the partitions this worker gets may have had membership
    /// events applied elsewhere since it last held them.
    pub fn forget_members(&self) {
        self.members.clear();
    }

    /// Handles the record of `m`: delivers it, unless it was delivered already.
    pub async fn handle(&self, cursors: &mut Cursors, m: &Message) -> Result<Outcome, DeliverError> {
        let conv = m.conversation_id;
        let seq = m.seq.get();
        let plan = match cursors.plan(conv, seq) {
            Some(p) => p,
            None => {
                let stored = self.store.delivery_cursor(conv).await?;
                cursors.start(conv, stored);
                cursors.plan(conv, seq).unwrap_or(Plan::Deliver)
            }
        };
        if plan == Plan::Skip {
            return Ok(Outcome { skipped: true, ..Outcome::default() });
        }
        let outcome = self.deliver(m).await?;
        cursors.delivered(conv, seq);
        Ok(outcome)
    }

    /// Writes the cursors' unsaved moves to the store (`delivery_cursors`), all at once.
    pub async fn save_cursors(&self, cursors: &mut Cursors) -> Result<(), StoreError> {
        let moves = cursors.unsaved();
        let writes = moves.iter().filter_map(|(c, s)| Seq::new(*s).map(|s| self.store.set_delivery_cursor(*c, s)));
        for r in join_all(writes).await {
            r?;
        }
        cursors.saved(&moves);
        Ok(())
    }

    /// Projects one message into the store (its history row and idempotency record), then delivers it to
    /// every device of every member but the sending device: history shows a message no later than it is
    /// delivered (P1).
    pub async fn deliver(&self, m: &Message) -> Result<Outcome, DeliverError> {
        let started = Instant::now();
        let (projected, members) = tokio::join!(self.store.project_message(m), self.members(m.conversation_id));
        projected?;
        let members = members?;
        let projected = started.elapsed();
        // Presence first: its device-list stamps say which kept device lists still hold.
        let lookup = self.presence.lookup(&members).await;
        let online = lookup.online;
        let devices = self.devices_of(&members, lookup.device_stamps.as_deref()).await?;
        let looked_up = started.elapsed();
        // Borrowed, not cloned: a group's message names every member's devices.
        let mut targets: HashSet<(&UserId, &DeviceId)> = HashSet::new();
        for (user, devices) in members.iter().zip(&devices) {
            targets.extend(devices.list.iter().map(|d| (user, d)));
        }
        targets.extend(online.keys().map(|(u, d)| (u, d)));
        targets.remove(&(&m.sender_id, &m.sender_device_id));

        // One push per gateway, all at once; each bounded by the push deadline (a gateway that missed it is
        // marked down and asked to resync these devices' inbox when it answers again).
        let request = v1::PushRequest {
            message: Some(chat_model::event::message_to_proto(m)),
            devices: Vec::new(),
            receipt: None,
            typing: None,
        };
        let taken: Vec<v1::DeviceRef> = if lifecycle::failpoint("worker-drop-push") {
            // The bug the fault tests must catch: the push is lost, yet counted as done (no inbox row).
            online.keys().map(|(u, d)| v1::DeviceRef { user_id: u.to_string(), device_id: d.to_string() }).collect()
        } else {
            self.pushers.fan_out(&online, Some((&m.sender_id, &m.sender_device_id)), request).await
        };
        let delivered: HashSet<(&str, &str)> =
            taken.iter().map(|d| (d.user_id.as_str(), d.device_id.as_str())).collect();
        let pushed = started.elapsed();
        let offline: Vec<(&UserId, &DeviceId)> =
            targets.into_iter().filter(|(u, d)| !delivered.contains(&(u.as_str(), d.as_str()))).collect();
        // The bug the fault tests must catch: inbox rows not written, yet counted as written.
        let skip_inbox = lifecycle::failpoint("worker-skip-inbox");
        let writes = offline.iter().filter(|_| !skip_inbox).map(|&(u, d)| self.store.put_inbox(u, d, m));
        for r in join_all(writes).await {
            r?;
        }
        let took = started.elapsed();
        if took >= SLOW_DELIVERY {
            tracing::debug!(conversation = %m.conversation_id, seq = m.seq.get(), ?took, ?projected,
                looked_up = ?(looked_up - projected), pushed = ?(pushed - looked_up), inboxed = ?(took - pushed),
                "slow delivery");
        }
        Ok(Outcome { messages: 1, pushed: delivered.len(), inboxed: offline.len(), skipped: false })
    }

    /// Routes a receipt to every online device of every member but the one that made it. Receipts are not
    /// kept in inboxes: read positions are state (`read_marks`), which a device reads when it comes back.
    pub async fn deliver_receipt(&self, r: &Receipt) -> Result<Outcome, DeliverError> {
        self.store.project(&chat_model::event::LogEvent::ReceiptRecorded(r.clone())).await?;
        let members = self.members(r.conversation_id).await?;
        let online = self.presence.online(&members).await;
        let receipt = v1::Receipt {
            conversation_id: r.conversation_id.to_string(),
            user_id: r.user_id.to_string(),
            device_id: r.device_id.to_string(),
            kind: chat_model::event::receipt_kind_to_proto(r.kind) as i32,
            up_to_seq: r.up_to.get(),
        };
        let request = v1::PushRequest { message: None, devices: Vec::new(), receipt: Some(receipt), typing: None };
        let pushed = self.pushers.fan_out(&online, Some((&r.user_id, &r.device_id)), request).await.len();
        Ok(Outcome { messages: 0, pushed, inboxed: 0, skipped: false })
    }

    /// Projects a change of a conversation (created, members changed) into the store, and forgets the
    /// cached member list so that the next message reaches the new members.
    pub async fn apply_membership(&self, event: &chat_model::event::LogEvent) -> Result<Outcome, DeliverError> {
        self.store.project(event).await?;
        self.members.forget(&event.conversation_id());
        Ok(Outcome::default())
    }

    async fn members(&self, id: ConversationId) -> Result<Arc<Vec<UserId>>, StoreError> {
        self.members.get(&id, || self.store.members(id)).await
    }

    /// `user`'s devices: the kept list while its stamp is `stamp`, else read from the store (and kept with
    /// `stamp`). With no stamps (presence unreadable) the store is read and nothing kept.
    async fn devices(&self, user: &UserId, stamp: Option<&Option<String>>) -> Result<Arc<Devices>, StoreError> {
        let Some(stamp) = stamp else {
            return Ok(Arc::new(Devices { stamp: None, list: self.store.devices(user).await? }));
        };
        self.devices
            .get_if(
                user,
                |d| d.stamp == *stamp,
                || async { Ok(Devices { stamp: stamp.clone(), list: self.store.devices(user).await? }) },
            )
            .await
    }

    /// The devices of each of `users`, in their order (`stamps`: their device-list stamps, in the same
    /// order). The ones not kept are read concurrently, [`DEVICE_READS`] at a time: a group's lists expire
    /// together, and read one after the other they held each of its messages about 50 ms.
    async fn devices_of(
        &self,
        users: &[UserId],
        stamps: Option<&[Option<String>]>,
    ) -> Result<Vec<Arc<Devices>>, StoreError> {
        // The kept lists first, under one lock; then the others are read.
        let mut out = match stamps {
            Some(stamps) => self.devices.get_each(users, |i, d| d.stamp == stamps[i]),
            None => vec![None; users.len()],
        };
        let missing: Vec<usize> = (0..users.len()).filter(|&i| out[i].is_none()).collect();
        for chunk in missing.chunks(DEVICE_READS) {
            let reads = chunk.iter().map(|&i| self.devices(&users[i], stamps.map(|s| &s[i])));
            for (&i, devices) in chunk.iter().zip(join_all(reads).await) {
                out[i] = Some(devices?);
            }
        }
        Ok(out.into_iter().map(|d| d.expect("every list kept or read")).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kept_values_are_taken_together_where_their_stamp_still_holds() {
        let cache: TtlCache<&str, u32> = TtlCache::new(Duration::from_secs(60));
        for (user, stamp) in [("ann", 1), ("bob", 2)] {
            cache.get(&user, || async move { Ok(stamp) }).await.expect("read");
        }
        let stamps = [1, 3, 7];
        let kept: Vec<Option<u32>> =
            cache.get_each(&["ann", "bob", "cid"], |i, v| *v == stamps[i]).into_iter().map(|v| v.map(|v| *v)).collect();
        assert_eq!(kept, [Some(1), None, None], "bob's stamp moved on; cid was never kept");
        let expired: TtlCache<&str, u32> = TtlCache::new(Duration::ZERO);
        expired.get(&"ann", || async { Ok(1) }).await.expect("read");
        assert_eq!(expired.get_each(&["ann"], |_, _| true).len(), 1);
        assert!(expired.get_each(&["ann"], |_, _| true)[0].is_none(), "past its time");
    }

    #[tokio::test]
    async fn a_kept_value_is_read_again_once_its_stamp_or_its_time_has_passed() {
        let cache: TtlCache<&str, (u32, u32)> = TtlCache::new(Duration::from_secs(60));
        let reads = std::sync::atomic::AtomicU32::new(0);
        let read = |stamp: u32| {
            let n = reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            async move { Ok((stamp, n)) }
        };
        assert_eq!(*cache.get_if(&"bob", |v| v.0 == 1, || read(1)).await.expect("read"), (1, 1));
        assert_eq!(*cache.get_if(&"bob", |v| v.0 == 1, || read(1)).await.expect("read"), (1, 1), "same stamp: kept");
        assert_eq!(
            *cache.get_if(&"bob", |v| v.0 == 2, || read(2)).await.expect("read"),
            (2, 2),
            "new stamp: read again"
        );
        assert_eq!(*cache.get_if(&"bob", |v| v.0 == 2, || read(2)).await.expect("read"), (2, 2));

        let short: TtlCache<&str, (u32, u32)> = TtlCache::new(Duration::ZERO);
        assert_eq!(*short.get_if(&"bob", |_| true, || read(2)).await.expect("read"), (2, 3));
        assert_eq!(
            *short.get_if(&"bob", |_| true, || read(2)).await.expect("read"),
            (2, 4),
            "past its time: read again"
        );
    }
}
