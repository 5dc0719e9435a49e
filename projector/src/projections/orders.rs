//! Projection `orders`: the current state of every order, folded from its events.
//!
//! Per aggregate of a batch: take the `order_detail` row (it carries the version it reflects) —
//! the one this writer wrote last, none when the events start at the order's first, else read
//! from the table ([`start`]) — [`fold`] the events with a higher sequence onto it, then write
//! `order_detail`, the `orders_by_customer` entry and any `sales_by_day` change, all
//! `USING TIMESTAMP <version>`: a write of an older state can never shadow a newer one, whichever
//! order the writes land in, and a replayed event (sequence ≤ version) writes nothing at all.
//!
//! `sales_by_day` holds one row per paid order on the UTC day of its payment; cancelling a paid
//! order deletes that row with the cancellation's version, which is higher than the payment's, so
//! the deletion wins even against a late replay of the payment.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use events::{LineItem, OrderEvent};
use futures::stream::{self, StreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::MaybeUnset;
use uuid::Uuid;

use read_models::orders::{
    order_detail as detail, orders_by_customer as by_customer, sales_by_day,
};
use read_models::schema::{binds, equal, list};

use super::batched::{self, Values, Write};
use super::{
    rejected, AggregateEvents, ApplyError, Projection, ProjectionWriter, AGGREGATE_CONCURRENCY,
};

pub const NAME: &str = read_models::orders::NAME;

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Status {
    #[default]
    Open,
    Paid,
    Shipped,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Paid => "paid",
            Status::Shipped => "shipped",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => Status::Open,
            "paid" => Status::Paid,
            "shipped" => Status::Shipped,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }
}

/// One `order_detail` row. Fields an order gets from `OrderPlaced` stay `None` when a rebuild
/// from a timestamp starts after the order was placed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OrderRow {
    pub tenant_id: String,
    pub order_id: Uuid,
    pub customer_id: Option<Uuid>,
    pub currency: Option<String>,
    pub status: Status,
    pub items: Vec<LineItem>,
    pub total_cents: i64,
    /// Sequence of the last event applied; 0 before the first.
    pub version: i64,
    pub placed_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub paid_cents: Option<i64>,
}

impl OrderRow {
    pub fn new(tenant_id: &str, order_id: Uuid) -> Self {
        Self {
            tenant_id: tenant_id.to_string(),
            order_id,
            ..Self::default()
        }
    }
}

/// A change of the order's `sales_by_day` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SalesChange {
    Record {
        day: NaiveDate,
        revenue_cents: i64,
        version: i64,
    },
    Remove {
        day: NaiveDate,
        version: i64,
    },
}

/// Where the fold of an aggregate's events starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// From this row (`None`: from nothing), without reading the table.
    From(Option<OrderRow>),
    /// From the table's row: it has to be read.
    Read,
}

/// Decide whether folding `aggregate` needs the stored row, given the row this writer cached.
///
/// - A cached row serves when the first event newer than it follows it directly. A gap means the
///   cache may be behind the table (it was folded from a late duplicate of the order's first
///   events, below): the table decides.
/// - Without a cached row, events that run 1, 2, …, k without a gap are the whole history up to
///   k: folded from nothing they give exactly the state at version k, so no read is needed.
///   Whatever the table holds, it can only be that same state or a newer one, and every write is
///   timestamped with its version, so an equal write changes nothing and an older one is
///   shadowed. This spares the read of every new order (and of every order in a rebuild).
pub fn start(cached: Option<OrderRow>, aggregate: &AggregateEvents) -> Start {
    let sequences = || aggregate.events.iter().map(|e| e.envelope.sequence);
    match cached {
        Some(row) => {
            let version = u64::try_from(row.version).unwrap_or(0);
            match sequences().find(|&s| s > version) {
                Some(next) if next != version + 1 => Start::Read,
                _ => Start::From(Some(row)),
            }
        }
        None if !aggregate.events.is_empty()
            && sequences().zip(1u64..).all(|(s, expected)| s == expected) =>
        {
            Start::From(None)
        }
        None => Start::Read,
    }
}

