//! Partitions added to the events topic while commands flow (`stack-admin topics` with a higher
//! `APP_KAFKA__PARTITIONS`): every order keeps its partition and its events stay in sequence, new
//! orders spread over the new partitions, and the projectors consume the new partitions from
//! their beginning soon enough that an order placed there is readable within 10 s of its 201.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::{LineItem, OrderEvent};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::json;
use tests::{
    envelope, eventually, read_topic, settings_with_fresh_topic_of, CommandApi, Keyspace,
    Projector, QueryApi, Reply,
};
use uuid::Uuid;

const BEFORE: i32 = 6;
const AFTER: i32 = 12;
/// How soon an order on a new partition must be readable, from its 201.
const VISIBLE_WITHIN: Duration = Duration::from_secs(10);
/// How long command-api may take to place new orders on the new partitions.
const LANDING_WITHIN: Duration = Duration::from_secs(60);
const LOAD_WORKERS: usize = 4;

/// The partition command-api gives a new order when the topic has `partitions` partitions.
fn partition_of(order: Uuid, partitions: i32) -> i32 {
    ((order.as_u128() as u64) % partitions as u64) as i32
}

/// A fresh order id that command-api puts on a new partition once it knows about them.
fn id_for_a_new_partition() -> Uuid {
    loop {
        let id = Uuid::now_v7();
        if partition_of(id, AFTER) >= BEFORE {
            return id;
        }
    }
}

/// How long a command is retried while it answers 503.
const RETRY_503_FOR: Duration = Duration::from_secs(15);

