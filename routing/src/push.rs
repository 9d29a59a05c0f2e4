//! Clients of the gateways' push service, one per address, made on first use, each behind a breaker.
//!
//! A gateway that does not answer (killed, hung, partitioned) would otherwise cost every message routed to
//! it a whole push deadline, one after the other, and stall the worker's partitions behind it. So the first
//! push that fails marks the gateway down: later pushes to it are refused at once (their devices get the
//! inbox), and a background probe asks the gateway, with growing pauses, to resend the inbox of every device
//! whose message it missed. The probe's first success marks it up again. A dead gateway costs one deadline.
//!
//! Pushes to a gateway ride one long-lived `PushMessages` call ([`lifecycle::call_stream`]): a push is a
//! frame each way rather than an HTTP/2 stream of its own. When that call ends, the pushes waiting on it
//! fail as unreachable, as a push on a broken connection did. A gateway that does not know the call gets
//! one `Push` call per push from then on (the push that found it out goes to the inbox).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chat_model::{DeviceId, UserId};
use futures::StreamExt;
use lifecycle::call_stream::CallStream;
use proto::v1::{self, gateway_service_client::GatewayServiceClient};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// The first pause of a down gateway's probe; it doubles after each failure, up to [`MAX_PROBE_PAUSE`].
const FIRST_PROBE_PAUSE: Duration = Duration::from_millis(500);
const MAX_PROBE_PAUSE: Duration = Duration::from_secs(5);
/// Devices remembered per down gateway for a resync; past that they rely on the client's gap rule.
const MAX_MISSED: usize = 100_000;

#[derive(Clone)]
pub struct Pushers {
    inner: Arc<Inner>,
}

struct Inner {
    deadline: Duration,
    /// Mutual TLS towards the gateways (`https`), or none (`http`).
    tls: Option<ClientTlsConfig>,
    gateways: Mutex<HashMap<String, Gateway>>,
}

struct Gateway {
    client: GatewayServiceClient<Channel>,
    pushes: Arc<CallStream<v1::PushMessagesRequest, v1::PushResponse>>,
    /// Set while the gateway is down: the devices whose message went to the inbox instead.
    down: Option<HashSet<v1::DeviceRef>>,
}

impl Pushers {
    /// Every push (connecting included) must finish within `deadline`, or counts as not delivered.
    /// Push clients with plaintext gRPC.
    pub fn new(deadline: Duration) -> Pushers {
        Pushers::with_tls(deadline, None)
    }

    /// Push clients that reach the gateways over mutual TLS when `tls` is set.
    pub fn with_tls(deadline: Duration, tls: Option<ClientTlsConfig>) -> Pushers {
        Pushers { inner: Arc::new(Inner { deadline, tls, gateways: Mutex::new(HashMap::new()) }) }
    }

    /// Pushes to the gateway at `addr`; answers the devices it took. A failure, a missed deadline or a gateway
    /// marked down takes none.
    pub async fn push(&self, addr: &str, request: v1::PushRequest) -> Vec<v1::DeviceRef> {
        // Only a missed message makes a device's inbox worth resending; receipts and typing are not kept.
        let carries_message = request.message.is_some();
        let (client, pushes) = {
            let mut gateways = self.inner.lock();
            let Some(gw) = self.inner.gateway(&mut gateways, addr) else {
                return Vec::new();
            };
            if let Some(missed) = gw.down.as_mut() {
                if carries_message {
                    remember(missed, &request.devices);
                }
                return Vec::new();
            }
            (gw.client.clone(), gw.pushes.clone())
        };
        let devices = if carries_message { request.devices.clone() } else { Vec::new() };
        let failure = match push_on(client, &pushes, request, self.inner.deadline).await {
            Ok(r) => return r.delivered,
            Err(status) if !means_unreachable(status.code()) => {
                tracing::warn!(gateway = addr, %status, "push refused");
                return Vec::new();
            }
            Err(status) => status.to_string(),
        };
        self.mark_down(addr, &devices, &failure);
        Vec::new()
    }

