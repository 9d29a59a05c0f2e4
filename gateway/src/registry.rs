//! The connections this gateway holds, by (user, device), and what a push does to one of them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chat_model::{ConversationId, DeviceId, UserId};
use tokio::sync::Notify;
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

/// What the connection's session does next, as [`ConnHandle::next`] answers it.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Close the connection with this reason.
    Close(CloseReason),
    /// Write this frame.
    Frame(Utf8Bytes),
    /// Send the device's inbox again.
    Resync,
}

/// The connection's send queue and the requests to its session, under one lock.
struct State {
    /// Frames to write, in order. Allocated on the first frame and given back when emptied after a burst:
    /// a resting connection holds no room for frames.
    queue: VecDeque<Utf8Bytes>,
    phase: Phase,
    /// Why the connection closes, once decided (the first reason wins).
    close: Option<CloseReason>,
    /// The inbox is to be sent again.
    resync: bool,
    /// The session has stopped writing: frames are refused.
    ended: bool,
}

/// Frames a queue keeps room for after it emptied; a larger one is given back.
const RESTING_ROOM: usize = 4;

/// The queue is full, or the connection has stopped writing.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused;

/// One connection, as the rest of the gateway sees it. Its session is one task, woken by [`ConnHandle::next`]:
/// no channel sits between the pushers and the socket, only this handle's queue.
pub struct ConnHandle {
    pub conn_id: u64,
    pub user: UserId,
    pub device: DeviceId,
    state: Mutex<State>,
    /// Wakes the session: a frame queued, a close or a resync asked.
    wake: Notify,
    /// Wakes the connection's own senders (its request worker, its inbox) waiting for room.
    room: Notify,
    /// Most frames queued, and most pushes held while syncing.
    capacity: usize,
    /// Whether the device is registered in the store (so that workers keep an inbox for it when presence
    /// is lost). A registration that failed at connect is tried again by the presence refresh.
    pub registered: std::sync::atomic::AtomicBool,
}

impl ConnHandle {
    pub fn new(conn_id: u64, user: UserId, device: DeviceId, capacity: usize) -> ConnHandle {
        ConnHandle {
            conn_id,
            user,
            device,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                phase: Phase::Syncing(Vec::new()),
                close: None,
                resync: false,
                ended: false,
            }),
            wake: Notify::new(),
            room: Notify::new(),
            capacity: capacity.max(1),
            registered: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a live message for the client without waiting. A full queue closes the connection as a slow
    /// consumer (P8): the client reconnects and resumes by cursor, so nothing is lost.
    pub fn push(&self, conversation: ConversationId, seq: u64, frame: Utf8Bytes) -> PushOutcome {
        let mut state = self.lock();
        if state.close.is_some() || state.ended {
            return PushOutcome::Closed;
        }
        let capacity = self.capacity;
        let State { queue, phase, .. } = &mut *state;
        let full = match phase {
            Phase::Syncing(held) if held.len() < capacity => {
                held.push((conversation, seq, frame));
                false
            }
            Phase::Live if queue.len() < capacity => {
                queue.push_back(frame);
                false
            }
            Phase::Syncing(_) | Phase::Live => true,
        };
        drop(state);
        if full {
            self.close_with((crate::protocol::close::SLOW_CONSUMER, "send queue full"));
            return PushOutcome::Overflow;
        }
        self.wake.notify_one();
        PushOutcome::Queued
    }

    /// Ends the syncing phase: queues the held pushes that `already_sent` does not cover, then lets pushes
    /// through directly. Returns how many held pushes were queued.
    pub fn go_live(&self, already_sent: impl Fn(ConversationId, u64) -> bool) -> usize {
        let mut state = self.lock();
        let held = match std::mem::replace(&mut state.phase, Phase::Live) {
            Phase::Syncing(held) => held,
            Phase::Live => return 0,
        };
        let mut queued = 0;
        let mut full = false;
        for (conversation, seq, frame) in held {
            if already_sent(conversation, seq) {
                continue;
            }
            if state.queue.len() >= self.capacity {
                full = true;
                break;
            }
            state.queue.push_back(frame);
            queued += 1;
        }
        drop(state);
        if full {
            self.close_with((crate::protocol::close::SLOW_CONSUMER, "send queue full"));
        }
        self.wake.notify_one();
        queued
    }

