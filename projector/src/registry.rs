//! The projection registry in CQL: which generation of each projection serves reads and which one
//! is being built (`projections`), the tables of each generation, and the Kafka offsets each
//! generation has applied up to (`projection_offsets`).
//!
//! Every change of a `projections` row is a lightweight transaction, so several instances (and a
//! rebuild running beside them) agree on one answer. Offsets are plain writes made after the view
//! writes they describe; at worst an offset goes back a little and some events are applied twice,
//! which the projections' idempotence makes harmless.
//!
//! The tables and their reads are the `read-models` crate's ([`read_models::registry`]), shared with
//! query-api and the tests; [`ProjectionState`] and the state names are re-exported from there.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

use read_models::registry::{projections as columns, RegistryReader};

use crate::projections::{qualified, table, Projection};

pub use read_models::registry::{ProjectionState, LIVE, REBUILDING, SHADOWING};

#[derive(Clone)]
pub struct Registry {
    session: Arc<Session>,
    keyspace: String,
    reader: RegistryReader,
}

impl Registry {
    pub fn new(session: Arc<Session>, keyspace: &str) -> Self {
        Self {
            reader: RegistryReader::new(session.clone(), keyspace),
            session,
            keyspace: keyspace.to_string(),
        }
    }

    /// The registry reads (`projections`, `projection_offsets`, `projection_control`).
    pub fn reader(&self) -> &RegistryReader {
        &self.reader
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    pub async fn get(&self, name: &str) -> anyhow::Result<Option<ProjectionState>> {
        self.reader
            .projection(name)
            .await
            .with_context(|| format!("reading projection {name}"))
    }

    /// Register a projection on first sight (generation 1, live) and make sure the tables of the
    /// generations in use exist.
    pub async fn ensure(&self, projection: &dyn Projection) -> anyhow::Result<ProjectionState> {
        let name = projection.name();
        let inserted = applied(
            self.session
                .query_unpaged(
                    format!(
                        "INSERT INTO {}.projections ({}, {}, {}, {}) VALUES (?, 1, ?, ?) \
                         IF NOT EXISTS",
                        self.keyspace,
                        columns::NAME,
                        columns::ACTIVE_GENERATION,
                        columns::STATE,
                        columns::UPDATED_AT
                    ),
                    (name, LIVE, Utc::now()),
                )
                .await
                .with_context(|| format!("registering projection {name}"))?,
        )?;
        if inserted {
            tracing::info!(projection = name, generation = 1, "projection registered");
        }
        let Some(state) = self.get(name).await? else {
            bail!("projection {name} vanished right after its registration");
        };
        for generation in state.generations() {
            if !self.tables_exist(projection, generation).await? {
                self.create_tables(projection, generation).await?;
            }
        }
        Ok(state)
    }

    pub async fn tables_exist(
        &self,
        projection: &dyn Projection,
        generation: i32,
    ) -> anyhow::Result<bool> {
        let rows = self
            .session
            .query_unpaged(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
                (self.keyspace.as_str(),),
            )
            .await
            .context("listing tables")?
            .into_rows_result()?;
        let existing = rows
            .rows::<(String,)>()?
            .map(|row| row.map(|(name,)| name))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(projection
            .tables()
            .iter()
            .all(|base| existing.contains(&table(base, generation))))
    }

    pub async fn create_tables(
        &self,
        projection: &dyn Projection,
        generation: i32,
    ) -> anyhow::Result<()> {
        for ddl in projection.ddl(generation) {
            self.session
                .query_unpaged(infra::cql::schema_statement(ddl.as_str()), ())
                .await
                .with_context(|| {
                    format!("creating tables of {} g{generation}", projection.name())
                })?;
        }
        tracing::info!(projection = projection.name(), generation, "tables created");
        Ok(())
    }

    pub async fn drop_tables(
        &self,
        projection: &dyn Projection,
        generation: i32,
    ) -> anyhow::Result<()> {
        for base in projection.tables() {
            let name = qualified(&self.keyspace, base, generation);
            self.session
                .query_unpaged(
                    infra::cql::schema_statement(format!("DROP TABLE IF EXISTS {name}")),
                    (),
                )
                .await
                .with_context(|| format!("dropping {name}"))?;
        }
        tracing::info!(projection = projection.name(), generation, "tables dropped");
        Ok(())
    }

    /// Mark `building` as the generation under construction, if no other rebuild holds the row.
    pub async fn claim_build(
        &self,
        name: &str,
        active: i32,
        building: i32,
        from: Option<DateTime<Utc>>,
    ) -> anyhow::Result<bool> {
        applied(
            self.session
                .query_unpaged(
                    format!(
                        "UPDATE {}.projections SET building_generation = ?, state = ?, \
                         rebuild_from = ?, updated_at = ? WHERE name = ? \
                         IF active_generation = ? AND building_generation = null",
                        self.keyspace
                    ),
                    (building, REBUILDING, from, Utc::now(), name, active),
                )
                .await
                .context("claiming the rebuild")?,
        )
    }

    /// Make `building` the active generation.
    pub async fn switch(&self, name: &str, active: i32, building: i32) -> anyhow::Result<bool> {
        applied(
            self.session
                .query_unpaged(
                    format!(
                        "UPDATE {}.projections SET active_generation = ?, \
                         building_generation = null, state = ?, rebuild_from = null, \
                         updated_at = ? WHERE name = ? \
                         IF active_generation = ? AND building_generation = ?",
                        self.keyspace
                    ),
                    (building, LIVE, Utc::now(), name, active, building),
                )
                .await
                .context("switching generations")?,
        )
    }

    /// Mark `building` as the generation under construction in state `state` (a shadow claims
    /// with `shadowing`), if no rebuild or shadow holds the row and it is live.
    pub async fn claim_as(
        &self,
        name: &str,
        active: i32,
        building: i32,
        from: Option<DateTime<Utc>>,
        state: &str,
    ) -> anyhow::Result<bool> {
        applied(
            self.session
                .query_unpaged(
                    format!(
                        "UPDATE {}.projections SET building_generation = ?, state = ?, \
                         rebuild_from = ?, updated_at = ? WHERE name = ? \
                         IF active_generation = ? AND building_generation = null AND state = ?",
                        self.keyspace
                    ),
                    (building, state, from, Utc::now(), name, active, LIVE),
                )
                .await
                .with_context(|| format!("claiming {name} g{building} ({state})"))?,
        )
    }

    /// Give up the claim on `building` made in state `state`: the projection is live again on
    /// `active`, as if the claim had never been.
    pub async fn release(
        &self,
        name: &str,
        active: i32,
        building: i32,
        state: &str,
    ) -> anyhow::Result<bool> {
        applied(
            self.session
                .query_unpaged(
                    format!(
                        "UPDATE {}.projections SET building_generation = null, state = ?, \
                         rebuild_from = null, updated_at = ? WHERE name = ? \
                         IF active_generation = ? AND building_generation = ? AND state = ?",
                        self.keyspace
                    ),
                    (LIVE, Utc::now(), name, active, building, state),
                )
                .await
                .with_context(|| format!("releasing {name} g{building} ({state})"))?,
        )
    }

    /// [`Registry::switch`], only while the claim on `building` is still in state `state`.
    pub async fn switch_from(
        &self,
        name: &str,
        active: i32,
        building: i32,
        state: &str,
    ) -> anyhow::Result<bool> {
        applied(
            self.session
                .query_unpaged(
                    format!(
                        "UPDATE {}.projections SET active_generation = ?, \
                         building_generation = null, state = ?, rebuild_from = null, \
                         updated_at = ? WHERE name = ? \
                         IF active_generation = ? AND building_generation = ? AND state = ?",
                        self.keyspace
                    ),
                    (building, LIVE, Utc::now(), name, active, building, state),
                )
                .await
                .with_context(|| format!("switching {name} to g{building} ({state})"))?,
        )
    }
}

/// The `[applied]` column of a lightweight transaction's answer.
fn applied(result: QueryResult) -> anyhow::Result<bool> {
    let rows = result.into_rows_result()?;
    let row: Row = rows.first_row()?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => bail!("unexpected LWT answer {other:?}"),
    }
}

