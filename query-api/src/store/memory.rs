//! In-memory read models for unit tests of handlers, cache and waits (integration tests use the
//! real CQL tables).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use uuid::Uuid;

use super::*;

#[derive(Default)]
pub struct MemoryStore {
    pub orders: Mutex<HashMap<Uuid, OrderRow>>,
    pub customer_orders: Mutex<Vec<(Uuid, CustomerOrderRow)>>,
    pub sales: Mutex<HashMap<NaiveDate, DaySales>>,
    pub events: Mutex<HashMap<Uuid, Vec<String>>>,
    pub records: Mutex<Vec<ProjectionRecord>>,
    pub ends: Mutex<BTreeMap<i32, i64>>,
    /// What `start_offsets` answers, whatever the time.
    pub starts: Mutex<BTreeMap<i32, i64>>,
    pub generation: AtomicI32,
    pub detail_reads: AtomicUsize,
    /// Versions added to an order after each detail read: simulates a projector catching up.
    pub bump_per_read: Mutex<HashMap<Uuid, i64>>,
    /// What `orders_progress` answers (`None`: the store cannot tell).
    pub progress: Mutex<Option<i64>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        let store = Self::default();
        store.generation.store(1, Ordering::SeqCst);
        store
    }

    pub fn order(id: Uuid, version: i64) -> OrderRow {
        let at = Utc
            .with_ymd_and_hms(2024, 5, 1, 12, 0, 0)
            .single()
            .unwrap_or_default();
        OrderRow {
            generation: 1,
            order_id: id,
            customer_id: Uuid::nil(),
            currency: "EUR".into(),
            status: "open".into(),
            items_json: r#"[{"sku":"A-1","quantity":2,"unit_price_cents":150}]"#.into(),
            total_cents: 300,
            version,
            placed_at: at,
            updated_at: at,
        }
    }

    pub fn put(&self, row: OrderRow) {
        self.orders.lock().unwrap().insert(row.order_id, row);
    }
}

/// The one tenant whose rows the memory store holds: every other tenant sees nothing.
pub const TENANT: &str = "t";

#[async_trait]
impl ReadModels for MemoryStore {
    fn orders_generation(&self) -> Option<i32> {
        Some(self.generation.load(Ordering::SeqCst))
    }

    async fn order_detail(&self, tenant: &str, order_id: Uuid) -> StoreResult<Option<OrderRow>> {
        if tenant != TENANT {
            return Ok(None);
        }
        self.detail_reads.fetch_add(1, Ordering::SeqCst);
        let mut orders = self.orders.lock().unwrap();
        let found = orders.get(&order_id).cloned().map(|mut row| {
            row.generation = self.generation.load(Ordering::SeqCst);
            row
        });
        if let Some(bump) = self.bump_per_read.lock().unwrap().get(&order_id) {
            if let Some(row) = orders.get_mut(&order_id) {
                row.version += bump;
            }
        }
        Ok(found)
    }

    async fn orders_progress(&self, _topic: &str) -> StoreResult<Option<i64>> {
        Ok(*self.progress.lock().unwrap())
    }

    async fn customer_orders(
        &self,
        tenant: &str,
        customer_id: Uuid,
        after: Option<CustomerOrderKey>,
        limit: usize,
    ) -> StoreResult<Vec<CustomerOrderRow>> {
        if tenant != TENANT {
            return Ok(Vec::new());
        }
        let mut rows: Vec<CustomerOrderRow> = self
            .customer_orders
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _)| *c == customer_id)
            .map(|(_, r)| r.clone())
            .collect();
        let key = |r: &CustomerOrderRow| (r.placed_at.timestamp_millis(), r.order_id);
        rows.sort_by_key(|r| std::cmp::Reverse(key(r)));
        Ok(rows
            .into_iter()
            .filter(|r| after.is_none_or(|a| key(r) < (a.placed_at_ms, a.order_id)))
            .take(limit)
            .collect())
    }

    async fn sales(&self, tenant: &str, days: Vec<NaiveDate>) -> StoreResult<Vec<DaySales>> {
        let empty = HashMap::new();
        let sales = self.sales.lock().unwrap();
        let sales = if tenant == TENANT { &*sales } else { &empty };
        Ok(days
            .into_iter()
            .rev()
            .map(|day| {
                sales.get(&day).copied().unwrap_or(DaySales {
                    day,
                    orders_paid: 0,
                    revenue_cents: 0,
                })
            })
            .collect())
    }

    async fn order_events(&self, tenant: &str, order_id: Uuid) -> StoreResult<Vec<String>> {
        if tenant != TENANT {
            return Ok(Vec::new());
        }
        Ok(self
            .events
            .lock()
            .unwrap()
            .get(&order_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn projections(&self, _topic: &str) -> StoreResult<Vec<ProjectionRecord>> {
        Ok(self.records.lock().unwrap().clone())
    }
}

#[async_trait]
impl EndOffsets for MemoryStore {
    async fn end_offsets(&self, _topic: &str) -> StoreResult<BTreeMap<i32, i64>> {
        Ok(self.ends.lock().unwrap().clone())
    }

    async fn start_offsets(
        &self,
        _topic: &str,
        _from: Option<DateTime<Utc>>,
    ) -> StoreResult<BTreeMap<i32, i64>> {
        Ok(self.starts.lock().unwrap().clone())
    }
}
