//! Commands become visible through query-api: order views equal the aggregates' state, a
//! customer's orders newest first page by page, sales per day, the event history; and a read
//! with `min_version` right after a command sees that command.

use std::time::Duration;

use chrono::{Days, Utc};
use events::{LineItem, OrderEvent};
use serde_json::{json, Value};
use tests::{read_topic, settings_with_fresh_topic, CommandApi, Keyspace, Projector, QueryApi};
use uuid::Uuid;

use crate::model::{expect, send_command, Plan};

const DRAIN: Duration = Duration::from_secs(60);

fn line(sku: &str, quantity: u32, unit_price_cents: i64) -> LineItem {
    LineItem {
        sku: sku.into(),
        quantity,
        unit_price_cents,
    }
}

fn placed(order: Uuid, customer: Uuid, items: Vec<LineItem>) -> OrderEvent {
    OrderEvent::OrderPlaced {
        order_id: order,
        customer_id: customer,
        currency: "EUR".into(),
        items,
    }
}

fn paid(amount_cents: i64) -> OrderEvent {
    OrderEvent::PaymentRecorded {
        amount_cents,
        payment_ref: format!("pay-{amount_cents}"),
    }
}

fn cancelled() -> OrderEvent {
    OrderEvent::OrderCancelled {
        reason: "changed mind".into(),
    }
}

