//! Projection `orders`: `order_detail`, `orders_by_customer` and `sales_by_day`, one set per
//! generation. Every row is written `USING TIMESTAMP <version>` by the projector.

use crate::schema::{Column, Order, Table};
use crate::ProjectionSchema;

pub const NAME: &str = "orders";

/// The current state of each order.
pub mod order_detail {
    use super::*;

    pub const TENANT_ID: &str = "tenant_id";
    pub const ORDER_ID: &str = "order_id";
    pub const CUSTOMER_ID: &str = "customer_id";
    pub const CURRENCY: &str = "currency";
    /// `open` | `paid` | `shipped` | `cancelled`.
    pub const STATUS: &str = "status";
    /// JSON array of `{"sku","quantity","unit_price_cents"}`.
    pub const ITEMS: &str = "items";
    pub const TOTAL_CENTS: &str = "total_cents";
    /// The sequence of the last event applied: what marks events applied.
    pub const VERSION: &str = "version";
    /// `occurred_at` of `OrderPlaced`.
    pub const PLACED_AT: &str = "placed_at";
    /// `occurred_at` of the last event.
    pub const UPDATED_AT: &str = "updated_at";
    /// Set by `PaymentRecorded` (null before).
    pub const PAID_AT: &str = "paid_at";
    pub const PAID_CENTS: &str = "paid_cents";

    /// The primary key.
    pub const KEY: &[&str] = &[TENANT_ID, ORDER_ID];

    pub const TABLE: Table = Table {
        base: "order_detail",
        columns: &[
            Column::new(TENANT_ID, "text"),
            Column::new(ORDER_ID, "uuid"),
            Column::new(CUSTOMER_ID, "uuid"),
            Column::new(CURRENCY, "text"),
            Column::new(STATUS, "text"),
            Column::new(ITEMS, "text"),
            Column::new(TOTAL_CENTS, "bigint"),
            Column::new(VERSION, "bigint"),
            Column::new(PLACED_AT, "timestamp"),
            Column::new(UPDATED_AT, "timestamp"),
            Column::new(PAID_AT, "timestamp"),
            Column::new(PAID_CENTS, "bigint"),
        ],
        partition_key: KEY,
        clustering: &[],
        generational: true,
    };
}

/// Each customer's orders, newest first.
pub mod orders_by_customer {
    use super::*;

    pub const TENANT_ID: &str = "tenant_id";
    pub const CUSTOMER_ID: &str = "customer_id";
    pub const PLACED_AT: &str = "placed_at";
    pub const ORDER_ID: &str = "order_id";
    pub const STATUS: &str = "status";
    pub const TOTAL_CENTS: &str = "total_cents";
    pub const VERSION: &str = "version";

    /// The partition key (a customer of a tenant).
    pub const PARTITION: &[&str] = &[TENANT_ID, CUSTOMER_ID];

    pub const TABLE: Table = Table {
        base: "orders_by_customer",
        columns: &[
            Column::new(TENANT_ID, "text"),
            Column::new(CUSTOMER_ID, "uuid"),
            Column::new(PLACED_AT, "timestamp"),
            Column::new(ORDER_ID, "uuid"),
            Column::new(STATUS, "text"),
            Column::new(TOTAL_CENTS, "bigint"),
            Column::new(VERSION, "bigint"),
        ],
        partition_key: PARTITION,
        clustering: &[(PLACED_AT, Order::Desc), (ORDER_ID, Order::Desc)],
        generational: true,
    };
}

/// One row per paid order on the UTC day of its payment, removed on cancellation.
pub mod sales_by_day {
    use super::*;

    pub const TENANT_ID: &str = "tenant_id";
    pub const DAY: &str = "day";
    pub const ORDER_ID: &str = "order_id";
    pub const REVENUE_CENTS: &str = "revenue_cents";
    pub const VERSION: &str = "version";

    /// The partition key (a day of a tenant).
    pub const PARTITION: &[&str] = &[TENANT_ID, DAY];
    /// The primary key.
    pub const KEY: &[&str] = &[TENANT_ID, DAY, ORDER_ID];

    pub const TABLE: Table = Table {
        base: "sales_by_day",
        columns: &[
            Column::new(TENANT_ID, "text"),
            Column::new(DAY, "date"),
            Column::new(ORDER_ID, "uuid"),
            Column::new(REVENUE_CENTS, "bigint"),
            Column::new(VERSION, "bigint"),
        ],
        partition_key: PARTITION,
        clustering: &[(ORDER_ID, Order::Asc)],
        generational: true,
    };
}

pub const PROJECTION: ProjectionSchema = ProjectionSchema {
    name: NAME,
    tables: &[
        &order_detail::TABLE,
        &orders_by_customer::TABLE,
        &sales_by_day::TABLE,
    ],
    bases: &[
        order_detail::TABLE.base,
        orders_by_customer::TABLE.base,
        sales_by_day::TABLE.base,
    ],
};
