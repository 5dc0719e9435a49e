//! Kafka and the CQL database going away: readiness says so, commands answer 503 with
//! `Retry-After` quickly, and once the part is back nothing acknowledged is missing and every
//! projector resumes where it was.

use std::time::{Duration, Instant};

use command_api::publisher::Publisher;
use events::{LineItem, OrderEvent};
use serde_json::json;
use tests::{
    dev, envelope, eventually, read_topic, sequences_of, settings_with_fresh_topic, CommandApi,
    Keyspace, Projector,
};
use uuid::Uuid;

/// Restarts the part when dropped, so a failing assertion does not leave the stack broken.
struct Restart(&'static str);

impl Drop for Restart {
    fn drop(&mut self) {
        let _ = dev(&["start", self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_kafka_stopped_commands_answer_503_and_nothing_acknowledged_is_lost() {
    let _stack = crate::STACK.lock().await;
    let mut settings = settings_with_fresh_topic("kafka-outage").await.unwrap();
    // A keyspace of its own: no other test's sweeper may publish this test's batches elsewhere.
    let keyspace = Keyspace::fresh(&mut settings).await.unwrap();
    let api = CommandApi::spawn(settings.clone()).await.unwrap();
    // A projector rides the outage too: it must resume once Kafka is back and miss nothing.
    let projector = Projector::spawn(&settings);
    let order = api.place_order().await.unwrap();
    let mut acknowledged = vec![1u64];

    dev(&["stop", "kafka"]).unwrap();
    let restart = Restart("kafka");

    let ready = eventually(Duration::from_secs(15), "readiness failing", || async {
        let r = api.http.get(api.url("/readyz")).send().await?;
        Ok((r.status() == 503).then_some(()))
    })
    .await;
    assert!(ready.is_ok(), "{ready:?}");

    for i in 0..3 {
        let start = Instant::now();
        let reply = api
            .post(
                &format!("/v1/orders/{order}/items"),
                json!({"sku": format!("DOWN-{i}"), "quantity": 1, "unit_price_cents": 5}),
                &[],
            )
            .await
            .unwrap();
        let took = start.elapsed();
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!(reply.header("retry-after").is_some());
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        assert!(took < Duration::from_secs(8), "503 took {took:?}");
    }

    drop(restart);
    api.wait_ready(Duration::from_secs(60)).await.unwrap();
    let reply = eventually(
        Duration::from_secs(60),
        "a command succeeding again",
        || async {
            let r = api
                .post(
                    &format!("/v1/orders/{order}/items"),
                    json!({"sku": "BACK", "quantity": 1, "unit_price_cents": 5}),
                    &[],
                )
                .await?;
            Ok((r.status == 200).then_some(r))
        },
    )
    .await
    .unwrap();
    let version = reply.body["version"].as_u64().unwrap();
    acknowledged.extend(2..=version);

    // Every acknowledged sequence (and any the outage committed before refusing) is in the topic,
    // once each after de-duplication, in order.
    let sweeper_done = eventually(
        Duration::from_secs(30),
        "all sequences in the topic",
        || async {
            let records = read_topic(&settings, &settings.kafka.topic).await?;
            let sequences = sequences_of(&records, order)?;
            let contiguous: Vec<u64> = (1..=version).collect();
            Ok((sequences == contiguous).then_some(()))
        },
    )
    .await;
    assert!(sweeper_done.is_ok(), "{sweeper_done:?}");
    assert_eq!(acknowledged, (1..=version).collect::<Vec<_>>());

    // The projector rejoined its group and applied every event, none skipped.
    keyspace
        .drain(&settings, Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(detail_version(&keyspace, order).await, Some(version as i64));
    let history = keyspace
        .session
        .query_unpaged(
            format!(
                "SELECT sequence FROM {}.order_events_g1 WHERE tenant_id = 'default' AND aggregate_id = ?",
                keyspace.name
            ),
            (order,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows_num();
    assert_eq!(
        history as u64, version,
        "every event of the order is in its history"
    );
    projector.stop().await.unwrap();
    api.stop().await.unwrap();
    keyspace.drop_keyspace().await.unwrap();
}

#[tokio::test]
async fn with_cql_stopped_readiness_fails_and_commands_answer_503() {
    let _stack = crate::STACK.lock().await;
    let mut settings = settings_with_fresh_topic("cql-outage").await.unwrap();
    // A keyspace of its own: no other test's sweeper may publish this test's batches elsewhere.
    let keyspace = Keyspace::fresh(&mut settings).await.unwrap();
    let api = CommandApi::spawn(settings.clone()).await.unwrap();
    let order = api.place_order().await.unwrap();

    dev(&["stop", "cassandra"]).unwrap();
    let restart = Restart("cassandra");

    let ready = eventually(Duration::from_secs(15), "readiness failing", || async {
        let r = api.http.get(api.url("/readyz")).send().await?;
        Ok((r.status() == 503).then_some(()))
    })
    .await;
    assert!(ready.is_ok(), "{ready:?}");
    let start = Instant::now();
    let reply = api
        .post(
            &format!("/v1/orders/{order}/cancellation"),
            json!({"reason": "db down"}),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.header("retry-after").is_some());
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "took {:?}",
        start.elapsed()
    );

    drop(restart);
    api.wait_ready(Duration::from_secs(120)).await.unwrap();
    let reply = eventually(
        Duration::from_secs(60),
        "a command succeeding again",
        || async {
            let r = api
                .post(
                    &format!("/v1/orders/{order}/cancellation"),
                    json!({"reason": "db back"}),
                    &[],
                )
                .await?;
            Ok((r.status == 200).then_some(r))
        },
    )
    .await
    .unwrap();
    assert_eq!(reply.body["version"], 2);
    api.stop().await.unwrap();
    keyspace.drop_keyspace().await.unwrap();
}

/// The projector's group session expires while Kafka is away and nothing is to be consumed (every
/// poll idle); its partitions are revoked and assigned again once Kafka is back. The first event
/// after that must be applied. Events go straight to the topic (no command-api, hence no sweeper
/// that could republish, and so hide, a dropped record).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projector_idle_through_a_kafka_restart_applies_the_first_event_after_it() {
    let _stack = crate::STACK.lock().await;
    let mut settings = settings_with_fresh_topic("kafka-restart-idle")
        .await
        .unwrap();
    let keyspace = Keyspace::fresh(&mut settings).await.unwrap();
    let projector = Projector::spawn(&settings);
    let publisher = Publisher::new(&settings.kafka).await.unwrap();
    let order = Uuid::now_v7();
    let placed = envelope(
        &settings.tenant,
        order,
        1,
        OrderEvent::OrderPlaced {
            order_id: order,
            customer_id: Uuid::now_v7(),
            currency: "EUR".into(),
            items: vec![LineItem {
                sku: "BEFORE".into(),
                quantity: 1,
                unit_price_cents: 100,
            }],
        },
    );
    let added = envelope(
        &settings.tenant,
        order,
        2,
        OrderEvent::ItemAdded(LineItem {
            sku: "AFTER".into(),
            quantity: 1,
            unit_price_cents: 23,
        }),
    );
    let partition = 1;
    publisher.publish(partition, &[placed]).await.unwrap();
    keyspace
        .drain(&settings, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(detail_version(&keyspace, order).await, Some(1));

    dev(&["stop", "kafka"]).unwrap();
    let restart = Restart("kafka");
    // Longer than the consumer's session timeout (10 s): the group forgets the projector.
    tokio::time::sleep(Duration::from_secs(12)).await;
    drop(restart);

    let published = eventually(
        Duration::from_secs(60),
        "publishing after the restart",
        || async {
            Ok(publisher
                .publish(partition, std::slice::from_ref(&added))
                .await
                .ok())
        },
    )
    .await;
    assert!(published.is_ok(), "{published:?}");
    let applied = eventually(
        Duration::from_secs(90),
        "the first event after the restart applied",
        || async { Ok((detail_version(&keyspace, order).await == Some(2)).then_some(())) },
    )
    .await;
    projector.stop().await.unwrap();
    assert!(applied.is_ok(), "{applied:?}");
}

async fn detail_version(keyspace: &Keyspace, order: Uuid) -> Option<i64> {
    keyspace
        .session
        .query_unpaged(
            format!(
                "SELECT version FROM {}.order_detail_g1 WHERE tenant_id = 'default' AND order_id = ?",
                keyspace.name
            ),
            (order,),
        )
        .await
        .ok()?
        .into_rows_result()
        .ok()?
        .maybe_first_row::<(Option<i64>,)>()
        .ok()
        .flatten()
        .and_then(|(v,)| v)
}
