//! [`AggregateStore`] on ScyllaDB / Cassandra: the `aggregates` row of each aggregate (written only
//! by LWT), `publish_intents` in 5-second buckets, and the sweepers' progress.
//!
//! Marking intents published is off the request path and needs no answer before the client's, so
//! the marks of concurrent commands are gathered for a moment ([`MARK_LINGER`]) and written as one
//! unlogged batch per intents partition (tenant, 5-second bucket): one CQL request and one
//! mutation for many commands instead of one each.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use events::{EventEnvelope, ORDER_AGGREGATE};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::head::Head;
use super::store::{bucket_of, AggregateStore, Intent, NewRow, Read};
use super::CommandError;
use crate::domain::order::Order;

struct Statements {
    load: PreparedStatement,
    load_serial: PreparedStatement,
    insert: PreparedStatement,
    update: PreparedStatement,
    mark_published: PreparedStatement,
    insert_intent: PreparedStatement,
    intent_published: PreparedStatement,
    select_intents: PreparedStatement,
    load_progress: PreparedStatement,
    save_progress: PreparedStatement,
    register_tenant: PreparedStatement,
    select_tenants: PreparedStatement,
}

pub struct CqlStore {
    session: Arc<Session>,
    statements: Statements,
    /// The event topic: the sweepers of a topic sweep the tenants that wrote to it.
    topic: String,
    /// Marks for the batching task ([`write_marks`]).
    marks: mpsc::UnboundedSender<Mark>,
}

/// How long the first mark of a batch waits for others (off the request path).
const MARK_LINGER: Duration = Duration::from_millis(2);
/// The most marks gathered into one round of batches.
const MARK_BATCH_MAX: usize = 256;

/// One intent to mark published, and who waits for it to be written.
struct Mark {
    tenant: String,
    bucket: DateTime<Utc>,
    id: Uuid,
    version: i64,
    /// The batch's outcome: the database's error as text.
    done: oneshot::Sender<Result<(), String>>,
}

/// Gather marks (the first, then whatever arrives within [`MARK_LINGER`], up to
/// [`MARK_BATCH_MAX`]) and write them as one unlogged batch per intents partition; ends when the
/// store is dropped.
async fn write_marks(
    session: Arc<Session>,
    statement: PreparedStatement,
    mut marks: mpsc::UnboundedReceiver<Mark>,
) {
    while let Some(first) = marks.recv().await {
        let mut gathered = vec![first];
        let until = tokio::time::Instant::now() + MARK_LINGER;
        while gathered.len() < MARK_BATCH_MAX {
            match tokio::time::timeout_at(until, marks.recv()).await {
                Ok(Some(mark)) => gathered.push(mark),
                Ok(None) | Err(_) => break,
            }
        }
        let mut partitions: HashMap<(String, DateTime<Utc>), Vec<Mark>> = HashMap::new();
        for mark in gathered {
            partitions
                .entry((mark.tenant.clone(), mark.bucket))
                .or_default()
                .push(mark);
        }
        let writes = partitions.into_values().map(|marks| {
            let session = session.clone();
            let statement = statement.clone();
            async move {
                let result = write_partition_marks(&session, &statement, &marks).await;
                for mark in marks {
                    let _ = mark.done.send(result.clone());
                }
            }
        });
        futures::future::join_all(writes).await;
    }
}

