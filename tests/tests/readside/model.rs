//! What the read models must hold, worked out from the events a test caused, independently of the
//! projector: order lifecycles ([`Plan`]) sent as commands or published as envelopes, the state
//! each order must end in ([`Expected`]), and the rows of a generation ([`Snapshot`]) to hold
//! against it.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration as Minutes, NaiveDate, TimeZone, Utc};
use events::{EventEnvelope, EventMetadata, LineItem, OrderEvent, ORDER_AGGREGATE};
use serde_json::json;
use tests::{CommandApi, Keyspace, PROJECTIONS};
use uuid::Uuid;

/// One order's life: the events its commands cause, in order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub order: Uuid,
    pub events: Vec<OrderEvent>,
}

fn line(sku: &str, quantity: u32, unit_price_cents: i64) -> LineItem {
    LineItem {
        sku: sku.into(),
        quantity,
        unit_price_cents,
    }
}

impl Plan {
    /// The `i`-th of a mix of lifecycles (4–6 events): lines added (twice the same SKU for some),
    /// removed, paid, shipped, cancelled before or after payment, or left open.
    pub fn mixed(i: usize, customer: Uuid) -> Self {
        let order = Uuid::now_v7();
        let mut events = vec![OrderEvent::OrderPlaced {
            order_id: order,
            customer_id: customer,
            currency: "EUR".into(),
            items: vec![line("A", 1 + (i % 3) as u32, 100 * (1 + (i % 7) as i64))],
        }];
        events.push(OrderEvent::ItemAdded(line("B", 2, 250)));
        if i.is_multiple_of(2) {
            events.push(OrderEvent::ItemAdded(line("C", 1, 999)));
        }
        if i.is_multiple_of(3) {
            // The same SKU again adds to its quantity.
            events.push(OrderEvent::ItemAdded(line("B", 1, 250)));
        }
        if i.is_multiple_of(4) {
            events.push(OrderEvent::ItemRemoved { sku: "A".into() });
        }
        if i % 5 != 4 {
            let total = expect(&events, None).total_cents;
            events.push(OrderEvent::PaymentRecorded {
                amount_cents: total,
                payment_ref: format!("pay-{i}"),
            });
            match i % 3 {
                0 => events.push(OrderEvent::OrderCancelled {
                    reason: "changed mind".into(),
                }),
                1 => events.push(OrderEvent::OrderShipped {
                    carrier: "DHL".into(),
                    tracking_number: format!("T{i}"),
                }),
                _ => {}
            }
        } else if i.is_multiple_of(2) {
            events.push(OrderEvent::OrderCancelled {
                reason: "never paid".into(),
            });
        }
        Self { order, events }
    }

    /// When each event happened, for plans published as envelopes: orders spread over five days
    /// of March 2026, their events a minute apart.
    pub fn times(&self, i: usize) -> Vec<DateTime<Utc>> {
        let placed = Utc
            .with_ymd_and_hms(2026, 3, 1 + (i % 5) as u32, 8, 0, 0)
            .single()
            .unwrap_or_default()
            + Minutes::seconds(i as i64);
        (0..self.events.len())
            .map(|k| placed + Minutes::minutes(k as i64))
            .collect()
    }

    /// The envelopes of the plan as command-api of `tenant` would publish them.
    pub fn envelopes(&self, tenant: &str, times: &[DateTime<Utc>]) -> Vec<EventEnvelope> {
        self.events
            .iter()
            .zip(times)
            .enumerate()
            .map(|(k, (event, at))| EventEnvelope {
                event_id: Uuid::now_v7(),
                tenant_id: tenant.into(),
                aggregate_type: ORDER_AGGREGATE.into(),
                aggregate_id: self.order,
                sequence: k as u64 + 1,
                event_type: event.event_type().into(),
                schema_version: event.schema_version(),
                occurred_at: *at,
                metadata: EventMetadata {
                    command_id: Uuid::now_v7(),
                    correlation_id: format!("readside-{}", self.order),
                    causation_id: format!("readside-{}-{k}", self.order),
                    traceparent: None,
                    tracestate: None,
                },
                payload: event.to_payload(),
            })
            .collect()
    }

