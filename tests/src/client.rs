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
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::platform::JWT_SECRET;
use crate::prove::Broken;

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
    /// The gateway's close frame (code, reason), once a read met it: [`WsClient::recv_close`] answers it.
    closed: Option<(u16, String)>,
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
            Ok((ws, _)) => Ok(WsClient {
                user: user.to_owned(),
                device: device.to_owned(),
                ws,
                pending: VecDeque::new(),
                closed: None,
            }),
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

    /// Sends a binary message (not part of the protocol: the gateway answers `bad_frame`).
    pub async fn send_binary(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.ws.send(Message::binary(bytes.to_vec())).await.context("sending a binary frame")
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
                Some(Ok(Message::Close(c))) => {
                    self.remember_close(c.as_ref());
                    bail!("{}/{}: closed by the gateway: {c:?}", self.user, self.device)
                }
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
                Some(Ok(Message::Close(c))) => {
                    self.remember_close(c.as_ref());
                    bail!("{}/{}: closed by the gateway: {c:?}", self.user, self.device)
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("{}/{}: {e}", self.user, self.device),
                None => bail!("{}/{}: connection ended", self.user, self.device),
            }
        }
        Ok(frames)
    }

    /// Reads (and drops) frames until the gateway's close frame, within `within`, and answers its code and
    /// reason (at once if an earlier read already met it). The close frame is a promise wherever a test
    /// waits for one (docs/protocol.md's close codes), so its absence fails as [`Broken`]: the connection
    /// ending or failing without one, or nothing closing it in time. A close frame without a code answers
    /// 1005.
    pub async fn recv_close(&mut self, within: Duration) -> anyhow::Result<(u16, String)> {
        if let Some(closed) = self.closed.clone() {
            return Ok(closed);
        }
        self.pending.clear();
        let who = format!("{}/{}", self.user, self.device);
        let end = tokio::time::Instant::now() + within;
        loop {
            let Ok(next) = tokio::time::timeout_at(end, self.ws.next()).await else {
                return Err(Broken(format!("{who}: not closed within {within:?}")).into());
            };
            match next {
                Some(Ok(Message::Close(frame))) => {
                    self.remember_close(frame.as_ref());
                    return Ok(self.closed.clone().unwrap_or_default());
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    return Err(Broken(format!("{who}: connection failed before a close frame: {e}")).into());
                }
                None => return Err(Broken(format!("{who}: connection ended without a close frame")).into()),
            }
        }
    }

    /// Keeps the close frame's code and reason; a close frame without a code counts as 1005 (RFC 6455's
    /// "no status received"), which no documented close is.
    fn remember_close(&mut self, frame: Option<&CloseFrame>) {
        self.closed = Some(frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string())));
    }

    pub async fn close(mut self) -> anyhow::Result<()> {
        self.ws.close(None).await?;
        // Read until the gateway answers the close.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await {}
        Ok(())
    }
}
