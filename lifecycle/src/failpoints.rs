//! Failpoints: named places in the services where the fault tests make a bug or a crash happen on purpose,
//! to show that each fault scenario fails against the bug it guards (`make faults-prove`).
//!
//! They exist only in builds with the `failpoints` feature (built into `target/failpoints` by
//! `make faults-prove`); in every other build [`failpoint`] is a constant `false` and [`setup`] only warns
//! when `FAILPOINTS` is set. The names, and what each does when it fires:
//!
//! | name | where | what |
//! |---|---|---|
//! | `worker-drop-push` | delivery worker | a message's push is skipped, and counted as pushed (no inbox row) |
//! | `worker-skip-inbox` | delivery worker | inbox rows are not written, and counted as written |
//! | `worker-consumer-unreachable` | delivery worker | a new Kafka consumer is given a bootstrap address where nothing listens |
//! | `chat-number-twice` | chat service | a send is given the number of the send before it |
//! | `chat-crash-after-number` | chat service | the process aborts after numbering a send, before the log append |
//! | `chat-ack-unwritten` | chat service | the sends of a batch whose commit failed (aborted, or its outcome unknown) are acknowledged as written |
//! | `chat-keep-writer-after-abort` | chat service | a partition's writer goes on after an aborted transaction, instead of being opened again |
//! | `gateway-keep-replaced` | gateway | a device connecting again leaves its older connection open |
//! | `gateway-unbounded-queue` | gateway | a connection's send queue has no useful bound |
//! | `gateway-skip-device-stamp` | gateway | a registered device's device-list stamp is not replaced, yet the registration counts as done |
//!
//! Actions are the `fail` crate's (`FAILPOINTS="worker-drop-push=1%return;..."`): `return` fires, `off`
//! does not, and `N%return` fires with probability N %.

/// The failpoints the services define, for checks of a `FAILPOINTS` setting.
pub const NAMES: [&str; 10] = [
    "worker-drop-push",
    "worker-skip-inbox",
    "worker-consumer-unreachable",
    "chat-number-twice",
    "chat-crash-after-number",
    "chat-ack-unwritten",
    "chat-keep-writer-after-abort",
    "gateway-keep-replaced",
    "gateway-unbounded-queue",
    "gateway-skip-device-stamp",
];

/// Whether the failpoint `name` fires now.
#[cfg(feature = "failpoints")]
pub fn failpoint(name: &str) -> bool {
    fail::fail_point!(name, |_| {
        tracing::warn!(failpoint = name, "failpoint fired");
        true
    });
    false
}

/// Whether the failpoint `name` fires now: never, in a build without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn failpoint(_name: &str) -> bool {
    false
}

/// Configures the failpoints named in `FAILPOINTS`, for the life of the process.
#[cfg(feature = "failpoints")]
pub fn setup() {
    let scenario = fail::FailScenario::setup();
    // The configuration lasts as long as the process: the scenario is never torn down.
    std::mem::forget(scenario);
    for (name, actions) in fail::list() {
        tracing::warn!(failpoint = %name, actions = %actions, "failpoint configured");
    }
}

/// Warns when `FAILPOINTS` is set in a build that has no failpoints (it would have no effect).
#[cfg(not(feature = "failpoints"))]
pub fn setup() {
    if std::env::var_os("FAILPOINTS").is_some() {
        tracing::warn!("FAILPOINTS is set, but this build has no failpoints: it has no effect");
    }
}

/// Sets one failpoint's actions in this process (the in-process services of the end-to-end tests).
#[cfg(feature = "failpoints")]
pub fn configure(name: &str, actions: &str) -> Result<(), String> {
    fail::cfg(name, actions)
}

/// Sets one failpoint's actions: an error in a build without failpoints.
#[cfg(not(feature = "failpoints"))]
pub fn configure(name: &str, _actions: &str) -> Result<(), String> {
    Err(format!("failpoint {name}: this build has no failpoints (build with the `failpoints` feature)"))
}
