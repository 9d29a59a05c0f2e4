//! Identifiers, each a type that can only hold a valid value (parse, don't validate).

use std::fmt;

use uuid::Uuid;

/// Why a text could not become an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {max} bytes")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} has a character outside [A-Za-z0-9._:@-]")]
    BadChar { what: &'static str },
    #[error("{what} is not a UUID")]
    NotUuid { what: &'static str },
}

/// Longest user, device or client message id, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

fn check_name(what: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    if s.len() > MAX_NAME_BYTES {
        return Err(IdError::TooLong { what, max: MAX_NAME_BYTES });
    }
    let ok = s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'));
    if !ok {
        return Err(IdError::BadChar { what });
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_name($what, s)?;
                Ok(Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_id!(
    /// A user, as named by the token's subject: 1 to 64 bytes of `[A-Za-z0-9._:@-]`.
    UserId,
    "user id"
);
name_id!(
    /// One of a user's devices (one connection at a time per device).
    DeviceId,
    "device id"
);
name_id!(
    /// The sender's own id for one send, reused by its retries (the idempotency key).
    ClientMsgId,
    "client message id"
);

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, IdError> {
                if s.is_empty() {
                    return Err(IdError::Empty { what: $what });
                }
                // Only the hyphenated form: one spelling per id keeps keys and logs comparable.
                if s.len() != 36 {
                    return Err(IdError::NotUuid { what: $what });
                }
                Uuid::try_parse(s).map(Self).map_err(|_| IdError::NotUuid { what: $what })
            }

            pub fn from_uuid(u: Uuid) -> Self {
                Self(u)
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// A new id, ordered by creation time (UUID v7).
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A conversation (1:1 or group): a UUID.
    ConversationId,
    "conversation id"
);
uuid_id!(
    /// A message, assigned by the chat service when the message claims its sequence number.
    MessageId,
    "message id"
);

/// A message's place in its conversation: 1, 2, 3, ... with no gap (promise P2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Seq(u64);

impl Seq {
    pub const FIRST: Seq = Seq(1);

    /// `None` for 0, which is never a message's number (it means "before the first").
    pub fn new(n: u64) -> Option<Seq> {
        (n > 0).then_some(Seq(n))
    }

    pub fn get(self) -> u64 {
        self.0
    }

    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_the_allowed_alphabet_only() {
        let cases: &[(&str, bool)] = &[
            ("alice", true),
            ("bot:billing@eu-1.x_y", true),
            ("", false),
            ("al ice", false),
            ("ålice", false),
            ("a\u{0}b", false),
            ("x/y", false),
        ];
        for (input, ok) in cases {
            assert_eq!(UserId::parse(input).is_ok(), *ok, "{input:?}");
        }
        assert_eq!(UserId::parse(&"a".repeat(64)).map(|u| u.as_str().len()), Ok(64));
        assert_eq!(DeviceId::parse(&"a".repeat(65)), Err(IdError::TooLong { what: "device id", max: 64 }));
    }

    #[test]
    fn uuids_must_be_hyphenated() {
        let u = "0192f0a4-3c1e-7a55-9d3e-1f6a2b3c4d5e";
        assert_eq!(ConversationId::parse(u).map(|c| c.to_string()), Ok(u.to_owned()));
        assert!(ConversationId::parse("0192f0a43c1e7a559d3e1f6a2b3c4d5e").is_err());
        assert!(ConversationId::parse("not-a-uuid-at-all-not-a-uuid-at-all!").is_err());
        assert_eq!(ConversationId::parse(""), Err(IdError::Empty { what: "conversation id" }));
    }

    #[test]
    fn seq_zero_is_not_a_message_number() {
        assert_eq!(Seq::new(0), None);
        assert_eq!(Seq::new(1), Some(Seq::FIRST));
        assert_eq!(Seq::FIRST.next().get(), 2);
    }
}
