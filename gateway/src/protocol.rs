//! The client protocol, version 1: JSON text frames, each with `v` and `type`. `docs/protocol.md` is its
//! specification; this module is its only implementation in the gateway. Serde types stop here: the rest of
//! the gateway sees [`ClientFrame`] and builds [`ServerFrame`]s.

use chat_model::{Body, ClientMsgId, ConversationId, Seq};
use serde::{Deserialize, Serialize};

pub const VERSION: u32 = 1;

/// Close codes the gateway uses (the 4000s are ours; see docs/protocol.md).
pub mod close {
    /// The gateway is shutting down: reconnect (to any gateway) and resume.
    pub const GOING_AWAY: u16 = 1001;
    /// A WebSocket protocol violation.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message or frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The same device connected again (here or on another gateway): this older connection is closed.
    pub const REPLACED: u16 = 4000;
    /// The connection's token expired.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// Nothing arrived from the client (not even the answer to our pings) within the idle timeout.
    pub const IDLE: u16 = 4002;
    /// The client did not read fast enough and its send queue filled: reconnect and resume by cursor.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The client went on sending far past its rate limit after being told (`rate_limited`).
    pub const RATE_LIMITED: u16 = 4029;
}

/// Stable error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not an object.
    BadFrame,
    /// `v` missing or not 1.
    UnsupportedVersion,
    /// `type` missing or unknown.
    UnknownType,
    /// A field is missing or malformed; `message` names it.
    InvalidField,
    ConversationNotFound,
    NotMember,
    /// The request breaks a rule of the conversation.
    FailedPrecondition,
    /// History no longer holds the numbers asked for; `first_seq` is the first it holds.
    BeyondRetention,
    /// Temporary: retry (a send retried with the same id is never stored twice).
    Unavailable,
    /// Too many frames from this connection or user: the frame was not handled; retry after the time given.
    RateLimited,
    Internal,
}

impl ErrorCode {
    pub fn retryable(self) -> bool {
        matches!(self, ErrorCode::Unavailable | ErrorCode::RateLimited)
    }
}

impl ClientFrame {
    /// The request id the client gave, if the frame has one.
    pub fn request_id(&self) -> Option<String> {
        match self {
            ClientFrame::Send { id, .. } => Some(id.to_string()),
            ClientFrame::History { id, .. } | ClientFrame::Conversation { id, .. } => Some(id.clone()),
            ClientFrame::Ping { id } => id.clone(),
            ClientFrame::Delivered { .. } | ClientFrame::Read { .. } | ClientFrame::Typing { .. } => None,
        }
    }
}

/// A frame from the client, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Send {
        id: ClientMsgId,
        conversation_id: ConversationId,
        body: Body,
    },
    /// Everything up to `seq` in the conversation reached the client: clears its inbox up to there.
    Delivered {
        conversation_id: ConversationId,
        seq: Seq,
    },
    History {
        id: String,
        conversation_id: ConversationId,
        after_seq: u64,
        limit: u32,
    },
    /// Everything up to `seq` was read by the user: moves the member's read position, tells the others.
    Read {
        conversation_id: ConversationId,
        seq: Seq,
    },
    /// The conversation's members, last number and read positions.
    Conversation {
        id: String,
        conversation_id: ConversationId,
    },
    /// The user started (`typing: true`) or stopped typing; routed live to the other members, never stored.
    Typing {
        conversation_id: ConversationId,
        typing: bool,
    },
    Ping {
        id: Option<String>,
    },
}

/// Why a frame was refused, with the request id when it had one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Deserialize)]
struct RawFrame {
    v: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<serde_json::Value>,
    conversation_id: Option<String>,
    body: Option<String>,
    seq: Option<u64>,
    after_seq: Option<u64>,
    limit: Option<u32>,
    typing: Option<bool>,
}

