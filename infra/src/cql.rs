//! The CQL session (ScyllaDB in production, Apache Cassandra where ScyllaDB cannot run).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::{Consistency, SerialConsistency};

use crate::settings::Cql;

pub fn consistency(name: &str) -> anyhow::Result<Consistency> {
    Ok(match name.to_ascii_uppercase().as_str() {
        "ANY" => Consistency::Any,
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        other => bail!("unknown consistency {other:?}"),
    })
}

pub fn serial_consistency(name: &str) -> anyhow::Result<SerialConsistency> {
    Ok(match name.to_ascii_uppercase().as_str() {
        "SERIAL" => SerialConsistency::Serial,
        "LOCAL_SERIAL" => SerialConsistency::LocalSerial,
        other => bail!("unknown serial consistency {other:?}"),
    })
}

/// Connect without choosing a keyspace (migrations create it).
pub async fn connect(settings: &Cql) -> anyhow::Result<Arc<Session>> {
    let profile = ExecutionProfile::builder()
        .consistency(consistency(&settings.consistency)?)
        .serial_consistency(Some(serial_consistency(&settings.serial_consistency)?))
        .request_timeout(Some(Duration::from_millis(settings.request_timeout_ms)))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(settings.node_list())
        .connection_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .default_execution_profile_handle(profile.into_handle());
    if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
        builder = builder.user(user, password);
    }
    let session = builder
        .build()
        .await
        .with_context(|| format!("connecting to CQL at {}", settings.nodes))?;
    Ok(Arc::new(session))
}

/// Connect and switch to the service keyspace (which must exist: run the migrations first).
pub async fn connect_keyspace(settings: &Cql) -> anyhow::Result<Arc<Session>> {
    let session = connect(settings).await?;
    session
        .use_keyspace(&settings.keyspace, false)
        .await
        .with_context(|| format!("using keyspace {}", settings.keyspace))?;
    Ok(session)
}

/// How long a schema change may take: it waits for every node to agree, which under load takes
/// far longer than a read or write.
pub const SCHEMA_CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A schema statement (`CREATE`, `DROP`, `ALTER`) with the longer timeout schema changes need.
pub fn schema_statement(cql: impl Into<String>) -> scylla::statement::unprepared::Statement {
    let mut statement = scylla::statement::unprepared::Statement::new(cql.into());
    statement.set_request_timeout(Some(SCHEMA_CHANGE_TIMEOUT));
    statement
}

/// A query answered by the cluster: it is reachable.
pub async fn ping(session: &Session) -> anyhow::Result<()> {
    session
        .query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .context("CQL ping")?;
    Ok(())
}

/// How many other nodes the node answering sees in its ring (`system.peers`).
pub async fn peers(session: &Session) -> anyhow::Result<usize> {
    let rows = session
        .query_unpaged("SELECT peer FROM system.peers", &[])
        .await
        .context("reading system.peers")?
        .into_rows_result()?;
    Ok(rows.rows_num())
}
