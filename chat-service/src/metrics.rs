//! The chat service's counters, served in the Prometheus text format at `GET /metrics`
//! (CHAT_METRICS_ADDR, `lifecycle::metrics`): what this replica's partition owners did since it started.

use lifecycle::metrics::Sample;

use crate::owner::group::Owners;

/// The exposition text of `owners`' counters.
pub fn render(owners: &Owners) -> String {
    let stats = owners.stats();
    let c = Sample::count;
    lifecycle::metrics::render(&[
        c(
            "chat_owner_transactions_total",
            "Transactions committed to the log by this replica's owners.",
            &stats.batches,
        ),
        c("chat_owner_events_total", "Events (sends and changes) in those transactions.", &stats.events),
        c(
            "chat_owner_aborted_total",
            "Transactions aborted: their numbers were taken back, their senders retry.",
            &stats.aborted,
        ),
        c("chat_owner_fenced_total", "Writes refused because another replica owns the partition now.", &stats.fenced),
        c(
            "chat_owner_unknown_total",
            "Transactions whose outcome was unknown, settled by reading the log.",
            &stats.unknown,
        ),
        c(
            "chat_send_id_reads_total",
            "Store reads made to tell a send from a retry (the sender's greatest client id, or the id itself).",
            &stats.id_reads,
        ),
        c(
            "chat_send_ids_unread_total",
            "Sends known new without a store read: a client id past every one of its sender's.",
            &stats.ids_unread,
        ),
        Sample::counter("chat_owner_acquisitions_total", "Partitions acquired by this replica.", owners.acquisitions()),
        Sample::gauge("chat_owner_partitions", "Partitions this replica serves now.", owners.serving().len() as u64),
    ])
}
