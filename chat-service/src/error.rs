//! The chat service's domain errors, and the one table that maps them to gRPC status codes.

use chat_store::StoreError;
use tonic::{Code, Status};

use crate::event_log::LogError;

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A request field is missing or malformed; the message names it.
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("conversation not found")]
    ConversationNotFound,
    #[error("not a member of the conversation")]
    NotMember,
    /// The request would break a rule of the conversation (e.g. changing the members of a direct one).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] LogError),
    /// Too many concurrent claims on one conversation within the deadline.
    #[error("conversation is busy, retry")]
    Contended,
    #[error("deadline exceeded")]
    Timeout,
    /// This replica does not own the conversation's partition (any more), and will not forward: retry.
    #[error("not the owner of the conversation's partition; retry")]
    NotOwner,
    /// The partition's owner could not write (its transaction aborted, its outcome is being settled, it is
    /// moving): nothing was acknowledged; retry with the same client id.
    #[error("not written, retry: {0}")]
    Owner(String),
    /// The owner's answer to a forwarded call, passed on as it is.
    #[error("{}", .0.message())]
    Forwarded(Status),
}

impl ChatError {
    pub fn code(&self) -> Code {
        match self {
            ChatError::Invalid(_) => Code::InvalidArgument,
            ChatError::ConversationNotFound => Code::NotFound,
            ChatError::NotMember => Code::PermissionDenied,
            ChatError::FailedPrecondition(_) => Code::FailedPrecondition,
            ChatError::Store(StoreError::Corrupt { .. }) | ChatError::Store(StoreError::Migration(_)) => Code::Internal,
            ChatError::Store(StoreError::Expired { .. }) => Code::OutOfRange,
            // Retryable: nothing was acknowledged, and a retry with the same client id is safe.
            ChatError::Store(StoreError::Unavailable(_))
            | ChatError::Log(_)
            | ChatError::Timeout
            | ChatError::NotOwner
            | ChatError::Owner(_) => Code::Unavailable,
            ChatError::Contended => Code::Aborted,
            ChatError::Forwarded(s) => s.code(),
        }
    }
}

/// The metadata key naming the first number history still holds, on an OUT_OF_RANGE answer.
pub const FIRST_SEQ_METADATA: &str = "x-first-seq";

impl From<ChatError> for Status {
    fn from(e: ChatError) -> Status {
        if let ChatError::Forwarded(status) = e {
            return status;
        }
        let mut status = Status::new(e.code(), e.to_string());
        if let ChatError::Store(StoreError::Expired { first_available }) = &e
            && let Ok(v) = first_available.to_string().parse()
        {
            status.metadata_mut().insert(FIRST_SEQ_METADATA, v);
        }
        status
    }
}

impl From<chat_model::IdError> for ChatError {
    fn from(e: chat_model::IdError) -> Self {
        ChatError::Invalid(e.to_string())
    }
}
