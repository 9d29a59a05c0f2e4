//! A WebSocket client of the protocol, as a chat app would write it from docs/protocol.md.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::platform::JWT_SECRET;

/// How long a test waits for one expected frame before failing.
pub const FRAME_WAIT: Duration = Duration::from_secs(20);

/// A signed token for `user`, valid for an hour, signed with `secret`.
pub fn token(user: &str, secret: &str) -> String {
    let exp = chat_model::now_ms() / 1000 + 3600;
    encode(&Header::default(), &json!({ "sub": user, "exp": exp }), &EncodingKey::from_secret(secret.as_bytes()))
        .unwrap_or_default()
}

pub struct WsClient {
    pub user: String,
    pub device: String,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read while waiting for another (a `message` that came before the `sent` awaited).
    pending: VecDeque<Value>,
}

/// The outcome of an upgrade attempt that the gateway refused.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl WsClient {
    /// Connects to a gateway as `user` on `device` with a valid token, and reads the welcome frame.
    pub async fn connect(gateway: SocketAddr, user: &str, device: &str) -> anyhow::Result<WsClient> {
        let mut c = Self::connect_with(gateway, user, device, Some(&token(user, JWT_SECRET)))
            .await
            .map_err(|r| anyhow::anyhow!("upgrade refused: {r:?}"))?;
        let welcome = c.recv().await?;
        if welcome["type"] != "welcome" || welcome["user_id"] != user || welcome["device_id"] != device {
            bail!("expected a welcome frame, got {welcome}");
        }
        Ok(c)
    }

    /// Connects with the given token (or none); a refusal before the upgrade comes back as [`Refused`].
    pub async fn connect_with(
        gateway: SocketAddr,
        user: &str,
        device: &str,
        token: Option<&str>,
    ) -> Result<WsClient, Refused> {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        Self::connect_request(gateway, user, &format!("device_id={device}"), device, &headers).await
    }

    /// Connects with the given query string and extra request headers (name, value), as any client could.
    pub async fn connect_request(
        gateway: SocketAddr,
        user: &str,
        query: &str,
        device: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, Refused> {
        let url = format!("ws://{gateway}/v1/ws?{query}");
        let mut request = url.into_client_request().map_err(|e| Refused { status: 0, body: e.to_string() })?;
        for (name, value) in headers {
            let (Ok(name), Ok(value)) =
                (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_str(value))
            else {
                return Err(Refused { status: 0, body: format!("bad header {name}") });
            };
            request.headers_mut().append(name, value);
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => {
                Ok(WsClient { user: user.to_owned(), device: device.to_owned(), ws, pending: VecDeque::new() })
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(Refused {
                status: resp.status().as_u16(),
                body: String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
            }),
            Err(e) => Err(Refused { status: 0, body: e.to_string() }),
        }
    }

    pub async fn send_json(&mut self, frame: Value) -> anyhow::Result<()> {
        self.ws.send(Message::text(frame.to_string())).await.context("sending a frame")
    }

    pub async fn send_raw(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::text(text.to_owned())).await.context("sending a frame")
    }

    /// The next protocol frame (text), within [`FRAME_WAIT`].
    pub async fn recv(&mut self) -> anyhow::Result<Value> {
        if let Some(f) = self.pending.pop_front() {
            return Ok(f);
        }
        self.recv_wire().await
    }

    async fn recv_wire(&mut self) -> anyhow::Result<Value> {
        loop {
            let next = tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .with_context(|| format!("{}/{}: no frame within {FRAME_WAIT:?}", self.user, self.device))?;
            match next {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(c))) => bail!("{}/{}: closed by the gateway: {c:?}", self.user, self.device),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("{}/{}: {e}", self.user, self.device),
                None => bail!("{}/{}: connection ended", self.user, self.device),
            }
        }
    }

    /// The next frame, which must have type `kind`.
    pub async fn expect(&mut self, kind: &str) -> anyhow::Result<Value> {
        let f = self.recv().await?;
        if f["type"] != kind {
            bail!("{}/{}: expected a {kind} frame, got {f}", self.user, self.device);
        }
        Ok(f)
    }

    /// Sends a message and returns the `sent` acknowledgement.
    pub async fn send_message(&mut self, conversation: &str, client_id: &str, body: &str) -> anyhow::Result<Value> {
        self.send_json(json!({"v": 1, "type": "send", "id": client_id, "conversation_id": conversation, "body": body}))
            .await?;
        // Messages from others may arrive before the acknowledgement: keep them for later reads.
        loop {
            let f = self.recv_wire().await?;
            if f["type"] == "sent" && f["id"] == client_id {
                return Ok(f);
            }
            if f["type"] == "message" {
                self.pending.push_back(f);
                continue;
            }
            bail!("{}/{}: expected the acknowledgement of {client_id}, got {f}", self.user, self.device);
        }
    }

    /// Reads the inbox sent at connect: `message` frames until `synced`.
    pub async fn sync(&mut self) -> anyhow::Result<Vec<Value>> {
        let mut messages = Vec::new();
        loop {
            let f = self.recv().await?;
            match f["type"].as_str() {
                Some("message") => messages.push(f),
                Some("synced") => return Ok(messages),
                _ => bail!("{}/{}: unexpected frame while syncing: {f}", self.user, self.device),
            }
        }
    }

    /// Sends nothing for `period`, only reading (the library answers the gateway's pings); answers the
    /// text frames read meanwhile. Fails if the connection is closed or ends.
    pub async fn stay_silent(&mut self, period: Duration) -> anyhow::Result<Vec<Value>> {
        let end = tokio::time::Instant::now() + period;
        let mut frames = Vec::new();
        while let Ok(next) = tokio::time::timeout_at(end, self.ws.next()).await {
            match next {
                Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(c))) => bail!("{}/{}: closed by the gateway: {c:?}", self.user, self.device),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("{}/{}: {e}", self.user, self.device),
                None => bail!("{}/{}: connection ended", self.user, self.device),
            }
        }
        Ok(frames)
    }

    /// Reads (and drops) frames until the gateway's close frame, within `within`, and answers its code and
    /// reason. Fails if the connection ends without a close frame, or nothing closes it in time.
    pub async fn recv_close(&mut self, within: Duration) -> anyhow::Result<(u16, String)> {
        let end = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(end, self.ws.next())
                .await
                .with_context(|| format!("{}/{}: not closed within {within:?}", self.user, self.device))?;
            match next {
                Some(Ok(Message::Close(Some(frame)))) => return Ok((u16::from(frame.code), frame.reason.to_string())),
                Some(Ok(Message::Close(None))) => bail!("{}/{}: closed without a code", self.user, self.device),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("{}/{}: connection failed before a close frame: {e}", self.user, self.device),
                None => bail!("{}/{}: connection ended without a close frame", self.user, self.device),
            }
        }
    }

    pub async fn close(mut self) -> anyhow::Result<()> {
        self.ws.close(None).await?;
        // Read until the gateway answers the close.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await {}
        Ok(())
    }
}