    /// Pushes one request to every device in `online` (device → gateway address) but `except`, one call per
    /// gateway, all at once; answers the devices that took it.
    pub async fn fan_out(
        &self,
        online: &HashMap<(UserId, DeviceId), String>,
        except: Option<(&UserId, &DeviceId)>,
        request: v1::PushRequest,
    ) -> Vec<v1::DeviceRef> {
        let mut by_gateway: HashMap<&str, Vec<v1::DeviceRef>> = HashMap::new();
        for ((u, d), addr) in online {
            if except.is_some_and(|(eu, ed)| eu == u && ed == d) {
                continue;
            }
            by_gateway
                .entry(addr.as_str())
                .or_default()
                .push(v1::DeviceRef { user_id: u.to_string(), device_id: d.to_string() });
        }
        let pushes = by_gateway
            .into_iter()
            .map(|(addr, devices)| self.push(addr, v1::PushRequest { devices, ..request.clone() }));
        futures::future::join_all(pushes).await.into_iter().flatten().collect()
    }

    /// Asks the gateway at `addr` to close a device's connection `conn_id` (4000: the device connected
    /// again elsewhere), within the deadline; answers whether that gateway held it. Tried even while the
    /// gateway is marked down for pushes (the call is cheap, and its caller does not wait on it); a failure
    /// does not mark it down: only pushes judge that.
    pub async fn disconnect(&self, addr: &str, device: v1::DeviceRef, conn_id: u64) -> Result<bool, tonic::Status> {
        let mut client = {
            let mut gateways = self.inner.lock();
            let Some(gw) = self.inner.gateway(&mut gateways, addr) else {
                return Err(tonic::Status::invalid_argument(format!("no client for the address {addr}")));
            };
            gw.client.clone()
        };
        let mut req = tonic::Request::new(v1::DisconnectRequest { device: Some(device), conn_id });
        req.set_timeout(self.inner.deadline);
        match tokio::time::timeout(self.inner.deadline, client.disconnect(req)).await {
            Ok(answer) => answer.map(|r| r.into_inner().closed),
            Err(_) => Err(tonic::Status::deadline_exceeded("disconnect deadline passed")),
        }
    }

    /// Whether pushes to `addr` are currently refused without trying.
    pub fn is_down(&self, addr: &str) -> bool {
        self.inner.lock().get(addr).is_some_and(|g| g.down.is_some())
    }

    fn mark_down(&self, addr: &str, devices: &[v1::DeviceRef], failure: &str) {
        let mut gateways = self.inner.lock();
        let Some(gw) = gateways.get_mut(addr) else { return };
        match gw.down.as_mut() {
            Some(missed) => remember(missed, devices),
            None => {
                tracing::warn!(
                    gateway = addr,
                    failure,
                    "gateway unreachable: its devices get the inbox until it answers"
                );
                let mut missed = HashSet::new();
                remember(&mut missed, devices);
                gw.down = Some(missed);
                tokio::spawn(self.clone().probe(addr.to_owned(), gw.client.clone()));
            }
        }
    }

