//! What query-api reads from the outside world, behind two small traits so that handlers, the
//! cache and the `min_version` wait can be tested without a cluster:
//! - [`ReadModels`]: the projector's CQL tables (see `projector/READ_MODELS.md`; tables, columns
//!   and the registry reads come from the `read-models` crate), always read from the projection's
//!   active generation ([`cql::CqlReadModels`] tracks it);
//! - [`EndOffsets`]: Kafka high watermarks, for projection lag, and where a build started
//!   ([`kafka::KafkaEndOffsets`]).

pub mod cql;
pub mod kafka;
#[cfg(test)]
pub mod memory;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

/// Why the store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database or broker did not answer (down, timed out, overloaded): worth retrying.
    #[error("{what}: {detail}")]
    Unavailable { what: &'static str, detail: String },
    /// No generation of this projection has tables yet (the projector has not created them).
    #[error("projection {0} has no readable generation yet")]
    NotReady(&'static str),
    /// A row that does not have the shape of the contract.
    #[error("corrupt data in {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

impl StoreError {
    pub fn unavailable(what: &'static str) -> impl FnOnce(&dyn std::fmt::Display) -> Self {
        move |e| StoreError::Unavailable {
            what,
            detail: e.to_string(),
        }
    }

    pub fn corrupt(what: &'static str) -> impl FnOnce(&dyn std::fmt::Display) -> Self {
        move |e| StoreError::Corrupt {
            what,
            detail: e.to_string(),
        }
    }
}

impl From<read_models::ReadError> for StoreError {
    fn from(error: read_models::ReadError) -> Self {
        match error {
            read_models::ReadError::Unavailable { what, detail } => {
                StoreError::Unavailable { what, detail }
            }
            read_models::ReadError::Corrupt { what, detail } => {
                StoreError::Corrupt { what, detail }
            }
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One row of `order_detail_g{g}`, with `items` still the JSON text the projector wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderRow {
    /// The generation the row was read from (cache keys carry it).
    pub generation: i32,
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub currency: String,
    pub status: String,
    pub items_json: String,
    pub total_cents: i64,
    pub version: i64,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One row of `orders_by_customer_g{g}`.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerOrderRow {
    pub order_id: Uuid,
    pub status: String,
    pub total_cents: i64,
    pub placed_at: DateTime<Utc>,
    pub version: i64,
}

/// The clustering key of `orders_by_customer`: where a page ends and the next one starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomerOrderKey {
    pub placed_at_ms: i64,
    pub order_id: Uuid,
}

/// The sum of one day partition of `sales_by_day_g{g}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaySales {
    pub day: NaiveDate,
    pub orders_paid: i64,
    pub revenue_cents: i64,
}

/// One row of `projections` with the offsets of its active generation, the generation under
/// construction if any, and the projection's `projection_control` row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProjectionRecord {
    pub name: String,
    pub generation: i32,
    pub state: String,
    /// partition → next offset to apply.
    pub offsets: BTreeMap<i32, i64>,
    pub building: Option<BuildRecord>,
    /// Operators' pause (none: never paused nor resumed).
    pub control: Option<read_models::ControlState>,
}

/// A generation being built beside the active one.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildRecord {
    pub generation: i32,
    pub kind: read_models::BuildKind,
    /// `--from` of the build: it was seeded with the first offsets at that time (none: with the
    /// start of the topic).
    pub from: Option<DateTime<Utc>>,
    /// partition → next offset to apply, of the generation being built.
    pub offsets: BTreeMap<i32, i64>,
}

#[async_trait]
pub trait ReadModels: Send + Sync + 'static {
    /// The generation of the `orders` projection reads go to now, if one is readable.
    fn orders_generation(&self) -> Option<i32>;

    /// `None` when the order has no (complete) row. Every read is of one tenant's rows.
    async fn order_detail(&self, tenant: &str, order_id: Uuid) -> StoreResult<Option<OrderRow>>;

    /// Newest first, strictly after `after` when given, at most `limit` rows.
    async fn customer_orders(
        &self,
        tenant: &str,
        customer_id: Uuid,
        after: Option<CustomerOrderKey>,
        limit: usize,
    ) -> StoreResult<Vec<CustomerOrderRow>>;

    /// Sales of each asked day (zero rows for days without sales), any order.
    async fn sales(&self, tenant: &str, days: Vec<NaiveDate>) -> StoreResult<Vec<DaySales>>;

    /// Stored envelopes (JSON text) of one order in sequence order; empty when unknown.
    async fn order_events(&self, tenant: &str, order_id: Uuid) -> StoreResult<Vec<String>>;

    /// Every registered projection and the offsets of its active generation on `topic`.
    async fn projections(&self, topic: &str) -> StoreResult<Vec<ProjectionRecord>>;

    /// How far the `orders` projection's active generation got on `topic`, as one number that
    /// grows every time the projector records a batch (the sum of its next offsets), so that a
    /// reader waiting for a view to change re-reads it only after something was applied. `None`
    /// when the store cannot tell: readers then poll on a timer.
    async fn orders_progress(&self, _topic: &str) -> StoreResult<Option<i64>> {
        Ok(None)
    }
}

#[async_trait]
pub trait EndOffsets: Send + Sync + 'static {
    /// partition → high watermark (offset of the next record to be written).
    async fn end_offsets(&self, topic: &str) -> StoreResult<BTreeMap<i32, i64>>;

    /// partition → the offset a build from `from` was seeded with: the first offset at or after
    /// that time (the high watermark when there is none), or the start of the log without `from`.
    /// The same lookup `projector rebuild` and `projector shadow` seed their generation with.
    async fn start_offsets(
        &self,
        topic: &str,
        from: Option<DateTime<Utc>>,
    ) -> StoreResult<BTreeMap<i32, i64>>;
}
