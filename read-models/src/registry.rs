//! The projection registry: which generation of each projection serves reads and which one is
//! being built (`projections`), the offsets each generation applied up to (`projection_offsets`),
//! and operators' pause of a projection (`projection_control`). The tables are created by the migrations in `infra/migrations/`; the
//! descriptions here are checked against them by a unit test.
//!
//! [`RegistryReader`] holds the reads every part needs (the projector's service loop and rebuilds,
//! query-api, the tests); the projector's own writes (claims, switches, offsets) stay in
//! `projector::registry`, built from the column names here.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use tokio::sync::OnceCell;

use crate::schema::{equal, list, Column, Order, Table};

/// `projections.state` of a projection whose only generation in use serves reads.
pub const LIVE: &str = "live";
/// A new generation is being built by `projector rebuild` and the service instances.
pub const REBUILDING: &str = "rebuilding";
/// A shadow generation is being built by `projector shadow` only (never by service instances).
pub const SHADOWING: &str = "shadowing";

/// `projections`: one row per projection.
pub mod projections {
    use super::*;

    pub const NAME: &str = "name";
    pub const ACTIVE_GENERATION: &str = "active_generation";
    pub const BUILDING_GENERATION: &str = "building_generation";
    /// [`LIVE`], [`REBUILDING`] or [`SHADOWING`].
    pub const STATE: &str = "state";
    pub const REBUILD_FROM: &str = "rebuild_from";
    pub const UPDATED_AT: &str = "updated_at";

    pub const TABLE: Table = Table {
        base: "projections",
        columns: &[
            Column::new(NAME, "text"),
            Column::new(ACTIVE_GENERATION, "int"),
            Column::new(BUILDING_GENERATION, "int"),
            Column::new(STATE, "text"),
            Column::new(REBUILD_FROM, "timestamp"),
            Column::new(UPDATED_AT, "timestamp"),
        ],
        partition_key: &[NAME],
        clustering: &[],
        generational: false,
    };
}

/// `projection_offsets`: per projection, generation, topic and partition, the next offset to apply
/// (last applied + 1).
pub mod projection_offsets {
    use super::*;

    pub const PROJECTION: &str = "projection";
    pub const GENERATION: &str = "generation";
    pub const TOPIC: &str = "topic";
    pub const PARTITION: &str = "partition";
    pub const NEXT_OFFSET: &str = "next_offset";
    pub const UPDATED_AT: &str = "updated_at";

    pub const TABLE: Table = Table {
        base: "projection_offsets",
        columns: &[
            Column::new(PROJECTION, "text"),
            Column::new(GENERATION, "int"),
            Column::new(TOPIC, "text"),
            Column::new(PARTITION, "int"),
            Column::new(NEXT_OFFSET, "bigint"),
            Column::new(UPDATED_AT, "timestamp"),
        ],
        partition_key: &[PROJECTION, GENERATION],
        clustering: &[(TOPIC, Order::Asc), (PARTITION, Order::Asc)],
        generational: false,
    };
}

/// `projection_control`: operators' pause of a projection, with who changed it last and why.
pub mod projection_control {
    use super::*;

    pub const PROJECTION: &str = "projection";
    pub const PAUSED: &str = "paused";
    pub const CHANGED_BY: &str = "changed_by";
    pub const REASON: &str = "reason";
    pub const CHANGED_AT: &str = "changed_at";

    pub const TABLE: Table = Table {
        base: "projection_control",
        columns: &[
            Column::new(PROJECTION, "text"),
            Column::new(PAUSED, "boolean"),
            Column::new(CHANGED_BY, "text"),
            Column::new(REASON, "text"),
            Column::new(CHANGED_AT, "timestamp"),
        ],
        partition_key: &[PROJECTION],
        clustering: &[],
        generational: false,
    };
}

/// Every registry table.
pub const TABLES: &[&Table] = &[
    &projections::TABLE,
    &projection_offsets::TABLE,
    &projection_control::TABLE,
];