    /// Send the plan as commands; each must succeed with the next version. A 503 (the database
    /// or broker briefly unavailable, as under the rebuild's load) is retried with the same
    /// idempotency key, as the API asks clients to: it must then still answer the next version.
    pub async fn send(&self, api: &CommandApi) -> anyhow::Result<()> {
        for (k, event) in self.events.iter().enumerate() {
            let key = format!("readside-{}-{k}", self.order);
            let mut reply =
                send_keyed(api, self.order, event, &[("Idempotency-Key", &key)]).await?;
            for _ in 0..RETRIES_ON_503 {
                if reply.status != 503 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                reply = send_keyed(api, self.order, event, &[("Idempotency-Key", &key)]).await?;
            }
            let expected_status = if k == 0 { 201 } else { 200 };
            anyhow::ensure!(
                reply.status == expected_status && reply.body["version"] == json!(k + 1),
                "{} on {} answered {}: {}",
                event.event_type(),
                self.order,
                reply.status,
                reply.body
            );
        }
        Ok(())
    }
}

/// The command that causes `event` on `order`.
/// How often [`Plan::send`] retries a command that answered 503.
const RETRIES_ON_503: usize = 5;

pub async fn send_command(
    api: &CommandApi,
    order: Uuid,
    event: &OrderEvent,
) -> anyhow::Result<tests::Reply> {
    send_keyed(api, order, event, &[]).await
}

/// [`send_command`] with extra request headers.
async fn send_keyed(
    api: &CommandApi,
    order: Uuid,
    event: &OrderEvent,
    headers: &[(&str, &str)],
) -> anyhow::Result<tests::Reply> {
    let path = |tail: &str| format!("/v1/orders/{order}{tail}");
    match event {
        OrderEvent::OrderPlaced {
            order_id,
            customer_id,
            currency,
            items,
        } => {
            api.post(
                "/v1/orders",
                json!({"order_id": order_id, "customer_id": customer_id, "currency": currency, "items": items}),
                headers,
            )
            .await
        }
        OrderEvent::ItemAdded(item) => api.post(&path("/items"), json!(item), headers).await,
        OrderEvent::ItemRemoved { sku } => {
            let mut request = api.http.delete(api.url(&path(&format!("/items/{sku}"))));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            tests::Reply::from(request.send().await?).await
        }
        OrderEvent::PaymentRecorded {
            amount_cents,
            payment_ref,
        } => {
            api.post(
                &path("/payments"),
                json!({"amount_cents": amount_cents, "payment_ref": payment_ref}),
                headers,
            )
            .await
        }
        OrderEvent::OrderShipped {
            carrier,
            tracking_number,
        } => {
            api.post(
                &path("/shipments"),
                json!({"carrier": carrier, "tracking_number": tracking_number}),
                headers,
            )
            .await
        }
        OrderEvent::OrderCancelled { reason } => {
            api.post(&path("/cancellation"), json!({"reason": reason}), headers)
                .await
        }
    }
}

/// The state an order must be projected to.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub customer: Option<Uuid>,
    pub currency: Option<String>,
    pub status: &'static str,
    pub items: Vec<LineItem>,
    pub total_cents: i64,
    pub version: i64,
    /// Set by a payment, kept after a cancellation.
    pub paid_cents: Option<i64>,
    /// What the order adds to the sales of its payment day: paid and not cancelled.
    pub sale: Option<i64>,
    /// Only known when the test chose the events' times.
    pub placed_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
}

/// Fold the events by the rules of docs/api.md (independently of the projector's code).
pub fn expect(events: &[OrderEvent], times: Option<&[DateTime<Utc>]>) -> Expected {
    let mut e = Expected {
        customer: None,
        currency: None,
        status: "open",
        items: Vec::new(),
        total_cents: 0,
        version: 0,
        paid_cents: None,
        sale: None,
        placed_at: None,
        updated_at: None,
        paid_at: None,
    };
    for (k, event) in events.iter().enumerate() {
        let at = times.map(|t| t[k]);
        e.version = k as i64 + 1;
        e.updated_at = at;
        match event {
            OrderEvent::OrderPlaced {
                customer_id,
                currency,
                items,
                ..
            } => {
                e.customer = Some(*customer_id);
                e.currency = Some(currency.clone());
                e.items = items.clone();
                e.placed_at = at;
            }
            OrderEvent::ItemAdded(item) => match e.items.iter_mut().find(|l| l.sku == item.sku) {
                Some(l) => l.quantity += item.quantity,
                None => e.items.push(item.clone()),
            },
            OrderEvent::ItemRemoved { sku } => e.items.retain(|l| &l.sku != sku),
            OrderEvent::PaymentRecorded { amount_cents, .. } => {
                e.status = "paid";
                e.paid_cents = Some(*amount_cents);
                e.sale = Some(*amount_cents);
                e.paid_at = at;
            }
            OrderEvent::OrderShipped { .. } => e.status = "shipped",
            OrderEvent::OrderCancelled { .. } => {
                e.status = "cancelled";
                e.sale = None;
            }
        }
        e.total_cents = e
            .items
            .iter()
            .map(|l| l.unit_price_cents * i64::from(l.quantity))
            .sum();
    }
    e
}

