//! The owner of one partition of the events topic: the only writer of its numbers.
//!
//! Exactly one chat-service replica owns a partition at a time (ownership comes from a Kafka consumer
//! group, [`group`]), and the broker enforces it: each partition has its own transactional producer whose
//! `transactional.id` names the partition, so a new owner's `init_transactions` fences the old one, whose
//! writes then fail and are never acknowledged ([`kafka`]). The owner numbers the sends of the partition's
//! conversations from memory, in batches: one transaction per batch, the senders answered only after the
//! commit (P1). A batch whose transaction aborts gives its numbers back (they were never committed, so
//! nobody saw them) and its senders get `unavailable`; they retry with the same client id. After any batch
//! that failed, aborted or with an outcome the owner cannot know (a commit that timed out), it fences
//! itself (opens the writer again) and reads the partition's tail to learn what was committed, before it
//! numbers anything again. Even after a clean abort the writer is not used again: librdkafka may give the
//! next transaction's first record a producer sequence number that a record of the aborted one already
//! holds on the broker, which then takes the new record for a duplicate and answers with the old one's
//! offset, so a commit that succeeds holds nothing of it (seen once in fault scenario 18: an acknowledged
//! message in no replica). A new writer starts a new producer epoch, whose sequence numbers start afresh.
//!
//! What the owner knows: every conversation's head and every send's answer committed after the point up to
//! which the delivery workers have projected the log into the store (their committed offset); before that
//! point the store knows (`sends`, history). On taking a partition it reads the log from that point to
//! the end ([`PartitionLog::read_from`]).
//!
//! The logic here is generic over the log ([`PartitionLog`]) and the store reads it needs ([`Projected`]),
//! so that it is unit-tested with in-memory fakes; the real ones are Kafka and Cassandra.

pub mod group;
pub mod kafka;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chat_model::event::LogEvent;
use chat_model::{ClientMsgId, ConversationId, Message, Seq, UserId};
use chat_store::SendRecord;
use tokio::sync::{mpsc, oneshot};

/// What a send was answered, first or again: the record the workers project into the store (`sends`).
pub type Answer = SendRecord;

/// What the owner's memory says of a send before it is numbered ([`Known::earlier`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Earlier {
    /// Committed before: its answer.
    Answered(Answer),
    /// Certainly new: its client id is greater than any its sender has used in the conversation (in the
    /// store, the log, or numbered since). Clients whose ids grow (the SDK's begin with the time) then
    /// cost no store read per send.
    New,
    /// Only the store can tell. `checked`: the store's greatest client id of the sender was merged already
    /// ([`Known::check_bound`]), so only a read of this id helps; `dropped` is for that merge.
    Unknown { checked: bool, dropped: u64 },
}

/// A send is known by its conversation, its sender and the sender's id for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SendKey {
    pub conversation: ConversationId,
    pub sender: UserId,
    pub client_msg_id: ClientMsgId,
}

impl SendKey {
    pub fn of(m: &Message) -> SendKey {
        SendKey { conversation: m.conversation_id, sender: m.sender_id.clone(), client_msg_id: m.client_msg_id.clone() }
    }
}

/// Why a batch is not in the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Another owner took the partition: this writer is finished.
    #[error("fenced: another owner writes this partition")]
    Fenced,
    /// The transaction was aborted: none of the batch is in the log.
    #[error("transaction aborted: {0}")]
    Aborted(String),
    /// The outcome is unknown (a commit timed out): the batch may or may not be in the log.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

/// One partition of the log, as its owner writes and reads it.
pub trait PartitionLog: Send + 'static {
    /// Appends `events` in one transaction; answers each one's offset once committed.
    fn commit(&mut self, events: Vec<LogEvent>) -> impl Future<Output = Result<Vec<i64>, WriteError>> + Send;
    /// Opens the writer again after a failed batch: fences every earlier writer (this one included), settles
    /// any transaction left open and starts a new producer epoch.
    fn reopen(&mut self) -> impl Future<Output = Result<(), WriteError>> + Send;
    /// The committed events from `from` to the end of the partition, with their offsets.
    fn read_from(&mut self, from: i64) -> impl Future<Output = Result<Vec<(i64, LogEvent)>, WriteError>> + Send;
}

/// What the store knows of what the delivery workers have projected: everything before their committed
/// offset of the partition.
pub trait Projected: Send + Sync + 'static {
    /// A conversation's last number in history (0 when it has none).
    fn head(&self, conversation: ConversationId) -> impl Future<Output = Result<u64, String>> + Send;
    /// The first offset of the partition the workers have not projected yet.
    fn projected_offset(&self) -> impl Future<Output = Result<i64, String>> + Send;
}

/// Where a send's answer goes: the answer and whether it was given before (a retry), or why not.
pub type SendReply = oneshot::Sender<Result<(Answer, bool), OwnerError>>;

/// A send to number, with what the caller already found in the store: the conversation's head there (a
/// conversation the owner does not hold has all its numbers in the store).
#[derive(Debug)]
pub struct SendJob {
    pub message: Message,
    pub store_head: Option<u64>,
    pub reply: SendReply,
}

/// Another event of the partition's conversations (a conversation created, members changed): appended in
/// the owner's order, answered once committed.
#[derive(Debug)]
pub struct EventJob {
    pub event: LogEvent,
    pub reply: oneshot::Sender<Result<i64, OwnerError>>,
}

