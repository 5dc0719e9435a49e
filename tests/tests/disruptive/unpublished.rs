//! Batches committed while Kafka is down: a keyed retry is answered 2xx only once its batch is in
//! Kafka, and the sweepers publish every committed batch however long the outage, with a lookback
//! shorter than the outage, while their gauge of the oldest unpublished batch rises and then falls.

use std::time::Duration;

use serde_json::json;
use tests::{
    dev, eventually, read_topic, scrape, sequences_of, settings_with_fresh_topic, CommandApi,
};

use crate::Restart;
use uuid::Uuid;

const GAUGE: &str = "command_oldest_unpublished_intent_seconds";

async fn gauge(api: &CommandApi) -> anyhow::Result<f64> {
    scrape(&api.url("/metrics"), GAUGE, "").await
}

async fn stored_version(
    session: &scylla::client::session::Session,
    tenant: &str,
    order: Uuid,
) -> anyhow::Result<i64> {
    let rows = session
        .query_unpaged(
            "SELECT version FROM aggregates WHERE tenant_id = ? AND aggregate_type = 'order' \
             AND aggregate_id = ?",
            (tenant, order),
        )
        .await?
        .into_rows_result()?;
    Ok(rows
        .maybe_first_row::<(Option<i64>,)>()?
        .and_then(|(v,)| v)
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_committed_during_a_kafka_outage_all_reach_the_topic_and_replays_wait_for_them() {
    let _stack = crate::STACK.lock().await;
    let mut settings = settings_with_fresh_topic("unpublished").await.unwrap();
    // A lookback shorter than the outage: the sweepers must still go through every bucket since
    // their progress, not start again from "lookback ago".
    settings.command_api.sweeper_lookback_minutes = 0;
    let apis = [
        CommandApi::spawn_process(&settings, &[]).await.unwrap(),
        CommandApi::spawn_process(&settings, &[]).await.unwrap(),
    ];
    let session = infra::cql::connect_keyspace(&settings.cql).await.unwrap();
    let mut orders = Vec::new();
    for i in 0..8 {
        let order = Uuid::now_v7();
        let reply = apis[i % 2]
            .post(
                "/v1/orders",
                json!({"order_id": order, "customer_id": Uuid::now_v7(), "currency": "EUR",
                       "items": [{"sku": "FIRST", "quantity": 1, "unit_price_cents": 100}]}),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 201, "{}", reply.body);
        orders.push(order);
    }

    dev(&["stop", "kafka"]).unwrap();
    let restart = Restart("kafka");

    // One command on every order at once, before any instance knows Kafka is gone: their LWTs
    // commit, their produces fail, they answer 503. Half carry a key and are retried; the others
    // are left to the sweepers.
    let key = |i: usize| format!("add-{i}");
    let add = |i: usize| {
        let order = orders[i];
        let key = key(i);
        let api = &apis[i % 2];
        async move {
            let headers = [("Idempotency-Key", key.as_str())];
            let headers: &[(&str, &str)] = if i.is_multiple_of(2) { &headers } else { &[] };
            api.post(
                &format!("/v1/orders/{order}/items"),
                json!({"sku": "DURING", "quantity": 1, "unit_price_cents": 5}),
                headers,
            )
            .await
        }
    };
    let first: Vec<_> = futures::future::join_all((0..orders.len()).map(add)).await;
    for (i, reply) in first.into_iter().enumerate() {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 503, "order {i}: {}", reply.body);
        assert!(reply.header("retry-after").is_some());
    }
    let mut committed = 0;
    for order in &orders {
        committed += (stored_version(&session, &settings.tenant, *order)
            .await
            .unwrap()
            == 2) as usize;
    }
    println!(
        "{committed} of {} batches committed before Kafka was known down",
        orders.len()
    );
    assert!(
        committed > 0,
        "the outage must leave committed, unpublished batches"
    );

    // A keyed retry, on the other instance too, is 503 while its batch cannot be published.
    for i in (0..orders.len()).step_by(2) {
        for api in &apis {
            let reply = api
                .post(
                    &format!("/v1/orders/{}/items", orders[i]),
                    json!({"sku": "DURING", "quantity": 1, "unit_price_cents": 5}),
                    &[("Idempotency-Key", key(i).as_str())],
                )
                .await
                .unwrap();
            assert_eq!(
                reply.status, 503,
                "a replay before publication: {}",
                reply.body
            );
        }
    }
    // The sweepers see batches they cannot publish: the gauge rises.
    let risen = eventually(Duration::from_secs(60), "the gauge rising", || async {
        let mut highest: f64 = 0.0;
        for api in &apis {
            highest = highest.max(gauge(api).await?);
        }
        Ok((highest > 1.0).then_some(highest))
    })
    .await
    .unwrap();
    println!("oldest unpublished batch during the outage: {risen:.1} s");

    drop(restart);
    // Back: every keyed retry is answered 2xx once, and again identically.
    for i in (0..orders.len()).step_by(2) {
        let path = format!("/v1/orders/{}/items", orders[i]);
        let body = json!({"sku": "DURING", "quantity": 1, "unit_price_cents": 5});
        let k = key(i);
        let headers = [("Idempotency-Key", k.as_str())];
        let reply = eventually(
            Duration::from_secs(90),
            "a keyed retry accepted",
            || async {
                let r = apis[1 - i % 2].post(&path, body.clone(), &headers).await?;
                Ok((r.status == 200).then_some(r))
            },
        )
        .await
        .unwrap();
        assert_eq!(reply.body["version"], 2, "{}", reply.body);
        let again = apis[i % 2]
            .post(&path, body.clone(), &headers)
            .await
            .unwrap();
        assert_eq!((again.status, &again.body), (200, &reply.body));
    }
    // Every committed batch reaches the topic, the unkeyed ones through the sweepers alone, and
    // the gauge falls back to 0 on every instance.
    eventually(
        Duration::from_secs(90),
        "every committed batch in the topic",
        || async {
            let records = read_topic(&settings, &settings.kafka.topic).await?;
            for order in &orders {
                let version = stored_version(&session, &settings.tenant, *order).await?;
                if sequences_of(&records, *order)? != (1..=version as u64).collect::<Vec<_>>() {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(30), "the gauge back at 0", || async {
        for api in &apis {
            if gauge(api).await? != 0.0 {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await
    .unwrap();
    for api in apis {
        api.stop().await.unwrap();
    }
}
