//! The command routes driven with `oneshot` over the write path on in-memory doubles: validation,
//! statuses, headers, bodies and the idempotency contract. Kafka and CQL behaviour is covered by
//! the integration tests in `tests/`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

use crate::write::memory::{MemoryLog, MemoryStore};
use crate::write::{Limits, WritePath};

fn instances(n: usize) -> (Vec<Router>, Arc<MemoryLog>) {
    let store = Arc::new(MemoryStore::new("t1"));
    let log = Arc::new(MemoryLog::new(6));
    let limits = Limits {
        keys_per_aggregate: 32,
        ..Limits::default()
    };
    let routers = (0..n)
        .map(|_| {
            let write = Arc::new(WritePath::new(store.clone(), log.clone(), limits.clone()));
            crate::api_router(write, infra::auth::Authenticator::disabled("t1"), 64 * 1024)
        })
        .collect();
    (routers, log)
}

async fn post(app: &Router, path: &str, body: Value, headers: &[(&str, &str)]) -> Response {
    let mut request = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    app.clone()
        .oneshot(request.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap()
}

async fn json_body(response: Response) -> Value {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn order_body() -> Value {
    json!({"customer_id": Uuid::nil(), "currency": "EUR",
           "items": [{"sku": "A-1", "quantity": 2, "unit_price_cents": 500}]})
}

#[tokio::test]
async fn a_creation_key_answers_the_first_201_from_every_instance() {
    let (apps, log) = instances(3);
    let key = [("idempotency-key", "checkout-42")];
    let mut seen = Vec::new();
    for app in &apps {
        let response = post(app, "/v1/orders", order_body(), &key).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let location = response.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_string();
        let body = json_body(response).await;
        assert_eq!(
            location,
            format!("/v1/orders/{}", body["order_id"].as_str().unwrap())
        );
        seen.push((location, body));
    }
    assert!(seen.iter().all(|s| s == &seen[0]), "{seen:?}");
    let id: Uuid = seen[0].1["order_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(log.sequences(id), vec![1]);

    // Another body under the same key: 422 with its own problem type, nothing written.
    let mut other = order_body();
    other["currency"] = json!("USD");
    let refused = post(&apps[1], "/v1/orders", other, &key).await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        refused.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(
        json_body(refused).await["type"],
        "/problems/idempotency-key-reused"
    );
    assert_eq!(log.sequences(id), vec![1]);

    // Without a key, every creation is a new order.
    let a = json_body(post(&apps[0], "/v1/orders", order_body(), &[]).await).await;
    let b = json_body(post(&apps[0], "/v1/orders", order_body(), &[]).await).await;
    assert_ne!(a["order_id"], b["order_id"]);
}

#[tokio::test]
async fn each_step_on_another_instance_answers_as_one_instance_would() {
    let (apps, _) = instances(3);
    let created = json_body(post(&apps[0], "/v1/orders", order_body(), &[]).await).await;
    let id = created["order_id"].as_str().unwrap().to_string();
    let steps = [
        (
            "items",
            json!({"sku": "B", "quantity": 1, "unit_price_cents": 250}),
            2,
        ),
        (
            "payments",
            json!({"amount_cents": 1250, "payment_ref": "p"}),
            3,
        ),
        (
            "shipments",
            json!({"carrier": "c", "tracking_number": "t"}),
            4,
        ),
    ];
    for (i, (path, body, version)) in steps.into_iter().enumerate() {
        let response = post(
            &apps[(i + 1) % 3],
            &format!("/v1/orders/{id}/{path}"),
            body,
            &[],
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()[header::ETAG], format!("\"{version}\""));
        assert_eq!(json_body(response).await["version"], version);
    }
    // The first instance last saw the order open: cancelling a shipped order is refused there too.
    let refused = post(
        &apps[0],
        &format!("/v1/orders/{id}/cancellation"),
        json!({"reason": "late"}),
        &[],
    )
    .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem = json_body(refused).await;
    assert_eq!(problem["type"], "/problems/business-rule");
    assert!(
        problem["detail"].as_str().unwrap().contains("shipped"),
        "{problem}"
    );
}

#[tokio::test]
async fn malformed_unknown_and_stale_requests_get_their_statuses() {
    let (apps, _) = instances(2);
    let app = &apps[0];
    let unknown = post(
        app,
        &format!("/v1/orders/{}/payments", Uuid::now_v7()),
        json!({"amount_cents": 1, "payment_ref": "p"}),
        &[],
    )
    .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let bad_id = post(app, "/v1/orders/nope/payments", json!({}), &[]).await;
    assert_eq!(bad_id.status(), StatusCode::BAD_REQUEST);
    let invalid = post(
        app,
        "/v1/orders",
        json!({"customer_id": Uuid::nil(), "currency": "eur", "items": []}),
        &[],
    )
    .await;
    assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json_body(invalid).await["errors"][0]["field"], "currency");

    let created = json_body(post(app, "/v1/orders", order_body(), &[]).await).await;
    let id = created["order_id"].as_str().unwrap();
    let stale = post(
        &apps[1],
        &format!("/v1/orders/{id}/cancellation"),
        json!({"reason": "r"}),
        &[("if-match", "\"7\"")],
    )
    .await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let malformed = post(
        app,
        &format!("/v1/orders/{id}/cancellation"),
        json!({"reason": "r"}),
        &[("if-match", "seven")],
    )
    .await;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
}
