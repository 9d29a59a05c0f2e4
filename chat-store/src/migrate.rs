//! Numbered schema migrations, applied in order and recorded in the keyspace's `schema_migrations` table.

use scylla::client::session::Session;

use crate::{StoreError, now_ms};

/// Every migration, in order. A released file is never edited: a change is a new entry.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "0001_init", include_str!("../migrations/0001_init.cql")),
    (2, "0002_read_positions", include_str!("../migrations/0002_read_positions.cql")),
    (3, "0003_log_order", include_str!("../migrations/0003_log_order.cql")),
    (4, "0004_drop_claims", include_str!("../migrations/0004_drop_claims.cql")),
];

/// Creates the keyspace if needed and applies the migrations it has not seen yet.
/// `replication` is a CQL replication map, e.g. `{'class': 'SimpleStrategy', 'replication_factor': 1}`.
pub async fn migrate(session: &Session, keyspace: &str, replication: &str) -> Result<Vec<String>, StoreError> {
    check_keyspace_name(keyspace)?;
    if !replication.trim_start().starts_with('{') || replication.contains(';') {
        return Err(StoreError::Migration(format!("replication is not a CQL map: {replication}")));
    }
    session
        .query_unpaged(format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}"), ())
        .await?;
    session
        .query_unpaged(
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations \
                 (version int PRIMARY KEY, name text, applied_at timestamp)"
            ),
            (),
        )
        .await?;
    session.await_schema_agreement().await?;
    session.use_keyspace(keyspace, false).await?;

    let applied: Vec<i32> = session
        .query_unpaged("SELECT version FROM schema_migrations", ())
        .await?
        .into_rows_result()?
        .rows::<(i32,)>()?
        .map(|r| r.map(|(v,)| v))
        .collect::<Result<_, _>>()?;

    let mut done = Vec::new();
    for (version, name, text) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        for statement in statements(text) {
            session
                .query_unpaged(statement.clone(), ())
                .await
                .map_err(|e| StoreError::Migration(format!("{name}: {e}: {statement}")))?;
        }
        session.await_schema_agreement().await?;
        session
            .query_unpaged(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (*version, *name, scylla::value::CqlTimestamp(now_ms())),
            )
            .await?;
        done.push((*name).to_owned());
    }
    Ok(done)
}

/// Keyspace names go into CQL text, so only a safe, unquoted spelling is accepted.
pub(crate) fn check_keyspace_name(keyspace: &str) -> Result<(), StoreError> {
    let mut chars = keyspace.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && keyspace.len() <= 48 {
        Ok(())
    } else {
        Err(StoreError::Migration(format!("keyspace name {keyspace:?} must match [a-z][a-z0-9_]{{0,47}}")))
    }
}

/// Splits a migration file into statements: `--` comments dropped, split on `;`.
fn statements(text: &str) -> Vec<String> {
    let without_comments: String =
        text.lines().map(|line| line.split("--").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    without_comments
        .split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_split_into_statements_without_comments() {
        let got = statements(
            "-- header\nCREATE TABLE a (x int PRIMARY KEY); -- trailing\n\n  CREATE TABLE b (\n y int PRIMARY KEY\n);\n",
        );
        assert_eq!(got, vec!["CREATE TABLE a (x int PRIMARY KEY)", "CREATE TABLE b ( y int PRIMARY KEY )"]);
    }

    #[test]
    fn the_first_migration_creates_every_table() {
        let text = statements(MIGRATIONS[0].2).join("\n");
        for table in [
            "conversations",
            "members",
            "conversations_by_user",
            "sequencer",
            "messages",
            "devices",
            "inbox",
            "delivery_cursors",
        ] {
            assert!(text.contains(&format!("CREATE TABLE IF NOT EXISTS {table} (")), "{table}");
        }
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
        assert_eq!(versions, (1..=MIGRATIONS.len() as i32).collect::<Vec<_>>());
        for (v, name, _) in MIGRATIONS {
            assert!(name.starts_with(&format!("{v:04}_")), "{name}");
        }
    }

    #[test]
    fn keyspace_names_are_checked() {
        assert!(check_keyspace_name("chat").is_ok());
        assert!(check_keyspace_name("e2e_20261126_abc1").is_ok());
        for bad in ["", "1chat", "Chat", "chat;drop", "chat-x", &"a".repeat(49)] {
            assert!(check_keyspace_name(bad).is_err(), "{bad:?}");
        }
    }
}