/// `POST`, retrying a 503 (with the same idempotency key, as clients are asked to) for up to
/// [`RETRY_503_FOR`]; each 503 is counted. Right after the growth a few are expected: command-api
/// may pin an order to a new partition before its producer's metadata knows that partition
/// (refreshed every `kafka.metadata_refresh_ms`), and such a produce fails until it does.
async fn command(
    api: &CommandApi,
    path: &str,
    body: serde_json::Value,
    key: &str,
    unavailable: &std::sync::atomic::AtomicUsize,
) -> anyhow::Result<Reply> {
    let start = Instant::now();
    loop {
        let reply = api
            .post(path, body.clone(), &[("Idempotency-Key", key)])
            .await?;
        if reply.status != 503 || start.elapsed() > RETRY_503_FOR {
            return Ok(reply);
        }
        unavailable.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One order's life through command-api: placed, two lines added, paid. Returns the versions
/// acknowledged (2xx), in order.
async fn lifecycle(
    api: &CommandApi,
    order: Uuid,
    unavailable: &std::sync::atomic::AtomicUsize,
) -> anyhow::Result<Vec<u64>> {
    let path = |tail: &str| format!("/v1/orders/{order}{tail}");
    let steps = [
        (
            "/v1/orders".to_string(),
            json!({"order_id": order, "customer_id": Uuid::now_v7(), "currency": "EUR",
                   "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 100}]}),
            201,
        ),
        (
            path("/items"),
            json!({"sku": "B", "quantity": 2, "unit_price_cents": 250}),
            200,
        ),
        (
            path("/items"),
            json!({"sku": "C", "quantity": 1, "unit_price_cents": 999}),
            200,
        ),
        (
            path("/payments"),
            json!({"amount_cents": 1599, "payment_ref": format!("pay-{order}")}),
            200,
        ),
    ];
    let mut versions = Vec::new();
    for (k, (path, body, expected)) in steps.into_iter().enumerate() {
        let reply = command(api, &path, body, &format!("{order}-{k}"), unavailable).await?;
        anyhow::ensure!(
            reply.status == expected,
            "{path} of {order} answered {}: {}",
            reply.status,
            reply.body
        );
        versions.push(
            reply.body["version"]
                .as_u64()
                .ok_or_else(|| anyhow::anyhow!("no version in {}", reply.body))?,
        );
    }
    Ok(versions)
}

/// Whether `partition` of the topic holds a record keyed `key` (read from its beginning to its
/// end as it is now).
async fn partition_holds(
    settings: &infra::Settings,
    partition: i32,
    key: String,
) -> anyhow::Result<bool> {
    let config = infra::kafka::base_config(&settings.kafka);
    let topic = settings.kafka.topic.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config
            .clone()
            .set("group.id", format!("test-probe-{}", Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .create()?;
        let (low, high) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
        if high <= low {
            return Ok(false);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message?;
            if message.key() == Some(key.as_bytes()) {
                return Ok(true);
            }
            if message.offset() + 1 >= high {
                return Ok(false);
            }
        }
        anyhow::bail!("reading {topic}/{partition} timed out")
    })
    .await?
}

/// Wait (bounded by [`VISIBLE_WITHIN`] from `since`) until query-api serves `order` at
/// `version`; returns how long after `since` it did.
async fn visible(
    queries: &QueryApi,
    order: Uuid,
    version: u64,
    since: Instant,
) -> anyhow::Result<Duration> {
    let left = VISIBLE_WITHIN.saturating_sub(since.elapsed());
    eventually(
        left,
        &format!("order {order} v{version} readable through query-api"),
        || async {
            let r = queries
                .get(&format!(
                    "/v1/orders/{order}?min_version={version}&wait_ms=500"
                ))
                .await?;
            Ok((r.status == 200).then(|| since.elapsed()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_added_under_load_keep_each_order_in_sequence_and_are_projected_within_10_s() {
    let mut settings = settings_with_fresh_topic_of("partitions", BEFORE)
        .await
        .unwrap();
    let ks = Keyspace::fresh(&mut settings).await.unwrap();
    let api = Arc::new(CommandApi::spawn(settings.clone()).await.unwrap());
    let projector = Projector::spawn(&settings);
    let queries = QueryApi::spawn(&settings).await.unwrap();
    queries
        .wait_read_models(Duration::from_secs(60))
        .await
        .unwrap();

    // A steady load: a few clients, each running order lifecycles one after the other.
    let stop = Arc::new(AtomicBool::new(false));
    let unavailable = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load: Vec<_> = (0..LOAD_WORKERS)
        .map(|_| {
            let (api, stop, unavailable) = (api.clone(), stop.clone(), unavailable.clone());
            tokio::spawn(async move {
                let mut done: BTreeMap<Uuid, Vec<u64>> = BTreeMap::new();
                while !stop.load(Ordering::SeqCst) {
                    let order = Uuid::now_v7();
                    let versions = lifecycle(&api, order, &unavailable).await?;
                    done.insert(order, versions);
                }
                anyhow::Ok(done)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Grow the topic mid-load, as `stack-admin topics` with APP_KAFKA__PARTITIONS=12 does.
    let mut grown = settings.kafka.clone();
    grown.partitions = AFTER;
    infra::kafka::ensure_topics(&grown).await.unwrap();
    let grown_at = Instant::now();
    assert_eq!(
        infra::kafka::partition_count(&grown, &grown.topic, Duration::from_secs(10))
            .await
            .unwrap(),
        AFTER
    );
    println!("topic grown from {BEFORE} to {AFTER} partitions");

    // The projectors pick the new partitions up by themselves: an event produced straight to the
    // last new partition right after the growth is readable within 10 s.
    let direct = Uuid::now_v7();
    let producer = infra::kafka::producer(&grown).unwrap();
    let placed = envelope(
        &settings.tenant,
        direct,
        1,
        OrderEvent::OrderPlaced {
            order_id: direct,
            customer_id: Uuid::now_v7(),
            currency: "EUR".into(),
            items: vec![LineItem {
                sku: "DIRECT".into(),
                quantity: 1,
                unit_price_cents: 1,
            }],
        },
    );
    let (key, payload) = (placed.key(), placed.to_json());
    producer
        .send(
            FutureRecord::to(&grown.topic)
                .partition(AFTER - 1)
                .key(&key)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(err, _)| err)
        .unwrap();
    let produced_at = Instant::now();
    let direct_visible = visible(&queries, direct, 1, produced_at).await.unwrap();
    println!(
        "an event produced to new partition {} {:?} after the growth was readable {direct_visible:?} \
         later ({:?} after the growth)",
        AFTER - 1,
        produced_at - grown_at,
        grown_at.elapsed()
    );

    // Orders placed through command-api with ids it puts on a new partition once it has re-read
    // the partition count; until then they land on an old one. Keep placing until one lands on a
    // new partition; it must be readable within 10 s of its 201.
    let mut probes = 0;
    let (probe, partition, landed_after, probe_visible) = loop {
        assert!(
            grown_at.elapsed() < LANDING_WITHIN,
            "no order placed on a new partition within {LANDING_WITHIN:?} of the growth \
             ({probes} tried)"
        );
        let order = id_for_a_new_partition();
        probes += 1;
        let reply = command(
            &api,
            "/v1/orders",
            json!({"order_id": order, "customer_id": Uuid::now_v7(), "currency": "EUR",
                   "items": [{"sku": "PROBE", "quantity": 1, "unit_price_cents": 7}]}),
            &format!("probe-{order}"),
            &unavailable,
        )
        .await
        .unwrap();
        let answered = Instant::now();
        assert_eq!(reply.status, 201, "{}", reply.body);
        let landed_after = grown_at.elapsed();
        let readable = visible(&queries, order, 1, answered).await;
        let new_partition = partition_of(order, AFTER);
        let on_new = partition_holds(&settings, new_partition, order.to_string())
            .await
            .unwrap();
        if on_new {
            break (order, new_partition, landed_after, readable.unwrap());
        }
        // It went to an old partition (`id % 6`); that one is readable in time as well.
        readable.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "order {probe} placed on new partition {partition} {landed_after:?} after the growth \
         (probe {probes}); readable {probe_visible:?} after its 201"
    );

    // The load goes on for a while on 12 partitions, then stops.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acknowledged: BTreeMap<Uuid, Vec<u64>> = BTreeMap::new();
    for worker in load {
        acknowledged.extend(worker.await.unwrap().unwrap());
    }
    acknowledged.insert(probe, vec![1]);
    acknowledged.insert(direct, vec![1]);
    println!(
        "{} orders under load; {} answers were 503 (retried)",
        acknowledged.len() - 2,
        unavailable.load(Ordering::SeqCst)
    );

    // Per order, in the topic: one partition, sequences in offset order 1, 2, …, n (duplicates
    // of a republished batch aside), every acknowledged version among them.
    let records = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    let mut by_order: BTreeMap<Uuid, (BTreeSet<i32>, Vec<u64>)> = BTreeMap::new();
    for record in &records {
        let e = record.envelope().unwrap();
        let (partitions, sequences) = by_order.entry(e.aggregate_id).or_default();
        partitions.insert(record.partition);
        if !sequences.contains(&e.sequence) {
            sequences.push(e.sequence);
        }
    }
    let mut per_partition: BTreeMap<i32, usize> = BTreeMap::new();
    for (order, (partitions, sequences)) in &by_order {
        assert_eq!(partitions.len(), 1, "order {order} on {partitions:?}");
        let contiguous: Vec<u64> = (1..=sequences.len() as u64).collect();
        assert_eq!(sequences, &contiguous, "sequences of {order} in the topic");
        *per_partition
            .entry(*partitions.first().unwrap())
            .or_default() += 1;
    }
    for (order, versions) in &acknowledged {
        let Some((_, sequences)) = by_order.get(order) else {
            panic!("acknowledged order {order} is not in the topic");
        };
        assert!(
            versions.iter().all(|v| sequences.contains(v)),
            "{order}: acknowledged {versions:?}, in the topic {sequences:?}"
        );
    }
    assert!(
        per_partition.keys().any(|p| *p >= BEFORE),
        "no order on a new partition: {per_partition:?}"
    );
    println!("orders per partition: {per_partition:?}");

    // Everything is projected, the new partitions from their first record: every view is at its
    // last acknowledged version.
    ks.drain(&settings, Duration::from_secs(120)).await.unwrap();
    for (order, versions) in &acknowledged {
        let last = versions.last().copied().unwrap_or(1);
        let view = queries.get(&format!("/v1/orders/{order}")).await.unwrap();
        assert_eq!(view.status, 200, "{order}: {}", view.body);
        assert_eq!(view.body["version"], json!(last), "{order}: {}", view.body);
    }

    queries.stop().await.unwrap();
    projector.stop().await.unwrap();
    match Arc::try_unwrap(api) {
        Ok(api) => api.stop().await.unwrap(),
        Err(_) => panic!("command-api still shared"),
    }
    ks.drop_keyspace().await.unwrap();
}
