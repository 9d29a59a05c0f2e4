//! The connections this gateway holds, by (user, device), and what a push does to one of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chat_model::{ConversationId, DeviceId, UserId};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Why the gateway closes a connection: a close code and its reason text.
pub type CloseReason = (u16, &'static str);

/// The close of a connection whose device connected again, on this gateway or another one (4000).
pub const CONNECTED_AGAIN: CloseReason = (crate::protocol::close::REPLACED, "device connected again");

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// In the connection's send queue (or held until its inbox is drained).
    Queued,
    /// The queue was full: the connection is being closed as a slow consumer.
    Overflow,
    /// The connection is already closing.
    Closed,
}

enum Phase {
    /// The inbox is being sent; live pushes wait here, in arrival order.
    Syncing(Vec<(ConversationId, u64, Utf8Bytes)>),
    Live,
}

/// One connection, as the rest of the gateway sees it.
pub struct ConnHandle {
    pub conn_id: u64,
    pub user: UserId,
    pub device: DeviceId,
    out: mpsc::Sender<Utf8Bytes>,
    phase: Mutex<Phase>,
    close: watch::Sender<Option<CloseReason>>,
    /// Most pushes held while syncing: the send queue's capacity.
    hold_limit: usize,
    /// Woken when the device's presence had been lost (Redis restarted empty, or expired): messages
    /// meanwhile went to its inbox, which the session then sends again.
    pub resync: tokio::sync::Notify,
    /// Whether the device is registered in the store (so that workers keep an inbox for it when presence
    /// is lost). A registration that failed at connect is tried again by the presence refresh.
    pub registered: std::sync::atomic::AtomicBool,
}

impl ConnHandle {
    pub fn new(
        conn_id: u64,
        user: UserId,
        device: DeviceId,
        out: mpsc::Sender<Utf8Bytes>,
        close: watch::Sender<Option<CloseReason>>,
        hold_limit: usize,
    ) -> ConnHandle {
        ConnHandle {
            conn_id,
            user,
            device,
            out,
            phase: Mutex::new(Phase::Syncing(Vec::new())),
            close,
            hold_limit,
            resync: tokio::sync::Notify::new(),
            registered: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Queues a live message for the client without waiting. A full queue closes the connection as a slow
    /// consumer (P8): the client reconnects and resumes by cursor, so nothing is lost.
    pub fn push(&self, conversation: ConversationId, seq: u64, frame: Utf8Bytes) -> PushOutcome {
        if self.close.borrow().is_some() {
            return PushOutcome::Closed;
        }
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *phase {
            Phase::Syncing(held) => {
                if held.len() >= self.hold_limit {
                    drop(phase);
                    self.close_with((crate::protocol::close::SLOW_CONSUMER, "send queue full"));
                    return PushOutcome::Overflow;
                }
                held.push((conversation, seq, frame));
                PushOutcome::Queued
            }
            Phase::Live => match self.out.try_send(frame) {
                Ok(()) => PushOutcome::Queued,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    drop(phase);
                    self.close_with((crate::protocol::close::SLOW_CONSUMER, "send queue full"));
                    PushOutcome::Overflow
                }
                Err(mpsc::error::TrySendError::Closed(_)) => PushOutcome::Closed,
            },
        }
    }

    /// Ends the syncing phase: queues the held pushes that `already_sent` does not cover, then lets pushes
    /// through directly. Returns how many held pushes were queued.
    pub fn go_live(&self, already_sent: impl Fn(ConversationId, u64) -> bool) -> usize {
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        let held = match std::mem::replace(&mut *phase, Phase::Live) {
            Phase::Syncing(held) => held,
            Phase::Live => return 0,
        };
        let mut queued = 0;
        for (conversation, seq, frame) in held {
            if already_sent(conversation, seq) {
                continue;
            }
            if self.out.try_send(frame).is_err() {
                drop(phase);
                self.close_with((crate::protocol::close::SLOW_CONSUMER, "send queue full"));
                return queued;
            }
            queued += 1;
        }
        queued
    }

    /// Watches the connection's close reason (set once, by [`ConnHandle::close_with`]).
    pub fn closing(&self) -> watch::Receiver<Option<CloseReason>> {
        self.close.subscribe()
    }

    /// Asks the connection to close with `reason` (the first reason wins).
    pub fn close_with(&self, reason: CloseReason) {
        self.close.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }
}

/// Every connection of this process.
#[derive(Default)]
pub struct Registry {
    next_id: AtomicU64,
    conns: Mutex<HashMap<(UserId, DeviceId), Arc<ConnHandle>>>,
}

impl Registry {
    pub fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Adds a connection; returns the one it replaces (same user and device), which the caller closes.
    pub fn insert(&self, conn: Arc<ConnHandle>) -> Option<Arc<ConnHandle>> {
        let key = (conn.user.clone(), conn.device.clone());
        self.lock().insert(key, conn)
    }