    /// Queues one of the connection's own frames (an answer, the inbox), waiting for room; refused once the
    /// session stopped writing.
    pub async fn send(&self, frame: Utf8Bytes) -> Result<(), Refused> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before looking, so that room made between the look and the wait is not missed.
            room.as_mut().enable();
            match self.try_send(frame.clone()) {
                Ok(()) => return Ok(()),
                Err(SendError::Ended) => return Err(Refused),
                Err(SendError::Full) => room.await,
            }
        }
    }

    /// Queues one of the connection's own frames if there is room.
    fn try_send(&self, frame: Utf8Bytes) -> Result<(), SendError> {
        let mut state = self.lock();
        if state.ended {
            return Err(SendError::Ended);
        }
        if state.queue.len() >= self.capacity {
            return Err(SendError::Full);
        }
        state.queue.push_back(frame);
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    /// What the session does next, waiting until there is something: a close first, then a resync (when
    /// `resync_allowed`), then the oldest queued frame. Cancel-safe: nothing is taken before it answers.
    pub async fn next(&self, resync_allowed: bool) -> Next {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let mut state = self.lock();
                if let Some(reason) = state.close {
                    return Next::Close(reason);
                }
                if resync_allowed && std::mem::take(&mut state.resync) {
                    return Next::Resync;
                }
                if let Some(frame) = self.pop(&mut state) {
                    return Next::Frame(frame);
                }
            }
            woken.await;
        }
    }

    /// Takes the oldest queued frame (also once closing: the session writes what was queued before it).
    pub fn take_queued(&self) -> Option<Utf8Bytes> {
        let mut state = self.lock();
        self.pop(&mut state)
    }

    fn pop(&self, state: &mut State) -> Option<Utf8Bytes> {
        let frame = state.queue.pop_front()?;
        if state.queue.is_empty() && state.queue.capacity() > RESTING_ROOM {
            state.queue = VecDeque::new();
        }
        self.room.notify_waiters();
        Some(frame)
    }

    /// The connection's close reason, once decided.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.lock().close
    }

    /// Asks the connection to close with `reason` (the first reason wins).
    pub fn close_with(&self, reason: CloseReason) {
        self.lock().close.get_or_insert(reason);
        self.wake.notify_one();
    }

    /// Asks the session to send the device's inbox again (its presence had been lost, or a worker could not
    /// push to it): messages meanwhile went to the inbox.
    pub fn ask_resync(&self) {
        self.lock().resync = true;
        self.wake.notify_one();
    }

    /// The session stopped writing: queued frames are dropped and every sender refused from now.
    pub fn end(&self) {
        let mut state = self.lock();
        state.ended = true;
        state.queue = VecDeque::new();
        drop(state);
        self.room.notify_waiters();
    }
}

enum SendError {
    Full,
    Ended,
}

/// A connection's key as a pair of names, so that the map is searched with borrowed names
/// (`(&str, &str)`) as well as with its owned keys; both hash as the tuple `(UserId, DeviceId)` does.
trait DeviceKey {
    fn names(&self) -> (&str, &str);
}

impl DeviceKey for (UserId, DeviceId) {
    fn names(&self) -> (&str, &str) {
        (self.0.as_str(), self.1.as_str())
    }
}

impl DeviceKey for (&str, &str) {
    fn names(&self) -> (&str, &str) {
        (self.0, self.1)
    }
}

impl<'a> std::borrow::Borrow<dyn DeviceKey + 'a> for (UserId, DeviceId) {
    fn borrow(&self) -> &(dyn DeviceKey + 'a) {
        self
    }
}

impl std::hash::Hash for dyn DeviceKey + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // What the derived Hash of (UserId, DeviceId) does: each id hashes as its string.
        let (user, device) = self.names();
        user.hash(state);
        device.hash(state);
    }
}