    /// Until the gateway answers: pause, then ask it to resync the devices that missed a message. On an
    /// answer, devices added meanwhile are resynced too before the gateway is marked up.
    async fn probe(self, addr: String, mut client: GatewayServiceClient<Channel>) {
        let mut pause = FIRST_PROBE_PAUSE;
        let mut resynced: HashSet<v1::DeviceRef> = HashSet::new();
        loop {
            tokio::time::sleep(pause).await;
            let devices: Vec<v1::DeviceRef> = match self.inner.lock().get(&addr).and_then(|g| g.down.as_ref()) {
                Some(missed) => missed.iter().cloned().collect(),
                None => return,
            };
            let mut req = tonic::Request::new(v1::ResyncRequest { devices: devices.clone() });
            req.set_timeout(self.inner.deadline);
            match tokio::time::timeout(self.inner.deadline, client.resync(req)).await {
                Ok(Ok(r)) => {
                    resynced.extend(devices.iter().cloned());
                    let up = {
                        let mut gateways = self.inner.lock();
                        let Some(gw) = gateways.get_mut(&addr) else { return };
                        let missed = gw.down.get_or_insert_default();
                        for d in &devices {
                            missed.remove(d);
                        }
                        let up = missed.is_empty();
                        if up {
                            gw.down = None;
                        }
                        up
                    };
                    if up {
                        tracing::info!(gateway = %addr, held = r.into_inner().held, "gateway answers again");
                        // An inbox row is written just after its push was refused, so the last rows may have
                        // landed after the resync read the inbox: once more, a little later.
                        tokio::time::sleep(self.inner.deadline.max(FIRST_PROBE_PAUSE)).await;
                        let devices = resynced.into_iter().collect();
                        let mut req = tonic::Request::new(v1::ResyncRequest { devices });
                        req.set_timeout(self.inner.deadline);
                        let _ = tokio::time::timeout(self.inner.deadline, client.resync(req)).await;
                        return;
                    }
                    // Messages missed while this probe ran: resync those after their inbox rows are written.
                    pause = self.inner.deadline;
                }
                Ok(Err(status)) if !means_unreachable(status.code()) => {
                    // It answers, but refuses (an older gateway): up again; its devices rely on resume.
                    tracing::warn!(gateway = %addr, %status, "resync refused; marking the gateway up");
                    if let Some(gw) = self.inner.lock().get_mut(&addr) {
                        gw.down = None;
                    }
                    return;
                }
                _ => pause = (pause * 2).min(MAX_PROBE_PAUSE),
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Gateway>> {
        self.gateways.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gateway<'a>(&self, gateways: &'a mut HashMap<String, Gateway>, addr: &str) -> Option<&'a mut Gateway> {
        if !gateways.contains_key(addr) {
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
                .ok()?
                .connect_timeout(self.deadline)
                .timeout(self.deadline)
                .tcp_nodelay(true);
            if let Some(tls) = &self.tls {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .inspect_err(|e| tracing::error!(gateway = %addr, error = %e, "no TLS client for the gateway"))
                    .ok()?;
            }
            let client = GatewayServiceClient::new(endpoint.connect_lazy());
            gateways.insert(addr.to_owned(), Gateway { client, pushes: Arc::default(), down: None });
        }
        gateways.get_mut(addr)
    }
}

/// One push on the gateway's `PushMessages` call, or as a `Push` call of its own when the gateway does not
/// know the stream; answered within `deadline`.
async fn push_on(
    mut client: GatewayServiceClient<Channel>,
    pushes: &CallStream<v1::PushMessagesRequest, v1::PushResponse>,
    request: v1::PushRequest,
    deadline: Duration,
) -> Result<v1::PushResponse, tonic::Status> {
    if pushes.refused() {
        let mut req = tonic::Request::new(request);
        req.set_timeout(deadline);
        return match tokio::time::timeout(deadline, client.push(req)).await {
            Ok(answer) => answer.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded("push deadline passed")),
        };
    }
    let start = move |requests| async move {
        let answers = client.push_messages(requests).await?.into_inner();
        Ok(answers.map(|a| a.map(outcome)))
    };
    pushes.call(start, |call_id| v1::PushMessagesRequest { call_id, push: Some(request) }, deadline).await
}

/// An answer of the call, as the answer `Push` would have given.
fn outcome(a: v1::PushMessagesResponse) -> (u64, Result<v1::PushResponse, tonic::Status>) {
    use v1::push_messages_response::Result as Outcome;
    let answer = match a.result {
        Some(Outcome::Pushed(pushed)) => Ok(pushed),
        Some(Outcome::Failed(f)) => Err(f.into()),
        None => Err(tonic::Status::internal("the gateway answered a push without its result")),
    };
    (a.call_id, answer)
}

fn remember(missed: &mut HashSet<v1::DeviceRef>, devices: &[v1::DeviceRef]) {
    for d in devices {
        if missed.len() >= MAX_MISSED {
            tracing::warn!("too many devices to resync; the rest rely on the client's gap rule");
            return;
        }
        missed.insert(d.clone());
    }
}

/// Statuses that say the gateway could not be reached (rather than that it refused the request).
fn means_unreachable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    use proto::v1::gateway_service_server::{GatewayService, GatewayServiceServer};
    use tokio::net::TcpListener;

    use super::*;

    const DEADLINE: Duration = Duration::from_millis(300);

    type Answers = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<v1::PushMessagesResponse, tonic::Status>> + Send + 'static>,
    >;

    /// A gateway that takes every device, counts the pushes it got on its `PushMessages` call, and counts
    /// the devices it is asked to resync.
    #[derive(Clone, Default)]
    struct Answering {
        streamed: Arc<AtomicU32>,
        resynced: Arc<AtomicU32>,
    }

