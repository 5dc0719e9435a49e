//! Every error row of docs/api.md: status, content type and problem+json shape.

use serde_json::json;
use tests::{settings_with_fresh_topic, CommandApi, Reply};

fn assert_problem(reply: &Reply, status: u16) {
    assert_eq!(reply.status, status, "body: {}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    for field in ["type", "title", "status", "detail"] {
        assert!(
            reply.body.get(field).is_some(),
            "missing {field} in {}",
            reply.body
        );
    }
    assert_eq!(reply.body["status"], status);
}

fn field_errors(reply: &Reply) -> Vec<String> {
    reply.body["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["field"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn every_error_row_answers_problem_json_with_its_status() {
    let settings = settings_with_fresh_topic("errors").await.unwrap();
    let api = CommandApi::spawn(settings).await.unwrap();
    let order = api.place_order().await.unwrap();
    let http = api.http.clone();

    // 400: not JSON.
    let r = Reply::from(
        http.post(api.url("/v1/orders"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_problem(&r, 400);

    // 400: a field of the wrong type, named by its JSON path.
    let r = api
        .post(
            &format!("/v1/orders/{order}/items"),
            json!({"sku": "A", "quantity": "two", "unit_price_cents": 1}),
            &[],
        )
        .await
        .unwrap();
    assert_problem(&r, 400);
    assert_eq!(field_errors(&r), vec!["quantity"]);

    // 400: the path id is not a UUID.
    let r = api
        .post(
            "/v1/orders/not-a-uuid/items",
            json!({"sku": "A", "quantity": 1, "unit_price_cents": 1}),
            &[],
        )
        .await
        .unwrap();
    assert_problem(&r, 400);

    // 422: out of range and missing fields, each listed.
    let r = api
        .post(
            "/v1/orders",
            json!({"customer_id": uuid::Uuid::now_v7(), "currency": "eur",
            "items": [{"sku": "ok", "quantity": 0, "unit_price_cents": 1}]}),
            &[],
        )
        .await
        .unwrap();
    assert_problem(&r, 422);
    assert_eq!(field_errors(&r), vec!["currency", "items[0].quantity"]);
    let r = api
        .post("/v1/orders", json!({"currency": "EUR", "items": []}), &[])
        .await
        .unwrap();
    assert_problem(&r, 422);
    assert_eq!(field_errors(&r), vec!["customer_id"]);

    // 422: a business rule, with the reason in the detail.
    let r = api
        .post(
            &format!("/v1/orders/{order}/payments"),
            json!({"amount_cents": 1, "payment_ref": "p"}),
            &[],
        )
        .await
        .unwrap();
    assert_problem(&r, 422);
    assert!(r.body["detail"].as_str().unwrap().contains("total"));

    // 404: no such order.
    let r = api
        .post(
            &format!("/v1/orders/{}/cancellation", uuid::Uuid::now_v7()),
            json!({"reason": "x"}),
            &[],
        )
        .await
        .unwrap();
    assert_problem(&r, 404);

    // 404: no such route.
    let r = Reply::from(http.get(api.url("/v1/nothing-here")).send().await.unwrap())
        .await
        .unwrap();
    assert_problem(&r, 404);

    // 415: not application/json.
    let r = Reply::from(
        http.post(api.url(&format!("/v1/orders/{order}/cancellation")))
            .header("content-type", "text/plain")
            .body(r#"{"reason":"x"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_problem(&r, 415);

    // 413: larger than 64 KiB.
    let r = api
        .post(
            &format!("/v1/orders/{order}/cancellation"),
            json!({"reason": "x".repeat(70 * 1024)}),
            &[],
        )
        .await
        .unwrap();
    assert_problem(&r, 413);

    // 412: If-Match on another version.
    let r = api
        .post(
            &format!("/v1/orders/{order}/cancellation"),
            json!({"reason": "x"}),
            &[("If-Match", "\"7\"")],
        )
        .await
        .unwrap();
    assert_problem(&r, 412);

    // 409: an order id used twice.
    let r = api
        .post("/v1/orders", json!({"order_id": order, "customer_id": uuid::Uuid::now_v7(), "currency": "EUR", "items": []}), &[])
        .await
        .unwrap();
    assert_problem(&r, 409);

    // Nothing was written by any refusal: the order is still at version 1, and If-Match agrees.
    let r = api
        .post(
            &format!("/v1/orders/{order}/cancellation"),
            json!({"reason": "done"}),
            &[("If-Match", "\"1\"")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("etag"), Some("\"2\""));
    api.stop().await.unwrap();
}

#[tokio::test]
async fn writers_that_keep_losing_get_a_409() {
    let mut settings = settings_with_fresh_topic("conflict").await.unwrap();
    // One attempt only, and two instances racing on one order: some commands must lose.
    settings.command_api.max_lwt_attempts = 1;
    let a = CommandApi::spawn(settings.clone()).await.unwrap();
    let b = CommandApi::spawn(settings.clone()).await.unwrap();
    let order = a.place_order().await.unwrap();
    let path = format!("/v1/orders/{order}/items");
    let mut conflicts = Vec::new();
    for round in 0..5 {
        let calls = (0..16).map(|i| {
            let api = if i % 2 == 0 { &a } else { &b };
            api.post(
                &path,
                json!({"sku": format!("R{round}-{i}"), "quantity": 1, "unit_price_cents": 1}),
                &[],
            )
        });
        for r in futures::future::join_all(calls).await {
            let r = r.unwrap();
            if r.status == 409 {
                conflicts.push(r);
            } else {
                assert_eq!(r.status, 200, "{}", r.body);
            }
        }
        if !conflicts.is_empty() {
            break;
        }
    }
    assert!(
        !conflicts.is_empty(),
        "no LWT conflict in 80 racing commands"
    );
    assert_problem(&conflicts[0], 409);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
