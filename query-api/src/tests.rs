//! The whole router driven with `oneshot` over in-memory read models: routing, validation, status
//! codes, headers and bodies. CQL and Kafka behaviour is covered by the integration tests.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::Response;
use chrono::{NaiveDate, TimeZone, Utc};
use http_body_util::BodyExt;
use infra::http::Readiness;
use serde_json::Value;
use tower::ServiceExt;
use uuid::Uuid;

use crate::store::memory::MemoryStore;
use crate::store::{CustomerOrderRow, DaySales, ProjectionRecord};
use crate::{app, AppState};

fn state(store: Arc<MemoryStore>) -> AppState {
    let mut settings = infra::Settings::default();
    settings.query_api.min_version_wait_ms = 200;
    AppState::new(
        &settings,
        store.clone(),
        store,
        Readiness::new(vec![]),
        infra::auth::Authenticator::disabled(crate::store::memory::TENANT),
    )
}

async fn get(store: &Arc<MemoryStore>, uri: &str) -> Response {
    get_with(store, Request::get(uri).body(Body::empty()).unwrap()).await
}

async fn get_with(store: &Arc<MemoryStore>, request: Request<Body>) -> Response {
    app(state(store.clone())).oneshot(request).await.unwrap()
}

async fn json(response: Response) -> Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn content_type(r: &Response) -> &str {
    r.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn assert_problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(content_type(&response), "application/problem+json");
    let body = json(response).await;
    assert_eq!(body["status"], status.as_u16());
    body
}