/// Paid orders and revenue over yesterday..tomorrow (UTC), as query-api reports them.
async fn sales_around_today(queries: &QueryApi) -> (i64, i64) {
    let today = Utc::now().date_naive();
    let from = today.checked_sub_days(Days::new(1)).unwrap_or(today);
    let to = today.checked_add_days(Days::new(1)).unwrap_or(today);
    let reply = queries
        .get(&format!("/v1/stats/sales?from={from}&to={to}"))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let days = reply.body["days"].as_array().cloned().unwrap_or_default();
    for day in &days {
        assert!(
            day["orders_paid"].as_i64().unwrap_or(0) > 0,
            "days without sales are left out: {day}"
        );
    }
    (
        days.iter()
            .map(|d| d["orders_paid"].as_i64().unwrap())
            .sum(),
        days.iter()
            .map(|d| d["revenue_cents"].as_i64().unwrap())
            .sum(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_sent_to_command_api_become_visible_through_query_api_as_the_aggregates_state() {
    let mut settings = settings_with_fresh_topic("rs-visible").await.unwrap();
    let ks = Keyspace::fresh(&mut settings).await.unwrap();
    let commands = CommandApi::spawn(settings.clone()).await.unwrap();
    let projector = Projector::spawn(&settings);
    let queries = QueryApi::spawn(&settings).await.unwrap();

    // Five orders of one customer, placed one after the other; the second one's cancellation
    // is held back to see it leave the sales.
    let customer = Uuid::now_v7();
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let plans = vec![
        vec![
            placed(ids[0], customer, vec![line("A", 2, 500)]),
            OrderEvent::ItemAdded(line("B", 1, 250)),
            OrderEvent::ItemAdded(line("A", 1, 500)),
            OrderEvent::ItemRemoved { sku: "B".into() },
            paid(1500),
        ],
        vec![
            placed(ids[1], customer, vec![line("C", 1, 1000)]),
            paid(1000),
        ],
        vec![
            placed(ids[2], customer, vec![line("D", 3, 70)]),
            paid(210),
            OrderEvent::OrderShipped {
                carrier: "DHL".into(),
                tracking_number: "T-1".into(),
            },
        ],
        vec![placed(ids[3], customer, vec![line("E", 1, 5)])],
        vec![placed(ids[4], customer, vec![line("F", 1, 9)]), cancelled()],
    ];
    let mut plans: Vec<Plan> = ids
        .iter()
        .zip(plans)
        .map(|(order, events)| Plan {
            order: *order,
            events,
        })
        .collect();
    for plan in &plans {
        plan.send(&commands).await.unwrap();
    }

    // Sales count the three paid orders…
    ks.drain(&settings, DRAIN).await.unwrap();
    assert_eq!(sales_around_today(&queries).await, (3, 1500 + 1000 + 210));

    // …and no longer the second one once it is cancelled.
    let reply = send_command(&commands, ids[1], &cancelled()).await.unwrap();
    assert_eq!((reply.status, &reply.body["version"]), (200, &json!(3)));
    plans[1].events.push(cancelled());
    ks.drain(&settings, DRAIN).await.unwrap();
    assert_eq!(sales_around_today(&queries).await, (2, 1500 + 210));

    // Each view equals the aggregate's row (its JSON state and version) and what the commands did.
    let mut views = Vec::new();
    for plan in &plans {
        let view = queries
            .get(&format!("/v1/orders/{}", plan.order))
            .await
            .unwrap();
        assert_eq!(view.status, 200, "{}", view.body);
        let (version, state): (i64, String) = ks
            .session
            .query_unpaged(
                "SELECT version, state FROM aggregates WHERE tenant_id = ? \
                 AND aggregate_type = 'order' AND aggregate_id = ?",
                (&settings.tenant, plan.order),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .first_row::<(i64, String)>()
            .unwrap();
        let state: Value = serde_json::from_str(&state).unwrap();
        let total: i64 = state["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["quantity"].as_i64().unwrap() * l["unit_price_cents"].as_i64().unwrap())
            .sum();
        let body = &view.body;
        assert_eq!(body["order_id"], json!(plan.order));
        assert_eq!(body["customer_id"], state["customer_id"]);
        assert_eq!(body["currency"], state["currency"]);
        assert_eq!(body["status"], state["status"]);
        assert_eq!(body["items"], state["items"]);
        assert_eq!(body["total_cents"], json!(total));
        assert_eq!(body["version"], json!(version));
        assert_eq!(view.header("etag"), Some(format!("\"{version}\"").as_str()));
        let expected = expect(&plan.events, None);
        assert_eq!(
            (
                body["status"].as_str(),
                &body["items"],
                body["total_cents"].as_i64(),
                body["version"].as_i64()
            ),
            (
                Some(expected.status),
                &json!(expected.items),
                Some(expected.total_cents),
                Some(expected.version)
            ),
            "{} against its commands",
            plan.order
        );
        views.push(view.body);
    }
    assert_eq!(
        views
            .iter()
            .map(|v| v["status"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["paid", "cancelled", "shipped", "open", "cancelled"]
    );
    // The ETag answers 304 while current.
    let not_modified = queries
        .http
        .get(queries.url(&format!("/v1/orders/{}", ids[0])))
        .header("If-None-Match", "\"5\"")
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);

    // The customer's orders: newest first, two per page, each once when following the cursors.
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => format!("/v1/customers/{customer}/orders?limit=2"),
            Some(c) => format!("/v1/customers/{customer}/orders?limit=2&cursor={c}"),
        };
        let page = queries.get(&path).await.unwrap();
        assert_eq!(page.status, 200, "{}", page.body);
        let items = page.body["items"].as_array().cloned().unwrap();
        assert!(items.len() <= 2);
        listed.extend(items);
        pages += 1;
        assert!(pages <= 5, "the cursors do not end");
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let listed_ids: Vec<Uuid> = listed
        .iter()
        .map(|i| i["order_id"].as_str().unwrap().parse().unwrap())
        .collect();
    let newest_first: Vec<Uuid> = ids.iter().rev().copied().collect();
    assert_eq!(listed_ids, newest_first, "newest first, each once");
    for item in &listed {
        let view = views
            .iter()
            .find(|v| v["order_id"] == item["order_id"])
            .unwrap();
        for field in ["status", "total_cents", "version", "placed_at"] {
            assert_eq!(item[field], view[field], "{field} of {}", item["order_id"]);
        }
    }

    // The event history: the envelopes as published, in sequence order.
    let records = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    for plan in &plans {
        let published: Vec<Value> = records
            .iter()
            .map(|r| serde_json::from_slice::<Value>(&r.payload).unwrap())
            .filter(|e| e["aggregate_id"] == json!(plan.order))
            .collect();
        let history = queries
            .get(&format!("/v1/orders/{}/events", plan.order))
            .await
            .unwrap();
        assert_eq!(history.status, 200, "{}", history.body);
        let served = history.body["events"].as_array().cloned().unwrap();
        let sequences: Vec<u64> = served
            .iter()
            .map(|e| e["sequence"].as_u64().unwrap())
            .collect();
        assert_eq!(
            sequences,
            (1..=plan.events.len() as u64).collect::<Vec<_>>()
        );
        assert_eq!(served, published, "history of {}", plan.order);
        let types: Vec<&str> = served
            .iter()
            .map(|e| e["event_type"].as_str().unwrap())
            .collect();
        let planned: Vec<&str> = plan.events.iter().map(OrderEvent::event_type).collect();
        assert_eq!(types, planned);
    }

    queries.stop().await.unwrap();
    projector.stop().await.unwrap();
    commands.stop().await.unwrap();
    ks.drop_keyspace().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_with_min_version_right_after_a_command_sees_that_version() {
    let mut settings = settings_with_fresh_topic("rs-min-version").await.unwrap();
    let ks = Keyspace::fresh(&mut settings).await.unwrap();
    let commands = CommandApi::spawn(settings.clone()).await.unwrap();
    let projector = Projector::spawn(&settings);
    let queries = QueryApi::spawn(&settings).await.unwrap();
    // Before the projector made its tables, a read answers 503 (the store is not ready).
    queries
        .wait_read_models(Duration::from_secs(30))
        .await
        .unwrap();

    let mut order = Uuid::nil();
    for i in 0..20 {
        // Every fifth round a new order: the view does not exist yet when the read arrives.
        let reply = if i % 5 == 0 {
            order = Uuid::now_v7();
            send_command(
                &commands,
                order,
                &placed(order, Uuid::now_v7(), vec![line("FIRST", 1, 100)]),
            )
            .await
            .unwrap()
        } else {
            send_command(
                &commands,
                order,
                &OrderEvent::ItemAdded(line(&format!("SKU-{i}"), 1, 10)),
            )
            .await
            .unwrap()
        };
        assert!(reply.status == 200 || reply.status == 201, "{}", reply.body);
        let version = reply.body["version"].as_i64().unwrap();
        let read = queries
            .get(&format!("/v1/orders/{order}?min_version={version}"))
            .await
            .unwrap();
        assert_eq!(read.status, 200, "round {i}: {}", read.body);
        assert_eq!(read.body["version"], json!(version), "round {i}");
        assert_eq!(read.header("etag"), Some(format!("\"{version}\"").as_str()));
        assert_eq!(
            read.body["items"].as_array().map(Vec::len),
            Some(i % 5 + 1),
            "round {i}: {}",
            read.body
        );
    }

    queries.stop().await.unwrap();
    projector.stop().await.unwrap();
    commands.stop().await.unwrap();
    ks.drop_keyspace().await.unwrap();
}