/// The outcome of folding a batch of events onto a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Fold {
    pub row: OrderRow,
    pub sales: Vec<SalesChange>,
    /// How many of the events were newer than the stored row.
    pub applied: usize,
}

/// Fold the events newer than `current` onto it (a new row when there is none). `None` when every
/// event is a duplicate or older than the stored version: nothing is to be written.
pub fn fold(current: Option<OrderRow>, aggregate: &AggregateEvents) -> Option<Fold> {
    let mut row =
        current.unwrap_or_else(|| OrderRow::new(&aggregate.tenant_id, aggregate.aggregate_id));
    let mut sales = Vec::new();
    let mut applied = 0;
    for event in &aggregate.events {
        let sequence = event.envelope.sequence;
        if i64::try_from(sequence).map_or(true, |s| s <= row.version) {
            continue;
        }
        if let Some(change) = apply(&mut row, sequence, event.envelope.occurred_at, &event.event) {
            sales.push(change);
        }
        applied += 1;
    }
    (applied > 0).then_some(Fold {
        row,
        sales,
        applied,
    })
}

/// Apply one event to a row, returning the change of its sales row if any.
pub fn apply(
    row: &mut OrderRow,
    sequence: u64,
    occurred_at: DateTime<Utc>,
    event: &OrderEvent,
) -> Option<SalesChange> {
    let version = i64::try_from(sequence).unwrap_or(i64::MAX);
    row.version = version;
    row.updated_at = Some(occurred_at);
    let mut change = None;
    match event {
        OrderEvent::OrderPlaced {
            customer_id,
            currency,
            items,
            ..
        } => {
            row.customer_id = Some(*customer_id);
            row.currency = Some(currency.clone());
            row.items = items.clone();
            row.status = Status::Open;
            row.placed_at = Some(occurred_at);
        }
        OrderEvent::ItemAdded(line) => {
            match row.items.iter_mut().find(|item| item.sku == line.sku) {
                Some(item) => item.quantity = item.quantity.saturating_add(line.quantity),
                None => row.items.push(line.clone()),
            }
        }
        OrderEvent::ItemRemoved { sku } => row.items.retain(|item| &item.sku != sku),
        OrderEvent::PaymentRecorded { amount_cents, .. } => {
            row.status = Status::Paid;
            row.paid_at = Some(occurred_at);
            row.paid_cents = Some(*amount_cents);
            change = Some(SalesChange::Record {
                day: occurred_at.date_naive(),
                revenue_cents: *amount_cents,
                version,
            });
        }
        OrderEvent::OrderShipped { .. } => row.status = Status::Shipped,
        OrderEvent::OrderCancelled { .. } => {
            // A paid order no longer counts as a sale once cancelled.
            change = row.paid_at.map(|paid_at| SalesChange::Remove {
                day: paid_at.date_naive(),
                version,
            });
            row.status = Status::Cancelled;
        }
    }
    row.total_cents = total_cents(&row.items);
    change
}

pub fn total_cents(items: &[LineItem]) -> i64 {
    items.iter().fold(0i64, |total, item| {
        total.saturating_add(
            item.unit_price_cents
                .saturating_mul(i64::from(item.quantity)),
        )
    })
}

/// The projection's registration.
pub struct Orders;

#[async_trait]
impl Projection for Orders {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        read_models::orders::PROJECTION.bases
    }

    fn ddl(&self, g: i32) -> Vec<String> {
        read_models::orders::PROJECTION.ddl(g)
    }

    async fn writer(
        &self,
        session: Arc<Session>,
        keyspace: &str,
        g: i32,
    ) -> anyhow::Result<Arc<dyn ProjectionWriter>> {
        let cql = Statements::of(keyspace, g);
        let prepare = |cql: String| {
            let session = session.clone();
            async move {
                let mut statement = session.prepare(cql.as_str()).await?;
                statement.set_is_idempotent(true);
                Ok::<_, anyhow::Error>(statement)
            }
        };
        Ok(Arc::new(OrdersWriter {
            select: prepare(cql.select).await?,
            upsert_detail: prepare(cql.upsert_detail).await?,
            upsert_by_customer: prepare(cql.upsert_by_customer).await?,
            insert_sale: prepare(cql.insert_sale).await?,
            delete_sale: prepare(cql.delete_sale).await?,
            session,
            rows: RowCache::default(),
        }))
    }
}

