//! The worker's counters, served in the Prometheus text format at `GET /metrics` (WORKER_METRICS_ADDR).

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpListener;
use warp::Filter;

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
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let counters = [
            ("worker_records_total", "Records taken from the log and handled.", &self.records),
            ("worker_dead_letters_total", "Records copied to the dead-letter topic.", &self.dead_letters),
            ("worker_retries_total", "Failed attempts at handling a record, retried.", &self.retries),
            ("worker_consumer_errors_total", "Errors reported by the Kafka consumer.", &self.consumer_errors),
            (
                "worker_consumer_replacements_total",
                "Kafka consumers replaced after being out of their group too long.",
                &self.consumer_replacements,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in counters {
            let _ =
                write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n", value.load(Ordering::Relaxed));
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: impl Future<Output = ()> + Send + 'static) {
    let route = warp::path!("metrics")
        .and(warp::get())
        .map(move || warp::reply::with_header(metrics.render(), "content-type", "text/plain; version=0.0.4"));
    warp::serve(route).incoming(listener).graceful(shutdown).run().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_the_text_format() {
        let m = Metrics::default();
        Metrics::add(&m.dead_letters);
        Metrics::add(&m.dead_letters);
        let text = m.render();
        assert!(text.contains("# TYPE worker_dead_letters_total counter\nworker_dead_letters_total 2\n"), "{text}");
        assert!(text.contains("worker_records_total 0\n"), "{text}");
    }
}
