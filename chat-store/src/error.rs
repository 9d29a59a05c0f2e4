//! The store's one error type.

/// What went wrong talking to the store. `Unavailable` may succeed when tried again; the others will not.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A row that the platform wrote cannot be read back as a domain value.
    #[error("corrupt row in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    /// The numbers asked for are past history's retention; history holds them from `first_available` on.
    #[error("history before {first_available} is beyond retention")]
    Expired { first_available: u64 },
    #[error("schema migration failed: {0}")]
    Migration(String),
}

macro_rules! unavailable_from {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Unavailable(e.to_string())
            }
        })*
    };
}

unavailable_from!(
    scylla::errors::ExecutionError,
    scylla::errors::PrepareError,
    scylla::errors::NewSessionError,
    scylla::errors::IntoRowsResultError,
    scylla::errors::RowsError,
    scylla::errors::DeserializationError,
    scylla::errors::UseKeyspaceError,
    scylla::errors::SchemaAgreementError,
    scylla::errors::FirstRowError,
    scylla::errors::MaybeFirstRowError,
    scylla::errors::PagerExecutionError,
    scylla::errors::NextRowError,
    scylla::deserialize::TypeCheckError,
);
