//! query-api served on port 0 against the real local stack (Kafka at 127.0.0.1:9092, CQL at
//! 127.0.0.1:9042, e.g. `infra/dev up`), in a throwaway keyspace with the read-model tables (their
//! DDL from the `read-models` crate) filled by hand. `infra/dev test` runs it with the rest of the
//! suite.

// A test binary: helpers may panic like the tests they serve.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use infra::Settings;
use scylla::client::session::Session;
use serde_json::Value;
use uuid::Uuid;

async fn exec(session: &Session, cql: &str) {
    session
        .query_unpaged(cql, ())
        .await
        .unwrap_or_else(|e| panic!("{cql}: {e}"));
}

async fn create_generation(session: &Session, g: i32) {
    // The tables the projector creates, from the one description of them.
    for table in read_models::tables() {
        exec(session, &table.ddl(g)).await;
    }
    session.await_schema_agreement().await.unwrap();
}

async fn put_order(session: &Session, g: i32, id: Uuid, customer: Uuid, version: i64) {
    exec(
        session,
        &format!(
            "INSERT INTO order_detail_g{g} (tenant_id, order_id, customer_id, currency, status, items, \
             total_cents, version, placed_at, updated_at) VALUES ('default', {id}, {customer}, 'EUR', 'open', \
             '[{{\"sku\":\"A-1\",\"quantity\":2,\"unit_price_cents\":150}}]', 300, {version}, \
             '2024-05-01T12:00:00.000Z', '2024-05-01T12:00:01.000Z') USING TIMESTAMP {version}"
        ),
    )
    .await;
}

async fn set_generation(session: &Session, name: &str, g: i32) {
    exec(
        session,
        &format!(
            "INSERT INTO projections (name, active_generation, state) VALUES ('{name}', {g}, 'live')"
        ),
    )
    .await;
}

struct Server {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn spawn(settings: Settings) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(query_api::serve(listener, settings, async {
        let _ = stopped.await;
    }));
    Server { base, stop, done }
}

