//! The read models in CQL, always read from each projection's active generation.
//!
//! Tables, columns and the registry reads are the `read-models` crate's: the statements below are
//! built from its column constants, and a unit test checks them against its tables.
//!
//! Generation tracking: the `projections` registry says which generation of each projection
//! serves reads (`orders` → `order_detail`, `orders_by_customer`, `sales_by_day`;
//! `order_history` → `order_events`). [`CqlReadModels::refresh`] reads it — every second from a
//! background task ([`spawn_refresher`]), and on a read that finds no usable generation — and
//! switches to a new generation only once every statement of it has been prepared. Preparing fails
//! while a table does not exist, so a switch announced before its tables are visible keeps the
//! previous generation serving and no read fails during a rebuild switch. Prepared statements are
//! kept per generation, so switching back and forth prepares nothing twice.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::errors::PrepareError;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use read_models::order_history::order_events;
use read_models::orders::{order_detail, orders_by_customer, sales_by_day};
use read_models::schema::{equal, list};
use read_models::{ProjectionState, RegistryReader};

use super::{
    BuildRecord, CustomerOrderKey, CustomerOrderRow, DaySales, OrderRow, ProjectionRecord,
    ReadModels, StoreError, StoreResult,
};

/// Name of the projection owning `order_detail`, `orders_by_customer` and `sales_by_day`.
pub const ORDERS_PROJECTION: &str = read_models::orders::NAME;
/// Name of the projection owning `order_events`.
pub const HISTORY_PROJECTION: &str = read_models::order_history::NAME;

/// `order_detail` columns an order is read with ([`DetailColumns`], in this order).
const DETAIL_COLUMNS: [&str; 8] = [
    order_detail::CUSTOMER_ID,
    order_detail::CURRENCY,
    order_detail::STATUS,
    order_detail::ITEMS,
    order_detail::TOTAL_CENTS,
    order_detail::VERSION,
    order_detail::PLACED_AT,
    order_detail::UPDATED_AT,
];
/// `orders_by_customer` columns of a page, in the order [`CqlReadModels::customer_orders`] reads.
const BY_CUSTOMER_COLUMNS: [&str; 5] = [
    orders_by_customer::ORDER_ID,
    orders_by_customer::STATUS,
    orders_by_customer::TOTAL_CENTS,
    orders_by_customer::PLACED_AT,
    orders_by_customer::VERSION,
];

/// The text of the `orders` statements of one generation: detail, first page, next page, sales.
pub fn orders_statements(ks: &str, g: i32) -> [String; 4] {
    let by_customer = orders_by_customer::TABLE.qualified(ks, g);
    let partition = equal(orders_by_customer::PARTITION);
    [
        format!(
            "SELECT {} FROM {} WHERE {}",
            list(&DETAIL_COLUMNS),
            order_detail::TABLE.qualified(ks, g),
            equal(order_detail::KEY)
        ),
        format!(
            "SELECT {} FROM {by_customer} WHERE {partition} LIMIT ?",
            list(&BY_CUSTOMER_COLUMNS)
        ),
        format!(
            "SELECT {} FROM {by_customer} WHERE {partition} AND ({}, {}) < (?, ?) LIMIT ?",
            list(&BY_CUSTOMER_COLUMNS),
            orders_by_customer::PLACED_AT,
            orders_by_customer::ORDER_ID
        ),
        // A single-partition aggregate: the sum travels instead of every paid order.
        format!(
            "SELECT COUNT(*), SUM({}) FROM {} WHERE {}",
            sales_by_day::REVENUE_CENTS,
            sales_by_day::TABLE.qualified(ks, g),
            equal(sales_by_day::PARTITION)
        ),
    ]
}

/// The text of the `order_history` statement of one generation.
pub fn history_statement(ks: &str, g: i32) -> String {
    format!(
        "SELECT {} FROM {} WHERE {}",
        order_events::ENVELOPE,
        order_events::TABLE.qualified(ks, g),
        equal(order_events::PARTITION)
    )
}

