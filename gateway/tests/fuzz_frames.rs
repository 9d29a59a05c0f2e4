//! Fuzzing of the client-frame decoder (`protocol::parse`), as property tests on stable Rust: whatever text
//! arrives, the answer is a checked frame or a refusal with a code, never a panic; a refusal never names a
//! request id the client did not send; everything accepted is within the protocol's limits.
//!
//! `make test` runs a bounded budget (PROPTEST_CASES, 2000 by default here); `make fuzz` runs a long one.

use gateway::protocol::{self, ClientFrame, MAX_REQUEST_ID_BYTES};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// JSON values of any shape, small.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
        ".{0,80}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects built from the protocol's own field names, with values of any shape: the frames closest to valid.
fn near_frames() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "v",
        "type",
        "id",
        "conversation_id",
        "body",
        "seq",
        "after_seq",
        "before_seq",
        "limit",
        "typing",
        "page_token",
        "extra",
    ]);
    let kinds = prop::sample::select(vec![
        "send",
        "delivered",
        "history",
        "read",
        "conversation",
        "conversations",
        "typing",
        "ping",
        "Send",
        "",
        "pong",
    ]);
    (prop::collection::btree_map(keys, any_json(), 0..9), kinds, any::<bool>(), any::<bool>()).prop_map(
        |(mut m, kind, set_v, set_kind)| {
            if set_v {
                m.insert("v", serde_json::Value::from(1));
            }
            if set_kind {
                m.insert("type", serde_json::Value::from(kind));
            }
            serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()).to_string()
        },
    )
}

/// Checks the decoder's promises on one input.
fn check(text: &str) -> Result<(), TestCaseError> {
    match protocol::parse(text) {
        Ok(frame) => match frame {
            ClientFrame::History { id, limit, after_seq, before_seq, .. } => {
                prop_assert!(!id.is_empty() && id.len() <= MAX_REQUEST_ID_BYTES);
                prop_assert!((1..=500).contains(&limit));
                prop_assert!(before_seq.is_none_or(|b| b.get() > after_seq));
            }
            ClientFrame::Conversations { id, limit, page_token } => {
                prop_assert!(!id.is_empty() && id.len() <= MAX_REQUEST_ID_BYTES);
                prop_assert!((1..=100).contains(&limit));
                prop_assert!(page_token.is_none_or(|t| !t.is_empty() && t.len() <= 256));
            }
            ClientFrame::Conversation { id, .. } => prop_assert!(id.len() <= MAX_REQUEST_ID_BYTES),
            ClientFrame::Ping { id } => prop_assert!(id.is_none_or(|i| i.len() <= MAX_REQUEST_ID_BYTES)),
            ClientFrame::Send { body, .. } => prop_assert!(body.as_str().len() <= chat_model::MAX_BODY_BYTES),
            ClientFrame::Delivered { .. } | ClientFrame::Read { .. } | ClientFrame::Typing { .. } => {}
        },
        Err(e) => {
            prop_assert!(!e.message.is_empty());
            if let Some(id) = &e.id {
                let sent = serde_json::from_str::<serde_json::Value>(text).ok().and_then(|v| v.get("id").cloned());
                prop_assert_eq!(
                    sent.as_ref().and_then(|v| v.as_str()),
                    Some(id.as_str()),
                    "the refusal names another id"
                );
            }
            // The refusal itself always encodes.
            let _ = protocol::ServerFrame::error(e).to_text();
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_is_answered(text in ".{0,400}") {
        check(&text)?;
    }

    #[test]
    fn any_bytes_are_answered(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn any_json_is_answered(value in any_json()) {
        check(&value.to_string())?;
    }

    #[test]
    fn frames_near_the_protocol_are_answered(text in near_frames()) {
        check(&text)?;
    }

    #[test]
    fn mutated_valid_frames_are_answered(
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let valid = r#"{"v":1,"type":"send","id":"m-1","conversation_id":"01900000-0000-7000-8000-000000000001","body":"hello"}"#;
        let mut bytes = valid.as_bytes().to_vec();
        let at = position.index(bytes.len());
        bytes[at] = byte;
        bytes.truncate(cut.index(bytes.len() + 1).max(1));
        check(&String::from_utf8_lossy(&bytes))?;
    }
}