impl PartialEq for dyn DeviceKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.names() == other.names()
    }
}

impl Eq for dyn DeviceKey + '_ {}

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
        let key = (user.as_str(), device.as_str());
        if conns.get(&key as &dyn DeviceKey).is_some_and(|c| c.conn_id == conn_id) {
            conns.remove(&key as &dyn DeviceKey);
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
        self.lock().get(&(user.as_str(), device.as_str()) as &dyn DeviceKey).cloned()
    }

    /// The connection of each (user, device), named as received (a name that is not a valid id is simply
    /// not found), in their order: one lock, and no allocation per device (a push names many).
    pub fn get_each<'a>(&self, devices: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<Option<Arc<ConnHandle>>> {
        let conns = self.lock();
        devices.map(|key| conns.get(&key as &dyn DeviceKey).cloned()).collect()
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
    use std::time::Duration;

    fn handle(queue: usize) -> Arc<ConnHandle> {
        Arc::new(ConnHandle::new(1, UserId::parse("u").expect("id"), DeviceId::parse("d").expect("id"), queue))
    }

    fn queued(h: &ConnHandle) -> Vec<String> {
        std::iter::from_fn(|| h.take_queued()).map(|t| t.to_string()).collect()
    }

    #[test]
    fn pushes_wait_while_syncing_and_skip_what_the_inbox_sent() {
        let h = handle(8);
        let c = ConversationId::generate();
        assert_eq!(h.push(c, 1, "one".into()), PushOutcome::Queued);
        assert_eq!(h.push(c, 2, "two".into()), PushOutcome::Queued);
        assert!(queued(&h).is_empty(), "nothing goes out while syncing");
        assert_eq!(h.go_live(|_, seq| seq == 1), 1);
        assert_eq!(queued(&h), ["two"]);
        assert_eq!(h.push(c, 3, "three".into()), PushOutcome::Queued);
        assert_eq!(queued(&h), ["three"]);
    }

    #[test]
    fn connections_are_found_by_borrowed_names_as_by_their_ids() {
        let registry = Registry::default();
        let (alice, bob) = (UserId::parse("alice").expect("id"), UserId::parse("bob").expect("id"));
        let (phone, laptop) = (DeviceId::parse("phone").expect("id"), DeviceId::parse("laptop").expect("id"));
        for (i, (u, d)) in [(&alice, &phone), (&alice, &laptop), (&bob, &phone)].into_iter().enumerate() {
            registry.insert(Arc::new(ConnHandle::new(i as u64 + 1, u.clone(), d.clone(), 4)));
        }
        let found: Vec<Option<u64>> = registry
            .get_each(
                [("alice", "laptop"), ("bob", "phone"), ("bob", "laptop"), ("alicelaptop", ""), ("bad name!", "x")]
                    .into_iter(),
            )
            .into_iter()
            .map(|c| c.map(|c| c.conn_id))
            .collect();
        assert_eq!(found, [Some(2), Some(3), None, None, None], "the names, not their concatenation, must match");
        assert_eq!(registry.get(&alice, &phone).map(|c| c.conn_id), Some(1));
        assert!(registry.remove(&alice, &phone, 1));
        assert!(registry.get_each([("alice", "phone")].into_iter())[0].is_none());
    }

    #[test]
    fn a_full_queue_closes_as_slow_consumer() {
        let h = handle(2);
        let c = ConversationId::generate();
        h.go_live(|_, _| false);
        assert_eq!(h.push(c, 1, "a".into()), PushOutcome::Queued);
        assert_eq!(h.push(c, 2, "b".into()), PushOutcome::Queued);
        assert_eq!(h.push(c, 3, "c".into()), PushOutcome::Overflow);
        assert_eq!(h.close_reason(), Some((crate::protocol::close::SLOW_CONSUMER, "send queue full")));
        assert_eq!(h.push(c, 4, "d".into()), PushOutcome::Closed);
        assert_eq!(queued(&h), ["a", "b"], "what was queued before the close is still written");
    }

    #[test]
    fn holding_too_many_pushes_while_syncing_closes_as_slow_consumer() {
        let h = handle(1);
        let c = ConversationId::generate();
        assert_eq!(h.push(c, 1, "a".into()), PushOutcome::Queued);
        assert_eq!(h.push(c, 2, "b".into()), PushOutcome::Overflow);
        assert_eq!(h.close_reason(), Some((crate::protocol::close::SLOW_CONSUMER, "send queue full")));
    }

    #[tokio::test]
    async fn the_session_is_told_a_close_before_a_resync_before_frames() {
        let h = handle(8);
        h.go_live(|_, _| false);
        h.push(ConversationId::generate(), 1, "a".into());
        h.ask_resync();
        assert_eq!(h.next(false).await, Next::Frame("a".into()), "a resync waits while one is running");
        h.push(ConversationId::generate(), 1, "b".into());
        assert_eq!(h.next(true).await, Next::Resync);
        h.close_with((4000, "first"));
        h.close_with((1000, "second"));
        assert_eq!(h.next(true).await, Next::Close((4000, "first")), "the first reason wins");
        assert_eq!(h.take_queued(), Some("b".into()));
    }

    #[tokio::test]
    async fn the_session_wakes_for_a_frame_queued_while_it_waits() {
        let h = handle(8);
        h.go_live(|_, _| false);
        let waiting = tokio::spawn({
            let h = h.clone();
            async move { h.next(true).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(h.push(ConversationId::generate(), 1, "late".into()), PushOutcome::Queued);
        let next = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").expect("joined");
        assert_eq!(next, Next::Frame("late".into()));
    }

    #[tokio::test]
    async fn an_answer_waits_for_room_and_is_refused_once_the_session_ended() {
        let h = handle(1);
        h.go_live(|_, _| false);
        h.send("first".into()).await.expect("room");
        let second = tokio::spawn({
            let h = h.clone();
            async move { h.send("second".into()).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished(), "a full queue makes the answer wait (backpressure), not fail");
        assert_eq!(h.take_queued(), Some("first".into()));
        let sent = tokio::time::timeout(Duration::from_secs(5), second).await.expect("room made").expect("joined");
        assert_eq!(sent, Ok(()));
        assert_eq!(h.take_queued(), Some("second".into()));
        h.end();
        assert_eq!(h.send("after".into()).await, Err(Refused));
        assert_eq!(h.push(ConversationId::generate(), 9, "push".into()), PushOutcome::Closed);
    }

    #[test]
    fn a_queue_gives_its_room_back_once_emptied() {
        let h = handle(64);
        h.go_live(|_, _| false);
        for i in 0..32 {
            h.push(ConversationId::generate(), i, "x".into());
        }
        assert_eq!(queued(&h).len(), 32);
        assert!(h.lock().queue.capacity() <= RESTING_ROOM);
    }

    #[test]
    fn the_registry_removes_only_the_current_connection() {
        let reg = Registry::default();
        let a = handle(1);
        assert!(reg.insert(a.clone()).is_none());
        let b = Arc::new(ConnHandle::new(2, a.user.clone(), a.device.clone(), 1));
        assert_eq!(reg.insert(b).map(|old| old.conn_id), Some(1));
        assert!(!reg.remove(&a.user, &a.device, 1), "the replaced connection does not remove its successor");
        assert!(reg.remove(&a.user, &a.device, 2));
        assert!(reg.is_empty());
    }

    #[test]
    fn close_if_closes_only_the_named_connection() {
        let reg = Registry::default();
        let a = handle(1);
        reg.insert(a.clone());
        let replaced = CONNECTED_AGAIN;
        assert!(!reg.close_if(&a.user, &a.device, 2, replaced), "a request naming an older connection");
        assert_eq!(a.close_reason(), None, "the current connection stays open");
        let other = DeviceId::parse("other").expect("id");
        assert!(!reg.close_if(&a.user, &other, 1, replaced), "another device");
        assert!(reg.close_if(&a.user, &a.device, 1, replaced));
        assert_eq!(a.close_reason(), Some(replaced));
    }
}
