//! Kafka and the CQL database going away: readiness says so, commands answer 503 with
//! `Retry-After` quickly, and once the part is back nothing acknowledged is missing and every
//! projector resumes where it was.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use command_api::publisher::Publisher;
use events::{LineItem, OrderEvent};
use serde_json::json;
use tests::{
    dev, envelope, eventually, read_topic, sequences_of, settings_with_fresh_topic, CommandApi,
    Keyspace, Projector, Reply,
};
use uuid::Uuid;

use crate::Restart;

/// How long a command may take to be answered while a part is down. Not a latency assertion:
/// only a bound on the wait, so a command that hangs fails the test instead of blocking it.
const ANSWER_BOUND: Duration = Duration::from_secs(60);

/// `request`, bounded by [`ANSWER_BOUND`]; prints how long the answer took.
async fn answered(
    what: &str,
    request: impl std::future::Future<Output = anyhow::Result<Reply>>,
) -> Reply {
    let start = Instant::now();
    let reply = tokio::time::timeout(ANSWER_BOUND, request)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {ANSWER_BOUND:?}"))
        .unwrap();
    println!("{what}: {} after {:?}", reply.status, start.elapsed());
    reply
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
    // What command-api acknowledged (a 2xx answer): version -> the SKU the command added.
    let mut acknowledged: BTreeMap<u64, String> = BTreeMap::new();
    let order = Uuid::now_v7();
    let placed = api
        .post(
            "/v1/orders",
            json!({"order_id": order, "customer_id": Uuid::now_v7(), "currency": "EUR",
                   "items": [{"sku": "FIRST", "quantity": 1, "unit_price_cents": 100}]}),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(placed.status, 201, "{}", placed.body);
    acknowledged.insert(placed.body["version"].as_u64().unwrap(), "FIRST".into());

    dev(&["stop", "kafka"]).unwrap();
    let restart = Restart("kafka");

    let ready = eventually(Duration::from_secs(15), "readiness failing", || async {
        let r = api.http.get(api.url("/readyz")).send().await?;
        Ok((r.status() == 503).then_some(()))
    })
    .await;
    assert!(ready.is_ok(), "{ready:?}");

    for i in 0..3 {
        let reply = answered(
            &format!("command {i} with Kafka stopped"),
            api.post(
                &format!("/v1/orders/{order}/items"),
                json!({"sku": format!("DOWN-{i}"), "quantity": 1, "unit_price_cents": 5}),
                &[],
            ),
        )
        .await;
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!(reply.header("retry-after").is_some());
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
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
    acknowledged.insert(version, "BACK".into());

    // Every acknowledged command is in the topic, and so is any command the outage committed
    // before refusing it (the sweeper publishes those): the order's sequences are 1..=version,
    // each once after de-duplication, in order; nothing follows the last acknowledged one.
    let sequences = eventually(
        Duration::from_secs(60),
        "the sweeper publishing every committed sequence",
        || async {
            let records = read_topic(&settings, &settings.kafka.topic).await?;
            let sequences = sequences_of(&records, order)?;
            let contiguous: Vec<u64> = (1..=version).collect();
            Ok((sequences == contiguous).then_some(sequences))
        },
    )
    .await
    .unwrap();
    let records = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    let mut in_topic: BTreeMap<u64, events::EventEnvelope> = BTreeMap::new();
    for record in &records {
        let e = record.envelope().unwrap();
        if e.aggregate_id == order {
            in_topic.entry(e.sequence).or_insert(e);
        }
    }
    assert_eq!(in_topic.keys().copied().collect::<Vec<_>>(), sequences);
    let sku_of = |e: &events::EventEnvelope| match OrderEvent::from_envelope(e).unwrap() {
        OrderEvent::OrderPlaced { items, .. } => items[0].sku.clone(),
        OrderEvent::ItemAdded(item) => item.sku,
        other => panic!("unexpected event {other:?}"),
    };
    for (v, sku) in &acknowledged {
        let published = in_topic
            .get(v)
            .unwrap_or_else(|| panic!("acknowledged version {v} ({sku}) is not in the topic"));
        assert_eq!(&sku_of(published), sku, "version {v} in the topic");
    }
    // What the outage committed in between are commands that were sent, each at most once.
    let between: Vec<String> = in_topic
        .iter()
        .filter(|(v, _)| !acknowledged.contains_key(v))
        .map(|(_, e)| sku_of(e))
        .collect();
    let sent: BTreeSet<String> = (0..3)
        .map(|i| format!("DOWN-{i}"))
        .chain(["BACK".into()])
        .collect();
    assert!(
        between.iter().all(|sku| sent.contains(sku)),
        "unknown commands in the topic: {between:?}"
    );
    println!("acknowledged {acknowledged:?}; committed during the outage and swept: {between:?}");

    // The projector rejoined its group and applied every event, none skipped: the view is at the
    // last acknowledged version, holds every acknowledged line, and the history every event.
    keyspace
        .drain(&settings, Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(
        detail_version(&keyspace, &settings.tenant, order).await,
        Some(version as i64)
    );
    let items: String = keyspace
        .session
        .query_unpaged(
            format!(
                "SELECT items FROM {}.order_detail_g1 WHERE tenant_id = ? AND order_id = ?",
                keyspace.name
            ),
            (&settings.tenant, order),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .first_row::<(Option<String>,)>()
        .unwrap()
        .0
        .unwrap_or_default();
    let items: serde_json::Value = serde_json::from_str(&items).unwrap();
    let skus: BTreeSet<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["sku"].as_str())
        .collect();
    for sku in acknowledged.values() {
        assert!(
            skus.contains(sku.as_str()),
            "{sku} missing from the view: {items}"
        );
    }
    let history: Vec<u64> = keyspace
        .session
        .query_unpaged(
            format!(
                "SELECT sequence FROM {}.order_events_g1 WHERE tenant_id = ? AND aggregate_id = ?",
                keyspace.name
            ),
            (&settings.tenant, order),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(i64,)>()
        .unwrap()
        .map(|row| row.unwrap().0 as u64)
        .collect();
    assert_eq!(
        history, sequences,
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
    let reply = answered(
        "a command with CQL stopped",
        api.post(
            &format!("/v1/orders/{order}/cancellation"),
            json!({"reason": "db down"}),
            &[],
        ),
    )
    .await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.header("retry-after").is_some());

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
    assert_eq!(
        detail_version(&keyspace, &settings.tenant, order).await,
        Some(1)
    );

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
        || async {
            Ok((detail_version(&keyspace, &settings.tenant, order).await == Some(2)).then_some(()))
        },
    )
    .await;
    projector.stop().await.unwrap();
    assert!(applied.is_ok(), "{applied:?}");
}

async fn detail_version(keyspace: &Keyspace, tenant: &str, order: Uuid) -> Option<i64> {
    keyspace
        .session
        .query_unpaged(
            format!(
                "SELECT version FROM {}.order_detail_g1 WHERE tenant_id = ? AND order_id = ?",
                keyspace.name
            ),
            (tenant, order),
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
