//! The read models, one module per projection, registered in [`all`].
//!
//! A projection is a name, the DDL of its tables for a generation `g` (every table exists once per
//! generation, `<table>_g<g>`, so a rebuild can fill `g + 1` while `g` serves), and a writer bound
//! to one generation that applies a batch: the runtime hands it the batch's events grouped by
//! aggregate, each group in sequence order without duplicates, and the writer folds every group
//! onto its rows with idempotent writes (`USING TIMESTAMP <version>`). The pure fold lives beside
//! the CQL in each module and is unit-tested there.
//!
//! The tables themselves (names, columns, keys, DDL) are described in the `read-models` crate, which
//! query-api and the tests read too; the statements here are built from its column constants.
//!
//! Adding a read model: its tables in `read-models` (a module and a line in `read_models::ALL`), a
//! new `<name>.rs` here implementing [`Projection`], one line in [`all`], and its tables in
//! `READ_MODELS.md`.

mod batched;
pub mod order_history;
pub mod orders;

use std::sync::Arc;

use async_trait::async_trait;
use events::{EventEnvelope, OrderEvent};
use scylla::client::session::Session;
use scylla::errors::{DbError, ExecutionError, PrepareError, RequestAttemptError};
use uuid::Uuid;

/// Every projection this build knows. Register a new one here, with one line.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(orders::Orders),
        Arc::new(order_history::OrderHistory),
    ]
}

/// The projection called `name`, if this build has it.
pub fn by_name(name: &str) -> Option<Arc<dyn Projection>> {
    all().into_iter().find(|p| p.name() == name)
}

/// How many aggregates of one batch are written concurrently.
pub const AGGREGATE_CONCURRENCY: usize = 64;

/// A read model: its tables per generation and how to write a batch into one generation.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Also names the consumer group (`projection.<name>.g<generation>`) and the registry row.
    fn name(&self) -> &'static str;

    /// Base names of the tables; generation `g` of `t` is [`table`]`(t, g)`.
    fn tables(&self) -> &'static [&'static str];

    /// `CREATE TABLE IF NOT EXISTS` statements of generation `generation`.
    fn ddl(&self, generation: i32) -> Vec<String>;

    /// Prepare the statements of one generation (tables of `keyspace`) and return its writer.
    async fn writer(
        &self,
        session: Arc<Session>,
        keyspace: &str,
        generation: i32,
    ) -> anyhow::Result<Arc<dyn ProjectionWriter>>;
}

/// Writes batches into one generation of a projection's tables.
#[async_trait]
pub trait ProjectionWriter: Send + Sync {
    /// Apply every aggregate of a batch (each one's events in sequence order, no duplicates);
    /// one result per aggregate, in the order given. Must be idempotent: applying the same
    /// events again, or older ones after newer ones, changes nothing.
    async fn apply_batch(&self, batch: &[&AggregateEvents]) -> Vec<Result<(), ApplyError>>;

    /// Drop whatever the writer remembers of rows it wrote: called on every rebalance, when
    /// another instance may have written rows of the partitions this one gets back.
    fn forget_cached(&self) {}
}

/// Generation naming (`<base>_g<generation>`, qualified by the keyspace) is the `read-models`
/// crate's, like every table's columns and DDL.
pub use read_models::{qualified, table};

/// One record decoded into a typed event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub envelope: EventEnvelope,
    pub event: OrderEvent,
    /// The envelope JSON exactly as consumed from Kafka.
    pub raw: Arc<str>,
}

/// The events of one aggregate within a batch: sequence order, each sequence once.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateEvents {
    pub tenant_id: String,
    pub aggregate_id: Uuid,
    pub events: Vec<Event>,
}

/// Why applying an aggregate's events failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    /// The database could not be reached or did not answer in time: retried until it is back,
    /// never dead-lettered.
    #[error("CQL unavailable: {0}")]
    Unavailable(String),
    /// The database refused the write, or the stored state cannot be read: retried a bounded
    /// number of times, then the events go to the dead-letter topic.
    #[error("{0}")]
    Rejected(String),
}

impl ApplyError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ApplyError::Unavailable(_))
    }
}

