//! Fuzzing of the log-event decoder (`event::decode`), as property tests on stable Rust: any bytes on the
//! topic decode to a checked event or to an error (the worker's dead-letter path), never a panic; every event
//! the platform writes decodes back to itself.
//!
//! `make test` runs a bounded budget (PROPTEST_CASES, 2000 by default here); `make fuzz` runs a long one.

use chat_model::event::{self, LogEvent, Receipt, ReceiptKind};
use chat_model::{Body, ClientMsgId, ConversationId, DeviceId, Message, MessageId, Seq, UserId};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn id_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.-]{1,40}"
}

fn events() -> impl Strategy<Value = LogEvent> {
    let message =
        (any::<u128>(), 1..u64::MAX / 2, any::<u128>(), id_text(), id_text(), id_text(), ".{0,200}", any::<i64>())
            .prop_filter_map("valid ids", |(c, seq, mid, sender, device, cid, body, at)| {
                Some(LogEvent::MessageSent(Message {
                    conversation_id: ConversationId::from_uuid(uuid::Uuid::from_u128(c)),
                    seq: Seq::new(seq)?,
                    message_id: MessageId::from_uuid(uuid::Uuid::from_u128(mid)),
                    sender_id: UserId::parse(&sender).ok()?,
                    sender_device_id: DeviceId::parse(&device).ok()?,
                    client_msg_id: ClientMsgId::parse(&cid).ok()?,
                    body: Body::parse(body).ok()?,
                    sent_at_ms: at,
                }))
            });
    let receipt = (any::<u128>(), id_text(), id_text(), any::<bool>(), 1..u64::MAX / 2).prop_filter_map(
        "valid ids",
        |(c, user, device, read, up_to)| {
            Some(LogEvent::ReceiptRecorded(Receipt {
                conversation_id: ConversationId::from_uuid(uuid::Uuid::from_u128(c)),
                user_id: UserId::parse(&user).ok()?,
                device_id: DeviceId::parse(&device).ok()?,
                kind: if read { ReceiptKind::Read } else { ReceiptKind::Delivered },
                up_to: Seq::new(up_to)?,
            }))
        },
    );
    prop_oneof![message, receipt]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = event::decode(&bytes);
    }

    #[test]
    fn events_round_trip(e in events(), at in any::<i64>()) {
        let decoded = event::decode(&event::encode(&e, at));
        match (&e, decoded) {
            (LogEvent::MessageSent(m), Ok(LogEvent::MessageSent(d))) => {
                prop_assert_eq!(d, Message { sent_at_ms: at, ..m.clone() });
            }
            (LogEvent::ReceiptRecorded(r), Ok(LogEvent::ReceiptRecorded(d))) => prop_assert_eq!(&d, r),
            (_, other) => prop_assert!(false, "decoded as {:?}", other),
        }
    }

    #[test]
    fn mutated_events_decode_or_fail_cleanly(
        e in events(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = event::encode(&e, 0);
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        if let Ok(LogEvent::MessageSent(m)) = event::decode(&bytes) {
            // Whatever decodes is checked: a number of at least 1, and a body within its limit.
            prop_assert!(m.seq.get() >= 1);
            prop_assert!(m.body.as_str().len() <= chat_model::MAX_BODY_BYTES);
        }
    }
}
