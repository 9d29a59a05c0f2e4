//! Who may send to a conversation: membership read from the store, and a sender found to be a member
//! trusted for a while by the partition's owner ([`crate::owner::Known`]). Every membership change of a
//! conversation goes through the owner of its partition, which forgets the removed members at once, and an
//! owner starts with an empty memory at each acquisition (another replica may have changed members since).

use std::time::Duration;

use chat_model::{ConversationId, UserId};
use chat_store::CassandraStore;

use crate::error::ChatError;
use crate::owner::group::Local;

#[derive(Clone)]
pub struct Members {
    store: CassandraStore,
    /// How long a sender found to be a member is trusted without reading again (0: read on every send).
    ttl: Duration,
}

impl Members {
    pub fn new(store: CassandraStore, ttl: Duration) -> Members {
        Members { store, ttl }
    }

    /// Whether `user` is a member of `id`, a conversation of the partition `local` owns.
    pub async fn is_member(&self, local: &Local, id: ConversationId, user: &UserId) -> Result<bool, ChatError> {
        let removals = {
            let known = local.known.lock();
            if known.is_known_member(id, user, self.ttl) {
                return Ok(true);
            }
            known.removals()
        };
        let member = self.store.is_member(id, user).await?;
        if member && !self.ttl.is_zero() {
            local.known.lock().remember_member(id, user.clone(), removals);
        }
        Ok(member)
    }

    /// Forgets that `users` were members of `id` (they are being removed through its owner, `local`).
    pub fn forget(&self, local: &Local, id: ConversationId, users: &[UserId]) {
        local.known.lock().forget_members(id, users);
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