/// `order_detail` columns a stored row is read back with ([`StoredRow`], in this order).
const STORED_COLUMNS: [&str; 10] = [
    detail::CUSTOMER_ID,
    detail::CURRENCY,
    detail::STATUS,
    detail::ITEMS,
    detail::TOTAL_CENTS,
    detail::VERSION,
    detail::PLACED_AT,
    detail::UPDATED_AT,
    detail::PAID_AT,
    detail::PAID_CENTS,
];
/// `order_detail` columns written ([`OrdersWriter::detail_write`] binds them in this order).
const DETAIL_COLUMNS: [&str; 12] = [
    detail::TENANT_ID,
    detail::ORDER_ID,
    detail::CUSTOMER_ID,
    detail::CURRENCY,
    detail::STATUS,
    detail::ITEMS,
    detail::TOTAL_CENTS,
    detail::VERSION,
    detail::PLACED_AT,
    detail::UPDATED_AT,
    detail::PAID_AT,
    detail::PAID_CENTS,
];
/// `orders_by_customer` columns written, in binding order.
const BY_CUSTOMER_COLUMNS: [&str; 7] = [
    by_customer::TENANT_ID,
    by_customer::CUSTOMER_ID,
    by_customer::PLACED_AT,
    by_customer::ORDER_ID,
    by_customer::STATUS,
    by_customer::TOTAL_CENTS,
    by_customer::VERSION,
];
/// `sales_by_day` columns written, in binding order.
const SALE_COLUMNS: [&str; 5] = [
    sales_by_day::TENANT_ID,
    sales_by_day::DAY,
    sales_by_day::ORDER_ID,
    sales_by_day::REVENUE_CENTS,
    sales_by_day::VERSION,
];

/// The text of the writer's statements for one generation, from the `read-models` columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statements {
    pub select: String,
    pub upsert_detail: String,
    pub upsert_by_customer: String,
    pub insert_sale: String,
    pub delete_sale: String,
}

impl Statements {
    pub fn of(keyspace: &str, g: i32) -> Self {
        let detail_table = detail::TABLE.qualified(keyspace, g);
        let by_customer_table = by_customer::TABLE.qualified(keyspace, g);
        let sales = sales_by_day::TABLE.qualified(keyspace, g);
        Self {
            select: format!(
                "SELECT {} FROM {detail_table} WHERE {}",
                list(&STORED_COLUMNS),
                equal(detail::KEY)
            ),
            upsert_detail: format!(
                "INSERT INTO {detail_table} ({}) VALUES ({}) USING TIMESTAMP ?",
                list(&DETAIL_COLUMNS),
                binds(&DETAIL_COLUMNS)
            ),
            upsert_by_customer: format!(
                "INSERT INTO {by_customer_table} ({}) VALUES ({}) USING TIMESTAMP ?",
                list(&BY_CUSTOMER_COLUMNS),
                binds(&BY_CUSTOMER_COLUMNS)
            ),
            insert_sale: format!(
                "INSERT INTO {sales} ({}) VALUES ({}) USING TIMESTAMP ?",
                list(&SALE_COLUMNS),
                binds(&SALE_COLUMNS)
            ),
            delete_sale: format!(
                "DELETE FROM {sales} USING TIMESTAMP ? WHERE {}",
                equal(sales_by_day::KEY)
            ),
        }
    }

    pub fn all(&self) -> [&str; 5] {
        [
            &self.select,
            &self.upsert_detail,
            &self.upsert_by_customer,
            &self.insert_sale,
            &self.delete_sale,
        ]
    }
}