/// One `projections` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionState {
    pub name: String,
    pub active_generation: i32,
    pub building_generation: Option<i32>,
    pub state: String,
    pub rebuild_from: Option<DateTime<Utc>>,
}

/// What kind of build a generation under construction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildKind {
    /// `projector rebuild`: built by the service instances too, switched to when caught up with
    /// the end of the topic.
    Rebuilding,
    /// `projector shadow`: built by that command only, up to the live generation's offsets.
    Shadowing,
}

impl BuildKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildKind::Rebuilding => REBUILDING,
            BuildKind::Shadowing => SHADOWING,
        }
    }
}

impl ProjectionState {
    /// The generations a service instance consumes into: the active one, and the one being
    /// rebuilt. A shadow generation is left out: only the `projector shadow` process builds it.
    pub fn generations(&self) -> Vec<i32> {
        let mut generations = vec![self.active_generation];
        if let Some(building) = self.building_generation {
            if building != self.active_generation && self.state != SHADOWING {
                generations.push(building);
            }
        }
        generations
    }

    /// The generation under construction and its kind, if any.
    pub fn building(&self) -> Option<(i32, BuildKind)> {
        let building = self.building_generation?;
        if building == self.active_generation {
            return None;
        }
        let kind = if self.state == SHADOWING {
            BuildKind::Shadowing
        } else {
            BuildKind::Rebuilding
        };
        Some((building, kind))
    }
}

/// One `projection_control` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlState {
    pub projection: String,
    pub paused: bool,
    pub changed_by: Option<String>,
    pub reason: Option<String>,
    pub changed_at: Option<DateTime<Utc>>,
}

