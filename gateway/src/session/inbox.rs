//! A device's inbox: what arrived while it was away (or while pushes to it failed), sent at connect and
//! again on a resync.

use std::collections::HashSet;

use proto::v1;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Shared;
use super::frames::inbox_frame;
use super::requests::with_deadline;
use crate::auth::Identity;
use crate::protocol::ServerFrame;
use crate::registry::ConnHandle;

/// Inbox entries fetched per call.
const INBOX_PAGE: u32 = 500;

/// The device's inbox: sent at connect, before live pushes are let through (then `synced`); sent again each
/// time the device's presence is found lost or a worker that could not reach this gateway asks for it. Each
/// time it is read twice, `inbox_recheck` apart: a worker that read presence just before it was written (or
/// came back) writes its inbox row just after the first read. The reads are boxed, as the requests' answers:
/// the resting task stays small.
pub(super) async fn inbox(handle: &ConnHandle, id: &Identity, shared: &Shared, out_tx: &mpsc::Sender<Utf8Bytes>) {
    let mut connecting = true;
    loop {
        let mut sent: HashSet<(String, u64)> = HashSet::new();
        let count = Box::pin(send_inbox(id, shared, out_tx, &mut sent)).await;
        if connecting {
            connecting = false;
            handle.go_live(|c, s| sent.contains(&(c.to_string(), s)));
            if out_tx.send(ServerFrame::Synced { count }.to_text().into()).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(shared.inbox_recheck).await;
        Box::pin(send_inbox(id, shared, out_tx, &mut sent)).await;
        handle.resync.notified().await;
        tracing::info!(user = %id.user, device = %id.device, "sending the inbox again (presence lost or pushes missed)");
    }
}

/// Sends every inbox entry not in `sent` (and adds it there); returns how many were sent.
async fn send_inbox(
    id: &Identity,
    shared: &Shared,
    out_tx: &mpsc::Sender<Utf8Bytes>,
    sent: &mut HashSet<(String, u64)>,
) -> usize {
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
                return count;
            }
        };
        // A page may hold fewer than asked when messages are large: only an empty page ends the inbox.
        let full = !page.is_empty();
        for m in &page {
            let key = (m.conversation_id.clone(), m.seq);
            if sent.contains(&key) {
                continue;
            }
            if out_tx.send(inbox_frame(m)).await.is_err() {
                return count;
            }
            sent.insert(key);
            count += 1;
        }
        match page.last() {
            Some(last) if full => after = Some((last.conversation_id.clone(), last.seq)),
            _ => return count,
        }
    }
}
