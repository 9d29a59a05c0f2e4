//! Counters served in the Prometheus text format at `GET /metrics`: the exposition and the tiny server
//! that the gateway (GATEWAY_METRICS_ADDR), the chat service (CHAT_METRICS_ADDR) and the delivery worker
//! (WORKER_METRICS_ADDR) share.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpListener;
use warp::Filter;

/// What one sample is: a counter only grows (from the process's start), a gauge is a value now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One sample to expose.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub help: &'a str,
    pub kind: Kind,
    pub value: u64,
}

impl<'a> Sample<'a> {
    pub fn counter(name: &'a str, help: &'a str, value: u64) -> Sample<'a> {
        Sample { name, help, kind: Kind::Counter, value }
    }

    pub fn gauge(name: &'a str, help: &'a str, value: u64) -> Sample<'a> {
        Sample { name, help, kind: Kind::Gauge, value }
    }

    /// A counter kept in `value`, read now.
    pub fn count(name: &'a str, help: &'a str, value: &AtomicU64) -> Sample<'a> {
        Sample::counter(name, help, value.load(Ordering::Relaxed))
    }
}

/// Adds one to a counter that [`Sample::count`] serves.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The exposition text of `samples`.
pub fn render(samples: &[Sample<'_>]) -> String {
    let mut out = String::new();
    for s in samples {
        let kind = match s.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = write!(out, "# HELP {0} {1}\n# TYPE {0} {kind}\n{0} {2}\n", s.name, s.help, s.value);
    }
    out
}

/// Serves `GET /metrics` on `listener`, answering what `exposition` renders at each request, until
/// `shutdown` resolves.
pub async fn serve<F>(listener: TcpListener, exposition: F, shutdown: impl Future<Output = ()> + Send + 'static)
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    let route = warp::path!("metrics")
        .and(warp::get())
        .map(move || warp::reply::with_header(exposition(), "content-type", "text/plain; version=0.0.4"));
    warp::serve(route).incoming(listener).graceful(shutdown).run().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_render_in_the_text_format() {
        let text = render(&[
            Sample::counter("x_records_total", "Records handled.", 2),
            Sample::gauge("x_partitions", "Partitions held now.", 5),
        ]);
        assert_eq!(
            text,
            "# HELP x_records_total Records handled.\n# TYPE x_records_total counter\nx_records_total 2\n\
             # HELP x_partitions Partitions held now.\n# TYPE x_partitions gauge\nx_partitions 5\n"
        );
    }

    #[tokio::test]
    async fn the_exposition_is_served_at_get_metrics_only() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, || render(&[Sample::counter("y_total", "Y.", 7)]), async {
            let _ = stopped.await;
        }));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            s.write_all(request.as_bytes()).await.expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4") && ok.ends_with("y_total 7\n"), "{ok}");
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        let _ = stop.send(());
        server.await.expect("the server ends");
    }
}