/// Day partitions of `sales_by_day` read at the same time by one request.
const SALES_CONCURRENCY: usize = 32;
/// A read that finds no usable generation refreshes the registry at most this often.
const MISS_REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// The statements of one generation of a projection.
trait GenerationStatements: Sized + Send + Sync + 'static {
    const PROJECTION: &'static str;
    fn prepare(
        session: &Session,
        keyspace: &str,
        generation: i32,
    ) -> impl Future<Output = Result<Self, PrepareError>> + Send;
    fn generation(&self) -> i32;
}

struct OrdersStatements {
    generation: i32,
    detail: PreparedStatement,
    by_customer_first: PreparedStatement,
    by_customer_after: PreparedStatement,
    sales_of_day: PreparedStatement,
}

impl GenerationStatements for OrdersStatements {
    const PROJECTION: &'static str = ORDERS_PROJECTION;

    async fn prepare(session: &Session, ks: &str, g: i32) -> Result<Self, PrepareError> {
        let [detail, first, after, sales] = orders_statements(ks, g);
        Ok(Self {
            generation: g,
            detail: session.prepare(detail).await?,
            by_customer_first: session.prepare(first).await?,
            by_customer_after: session.prepare(after).await?,
            sales_of_day: session.prepare(sales).await?,
        })
    }

    fn generation(&self) -> i32 {
        self.generation
    }
}

struct HistoryStatements {
    generation: i32,
    events: PreparedStatement,
}

impl GenerationStatements for HistoryStatements {
    const PROJECTION: &'static str = HISTORY_PROJECTION;

    async fn prepare(session: &Session, ks: &str, g: i32) -> Result<Self, PrepareError> {
        Ok(Self {
            generation: g,
            events: session.prepare(history_statement(ks, g)).await?,
        })
    }

    fn generation(&self) -> i32 {
        self.generation
    }
}

/// The serving generation of one projection and every generation prepared so far.
struct Tracked<T> {
    active: RwLock<Option<Arc<T>>>,
    prepared: tokio::sync::Mutex<HashMap<i32, Arc<T>>>,
    /// The last generation that could not be prepared: warn once, not every second.
    last_unreadable: std::sync::Mutex<Option<i32>>,
}

impl<T: GenerationStatements> Tracked<T> {
    fn new() -> Self {
        Self {
            active: RwLock::new(None),
            prepared: tokio::sync::Mutex::new(HashMap::new()),
            last_unreadable: std::sync::Mutex::new(None),
        }
    }

