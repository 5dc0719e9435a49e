//! Several instances of every service on one stack answer exactly as one would: three command-api
//! processes (each step of an order on another instance than the previous one, and clients racing
//! on the same orders across instances), two projector processes sharing each projection's
//! partitions, two query-apis. Real Kafka, real Cassandra.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tests::{
    read_topic, sequences_of, settings_with_fresh_topic, CommandApi, Keyspace, Projector, QueryApi,
    Reply,
};
use uuid::Uuid;

const INSTANCES: usize = 3;

async fn command_apis(settings: &infra::Settings) -> Vec<CommandApi> {
    let mut apis = Vec::new();
    for _ in 0..INSTANCES {
        apis.push(CommandApi::spawn_process(settings, &[]).await.unwrap());
    }
    apis
}

fn line(sku: &str, quantity: u32, unit_price_cents: i64) -> Value {
    json!({"sku": sku, "quantity": quantity, "unit_price_cents": unit_price_cents})
}

fn place_body(order: Uuid) -> Value {
    json!({"order_id": order, "customer_id": Uuid::now_v7(), "currency": "EUR",
           "items": [line("FIRST", 1, 100)]})
}

/// A refusal is false when nothing could justify it; a 409 only after the whole retry bound.
fn assert_no_false_answer(reply: &Reply, what: &str) {
    match reply.status {
        200 | 201 => {}
        409 => {
            assert_eq!(
                reply.body["type"], "/problems/write-conflict",
                "{what}: {}",
                reply.body
            );
            assert!(
                reply.body["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("after 8 attempts"),
                "{what}: a 409 before the retry bound: {}",
                reply.body
            );
        }
        other => panic!("{what}: a false answer {other}: {}", reply.body),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_command_apis_two_projectors_and_two_query_apis_answer_as_one_instance_would() {
    let mut settings = settings_with_fresh_topic("instances").await.unwrap();
    let ks = Keyspace::fresh(&mut settings).await.unwrap();
    let apis = command_apis(&settings).await;
    let projectors = [
        Projector::spawn_process(&settings, &[]).await.unwrap(),
        Projector::spawn_process(&settings, &[]).await.unwrap(),
    ];
    let queries = [
        QueryApi::spawn(&settings).await.unwrap(),
        QueryApi::spawn(&settings).await.unwrap(),
    ];

    // 1. Every step of an order's life on another instance than the step before; the shipment
    //    lands on the instance that placed the order, whose copy of the row still says "open".
    let lifecycle = (0..12).map(|k| {
        let apis = &apis;
        async move {
            let order = Uuid::now_v7();
            let on = |step: usize| &apis[(k + step) % INSTANCES];
            let path = |rest: &str| format!("/v1/orders/{order}/{rest}");
            let steps: Vec<(String, Value, u16, Option<i64>)> = vec![
                ("/v1/orders".into(), place_body(order), 201, Some(1)),
                (path("items"), line("B", 2, 250), 200, Some(2)),
                (
                    path("payments"),
                    json!({"amount_cents": 600, "payment_ref": "p"}),
                    200,
                    Some(3),
                ),
                (
                    path("shipments"),
                    json!({"carrier": "c", "tracking_number": "t"}),
                    200,
                    Some(4),
                ),
                (path("cancellation"), json!({"reason": "late"}), 422, None),
            ];
            for (step, (path, body, status, version)) in steps.into_iter().enumerate() {
                let reply = on(step).post(&path, body, &[]).await.unwrap();
                assert_eq!(
                    reply.status, status,
                    "order {order}, step {step}: {}",
                    reply.body
                );
                if let Some(version) = version {
                    assert_eq!(reply.body["version"], version, "order {order}, step {step}");
                }
            }
            (order, 4_i64, 600_i64)
        }
    });
    let mut expected: Vec<(Uuid, i64, i64)> = futures::future::join_all(lifecycle).await;

    // 2. Sixteen clients racing on the same eight orders, each command on the next instance.
    let mut orders = Vec::new();
    for k in 0..8 {
        let order = Uuid::now_v7();
        let reply = apis[k % INSTANCES]
            .post("/v1/orders", place_body(order), &[])
            .await
            .unwrap();
        assert_eq!(reply.status, 201, "{}", reply.body);
        orders.push(order);
    }
    let clients = (0..16).map(|c| {
        let (apis, orders) = (&apis, &orders);
        async move {
            let mut acknowledged = Vec::new();
            for round in 0..12 {
                let order = orders[(c + round) % orders.len()];
                let api = &apis[(c + round) % INSTANCES];
                let path = format!("/v1/orders/{order}/items");
                let reply = api
                    .post(&path, line(&format!("C{c}"), 1, 10), &[])
                    .await
                    .unwrap();
                assert_no_false_answer(&reply, &format!("client {c} round {round}"));
                if reply.status == 200 {
                    acknowledged.push((order, reply.body["version"].as_i64().unwrap()));
                }
            }
            acknowledged
        }
    });
    let mut versions: BTreeMap<Uuid, Vec<i64>> = BTreeMap::new();
    for (order, version) in futures::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
    {
        versions.entry(order).or_default().push(version);
    }
    let mut conflicts = 0;
    for (k, order) in orders.iter().enumerate() {
        let mut acked = versions.remove(order).unwrap_or_default();
        acked.sort();
        let n = acked.len() as i64;
        conflicts += 16 * 12 / 8 - acked.len();
        assert_eq!(
            acked,
            (2..2 + n).collect::<Vec<_>>(),
            "order {order}: acknowledged versions must be distinct and contiguous"
        );
        // The model: every acknowledged line, nothing else. Paying exactly that total and shipping
        // on other instances than the last writer must both be accepted.
        let total = 100 + 10 * n;
        let pay = apis[(k + 1) % INSTANCES]
            .post(
                &format!("/v1/orders/{order}/payments"),
                json!({"amount_cents": total, "payment_ref": "p"}),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(pay.status, 200, "order {order}: {}", pay.body);
        assert_eq!(pay.body["version"], n + 2);
        let ship = apis[(k + 2) % INSTANCES]
            .post(
                &format!("/v1/orders/{order}/shipments"),
                json!({"carrier": "c", "tracking_number": "t"}),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(ship.status, 200, "order {order}: {}", ship.body);
        expected.push((*order, n + 3, total));
    }
    println!("racing: {conflicts} of 192 commands answered 409 after the retry bound");

    // 3. The topic holds every acknowledged sequence once, in order; both query-apis show every
    //    acknowledged version, whichever projector instance applied it.
    let records = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    for (order, version, total) in &expected {
        let sequences = sequences_of(&records, *order).unwrap();
        assert_eq!(
            sequences,
            (1..=*version as u64).collect::<Vec<_>>(),
            "order {order}"
        );
        for q in &queries {
            let reply = q
                .get(&format!("/v1/orders/{order}?min_version={version}"))
                .await
                .unwrap();
            assert_eq!(reply.status, 200, "order {order}: {}", reply.body);
            assert_eq!(reply.body["version"], *version);
            assert_eq!(reply.body["status"], "shipped");
            assert_eq!(reply.body["total_cents"], *total);
        }
    }

    for q in queries {
        q.stop().await.unwrap();
    }
    for p in projectors {
        p.stop().await.unwrap();
    }
    for api in apis {
        api.stop().await.unwrap();
    }
    ks.drop_keyspace().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_creation_key_sent_twenty_times_at_once_across_instances_makes_one_order() {
    let settings = settings_with_fresh_topic("create-key").await.unwrap();
    let apis = command_apis(&settings).await;
    let body = json!({"customer_id": Uuid::now_v7(), "currency": "EUR",
                      "items": [line("A", 1, 700)]});
    let key = [("Idempotency-Key", "checkout-7f3a")];
    let calls = (0..20).map(|i| apis[i % INSTANCES].post("/v1/orders", body.clone(), &key));
    let replies: Vec<Reply> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let first = &replies[0];
    assert_eq!(first.status, 201, "{}", first.body);
    let order: Uuid = first.body["order_id"].as_str().unwrap().parse().unwrap();
    for reply in &replies {
        assert_eq!(reply.status, 201, "{}", reply.body);
        assert_eq!(reply.body, first.body, "twenty identical answers");
        assert_eq!(
            reply.header("location"),
            Some(format!("/v1/orders/{order}").as_str())
        );
    }

    // The same key with another body: refused, nothing written.
    let mut other = body.clone();
    other["currency"] = json!("USD");
    let reused = apis[1].post("/v1/orders", other, &key).await.unwrap();
    assert_eq!(reused.status, 422, "{}", reused.body);
    assert_eq!(reused.body["type"], "/problems/idempotency-key-reused");

    // One order in the topic, placed once. The sweepers have had their chance to republish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    let mut placed: Vec<(Uuid, u64)> = records
        .iter()
        .map(|r| r.envelope().unwrap())
        .map(|e| (e.aggregate_id, e.sequence))
        .collect();
    placed.sort();
    placed.dedup();
    assert_eq!(placed, vec![(order, 1)], "one order, one event");
    for api in apis {
        api.stop().await.unwrap();
    }
}