/// One `order_detail` row.
#[derive(Debug, Clone, PartialEq)]
pub struct DetailRow {
    pub customer: Option<Uuid>,
    pub currency: Option<String>,
    pub status: Option<String>,
    pub items: Vec<LineItem>,
    pub total_cents: Option<i64>,
    pub version: Option<i64>,
    pub placed_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub paid_cents: Option<i64>,
}

/// The rows of the read models of one generation, typed.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub detail: BTreeMap<Uuid, DetailRow>,
    /// (customer, placed_at, order) → (status, total, version)
    pub by_customer: Vec<(Uuid, DateTime<Utc>, Uuid, String, i64, i64)>,
    /// (day, order, revenue, version)
    pub sales: Vec<(NaiveDate, Uuid, i64, i64)>,
    /// order → [(sequence, envelope)], in clustering (sequence) order
    pub events: BTreeMap<Uuid, Vec<(i64, String)>>,
}

type DetailColumns = (
    Uuid,
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

async fn rows<R>(ks: &Keyspace, cql: String) -> anyhow::Result<Vec<R>>
where
    R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    use futures::TryStreamExt;
    Ok(ks
        .session
        .query_iter(cql, ())
        .await?
        .rows_stream::<R>()?
        .try_collect()
        .await?)
}

impl Snapshot {
    /// Read `orders` generation `orders_g` and `order_history` generation `history_g`.
    pub async fn read(ks: &Keyspace, orders_g: i32, history_g: i32) -> anyhow::Result<Self> {
        let mut snapshot = Self::default();
        for (
            order,
            customer,
            currency,
            status,
            items,
            total,
            version,
            placed,
            updated,
            paid_at,
            paid_cents,
        ) in rows::<DetailColumns>(ks, {
            use read_models::orders::order_detail as d;
            format!(
                "SELECT {} FROM {}",
                read_models::schema::list(&[
                    d::ORDER_ID,
                    d::CUSTOMER_ID,
                    d::CURRENCY,
                    d::STATUS,
                    d::ITEMS,
                    d::TOTAL_CENTS,
                    d::VERSION,
                    d::PLACED_AT,
                    d::UPDATED_AT,
                    d::PAID_AT,
                    d::PAID_CENTS,
                ]),
                d::TABLE.name(orders_g)
            )
        })
        .await?
        {
            let items = serde_json::from_str(items.as_deref().unwrap_or("[]"))?;
            snapshot.detail.insert(
                order,
                DetailRow {
                    customer,
                    currency,
                    status,
                    items,
                    total_cents: total,
                    version,
                    placed_at: placed,
                    updated_at: updated,
                    paid_at,
                    paid_cents,
                },
            );
        }
        for (customer, placed, order, status, total, version) in rows::<(
            Uuid,
            DateTime<Utc>,
            Uuid,
            Option<String>,
            Option<i64>,
            Option<i64>,
        )>(
            ks,
            format!(
                "SELECT customer_id, placed_at, order_id, status, total_cents, version \
                 FROM orders_by_customer_g{orders_g}"
            ),
        )
        .await?
        {
            snapshot.by_customer.push((
                customer,
                placed,
                order,
                status.unwrap_or_default(),
                total.unwrap_or(-1),
                version.unwrap_or(-1),
            ));
        }
        for (day, order, revenue, version) in rows::<(NaiveDate, Uuid, Option<i64>, Option<i64>)>(
            ks,
            format!("SELECT day, order_id, revenue_cents, version FROM sales_by_day_g{orders_g}"),
        )
        .await?
        {
            snapshot
                .sales
                .push((day, order, revenue.unwrap_or(-1), version.unwrap_or(-1)));
        }
        for (order, sequence, envelope) in rows::<(Uuid, i64, Option<String>)>(
            ks,
            format!("SELECT aggregate_id, sequence, envelope FROM order_events_g{history_g}"),
        )
        .await?
        {
            snapshot
                .events
                .entry(order)
                .or_default()
                .push((sequence, envelope.unwrap_or_default()));
        }
        Ok(snapshot)
    }

