//! The HTTP side: our own accept loop (so that header-read timeouts hold), warp routes for health, and the
//! WebSocket upgrade done with tokio-tungstenite directly (so that the per-connection buffers and limits are
//! ours to set; warp's `ws()` filter allows neither).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::Filter;

use crate::auth::{AuthError, Verifier};
use crate::limits::AddressGuard;
use crate::session::{self, Shared};

/// What the upgrade needs besides the session's shared state.
pub struct Upgrader {
    pub verifier: Verifier,
    pub allowed_origins: Vec<String>,
    /// Served read-only at `/app/` (GATEWAY_WEB_DIR), when set.
    pub web_dir: Option<std::path::PathBuf>,
    pub ws_config: WebSocketConfig,
    pub shared: Arc<Shared>,
}

/// Largest frame the gateway sends: a page of history is capped at 4 MiB of bodies by the chat service,
/// plus its JSON framing.
pub const MAX_SERVER_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// The WebSocket settings of every connection: small read buffer (see pitfalls: tungstenite's default of
/// 128 KiB per connection multiplies by the connection count), and message and frame limits.
pub fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        // Holds the frame being written: it must fit the largest frame the gateway sends (a history page).
        .max_write_buffer_size(MAX_SERVER_FRAME_BYTES)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
        .accept_unmasked_frames(false)
}

/// Accepts connections until `shutdown` becomes true. With `tls`, each connection's TLS handshake must
/// finish within `handshake_timeout`, and then, as without TLS, its request headers within as long again.
pub async fn serve(
    listener: TcpListener,
    upgrader: Arc<Upgrader>,
    handshake_timeout: Duration,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = upgrader.shared.limits.clone();
    let routes = routes(upgrader);
    let service = warp::service(routes);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = session::stopped(&mut shutdown) => return,
        };
        // Over a connection cap the socket is closed at once: nothing is read from it.
        let slot = match limits.admit_address(peer.ip()) {
            Ok(g) => Slot(Arc::new(g)),
            Err(refusal) => {
                tracing::debug!(%peer, ?refusal, "connection refused by a cap");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_http(stream, peer, slot, service, handshake_timeout).await,
                Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_http(stream, peer, slot, service, handshake_timeout).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
}

/// Serves HTTP/1.1 (and the upgrade) on one connection, plain or TLS.
async fn serve_http<I, S>(io: I, peer: SocketAddr, slot: Slot, service: S, handshake_timeout: Duration)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower_service::Service<http::Request<Incoming>, Response = Reply, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        req.extensions_mut().insert(slot.clone());
        let mut s = service.clone();
        async move { tower_service::Service::call(&mut s, req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "http connection ended with an error");
    }
}

/// The client's address, put in each request's extensions by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// The connection's place in the address and total caps, held by the accept loop's task and, after an
/// upgrade, by the session: the place is given back when both are done.
#[derive(Clone)]
pub struct Slot(pub Arc<AddressGuard>);

type Reply = warp::reply::Response;

fn routes(upgrader: Arc<Upgrader>) -> impl Filter<Extract = (Reply,), Error = warp::Rejection> + Clone {
    let web = web_files(upgrader.web_dir.clone());
    let live = warp::path!("healthz").and(warp::get()).map(|| plain(StatusCode::OK, "ok"));
    let ready_up = upgrader.clone();
    let ready = warp::path!("readyz").and(warp::get()).map(move || {
        if *ready_up.shared.shutdown.borrow() {
            plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
        } else {
            plain(StatusCode::OK, "ready")
        }
    });
    let query = warp::query::<HashMap<String, String>>().or(warp::any().map(HashMap::new)).unify();
    let ws = warp::path!("v1" / "ws")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(query)
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ext::optional::<Slot>())
        .map(
            move |headers: HeaderMap,
                  query: HashMap<String, String>,
                  on_upgrade: Option<OnUpgrade>,
                  slot: Option<Slot>| {
                let reply = upgrade(&upgrader, &headers, &query, on_upgrade, slot);
                if reply.status() != StatusCode::SWITCHING_PROTOCOLS {
                    crate::metrics::bump(&upgrader.shared.metrics.refused_upgrades);
                }
                reply
            },
        );
    live.or(ready).unify().or(ws).unify().or(web).unify()
}

/// `GET /app/...`: the files of GATEWAY_WEB_DIR (warp refuses paths that leave the folder), with headers
/// that keep a page from being framed or from running scripts of another origin; without the setting,
/// nothing is there.
fn web_files(dir: Option<std::path::PathBuf>) -> warp::filters::BoxedFilter<(Reply,)> {
    let Some(dir) = dir else {
        return warp::path("app").and_then(|| async { Err::<Reply, _>(warp::reject::not_found()) }).boxed();
    };
    warp::path("app")
        .and(warp::get())
        .and(warp::fs::dir(dir))
        .map(|file: warp::fs::File| {
            let mut r = warp::Reply::into_response(file);
            let h = r.headers_mut();
            h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'",
                ),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        })
        .boxed()
}

fn plain(status: StatusCode, text: &'static str) -> Reply {
    warp::Reply::into_response(warp::reply::with_status(text, status))
}

/// A refusal before the upgrade: a status and a JSON body with a stable code.
fn refuse(status: StatusCode, code: &str, message: &str) -> Reply {
    let body = serde_json::json!({ "code": code, "message": message });
    warp::Reply::into_response(warp::reply::with_status(warp::reply::json(&body), status))
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks a WebSocket upgrade request: handshake headers, origin, token. On success answers 101 and starts
/// the session once hyper hands over the connection.
fn upgrade(
    up: &Arc<Upgrader>,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    on_upgrade: Option<OnUpgrade>,
    slot: Option<Slot>,
) -> Reply {
    let is_upgrade = header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket");
    let version_ok = headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let (Some(key), true, true, Some(on_upgrade)) =
        (headers.get(header::SEC_WEBSOCKET_KEY), is_upgrade, version_ok, on_upgrade)
    else {
        return refuse(StatusCode::BAD_REQUEST, "not_websocket", "expected a WebSocket upgrade (version 13)");
    };
    if !up.allowed_origins.is_empty() {
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        if !origin.is_some_and(|o| up.allowed_origins.iter().any(|a| a == o)) {
            return refuse(StatusCode::FORBIDDEN, "origin_not_allowed", "origin not allowed");
        }
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let token = bearer.or(query.get("access_token").map(String::as_str));
    let identity = match up.verifier.verify(token, query.get("device_id").map(String::as_str)) {
        Ok(id) => id,
        Err(e @ (AuthError::NoDevice | AuthError::DeviceMismatch)) => {
            return refuse(StatusCode::BAD_REQUEST, "bad_device", &e.to_string());
        }
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string()),
    };
    let user_slot = match up.shared.limits.admit_user(&identity.user) {
        Ok(g) => g,
        Err(_) => {
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                "this user has too many connections open",
            );
        }
    };
    let accept = derive_accept_key(key.as_bytes());
    let up = up.clone();
    tokio::spawn(async move {
        let _slots = (slot, user_slot);
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(up.ws_config)).await;
        session::run(Box::new(ws), identity, up.shared.clone()).await;
    });
    let mut r = warp::Reply::into_response(warp::reply::with_status("", StatusCode::SWITCHING_PROTOCOLS));
    let h = r.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}