/// The marks of one intents partition in one unlogged batch (a single mutation).
async fn write_partition_marks(
    session: &Session,
    statement: &PreparedStatement,
    marks: &[Mark],
) -> Result<(), String> {
    let mut batch = Batch::new(BatchType::Unlogged);
    batch.set_is_idempotent(true);
    let mut values = Vec::with_capacity(marks.len());
    for mark in marks {
        batch.append_statement(statement.clone());
        values.push((
            mark.tenant.as_str(),
            mark.bucket,
            ORDER_AGGREGATE,
            mark.id,
            mark.version,
        ));
    }
    session
        .batch(&batch, values)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn unavailable(e: impl std::fmt::Display) -> CommandError {
    CommandError::Unavailable("the CQL database", e.to_string())
}

fn internal(e: impl std::fmt::Display) -> CommandError {
    CommandError::Internal(e.to_string())
}

impl CqlStore {
    pub async fn new(session: Arc<Session>, settings: &infra::Settings) -> anyhow::Result<Self> {
        // Tables are qualified with the keyspace: prepared statements must not depend on `USE`.
        let keyspace = settings.cql.keyspace.clone();
        let prepare = |cql: &'static str| {
            let session = session.clone();
            let cql = [
                "aggregates",
                "publish_intents",
                "sweeper_progress",
                "tenants",
            ]
            .iter()
            .fold(cql.to_string(), |cql, table| {
                cql.replace(&format!(" {table} "), &format!(" {keyspace}.{table} "))
            });
            async move {
                session
                    .prepare(cql.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("preparing {cql}: {e}"))
            }
        };
        const LOAD: &str = "SELECT version, state, partition, pending, recent_commands \
             FROM aggregates WHERE tenant_id = ? AND aggregate_type = ? AND aggregate_id = ?";
        let mut load_serial = prepare(LOAD).await?;
        load_serial.set_consistency(
            match infra::cql::serial_consistency(&settings.cql.serial_consistency)? {
                SerialConsistency::Serial => Consistency::Serial,
                SerialConsistency::LocalSerial => Consistency::LocalSerial,
            },
        );
        let statements = Statements {
            load: prepare(LOAD).await?,
            load_serial,
            insert: prepare(
                "INSERT INTO aggregates (tenant_id, aggregate_type, aggregate_id, version, state, \
                 partition, pending, recent_commands, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
            )
            .await?,
            update: prepare(
                "UPDATE aggregates SET version = ?, state = ?, pending = ?, recent_commands = ?, \
                 updated_at = ? WHERE tenant_id = ? AND aggregate_type = ? AND aggregate_id = ? \
                 IF version = ?",
            )
            .await?,
            mark_published: prepare(
                "UPDATE publish_intents SET published = true WHERE tenant_id = ? AND bucket = ? \
                 AND aggregate_type = ? AND aggregate_id = ? AND version = ?",
            )
            .await?,
            insert_intent: prepare(
                "INSERT INTO publish_intents (tenant_id, bucket, aggregate_type, aggregate_id, \
                 version, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .await?,
            intent_published: prepare(
                "SELECT published FROM publish_intents WHERE tenant_id = ? AND bucket = ? \
                 AND aggregate_type = ? AND aggregate_id = ? AND version = ?",
            )
            .await?,
            select_intents: prepare(
                "SELECT aggregate_type, aggregate_id, version, created_at, published \
                 FROM publish_intents WHERE tenant_id = ? AND bucket = ?",
            )
            .await?,
            load_progress: prepare("SELECT swept_until FROM sweeper_progress WHERE tenant_id = ?")
                .await?,
            // Timestamped with the position itself: racing sweepers can only move it forward.
            save_progress: prepare(
                "UPDATE sweeper_progress USING TIMESTAMP ? SET swept_until = ? WHERE tenant_id = ?",
            )
            .await?,
            register_tenant: prepare("INSERT INTO tenants (topic, tenant_id) VALUES (?, ?)")
                .await?,
            select_tenants: prepare("SELECT tenant_id FROM tenants WHERE topic = ?").await?,
        };
        let (marks, queued) = mpsc::unbounded_channel();
        tokio::spawn(write_marks(
            session.clone(),
            statements.mark_published.clone(),
            queued,
        ));
        Ok(Self {
            session,
            statements,
            topic: settings.kafka.topic.clone(),
            marks,
        })
    }

    /// Whether the intent of the batch ending at `version` (written at `at`) is marked published.
    /// A missing intent (expired) counts as unpublished: republishing is always safe.
    async fn intent_is_published(
        &self,
        tenant: &str,
        id: Uuid,
        at: DateTime<Utc>,
        version: i64,
    ) -> Result<bool, CommandError> {
        let result = self
            .session
            .execute_unpaged(
                &self.statements.intent_published,
                (tenant, bucket_of(at), ORDER_AGGREGATE, id, version),
            )
            .await
            .map_err(unavailable)?;
        Ok(result
            .into_rows_result()
            .map_err(internal)?
            .maybe_first_row::<(Option<bool>,)>()
            .map_err(internal)?
            .and_then(|(p,)| p)
            .unwrap_or(false))
    }

    async fn lwt(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<bool, CommandError> {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(unavailable)?;
        let row: Option<Row> = result
            .into_rows_result()
            .map_err(internal)?
            .maybe_first_row::<Row>()
            .map_err(internal)?;
        Ok(matches!(
            row.as_ref().and_then(|r| r.columns.first()),
            Some(Some(CqlValue::Boolean(true)))
        ))
    }
}

#[async_trait]
impl AggregateStore for CqlStore {
    async fn register_tenant(&self, tenant: &str) -> Result<(), CommandError> {
        self.session
            .execute_unpaged(&self.statements.register_tenant, (&self.topic, tenant))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn tenants(&self) -> Result<Vec<String>, CommandError> {
        let result = self
            .session
            .execute_unpaged(&self.statements.select_tenants, (&self.topic,))
            .await
            .map_err(unavailable)?;
        let rows = result.into_rows_result().map_err(internal)?;
        let mut tenants = Vec::new();
        for row in rows.rows::<(String,)>().map_err(internal)? {
            tenants.push(row.map_err(internal)?.0);
        }
        Ok(tenants)
    }

    async fn load(&self, tenant: &str, id: Uuid, read: Read) -> Result<Option<Head>, CommandError> {
        type RowT = (
            Option<i64>,
            Option<String>,
            Option<i32>,
            Option<String>,
            Option<HashMap<String, String>>,
        );
        let statement = match read {
            Read::Quorum => &self.statements.load,
            Read::Serial => &self.statements.load_serial,
        };
        let result = self
            .session
            .execute_unpaged(statement, (tenant, ORDER_AGGREGATE, id))
            .await
            .map_err(unavailable)?;
        let row = result
            .into_rows_result()
            .map_err(internal)?
            .maybe_first_row::<RowT>()
            .map_err(internal)?;
        let Some((version, state, partition, pending, recent)) = row else {
            return Ok(None);
        };
        let state: Order = serde_json::from_str(state.as_deref().unwrap_or("{}"))
            .map_err(|e| CommandError::Internal(format!("stored state of {id}: {e}")))?;
        let pending: Vec<EventEnvelope> = match pending.as_deref() {
            Some(p) if !p.is_empty() => serde_json::from_str(p)
                .map_err(|e| CommandError::Internal(format!("pending batch of {id}: {e}")))?,
            _ => Vec::new(),
        };
        let version = version.unwrap_or(0);
        let pending_published = match pending.last() {
            Some(last) => {
                self.intent_is_published(tenant, id, last.occurred_at, version)
                    .await?
            }
            None => true,
        };
        Ok(Some(Head {
            version,
            state,
            partition: partition.unwrap_or(0),
            pending,
            pending_published,
            recent: recent.unwrap_or_default(),
        }))
    }

    async fn write_intent(
        &self,
        tenant: &str,
        id: Uuid,
        version: i64,
        at: DateTime<Utc>,
    ) -> Result<(), CommandError> {
        self.session
            .execute_unpaged(
                &self.statements.insert_intent,
                (tenant, bucket_of(at), ORDER_AGGREGATE, id, version, at),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn commit(
        &self,
        tenant: &str,
        id: Uuid,
        expected: i64,
        row: NewRow<'_>,
    ) -> Result<bool, CommandError> {
        let state = serde_json::to_string(row.state).map_err(internal)?;
        let pending = serde_json::to_string(row.pending).map_err(internal)?;
        if expected == 0 {
            self.lwt(
                &self.statements.insert,
                (
                    tenant,
                    ORDER_AGGREGATE,
                    id,
                    row.version,
                    &state,
                    row.partition,
                    &pending,
                    row.recent,
                    row.at,
                    row.at,
                ),
            )
            .await
        } else {
            self.lwt(
                &self.statements.update,
                (
                    row.version,
                    &state,
                    &pending,
                    row.recent,
                    row.at,
                    tenant,
                    ORDER_AGGREGATE,
                    id,
                    expected,
                ),
            )
            .await
        }
    }

    async fn mark_published(
        &self,
        tenant: &str,
        id: Uuid,
        version: i64,
        at: DateTime<Utc>,
    ) -> Result<(), CommandError> {
        let (done, written) = oneshot::channel();
        let mark = Mark {
            tenant: tenant.to_string(),
            bucket: bucket_of(at),
            id,
            version,
            done,
        };
        self.marks
            .send(mark)
            .map_err(|_| internal("the intent marking task has ended"))?;
        written
            .await
            .map_err(|_| internal("the intent marking task dropped a mark"))?
            .map_err(unavailable)
    }

    async fn intents(
        &self,
        tenant: &str,
        bucket: DateTime<Utc>,
    ) -> Result<Vec<Intent>, CommandError> {
        type RowT = (String, Uuid, i64, Option<DateTime<Utc>>, Option<bool>);
        let result = self
            .session
            .execute_unpaged(&self.statements.select_intents, (tenant, bucket))
            .await
            .map_err(unavailable)?;
        let rows = result.into_rows_result().map_err(internal)?;
        let mut intents = Vec::new();
        for row in rows.rows::<RowT>().map_err(internal)? {
            let (aggregate_type, aggregate_id, version, created_at, published) =
                row.map_err(internal)?;
            intents.push(Intent {
                aggregate_type,
                aggregate_id,
                version,
                created_at,
                published: published == Some(true),
            });
        }
        Ok(intents)
    }

    async fn sweep_progress(&self, tenant: &str) -> Result<Option<DateTime<Utc>>, CommandError> {
        let result = self
            .session
            .execute_unpaged(&self.statements.load_progress, (tenant,))
            .await
            .map_err(unavailable)?;
        Ok(result
            .into_rows_result()
            .map_err(internal)?
            .maybe_first_row::<(Option<DateTime<Utc>>,)>()
            .map_err(internal)?
            .and_then(|(p,)| p))
    }

    async fn save_sweep_progress(
        &self,
        tenant: &str,
        until: DateTime<Utc>,
    ) -> Result<(), CommandError> {
        self.session
            .execute_unpaged(
                &self.statements.save_progress,
                (until.timestamp_micros(), until, tenant),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
