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
            ClientFrame::History { id, .. }
            | ClientFrame::Conversation { id, .. }
            | ClientFrame::Conversations { id, .. } => Some(id.clone()),
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
    /// Messages with `after_seq < seq`, and `seq < before_seq` when given: the oldest `limit` of them, or
    /// with `before_seq` the newest `limit` (a screen opening at the latest message pages backwards).
    History {
        id: String,
        conversation_id: ConversationId,
        after_seq: u64,
        before_seq: Option<Seq>,
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
    /// A page of the user's conversations, most recently active first.
    Conversations {
        id: String,
        limit: u32,
        page_token: Option<String>,
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

/// A frame as JSON: every field is read as a value, so that a field of the wrong type or range is answered
/// `invalid_field` with the request's id rather than `bad_frame` without it.
#[derive(Deserialize)]
struct RawFrame {
    v: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    id: Option<serde_json::Value>,
    conversation_id: Option<serde_json::Value>,
    body: Option<serde_json::Value>,
    seq: Option<serde_json::Value>,
    after_seq: Option<serde_json::Value>,
    before_seq: Option<serde_json::Value>,
    limit: Option<serde_json::Value>,
    typing: Option<serde_json::Value>,
    page_token: Option<serde_json::Value>,
}

/// A field's value, checked for its type; `null` counts as absent.
fn text_field(value: Option<serde_json::Value>, name: &str) -> Result<Option<String>, String> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{name} must be a string")),
    }
}

fn uint_field(value: Option<&serde_json::Value>, name: &str) -> Result<Option<u64>, String> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(Some).ok_or_else(|| format!("{name} must be a whole number from 0 to 2^64-1"))
        }
        Some(_) => Err(format!("{name} must be a number")),
    }
}

fn bool_field(value: Option<&serde_json::Value>, name: &str) -> Result<Option<bool>, String> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("{name} must be true or false")),
    }
}

/// Longest request id (`id` of history and ping), in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 64;
/// A history page's `limit` when the client gives none, and the most it may ask for.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 500;
/// A conversation list page's `limit` when the client gives none, and the most it may ask for.
pub const DEFAULT_LIST_LIMIT: u32 = 20;
pub const MAX_LIST_LIMIT: u32 = 100;
/// Longest `page_token` a client may send back, in bytes (the gateway's are far shorter).
pub const MAX_PAGE_TOKEN_BYTES: usize = 256;