    /// Removes the connection if it is still the one registered for its device.
    pub fn remove(&self, user: &UserId, device: &DeviceId, conn_id: u64) -> bool {
        let mut conns = self.lock();
        let key = (user.clone(), device.clone());
        if conns.get(&key).is_some_and(|c| c.conn_id == conn_id) {
            conns.remove(&key);
            true
        } else {
            false
        }
    }

    /// Closes the device's connection with `reason` if it is connection `conn_id`; answers whether it was.
    /// Another gateway asks this when the device connected to it: the id keeps a connection made here
    /// after that one (the device came back) from being closed by a late request.
    pub fn close_if(&self, user: &UserId, device: &DeviceId, conn_id: u64, reason: CloseReason) -> bool {
        match self.get(user, device) {
            Some(c) if c.conn_id == conn_id => {
                c.close_with(reason);
                true
            }
            _ => false,
        }
    }

    pub fn get(&self, user: &UserId, device: &DeviceId) -> Option<Arc<ConnHandle>> {
        self.lock().get(&(user.clone(), device.clone())).cloned()
    }

    pub fn all(&self) -> Vec<Arc<ConnHandle>> {
        self.lock().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(UserId, DeviceId), Arc<ConnHandle>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(queue: usize) -> (Arc<ConnHandle>, mpsc::Receiver<Utf8Bytes>, watch::Receiver<Option<CloseReason>>) {
        let (tx, rx) = mpsc::channel(queue);
        let (ctx, crx) = watch::channel(None);
        let h = ConnHandle::new(1, UserId::parse("u").expect("id"), DeviceId::parse("d").expect("id"), tx, ctx, queue);
        (Arc::new(h), rx, crx)
    }

    #[test]
    fn pushes_wait_while_syncing_and_skip_what_the_inbox_sent() {
        let (h, mut rx, _close) = handle(8);
        let c = ConversationId::generate();
        assert_eq!(h.push(c, 1, "one".into()), PushOutcome::Queued);
        assert_eq!(h.push(c, 2, "two".into()), PushOutcome::Queued);
        assert!(rx.try_recv().is_err(), "nothing goes out while syncing");
        assert_eq!(h.go_live(|_, seq| seq == 1), 1);
        assert_eq!(rx.try_recv().ok().map(|t| t.to_string()), Some("two".to_owned()));
        assert_eq!(h.push(c, 3, "three".into()), PushOutcome::Queued);
        assert_eq!(rx.try_recv().ok().map(|t| t.to_string()), Some("three".to_owned()));
    }

    #[test]
    fn a_full_queue_closes_as_slow_consumer() {
        let (h, _rx, close) = handle(2);
        let c = ConversationId::generate();
        h.go_live(|_, _| false);
        assert_eq!(h.push(c, 1, "a".into()), PushOutcome::Queued);
        assert_eq!(h.push(c, 2, "b".into()), PushOutcome::Queued);
        assert_eq!(h.push(c, 3, "c".into()), PushOutcome::Overflow);
        assert_eq!(*close.borrow(), Some((crate::protocol::close::SLOW_CONSUMER, "send queue full")));
        assert_eq!(h.push(c, 4, "d".into()), PushOutcome::Closed);
    }

    #[test]
    fn the_registry_removes_only_the_current_connection() {
        let reg = Registry::default();
        let (a, _ra, _ca) = handle(1);
        assert!(reg.insert(a.clone()).is_none());
        let (tx, _rx) = mpsc::channel(1);
        let (ctx, _crx) = watch::channel(None);
        let b = Arc::new(ConnHandle::new(2, a.user.clone(), a.device.clone(), tx, ctx, 1));
        assert_eq!(reg.insert(b).map(|old| old.conn_id), Some(1));
        assert!(!reg.remove(&a.user, &a.device, 1), "the replaced connection does not remove its successor");
        assert!(reg.remove(&a.user, &a.device, 2));
        assert!(reg.is_empty());
    }

    #[test]
    fn close_if_closes_only_the_named_connection() {
        let reg = Registry::default();
        let (a, _ra, close_a) = handle(1);
        reg.insert(a.clone());
        let replaced = CONNECTED_AGAIN;
        assert!(!reg.close_if(&a.user, &a.device, 2, replaced), "a request naming an older connection");
        assert_eq!(*close_a.borrow(), None, "the current connection stays open");
        let other = DeviceId::parse("other").expect("id");
        assert!(!reg.close_if(&a.user, &other, 1, replaced), "another device");
        assert!(reg.close_if(&a.user, &a.device, 1, replaced));
        assert_eq!(*close_a.borrow(), Some(replaced));
    }
}
