//! A device's inbox: what arrived while it was away (or while pushes to it failed), sent at connect and
//! again on a resync.

use std::collections::HashSet;
use std::sync::Arc;

use proto::v1;

use super::Shared;
use super::frames::inbox_frame;
use super::requests::with_deadline;
use crate::auth::Identity;
use crate::protocol::ServerFrame;
use crate::registry::{ConnHandle, Refused};

/// Inbox entries fetched per call.
const INBOX_PAGE: u32 = 500;

/// Which pass of the inbox a sender makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    /// At connect: live pushes are held until it is sent (then `synced`).
    Connect,
    /// Again, because the device's presence was found lost or a worker that could not reach this gateway
    /// asked for it.
    Resync,
}

/// Starts a sender of the device's inbox; it ends once the pass is done, so a resting connection has none.
/// Each pass reads the inbox twice, `inbox_recheck` apart: a worker that read presence just before it was
/// written (or came back) writes its inbox row just after the first read. The reads are boxed, as the
/// requests' answers: the task stays small.
pub(super) fn spawn(
    handle: &Arc<ConnHandle>,
    id: &Identity,
    shared: &Arc<Shared>,
    pass: Pass,
) -> tokio::task::JoinHandle<()> {
    let (handle, id, shared) = (handle.clone(), id.clone(), shared.clone());
    tokio::spawn(async move {
        let mut sent: HashSet<(String, u64)> = HashSet::new();
        let Ok(count) = Box::pin(send_inbox(&id, &shared, &handle, &mut sent)).await else { return };
        if pass == Pass::Connect {
            handle.go_live(|c, s| sent.contains(&(c.to_string(), s)));
            if handle.send(ServerFrame::Synced { count }.to_text().into()).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(shared.inbox_recheck).await;
        let _ = Box::pin(send_inbox(&id, &shared, &handle, &mut sent)).await;
    })
}

/// Sends every inbox entry not in `sent` (and adds it there); answers how many were sent, or `Err` when
/// the connection stopped writing.
async fn send_inbox(
    id: &Identity,
    shared: &Shared,
    handle: &ConnHandle,
    sent: &mut HashSet<(String, u64)>,
) -> Result<usize, Refused> {
    let mut count = 0;
    let mut after: Option<(String, u64)> = None;
    loop {
        let (after_conversation_id, after_seq) = after.clone().unwrap_or_default();
        let req = v1::FetchInboxRequest {
            user_id: id.user.to_string(),
            device_id: id.device.to_string(),
            limit: INBOX_PAGE,
            after_conversation_id,
            after_seq,
        };
        let timeout = shared.rpc_timeout;
        let fetched = shared.chat.call(|mut c| {
            let r = with_deadline(req.clone(), timeout);
            async move { c.fetch_inbox(r).await }
        });
        let page = match fetched.await {
            Ok(r) => r.messages,
            Err(e) => {
                tracing::warn!(user = %id.user, error = %e, "inbox not fetched; the client resumes by cursor");
                return Ok(count);
            }
        };
        // A page may hold fewer than asked when messages are large: only an empty page ends the inbox.
        let full = !page.is_empty();
        for m in &page {
            let key = (m.conversation_id.clone(), m.seq);
            if sent.contains(&key) {
                continue;
            }
            handle.send(inbox_frame(m)).await?;
            sent.insert(key);
            count += 1;
        }
        match page.last() {
            Some(last) if full => after = Some((last.conversation_id.clone(), last.seq)),
            _ => return Ok(count),
        }
    }
}
