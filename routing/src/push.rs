//! Clients of the gateways' push service, one per address, made on first use.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use proto::v1::{self, gateway_service_client::GatewayServiceClient};
use tonic::transport::{Channel, Endpoint};

pub struct Pushers {
    deadline: Duration,
    clients: Mutex<HashMap<String, GatewayServiceClient<Channel>>>,
}

impl Pushers {
    /// Every push (connecting included) must finish within `deadline`, or counts as not delivered.
    pub fn new(deadline: Duration) -> Pushers {
        Pushers { deadline, clients: Mutex::new(HashMap::new()) }
    }

    /// Pushes to the gateway at `addr`; answers the devices it took. A failure or a missed deadline takes none.
    pub async fn push(&self, addr: &str, request: v1::PushRequest) -> Vec<v1::DeviceRef> {
        let Some(mut client) = self.client(addr) else {
            return Vec::new();
        };
        let mut req = tonic::Request::new(request);
        req.set_timeout(self.deadline);
        match tokio::time::timeout(self.deadline, client.push(req)).await {
            Ok(Ok(r)) => r.into_inner().delivered,
            Ok(Err(status)) => {
                tracing::debug!(gateway = addr, %status, "push failed");
                Vec::new()
            }
            Err(_) => {
                tracing::debug!(gateway = addr, "push deadline passed");
                Vec::new()
            }
        }
    }

    fn client(&self, addr: &str) -> Option<GatewayServiceClient<Channel>> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(addr) {
            return Some(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(self.deadline)
            .timeout(self.deadline)
            .tcp_nodelay(true);
        let client = GatewayServiceClient::new(endpoint.connect_lazy());
        clients.insert(addr.to_owned(), client.clone());
        Some(client)
    }
}