/// Longest request id (`id` of history and ping), in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// Parses and checks one text frame.
pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    let raw: RawFrame = serde_json::from_str(text).map_err(|e| FrameError {
        id: None,
        code: ErrorCode::BadFrame,
        message: format!("not a JSON object of the protocol: {e}"),
    })?;
    let id = match raw.id {
        None => None,
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= MAX_REQUEST_ID_BYTES => Some(s),
        Some(_) => {
            return Err(FrameError {
                id: None,
                code: ErrorCode::InvalidField,
                message: format!("id must be a string of 1 to {MAX_REQUEST_ID_BYTES} bytes"),
            });
        }
    };
    let fail = |code, message: String| FrameError { id: id.clone(), code, message };
    match raw.v {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(VERSION)) => {}
        _ => {
            return Err(fail(ErrorCode::UnsupportedVersion, format!("v must be {VERSION}")));
        }
    }
    let conversation = || -> Result<ConversationId, FrameError> {
        let s = raw
            .conversation_id
            .as_deref()
            .ok_or_else(|| fail(ErrorCode::InvalidField, "conversation_id is missing".into()))?;
        ConversationId::parse(s).map_err(|e| fail(ErrorCode::InvalidField, e.to_string()))
    };
    match raw.kind.as_deref() {
        Some("send") => {
            let id_text = id.as_deref().ok_or_else(|| fail(ErrorCode::InvalidField, "id is missing".into()))?;
            let client_id =
                ClientMsgId::parse(id_text).map_err(|e| fail(ErrorCode::InvalidField, format!("id: {e}")))?;
            let conversation_id = conversation()?;
            let body = raw.body.ok_or_else(|| fail(ErrorCode::InvalidField, "body is missing".into()))?;
            let body = Body::parse(body).map_err(|e| fail(ErrorCode::InvalidField, e.to_string()))?;
            Ok(ClientFrame::Send { id: client_id, conversation_id, body })
        }
        Some("delivered") => {
            let conversation_id = conversation()?;
            let seq = raw
                .seq
                .and_then(Seq::new)
                .ok_or_else(|| fail(ErrorCode::InvalidField, "seq must be at least 1".into()))?;
            Ok(ClientFrame::Delivered { conversation_id, seq })
        }
        Some("history") => {
            let req = id.clone().ok_or_else(|| fail(ErrorCode::InvalidField, "id is missing".into()))?;
            let conversation_id = conversation()?;
            let limit = raw.limit.unwrap_or(100);
            if !(1..=500).contains(&limit) {
                return Err(fail(ErrorCode::InvalidField, "limit must be between 1 and 500".into()));
            }
            Ok(ClientFrame::History { id: req, conversation_id, after_seq: raw.after_seq.unwrap_or(0), limit })
        }
        Some("read") => {
            let conversation_id = conversation()?;
            let seq = raw
                .seq
                .and_then(Seq::new)
                .ok_or_else(|| fail(ErrorCode::InvalidField, "seq must be at least 1".into()))?;
            Ok(ClientFrame::Read { conversation_id, seq })
        }
        Some("conversation") => {
            let req = id.clone().ok_or_else(|| fail(ErrorCode::InvalidField, "id is missing".into()))?;
            Ok(ClientFrame::Conversation { id: req, conversation_id: conversation()? })
        }
        Some("typing") => {
            Ok(ClientFrame::Typing { conversation_id: conversation()?, typing: raw.typing.unwrap_or(true) })
        }
        Some("ping") => Ok(ClientFrame::Ping { id }),
        Some(other) => Err(fail(ErrorCode::UnknownType, format!("unknown type {:?}", truncate(other, 32)))),
        None => Err(fail(ErrorCode::UnknownType, "type is missing".into())),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A message as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WireMessage {
    pub conversation_id: String,
    pub message_id: String,
    pub seq: u64,
    pub sender_id: String,
    pub body: String,
    pub sent_at_ms: i64,
    /// Sent from the device's inbox (it arrived while the device was away, or while a push to it failed),
    /// not live; absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inbox: bool,
}

/// A member's read position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadPosition {
    pub user_id: String,
    pub read_seq: u64,
}

/// A frame to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        user_id: String,
        device_id: String,
        session_id: String,
    },
    Sent {
        id: String,
        conversation_id: String,
        message_id: String,
        seq: u64,
        sent_at_ms: i64,
        duplicate: bool,
    },
    Message(WireMessage),
    /// The inbox waiting at connect has been sent; live messages follow.
    Synced {
        count: usize,
    },
    History {
        id: String,
        conversation_id: String,
        messages: Vec<WireMessage>,
        last_seq: u64,
    },
    /// A member's device received (`delivered`) or read (`read`) everything up to `up_to_seq`.
    Receipt {
        conversation_id: String,
        user_id: String,
        device_id: String,
        kind: &'static str,
        up_to_seq: u64,
    },
    Typing {
        conversation_id: String,
        user_id: String,
        device_id: String,
        typing: bool,
    },
    Conversation {
        id: String,
        conversation_id: String,
        member_ids: Vec<String>,
        last_seq: u64,
        read_positions: Vec<ReadPosition>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        code: ErrorCode,
        message: String,
        retryable: bool,
        /// With `beyond_retention`: the first number history still holds.
        #[serde(skip_serializing_if = "Option::is_none")]
        first_seq: Option<u64>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
}

#[derive(Serialize)]
struct Versioned<'a> {
    v: u32,
    #[serde(flatten)]
    frame: &'a ServerFrame,
}

impl ServerFrame {
    pub fn error(e: FrameError) -> ServerFrame {
        ServerFrame::Error {
            id: e.id,
            code: e.code,
            retryable: e.code.retryable(),
            message: e.message,
            first_seq: None,
        }
    }