/// The offsets of one generation of one projection on one topic.
#[derive(Clone)]
pub struct OffsetStore {
    session: Arc<Session>,
    keyspace: String,
    projection: String,
    generation: i32,
    topic: String,
    select: PreparedStatement,
    upsert: PreparedStatement,
}

impl OffsetStore {
    pub async fn new(
        session: Arc<Session>,
        keyspace: &str,
        projection: &str,
        generation: i32,
        topic: &str,
    ) -> anyhow::Result<Self> {
        let mut select = session
            .prepare(read_models::registry::statements::select_offsets(keyspace))
            .await
            .context("preparing the offsets query")?;
        select.set_is_idempotent(true);
        let mut upsert = session
            .prepare(format!(
                "UPDATE {keyspace}.projection_offsets SET next_offset = ?, updated_at = ? \
                 WHERE projection = ? AND generation = ? AND topic = ? AND partition = ?"
            ))
            .await
            .context("preparing the offsets update")?;
        upsert.set_is_idempotent(true);
        Ok(Self {
            session,
            keyspace: keyspace.to_string(),
            projection: projection.to_string(),
            generation,
            topic: topic.to_string(),
            select,
            upsert,
        })
    }

    /// Next offset to apply, per partition that has one.
    pub async fn load(&self) -> anyhow::Result<BTreeMap<i32, i64>> {
        let rows = self
            .session
            .execute_unpaged(
                &self.select,
                (
                    self.projection.as_str(),
                    self.generation,
                    self.topic.as_str(),
                ),
            )
            .await
            .context("reading projection offsets")?
            .into_rows_result()?;
        let rows = rows
            .rows::<(i32, Option<i64>)>()?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(read_models::registry::offsets_of(rows))
    }