#[derive(Debug)]
pub enum Job {
    Send(SendJob),
    Event(EventJob),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnerError {
    /// Not in the log: retry with the same client id (at this owner or the next).
    #[error("not written, retry: {0}")]
    Retry(String),
    /// This replica does not own the partition (any more).
    #[error("this replica does not own the partition")]
    NotOwner,
}

/// How a partition's owner batches.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most events in one transaction.
    pub max: usize,
    /// How long the first job of a batch waits for others.
    pub linger: Duration,
    /// The least time from one transaction's start to the next one's: a batch whose first job comes
    /// sooner also waits for that, unless it fills up (`max`) first. A partition sending less often than
    /// this commits each send after the linger alone; a busy one commits at most once an interval, each
    /// transaction carrying more (a transaction costs the broker and the owner about the same whatever it
    /// carries).
    pub interval: Duration,
    /// How long an answer is kept in memory after the workers projected it (a caller that found no
    /// record in the store just before the projection must still find it here).
    pub grace: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max: 256,
            linger: Duration::from_micros(500),
            interval: Duration::from_millis(20),
            grace: Duration::from_secs(60),
        }
    }
}

/// What the owner holds in memory, shared between its batcher (which writes) and the callers (which look
/// up answers and heads before queueing).
#[derive(Debug)]
pub struct Known {
    /// Committed heads, and the offset of each conversation's last committed record.
    heads: HashMap<ConversationId, (u64, i64)>,
    /// Committed answers not yet safely in the store, with their offsets.
    answers: HashMap<SendKey, (Answer, i64)>,
    /// The highest offset known committed (-1: none).
    last_offset: i64,
    /// Offsets the workers were seen to have projected, and when: forgetting waits for the grace.
    projections: Vec<(Instant, i64)>,
    /// Senders found to be members while this replica owns the partition, and when. Membership changes
    /// of the partition's conversations go through its owner, which forgets removed members at once; a
    /// new acquisition starts with none.
    members: HashMap<(ConversationId, UserId), Instant>,
    /// Removals seen (any conversation): a membership read that a removal overtook is not remembered.
    removals: u64,
    /// Per sender of a conversation, the greatest client id of theirs in the log: [`Known::is_new`].
    bounds: HashMap<(ConversationId, UserId), Bound>,
    /// Times [`Known::forget_before`] dropped bounds: a store read that one overtook is not merged.
    bounds_dropped: u64,
}

/// The greatest client id one sender has used in one conversation, as far as the owner knows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bound {
    /// The greatest client id learned from the log since the partition was acquired, and, once `checked`,
    /// in the store as well (`None`: none).
    max: Option<ClientMsgId>,
    /// The offset of the last record that raised or checked it: the bound is forgotten with the answers of
    /// that offset, when the store is sure to hold all it covers.
    offset: i64,
    /// Whether the store's greatest id was merged in: only then is every send of the sender in the store
    /// or in the log covered, and a greater id known to be new without a read.
    checked: bool,
}

/// Senders remembered as members per partition, before that memory is cleared.
const MEMBERS_CAPACITY: usize = 100_000;

impl Default for Known {
    fn default() -> Self {
        Known {
            heads: HashMap::new(),
            answers: HashMap::new(),
            last_offset: -1,
            projections: Vec::new(),
            members: HashMap::new(),
            removals: 0,
            bounds: HashMap::new(),
            bounds_dropped: 0,
        }
    }
}

impl Known {
    pub fn answer(&self, key: &SendKey) -> Option<Answer> {
        self.answers.get(key).map(|(a, _)| a.clone())
    }

    pub fn holds(&self, conversation: ConversationId) -> bool {
        self.heads.contains_key(&conversation)
    }

    pub fn head(&self, conversation: ConversationId) -> Option<u64> {
        self.heads.get(&conversation).map(|(h, _)| *h)
    }

    /// Whether `user` was found to be a member of `conversation` less than `ttl` ago.
    pub fn is_known_member(&self, conversation: ConversationId, user: &UserId, ttl: Duration) -> bool {
        self.members.get(&(conversation, user.clone())).is_some_and(|at| at.elapsed() < ttl)
    }

    /// What [`Known::remember_member`] needs from before a membership read.
    pub fn removals(&self) -> u64 {
        self.removals
    }

    /// Remembers that `user` was found to be a member of `conversation` by a read started when
    /// [`Known::removals`] answered `removals`; not if a removal came since (the read may predate it).
    pub fn remember_member(&mut self, conversation: ConversationId, user: UserId, removals: u64) {
        if removals != self.removals {
            return;
        }
        if self.members.len() >= MEMBERS_CAPACITY {
            self.members.clear();
        }
        self.members.insert((conversation, user), Instant::now());
    }

    /// Forgets that `users` were members of `conversation` (they are being removed).
    pub fn forget_members(&mut self, conversation: ConversationId, users: &[UserId]) {
        self.removals += 1;
        for u in users {
            self.members.remove(&(conversation, u.clone()));
        }
    }

    /// What memory says of the send `key`: answered before, certainly new, or only the store can tell.
    pub fn earlier(&self, key: &SendKey) -> Earlier {
        if let Some((answer, _)) = self.answers.get(key) {
            return Earlier::Answered(answer.clone());
        }
        match self.bounds.get(&(key.conversation, key.sender.clone())) {
            Some(b) if b.checked && b.max.as_ref().is_none_or(|max| key.client_msg_id > *max) => Earlier::New,
            b => Earlier::Unknown { checked: b.is_some_and(|b| b.checked), dropped: self.bounds_dropped },
        }
    }

    /// Merges `stored`, the greatest client id the store held for `sender` in `conversation` (read after
    /// [`Known::earlier`] answered `dropped`). Not if a bound was forgotten since: its ids may have
    /// reached the store after the read.
    pub fn check_bound(
        &mut self,
        conversation: ConversationId,
        sender: &UserId,
        stored: Option<ClientMsgId>,
        dropped: u64,
    ) {
        if dropped != self.bounds_dropped {
            return;
        }
        let last_offset = self.last_offset;
        let b = self.bounds.entry((conversation, sender.clone())).or_insert(Bound {
            max: None,
            offset: last_offset,
            checked: false,
        });
        b.max = b.max.take().max(stored);
        b.checked = true;
    }