    #[tonic::async_trait]
    impl GatewayService for Answering {
        async fn push(
            &self,
            r: tonic::Request<v1::PushRequest>,
        ) -> Result<tonic::Response<v1::PushResponse>, tonic::Status> {
            Ok(tonic::Response::new(v1::PushResponse { delivered: r.into_inner().devices }))
        }

        type PushMessagesStream = Answers;

        async fn push_messages(
            &self,
            r: tonic::Request<tonic::Streaming<v1::PushMessagesRequest>>,
        ) -> Result<tonic::Response<Answers>, tonic::Status> {
            use v1::push_messages_response::Result as Outcome;
            let streamed = self.streamed.clone();
            let answers = r.into_inner().map(move |r| {
                r.map(|r| {
                    streamed.fetch_add(1, Ordering::SeqCst);
                    let delivered = r.push.map(|p| p.devices).unwrap_or_default();
                    v1::PushMessagesResponse {
                        call_id: r.call_id,
                        result: Some(Outcome::Pushed(v1::PushResponse { delivered })),
                    }
                })
            });
            Ok(tonic::Response::new(Box::pin(answers)))
        }

        async fn resync(
            &self,
            r: tonic::Request<v1::ResyncRequest>,
        ) -> Result<tonic::Response<v1::ResyncResponse>, tonic::Status> {
            let n = r.into_inner().devices.len() as u32;
            self.resynced.fetch_add(n, Ordering::SeqCst);
            Ok(tonic::Response::new(v1::ResyncResponse { held: n }))
        }

        /// Holds connection 7 of u/a only.
        async fn disconnect(
            &self,
            r: tonic::Request<v1::DisconnectRequest>,
        ) -> Result<tonic::Response<v1::DisconnectResponse>, tonic::Status> {
            let r = r.into_inner();
            let device = r.device.ok_or_else(|| tonic::Status::invalid_argument("no device"))?;
            let closed = (device.user_id.as_str(), device.device_id.as_str(), r.conn_id) == ("u", "a", 7);
            Ok(tonic::Response::new(v1::DisconnectResponse { closed }))
        }
    }