/// The rows this writer wrote last, so that folding the next events of an order needs no read.
/// Valid only while this writer's consumer keeps its partitions: it is emptied on every
/// rebalance ([`ProjectionWriter::forget_cached`]), since another instance may have moved a row
/// on meanwhile.
#[derive(Default)]
struct RowCache(std::sync::Mutex<std::collections::HashMap<(String, Uuid), OrderRow>>);

const ROW_CACHE_CAPACITY: usize = 50_000;

impl RowCache {
    fn get(&self, tenant_id: &str, order_id: Uuid) -> Option<OrderRow> {
        let rows = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rows.get(&(tenant_id.to_string(), order_id)).cloned()
    }

    fn put(&self, row: OrderRow) {
        let mut rows = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (row.tenant_id.clone(), row.order_id);
        if rows.len() >= ROW_CACHE_CAPACITY && !rows.contains_key(&key) {
            // Any entry will do: a miss costs one read.
            if let Some(victim) = rows.keys().next().cloned() {
                rows.remove(&victim);
            }
        }
        rows.insert(key, row);
    }

    fn remove(&self, tenant_id: &str, order_id: Uuid) {
        let mut rows = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rows.remove(&(tenant_id.to_string(), order_id));
    }

    fn clear(&self) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

struct OrdersWriter {
    session: Arc<Session>,
    rows: RowCache,
    select: PreparedStatement,
    upsert_detail: PreparedStatement,
    upsert_by_customer: PreparedStatement,
    insert_sale: PreparedStatement,
    delete_sale: PreparedStatement,
}

type StoredRow = (
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<i64>,
);

fn unset_if_none<T>(value: Option<T>) -> MaybeUnset<T> {
    // Unset (not null) leaves no tombstone; these fields never go back to null once set.
    value.map_or(MaybeUnset::Unset, MaybeUnset::Set)
}

impl OrdersWriter {
    async fn load(&self, tenant_id: &str, order_id: Uuid) -> Result<Option<OrderRow>, ApplyError> {
        let result = self
            .session
            .execute_unpaged(&self.select, (tenant_id, order_id))
            .await?;
        let rows = result
            .into_rows_result()
            .map_err(|e| rejected("reading order_detail", e))?;
        let Some(stored) = rows
            .maybe_first_row::<StoredRow>()
            .map_err(|e| rejected("decoding order_detail", e))?
        else {
            return Ok(None);
        };
        let (
            customer_id,
            currency,
            status,
            items,
            total_cents,
            version,
            placed_at,
            updated_at,
            paid_at,
            paid_cents,
        ) = stored;
        let status = match status.as_deref() {
            None => Status::Open,
            Some(s) => Status::parse(s)
                .ok_or_else(|| rejected("order_detail.status", format!("unknown status {s:?}")))?,
        };
        let items = match items.as_deref() {
            None | Some("") => Vec::new(),
            Some(json) => {
                serde_json::from_str(json).map_err(|e| rejected("order_detail.items", e))?
            }
        };
        Ok(Some(OrderRow {
            tenant_id: tenant_id.to_string(),
            order_id,
            customer_id,
            currency,
            status,
            items,
            total_cents: total_cents.unwrap_or(0),
            version: version.unwrap_or(0),
            placed_at,
            updated_at,
            paid_at,
            paid_cents,
        }))
    }

    /// The state to fold an order's events onto: the row this writer wrote last, no row at all
    /// when the events start at the order's beginning, else the table's (see [`start`]).
    async fn current(&self, aggregate: &AggregateEvents) -> Result<Option<OrderRow>, ApplyError> {
        let (tenant, id) = (aggregate.tenant_id.as_str(), aggregate.aggregate_id);
        match start(self.rows.get(tenant, id), aggregate) {
            Start::From(row) => Ok(row),
            Start::Read => {
                crate::metrics::state_read(NAME);
                self.load(tenant, id).await
            }
        }
    }