/// Parses and checks one text frame.
pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    let raw: RawFrame = serde_json::from_str(text).map_err(|e| FrameError {
        id: None,
        code: ErrorCode::BadFrame,
        message: format!("not a JSON object of the protocol: {e}"),
    })?;
    let id = match raw.id {
        None | Some(serde_json::Value::Null) => None,
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
    let invalid = |message: String| fail(ErrorCode::InvalidField, message);
    match raw.v {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(VERSION)) => {}
        _ => {
            return Err(fail(ErrorCode::UnsupportedVersion, format!("v must be {VERSION}")));
        }
    }
    let kind = match raw.kind {
        Some(serde_json::Value::String(k)) => k,
        Some(_) => return Err(fail(ErrorCode::UnknownType, "type must be a string".into())),
        None => return Err(fail(ErrorCode::UnknownType, "type is missing".into())),
    };
    let conversation_id = text_field(raw.conversation_id, "conversation_id").map_err(invalid)?;
    let conversation = || -> Result<ConversationId, FrameError> {
        let s = conversation_id.as_deref().ok_or_else(|| invalid("conversation_id is missing".into()))?;
        ConversationId::parse(s).map_err(|e| invalid(e.to_string()))
    };
    let seq = || -> Result<Seq, FrameError> {
        uint_field(raw.seq.as_ref(), "seq")
            .map_err(invalid)?
            .and_then(Seq::new)
            .ok_or_else(|| invalid("seq must be a number of at least 1".into()))
    };
    match kind.as_str() {
        "send" => {
            let id_text = id.as_deref().ok_or_else(|| invalid("id is missing".into()))?;
            let client_id = ClientMsgId::parse(id_text).map_err(|e| invalid(format!("id: {e}")))?;
            let conversation_id = conversation()?;
            let body =
                text_field(raw.body, "body").map_err(invalid)?.ok_or_else(|| invalid("body is missing".into()))?;
            let body = Body::parse(body).map_err(|e| invalid(e.to_string()))?;
            Ok(ClientFrame::Send { id: client_id, conversation_id, body })
        }
        "delivered" => Ok(ClientFrame::Delivered { conversation_id: conversation()?, seq: seq()? }),
        "history" => {
            let req = id.clone().ok_or_else(|| invalid("id is missing".into()))?;
            let conversation_id = conversation()?;
            let limit = uint_field(raw.limit.as_ref(), "limit").map_err(invalid)?.unwrap_or(u64::from(DEFAULT_LIMIT));
            let limit = u32::try_from(limit)
                .ok()
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .ok_or_else(|| invalid(format!("limit must be between 1 and {MAX_LIMIT}")))?;
            let after_seq = uint_field(raw.after_seq.as_ref(), "after_seq").map_err(invalid)?.unwrap_or(0);
            let before_seq = match uint_field(raw.before_seq.as_ref(), "before_seq").map_err(invalid)? {
                None => None,
                Some(b) => Some(
                    Seq::new(b)
                        .filter(|b| b.get() > after_seq)
                        .ok_or_else(|| invalid("before_seq must be above after_seq and at least 1".into()))?,
                ),
            };
            Ok(ClientFrame::History { id: req, conversation_id, after_seq, before_seq, limit })
        }
        "read" => Ok(ClientFrame::Read { conversation_id: conversation()?, seq: seq()? }),
        "conversation" => {
            let req = id.clone().ok_or_else(|| invalid("id is missing".into()))?;
            Ok(ClientFrame::Conversation { id: req, conversation_id: conversation()? })
        }
        "conversations" => {
            let req = id.clone().ok_or_else(|| invalid("id is missing".into()))?;
            let limit =
                uint_field(raw.limit.as_ref(), "limit").map_err(invalid)?.unwrap_or(u64::from(DEFAULT_LIST_LIMIT));
            let limit = u32::try_from(limit)
                .ok()
                .filter(|l| (1..=MAX_LIST_LIMIT).contains(l))
                .ok_or_else(|| invalid(format!("limit must be between 1 and {MAX_LIST_LIMIT}")))?;
            let page_token = text_field(raw.page_token, "page_token").map_err(invalid)?.filter(|t| !t.is_empty());
            if page_token.as_ref().is_some_and(|t| t.len() > MAX_PAGE_TOKEN_BYTES) {
                return Err(invalid(format!("page_token is longer than {MAX_PAGE_TOKEN_BYTES} bytes")));
            }
            Ok(ClientFrame::Conversations { id: req, limit, page_token })
        }
        "typing" => {
            let typing = bool_field(raw.typing.as_ref(), "typing").map_err(invalid)?.unwrap_or(true);
            Ok(ClientFrame::Typing { conversation_id: conversation()?, typing })
        }
        "ping" => Ok(ClientFrame::Ping { id }),
        other => Err(fail(ErrorCode::UnknownType, format!("unknown type {:?}", truncate(other, 32)))),
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

/// A conversation in the user's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConversationSummary {
    pub conversation_id: String,
    /// `direct` or `group`.
    pub kind: &'static str,
    pub title: String,
    pub member_ids: Vec<String>,
    pub last_seq: u64,
    /// The last message's time, or the creation's when there is none (ms since the epoch).
    pub last_activity_ms: i64,
    /// The user's read position (0: never read).
    pub read_seq: u64,
    pub unread: u64,
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
    Conversations {
        id: String,
        conversations: Vec<ConversationSummary>,
        /// Where the next page starts (send it back as `page_token`); absent on the last page.
        #[serde(skip_serializing_if = "Option::is_none")]
        next_page_token: Option<String>,
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
        /// With `rate_limited`: how long to wait before sending again, in milliseconds.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
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
            retry_after_ms: None,
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
            (r#"{"v":1,"type":7}"#.into(), ErrorCode::UnknownType),
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

    /// A field of the wrong type or out of range is `invalid_field` naming the field, with the request's id:
    /// the client fails that request rather than waiting for its timeout.
    #[test]
    fn fields_of_the_wrong_type_or_range_are_invalid_fields_with_the_id() {
        let history =
            |extra: &str| format!(r#"{{"v":1,"type":"history","id":"h1","conversation_id":"{CONV}",{extra}}}"#);
        let cases = [
            (history(r#""limit":-1"#), "limit"),
            (history(r#""limit":"5""#), "limit"),
            (history(r#""limit":2.5"#), "limit"),
            (history(r#""limit":4294967297"#), "limit"),
            (history(r#""after_seq":-1"#), "after_seq"),
            (history(r#""after_seq":"3""#), "after_seq"),
            (history(r#""before_seq":0"#), "before_seq"),
            (history(r#""after_seq":5,"before_seq":5"#), "before_seq"),
            (format!(r#"{{"v":1,"type":"send","id":"s1","conversation_id":"{CONV}","body":5}}"#), "body"),
            (r#"{"v":1,"type":"send","id":"s1","conversation_id":7,"body":"b"}"#.to_owned(), "conversation_id"),
            (format!(r#"{{"v":1,"type":"send","id":"s1","conversation_id":"{CONV}","body":"b","seq":-1}}"#), ""),
        ];
        for (text, field) in cases {
            match parse(&text) {
                Err(e) if field.is_empty() => panic!("{text}: a field send does not read is ignored, got {e:?}"),
                Ok(_) if field.is_empty() => {}
                Err(FrameError { id, code, message }) => {
                    assert_eq!(code, ErrorCode::InvalidField, "{text}");
                    assert!(id.as_deref() == Some("h1") || id.as_deref() == Some("s1"), "{text}: id {id:?}");
                    assert!(message.contains(field), "{text}: {message:?} does not name {field}");
                }
                Ok(f) => panic!("{text} parsed as {f:?}"),
            }
        }
        let bad_seq = format!(r#"{{"v":1,"type":"delivered","conversation_id":"{CONV}","seq":"3"}}"#);
        assert_eq!(parse(&bad_seq).map_err(|e| e.code), Err(ErrorCode::InvalidField));
        let bad_typing = format!(r#"{{"v":1,"type":"typing","conversation_id":"{CONV}","typing":"yes"}}"#);
        assert_eq!(parse(&bad_typing).map_err(|e| e.code), Err(ErrorCode::InvalidField));
    }

    #[test]
    fn conversation_lists_take_a_limit_and_a_token() {
        assert_eq!(
            parse(r#"{"v":1,"type":"conversations","id":"l"}"#),
            Ok(ClientFrame::Conversations { id: "l".into(), limit: 20, page_token: None })
        );
        assert_eq!(
            parse(r#"{"v":1,"type":"conversations","id":"l","limit":5,"page_token":"12:x"}"#),
            Ok(ClientFrame::Conversations { id: "l".into(), limit: 5, page_token: Some("12:x".into()) })
        );
        for bad in [
            r#"{"v":1,"type":"conversations"}"#,
            r#"{"v":1,"type":"conversations","id":"l","limit":0}"#,
            r#"{"v":1,"type":"conversations","id":"l","limit":101}"#,
            r#"{"v":1,"type":"conversations","id":"l","page_token":7}"#,
        ] {
            assert_eq!(parse(bad).map_err(|e| e.code), Err(ErrorCode::InvalidField), "{bad}");
        }
        let long = format!(r#"{{"v":1,"type":"conversations","id":"l","page_token":"{}"}}"#, "x".repeat(300));
        assert_eq!(parse(&long).map_err(|e| (e.code, e.id)), Err((ErrorCode::InvalidField, Some("l".into()))));
    }

    #[test]
    fn history_pages_forwards_or_backwards() {
        let h =
            |extra: &str| parse(&format!(r#"{{"v":1,"type":"history","id":"h","conversation_id":"{CONV}"{extra}}}"#));
        assert!(matches!(h(""), Ok(ClientFrame::History { after_seq: 0, before_seq: None, limit: 100, .. })));
        assert!(matches!(
            h(r#","before_seq":40,"limit":20"#),
            Ok(ClientFrame::History { after_seq: 0, before_seq: Some(b), limit: 20, .. }) if b.get() == 40
        ));
        assert!(matches!(
            h(r#","after_seq":null,"before_seq":null"#),
            Ok(ClientFrame::History { before_seq: None, .. })
        ));
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