impl From<ExecutionError> for ApplyError {
    fn from(err: ExecutionError) -> Self {
        let permanent = match &err {
            ExecutionError::BadQuery(_) => true,
            ExecutionError::LastAttemptError(RequestAttemptError::SerializationError(_)) => true,
            // A table or keyspace that is missing is the schema's problem, not the event's:
            // wait for it rather than dead-letter every event of the partition.
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                DbError::Invalid,
                message,
            )) => !(message.contains("unconfigured table") || message.contains("does not exist")),
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => matches!(
                db,
                DbError::SyntaxError
                    | DbError::AlreadyExists { .. }
                    | DbError::FunctionFailure { .. }
                    | DbError::Unauthorized
                    | DbError::ConfigError
            ),
            // Timeouts, broken connections, empty pools, overload: the database is (partly) away.
            _ => false,
        };
        if permanent {
            ApplyError::Rejected(err.to_string())
        } else {
            ApplyError::Unavailable(err.to_string())
        }
    }
}

impl From<PrepareError> for ApplyError {
    fn from(err: PrepareError) -> Self {
        ApplyError::Unavailable(err.to_string())
    }
}

/// Reading a stored row failed: its shape does not match what this build expects.
pub(crate) fn rejected(context: &str, err: impl std::fmt::Display) -> ApplyError {
    ApplyError::Rejected(format!("{context}: {err}"))
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Envelopes and events for the projections' tests.

    use super::*;
    use chrono::{DateTime, TimeZone, Utc};
    use events::{EventMetadata, ORDER_AGGREGATE};

    pub fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).unwrap()
    }

    pub fn event(
        order_id: Uuid,
        sequence: u64,
        occurred_at: DateTime<Utc>,
        e: OrderEvent,
    ) -> Event {
        let envelope = EventEnvelope {
            event_id: Uuid::now_v7(),
            tenant_id: events::DEFAULT_TENANT.into(),
            aggregate_type: ORDER_AGGREGATE.into(),
            aggregate_id: order_id,
            sequence,
            event_type: e.event_type().into(),
            schema_version: e.schema_version(),
            occurred_at,
            metadata: EventMetadata::default(),
            payload: e.to_payload(),
        };
        let raw: Arc<str> = String::from_utf8(envelope.to_json()).unwrap().into();
        Event {
            envelope,
            event: e,
            raw,
        }
    }

    pub fn aggregate(order_id: Uuid, events: Vec<Event>) -> AggregateEvents {
        AggregateEvents {
            tenant_id: events::DEFAULT_TENANT.into(),
            aggregate_id: order_id,
            events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_projection_is_registered_once_under_its_name() {
        let names: Vec<_> = all().iter().map(|p| p.name()).collect();
        assert_eq!(names, vec!["orders", "order_history"]);
        assert!(by_name("orders").is_some());
        assert!(by_name("nope").is_none());
    }

    #[test]
    fn every_projection_is_the_one_read_models_describes() {
        let names: Vec<_> = all().iter().map(|p| p.name()).collect();
        let described: Vec<_> = read_models::ALL.iter().map(|p| p.name).collect();
        assert_eq!(names, described);
        for projection in all() {
            let schema = read_models::by_name(projection.name()).unwrap();
            assert_eq!(projection.tables(), schema.bases);
            assert_eq!(projection.ddl(3), schema.ddl(3));
        }
    }

    #[test]
    fn every_table_of_a_generation_carries_the_generation_suffix() {
        for projection in all() {
            let ddl = projection.ddl(7).join("\n");
            for base in projection.tables() {
                assert!(ddl.contains(&format!("{base}_g7 ")), "{base} in {ddl}");
            }
        }
    }

    #[test]
    fn a_timeout_is_unavailability_and_a_refused_statement_is_a_rejection() {
        let timeout = ApplyError::from(ExecutionError::RequestTimeout(
            std::time::Duration::from_secs(1),
        ));
        assert!(timeout.is_unavailable());
        let refused = ApplyError::from(ExecutionError::LastAttemptError(
            RequestAttemptError::DbError(DbError::Invalid, "Mutation too large".into()),
        ));
        assert!(!refused.is_unavailable());
        let missing = ApplyError::from(ExecutionError::LastAttemptError(
            RequestAttemptError::DbError(DbError::Invalid, "unconfigured table x_g1".into()),
        ));
        assert!(missing.is_unavailable());
    }
}