    fn detail_write(&self, owner: usize, row: &OrderRow) -> Result<Write<'_>, ApplyError> {
        let items = serde_json::to_string(&row.items).map_err(|e| rejected("items", e))?;
        Ok(Write {
            owner,
            statement: &self.upsert_detail,
            bytes: ROW_BYTES + items.len(),
            values: Box::new((
                row.tenant_id.clone(),
                row.order_id,
                unset_if_none(row.customer_id),
                unset_if_none(row.currency.clone()),
                row.status.as_str(),
                items,
                row.total_cents,
                row.version,
                unset_if_none(row.placed_at),
                unset_if_none(row.updated_at),
                unset_if_none(row.paid_at),
                unset_if_none(row.paid_cents),
                row.version,
            )),
        })
    }

    /// The `orders_by_customer` entry and the `sales_by_day` changes of a fold.
    fn side_writes(&self, owner: usize, fold: &Fold) -> Vec<Write<'_>> {
        let row = &fold.row;
        let mut writes = Vec::with_capacity(1 + fold.sales.len());
        // Without its OrderPlaced (a rebuild from a timestamp) the order has no key there.
        if let (Some(customer_id), Some(placed_at)) = (row.customer_id, row.placed_at) {
            writes.push(Write {
                owner,
                statement: &self.upsert_by_customer,
                bytes: ROW_BYTES,
                values: Box::new((
                    row.tenant_id.clone(),
                    customer_id,
                    placed_at,
                    row.order_id,
                    row.status.as_str(),
                    row.total_cents,
                    row.version,
                    row.version,
                )),
            });
        }
        for change in &fold.sales {
            let (statement, values): (&PreparedStatement, Values) = match *change {
                SalesChange::Record {
                    day,
                    revenue_cents,
                    version,
                } => (
                    &self.insert_sale,
                    Box::new((
                        row.tenant_id.clone(),
                        day,
                        row.order_id,
                        revenue_cents,
                        version,
                        version,
                    )),
                ),
                SalesChange::Remove { day, version } => (
                    &self.delete_sale,
                    Box::new((version, row.tenant_id.clone(), day, row.order_id)),
                ),
            };
            writes.push(Write {
                owner,
                statement,
                values,
                bytes: ROW_BYTES,
            });
        }
        writes
    }
}

/// A rough size of a row's values besides its items, for cutting batches.
const ROW_BYTES: usize = 160;

#[async_trait]
impl ProjectionWriter for OrdersWriter {
    async fn apply_batch(&self, batch: &[&AggregateEvents]) -> Vec<Result<(), ApplyError>> {
        let pending: Vec<_> = batch
            .iter()
            .map(|aggregate| self.current(aggregate))
            .collect();
        let currents: Vec<_> = stream::iter(pending)
            .buffered(AGGREGATE_CONCURRENCY)
            .collect()
            .await;
        let mut results: Vec<Result<(), ApplyError>> = vec![Ok(()); batch.len()];
        let mut folds = Vec::new();
        for (index, (aggregate, current)) in batch.iter().zip(currents).enumerate() {
            let current = match current {
                Ok(current) => current,
                Err(error) => {
                    results[index] = Err(error);
                    continue;
                }
            };
            match fold(current.clone(), aggregate) {
                // Every event was applied already: nothing to write.
                None => {
                    if let Some(row) = current {
                        self.rows.put(row);
                    }
                }
                Some(fold) => {
                    // Until every write succeeded, the stored row is the truth, not the cache.
                    self.rows
                        .remove(&aggregate.tenant_id, aggregate.aggregate_id);
                    folds.push((index, fold));
                }
            }
        }
        // The detail row's version is what marks events applied (a replay folds only events
        // newer than it), so it is written last, and only for orders whose other writes all
        // succeeded: a crash or a failed write leaves the events to be applied again, never the
        // other tables behind for good.
        let side = folds
            .iter()
            .flat_map(|(index, fold)| self.side_writes(*index, fold))
            .collect();
        for (index, error) in batched::write_all(&self.session, side).await {
            results[index] = Err(error);
        }
        let mut details = Vec::with_capacity(folds.len());
        for (index, fold) in &folds {
            if results[*index].is_ok() {
                match self.detail_write(*index, &fold.row) {
                    Ok(write) => details.push(write),
                    Err(error) => results[*index] = Err(error),
                }
            }
        }
        for (index, error) in batched::write_all(&self.session, details).await {
            results[index] = Err(error);
        }
        for (index, fold) in folds {
            if results[index].is_ok() {
                self.rows.put(fold.row);
            }
        }
        results
    }