    /// Learns a committed event at `offset`.
    fn learn(&mut self, offset: i64, event: &LogEvent) {
        self.last_offset = self.last_offset.max(offset);
        match event {
            LogEvent::MessageSent(m) => {
                let head = self.heads.entry(m.conversation_id).or_insert((0, offset));
                if m.seq.get() >= head.0 {
                    *head = (m.seq.get(), offset);
                }
                self.answers.insert(SendKey::of(m), (SendRecord::of(m), offset));
                let b = self.bounds.entry((m.conversation_id, m.sender_id.clone())).or_insert(Bound {
                    max: None,
                    offset,
                    checked: false,
                });
                if b.max.as_ref().is_none_or(|max| m.client_msg_id > *max) {
                    b.max = Some(m.client_msg_id.clone());
                }
                b.offset = b.offset.max(offset);
            }
            LogEvent::ConversationCreated(c) => {
                self.heads.entry(c.conversation_id).or_insert((0, offset));
            }
            LogEvent::MembersChanged(_) | LogEvent::ReceiptRecorded(_) => {}
        }
    }

    /// Learns that the workers have projected everything before `offset` (seen at `now`), and forgets
    /// what the store has held for longer than `grace`: a caller that looked in the store just before the
    /// projection must still find its answer here.
    pub fn projected(&mut self, offset: i64, now: Instant, grace: Duration) {
        self.projections.push((now, offset));
        let old_enough =
            self.projections.iter().filter(|(at, _)| now.duration_since(*at) >= grace).map(|(_, o)| *o).max();
        if let Some(offset) = old_enough {
            self.forget_before(offset);
            self.projections.retain(|(at, _)| now.duration_since(*at) < grace);
            // Kept, as seen a grace ago: a later look that finds the same offset forgets nothing more.
            self.projections.push((now.checked_sub(grace).unwrap_or(now), offset));
        }
    }

    /// Forgets what is in the store: everything before `projected` (an offset the workers passed long
    /// enough ago).
    fn forget_before(&mut self, projected: i64) {
        self.answers.retain(|_, (_, offset)| *offset >= projected);
        self.heads.retain(|_, (_, offset)| *offset >= projected);
        let bounds = self.bounds.len();
        self.bounds.retain(|_, b| b.offset >= projected);
        if self.bounds.len() != bounds {
            self.bounds_dropped += 1;
        }
    }

    pub fn len(&self) -> (usize, usize) {
        (self.heads.len(), self.answers.len())
    }
}

/// A shared [`Known`].
#[derive(Debug, Clone, Default)]
pub struct SharedKnown(Arc<Mutex<Known>>);