    /// Record the next offsets of some partitions; one single-partition batch.
    pub async fn save(&self, offsets: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        let now = Utc::now();
        let mut values = Vec::with_capacity(offsets.len());
        for (partition, next) in offsets {
            batch.append_statement(self.upsert.clone());
            values.push((
                *next,
                now,
                self.projection.as_str(),
                self.generation,
                self.topic.as_str(),
                *partition,
            ));
        }
        batch.set_is_idempotent(true);
        self.session
            .batch(&batch, values)
            .await
            .context("writing projection offsets")?;
        Ok(())
    }

    /// Forget every offset of this generation (a rebuild starting over).
    pub async fn clear(&self) -> anyhow::Result<()> {
        self.session
            .query_unpaged(
                format!(
                    "DELETE FROM {}.projection_offsets WHERE projection = ? AND generation = ?",
                    self.keyspace
                ),
                (self.projection.as_str(), self.generation),
            )
            .await
            .context("clearing projection offsets")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuilding_projection_runs_both_its_generations() {
        let state = ProjectionState {
            name: "orders".into(),
            active_generation: 2,
            building_generation: Some(3),
            state: REBUILDING.into(),
            rebuild_from: None,
        };
        assert_eq!(state.generations(), vec![2, 3]);
        let live = ProjectionState {
            building_generation: None,
            state: LIVE.into(),
            ..state
        };
        assert_eq!(live.generations(), vec![2]);
        let shadowing = ProjectionState {
            building_generation: Some(3),
            state: SHADOWING.into(),
            ..live
        };
        assert_eq!(
            shadowing.generations(),
            vec![2],
            "only `projector shadow` builds it"
        );
    }
}
