//! Who may send to a conversation: membership read from the store, a sender found to be a member trusted
//! for a short time (sends come in bursts), and forgotten at once when removed through this replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_model::{ConversationId, UserId};
use chat_store::CassandraStore;

use crate::error::ChatError;

/// Senders known to be members, before the cache is cleared.
const CAPACITY: usize = 100_000;

#[derive(Clone)]
pub struct Members {
    store: CassandraStore,
    /// Senders recently found to be members, and when: a send within `ttl` skips the read.
    known: Arc<Mutex<HashMap<(ConversationId, UserId), Instant>>>,
    ttl: Duration,
}

impl Members {
    pub fn new(store: CassandraStore, ttl: Duration) -> Members {
        Members { store, known: Arc::default(), ttl }
    }

    pub async fn is_member(&self, id: ConversationId, user: &UserId) -> Result<bool, ChatError> {
        let key = (id, user.clone());
        if let Some(at) = self.known.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(true);
        }
        let member = self.store.is_member(id, user).await?;
        if member && !self.ttl.is_zero() {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            if known.len() >= CAPACITY {
                known.clear();
            }
            known.insert(key, Instant::now());
        }
        Ok(member)
    }

    /// Forgets that `users` were members (they were just removed through this replica).
    pub fn forget(&self, id: ConversationId, users: &[UserId]) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        for u in users {
            known.remove(&(id, u.clone()));
        }
    }

    /// Why a user who is not a member was refused: the conversation is missing, or they are not in it.
    pub async fn refusal(&self, id: ConversationId) -> ChatError {
        match self.store.head(id).await {
            Ok(Some(_)) => ChatError::NotMember,
            Ok(None) => ChatError::ConversationNotFound,
            Err(e) => e.into(),
        }
    }
}
