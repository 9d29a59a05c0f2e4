//! A WebSocket client below the protocol library: the upgrade by hand, then frames built byte by byte, so
//! that tests can send what no well-behaved library would (bad opcodes, reserved bits, unmasked frames,
//! absurd lengths, broken UTF-8, bad close codes) and read how the gateway closes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::token;
use crate::platform::JWT_SECRET;

pub struct RawWs {
    stream: TcpStream,
    /// Bytes read past the upgrade's headers.
    buffered: Vec<u8>,
    /// Ping frames read so far by [`RawWs::close_code`] (never answered).
    pub pings: usize,
}

/// A frame as the client sends it (masked unless `mask` is false).
pub fn frame(fin: bool, rsv: u8, opcode: u8, mask: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | ((rsv & 7) << 4) | (opcode & 0x0f)];
    let mask_bit = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if mask {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A text frame, final and masked.
pub fn text(payload: &[u8]) -> Vec<u8> {
    frame(true, 0, 0x1, true, payload)
}

impl RawWs {
    /// Upgrades a TCP connection to `gateway` as `user` on `device`, by hand.
    pub async fn connect(gateway: SocketAddr, user: &str, device: &str) -> anyhow::Result<RawWs> {
        let mut stream = TcpStream::connect(gateway).await?;
        let request = format!(
            "GET /v1/ws?device_id={device} HTTP/1.1\r\nHost: {gateway}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {}\r\n\r\n",
            token(user, JWT_SECRET)
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buffered = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await??;
            if n == 0 {
                bail!("closed during the upgrade");
            }
            buffered.extend_from_slice(&chunk[..n]);
            if let Some(i) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buffered[..end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            bail!("upgrade refused: {}", head.lines().next().unwrap_or_default());
        }
        buffered.drain(..end);
        Ok(RawWs { stream, buffered, pings: 0 })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next server frame (opcode, payload) within `within`; `None` when the stream ends first.
    pub async fn next_frame(&mut self, within: Duration) -> anyhow::Result<Option<(u8, Vec<u8>)>> {
        tokio::time::timeout(within, async {
            loop {
                if let Some((opcode, payload, used)) = parse(&self.buffered) {
                    self.buffered.drain(..used);
                    return Some((opcode, payload));
                }
                let mut chunk = [0u8; 8192];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buffered.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .context("no frame from the gateway in time")
    }

    /// Reads server frames until a close frame (answers its code; 1005 when it has none) or the end of the
    /// stream (None), within `within`; counts the pings skipped on the way in [`Self::pings`].
    pub async fn close_code(&mut self, within: Duration) -> anyhow::Result<Option<u16>> {
        let end = tokio::time::Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.next_frame(left).await.context("the gateway neither closed nor ended the connection")?;
            match frame {
                None => return Ok(None),
                Some((0x8, payload)) => {
                    return Ok(Some(payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])).unwrap_or(1005)));
                }
                Some((0x9, _)) => self.pings += 1,
                Some(_) => {}
            }
        }
    }
}

/// One unmasked server frame at the start of `b`: (opcode, payload, bytes used).
fn parse(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (first, second) = (*b.first()?, *b.get(1)?);
    let (len, at): (usize, usize) = match second & 0x7f {
        126 => (usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?])), 4),
        127 => (usize::try_from(u64::from_be_bytes(b.get(2..10)?.try_into().ok()?)).ok()?, 10),
        n => (usize::from(n), 2),
    };
    let payload = b.get(at..at.checked_add(len)?)?.to_vec();
    Some((first & 0x0f, payload, at + len))
}