/// Why a registry read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The database did not answer (down, timed out, overloaded): worth retrying.
    #[error("{what}: {detail}")]
    Unavailable { what: &'static str, detail: String },
    /// A row that does not have the shape described here.
    #[error("corrupt data in {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

pub type ReadResult<T> = Result<T, ReadError>;

fn unavailable(what: &'static str) -> impl FnOnce(&dyn std::fmt::Display) -> ReadError {
    move |e| ReadError::Unavailable {
        what,
        detail: e.to_string(),
    }
}

fn corrupt(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> ReadError {
    move |e| ReadError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

/// The text of every registry statement, for a keyspace (the readers prepare them; tests check
/// each against the tables).
pub mod statements {
    use super::*;

    const STATE_COLUMNS: &[&str] = &[
        projections::NAME,
        projections::ACTIVE_GENERATION,
        projections::BUILDING_GENERATION,
        projections::STATE,
        projections::REBUILD_FROM,
    ];
    const CONTROL_COLUMNS: &[&str] = &[
        projection_control::PROJECTION,
        projection_control::PAUSED,
        projection_control::CHANGED_BY,
        projection_control::REASON,
        projection_control::CHANGED_AT,
    ];

    pub fn select_projection(ks: &str) -> String {
        format!(
            "SELECT {} FROM {} WHERE {}",
            list(STATE_COLUMNS),
            projections::TABLE.qualified(ks, 0),
            equal(&[projections::NAME])
        )
    }

    pub fn select_projections(ks: &str) -> String {
        format!(
            "SELECT {} FROM {}",
            list(STATE_COLUMNS),
            projections::TABLE.qualified(ks, 0)
        )
    }

    pub fn select_offsets(ks: &str) -> String {
        format!(
            "SELECT {} FROM {} WHERE {}",
            list(&[
                projection_offsets::PARTITION,
                projection_offsets::NEXT_OFFSET
            ]),
            projection_offsets::TABLE.qualified(ks, 0),
            equal(&[
                projection_offsets::PROJECTION,
                projection_offsets::GENERATION,
                projection_offsets::TOPIC
            ])
        )
    }

    pub fn select_controls(ks: &str) -> String {
        format!(
            "SELECT {} FROM {}",
            list(CONTROL_COLUMNS),
            projection_control::TABLE.qualified(ks, 0)
        )
    }

    pub fn select_control(ks: &str) -> String {
        format!(
            "{} WHERE {}",
            select_controls(ks),
            equal(&[projection_control::PROJECTION])
        )
    }

    /// Every statement above.
    pub fn all(ks: &str) -> Vec<String> {
        vec![
            select_projection(ks),
            select_projections(ks),
            select_offsets(ks),
            select_controls(ks),
            select_control(ks),
        ]
    }
}

type StateColumns = (
    String,
    Option<i32>,
    Option<i32>,
    Option<String>,
    Option<DateTime<Utc>>,
);

fn state_of((name, active, building, state, rebuild_from): StateColumns) -> ProjectionState {
    ProjectionState {
        name,
        // A row without one is at the generation every projection starts at.
        active_generation: active.unwrap_or(1),
        building_generation: building,
        state: state.unwrap_or_else(|| LIVE.to_string()),
        rebuild_from,
    }
}

type ControlColumns = (
    String,
    Option<bool>,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
);

fn control_of(
    (projection, paused, changed_by, reason, changed_at): ControlColumns,
) -> ControlState {
    ControlState {
        projection,
        paused: paused.unwrap_or(false),
        changed_by,
        reason,
        changed_at,
    }
}

/// Decode `(partition, next_offset)` rows; partitions without an offset are left out.
pub fn offsets_of(rows: impl IntoIterator<Item = (i32, Option<i64>)>) -> BTreeMap<i32, i64> {
    rows.into_iter()
        .filter_map(|(partition, next)| Some((partition, next?)))
        .collect()
}

#[derive(Default)]
struct Prepared {
    projection: OnceCell<PreparedStatement>,
    projections: OnceCell<PreparedStatement>,
    offsets: OnceCell<PreparedStatement>,
    control: OnceCell<PreparedStatement>,
    controls: OnceCell<PreparedStatement>,
}

/// The registry reads, over a session, for one keyspace. Statements are prepared on first use (a
/// failed prepare is tried again on the next read); cheap to clone.
#[derive(Clone)]
pub struct RegistryReader {
    session: Arc<Session>,
    keyspace: String,
    prepared: Arc<Prepared>,
}

impl RegistryReader {
    pub fn new(session: Arc<Session>, keyspace: &str) -> Self {
        Self {
            session,
            keyspace: keyspace.to_string(),
            prepared: Arc::new(Prepared::default()),
        }
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    async fn prepared<'a>(
        &self,
        cell: &'a OnceCell<PreparedStatement>,
        cql: impl FnOnce(&str) -> String,
        what: &'static str,
    ) -> ReadResult<&'a PreparedStatement> {
        cell.get_or_try_init(|| async {
            let mut statement = self
                .session
                .prepare(cql(&self.keyspace))
                .await
                .map_err(|e| unavailable(what)(&e))?;
            statement.set_is_idempotent(true);
            Ok(statement)
        })
        .await
    }

    async fn rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
        what: &'static str,
    ) -> ReadResult<Vec<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| unavailable(what)(&e))?;
        let rows = result.into_rows_result().map_err(|e| corrupt(what)(&e))?;
        let rows = rows
            .rows::<R>()
            .map_err(|e| corrupt(what)(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt(what)(&e));
        rows
    }

    /// The `projections` row of `name`.
    pub async fn projection(&self, name: &str) -> ReadResult<Option<ProjectionState>> {
        let what = "reading projections";
        let statement = self
            .prepared(
                &self.prepared.projection,
                statements::select_projection,
                what,
            )
            .await?;
        let rows: Vec<StateColumns> = self.rows(statement, (name,), what).await?;
        Ok(rows.into_iter().next().map(state_of))
    }

    /// Every `projections` row, by name.
    pub async fn projections(&self) -> ReadResult<Vec<ProjectionState>> {
        let what = "reading projections";
        let statement = self
            .prepared(
                &self.prepared.projections,
                statements::select_projections,
                what,
            )
            .await?;
        let rows: Vec<StateColumns> = self.rows(statement, (), what).await?;
        let mut states: Vec<_> = rows.into_iter().map(state_of).collect();
        states.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(states)
    }

    /// partition → next offset to apply, of one generation of a projection on `topic`.
    pub async fn offsets(
        &self,
        projection: &str,
        generation: i32,
        topic: &str,
    ) -> ReadResult<BTreeMap<i32, i64>> {
        let what = "reading projection_offsets";
        let statement = self
            .prepared(&self.prepared.offsets, statements::select_offsets, what)
            .await?;
        let rows: Vec<(i32, Option<i64>)> = self
            .rows(statement, (projection, generation, topic), what)
            .await?;
        Ok(offsets_of(rows))
    }

    /// The `projection_control` row of `projection` (none: never paused).
    pub async fn control(&self, projection: &str) -> ReadResult<Option<ControlState>> {
        let what = "reading projection_control";
        let statement = self
            .prepared(&self.prepared.control, statements::select_control, what)
            .await?;
        let rows: Vec<ControlColumns> = self.rows(statement, (projection,), what).await?;
        Ok(rows.into_iter().next().map(control_of))
    }

    /// Every `projection_control` row.
    pub async fn controls(&self) -> ReadResult<Vec<ControlState>> {
        let what = "reading projection_control";
        let statement = self
            .prepared(&self.prepared.controls, statements::select_controls, what)
            .await?;
        let rows: Vec<ControlColumns> = self.rows(statement, (), what).await?;
        Ok(rows.into_iter().map(control_of).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{check_statement, declared_columns};

    fn state(active: i32, building: Option<i32>, state: &str) -> ProjectionState {
        ProjectionState {
            name: "orders".into(),
            active_generation: active,
            building_generation: building,
            state: state.into(),
            rebuild_from: None,
        }
    }

    #[test]
    fn a_rebuilding_projection_runs_both_its_generations() {
        assert_eq!(state(2, Some(3), REBUILDING).generations(), vec![2, 3]);
        assert_eq!(state(2, None, LIVE).generations(), vec![2]);
        assert_eq!(
            state(2, Some(3), REBUILDING).building(),
            Some((3, BuildKind::Rebuilding))
        );
        assert_eq!(state(2, None, LIVE).building(), None);
    }

    #[test]
    fn a_shadow_generation_is_not_run_by_the_service_instances() {
        let shadowing = state(2, Some(3), SHADOWING);
        assert_eq!(shadowing.generations(), vec![2]);
        assert_eq!(shadowing.building(), Some((3, BuildKind::Shadowing)));
    }

    #[test]
    fn offsets_without_a_value_are_left_out() {
        assert_eq!(
            offsets_of([(0, Some(4)), (1, None), (2, Some(0))]),
            BTreeMap::from([(0, 4), (2, 0)])
        );
    }

    #[test]
    fn every_registry_statement_names_only_columns_of_its_table() {
        for statement in statements::all("ks") {
            assert_eq!(check_statement(&statement, TABLES), Ok(()));
        }
    }

    /// The migrations create what is described here: every column with its type (a migration may
    /// have more columns than the readers know of).
    #[test]
    fn the_migrations_create_every_registry_column() {
        let created: Vec<String> = infra::migrations::MIGRATIONS
            .iter()
            .flat_map(|(_, _, source)| infra::migrations::statements(source))
            .collect();
        for table in TABLES {
            let prefix = format!("CREATE TABLE IF NOT EXISTS {} ", table.base);
            let ddl = created
                .iter()
                .find(|s| s.starts_with(&prefix) || s.starts_with(&format!("{prefix}(")))
                .unwrap_or_else(|| panic!("no migration creates {}", table.base));
            let declared = declared_columns(ddl);
            for column in table.columns {
                assert!(
                    declared
                        .iter()
                        .any(|(name, ty)| name == column.name && ty == column.cql_type),
                    "{}.{} {} is not created by the migrations: {declared:?}",
                    table.base,
                    column.name,
                    column.cql_type
                );
            }
        }
    }
}
