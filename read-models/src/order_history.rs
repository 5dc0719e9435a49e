//! Projection `order_history`: every envelope of an order, keyed by its sequence, exactly as it
//! was consumed from Kafka; one table per generation.

use crate::schema::{Column, Order, Table};
use crate::ProjectionSchema;

pub const NAME: &str = "order_history";

/// The events of each order.
pub mod order_events {
    use super::*;

    pub const TENANT_ID: &str = "tenant_id";
    pub const AGGREGATE_ID: &str = "aggregate_id";
    pub const SEQUENCE: &str = "sequence";
    /// The envelope JSON exactly as consumed from Kafka.
    pub const ENVELOPE: &str = "envelope";

    /// The partition key (an order of a tenant).
    pub const PARTITION: &[&str] = &[TENANT_ID, AGGREGATE_ID];

    pub const TABLE: Table = Table {
        base: "order_events",
        columns: &[
            Column::new(TENANT_ID, "text"),
            Column::new(AGGREGATE_ID, "uuid"),
            Column::new(SEQUENCE, "bigint"),
            Column::new(ENVELOPE, "text"),
        ],
        partition_key: PARTITION,
        clustering: &[(SEQUENCE, Order::Asc)],
        generational: true,
    };
}

pub const PROJECTION: ProjectionSchema = ProjectionSchema {
    name: NAME,
    tables: &[&order_events::TABLE],
    bases: &[order_events::TABLE.base],
};
