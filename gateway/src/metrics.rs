//! The gateway's counters, served in the Prometheus text format at `GET /metrics` (GATEWAY_METRICS_ADDR,
//! `lifecycle::metrics`), on a listener of its own so that the public WebSocket port does not show them:
//! what this process saw since it started.

use std::sync::atomic::AtomicU64;

use lifecycle::metrics::Sample;

pub use lifecycle::metrics::bump;

/// What the gateway counts; every field only grows.
#[derive(Debug, Default)]
pub struct Metrics {
    /// WebSocket sessions opened (upgrades accepted).
    pub opened: AtomicU64,
    /// Sessions ended, for any reason.
    pub closed: AtomicU64,
    /// Sessions closed because the client did not read (its queue filled, or a write blocked too long).
    pub closed_slow: AtomicU64,
    /// Sessions closed because the client went on sending far past its rate limit.
    pub closed_rate_limited: AtomicU64,
    /// Upgrade requests refused before a session (not a WebSocket, origin, token, the user's connections).
    pub refused_upgrades: AtomicU64,
    /// Data frames received from clients.
    pub frames_in: AtomicU64,
    /// Frames answered `rate_limited` instead of being handled.
    pub rate_limited: AtomicU64,
    /// Sends forwarded to the chat service, and those it did not accept (any error answer).
    pub sends: AtomicU64,
    pub send_errors: AtomicU64,
    /// Frames pushed here (messages and receipts by the workers, typing by the gateways) and queued to a
    /// connection, and pushed devices not taken here (not connected here, closing, or their queue full):
    /// the workers keep those messages in the inbox.
    pub pushed: AtomicU64,
    pub push_missed: AtomicU64,
}

impl Metrics {
    /// The exposition text, with `connections` (the devices connected now, one session each) as a gauge.
    pub fn render(&self, connections: usize) -> String {
        let c = Sample::count;
        lifecycle::metrics::render(&[
            Sample::gauge("gateway_connections", "Devices connected now (one session each).", connections as u64),
            c("gateway_connections_opened_total", "WebSocket sessions opened.", &self.opened),
            c("gateway_connections_closed_total", "WebSocket sessions ended, for any reason.", &self.closed),
            c(
                "gateway_closed_slow_consumer_total",
                "Sessions closed because the client did not read its frames (4008).",
                &self.closed_slow,
            ),
            c(
                "gateway_closed_rate_limited_total",
                "Sessions closed for sending far past the rate limit (4029).",
                &self.closed_rate_limited,
            ),
            c(
                "gateway_upgrades_refused_total",
                "Upgrade requests refused before a session: not a WebSocket, origin, token, the user's connections.",
                &self.refused_upgrades,
            ),
            c("gateway_frames_received_total", "Data frames received from clients.", &self.frames_in),
            c(
                "gateway_frames_rate_limited_total",
                "Frames answered rate_limited instead of being handled.",
                &self.rate_limited,
            ),
            c("gateway_sends_total", "Sends forwarded to the chat service.", &self.sends),
            c(
                "gateway_send_errors_total",
                "Sends the chat service did not accept (an error answer).",
                &self.send_errors,
            ),
            c(
                "gateway_pushed_total",
                "Frames pushed here (messages, receipts, typing) and queued to a connection.",
                &self.pushed,
            ),
            c(
                "gateway_push_missed_total",
                "Pushed devices not taken here (not connected, closing, or queue full): kept in the inbox.",
                &self.push_missed,
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_served_with_its_value_and_the_open_sessions_as_a_gauge() {
        let m = Metrics::default();
        bump(&m.opened);
        bump(&m.opened);
        bump(&m.push_missed);
        let text = m.render(7);
        assert!(text.contains("# TYPE gateway_connections gauge\ngateway_connections 7\n"), "{text}");
        assert!(text.contains("\ngateway_connections_opened_total 2\n"), "{text}");
        assert!(text.contains("\ngateway_push_missed_total 1\n"), "{text}");
        assert!(text.contains("\ngateway_sends_total 0\n"), "{text}");
        assert_eq!(text.matches("# TYPE ").count(), 12, "{text}");
    }
}
