//! Per conversation, how far delivery has gone, so that a record handled again (after a rebalance or a
//! restart: delivery is at least once) is not delivered twice.
//!
//! The log holds each conversation's messages in order, numbered by its partition's owner, and workers read
//! it in order (only committed transactions). So a record is either the next number, or one already
//! delivered, or, after a failover, a number past the saved cursor (the cursor is saved lazily, so it lags
//! what was delivered): all but the already delivered are delivered. How far delivery has gone is kept in
//! the store (`delivery_cursors`), so the next owner of the partition starts where this one stopped.

use std::collections::HashMap;

use chat_model::ConversationId;

/// What to do with a message's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Deliver,
    /// Already delivered (an earlier reading of the record).
    Skip,
}

/// Bounded: when full, the map is cleared, which only costs a read of the stored cursor.
///
/// Moves are saved to the store in the background of delivery (at most one write per conversation per save
/// interval, [`Cursors::unsaved`]): a stored cursor that lags only makes the next owner deliver again what
/// was already delivered (duplicates, which clients drop by number), never skip anything.
pub struct Cursors {
    delivered: HashMap<ConversationId, u64>,
    /// Moves not yet written to the store, kept apart so that clearing `delivered` does not lose them.
    unsaved: HashMap<ConversationId, u64>,
    capacity: usize,
}

impl Cursors {
    pub fn new(capacity: usize) -> Cursors {
        Cursors { delivered: HashMap::new(), unsaved: HashMap::new(), capacity }
    }

    /// What to do with the record of `seq`; `None` when the conversation is unknown here: read its stored
    /// cursor and call [`Cursors::start`] first.
    pub fn plan(&self, conversation: ConversationId, seq: u64) -> Option<Plan> {
        let delivered = *self.delivered.get(&conversation)?;
        Some(if seq <= delivered { Plan::Skip } else { Plan::Deliver })
    }

    /// Starts tracking a conversation whose messages up to `delivered` are known to be delivered.
    pub fn start(&mut self, conversation: ConversationId, delivered: u64) {
        if self.delivered.len() >= self.capacity {
            self.delivered.clear();
        }
        // A move not saved yet is ahead of the stored cursor.
        let delivered = self.unsaved.get(&conversation).map_or(delivered, |u| delivered.max(*u));
        self.delivered.insert(conversation, delivered);
    }

    /// Records that every number up to `seq` is delivered (to be saved: [`Cursors::unsaved`]).
    pub fn delivered(&mut self, conversation: ConversationId, seq: u64) {
        let d = self.delivered.entry(conversation).or_insert(seq);
        if seq > *d {
            *d = seq;
        }
        let u = self.unsaved.entry(conversation).or_insert(seq);
        if seq > *u {
            *u = seq;
        }
    }

    /// Whether some move is not saved yet.
    pub fn has_unsaved(&self) -> bool {
        !self.unsaved.is_empty()
    }

    /// The moves not saved yet, one per conversation (the furthest); call [`Cursors::saved`] once written.
    pub fn unsaved(&self) -> Vec<(ConversationId, u64)> {
        self.unsaved.iter().map(|(c, s)| (*c, *s)).collect()
    }

    /// Records that `moves` are in the store (a conversation that moved further meanwhile stays unsaved).
    pub fn saved(&mut self, moves: &[(ConversationId, u64)]) {
        for (c, seq) in moves {
            if self.unsaved.get(c).is_some_and(|u| u <= seq) {
                self.unsaved.remove(c);
            }
        }
    }

    /// Forgets everything: after a rebalance, another worker may have moved the conversations on. Save the
    /// unsaved moves first (forgetting them only costs duplicates).
    pub fn clear(&mut self) {
        self.delivered.clear();
        self.unsaved.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_conversations_ask_for_the_stored_cursor() {
        let mut c = Cursors::new(10);
        let id = ConversationId::generate();
        assert_eq!(c.plan(id, 1), None);
        c.start(id, 0);
        assert_eq!(c.plan(id, 1), Some(Plan::Deliver));
    }

    #[test]
    fn in_order_records_are_delivered_once() {
        let mut c = Cursors::new(10);
        let id = ConversationId::generate();
        c.start(id, 0);
        for seq in 1..=3 {
            assert_eq!(c.plan(id, seq), Some(Plan::Deliver));
            c.delivered(id, seq);
        }
        assert_eq!(c.plan(id, 2), Some(Plan::Skip), "a replayed record is not delivered again");
    }

    #[test]
    fn a_number_past_a_lagging_saved_cursor_is_delivered_and_an_old_one_skipped() {
        let mut c = Cursors::new(10);
        let id = ConversationId::generate();
        c.start(id, 4);
        assert_eq!(c.plan(id, 7), Some(Plan::Deliver), "5 and 6 were delivered before the cursor was saved");
        c.delivered(id, 7);
        assert_eq!(c.plan(id, 6), Some(Plan::Skip));
        assert_eq!(c.plan(id, 8), Some(Plan::Deliver));
    }

    #[test]
    fn moves_wait_to_be_saved_and_survive_the_map_being_full() {
        let mut c = Cursors::new(1);
        let (a, b) = (ConversationId::generate(), ConversationId::generate());
        c.start(a, 0);
        c.delivered(a, 1);
        c.delivered(a, 2);
        assert_eq!(c.unsaved(), vec![(a, 2)], "one write per conversation, the furthest");
        c.start(b, 0);
        c.start(a, 1);
        assert_eq!(c.plan(a, 2), Some(Plan::Skip), "a stored cursor behind an unsaved move does not win");
        let moves = c.unsaved();
        c.delivered(a, 3);
        c.saved(&moves);
        assert_eq!(c.unsaved(), vec![(a, 3)], "moved on while being saved: still unsaved");
        c.saved(&c.unsaved());
        assert!(!c.has_unsaved());
    }

    #[test]
    fn the_cursor_never_moves_back_and_a_full_map_forgets() {
        let mut c = Cursors::new(2);
        let (a, b, d) = (ConversationId::generate(), ConversationId::generate(), ConversationId::generate());
        c.start(a, 5);
        c.delivered(a, 3);
        assert_eq!(c.plan(a, 5), Some(Plan::Skip));
        c.start(b, 1);
        c.start(d, 1);
        assert_eq!(c.plan(a, 6), None, "forgotten, so the stored cursor is read again");
    }
}