#[tokio::test]
async fn query_api_serves_the_read_models_of_the_active_generation() {
    // The stack's development JWKS (`infra/dev up`), so that the test's tokens verify.
    let mut settings = Settings {
        auth: Settings::load().unwrap().auth,
        ..Settings::default()
    };
    settings.cql.keyspace = format!("qa_it_{}", Uuid::new_v4().simple());
    settings.cql.consistency = "ONE".into();
    settings.query_api.min_version_wait_ms = 3_000;
    let admin = infra::cql::connect(&settings.cql).await.unwrap();
    infra::migrations::run(&admin, &settings.cql).await.unwrap();
    let session: Arc<Session> = infra::cql::connect_keyspace(&settings.cql).await.unwrap();
    create_generation(&session, 1).await;

    let order = Uuid::now_v7();
    let customer = Uuid::now_v7();
    put_order(&session, 1, order, customer, 1).await;
    for i in 0..7 {
        exec(&session, &format!(
            "INSERT INTO orders_by_customer_g1 (tenant_id, customer_id, placed_at, order_id, status, total_cents, version) \
             VALUES ('default', {customer}, {}, {}, 'open', {i}, 1)", 1_714_564_800_000i64 + (i / 2) * 1000, Uuid::new_v4())).await;
    }
    for (day, cents) in [("2024-05-01", 100), ("2024-05-01", 250), ("2024-05-03", 7)] {
        exec(
            &session,
            &format!(
                "INSERT INTO sales_by_day_g1 (tenant_id, day, order_id, revenue_cents, version) \
             VALUES ('default', '{day}', {}, {cents}, 3)",
                Uuid::new_v4()
            ),
        )
        .await;
    }
    for seq in [2, 1] {
        let envelope = format!(r#"{{"aggregate_id":"{order}","sequence":{seq},"payload":{{}}}}"#);
        exec(&session, &format!(
            "INSERT INTO order_events_g1 (tenant_id, aggregate_id, sequence, envelope) VALUES ('default', {order}, {seq}, '{envelope}')")).await;
    }
    set_generation(&session, "orders", 1).await;
    set_generation(&session, "order_history", 1).await;
    exec(
        &session,
        &format!(
        "INSERT INTO projection_offsets (projection, generation, topic, partition, next_offset) \
         VALUES ('orders', 1, '{}', 0, 0)", settings.kafka.topic),
    )
    .await;

    let server = spawn(settings.clone()).await;
    let token = infra::auth::dev::mint_for(
        &settings,
        &settings.tenant,
        "it",
        &infra::auth::ALL_SCOPES,
        std::time::Duration::from_secs(600),
    )
    .unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    let url = |path: &str| format!("{}{path}", server.base);

    // Order detail, ETag, 304.
    let r = http
        .get(url(&format!("/v1/orders/{order}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "\"1\"");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["items"][0]["sku"], "A-1");
    assert_eq!(body["placed_at"], "2024-05-01T12:00:00.000Z");
    let r = http
        .get(url(&format!("/v1/orders/{order}")))
        .header("if-none-match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // min_version: the view catches up while we wait.
    let writer = {
        let session = session.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            put_order(&session, 1, order, customer, 2).await;
        })
    };
    let started = Instant::now();
    let r = http
        .get(url(&format!("/v1/orders/{order}?min_version=2")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "\"2\"");
    assert!(started.elapsed() < Duration::from_secs(2));
    writer.await.unwrap();
    // …and gives up past its bound.
    let r = http
        .get(url(&format!(
            "/v1/orders/{order}?min_version=9&wait_ms=200"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let r = http
        .get(url(&format!(
            "/v1/orders/{}?min_version=1&wait_ms=100",
            Uuid::now_v7()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Customer orders: every order once, newest first.
    let mut seen = Vec::new();
    let mut next = format!("/v1/customers/{customer}/orders?limit=3");
    loop {
        let body: Value = http
            .get(url(&next))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for item in body["items"].as_array().unwrap() {
            seen.push((
                item["placed_at"].as_str().unwrap().to_string(),
                item["order_id"].as_str().unwrap().to_string(),
            ));
        }
        match body["next_cursor"].as_str() {
            Some(c) => next = format!("/v1/customers/{customer}/orders?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(seen, sorted);

    // Sales per day.
    let body: Value = http
        .get(url("/v1/stats/sales?from=2024-04-30&to=2024-05-31"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body,
        serde_json::json!({"days": [
            {"day": "2024-05-01", "orders_paid": 2, "revenue_cents": 350},
            {"day": "2024-05-03", "orders_paid": 1, "revenue_cents": 7},
        ]})
    );

    // Events in sequence order.
    let body: Value = http
        .get(url(&format!("/v1/orders/{order}/events")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["events"][0]["sequence"], 1);
    assert_eq!(body["events"][1]["sequence"], 2);

    // Projections and lag.
    let r = http.get(url("/v1/projections")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let orders = body["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "orders")
        .unwrap()
        .clone();
    assert_eq!(orders["generation"], 1);
    assert!(!orders["partitions"].as_array().unwrap().is_empty());

    // Ops routes.
    assert_eq!(http.get(url("/readyz")).send().await.unwrap().status(), 200);
    let metrics = http
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("route=\"/v1/orders/{id}\""), "{metrics}");

    // A rebuild switch: generation 2 serves within about a second, with no failed read…
    create_generation(&session, 2).await;
    put_order(&session, 2, order, customer, 5).await;
    set_generation(&session, "orders", 2).await;
    let started = Instant::now();
    loop {
        let r = http
            .get(url(&format!("/v1/orders/{order}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        if r.headers()["etag"] == "\"5\"" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "generation 2 not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // …and a generation whose tables do not exist yet leaves the previous one serving.
    set_generation(&session, "orders", 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = http
        .get(url(&format!("/v1/orders/{order}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "\"5\"");

    // Graceful shutdown.
    server.stop.send(()).unwrap();
    server.done.await.unwrap().unwrap();
    exec(&admin, &format!("DROP KEYSPACE {}", settings.cql.keyspace)).await;
}
