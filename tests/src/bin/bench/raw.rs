//! The raw baselines: the write path's own LWTs, a raw produce, raw upserts (one row, and the
//! projector's rows per event batched the way it batches them), and raw point reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::bail;
use chrono::{DateTime, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::{CqlValue, Row};
use uuid::Uuid;

use crate::measure::{self, op};
use crate::workload;

/// Events one batched baseline operation writes: 32 statements (the projector's largest batch)
/// hold the rows of 10 events at 3.2 rows per event.
pub const EVENTS_PER_BATCH: usize = 10;

/// The baseline tables, in the run's keyspace: `bench_upsert` has `order_detail`'s shape, and
/// `bench_history`, `bench_by_customer` and `bench_sales` those of `order_events`,
/// `orders_by_customer` and `sales_per_day`.
pub async fn create_tables(session: &Session, ks: &str) -> anyhow::Result<()> {
    for ddl in [
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.bench_upsert (tenant_id text, order_id uuid, \
             customer_id uuid, currency text, status text, items text, total_cents bigint, \
             version bigint, placed_at timestamp, updated_at timestamp, \
             PRIMARY KEY ((tenant_id, order_id)))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.bench_history (tenant_id text, aggregate_id uuid, \
             sequence bigint, envelope text, PRIMARY KEY ((tenant_id, aggregate_id), sequence))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.bench_by_customer (tenant_id text, customer_id uuid, \
             placed_at timestamp, order_id uuid, status text, total_cents bigint, version bigint, \
             PRIMARY KEY ((tenant_id, customer_id), placed_at, order_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.bench_sales (tenant_id text, day date, order_id uuid, \
             revenue_cents bigint, version bigint, PRIMARY KEY ((tenant_id, day), order_id))"
        ),
    ] {
        session.query_unpaged(ddl, &[]).await?;
    }
    session.await_schema_agreement().await?;
    Ok(())
}

pub struct Raw {
    session: Arc<Session>,
    ks: String,
    tenant: String,
    producer: FutureProducer,
    topic: String,
    partitions: i32,
    lwt: scylla::statement::prepared::PreparedStatement,
    lwt_update: scylla::statement::prepared::PreparedStatement,
    upsert: scylla::statement::prepared::PreparedStatement,
    history: scylla::statement::prepared::PreparedStatement,
    by_customer: scylla::statement::prepared::PreparedStatement,
    sale: scylla::statement::prepared::PreparedStatement,
    envelope: String,
    state: String,
    pending: String,
}

impl Raw {
    pub async fn new(
        session: Arc<Session>,
        ks: &str,
        tenant: &str,
        producer: FutureProducer,
        topic: &str,
        partitions: i32,
    ) -> anyhow::Result<Arc<Self>> {
        // The same statement as the write path's first LWT, on the same table.
        let lwt = session
            .prepare(format!(
                "INSERT INTO {ks}.aggregates (tenant_id, aggregate_type, aggregate_id, version, state, \
                 partition, pending, recent_commands, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
            ))
            .await?;
        // The same statement as the write path's later LWTs.
        let lwt_update = session
            .prepare(format!(
                "UPDATE {ks}.aggregates SET version = ?, state = ?, pending = ?, recent_commands = ?, \
                 updated_at = ? WHERE tenant_id = ? AND aggregate_type = ? AND aggregate_id = ? \
                 IF version = ?"
            ))
            .await?;
        let mut upsert = session
            .prepare(format!(
                "INSERT INTO {ks}.bench_upsert (tenant_id, order_id, customer_id, currency, status, \
                 items, total_cents, version, placed_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?;
        upsert.set_is_idempotent(true);
        let history = session
            .prepare(format!(
                "INSERT INTO {ks}.bench_history (tenant_id, aggregate_id, sequence, envelope) \
                 VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?;
        let by_customer = session
            .prepare(format!(
                "INSERT INTO {ks}.bench_by_customer (tenant_id, customer_id, placed_at, order_id, \
                 status, total_cents, version) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?;
        let sale = session
            .prepare(format!(
                "INSERT INTO {ks}.bench_sales (tenant_id, day, order_id, revenue_cents, version) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?;
        let sample = workload::lifecycle_events(tenant, Uuid::now_v7());
        let state = serde_json::json!({
            "status": "open", "customer_id": Uuid::now_v7(), "currency": "EUR",
            "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1250}]
        })
        .to_string();
        let pending = serde_json::to_string(&sample[..1])?;
        let envelope = String::from_utf8_lossy(&sample[1].to_json()).into_owned();
        Ok(Arc::new(Self {
            session,
            ks: ks.to_string(),
            tenant: tenant.to_string(),
            producer,
            topic: topic.to_string(),
            partitions,
            lwt,
            lwt_update,
            upsert,
            history,
            by_customer,
            sale,
            envelope,
            state,
            pending,
        }))
    }
}

impl Raw {
    /// The write path's LWT on order `id` at `version`: the insert of a new row at 0, else the
    /// conditional update to `version + 1`. Fails unless it applied.
    async fn lwt(&self, id: Uuid, version: i64) -> anyhow::Result<()> {
        let now = Utc::now();
        let recent: HashMap<String, String> = HashMap::new();
        let result = if version == 0 {
            self.session
                .execute_unpaged(
                    &self.lwt,
                    (
                        self.tenant.as_str(),
                        "bench_raw",
                        id,
                        1i64,
                        self.state.as_str(),
                        workload::partition_of(id, self.partitions),
                        self.pending.as_str(),
                        &recent,
                        now,
                        now,
                    ),
                )
                .await?
        } else {
            self.session
                .execute_unpaged(
                    &self.lwt_update,
                    (
                        version + 1,
                        self.state.as_str(),
                        self.pending.as_str(),
                        &recent,
                        now,
                        self.tenant.as_str(),
                        "bench_raw",
                        id,
                        version,
                    ),
                )
                .await?
        };
        let rows = result.into_rows_result()?;
        let row: Option<Row> = rows.maybe_first_row::<Row>()?;
        match row.as_ref().and_then(|r| r.columns.first()) {
            Some(Some(CqlValue::Boolean(true))) => Ok(()),
            _ => bail!("LWT not applied"),
        }
    }
}

pub trait RawOps {
    fn lwt_op(&self) -> measure::OpFn;
    fn lwt_lifecycle_op(&self) -> measure::OpFn;
    fn produce_op(&self) -> measure::OpFn;
    fn upsert_op(&self) -> measure::OpFn;
    fn batched_rows_op(&self) -> measure::OpFn;
    async fn read_op(&self, generation: i32, ids: Arc<Vec<Uuid>>) -> anyhow::Result<measure::OpFn>;
}

impl RawOps for Arc<Raw> {
    fn lwt_op(&self) -> measure::OpFn {
        let raw = self.clone();
        op(move |_, _| {
            let raw = raw.clone();
            async move { raw.lwt(Uuid::now_v7(), 0).await }
        })
    }

    /// The write path's LWTs alone, in the commands' mix: each worker walks its own order through
    /// the lifecycle, one `INSERT … IF NOT EXISTS` then four `UPDATE … IF version = v`.
    fn lwt_lifecycle_op(&self) -> measure::OpFn {
        let raw = self.clone();
        let orders: Arc<Mutex<HashMap<usize, (Uuid, i64)>>> = Arc::default();
        op(move |_, worker| {
            let (raw, orders) = (raw.clone(), orders.clone());
            async move {
                let (id, version) = {
                    let mut orders = orders.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    let order = orders.entry(worker).or_insert((Uuid::now_v7(), 0));
                    if order.1 >= workload::STEPS as i64 {
                        *order = (Uuid::now_v7(), 0);
                    }
                    *order
                };
                raw.lwt(id, version).await?;
                if let Ok(mut orders) = orders.lock() {
                    orders.insert(worker, (id, version + 1));
                }
                Ok(())
            }
        })
    }

    fn produce_op(&self) -> measure::OpFn {
        let raw = self.clone();
        op(move |_, _| {
            let raw = raw.clone();
            async move {
                let id = Uuid::now_v7();
                let events = workload::lifecycle_events(&raw.tenant, id);
                let e = &events[1];
                let payload = e.to_json();
                let key = e.key();
                let record = FutureRecord::to(&raw.topic)
                    .partition(workload::partition_of(id, raw.partitions))
                    .key(&key)
                    .payload(&payload)
                    .headers(command_api::publisher::record_headers(e));
                let delivery = raw
                    .producer
                    .send_result(record)
                    .map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?;
                match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => bail!("delivery: {e}"),
                    Err(_) => bail!("delivery cancelled"),
                }
            }
        })
    }

    fn upsert_op(&self) -> measure::OpFn {
        let raw = self.clone();
        let items = r#"[{"sku":"SKU-1","quantity":1,"unit_price_cents":1250},{"sku":"SKU-2","quantity":2,"unit_price_cents":499}]"#;
        op(move |_, _| {
            let raw = raw.clone();
            async move {
                let now = Utc::now();
                raw.session
                    .execute_unpaged(
                        &raw.upsert,
                        (
                            raw.tenant.as_str(),
                            Uuid::now_v7(),
                            Uuid::now_v7(),
                            "EUR",
                            "open",
                            items,
                            2248i64,
                            2i64,
                            now,
                            now,
                            2i64,
                        ),
                    )
                    .await?;
                Ok(())
            }
        })
    }

    /// The rows the projector writes for [`EVENTS_PER_BATCH`] events, as one unlogged batch of
    /// 32 statements (its `MAX_STATEMENTS`): per event an `order_events` row, an `order_detail`
    /// row and an `orders_by_customer` row, and a `sales_per_day` row for one event in five (the
    /// payment): 3.2 rows per event, idempotent `USING TIMESTAMP`, as `projections/batched.rs`
    /// sends them. One operation = [`EVENTS_PER_BATCH`] events.
    fn batched_rows_op(&self) -> measure::OpFn {
        let raw = self.clone();
        let items = r#"[{"sku":"SKU-1","quantity":1,"unit_price_cents":1250},{"sku":"SKU-2","quantity":2,"unit_price_cents":499}]"#;
        op(move |seq, _| {
            let raw = raw.clone();
            async move {
                let now = Utc::now();
                let day = now.date_naive();
                let mut batch = Batch::new(BatchType::Unlogged);
                let mut values: Vec<Box<dyn scylla::serialize::row::SerializeRow + Send + Sync>> =
                    Vec::with_capacity(32);
                let order = Uuid::now_v7();
                let customer = Uuid::now_v7();
                for e in 0..EVENTS_PER_BATCH as i64 {
                    let version = e % 5 + 1;
                    let ts = version;
                    batch.append_statement(raw.history.clone());
                    values.push(Box::new((
                        raw.tenant.clone(),
                        order,
                        version + e,
                        raw.envelope.clone(),
                        ts,
                    )));
                    batch.append_statement(raw.upsert.clone());
                    values.push(Box::new((
                        raw.tenant.clone(),
                        order,
                        customer,
                        "EUR",
                        "open",
                        items,
                        2248i64,
                        version,
                        now,
                        now,
                        ts,
                    )));
                    batch.append_statement(raw.by_customer.clone());
                    values.push(Box::new((
                        raw.tenant.clone(),
                        customer,
                        now,
                        order,
                        "open",
                        2248i64,
                        version,
                        ts,
                    )));
                    if (seq as i64 * EVENTS_PER_BATCH as i64 + e) % 5 == 3 {
                        batch.append_statement(raw.sale.clone());
                        values.push(Box::new((
                            raw.tenant.clone(),
                            day,
                            order,
                            2248i64,
                            version,
                            ts,
                        )));
                    }
                }
                raw.session.batch(&batch, values).await?;
                Ok(())
            }
        })
    }

    async fn read_op(&self, generation: i32, ids: Arc<Vec<Uuid>>) -> anyhow::Result<measure::OpFn> {
        // The same statement query-api prepares for an order view.
        let select = self
            .session
            .prepare(format!(
                "SELECT customer_id, currency, status, items, total_cents, version, placed_at, updated_at \
                 FROM {}.order_detail_g{generation} WHERE tenant_id = ? AND order_id = ?",
                self.ks
            ))
            .await?;
        let raw = self.clone();
        Ok(op(move |seq, worker| {
            let (raw, select, ids) = (raw.clone(), select.clone(), ids.clone());
            async move {
                let id =
                    ids[(measure::mix(seq ^ ((worker as u64) << 40)) % ids.len() as u64) as usize];
                type R = (
                    Option<Uuid>,
                    Option<String>,
                    Option<String>,
                    Option<String>,
                    Option<i64>,
                    Option<i64>,
                    Option<DateTime<Utc>>,
                    Option<DateTime<Utc>>,
                );
                let rows = raw
                    .session
                    .execute_unpaged(&select, (raw.tenant.as_str(), id))
                    .await?
                    .into_rows_result()?;
                match rows.maybe_first_row::<R>()? {
                    Some(_) => Ok(()),
                    None => bail!("order {id} not in the read model"),
                }
            }
        }))
    }
}