#[tokio::test]
async fn an_order_is_served_with_its_etag() {
    let store = Arc::new(MemoryStore::new());
    let id = Uuid::now_v7();
    store.put(MemoryStore::order(id, 3));
    let r = get(&store, &format!("/v1/orders/{id}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::ETAG], "\"3\"");
    assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
    assert_eq!(content_type(&r), "application/json");
    let body = json(r).await;
    assert_eq!(body["order_id"], id.to_string());
    assert_eq!(body["version"], 3);
    assert_eq!(body["items"][0]["quantity"], 2);
}

#[tokio::test]
async fn if_none_match_with_the_current_etag_is_304() {
    let store = Arc::new(MemoryStore::new());
    let id = Uuid::now_v7();
    store.put(MemoryStore::order(id, 3));
    let request = |tag: &str| {
        Request::get(format!("/v1/orders/{id}"))
            .header(header::IF_NONE_MATCH, tag)
            .body(Body::empty())
            .unwrap()
    };
    let r = get_with(&store, request("\"3\"")).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()[header::ETAG], "\"3\"");
    assert!(r.into_body().collect().await.unwrap().to_bytes().is_empty());
    let r = get_with(&store, request("\"2\"")).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_bad_order_id_is_400() {
    let store = Arc::new(MemoryStore::new());
    let body = assert_problem(get(&store, "/v1/orders/42").await, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["errors"][0]["field"], "id");
    assert_problem(
        get(&store, "/v1/orders/42/events").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_problem(
        get(&store, "/v1/customers/nope/orders").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn an_unknown_order_is_404() {
    let store = Arc::new(MemoryStore::new());
    let id = Uuid::now_v7();
    assert_problem(
        get(&store, &format!("/v1/orders/{id}")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_problem(
        get(&store, &format!("/v1/orders/{id}?min_version=1&wait_ms=10")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_problem(
        get(&store, &format!("/v1/orders/{id}/events")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn min_version_is_validated() {
    let store = Arc::new(MemoryStore::new());
    let id = Uuid::now_v7();
    store.put(MemoryStore::order(id, 3));
    assert_problem(
        get(&store, &format!("/v1/orders/{id}?min_version=abc")).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_problem(
        get(&store, &format!("/v1/orders/{id}?min_version=-1")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_problem(
        get(&store, &format!("/v1/orders/{id}?min_version=1&wait_ms=x")).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn min_version_reached_is_200_and_not_reached_is_503_with_retry_after() {
    let store = Arc::new(MemoryStore::new());
    let id = Uuid::now_v7();
    store.put(MemoryStore::order(id, 3));
    let r = get(&store, &format!("/v1/orders/{id}?min_version=3")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let started = std::time::Instant::now();
    let r = get(&store, &format!("/v1/orders/{id}?min_version=4&wait_ms=30")).await;
    assert!(started.elapsed() < std::time::Duration::from_millis(150));
    assert!(r.headers().contains_key(header::RETRY_AFTER));
    assert_problem(r, StatusCode::SERVICE_UNAVAILABLE).await;
    // wait_ms never lengthens the server's bound (200 ms here).
    let started = std::time::Instant::now();
    let r = get(
        &store,
        &format!("/v1/orders/{id}?min_version=4&wait_ms=60000"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[tokio::test]
async fn limit_and_cursor_are_validated() {
    let store = Arc::new(MemoryStore::new());
    let c = Uuid::now_v7();
    for (query, status) in [
        ("limit=0", StatusCode::UNPROCESSABLE_ENTITY),
        ("limit=101", StatusCode::UNPROCESSABLE_ENTITY),
        ("limit=ten", StatusCode::BAD_REQUEST),
        ("cursor=garbage", StatusCode::BAD_REQUEST),
    ] {
        let body = assert_problem(
            get(&store, &format!("/v1/customers/{c}/orders?{query}")).await,
            status,
        )
        .await;
        assert!(!body["errors"].as_array().unwrap().is_empty(), "{query}");
    }
}

#[tokio::test]
async fn following_cursors_lists_every_order_once_newest_first() {
    let store = Arc::new(MemoryStore::new());
    let customer = Uuid::now_v7();
    let base = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).single().unwrap();
    let mut expected = Vec::new();
    for i in 0..23 {
        // Pairs of orders placed in the same millisecond: the order id breaks the tie.
        let row = CustomerOrderRow {
            order_id: Uuid::new_v4(),
            status: "open".into(),
            total_cents: i,
            placed_at: base + chrono::Duration::milliseconds(i / 2),
            version: 1,
        };
        expected.push(row.order_id.to_string());
        store.customer_orders.lock().unwrap().push((customer, row));
    }
    let mut seen = Vec::new();
    let mut placed = Vec::new();
    let mut uri = format!("/v1/customers/{customer}/orders?limit=5");
    loop {
        let r = get(&store, &uri).await;
        assert_eq!(r.status(), StatusCode::OK);
        let body = json(r).await;
        for item in body["items"].as_array().unwrap() {
            seen.push(item["order_id"].as_str().unwrap().to_string());
            placed.push(item["placed_at"].as_str().unwrap().to_string());
        }
        match body["next_cursor"].as_str() {
            Some(cursor) => {
                uri = format!("/v1/customers/{customer}/orders?limit=5&cursor={cursor}")
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 23);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 23);
    expected.sort();
    assert_eq!(unique, expected);
    let mut newest_first = placed.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(placed, newest_first);
}

#[tokio::test]
async fn the_sales_range_is_validated() {
    let store = Arc::new(MemoryStore::new());
    for (query, status) in [
        ("", StatusCode::UNPROCESSABLE_ENTITY),
        ("from=2024-01-01", StatusCode::UNPROCESSABLE_ENTITY),
        (
            "from=2024-01-02&to=2024-01-01",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "from=2024-01-01&to=2025-01-01",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("from=yesterday&to=2024-01-01", StatusCode::BAD_REQUEST),
    ] {
        assert_problem(
            get(&store, &format!("/v1/stats/sales?{query}")).await,
            status,
        )
        .await;
    }
}

#[tokio::test]
async fn sales_leave_out_empty_days_and_ascend() {
    let store = Arc::new(MemoryStore::new());
    for (d, n, cents) in [("2024-03-03", 2, 700), ("2024-03-01", 1, 100)] {
        let day = NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
        store.sales.lock().unwrap().insert(
            day,
            DaySales {
                day,
                orders_paid: n,
                revenue_cents: cents,
            },
        );
    }
    let r = get(&store, "/v1/stats/sales?from=2024-03-01&to=2024-03-31").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        json(r).await,
        serde_json::json!({"days": [
            {"day": "2024-03-01", "orders_paid": 1, "revenue_cents": 100},
            {"day": "2024-03-03", "orders_paid": 2, "revenue_cents": 700},
        ]})
    );
}

#[tokio::test]
async fn events_are_served_as_stored() {
    let store = Arc::new(MemoryStore::new());
    let id = Uuid::now_v7();
    let envelopes = vec![
        format!(
            r#"{{"aggregate_id":"{id}","sequence":1,"event_type":"OrderPlaced","payload":{{"x":1}}}}"#
        ),
        format!(
            r#"{{"aggregate_id":"{id}","sequence":2,"event_type":"ItemAdded","payload":{{}}}}"#
        ),
    ];
    store.events.lock().unwrap().insert(id, envelopes);
    let r = get(&store, &format!("/v1/orders/{id}/events")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body = json(r).await;
    assert_eq!(body["events"][0]["payload"]["x"], 1);
    assert_eq!(body["events"][1]["sequence"], 2);
}

#[tokio::test]
async fn projections_report_lag_per_partition() {
    let store = Arc::new(MemoryStore::new());
    *store.ends.lock().unwrap() = BTreeMap::from([(0, 4), (1, 2)]);
    store.records.lock().unwrap().push(ProjectionRecord {
        name: "orders".into(),
        generation: 1,
        state: "live".into(),
        offsets: BTreeMap::from([(0, 4)]),
        ..ProjectionRecord::default()
    });
    let body = json(get(&store, "/v1/projections").await).await;
    assert_eq!(
        body,
        serde_json::json!({"projections": [{
            "name": "orders", "generation": 1, "state": "live", "lag": 2,
            "partitions": [
                {"partition": 0, "offset": 4, "end_offset": 4, "lag": 0},
                {"partition": 1, "offset": 0, "end_offset": 2, "lag": 2},
            ],
            "paused": false, "control": null, "building": null
        }]})
    );
}

#[tokio::test]
async fn projections_report_a_rebuild_s_progress_from_its_start_to_the_end_of_the_topic() {
    let store = Arc::new(MemoryStore::new());
    *store.ends.lock().unwrap() = BTreeMap::from([(0, 100), (1, 50)]);
    *store.starts.lock().unwrap() = BTreeMap::from([(0, 0), (1, 10)]);
    store.records.lock().unwrap().push(ProjectionRecord {
        name: "orders".into(),
        generation: 1,
        state: "rebuilding".into(),
        offsets: BTreeMap::from([(0, 100), (1, 50)]),
        building: Some(crate::store::BuildRecord {
            generation: 2,
            kind: read_models::BuildKind::Rebuilding,
            from: None,
            offsets: BTreeMap::from([(0, 60), (1, 30)]),
        }),
        ..ProjectionRecord::default()
    });
    let app = app(state(store.clone()));
    let first = json(
        app.clone()
            .oneshot(Request::get("/v1/projections").body(Body::empty()).unwrap())
            .await
            .unwrap(),
    )
    .await;
    let building = &first["projections"][0]["building"];
    assert_eq!(building["generation"], 2);
    assert_eq!(building["kind"], "rebuilding");
    assert_eq!(
        (
            &building["applied"],
            &building["to_apply"],
            &building["remaining"]
        ),
        (
            &serde_json::json!(80),
            &serde_json::json!(140),
            &serde_json::json!(60)
        )
    );
    assert!((building["progress"].as_f64().unwrap() - 80.0 / 140.0).abs() < 1e-9);
    assert_eq!(building["rate"], Value::Null, "one reading makes no rate");
    assert_eq!(building["eta_seconds"], Value::Null);
    assert_eq!(
        building["partitions"][1],
        serde_json::json!({"partition": 1, "start_offset": 10, "offset": 30, "target": 50, "remaining": 20})
    );

    // A second reading a second later, 30 events further: a rate and the time left.
    tokio::time::sleep(std::time::Duration::from_millis(1050)).await;
    store.records.lock().unwrap()[0]
        .building
        .as_mut()
        .unwrap()
        .offsets = BTreeMap::from([(0, 90), (1, 30)]);
    let second = json(
        app.oneshot(Request::get("/v1/projections").body(Body::empty()).unwrap())
            .await
            .unwrap(),
    )
    .await;
    let building = &second["projections"][0]["building"];
    let rate = building["rate"].as_f64().unwrap();
    assert!(rate > 20.0 && rate <= 30.0, "{rate}");
    let eta = building["eta_seconds"].as_f64().unwrap();
    // 30 remaining, having gone down by 30 since the reading a little over a second ago.
    assert!((1.0..2.0).contains(&eta), "{eta}");
}

#[tokio::test]
async fn unknown_paths_are_problem_404_and_ops_routes_answer() {
    let store = Arc::new(MemoryStore::new());
    assert_problem(get(&store, "/nope").await, StatusCode::NOT_FOUND).await;
    assert_eq!(get(&store, "/healthz").await.status(), StatusCode::OK);
    assert_eq!(get(&store, "/readyz").await.status(), StatusCode::OK);
    assert_eq!(get(&store, "/metrics").await.status(), StatusCode::OK);
    let doc = json(get(&store, "/openapi.json").await).await;
    assert!(doc["paths"]["/v1/orders/{id}"].is_object());
}

#[tokio::test]
async fn the_correlation_id_is_echoed() {
    let store = Arc::new(MemoryStore::new());
    let r = get_with(
        &store,
        Request::get("/healthz")
            .header("x-correlation-id", "abc-123")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.headers()["x-correlation-id"], "abc-123");
}
