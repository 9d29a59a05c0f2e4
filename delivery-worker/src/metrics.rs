//! The worker's counters, served in the Prometheus text format at `GET /metrics` (WORKER_METRICS_ADDR,
//! `lifecycle::metrics`).

use std::sync::atomic::AtomicU64;

use lifecycle::metrics::Sample;

/// Counters since the process started.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Records taken from the log and handled (delivered, or set aside as dead letters).
    pub records: AtomicU64,
    /// Records that could not be decoded or were invalid, copied to the dead-letter topic.
    pub dead_letters: AtomicU64,
    /// Attempts at handling a record that failed and were retried.
    pub retries: AtomicU64,
    /// Errors reported by the Kafka consumer (broker down, rebalance trouble).
    pub consumer_errors: AtomicU64,
    /// Consumers replaced after being out of their group too long (`consumer::WEDGED_AFTER`).
    pub consumer_replacements: AtomicU64,
}

impl Metrics {
    /// The exposition text.
    pub fn render(&self) -> String {
        let c = Sample::count;
        lifecycle::metrics::render(&[
            c("worker_records_total", "Records taken from the log and handled.", &self.records),
            c("worker_dead_letters_total", "Records copied to the dead-letter topic.", &self.dead_letters),
            c("worker_retries_total", "Failed attempts at handling a record, retried.", &self.retries),
            c("worker_consumer_errors_total", "Errors reported by the Kafka consumer.", &self.consumer_errors),
            c(
                "worker_consumer_replacements_total",
                "Kafka consumers replaced after being out of their group too long.",
                &self.consumer_replacements,
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use lifecycle::metrics::bump;

    use super::*;

    #[test]
    fn counters_render_in_the_text_format() {
        let m = Metrics::default();
        bump(&m.dead_letters);
        bump(&m.dead_letters);
        let text = m.render();
        assert!(text.contains("# TYPE worker_dead_letters_total counter\nworker_dead_letters_total 2\n"), "{text}");
        assert!(text.contains("worker_records_total 0\n"), "{text}");
    }
}
