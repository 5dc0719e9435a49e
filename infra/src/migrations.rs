//! Versioned, idempotent schema migrations.
//!
//! Each file of `infra/migrations/` is one version; its statements are separated by `;` and all use
//! `IF NOT EXISTS`, so re-running a half-applied migration (a crash, two instances at once) is
//! harmless. Applied versions are recorded in `schema_migrations`.

use anyhow::Context;
use scylla::client::session::Session;

use crate::settings::Cql;

/// `(version, name, statements)`, in order. Add a file and one line here.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "aggregates",
        include_str!("../migrations/0001_aggregates.cql"),
    ),
    (
        2,
        "projections",
        include_str!("../migrations/0002_projections.cql"),
    ),
    (3, "tenants", include_str!("../migrations/0003_tenants.cql")),
    (
        4,
        "projection_control",
        include_str!("../migrations/0004_projection_control.cql"),
    ),
    (5, "jobs", include_str!("../migrations/0005_jobs.cql")),
];

/// Split a migration file into statements, dropping `--` comments.
pub fn statements(source: &str) -> Vec<String> {
    let without_comments: String = source
        .lines()
        .map(|line| match line.find("--") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Create the keyspace and apply every migration not yet recorded. Returns the versions applied now.
#[tracing::instrument(skip_all, fields(keyspace = %settings.keyspace))]
pub async fn run(session: &Session, settings: &Cql) -> anyhow::Result<Vec<i32>> {
    let ks = &settings.keyspace;
    session
        .query_unpaged(
            crate::cql::schema_statement(format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {} AND durable_writes = true",
                settings.replication
            )),
            &[],
        )
        .await
        .context("creating the keyspace")?;
    session
        .query_unpaged(
            crate::cql::schema_statement(format!(
                "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations \
                 (version int PRIMARY KEY, name text, applied_at timestamp)"
            )),
            &[],
        )
        .await
        .context("creating schema_migrations")?;
    session
        .await_schema_agreement()
        .await
        .context("schema agreement")?;
    let applied: Vec<i32> = session
        .query_unpaged(format!("SELECT version FROM {ks}.schema_migrations"), &[])
        .await?
        .into_rows_result()?
        .rows::<(i32,)>()?
        .map(|row| row.map(|(v,)| v))
        .collect::<Result<_, _>>()?;

    let mut now_applied = Vec::new();
    for (version, name, source) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        for statement in statements(source) {
            let statement = qualify(&statement, ks);
            session
                .query_unpaged(crate::cql::schema_statement(statement.clone()), &[])
                .await
                .with_context(|| format!("migration {version} ({name}): {statement}"))?;
        }
        session.await_schema_agreement().await?;
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {ks}.schema_migrations (version, name, applied_at) \
                     VALUES (?, ?, toTimestamp(now()))"
                ),
                (version, name),
            )
            .await?;
        tracing::info!(version, name, "migration applied");
        now_applied.push(*version);
    }
    Ok(now_applied)
}

/// Prefix the table of a `CREATE TABLE IF NOT EXISTS x` with the keyspace, so migrations need no
/// `USE` (sessions are shared).
fn qualify(statement: &str, keyspace: &str) -> String {
    const CREATE: &str = "CREATE TABLE IF NOT EXISTS ";
    match statement.strip_prefix(CREATE) {
        Some(rest) if !rest.contains('.') || rest.find('.') > rest.find('(') => {
            format!("{CREATE}{keyspace}.{rest}")
        }
        _ => statement.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_splits_into_create_statements() {
        for (_, _, source) in MIGRATIONS {
            let stmts = statements(source);
            assert!(!stmts.is_empty());
            for s in stmts {
                assert!(s.starts_with("CREATE TABLE IF NOT EXISTS"), "{s}");
                assert!(!s.contains("--"));
            }
        }
    }

    #[test]
    fn tables_are_qualified_with_the_keyspace() {
        assert_eq!(
            qualify("CREATE TABLE IF NOT EXISTS t (a int PRIMARY KEY)", "ks"),
            "CREATE TABLE IF NOT EXISTS ks.t (a int PRIMARY KEY)"
        );
    }

    #[test]
    fn versions_are_strictly_increasing() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]));
    }
}
