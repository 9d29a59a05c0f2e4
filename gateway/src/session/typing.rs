//! Typing indicators: routed live to the other members' online devices, never stored.

use std::time::{Duration, Instant};

use chat_model::{ConversationId, UserId};
use proto::v1;

use super::Shared;
use super::requests::with_deadline;
use crate::auth::Identity;

/// Routes a typing indicator to the online devices of the conversation's other members (and the user's
/// other devices), straight to the gateways holding them: nothing is logged or stored.
pub(super) async fn route_typing(
    shared: &Shared,
    id: &Identity,
    conversation: ConversationId,
    typing: bool,
) -> Result<(), tonic::Status> {
    let members = shared.members_of(conversation, &id.user).await?;
    let online = shared.presence.online(&members).await;
    let indicator = v1::Typing {
        conversation_id: conversation.to_string(),
        user_id: id.user.to_string(),
        device_id: id.device.to_string(),
        typing,
    };
    let request = v1::PushRequest { message: None, devices: Vec::new(), receipt: None, typing: Some(indicator) };
    shared.pushers.fan_out(&online, Some((&id.user, &id.device)), request).await;
    Ok(())
}

/// How long a conversation's member list is reused for typing indicators.
const MEMBERS_TTL: Duration = Duration::from_secs(5);

impl Shared {
    /// The members of a conversation the user belongs to (PERMISSION_DENIED otherwise), reused for a few
    /// seconds: typing indicators come in bursts.
    async fn members_of(&self, conversation: ConversationId, user: &UserId) -> Result<Vec<UserId>, tonic::Status> {
        if let Some((at, members)) = self.members.lock().unwrap_or_else(|p| p.into_inner()).get(&conversation)
            && at.elapsed() < MEMBERS_TTL
            && members.contains(user)
        {
            return Ok(members.clone());
        }
        let req = v1::GetConversationRequest { conversation_id: conversation.to_string(), user_id: user.to_string() };
        let timeout = self.rpc_timeout;
        let answer = self
            .chat
            .call(|mut c| {
                let r = with_deadline(req.clone(), timeout);
                async move { c.get_conversation(r).await }
            })
            .await?;
        let ids = answer.conversation.map(|c| c.member_ids).unwrap_or_default();
        let members: Vec<UserId> = ids.iter().filter_map(|m| UserId::parse(m).ok()).collect();
        let mut cache = self.members.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= 10_000 {
            cache.clear();
        }
        cache.insert(conversation, (Instant::now(), members.clone()));
        Ok(members)
    }
}
