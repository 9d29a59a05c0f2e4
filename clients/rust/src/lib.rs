//! A chat client as `docs/protocol.md` describes it ([`device::Device`]): it reconnects across gateways,
//! resumes by cursor, deduplicates, holds and fills gaps, retries sends with the same id, and reports how
//! each message arrived (its own answer, pushed, from the inbox, from history). The fault tests (`tests/`)
//! and the terminal client (`chat`, `src/bin/chat.rs`) share it.

use std::fmt;

pub mod device;

/// A promise of the protocol found broken on the wire (two message ids at one number, a push out of
/// order, a number that never came): the error [`device::Device::wait_shown`] fails with.
#[derive(Debug)]
pub struct Broken(pub String);

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "promise broken: {}", self.0)
    }
}

impl std::error::Error for Broken {}