    fn message_to(device: &str) -> v1::PushRequest {
        v1::PushRequest {
            message: Some(v1::Message::default()),
            devices: vec![v1::DeviceRef { user_id: "u".into(), device_id: device.into() }],
            receipt: None,
            typing: None,
        }
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[tokio::test]
    async fn a_hung_gateway_costs_one_deadline_then_resyncs_what_it_missed() -> TestResult {
        // Hung: the kernel accepts connections, nobody ever answers.
        let hung = TcpListener::bind("127.0.0.1:0").await?;
        let addr = hung.local_addr()?.to_string();
        let pushers = Pushers::new(DEADLINE);

        let started = Instant::now();
        assert!(pushers.push(&addr, message_to("a")).await.is_empty());
        assert!(started.elapsed() >= DEADLINE, "the first push waits for its deadline");
        assert!(pushers.is_down(&addr));
        let started = Instant::now();
        for device in ["b", "c"] {
            assert!(pushers.push(&addr, message_to(device)).await.is_empty());
        }
        assert!(started.elapsed() < DEADLINE / 2, "later pushes are refused at once: {:?}", started.elapsed());

        // The gateway comes back at the same address: the probe finds it and asks for a, b and c to resync.
        let port = hung.local_addr()?.port();
        drop(hung);
        let gateway = Answering::default();
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GatewayServiceServer::new(gateway.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let until = Instant::now() + Duration::from_secs(20);
        while pushers.is_down(&addr) {
            assert!(Instant::now() < until, "the gateway was never marked up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(gateway.resynced.load(Ordering::SeqCst), 3);
        assert_eq!(pushers.push(&addr, message_to("d")).await.len(), 1);
        // And once more a little later, for inbox rows written just after the first resync read the inbox.
        while gateway.resynced.load(Ordering::SeqCst) < 6 {
            assert!(Instant::now() < until, "no trailing resync");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.abort();
        Ok(())
    }

    /// Also a gateway that does not know `PushMessages` (an older one): the push that finds it out is
    /// refused, and the next ones go as `Push` calls.
    #[tokio::test]
    async fn a_refusal_is_not_an_outage() -> TestResult {
        #[derive(Clone, Default)]
        struct Refusing {
            pushes: Arc<AtomicU32>,
        }
        #[tonic::async_trait]
        impl GatewayService for Refusing {
            async fn push(
                &self,
                _: tonic::Request<v1::PushRequest>,
            ) -> Result<tonic::Response<v1::PushResponse>, tonic::Status> {
                self.pushes.fetch_add(1, Ordering::SeqCst);
                Err(tonic::Status::invalid_argument("no"))
            }
            type PushMessagesStream = Answers;
            async fn push_messages(
                &self,
                _: tonic::Request<tonic::Streaming<v1::PushMessagesRequest>>,
            ) -> Result<tonic::Response<Answers>, tonic::Status> {
                Err(tonic::Status::unimplemented("unknown method PushMessages"))
            }
            async fn resync(
                &self,
                _: tonic::Request<v1::ResyncRequest>,
            ) -> Result<tonic::Response<v1::ResyncResponse>, tonic::Status> {
                Err(tonic::Status::invalid_argument("no"))
            }
            async fn disconnect(
                &self,
                _: tonic::Request<v1::DisconnectRequest>,
            ) -> Result<tonic::Response<v1::DisconnectResponse>, tonic::Status> {
                Err(tonic::Status::invalid_argument("no"))
            }
        }
        let refusing = Refusing::default();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GatewayServiceServer::new(refusing.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let pushers = Pushers::new(DEADLINE);
        for _ in 0..3 {
            assert!(pushers.push(&addr, message_to("a")).await.is_empty());
        }
        assert!(!pushers.is_down(&addr), "a gateway that answers is not down, even when it refuses");
        assert_eq!(refusing.pushes.load(Ordering::SeqCst), 2, "after the stream was refused, a call per push");
        server.abort();
        Ok(())
    }

    #[tokio::test]
    async fn fan_out_skips_the_acting_device_and_groups_by_gateway() -> TestResult {
        let gateway = Answering::default();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GatewayServiceServer::new(gateway.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let (alice, bob) = (UserId::parse("alice")?, UserId::parse("bob")?);
        let (phone, laptop) = (DeviceId::parse("phone")?, DeviceId::parse("laptop")?);
        let online: HashMap<(UserId, DeviceId), String> = [
            ((alice.clone(), phone.clone()), addr.clone()),
            ((alice.clone(), laptop.clone()), addr.clone()),
            ((bob.clone(), phone.clone()), addr.clone()),
        ]
        .into();
        let mut took: Vec<(String, String)> = Pushers::new(DEADLINE)
            .fan_out(&online, Some((&alice, &phone)), message_to("ignored"))
            .await
            .into_iter()
            .map(|d| (d.user_id, d.device_id))
            .collect();
        took.sort();
        assert_eq!(took, vec![("alice".into(), "laptop".into()), ("bob".into(), "phone".into())]);
        assert_eq!(gateway.streamed.load(Ordering::SeqCst), 1, "one push, on the gateway's PushMessages call");
        server.abort();
        Ok(())
    }

    #[tokio::test]
    async fn disconnect_names_the_connection_and_fails_on_a_hung_gateway() -> TestResult {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GatewayServiceServer::new(Answering::default()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let pushers = Pushers::new(DEADLINE);
        let device = |d: &str| v1::DeviceRef { user_id: "u".into(), device_id: d.into() };
        assert!(pushers.disconnect(&addr, device("a"), 7).await?, "the held connection is closed");
        assert!(!pushers.disconnect(&addr, device("a"), 8).await?, "another connection id is not");
        assert!(!pushers.disconnect(&addr, device("b"), 7).await?, "nor another device");
        server.abort();

        // A hung gateway: the call fails (the outer bound only keeps a missing deadline from hanging the
        // test), and pushes to it are not refused because of it.
        let hung = TcpListener::bind("127.0.0.1:0").await?;
        let addr = hung.local_addr()?.to_string();
        let answer = tokio::time::timeout(Duration::from_secs(30), pushers.disconnect(&addr, device("a"), 7)).await;
        assert!(matches!(answer, Ok(Err(_))), "{answer:?}");
        assert!(!pushers.is_down(&addr), "a failed disconnect does not mark the gateway down");
        Ok(())
    }
}
