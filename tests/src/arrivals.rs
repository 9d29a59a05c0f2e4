//! The checks of what a [`Device`](crate::device::Device) saw against what the servers acknowledged,
//! computed from what arrived on the wire (never from what the client chose to show).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::device::{Channel, Report};

/// An acknowledged send: the message id it was given, and when the acknowledgement came.
#[derive(Debug, Clone)]
pub struct Acked {
    pub message_id: String,
    pub at: Instant,
}

/// Acknowledged messages of one conversation, by number.
pub type AckedMap = HashMap<u64, Acked>;

/// What a scenario expects of how messages arrived.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// A number acknowledged while a session of the device was live must arrive in that session by push
    /// (or as the device's own answer); with this, also from the inbox (a push that failed, kept, and sent
    /// again at a resync: presence lost, a gateway that did not answer).
    pub inbox_while_live: bool,
    /// The session must have lasted this long after the acknowledgement for the rule above to apply (a
    /// session cut soon after leaves the message to the next one, by any channel).
    pub late: Duration,
    /// When set, every number must have first arrived by one of these channels.
    pub only: Option<&'static [Channel]>,
}

impl Default for Expect {
    fn default() -> Self {
        Expect { inbox_while_live: false, late: Duration::from_secs(20), only: None }
    }
}

/// Counts of one device's view of one conversation.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Distinct numbers that arrived.
    pub delivered: usize,
    /// Arrivals beyond the first of each number.
    pub raw_duplicates: u64,
    /// Numbers that first arrived by each channel (own, pushed, inbox, history).
    pub first: [usize; 4],
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.delivered += other.delivered;
        self.raw_duplicates += other.raw_duplicates;
        for i in 0..4 {
            self.first[i] += other.first[i];
        }
    }
}

/// Checks a device's arrivals in `conv` against the acknowledged messages: no broken promise seen on the
/// wire, every acknowledged number arrived and nothing else, each with its acknowledged id, no message at
/// two numbers (a user-visible duplicate, by body), each by a channel `expect` allows; and that the device
/// showed 1..=n in order. Fails with a [`Broken`](crate::prove::Broken) error.
pub fn check(name: &str, report: &Report, conv: &str, acked: &AckedMap, expect: Expect) -> anyhow::Result<Counts> {
    if let Some(v) = report.violations.first() {
        crate::broken!("{name}: {v} ({} violations)", report.violations.len());
    }
    let empty = Default::default();
    let arrivals = report.arrivals.get(conv).unwrap_or(&empty);
    let mut missing: Vec<u64> = acked.keys().filter(|n| !arrivals.contains_key(n)).copied().collect();
    missing.sort_unstable();
    crate::promise!(
        missing.is_empty(),
        "{name}: {} acknowledged numbers of {conv} never arrived (first: {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let mut extra: Vec<u64> = arrivals.keys().filter(|n| !acked.contains_key(n)).copied().collect();
    extra.sort_unstable();
    crate::promise!(extra.is_empty(), "{name}: numbers {extra:?} of {conv} arrived but were never acknowledged");
    let mut bodies: HashMap<&str, u64> = HashMap::new();
    let mut counts = Counts::default();
    let trail = report.trail.get(conv);
    for (seq, a) in arrivals {
        let ack = &acked[seq];
        crate::promise!(
            a.message_id == ack.message_id,
            "{name}: number {seq} of {conv} arrived as message {}, acknowledged as {}",
            a.message_id,
            ack.message_id
        );
        if let Some(body) = a.body.as_deref()
            && let Some(other) = bodies.insert(body, *seq)
        {
            crate::broken!("{name}: one message shown twice in {conv}, at numbers {other} and {seq}");
        }
        let first = a.by.iter().min_by_key(|(_, c)| c.first_at).map(|(ch, _)| *ch).unwrap_or(Channel::History);
        counts.first[Channel::ALL.iter().position(|c| *c == first).unwrap_or(3)] += 1;
        counts.delivered += 1;
        counts.raw_duplicates += u64::from(a.times().saturating_sub(1));
        if let Some(only) = expect.only {
            crate::promise!(only.contains(&first), "{name}: number {seq} of {conv} first arrived by {first:?}");
        }
        let Some(live) = report.live_at(ack.at) else { continue };
        let lasted = report.sessions[live].ended.is_none_or(|end| end.saturating_duration_since(ack.at) >= expect.late);
        if !lasted {
            continue;
        }
        let came: Vec<(Channel, usize)> = trail.and_then(|t| t.get(seq)).cloned().unwrap_or_default();
        let served = came.iter().any(|(ch, s)| {
            *s == live
                && match ch {
                    Channel::Own | Channel::Pushed => true,
                    Channel::Inbox => expect.inbox_while_live,
                    Channel::History => false,
                }
        });
        crate::promise!(
            served,
            "{name}: number {seq} of {conv}, acknowledged while session {live} was live, was not {} in it \
             (arrived by {came:?})",
            if expect.inbox_while_live { "pushed or sent from the inbox" } else { "pushed" }
        );
    }
    let shown: Vec<u64> = report.shown.get(conv).map(|s| s.iter().map(|(n, _)| *n).collect()).unwrap_or_default();
    let expected: Vec<u64> = (1..=acked.len() as u64).collect();
    crate::promise!(
        shown == expected,
        "{name}: showed {} numbers of {conv}, not 1..={} in order",
        shown.len(),
        acked.len()
    );
    Ok(counts)
}