    fn current(&self) -> Option<Arc<T>> {
        self.active
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn prepared_for(
        &self,
        session: &Session,
        keyspace: &str,
        g: i32,
    ) -> Result<Arc<T>, PrepareError> {
        // Held across the prepare: only the refresher and rate-limited misses get here.
        let mut prepared = self.prepared.lock().await;
        if let Some(statements) = prepared.get(&g) {
            return Ok(statements.clone());
        }
        let statements = Arc::new(T::prepare(session, keyspace, g).await?);
        prepared.insert(g, statements.clone());
        Ok(statements)
    }

    /// Serve generation `g` if its tables can be read; otherwise keep the current one.
    async fn switch_to(&self, session: &Session, keyspace: &str, g: i32) {
        let current = self.current();
        let from = current.as_ref().map(|c| c.generation());
        if from == Some(g) {
            return;
        }
        // With nothing serving yet (a fresh start during a switch), the previous generation is
        // better than an error.
        let mut candidates = vec![g];
        if current.is_none() && g > 1 {
            candidates.push(g - 1);
        }
        for candidate in candidates {
            match self.prepared_for(session, keyspace, candidate).await {
                Ok(statements) => {
                    *self.active.write().unwrap_or_else(PoisonError::into_inner) = Some(statements);
                    tracing::info!(projection = T::PROJECTION, from = ?from, to = candidate, "serving generation");
                    return;
                }
                Err(error) => {
                    let mut last = self
                        .last_unreadable
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    if *last == Some(candidate) {
                        tracing::debug!(projection = T::PROJECTION, generation = candidate, serving = ?from, %error, "generation not readable yet");
                    } else {
                        *last = Some(candidate);
                        tracing::warn!(projection = T::PROJECTION, generation = candidate, serving = ?from, %error, "generation not readable yet");
                    }
                }
            }
        }
    }
}

/// [`ReadModels`] over a CQL session whose keyspace is the service keyspace.
pub struct CqlReadModels {
    session: Arc<Session>,
    /// Table names are qualified with it (prepared statements relying on `USE` are ambiguous).
    keyspace: String,
    registry: RegistryReader,
    orders: Tracked<OrdersStatements>,
    history: Tracked<HistoryStatements>,
    last_miss_refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl CqlReadModels {
    /// Load the active generations once (a registry that cannot be read yet is read again by the
    /// refresher).
    pub async fn new(session: Arc<Session>, keyspace: String) -> anyhow::Result<Self> {
        let models = Self {
            registry: RegistryReader::new(session.clone(), &keyspace),
            session,
            keyspace,
            orders: Tracked::new(),
            history: Tracked::new(),
            last_miss_refresh: tokio::sync::Mutex::new(None),
        };
        if let Err(error) = models.refresh().await {
            tracing::warn!(%error, "could not read the projection registry at start");
        }
        Ok(models)
    }

    /// Read the registry and switch each projection to its active generation when readable.
    pub async fn refresh(&self) -> StoreResult<()> {
        let rows = self.registry().await?;
        let active = |name: &str| {
            rows.iter()
                .find(|state| state.name == name)
                .map(|state| state.active_generation)
                // No row yet: the projector starts every projection at generation 1.
                .unwrap_or(1)
        };
        self.orders
            .switch_to(&self.session, &self.keyspace, active(ORDERS_PROJECTION))
            .await;
        self.history
            .switch_to(&self.session, &self.keyspace, active(HISTORY_PROJECTION))
            .await;
        Ok(())
    }

    async fn registry(&self) -> StoreResult<Vec<ProjectionState>> {
        Ok(self.registry.projections().await?)
    }

    /// The serving statements of a projection, refreshing the registry once when there are none.
    async fn statements<T: GenerationStatements>(
        &self,
        tracked: &Tracked<T>,
    ) -> StoreResult<Arc<T>> {
        if let Some(statements) = tracked.current() {
            return Ok(statements);
        }
        {
            let mut last = self.last_miss_refresh.lock().await;
            if last.is_none_or(|at| at.elapsed() >= MISS_REFRESH_INTERVAL) {
                *last = Some(Instant::now());
                self.refresh().await?;
            }
        }
        tracked.current().ok_or(StoreError::NotReady(T::PROJECTION))
    }
}

/// Refresh the generations every second until the returned task is aborted.
pub fn spawn_refresher(models: Arc<CqlReadModels>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = models.refresh().await {
                tracing::warn!(%error, "refreshing projection generations");
            }
        }
    })
}

fn timestamp(ms: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| StoreError::Corrupt {
        what: "timestamp",
        detail: format!("{ms} ms is out of range"),
    })
}

type DetailColumns = (
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
);

impl CqlReadModels {
    /// partition → next offset to apply, of one generation of a projection on `topic`.
    async fn offsets(
        &self,
        projection: &str,
        generation: i32,
        topic: &str,
    ) -> StoreResult<BTreeMap<i32, i64>> {
        Ok(self.registry.offsets(projection, generation, topic).await?)
    }
}

#[async_trait]
impl ReadModels for CqlReadModels {
    fn orders_generation(&self) -> Option<i32> {
        self.orders.current().map(|s| s.generation)
    }