    /// Every difference from what the orders must look like; `published` (the exact envelope
    /// bytes, when the test produced them) is held against `order_events`.
    pub fn differences(
        &self,
        expected: &BTreeMap<Uuid, Expected>,
        published: Option<&BTreeMap<Uuid, Vec<Vec<u8>>>>,
    ) -> Vec<String> {
        let mut diffs = Vec::new();
        let mut by_customer: BTreeMap<Uuid, Vec<_>> = BTreeMap::new();
        for row in &self.by_customer {
            by_customer.entry(row.2).or_default().push(row);
        }
        let mut sales: BTreeMap<Uuid, Vec<_>> = BTreeMap::new();
        for row in &self.sales {
            sales.entry(row.1).or_default().push(row);
        }
        for extra in self.detail.keys().filter(|o| !expected.contains_key(o)) {
            diffs.push(format!("order_detail has an unknown order {extra}"));
        }
        for (order, e) in expected {
            let Some(d) = self.detail.get(order) else {
                diffs.push(format!("order_detail misses {order}"));
                continue;
            };
            let mut want = DetailRow {
                customer: e.customer,
                currency: e.currency.clone(),
                status: Some(e.status.to_string()),
                items: e.items.clone(),
                total_cents: Some(e.total_cents),
                version: Some(e.version),
                placed_at: e.placed_at,
                updated_at: e.updated_at,
                paid_at: e.paid_at,
                paid_cents: e.paid_cents,
            };
            if e.placed_at.is_none() {
                // Times chosen by command-api: only their presence is known.
                want.placed_at = d.placed_at;
                want.updated_at = d.updated_at;
                want.paid_at = d.paid_at;
                if d.placed_at.is_none() || d.updated_at.is_none() {
                    diffs.push(format!("{order}: no placed_at/updated_at: {d:?}"));
                }
                if d.paid_at.is_some() != e.paid_cents.is_some() {
                    diffs.push(format!("{order}: paid_at {:?} for {e:?}", d.paid_at));
                }
            }
            if *d != want {
                diffs.push(format!("order_detail {order}: {d:?}, expected {want:?}"));
            }
            match by_customer.get(order).map(Vec::as_slice) {
                Some([(customer, placed, _, status, total, version)]) => {
                    let got = (
                        Some(*customer),
                        Some(*placed),
                        status.as_str(),
                        *total,
                        *version,
                    );
                    let want = (e.customer, d.placed_at, e.status, e.total_cents, e.version);
                    if got != want {
                        diffs.push(format!(
                            "orders_by_customer {order}: {got:?}, expected {want:?}"
                        ));
                    }
                }
                other => diffs.push(format!(
                    "orders_by_customer holds {order} {} times",
                    other.map_or(0, <[_]>::len)
                )),
            }
            match (sales.get(order).map(Vec::as_slice), e.sale) {
                (None, None) => {}
                (Some([(day, _, revenue, _)]), Some(sale)) => {
                    let paid_day = d.paid_at.map(|t| t.date_naive());
                    if *revenue != sale || Some(*day) != paid_day {
                        diffs.push(format!(
                            "sales_by_day {order}: {revenue} on {day}, expected {sale} on {paid_day:?}"
                        ));
                    }
                }
                (rows, sale) => diffs.push(format!(
                    "sales_by_day holds {order} {} times, expected {} (sale {sale:?})",
                    rows.map_or(0, <[_]>::len),
                    usize::from(sale.is_some())
                )),
            }
            let history = self.events.get(order).cloned().unwrap_or_default();
            let sequences: Vec<i64> = history.iter().map(|(s, _)| *s).collect();
            if sequences != (1..=e.version).collect::<Vec<_>>() {
                diffs.push(format!("order_events {order}: sequences {sequences:?}"));
            }
            match published.and_then(|p| p.get(order)) {
                Some(payloads) => {
                    for ((sequence, envelope), payload) in history.iter().zip(payloads) {
                        if envelope.as_bytes() != payload.as_slice() {
                            diffs.push(format!(
                                "order_events {order}#{sequence} differs from what was published"
                            ));
                        }
                    }
                }
                None => {
                    for (sequence, envelope) in &history {
                        let parsed = EventEnvelope::from_json(envelope.as_bytes());
                        if !parsed.is_ok_and(|p| {
                            p.aggregate_id == *order && p.sequence as i64 == *sequence
                        }) {
                            diffs.push(format!("order_events {order}#{sequence}: {envelope}"));
                        }
                    }
                }
            }
        }
        if self.by_customer.len() != expected.len() {
            diffs.push(format!(
                "orders_by_customer has {} rows for {} orders",
                self.by_customer.len(),
                expected.len()
            ));
        }
        let sold = expected.values().filter(|e| e.sale.is_some()).count();
        if self.sales.len() != sold {
            diffs.push(format!(
                "sales_by_day has {} rows for {sold} paid orders",
                self.sales.len()
            ));
        }
        diffs
    }
}

