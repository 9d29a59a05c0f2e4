//! What the fault and security tests need to be shown failing against their bugs (`make faults-prove`).
//!
//! - [`Broken`]: the error of a check that found a promise broken, as opposed to a test that could not run
//!   (a server down, a setup step failing). `make faults-prove` requires a run with a failpoint on to fail
//!   with a `Broken` error, whose text starts with `promise broken:`; checks use [`promise!`].
//! - `FAULTS_FAILPOINTS`: the failpoints to turn on, in the `fail` crate's format (`name=actions;...`, see
//!   `lifecycle::failpoints`). [`Cluster`](crate::cluster::Cluster) hands each process the ones of its kind
//!   (by name prefix: `chat-`, `gateway-`, `worker-`) as `FAILPOINTS`; [`configure_in_process`] turns them on
//!   in this process, for the services a [`Platform`](crate::Platform) runs here (a `failpoints` build only).

/// A promise found broken: what the check saw (the client crate's, so that its devices fail with it too).
pub use chat_client::Broken;

/// Like `anyhow::ensure!`, for a check of a promise: fails with a [`Broken`] error.
#[macro_export]
macro_rules! promise {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(anyhow::Error::new($crate::prove::Broken(format!($($arg)+))));
        }
    };
}

/// Fails with a [`Broken`] error.
#[macro_export]
macro_rules! broken {
    ($($arg:tt)+) => {
        return Err(anyhow::Error::new($crate::prove::Broken(format!($($arg)+))))
    };
}

/// The failpoints to turn on, from `FAULTS_FAILPOINTS` (none when unset or empty).
pub fn failpoints() -> Vec<(String, String)> {
    let spec = std::env::var("FAULTS_FAILPOINTS").unwrap_or_default();
    spec.split(';')
        .filter_map(|part| {
            let (name, actions) = part.split_once('=')?;
            Some((name.trim().to_owned(), actions.trim().to_owned()))
        })
        .filter(|(name, _)| !name.is_empty())
        .collect()
}

/// The `FAILPOINTS` value for a process whose failpoints' names start with `prefix` (`None`: none of them).
pub fn failpoints_for(prefix: &str) -> Option<String> {
    let mine: Vec<String> =
        failpoints().into_iter().filter(|(n, _)| n.starts_with(prefix)).map(|(n, a)| format!("{n}={a}")).collect();
    (!mine.is_empty()).then(|| mine.join(";"))
}

/// Turns the failpoints of `FAULTS_FAILPOINTS` on in this process. Fails on a name no service defines, and
/// in a build without the `failpoints` feature, so that a proving run never passes by not having its bug.
pub fn configure_in_process() -> anyhow::Result<()> {
    for (name, actions) in failpoints() {
        anyhow::ensure!(lifecycle::failpoints::NAMES.contains(&name.as_str()), "unknown failpoint {name}");
        lifecycle::failpoints::configure(&name, &actions).map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(())
}

/// Checks the names in `FAULTS_FAILPOINTS` before processes are started with them.
pub fn check_names() -> anyhow::Result<()> {
    for (name, _) in failpoints() {
        anyhow::ensure!(lifecycle::failpoints::NAMES.contains(&name.as_str()), "unknown failpoint {name}");
    }
    Ok(())
}
