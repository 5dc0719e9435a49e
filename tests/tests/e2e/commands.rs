//! The write path against the real stack: concurrency, idempotency, the crash window.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use tests::{
    eventually, read_topic, sequences_of, settings_with_fresh_topic, CommandApi, Keyspace,
};

#[tokio::test]
async fn fifty_concurrent_commands_on_one_order_get_distinct_contiguous_versions() {
    let settings = settings_with_fresh_topic("concurrent").await.unwrap();
    // Two instances: commands on the same order race each other's LWT for real.
    let a = CommandApi::spawn(settings.clone()).await.unwrap();
    let b = CommandApi::spawn(settings.clone()).await.unwrap();
    let order = a.place_order().await.unwrap();

    let path = format!("/v1/orders/{order}/items");
    let mut calls = Vec::new();
    for i in 0..50 {
        let api = if i % 2 == 0 { &a } else { &b };
        calls.push(api.post(
            &path,
            json!({"sku": format!("SKU-{i}"), "quantity": 1, "unit_price_cents": 10}),
            &[],
        ));
    }
    let replies = futures::future::join_all(calls).await;
    let mut versions = BTreeSet::new();
    let mut accepted = 0;
    for reply in replies {
        let reply = reply.unwrap();
        match reply.status {
            200 => {
                accepted += 1;
                let v = reply.body["version"].as_i64().unwrap();
                assert!(versions.insert(v), "version {v} answered twice");
            }
            409 => assert_eq!(
                reply.header("content-type"),
                Some("application/problem+json")
            ),
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert!(accepted > 0);
    let expected: BTreeSet<i64> = (2..2 + accepted).collect();
    assert_eq!(versions, expected, "versions are not contiguous from 2");

    let records = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    let sequences = sequences_of(&records, order).unwrap();
    let all: Vec<u64> = (1..=1 + accepted as u64).collect();
    assert_eq!(
        sequences, all,
        "the topic must hold every sequence once, in order"
    );
    let partitions: BTreeSet<i32> = records.iter().map(|r| r.partition).collect();
    assert_eq!(
        partitions.len(),
        1,
        "one order's events stay on one partition"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn the_same_idempotency_key_twice_gives_the_same_answer_and_one_set_of_events() {
    let settings = settings_with_fresh_topic("idempotency").await.unwrap();
    let api = CommandApi::spawn(settings.clone()).await.unwrap();
    let order = uuid::Uuid::now_v7();
    let body = json!({"order_id": order, "customer_id": uuid::Uuid::now_v7(), "currency": "USD",
                      "items": [{"sku": "A", "quantity": 2, "unit_price_cents": 500}]});
    let key = [("Idempotency-Key", "place-once")];
    let first = api.post("/v1/orders", body.clone(), &key).await.unwrap();
    let again = api.post("/v1/orders", body.clone(), &key).await.unwrap();
    assert_eq!(first.status, 201);
    assert_eq!(again.status, first.status);
    assert_eq!(again.body, first.body);
    // Without the key, reusing the order id is a conflict.
    let reused = api.post("/v1/orders", body, &[]).await.unwrap();
    assert_eq!(reused.status, 409);

    let pay = json!({"amount_cents": 1000, "payment_ref": "p-1"});
    let key = [("Idempotency-Key", "pay-once")];
    let paid = api
        .post(&format!("/v1/orders/{order}/payments"), pay.clone(), &key)
        .await
        .unwrap();
    // A fresh instance (empty cache) answers the same from the row.
    let other = CommandApi::spawn(settings.clone()).await.unwrap();
    let paid_again = other
        .post(&format!("/v1/orders/{order}/payments"), pay, &key)
        .await
        .unwrap();
    assert_eq!(paid.status, 200);
    assert_eq!(
        (paid_again.status, &paid_again.body),
        (paid.status, &paid.body)
    );

    let records = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    let types: Vec<String> = records
        .iter()
        .map(|r| r.envelope().unwrap().event_type)
        .collect();
    assert_eq!(types, vec!["OrderPlaced", "PaymentRecorded"]);
    api.stop().await.unwrap();
    other.stop().await.unwrap();
}

/// A placing skips the read of the aggregate row (its `IF NOT EXISTS` tells whether the order
/// exists): an instance that never saw the order must still replay the first answer for the same
/// key and refuse the order id without it, even when it may try its LWT only once.
#[tokio::test]
async fn placing_an_order_another_instance_placed_replays_or_refuses_with_one_attempt() {
    let mut settings = settings_with_fresh_topic("place-elsewhere").await.unwrap();
    settings.command_api.max_lwt_attempts = 1;
    let a = CommandApi::spawn(settings.clone()).await.unwrap();
    let b = CommandApi::spawn(settings.clone()).await.unwrap();
    let order = uuid::Uuid::now_v7();
    let body = json!({"order_id": order, "customer_id": uuid::Uuid::now_v7(), "currency": "EUR",
                      "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 700}]});
    let key = [("Idempotency-Key", "place-here")];
    let first = a.post("/v1/orders", body.clone(), &key).await.unwrap();
    assert_eq!(first.status, 201, "{}", first.body);

    let replayed = b.post("/v1/orders", body.clone(), &key).await.unwrap();
    assert_eq!((replayed.status, &replayed.body), (201, &first.body));
    let reused = b.post("/v1/orders", body, &[]).await.unwrap();
    assert_eq!(reused.status, 409, "{}", reused.body);
    assert_eq!(
        reused.body["type"]
            .as_str()
            .map(|t| t.ends_with("order-exists")),
        Some(true),
        "{}",
        reused.body
    );

    let records = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    assert_eq!(sequences_of(&records, order).unwrap(), vec![1]);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn a_command_aborted_after_its_lwt_is_published_by_the_sweeper() {
    let mut settings = settings_with_fresh_topic("abort").await.unwrap();
    // A keyspace of its own: no other test's sweeper may publish this test's batches elsewhere.
    let keyspace = Keyspace::fresh(&mut settings).await.unwrap();
    let healthy = CommandApi::spawn(settings.clone()).await.unwrap();
    let order = healthy.place_order().await.unwrap();
    healthy.stop().await.unwrap();

    let mut faulty_settings = settings.clone();
    faulty_settings.command_api.fault = "abort_after_lwt".into();
    // No sweeper of its own in the way: a long interval.
    faulty_settings.command_api.sweeper_interval_ms = 3_600_000;
    let faulty = CommandApi::spawn(faulty_settings).await.unwrap();
    let reply = faulty
        .post(
            &format!("/v1/orders/{order}/items"),
            json!({"sku": "LOST", "quantity": 1, "unit_price_cents": 1}),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 500);
    faulty.stop().await.unwrap();
    let before = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    assert_eq!(
        sequences_of(&before, order).unwrap(),
        vec![1],
        "not published yet"
    );

    // A healthy instance's sweeper finds the intent and publishes the committed batch.
    let sweeper = CommandApi::spawn(settings.clone()).await.unwrap();
    eventually(
        Duration::from_secs(20),
        "the sweeper republishing",
        || async {
            let records = read_topic(&settings, &settings.kafka.topic).await?;
            Ok((sequences_of(&records, order)? == vec![1, 2]).then_some(()))
        },
    )
    .await
    .unwrap();
    sweeper.stop().await.unwrap();
    keyspace.drop_keyspace().await.unwrap();
}

#[tokio::test]
async fn a_process_killed_after_its_lwt_loses_nothing() {
    let mut settings = settings_with_fresh_topic("kill").await.unwrap();
    // A keyspace of its own: no other test's sweeper may publish this test's batches elsewhere.
    let keyspace = Keyspace::fresh(&mut settings).await.unwrap();
    let healthy = CommandApi::spawn(settings.clone()).await.unwrap();
    let order = healthy.place_order().await.unwrap();
    healthy.stop().await.unwrap();

    let mut dying = CommandApi::spawn_process(
        &settings,
        &[
            ("APP_COMMAND_API__FAULT", "exit_after_lwt"),
            ("APP_COMMAND_API__SWEEPER_INTERVAL_MS", "3600000"),
        ],
    )
    .await
    .unwrap();
    let reply = dying
        .post(
            &format!("/v1/orders/{order}/items"),
            json!({"sku": "KILLED", "quantity": 3, "unit_price_cents": 7}),
            &[],
        )
        .await;
    assert!(reply.is_err(), "the process died mid-request: {reply:?}");
    let status = dying
        .wait_exit(Duration::from_secs(10))
        .expect("process exited");
    assert!(!status.success());

    // The next command on the order publishes the pending batch first, then its own.
    let next = CommandApi::spawn(settings.clone()).await.unwrap();
    let reply = next
        .post(
            &format!("/v1/orders/{order}/items"),
            json!({"sku": "AFTER", "quantity": 1, "unit_price_cents": 7}),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["version"], 3);
    let records = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    assert_eq!(sequences_of(&records, order).unwrap(), vec![1, 2, 3]);
    next.stop().await.unwrap();
    keyspace.drop_keyspace().await.unwrap();
}

#[tokio::test]
async fn every_intent_of_concurrent_commands_is_marked_published_by_the_batched_marks() {
    let mut settings = settings_with_fresh_topic("marks").await.unwrap();
    // A keyspace of its own, so its publish_intents hold this test's intents only; no sweeper in
    // the way (it would publish and mark what the writers left).
    let keyspace = Keyspace::fresh(&mut settings).await.unwrap();
    settings.command_api.sweeper_interval_ms = 3_600_000;
    let a = CommandApi::spawn(settings.clone()).await.unwrap();
    let b = CommandApi::spawn(settings.clone()).await.unwrap();

    // 30 orders placed at once across two instances, then an item added to each: 60 commands,
    // 60 intents, many of them in the same intents partition within a few milliseconds.
    let placed = futures::future::join_all((0..30).map(|i| {
        let api = if i % 2 == 0 { &a } else { &b };
        api.place_order()
    }))
    .await;
    let orders: Vec<_> = placed.into_iter().map(|o| o.unwrap()).collect();
    let added = futures::future::join_all(orders.iter().enumerate().map(|(i, order)| {
        let api = if i % 2 == 0 { &b } else { &a };
        let path = format!("/v1/orders/{order}/items");
        async move {
            api.post(
                &path,
                json!({"sku": "MARKED", "quantity": 1, "unit_price_cents": 5}),
                &[],
            )
            .await
        }
    }))
    .await;
    for reply in added {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    let intents = format!(
        "SELECT aggregate_id, version, published FROM {}.publish_intents",
        keyspace.name
    );
    let marked = eventually(
        Duration::from_secs(20),
        "every intent marked published",
        || async {
            use futures::TryStreamExt;
            let rows: Vec<(uuid::Uuid, i64, Option<bool>)> = keyspace
                .session
                .query_iter(intents.as_str(), ())
                .await?
                .rows_stream::<(uuid::Uuid, i64, Option<bool>)>()?
                .try_collect()
                .await?;
            let unmarked = rows.iter().filter(|(_, _, p)| *p != Some(true)).count();
            Ok((rows.len() == 60 && unmarked == 0).then_some(rows))
        },
    )
    .await
    .unwrap();
    let versions: BTreeSet<(uuid::Uuid, i64)> = marked.iter().map(|(id, v, _)| (*id, *v)).collect();
    let expected: BTreeSet<(uuid::Uuid, i64)> = orders
        .iter()
        .flat_map(|order| [(*order, 1), (*order, 2)])
        .collect();
    assert_eq!(versions, expected, "one intent per command, each marked");
    let records = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    for order in &orders {
        assert_eq!(sequences_of(&records, *order).unwrap(), vec![1, 2]);
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    keyspace.drop_keyspace().await.unwrap();
}