    #[tracing::instrument(skip_all, fields(%order_id))]
    async fn order_detail(&self, tenant: &str, order_id: Uuid) -> StoreResult<Option<OrderRow>> {
        let statements = self.statements(&self.orders).await?;
        let result = self
            .session
            .execute_unpaged(&statements.detail, (tenant, order_id))
            .await
            .map_err(|e| StoreError::unavailable("reading order_detail")(&e))?;
        let corrupt = StoreError::corrupt("order_detail");
        let rows = match result.into_rows_result() {
            Ok(rows) => rows,
            Err(e) => return Err(corrupt(&e)),
        };
        let row = match rows.maybe_first_row::<DetailColumns>() {
            Ok(row) => row,
            Err(e) => return Err(StoreError::corrupt("order_detail")(&e)),
        };
        let Some((customer_id, currency, status, items, total, version, placed_at, updated_at)) =
            row
        else {
            return Ok(None);
        };
        // A row the projector has not completed (no OrderPlaced applied yet) is not an order yet.
        let (Some(customer_id), Some(version), Some(placed_at)) = (customer_id, version, placed_at)
        else {
            return Ok(None);
        };
        let placed_at = timestamp(placed_at.0)?;
        Ok(Some(OrderRow {
            generation: statements.generation,
            order_id,
            customer_id,
            currency: currency.unwrap_or_default(),
            status: status.unwrap_or_default(),
            items_json: items.unwrap_or_else(|| "[]".into()),
            total_cents: total.unwrap_or(0),
            version,
            placed_at,
            updated_at: match updated_at {
                Some(t) => timestamp(t.0)?,
                None => placed_at,
            },
        }))
    }

    #[tracing::instrument(skip_all, fields(%customer_id, limit))]
    async fn customer_orders(
        &self,
        tenant: &str,
        customer_id: Uuid,
        after: Option<CustomerOrderKey>,
        limit: usize,
    ) -> StoreResult<Vec<CustomerOrderRow>> {
        let statements = self.statements(&self.orders).await?;
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let result = match after {
            None => {
                self.session
                    .execute_unpaged(&statements.by_customer_first, (tenant, customer_id, limit))
                    .await
            }
            Some(key) => {
                self.session
                    .execute_unpaged(
                        &statements.by_customer_after,
                        (
                            tenant,
                            customer_id,
                            CqlTimestamp(key.placed_at_ms),
                            key.order_id,
                            limit,
                        ),
                    )
                    .await
            }
        }
        .map_err(|e| StoreError::unavailable("reading orders_by_customer")(&e))?;
        let rows = result
            .into_rows_result()
            .map_err(|e| StoreError::corrupt("orders_by_customer")(&e))?;
        let typed = rows
            .rows::<(Uuid, Option<String>, Option<i64>, CqlTimestamp, Option<i64>)>()
            .map_err(|e| StoreError::corrupt("orders_by_customer")(&e))?;
        let mut out = Vec::new();
        for row in typed {
            let (order_id, status, total, placed_at, version) =
                row.map_err(|e| StoreError::corrupt("orders_by_customer")(&e))?;
            out.push(CustomerOrderRow {
                order_id,
                status: status.unwrap_or_default(),
                total_cents: total.unwrap_or(0),
                placed_at: timestamp(placed_at.0)?,
                version: version.unwrap_or(0),
            });
        }
        Ok(out)
    }