impl SharedKnown {
    pub fn lock(&self) -> MutexGuard<'_, Known> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counters of one partition's owner (summed into the service's metrics).
#[derive(Debug, Default)]
pub struct OwnerStats {
    pub batches: std::sync::atomic::AtomicU64,
    pub events: std::sync::atomic::AtomicU64,
    pub aborted: std::sync::atomic::AtomicU64,
    pub fenced: std::sync::atomic::AtomicU64,
    pub unknown: std::sync::atomic::AtomicU64,
    /// Sends whose client id was checked against the store (a read), and those known new without one.
    pub id_reads: std::sync::atomic::AtomicU64,
    pub ids_unread: std::sync::atomic::AtomicU64,
}

/// The batcher of one owned partition: takes jobs, numbers the sends, commits each batch, answers.
pub struct Batcher<L: PartitionLog, P: Projected> {
    pub log: L,
    pub projected: Arc<P>,
    pub known: SharedKnown,
    pub batching: Batching,
    pub stats: Arc<OwnerStats>,
    /// Set when the partition is revoked: the batcher stops after the batch in hand, and stops settling an
    /// unknown outcome (opening the writer again would fence the partition's new owner).
    pub revoked: Arc<std::sync::atomic::AtomicBool>,
}

/// A send numbered in the current batch.
struct Numbered {
    message: Message,
    reply: SendReply,
}

impl<L: PartitionLog, P: Projected> Batcher<L, P> {
    /// Takes the partition: reads the log from what the workers have projected to its end, so that every
    /// head and answer not in the store is known. Call after the writer fenced the previous owner.
    pub async fn acquire(&mut self) -> Result<(), String> {
        let from = self.projected.projected_offset().await?;
        let events = self.log.read_from(from).await.map_err(|e| e.to_string())?;
        let mut known = self.known.lock();
        // Everything before `from` is in the store; the settling after an unknown outcome reads on from here.
        known.last_offset = known.last_offset.max(from - 1);
        for (offset, event) in &events {
            known.learn(*offset, event);
        }
        Ok(())
    }

    /// Handles jobs until the channel closes (the partition was revoked) or the writer is fenced. It never
    /// waits on anything but its log: what the workers projected is learnt beside it ([`Known::projected`]).
    pub async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut last_start: Option<tokio::time::Instant> = None;
        while let Some(first) = jobs.recv().await {
            let mut batch = vec![first];
            let deadline = batch_deadline(tokio::time::Instant::now(), last_start, &self.batching);
            while batch.len() < self.batching.max {
                match tokio::time::timeout_at(deadline, jobs.recv()).await {
                    Ok(Some(job)) => batch.push(job),
                    Ok(None) | Err(_) => break,
                }
            }
            // A partition revoked meanwhile is another replica's: nothing more is numbered here.
            let flow = if self.revoked.load(std::sync::atomic::Ordering::SeqCst) {
                for job in batch {
                    refuse(job, OwnerError::NotOwner);
                }
                Flow::Fenced
            } else {
                self.handle(batch, &mut last_start).await
            };
            let revoked = self.revoked.load(std::sync::atomic::Ordering::SeqCst);
            match flow {
                Flow::Go if !revoked => {}
                Flow::Go | Flow::Fenced => {
                    // Answer what is queued, and everything after, until the partition is revoked.
                    jobs.close();
                    while let Some(job) = jobs.recv().await {
                        refuse(job, OwnerError::NotOwner);
                    }
                    return;
                }
            }
        }
    }

    /// Numbers and commits one batch; answers every job in it. Sets `began` when a transaction begins (a
    /// batch answered from memory alone begins none).
    async fn handle(&mut self, batch: Vec<Job>, began: &mut Option<tokio::time::Instant>) -> Flow {
        let mut sends: Vec<Numbered> = Vec::new();
        let mut events: Vec<EventJob> = Vec::new();
        // Heads as this batch moves them, and the sends it holds, so that a second attempt of one send in
        // the same batch gets the first's number.
        let mut heads: HashMap<ConversationId, u64> = HashMap::new();
        let mut in_batch: HashMap<SendKey, usize> = HashMap::new();
        let mut waiting: Vec<(usize, SendReply)> = Vec::new();
        {
            let known = self.known.lock();
            for job in batch {
                match job {
                    Job::Event(e) => events.push(e),
                    Job::Send(SendJob { mut message, store_head, reply }) => {
                        // A caller that gave up (its deadline passed) has been told to retry: do not write
                        // what nobody waits for.
                        if reply.is_closed() {
                            continue;
                        }
                        let key = SendKey::of(&message);
                        if let Some(answer) = known.answer(&key) {
                            let _ = reply.send(Ok((answer, true)));
                            continue;
                        }
                        if let Some(i) = in_batch.get(&key) {
                            waiting.push((*i, reply));
                            continue;
                        }
                        let conversation = message.conversation_id;
                        let head = match heads.get(&conversation).copied().or_else(|| known.head(conversation)) {
                            Some(h) => h,
                            None => match store_head {
                                Some(h) => h,
                                None => {
                                    let _ = reply.send(Err(OwnerError::Retry("conversation head unknown".into())));
                                    continue;
                                }
                            },
                        };
                        // The bug of failpoint `chat-number-twice`: the number the last send got.
                        let next = if head > 0 && lifecycle::failpoint("chat-number-twice") { head } else { head + 1 };
                        let Some(seq) = Seq::new(next) else {
                            let _ = reply.send(Err(OwnerError::Retry("number overflow".into())));
                            continue;
                        };
                        heads.insert(conversation, seq.get());
                        message.seq = seq;
                        in_batch.insert(key, sends.len());
                        sends.push(Numbered { message, reply });
                    }
                }
            }
        }
        if sends.is_empty() && events.is_empty() {
            return Flow::Go;
        }
        let mut log_events: Vec<LogEvent> = events.iter().map(|e| e.event.clone()).collect();
        log_events.extend(sends.iter().map(|s| LogEvent::MessageSent(s.message.clone())));
        let count = log_events.len() as u64;
        if !sends.is_empty() && lifecycle::failpoint("chat-crash-after-number") {
            // A crash between numbering a batch and its commit, at the worst moment (fault tests).
            std::process::abort();
        }
        *began = Some(tokio::time::Instant::now());
        match self.log.commit(log_events.clone()).await {
            Ok(offsets) => {
                use std::sync::atomic::Ordering::Relaxed;
                self.stats.batches.fetch_add(1, Relaxed);
                self.stats.events.fetch_add(count, Relaxed);
                {
                    let mut known = self.known.lock();
                    for (offset, event) in offsets.iter().zip(&log_events) {
                        known.learn(*offset, event);
                    }
                }
                let mut answers = Vec::with_capacity(sends.len());
                for (e, offset) in events.into_iter().zip(&offsets) {
                    let _ = e.reply.send(Ok(*offset));
                }
                for s in sends {
                    let m = &s.message;
                    let answer = SendRecord::of(m);
                    answers.push(answer.clone());
                    let _ = s.reply.send(Ok((answer, false)));
                }
                for (i, reply) in waiting {
                    let _ = reply.send(Ok((answers[i].clone(), true)));
                }
                Flow::Go
            }
            Err(e) => {
                use std::sync::atomic::Ordering::Relaxed;
                let error = OwnerError::Retry(e.to_string());
                for ev in events {
                    let _ = ev.reply.send(Err(error.clone()));
                }
                // The bug of failpoint `chat-ack-unwritten`: the senders told their sends were written.
                let acknowledge = !sends.is_empty() && lifecycle::failpoint("chat-ack-unwritten");
                for s in sends {
                    let m = &s.message;
                    let answer = SendRecord::of(m);
                    let _ = s.reply.send(if acknowledge { Ok((answer, false)) } else { Err(error.clone()) });
                }
                for (_, reply) in waiting {
                    let _ = reply.send(Err(error.clone()));
                }
                match e {
                    // Nothing of the batch is in the log: its numbers are free again (the heads were only
                    // moved in this batch's copy). The writer is opened again all the same (module docs).
                    WriteError::Aborted(reason) => {
                        self.stats.aborted.fetch_add(1, Relaxed);
                        // The bug of failpoint `chat-keep-writer-after-abort`: the aborted writer goes on.
                        if lifecycle::failpoint("chat-keep-writer-after-abort") {
                            tracing::warn!(%reason, "batch aborted; its senders retry");
                            return Flow::Go;
                        }
                        tracing::warn!(%reason, "batch aborted; its senders retry; opening the writer again");
                        self.settle().await
                    }
                    WriteError::Fenced => {
                        self.stats.fenced.fetch_add(1, Relaxed);
                        tracing::warn!("fenced: another replica owns the partition now");
                        Flow::Fenced
                    }
                    WriteError::Unknown(reason) => {
                        self.stats.unknown.fetch_add(1, Relaxed);
                        tracing::warn!(%reason, "batch outcome unknown; fencing this writer and reading the log");
                        self.settle().await
                    }
                }
            }
        }
    }

    /// After a failed batch: opens the writer again (which settles a transaction left open and starts a new
    /// producer epoch) and learns from the log what was committed, retrying until both succeed or the
    /// writer is fenced. Not once the partition is revoked: opening the writer would fence its new owner.
    async fn settle(&mut self) -> Flow {
        let mut pause = Duration::from_millis(100);
        loop {
            if self.revoked.load(std::sync::atomic::Ordering::SeqCst) {
                return Flow::Fenced;
            }
            let from = self.known.lock().last_offset + 1;
            let result = match self.log.reopen().await {
                Ok(()) => self.log.read_from(from).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(events) => {
                    let mut known = self.known.lock();
                    for (offset, event) in &events {
                        known.learn(*offset, event);
                    }
                    return Flow::Go;
                }
                Err(WriteError::Fenced) => return Flow::Fenced,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot settle the partition yet; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

enum Flow {
    Go,
    Fenced,
}

/// Until when a batch whose first job came at `now` waits for more (unless it fills up first): the later of
/// the linger after `now` and the interval after the last transaction began (`last_start`).
fn batch_deadline(
    now: tokio::time::Instant,
    last_start: Option<tokio::time::Instant>,
    batching: &Batching,
) -> tokio::time::Instant {
    let lingered = now + batching.linger;
    last_start.map_or(lingered, |at| lingered.max(at + batching.interval))
}

fn refuse(job: Job, error: OwnerError) {
    match job {
        Job::Send(s) => {
            let _ = s.reply.send(Err(error));
        }
        Job::Event(e) => {
            let _ = e.reply.send(Err(error));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_model::{Body, DeviceId, MessageId};
    use std::collections::VecDeque;

    /// The log of one partition in memory: committed events, and failures to inject.
    #[derive(Default)]
    struct FakeLog {
        committed: Arc<Mutex<Vec<LogEvent>>>,
        failures: VecDeque<WriteError>,
        /// When an unknown outcome is injected, whether the batch was in fact committed.
        unknown_committed: bool,
        reopened: Arc<std::sync::atomic::AtomicUsize>,
        /// When each commit was asked for.
        commits_at: Arc<Mutex<Vec<tokio::time::Instant>>>,
        /// How long each commit takes.
        commit_takes: Duration,
    }

    impl PartitionLog for FakeLog {
        async fn commit(&mut self, events: Vec<LogEvent>) -> Result<Vec<i64>, WriteError> {
            self.commits_at.lock().unwrap_or_else(|p| p.into_inner()).push(tokio::time::Instant::now());
            tokio::time::sleep(self.commit_takes).await;
            let mut log = self.committed.lock().unwrap_or_else(|p| p.into_inner());
            match self.failures.pop_front() {
                None => {}
                Some(WriteError::Unknown(r)) => {
                    if self.unknown_committed {
                        log.extend(events);
                    }
                    return Err(WriteError::Unknown(r));
                }
                Some(e) => return Err(e),
            }
            let start = log.len() as i64;
            log.extend(events);
            Ok((start..log.len() as i64).collect())
        }

        async fn reopen(&mut self) -> Result<(), WriteError> {
            self.reopened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }

        async fn read_from(&mut self, from: i64) -> Result<Vec<(i64, LogEvent)>, WriteError> {
            let log = self.committed.lock().unwrap_or_else(|p| p.into_inner());
            Ok(log.iter().enumerate().skip(from.max(0) as usize).map(|(i, e)| (i as i64, e.clone())).collect())
        }
    }

    #[derive(Default)]
    struct FakeStore {
        heads: Mutex<HashMap<ConversationId, u64>>,
        projected: Mutex<i64>,
    }

    impl Projected for FakeStore {
        async fn head(&self, conversation: ConversationId) -> Result<u64, String> {
            Ok(self.heads.lock().unwrap_or_else(|p| p.into_inner()).get(&conversation).copied().unwrap_or(0))
        }

        async fn projected_offset(&self) -> Result<i64, String> {
            Ok(*self.projected.lock().unwrap_or_else(|p| p.into_inner()))
        }
    }

    fn message(conversation: ConversationId, sender: &str, client: &str) -> Message {
        Message {
            conversation_id: conversation,
            seq: Seq::FIRST,
            message_id: MessageId::generate(),
            sender_id: UserId::parse(sender).expect("valid"),
            sender_device_id: DeviceId::parse("phone").expect("valid"),
            client_msg_id: ClientMsgId::parse(client).expect("valid"),
            body: Body::parse(format!("body of {client}")).expect("valid"),
            sent_at_ms: 1,
        }
    }

    fn batcher(log: FakeLog, store: Arc<FakeStore>) -> Batcher<FakeLog, FakeStore> {
        Batcher {
            log,
            projected: store,
            known: SharedKnown::default(),
            batching: Batching {
                max: 64,
                linger: Duration::from_millis(5),
                interval: Duration::ZERO,
                grace: Duration::from_secs(60),
            },
            stats: Arc::default(),
            revoked: Arc::default(),
        }
    }

    type Reply = oneshot::Receiver<Result<(Answer, bool), OwnerError>>;

    fn send(jobs: &mpsc::Sender<Job>, m: Message, store_head: Option<u64>) -> Reply {
        let (reply, rx) = oneshot::channel();
        jobs.try_send(Job::Send(SendJob { message: m, store_head, reply })).expect("queued");
        rx
    }

    async fn answer(rx: Reply) -> Result<(Answer, bool), OwnerError> {
        rx.await.expect("answered")
    }

    fn seqs(log: &Arc<Mutex<Vec<LogEvent>>>, conversation: ConversationId) -> Vec<u64> {
        let log = log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter()
            .filter_map(|e| match e {
                LogEvent::MessageSent(m) if m.conversation_id == conversation => Some(m.seq.get()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_member_is_remembered_until_removed_and_a_read_overtaken_by_a_removal_is_not_kept() {
        let c = ConversationId::generate();
        let carol = UserId::parse("carol").expect("valid");
        let ttl = Duration::from_secs(60);
        let mut known = Known::default();
        assert!(!known.is_known_member(c, &carol, ttl), "nothing is known at first");
        let before = known.removals();
        known.remember_member(c, carol.clone(), before);
        assert!(known.is_known_member(c, &carol, ttl));
        assert!(!known.is_known_member(c, &carol, Duration::ZERO), "past the bound it is read again");
        known.forget_members(c, std::slice::from_ref(&carol));
        assert!(!known.is_known_member(c, &carol, ttl), "a removal is seen at once");
        // A read started before the removal found her a member: what it found is stale, not remembered.
        known.remember_member(c, carol.clone(), before);
        assert!(!known.is_known_member(c, &carol, ttl));
        known.remember_member(c, carol.clone(), known.removals());
        assert!(known.is_known_member(c, &carol, ttl), "a read after the removal is");
    }

    #[tokio::test]
    async fn sends_are_numbered_densely_from_the_store_head_and_a_duplicate_gets_the_first_answer() {
        let c = ConversationId::generate();
        let store = Arc::new(FakeStore::default());
        let log = FakeLog::default();
        let committed = log.committed.clone();
        let b = batcher(log, store);
        let (jobs, rx) = mpsc::channel(64);
        let task = tokio::spawn(b.run(rx));
        let first = send(&jobs, message(c, "alice", "a1"), Some(41));
        let again = send(&jobs, message(c, "alice", "a1"), Some(41));
        let second = send(&jobs, message(c, "bob", "b1"), Some(41));
        let (a1, dup1) = answer(first).await.expect("sent");
        let (a1b, dup2) = answer(again).await.expect("sent");
        let (b1, _) = answer(second).await.expect("sent");
        assert_eq!((a1.seq.get(), dup1), (42, false));
        assert_eq!((a1b.clone(), dup2), (a1.clone(), true), "a retry in the same batch gets the first answer");
        assert_eq!(b1.seq.get(), 43);
        // A retry in a later batch too, from memory.
        let later = send(&jobs, message(c, "alice", "a1"), Some(0));
        assert_eq!(answer(later).await.expect("sent"), (a1, true));
        assert_eq!(seqs(&committed, c), vec![42, 43], "the log holds each send once, in order");
        drop(jobs);
        task.await.expect("stops");
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_partition_commits_once_an_interval_and_a_quiet_one_at_once() {
        use tokio::time::sleep;
        let ms = Duration::from_millis;
        let c = ConversationId::generate();
        let log = FakeLog { commit_takes: ms(4), ..FakeLog::default() };
        let (committed, commits_at) = (log.committed.clone(), log.commits_at.clone());
        let mut b = batcher(log, Arc::new(FakeStore::default()));
        b.batching = Batching { max: 3, linger: ms(1), interval: ms(10), ..b.batching };
        let (jobs, rx) = mpsc::channel(64);
        let task = tokio::spawn(b.run(rx));
        let start = tokio::time::Instant::now();
        // A quiet partition: the linger alone (the commit begins at 1 ms, ends at 5 ms).
        answer(send(&jobs, message(c, "alice", "a1"), Some(0))).await.expect("written");
        // Busy: sent 2 and 5 ms after that commit ended, both wait for the interval from its start (11 ms),
        // not from its end (15) nor from their own arrival (17), and share one transaction.
        sleep(ms(2)).await;
        let second = send(&jobs, message(c, "alice", "a2"), Some(0));
        sleep(ms(3)).await;
        let third = send(&jobs, message(c, "alice", "a3"), Some(0));
        answer(second).await.expect("written");
        answer(third).await.expect("written");
        // A retry answered from memory begins no transaction: the next send waits only for the interval
        // since the last one that began (11 ms), not since the retry's batch.
        assert!(answer(send(&jobs, message(c, "alice", "a1"), Some(0))).await.expect("answered").1);
        let retried = tokio::time::Instant::now() - start;
        answer(send(&jobs, message(c, "alice", "a4"), Some(0))).await.expect("written");
        // After a quiet spell longer than the interval, the linger alone again.
        sleep(ms(50)).await;
        let quiet = tokio::time::Instant::now() - start;
        answer(send(&jobs, message(c, "alice", "a5"), Some(0))).await.expect("written");
        // A batch that fills up (`max`) goes at once, interval or not.
        let full = tokio::time::Instant::now() - start;
        let replies: Vec<Reply> =
            ["a6", "a7", "a8"].iter().map(|id| send(&jobs, message(c, "alice", id), Some(0))).collect();
        for r in replies {
            answer(r).await.expect("written");
        }
        drop(jobs);
        task.await.expect("batcher ends");
        let at: Vec<Duration> = commits_at.lock().expect("not poisoned").iter().map(|t| *t - start).collect();
        assert_eq!(retried, ms(21), "the retry's batch waited for the interval too");
        assert_eq!(at, vec![ms(1), ms(11), retried + ms(1), quiet + ms(1), full], "transactions began at");
        assert_eq!(seqs(&committed, c), (1..=8).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn an_aborted_batch_gives_its_numbers_back_and_its_senders_retry() {
        let c = ConversationId::generate();
        let store = Arc::new(FakeStore::default());
        let mut log = FakeLog::default();
        log.failures.push_back(WriteError::Aborted("broker said no".into()));
        let (committed, reopened) = (log.committed.clone(), log.reopened.clone());
        let b = batcher(log, store);
        let (jobs, rx) = mpsc::channel(64);
        let task = tokio::spawn(b.run(rx));
        let lost = send(&jobs, message(c, "alice", "a1"), Some(0));
        assert!(matches!(answer(lost).await, Err(OwnerError::Retry(_))));
        // Before the next batch, the writer is opened again: the aborted one's producer may give the
        // retry a sequence number the broker holds already (module docs).
        let before = send(&jobs, message(c, "carol", "c1"), Some(0));
        assert_eq!(answer(before).await.expect("sent").0.seq.get(), 1);
        assert_eq!(reopened.load(std::sync::atomic::Ordering::SeqCst), 1, "a new writer after the abort");
        // The retry (same id) and another send: numbers 2 and 3, nothing skipped.
        let retry = send(&jobs, message(c, "alice", "a1"), Some(0));
        let other = send(&jobs, message(c, "bob", "b1"), Some(0));
        assert_eq!(answer(retry).await.expect("sent").0.seq.get(), 2);
        assert_eq!(answer(other).await.expect("sent").0.seq.get(), 3);
        assert_eq!(seqs(&committed, c), vec![1, 2, 3]);
        assert_eq!(reopened.load(std::sync::atomic::Ordering::SeqCst), 1, "only failed batches renew it");
        drop(jobs);
        task.await.expect("stops");
    }

    #[tokio::test]
    async fn a_fenced_writer_answers_not_owner_and_writes_nothing_more() {
        let c = ConversationId::generate();
        let store = Arc::new(FakeStore::default());
        let mut log = FakeLog::default();
        log.failures.push_back(WriteError::Fenced);
        let committed = log.committed.clone();
        let b = batcher(log, store);
        let (jobs, rx) = mpsc::channel(64);
        let task = tokio::spawn(b.run(rx));
        let first = send(&jobs, message(c, "alice", "a1"), Some(0));
        assert!(matches!(answer(first).await, Err(OwnerError::Retry(_))), "the fenced batch is not acknowledged");
        task.await.expect("the batcher stops once fenced");
        assert!(
            jobs.try_send(Job::Event(EventJob {
                event: LogEvent::MessageSent(message(c, "x", "y")),
                reply: oneshot::channel().0
            }))
            .is_err()
        );
        assert!(seqs(&committed, c).is_empty(), "nothing reached the log");
    }

    #[tokio::test]
    async fn a_revoked_partition_answers_not_owner_and_writes_nothing() {
        let c = ConversationId::generate();
        let store = Arc::new(FakeStore::default());
        let log = FakeLog::default();
        let committed = log.committed.clone();
        let b = batcher(log, store);
        let revoked = b.revoked.clone();
        let (jobs, rx) = mpsc::channel(64);
        let task = tokio::spawn(b.run(rx));
        assert_eq!(answer(send(&jobs, message(c, "alice", "a1"), Some(0))).await.expect("sent").0.seq.get(), 1);
        // The partition moves to another replica: what comes after is refused, not numbered.
        revoked.store(true, std::sync::atomic::Ordering::SeqCst);
        let late = send(&jobs, message(c, "bob", "b1"), Some(0));
        let after = send(&jobs, message(c, "bob", "b2"), Some(0));
        assert_eq!(answer(late).await, Err(OwnerError::NotOwner), "a send for a partition no longer owned");
        assert_eq!(answer(after).await, Err(OwnerError::NotOwner));
        task.await.expect("the batcher stops once revoked");
        assert_eq!(seqs(&committed, c), vec![1], "nothing after the revocation reached the log");
    }

    #[tokio::test]
    async fn an_unknown_outcome_is_settled_from_the_log_before_numbering_again() {
        for was_committed in [true, false] {
            let c = ConversationId::generate();
            let store = Arc::new(FakeStore::default());
            let mut log = FakeLog::default();
            log.failures.push_back(WriteError::Unknown("commit timed out".into()));
            log.unknown_committed = was_committed;
            let committed = log.committed.clone();
            let b = batcher(log, store);
            let (jobs, rx) = mpsc::channel(64);
            let task = tokio::spawn(b.run(rx));
            let first = send(&jobs, message(c, "alice", "a1"), Some(0));
            assert!(matches!(answer(first).await, Err(OwnerError::Retry(_))));
            let retry = send(&jobs, message(c, "alice", "a1"), Some(0));
            let next = send(&jobs, message(c, "bob", "b1"), Some(0));
            let (a, duplicate) = answer(retry).await.expect("sent");
            assert_eq!((a.seq.get(), duplicate), (1, was_committed), "committed before: {was_committed}");
            assert_eq!(answer(next).await.expect("sent").0.seq.get(), 2);
            assert_eq!(seqs(&committed, c), vec![1, 2], "no number skipped or given twice");
            drop(jobs);
            task.await.expect("stops");
        }
    }

    #[tokio::test]
    async fn a_new_owner_learns_heads_and_answers_from_the_log_after_the_projected_offset() {
        let c = ConversationId::generate();
        let store = Arc::new(FakeStore::default());
        let old = FakeLog::default();
        let committed = old.committed.clone();
        // The old owner commits three sends; the workers projected the first one only.
        let b = batcher(old, store.clone());
        let (jobs, rx) = mpsc::channel(64);
        let task = tokio::spawn(b.run(rx));
        let mut answers = Vec::new();
        for i in 0..3 {
            answers.push(answer(send(&jobs, message(c, "alice", &format!("a{i}")), Some(0))).await.expect("sent").0);
        }
        drop(jobs);
        task.await.expect("stops");
        store.heads.lock().unwrap_or_else(|p| p.into_inner()).insert(c, 1);
        *store.projected.lock().unwrap_or_else(|p| p.into_inner()) = 1;
        // The new owner reads the same partition from offset 1.
        let new_log = FakeLog { committed: committed.clone(), ..FakeLog::default() };
        let mut b = batcher(new_log, store);
        b.acquire().await.expect("acquired");
        let (jobs, rx) = mpsc::channel(64);
        let task = tokio::spawn(b.run(rx));
        // A retry of a send it learned from the log, and a new send numbered after the head it learned
        // (not the store's lagging one).
        let retry = answer(send(&jobs, message(c, "alice", "a2"), Some(1))).await.expect("sent");
        assert_eq!(retry, (answers[2].clone(), true));
        let next = answer(send(&jobs, message(c, "bob", "b1"), Some(1))).await.expect("sent");
        assert_eq!(next.0.seq.get(), 4);
        assert_eq!(seqs(&committed, c), vec![1, 2, 3, 4]);
        drop(jobs);
        task.await.expect("stops");
    }

    #[test]
    fn forgetting_keeps_what_the_store_does_not_hold_yet() {
        let c = ConversationId::generate();
        let mut known = Known::default();
        let mut m = message(c, "alice", "a1");
        known.learn(5, &LogEvent::MessageSent(m.clone()));
        m.seq = Seq::new(2).expect("non-zero");
        m.client_msg_id = ClientMsgId::parse("a2").expect("valid");
        known.learn(9, &LogEvent::MessageSent(m.clone()));
        known.forget_before(6);
        assert_eq!(known.head(c), Some(2), "the conversation's last record is not projected yet");
        assert!(known.answer(&SendKey::of(&m)).is_some());
        assert_eq!(known.len().1, 1, "the projected answer is forgotten: the store has it");
        known.forget_before(10);
        assert!(!known.holds(c));
    }

    #[test]
    fn a_projection_is_forgotten_only_a_grace_after_it_was_seen() {
        let c = ConversationId::generate();
        let mut known = Known::default();
        let m = message(c, "alice", "a1");
        known.learn(3, &LogEvent::MessageSent(m.clone()));
        let grace = Duration::from_secs(60);
        let t0 = Instant::now();
        known.projected(4, t0, grace);
        assert!(known.answer(&SendKey::of(&m)).is_some(), "a caller may have read the store just before");
        known.projected(4, t0 + Duration::from_secs(59), grace);
        assert!(known.answer(&SendKey::of(&m)).is_some());
        known.projected(4, t0 + grace, grace);
        assert!(known.answer(&SendKey::of(&m)).is_none(), "projected a grace ago: the store has it");
        assert!(!known.holds(c));
        assert_eq!(known.projections.len(), 3, "the two looks within the grace, and the one acted on");
    }

    fn key(c: ConversationId, sender: &str, client: &str) -> SendKey {
        SendKey::of(&message(c, sender, client))
    }

    fn is_new(known: &Known, key: &SendKey) -> bool {
        known.earlier(key) == Earlier::New
    }

    /// Whether the store's greatest id of the sender was merged (a read of it would not help).
    fn bound_checked(known: &Known, key: &SendKey) -> bool {
        matches!(known.earlier(key), Earlier::New | Earlier::Unknown { checked: true, .. })
    }

    #[test]
    fn an_id_past_every_one_of_its_sender_is_new_only_once_the_store_is_checked() {
        let c = ConversationId::generate();
        let alice = UserId::parse("alice").expect("valid");
        let mut known = Known::default();
        known.learn(3, &LogEvent::MessageSent(message(c, "alice", "t2")));
        assert!(!is_new(&known, &key(c, "alice", "t3")), "the store may hold a greater id: read it first");
        assert!(!bound_checked(&known, &key(c, "alice", "t3")));
        // The store's greatest is below what the log taught: the log's stands.
        known.check_bound(c, &alice, Some(ClientMsgId::parse("t1").expect("valid")), known.bounds_dropped);
        assert!(bound_checked(&known, &key(c, "alice", "t3")));
        assert!(is_new(&known, &key(c, "alice", "t3")));
        assert!(!is_new(&known, &key(c, "alice", "t2")), "learned from the log");
        assert!(!is_new(&known, &key(c, "alice", "t0")), "below the greatest: may be in the store");
        assert!(!is_new(&known, &key(c, "bob", "t3")), "another sender's ids say nothing");
        // Numbering raises it.
        known.learn(4, &LogEvent::MessageSent(message(c, "alice", "t3")));
        assert!(!is_new(&known, &key(c, "alice", "t3")));
        assert!(is_new(&known, &key(c, "alice", "t4")));
        // The store's greatest above the log's stands too.
        known.check_bound(
            c,
            &UserId::parse("bob").expect("valid"),
            Some(ClientMsgId::parse("z9").expect("valid")),
            known.bounds_dropped,
        );
        assert!(!is_new(&known, &key(c, "bob", "t3")));
        assert!(is_new(&known, &key(c, "bob", "z9a")));
        // A sender with nothing anywhere: any id is new.
        let carol = UserId::parse("carol").expect("valid");
        known.check_bound(c, &carol, None, known.bounds_dropped);
        assert!(is_new(&known, &key(c, "carol", "a")));
    }

    #[test]
    fn a_bound_is_forgotten_with_its_answers_and_a_store_read_it_overtook_is_not_merged() {
        let c = ConversationId::generate();
        let alice = UserId::parse("alice").expect("valid");
        let mut known = Known::default();
        known.learn(3, &LogEvent::MessageSent(message(c, "alice", "t5")));
        // A read of the store starts before the record at 3 is projected, and answers "t1" ...
        let dropped = known.bounds_dropped;
        // ... and meanwhile the workers project it and the owner forgets it.
        known.forget_before(4);
        known.check_bound(c, &alice, Some(ClientMsgId::parse("t1").expect("valid")), dropped);
        assert!(!is_new(&known, &key(c, "alice", "t3")), "t5 is in the store now, which that read did not see");
        assert!(!bound_checked(&known, &key(c, "alice", "t3")), "a later read must check again");
        // A read after the forgetting sees t5 in the store.
        known.check_bound(c, &alice, Some(ClientMsgId::parse("t5").expect("valid")), known.bounds_dropped);
        assert!(!is_new(&known, &key(c, "alice", "t5")));
        assert!(is_new(&known, &key(c, "alice", "t6")));
    }
}