    /// The frame's JSON text, with `v`.
    pub fn to_text(&self) -> String {
        // Serialising these types cannot fail: every field is a string, number, bool or list of them.
        serde_json::to_string(&Versioned { v: VERSION, frame: self }).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONV: &str = "0192f0a4-3c1e-7a55-9d3e-1f6a2b3c4d5e";

    #[test]
    fn good_frames_parse() {
        let send = format!(r#"{{"v":1,"type":"send","id":"c-1","conversation_id":"{CONV}","body":"hi"}}"#);
        assert!(matches!(parse(&send), Ok(ClientFrame::Send { .. })));
        let delivered = format!(r#"{{"v":1,"type":"delivered","conversation_id":"{CONV}","seq":3}}"#);
        assert!(matches!(parse(&delivered), Ok(ClientFrame::Delivered { seq, .. }) if seq.get() == 3));
        assert_eq!(parse(r#"{"v":1,"type":"ping"}"#), Ok(ClientFrame::Ping { id: None }));
        let read = format!(r#"{{"v":1,"type":"read","conversation_id":"{CONV}","seq":9}}"#);
        assert!(matches!(parse(&read), Ok(ClientFrame::Read { seq, .. }) if seq.get() == 9));
        let conv = format!(r#"{{"v":1,"type":"conversation","id":"c","conversation_id":"{CONV}"}}"#);
        assert!(matches!(parse(&conv), Ok(ClientFrame::Conversation { .. })));
        let typing = format!(r#"{{"v":1,"type":"typing","conversation_id":"{CONV}","typing":false}}"#);
        assert!(matches!(parse(&typing), Ok(ClientFrame::Typing { typing: false, .. })));
    }

    #[test]
    fn bad_frames_get_their_codes() {
        let cases: Vec<(String, ErrorCode)> = vec![
            ("not json".into(), ErrorCode::BadFrame),
            ("[1,2]".into(), ErrorCode::BadFrame),
            (r#"{"type":"ping"}"#.into(), ErrorCode::UnsupportedVersion),
            (r#"{"v":2,"type":"ping"}"#.into(), ErrorCode::UnsupportedVersion),
            (r#"{"v":"1","type":"ping"}"#.into(), ErrorCode::UnsupportedVersion),
            (r#"{"v":1}"#.into(), ErrorCode::UnknownType),
            (r#"{"v":1,"type":"launch"}"#.into(), ErrorCode::UnknownType),
            (r#"{"v":1,"type":"send","conversation_id":"x","body":"b"}"#.into(), ErrorCode::InvalidField),
            (
                format!(r#"{{"v":1,"type":"send","id":"c 1","conversation_id":"{CONV}","body":"b"}}"#),
                ErrorCode::InvalidField,
            ),
            (
                format!(r#"{{"v":1,"type":"send","id":"c1","conversation_id":"{CONV}","body":""}}"#),
                ErrorCode::InvalidField,
            ),
            (format!(r#"{{"v":1,"type":"send","id":"c1","conversation_id":"{CONV}"}}"#), ErrorCode::InvalidField),
            (r#"{"v":1,"type":"send","id":"c1","conversation_id":"nope","body":"b"}"#.into(), ErrorCode::InvalidField),
            (format!(r#"{{"v":1,"type":"delivered","conversation_id":"{CONV}","seq":0}}"#), ErrorCode::InvalidField),
            (
                format!(r#"{{"v":1,"type":"history","id":"h","conversation_id":"{CONV}","limit":501}}"#),
                ErrorCode::InvalidField,
            ),
            (r#"{"v":1,"type":"ping","id":7}"#.into(), ErrorCode::InvalidField),
            (format!(r#"{{"v":1,"type":"read","conversation_id":"{CONV}"}}"#), ErrorCode::InvalidField),
            (format!(r#"{{"v":1,"type":"conversation","conversation_id":"{CONV}"}}"#), ErrorCode::InvalidField),
            (format!(r#"{{"v":1,"type":"read","conversation_id":"{CONV}"}}"#), ErrorCode::InvalidField),
            (format!(r#"{{"v":1,"type":"conversation","conversation_id":"{CONV}"}}"#), ErrorCode::InvalidField),
        ];
        for (text, code) in cases {
            assert_eq!(parse(&text).map_err(|e| e.code), Err(code), "{text}");
        }
    }

    #[test]
    fn errors_keep_the_request_id() {
        let e = parse(r#"{"v":1,"type":"send","id":"c-9","conversation_id":"bad","body":"b"}"#).err();
        assert_eq!(e.and_then(|e| e.id), Some("c-9".to_owned()));
    }

    #[test]
    fn server_frames_carry_version_and_type() {
        let text = ServerFrame::Pong { id: Some("p".into()) }.to_text();
        assert_eq!(text, r#"{"v":1,"type":"pong","id":"p"}"#);
        let err = ServerFrame::error(FrameError { id: None, code: ErrorCode::Unavailable, message: "later".into() })
            .to_text();
        assert_eq!(err, r#"{"v":1,"type":"error","code":"unavailable","message":"later","retryable":true}"#);
    }
}