    #[tracing::instrument(skip_all, fields(days = days.len()))]
    async fn sales(&self, tenant: &str, days: Vec<NaiveDate>) -> StoreResult<Vec<DaySales>> {
        let statements = self.statements(&self.orders).await?;
        let statements = &statements;
        futures::stream::iter(days)
            .map(|day| async move {
                let result = self
                    .session
                    .execute_unpaged(&statements.sales_of_day, (tenant, day))
                    .await
                    .map_err(|e| StoreError::unavailable("reading sales_by_day")(&e))?;
                let rows = result
                    .into_rows_result()
                    .map_err(|e| StoreError::corrupt("sales_by_day")(&e))?;
                let (count, sum) = rows
                    .maybe_first_row::<(Option<i64>, Option<i64>)>()
                    .map_err(|e| StoreError::corrupt("sales_by_day")(&e))?
                    .unwrap_or((None, None));
                Ok(DaySales {
                    day,
                    orders_paid: count.unwrap_or(0),
                    revenue_cents: sum.unwrap_or(0),
                })
            })
            .buffer_unordered(SALES_CONCURRENCY)
            .try_collect()
            .await
    }

    #[tracing::instrument(skip_all, fields(%order_id))]
    async fn order_events(&self, tenant: &str, order_id: Uuid) -> StoreResult<Vec<String>> {
        let statements = self.statements(&self.history).await?;
        // Paged: a long-lived order may have more events than one page holds.
        let pager = self
            .session
            .execute_iter(statements.events.clone(), (tenant, order_id))
            .await
            .map_err(|e| StoreError::unavailable("reading order_events")(&e))?;
        let stream = pager
            .rows_stream::<(Option<String>,)>()
            .map_err(|e| StoreError::corrupt("order_events")(&e))?;
        let rows: Vec<(Option<String>,)> = stream
            .try_collect()
            .await
            .map_err(|e| StoreError::unavailable("reading order_events")(&e))?;
        Ok(rows.into_iter().filter_map(|(e,)| e).collect())
    }

    async fn orders_progress(&self, topic: &str) -> StoreResult<Option<i64>> {
        let Some(generation) = self.orders_generation() else {
            return Ok(None);
        };
        let offsets = self.offsets(ORDERS_PROJECTION, generation, topic).await?;
        let progress = offsets
            .values()
            .fold(0i64, |sum, next| sum.saturating_add(*next));
        // The generation is part of the number: a switch to a new generation is progress too.
        Ok(Some(progress.saturating_add(i64::from(generation) << 48)))
    }

    async fn projections(&self, topic: &str) -> StoreResult<Vec<ProjectionRecord>> {
        let (rows, controls) = tokio::join!(self.registry(), self.registry.controls());
        let (rows, mut controls) = (rows?, controls?);
        let mut out = Vec::with_capacity(rows.len());
        for state in rows {
            let offsets = self
                .offsets(&state.name, state.active_generation, topic)
                .await?;
            let building = match state.building() {
                Some((generation, kind)) => Some(BuildRecord {
                    generation,
                    kind,
                    from: state.rebuild_from,
                    offsets: self.offsets(&state.name, generation, topic).await?,
                }),
                None => None,
            };
            let control = controls
                .iter()
                .position(|c| c.projection == state.name)
                .map(|i| controls.swap_remove(i));
            out.push(ProjectionRecord {
                name: state.name,
                generation: state.active_generation,
                state: state.state,
                offsets,
                building,
                control,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_names_only_columns_of_the_read_model_tables() {
        let tables = read_models::tables();
        for statement in orders_statements("ks", 3)
            .iter()
            .chain([&history_statement("ks", 3)])
        {
            assert_eq!(read_models::check_statement(statement, &tables), Ok(()));
        }
        assert_eq!(
            orders_statements("ks", 3)[0],
            "SELECT customer_id, currency, status, items, total_cents, version, placed_at, \
             updated_at FROM ks.order_detail_g3 WHERE tenant_id = ? AND order_id = ?"
        );
        assert_eq!(
            orders_statements("ks", 3)[2],
            "SELECT order_id, status, total_cents, placed_at, version FROM ks.orders_by_customer_g3 \
             WHERE tenant_id = ? AND customer_id = ? AND (placed_at, order_id) < (?, ?) LIMIT ?"
        );
    }
}