/// Fail with the first differences, if any.
pub fn assert_no_differences(what: &str, diffs: &[String]) {
    assert!(
        diffs.is_empty(),
        "{what}: {} differences, first ones:\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Every table of `projection` holds the same rows, column for column, in generation `a` and `b`.
pub async fn assert_generations_equal(ks: &Keyspace, projection: &str, a: i32, b: i32) {
    let tables = PROJECTIONS
        .iter()
        .find(|p| p.name == projection)
        .map(|p| p.bases)
        .unwrap_or_default();
    for base in tables {
        let left = ks.table_rows(&format!("{base}_g{a}")).await.unwrap();
        let right = ks.table_rows(&format!("{base}_g{b}")).await.unwrap();
        let only_left: Vec<_> = left
            .iter()
            .filter(|r| right.binary_search(r).is_err())
            .take(5)
            .collect();
        let only_right: Vec<_> = right
            .iter()
            .filter(|r| left.binary_search(r).is_err())
            .take(5)
            .collect();
        assert!(
            left == right,
            "{base}: g{a} has {} rows, g{b} has {}; only in g{a}: {only_left:?}; only in g{b}: {only_right:?}",
            left.len(),
            right.len()
        );
        assert!(!left.is_empty(), "{base}_g{a} is empty: nothing compared");
    }
}

/// A rebuild running in the background, already switched to its new generation.
pub struct Beside {
    pub projection: String,
    pub previous: i32,
    pub generation: i32,
    pub task: tokio::task::JoinHandle<anyhow::Result<projector::RebuildReport>>,
}

/// Rebuild `projections` into their next generation from offset 0 — in the background, with a
/// grace long enough that the previous generation is still there to compare — and wait for the
/// switch. Abort the tasks once the generations are compared.
pub async fn rebuild_beside(
    ks: &Keyspace,
    settings: &infra::Settings,
    projections: &[&str],
) -> Vec<Beside> {
    let mut rebuilds = Vec::new();
    for projection in projections {
        let (active, _) = ks.generations(projection).await.unwrap().unwrap();
        let task = tokio::spawn(projector::rebuild_with(
            settings.clone(),
            projector::RebuildOptions {
                projection: projection.to_string(),
                from: None,
                progress: false,
                grace: std::time::Duration::from_secs(600),
            },
        ));
        rebuilds.push(Beside {
            projection: projection.to_string(),
            previous: active,
            generation: active + 1,
            task,
        });
    }
    for rebuild in &rebuilds {
        let switched = ks
            .wait_active(
                &rebuild.projection,
                rebuild.generation,
                std::time::Duration::from_secs(90),
            )
            .await;
        if let Err(err) = switched {
            if rebuild.task.is_finished() {
                panic!("the rebuild of {} ended early; {err:#}", rebuild.projection);
            }
            panic!("{err:#}");
        }
    }
    rebuilds
}
