//! Checks of the log itself, as a plain consumer reads it, and of what can be rebuilt from it.
//!
//! - [`check_order`]: in each conversation's partition, the records of its messages carry the numbers
//!   1, 2, 3, ... in log order: N+1 never before N, no number missing, none twice (the log is the order).
//! - [`rebuild_and_diff`]: `chatctl rebuild` replays a topic into a fresh keyspace and `chatctl diff`
//!   compares it with the live one: the projections equal what the log says (P9).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use chat_model::event::LogEvent;

use crate::platform::{KEYSPACE, cassandra_node, kafka_brokers};

/// What the log holds, per conversation: its messages' (number, message id), in log order.
pub type LogMessages = HashMap<String, Vec<(u64, String)>>;

/// Reads `topic` from its beginning (committed records only) and checks that each conversation's messages
/// are numbered 1..=n in log order; answers them. A break fails with `promise broken:`.
pub async fn check_order(topic: &str) -> anyhow::Result<LogMessages> {
    let t = topic.to_owned();
    let events = tokio::task::spawn_blocking(move || crate::platform::read_topic(&t)).await??;
    let mut out: LogMessages = HashMap::new();
    for e in events {
        if let LogEvent::MessageSent(m) = e {
            let conv = m.conversation_id.to_string();
            let seen = out.entry(conv.clone()).or_default();
            let expected = seen.len() as u64 + 1;
            crate::promise!(
                m.seq.get() == expected,
                "the log of {conv} holds number {} where {expected} comes next (after {:?})",
                m.seq,
                seen.last()
            );
            seen.push((m.seq.get(), m.message_id.to_string()));
        }
    }
    Ok(out)
}

fn chatctl() -> std::path::PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    target.join("debug").join("chatctl")
}

/// Rebuilds `topic` into a fresh keyspace with `chatctl rebuild`, compares it with the live keyspace over
/// the conversations it holds with `chatctl diff`, drops it, and answers (events replayed, conversations
/// compared, differences).
pub async fn rebuild_and_diff(topic: &str) -> anyhow::Result<(u64, u64, Vec<String>)> {
    let keyspace = format!("rebuilt_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let env = [("CHAT_KAFKA_BROKERS", kafka_brokers()), ("CHAT_CASSANDRA_NODES", cassandra_node())];
    let rebuilt = Command::new(chatctl())
        .args(["rebuild", "--topic", topic, "--keyspace", &keyspace])
        .envs(env.clone())
        .output()
        .context("running chatctl rebuild")?;
    let out = String::from_utf8_lossy(&rebuilt.stdout).into_owned();
    anyhow::ensure!(
        rebuilt.status.success(),
        "chatctl rebuild failed: {out}{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let events: u64 =
        out.split_whitespace().skip_while(|w| *w != "from").nth(2).and_then(|n| n.parse().ok()).unwrap_or(0);
    let diff = Command::new(chatctl())
        .args(["diff", "--keyspace", KEYSPACE, "--other", &keyspace, "--only-other-conversations"])
        .envs(env)
        .output()
        .context("running chatctl diff")?;
    let report = String::from_utf8_lossy(&diff.stdout).into_owned();
    let drop = async {
        let session = chat_store::connect_session(&[cassandra_node()], std::time::Duration::from_secs(30)).await?;
        session.query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ()).await?;
        anyhow::Ok(())
    };
    if let Err(e) = drop.await {
        tracing::warn!(error = %e, "rebuilt keyspace not dropped");
    }
    let summary = report.lines().last().unwrap_or_default().to_owned();
    let compared: u64 = summary.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let differences: Vec<String> = report.lines().filter(|l| l.starts_with("only in ")).map(str::to_owned).collect();
    anyhow::ensure!(
        diff.status.success() || !differences.is_empty(),
        "chatctl diff failed: {report}{}",
        String::from_utf8_lossy(&diff.stderr)
    );
    Ok((events, compared, differences))
}
