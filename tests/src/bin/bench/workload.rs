//! What the load is made of: the order lifecycle clients go through (place, add two items, pay,
//! ship), the synthetic event backlog for the projector, and the raw baseline operations.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use events::order::{LineItem, OrderEvent};
use events::EventEnvelope;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tests::envelope;
use uuid::Uuid;

use crate::measure::{record, OpFn};

/// The lifecycle of an order: 5 commands (20% place, 40% add item, 20% pay, 20% ship).
pub const STEPS: usize = 5;
pub const TOTAL_CENTS: i64 = 1250 + 2 * 499 + 2999;

/// One command of the lifecycle, sent to `base` (this system's command-api, or the peer, which
/// takes the same bodies); the answer's body once its status is the one expected.
pub async fn send_command(
    http: &reqwest::Client,
    base: &str,
    order_id: Uuid,
    step: usize,
) -> anyhow::Result<serde_json::Value> {
    let (path, body, expected) = match step {
        0 => (
            "/v1/orders".to_string(),
            serde_json::json!({
                "order_id": order_id, "customer_id": Uuid::now_v7(), "currency": "EUR",
                "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1250}]
            }),
            201,
        ),
        1 => (
            format!("/v1/orders/{order_id}/items"),
            serde_json::json!({"sku": "SKU-2", "quantity": 2, "unit_price_cents": 499}),
            200,
        ),
        2 => (
            format!("/v1/orders/{order_id}/items"),
            serde_json::json!({"sku": "SKU-3", "quantity": 1, "unit_price_cents": 2999}),
            200,
        ),
        3 => (
            format!("/v1/orders/{order_id}/payments"),
            serde_json::json!({"amount_cents": TOTAL_CENTS, "payment_ref": format!("pay-{order_id}")}),
            200,
        ),
        _ => (
            format!("/v1/orders/{order_id}/shipments"),
            serde_json::json!({"carrier": "DHL", "tracking_number": format!("TRK-{order_id}")}),
            200,
        ),
    };
    let response = http
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .context("sending a command")?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    if status != expected {
        bail!(
            "step {step} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// One command of the lifecycle; returns the order's version after it.
pub async fn command(
    http: &reqwest::Client,
    base: &str,
    order_id: Uuid,
    step: usize,
) -> anyhow::Result<i64> {
    let body = send_command(http, base, order_id, step).await?;
    body["version"]
        .as_i64()
        .context("no version in the command's answer")
}

/// Closed loop: each worker walks its own orders through the lifecycle.
pub fn closed_commands(http: reqwest::Client, base: String, workers: usize) -> OpFn {
    closed_lifecycle(http, base, None, workers)
}

/// Closed loop of read-your-writes clients: as [`closed_commands`], and each command's result is
/// read back through query-api (`GET /v1/orders/{id}?min_version=v`) before the next is sent.
pub fn closed_commands_read_back(
    http: reqwest::Client,
    base: String,
    query: String,
    workers: usize,
) -> OpFn {
    closed_lifecycle(http, base, Some(query), workers)
}

fn closed_lifecycle(
    http: reqwest::Client,
    base: String,
    query: Option<String>,
    workers: usize,
) -> OpFn {
    let current: Arc<Vec<Mutex<Uuid>>> =
        Arc::new((0..workers).map(|_| Mutex::new(Uuid::nil())).collect());
    crate::measure::op(move |seq, worker| {
        let (http, base, query, current) =
            (http.clone(), base.clone(), query.clone(), current.clone());
        async move {
            let step = (seq % STEPS as u64) as usize;
            let id = if step == 0 {
                let id = Uuid::now_v7();
                if let Ok(mut c) = current[worker].lock() {
                    *c = id;
                }
                id
            } else {
                current[worker].lock().map(|c| *c).unwrap_or_default()
            };
            let version = command(&http, &base, id, step).await?;
            if let Some(query) = query {
                let url = format!("{query}/v1/orders/{id}?min_version={version}&wait_ms=5000");
                let response = http.get(url).send().await.context("reading back")?;
                let status = response.status().as_u16();
                let _ = response.bytes().await;
                if status != 200 {
                    bail!("read-back of {id} at version {version} answered {status}");
                }
            }
            Ok(())
        }
    })
}

/// Closed loop of the lifecycle as [`closed_commands`], for any service that takes the same
/// bodies (this system or the peer): an answer counts once its status is the expected one.
pub fn closed_commands_any(http: reqwest::Client, base: String, workers: usize) -> OpFn {
    let current: Arc<Vec<Mutex<Uuid>>> =
        Arc::new((0..workers).map(|_| Mutex::new(Uuid::nil())).collect());
    crate::measure::op(move |seq, worker| {
        let (http, base, current) = (http.clone(), base.clone(), current.clone());
        async move {
            let step = (seq % STEPS as u64) as usize;
            let id = if step == 0 {
                let id = Uuid::now_v7();
                if let Ok(mut c) = current[worker].lock() {
                    *c = id;
                }
                id
            } else {
                current[worker].lock().map(|c| *c).unwrap_or_default()
            };
            send_command(&http, &base, id, step).await?;
            Ok(())
        }
    })
}

/// Orders whose previous command has been answered, waiting for their next one.
#[derive(Clone, Default)]
pub struct Ready(Arc<Mutex<VecDeque<(Uuid, usize)>>>);

impl Ready {
    /// The next command to send: an order ready for its next step, else a new order.
    pub fn next(&self) -> (Uuid, usize) {
        self.0
            .lock()
            .ok()
            .and_then(|mut q| q.pop_front())
            .unwrap_or_else(|| (Uuid::now_v7(), 0))
    }
    pub fn done(&self, id: Uuid, step: usize) {
        if step + 1 < STEPS {
            if let Ok(mut q) = self.0.lock() {
                q.push_back((id, step + 1));
            }
        }
    }
}

/// Where freshness is observed and recorded.
#[derive(Clone)]
pub struct Freshness {
    /// query-api's base URL.
    pub query: String,
    pub api: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
    /// Read-backs that answered non-2xx or not at all (their time is in `api` too).
    pub failures: Arc<std::sync::atomic::AtomicU64>,
    /// Read-backs sent and not yet answered: the run waits for all of them.
    pub in_flight: Arc<std::sync::atomic::AtomicU64>,
    pub session: Arc<scylla::client::session::Session>,
    /// `SELECT version FROM order_detail_g<g> WHERE tenant_id = ? AND order_id = ?`
    pub select: scylla::statement::prepared::PreparedStatement,
    pub tenant: String,
    pub table: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
    /// Set while a command is being watched at the table: one at a time, so that the watching
    /// costs at most one CQL read per 2 ms however far the projector falls behind (a watch per
    /// command would add load in proportion to the lag it measures, and feed it).
    pub watching: Arc<std::sync::atomic::AtomicBool>,
}

/// Clears the watching flag when the watch ends, however it ends.
struct Release(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Open loop: each due command is the next step of some order that is ready, or a new order.
/// With `freshness`, every accepted command is then read back through query-api with
/// `min_version`; the time from the command's answer to the view's answer is recorded.
pub fn open_commands(http: reqwest::Client, base: String, freshness: Option<Freshness>) -> OpFn {
    let ready = Ready::default();
    crate::measure::op(move |_seq, _worker| {
        let (http, base, ready, freshness) =
            (http.clone(), base.clone(), ready.clone(), freshness.clone());
        let (id, step) = ready.next();
        async move {
            let result = command(&http, &base, id, step).await;
            let accepted = Instant::now();
            if result.is_ok() {
                ready.done(id, step);
            }
            let version = result?;
            if let Some(f) = freshness {
                // Off the command's latency: the read-back is its own task.
                let table = f.clone();
                f.in_flight
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                tokio::spawn(async move {
                    let url = format!(
                        "{}/v1/orders/{id}?min_version={version}&wait_ms=5000",
                        f.query
                    );
                    let ok = match http.get(url).send().await {
                        Ok(r) => {
                            let success = r.status().is_success();
                            success && r.bytes().await.is_ok()
                        }
                        Err(_) => false,
                    };
                    // A failed read-back is timed too: leaving it out would hide the slowest.
                    record(&f.api, accepted.elapsed());
                    if !ok {
                        f.failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    f.in_flight
                        .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                });
                // One command at a time is also watched at the table itself (CQL polled every
                // 2 ms), to tell the projector's delay from query-api's.
                let idle = table.watching.compare_exchange(
                    false,
                    true,
                    std::sync::atomic::Ordering::AcqRel,
                    std::sync::atomic::Ordering::Acquire,
                );
                if idle.is_ok() {
                    tokio::spawn(async move {
                        let _release = Release(table.watching.clone());
                        let deadline = accepted + Duration::from_secs(5);
                        while Instant::now() < deadline {
                            let seen = table
                                .session
                                .execute_unpaged(&table.select, (table.tenant.as_str(), id))
                                .await
                                .ok()
                                .and_then(|r| r.into_rows_result().ok())
                                .and_then(|rows| {
                                    rows.maybe_first_row::<(Option<i64>,)>().ok().flatten()
                                })
                                .and_then(|(v,)| v)
                                .unwrap_or(0);
                            if seen >= version {
                                record(&table.table, accepted.elapsed());
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    });
                }
            }
            Ok(())
        }
    })
}

// ------------------------------------------------------------------------------------------------
// Synthetic events
// ------------------------------------------------------------------------------------------------

/// The lifecycle's events for one order, as the command API would write them.
pub fn lifecycle_events(tenant: &str, id: Uuid) -> Vec<EventEnvelope> {
    let line = |sku: &str, quantity: u32, unit_price_cents: i64| LineItem {
        sku: sku.into(),
        quantity,
        unit_price_cents,
    };
    vec![
        envelope(
            tenant,
            id,
            1,
            OrderEvent::OrderPlaced {
                order_id: id,
                customer_id: Uuid::now_v7(),
                currency: "EUR".into(),
                items: vec![line("SKU-1", 1, 1250)],
            },
        ),
        envelope(tenant, id, 2, OrderEvent::ItemAdded(line("SKU-2", 2, 499))),
        envelope(tenant, id, 3, OrderEvent::ItemAdded(line("SKU-3", 1, 2999))),
        envelope(
            tenant,
            id,
            4,
            OrderEvent::PaymentRecorded {
                amount_cents: TOTAL_CENTS,
                payment_ref: format!("pay-{id}"),
            },
        ),
        envelope(
            tenant,
            id,
            5,
            OrderEvent::OrderShipped {
                carrier: "DHL".into(),
                tracking_number: format!("TRK-{id}"),
            },
        ),
    ]
}

pub fn partition_of(id: Uuid, partitions: i32) -> i32 {
    ((id.as_u128() as u64) % partitions.max(1) as u64) as i32
}

/// Produce `orders` orders' lifecycles to `topic`, in waves of `wave` orders (every order of a
/// wave is placed, then every one gets its first item, …), the way a busy shop interleaves them.
/// Returns the order ids.
pub async fn produce_backlog(
    producer: &FutureProducer,
    topic: &str,
    partitions: i32,
    tenant: &str,
    orders: usize,
    wave: usize,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Vec<Uuid>> {
    let mut ids = Vec::with_capacity(orders);
    let mut in_flight = VecDeque::new();
    let mut sent = 0u64;
    for chunk_start in (0..orders).step_by(wave.max(1)) {
        let n = wave.min(orders - chunk_start);
        let chunk: Vec<(Uuid, Vec<EventEnvelope>)> = (0..n)
            .map(|_| {
                let id = Uuid::now_v7();
                (id, lifecycle_events(tenant, id))
            })
            .collect();
        ids.extend(chunk.iter().map(|(id, _)| *id));
        for step in 0..STEPS {
            for (id, events) in &chunk {
                let e = &events[step];
                let payload = e.to_json();
                let key = e.key();
                let mut record = FutureRecord::to(topic)
                    .partition(partition_of(*id, partitions))
                    .key(&key)
                    .payload(&payload)
                    .headers(command_api::publisher::record_headers(e));
                loop {
                    match producer.send_result(record) {
                        Ok(delivery) => {
                            in_flight.push_back(delivery);
                            break;
                        }
                        Err((_, back)) => {
                            // Queue full: wait for the oldest delivery, then retry.
                            record = back;
                            match in_flight.pop_front() {
                                Some(d) => {
                                    let _ = d.await;
                                }
                                None => tokio::time::sleep(Duration::from_millis(5)).await,
                            }
                        }
                    }
                }
                sent += 1;
                while in_flight.len() > 20_000 {
                    if let Some(d) = in_flight.pop_front() {
                        match d.await {
                            Ok(Ok(_)) => {}
                            _ => bail!("a backlog record was not delivered"),
                        }
                    }
                }
                if sent.is_multiple_of(1000) {
                    progress.set_position(sent);
                }
            }
        }
    }
    while let Some(d) = in_flight.pop_front() {
        match d.await {
            Ok(Ok(_)) => {}
            _ => bail!("a backlog record was not delivered"),
        }
    }
    progress.set_position(sent);
    Ok(ids)
}