    fn forget_cached(&self) {
        self.rows.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projections::fixtures::{aggregate, at, event};
    use crate::projections::Event;

    fn line(sku: &str, quantity: u32, unit_price_cents: i64) -> LineItem {
        LineItem {
            sku: sku.into(),
            quantity,
            unit_price_cents,
        }
    }

    fn placed(order: Uuid, customer: Uuid) -> Event {
        event(
            order,
            1,
            at(1, 9),
            OrderEvent::OrderPlaced {
                order_id: order,
                customer_id: customer,
                currency: "EUR".into(),
                items: vec![line("A", 2, 500)],
            },
        )
    }

    fn paid(order: Uuid, sequence: u64, when: DateTime<Utc>, amount_cents: i64) -> Event {
        event(
            order,
            sequence,
            when,
            OrderEvent::PaymentRecorded {
                amount_cents,
                payment_ref: "pay".into(),
            },
        )
    }

    fn cancelled(order: Uuid, sequence: u64, when: DateTime<Utc>) -> Event {
        event(
            order,
            sequence,
            when,
            OrderEvent::OrderCancelled {
                reason: "changed mind".into(),
            },
        )
    }

    fn folded(current: Option<OrderRow>, order: Uuid, events: Vec<Event>) -> Option<Fold> {
        fold(current, &aggregate(order, events))
    }

    #[test]
    fn the_writer_s_statements_name_only_columns_of_the_read_model_tables() {
        let statements = Statements::of("ks", 4);
        for statement in statements.all() {
            assert_eq!(
                read_models::check_statement(statement, read_models::orders::PROJECTION.tables),
                Ok(())
            );
        }
        assert_eq!(
            statements.upsert_detail,
            "INSERT INTO ks.order_detail_g4 (tenant_id, order_id, customer_id, currency, status, \
             items, total_cents, version, placed_at, updated_at, paid_at, paid_cents) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
        );
        assert_eq!(
            statements.delete_sale,
            "DELETE FROM ks.sales_by_day_g4 USING TIMESTAMP ? \
             WHERE tenant_id = ? AND day = ? AND order_id = ?"
        );
        // Every column of order_detail is written.
        assert_eq!(DETAIL_COLUMNS.to_vec(), detail::TABLE.column_names());
    }

    #[test]
    fn placing_an_order_fills_the_row_with_its_lines_and_total() {
        let (order, customer) = (Uuid::now_v7(), Uuid::now_v7());

        let fold = folded(None, order, vec![placed(order, customer)]).unwrap();

        let row = fold.row;
        assert_eq!(row.order_id, order);
        assert_eq!(row.customer_id, Some(customer));
        assert_eq!(row.currency.as_deref(), Some("EUR"));
        assert_eq!(row.status, Status::Open);
        assert_eq!(row.total_cents, 1000);
        assert_eq!(row.version, 1);
        assert_eq!(row.placed_at, Some(at(1, 9)));
        assert_eq!(row.updated_at, Some(at(1, 9)));
        assert!(fold.sales.is_empty());
    }

    #[test]
    fn adding_a_sku_already_on_the_order_adds_to_its_quantity() {
        let order = Uuid::now_v7();
        let events = vec![
            placed(order, Uuid::now_v7()),
            event(
                order,
                2,
                at(1, 10),
                OrderEvent::ItemAdded(line("A", 3, 500)),
            ),
            event(
                order,
                3,
                at(1, 11),
                OrderEvent::ItemAdded(line("B", 1, 250)),
            ),
        ];

        let row = folded(None, order, events).unwrap().row;

        assert_eq!(row.items, vec![line("A", 5, 500), line("B", 1, 250)]);
        assert_eq!(row.total_cents, 2750);
        assert_eq!(row.version, 3);
        assert_eq!(row.updated_at, Some(at(1, 11)));
    }

    #[test]
    fn removing_an_item_lowers_the_total() {
        let order = Uuid::now_v7();
        let events = vec![
            placed(order, Uuid::now_v7()),
            event(
                order,
                2,
                at(1, 10),
                OrderEvent::ItemAdded(line("B", 1, 250)),
            ),
            event(
                order,
                3,
                at(1, 11),
                OrderEvent::ItemRemoved { sku: "A".into() },
            ),
        ];

        let row = folded(None, order, events).unwrap().row;

        assert_eq!(row.items, vec![line("B", 1, 250)]);
        assert_eq!(row.total_cents, 250);
    }

    #[test]
    fn a_duplicate_event_changes_nothing() {
        let order = Uuid::now_v7();
        let stored = folded(None, order, vec![placed(order, Uuid::now_v7())])
            .unwrap()
            .row;

        let again = folded(Some(stored), order, vec![placed(order, Uuid::now_v7())]);

        assert_eq!(again, None);
    }

    #[test]
    fn an_older_event_never_overwrites_a_newer_state() {
        let order = Uuid::now_v7();
        let stored = folded(
            None,
            order,
            vec![
                placed(order, Uuid::now_v7()),
                paid(order, 2, at(2, 8), 1000),
            ],
        )
        .unwrap()
        .row;

        let late = event(order, 2, at(1, 10), OrderEvent::ItemAdded(line("Z", 9, 1)));
        let shipped = event(
            order,
            3,
            at(3, 8),
            OrderEvent::OrderShipped {
                carrier: "DHL".into(),
                tracking_number: "T".into(),
            },
        );
        let fold = folded(Some(stored.clone()), order, vec![late, shipped]).unwrap();

        assert_eq!(fold.applied, 1);
        assert_eq!(fold.row.items, stored.items);
        assert_eq!(fold.row.status, Status::Shipped);
        assert_eq!(fold.row.version, 3);
        assert!(fold.sales.is_empty(), "shipping keeps the sale");
    }

    #[test]
    fn paying_records_a_sale_on_the_utc_day_of_the_payment() {
        let order = Uuid::now_v7();
        let payment_time = at(2, 23) + chrono::Duration::minutes(59);
        let fold = folded(
            None,
            order,
            vec![
                placed(order, Uuid::now_v7()),
                paid(order, 2, payment_time, 1000),
            ],
        )
        .unwrap();

        assert_eq!(fold.row.status, Status::Paid);
        assert_eq!(fold.row.paid_at, Some(payment_time));
        assert_eq!(fold.row.paid_cents, Some(1000));
        assert_eq!(
            fold.sales,
            vec![SalesChange::Record {
                day: NaiveDate::from_ymd_opt(2026, 3, 2).unwrap(),
                revenue_cents: 1000,
                version: 2,
            }]
        );
    }

    #[test]
    fn cancelling_a_paid_order_removes_its_sale_with_the_cancellation_version() {
        let order = Uuid::now_v7();
        let stored = folded(
            None,
            order,
            vec![
                placed(order, Uuid::now_v7()),
                paid(order, 2, at(2, 8), 1000),
            ],
        )
        .unwrap()
        .row;

        let fold = folded(Some(stored), order, vec![cancelled(order, 3, at(4, 8))]).unwrap();

        assert_eq!(fold.row.status, Status::Cancelled);
        assert_eq!(
            fold.sales,
            vec![SalesChange::Remove {
                day: NaiveDate::from_ymd_opt(2026, 3, 2).unwrap(),
                version: 3,
            }]
        );
    }

    #[test]
    fn paying_then_cancelling_in_one_batch_removes_the_sale_after_recording_it() {
        let order = Uuid::now_v7();
        let fold = folded(
            None,
            order,
            vec![
                placed(order, Uuid::now_v7()),
                paid(order, 2, at(2, 8), 1000),
                cancelled(order, 3, at(2, 9)),
            ],
        )
        .unwrap();

        let day = NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
        assert_eq!(
            fold.sales,
            vec![
                SalesChange::Record {
                    day,
                    revenue_cents: 1000,
                    version: 2
                },
                SalesChange::Remove { day, version: 3 },
            ]
        );
    }

    #[test]
    fn cancelling_an_unpaid_order_touches_no_sale() {
        let order = Uuid::now_v7();
        let fold = folded(
            None,
            order,
            vec![
                placed(order, Uuid::now_v7()),
                cancelled(order, 2, at(1, 12)),
            ],
        )
        .unwrap();

        assert_eq!(fold.row.status, Status::Cancelled);
        assert!(fold.sales.is_empty());
    }

    #[test]
    fn events_without_their_order_placed_still_fold_into_a_keyless_row() {
        let order = Uuid::now_v7();
        let fold = folded(
            None,
            order,
            vec![event(
                order,
                4,
                at(1, 10),
                OrderEvent::ItemAdded(line("A", 1, 100)),
            )],
        )
        .unwrap();

        assert_eq!(fold.row.version, 4);
        assert_eq!(fold.row.customer_id, None);
        assert_eq!(fold.row.total_cents, 100);
    }

    #[test]
    fn every_status_reads_back_from_its_text() {
        for status in [
            Status::Open,
            Status::Paid,
            Status::Shipped,
            Status::Cancelled,
        ] {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        assert_eq!(Status::parse("lost"), None);
    }

    fn added(order: Uuid, sequence: u64) -> Event {
        event(
            order,
            sequence,
            at(1, 10),
            OrderEvent::ItemAdded(line("B", 1, 250)),
        )
    }

    fn row_at(order: Uuid, version: i64) -> OrderRow {
        OrderRow {
            version,
            ..OrderRow::new(events::DEFAULT_TENANT, order)
        }
    }

    #[test]
    fn an_order_s_history_from_its_first_event_folds_without_reading_the_table() {
        let order = Uuid::now_v7();
        let history = aggregate(
            order,
            vec![
                placed(order, Uuid::now_v7()),
                added(order, 2),
                added(order, 3),
            ],
        );

        assert_eq!(start(None, &history), Start::From(None));
    }

    #[test]
    fn events_that_do_not_start_at_the_first_or_leave_a_gap_need_the_stored_row() {
        let order = Uuid::now_v7();
        let later = aggregate(order, vec![added(order, 2), added(order, 3)]);
        // A late duplicate of the first event beside a newer one: 2 is in the table only.
        let gap = aggregate(order, vec![placed(order, Uuid::now_v7()), added(order, 3)]);

        assert_eq!(start(None, &later), Start::Read);
        assert_eq!(start(None, &gap), Start::Read);
        assert_eq!(start(None, &aggregate(order, vec![])), Start::Read);
    }

    #[test]
    fn a_cached_row_serves_when_the_next_event_follows_it_or_nothing_is_new() {
        let order = Uuid::now_v7();
        let next = aggregate(
            order,
            vec![added(order, 2), added(order, 3), added(order, 4)],
        );
        let replayed = aggregate(order, vec![placed(order, Uuid::now_v7())]);

        assert_eq!(
            start(Some(row_at(order, 2)), &next),
            Start::From(Some(row_at(order, 2)))
        );
        assert_eq!(
            start(Some(row_at(order, 3)), &replayed),
            Start::From(Some(row_at(order, 3)))
        );
    }

    #[test]
    fn a_cached_row_behind_the_next_event_gives_way_to_the_table() {
        // Cached at 1 after folding a late duplicate of OrderPlaced; the table is at 5.
        let order = Uuid::now_v7();
        let next = aggregate(order, vec![added(order, 6)]);

        assert_eq!(start(Some(row_at(order, 1)), &next), Start::Read);
    }
}
