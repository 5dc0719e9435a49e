//! The projector killed with SIGKILL (the real binary): in the middle of thousands of events, and
//! as one of two instances sharing the partitions. Nothing is lost, nothing counted twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use command_api::publisher::Publisher;
use events::EventEnvelope;
use futures::StreamExt;
use tests::{settings_with_fresh_topic, CommandApi, Keyspace, Projector};
use uuid::Uuid;

use crate::model::{
    assert_generations_equal, assert_no_differences, expect, rebuild_beside, Expected, Plan,
    Snapshot,
};

const ORDERS_APPLIED: (&str, &str) = ("projector_events_applied_total", "projection=\"orders\"");

/// Publish each order's envelopes as command-api does (one batch per order, on its partition),
/// many orders at a time.
async fn publish(publisher: Arc<Publisher>, batches: Vec<(Uuid, Vec<EventEnvelope>)>) {
    futures::stream::iter(batches)
        .for_each_concurrent(64, |(order, envelopes)| {
            let publisher = publisher.clone();
            async move {
                publisher
                    .publish(publisher.partition_for(order), &envelopes)
                    .await
                    .unwrap();
            }
        })
        .await;
}

/// Send plans as commands, `concurrency` orders at a time, counting finished orders in `done`.
async fn send_all(api: &CommandApi, plans: &[Plan], concurrency: usize, done: &AtomicUsize) {
    futures::stream::iter(plans)
        .for_each_concurrent(concurrency, |plan| async move {
            plan.send(api).await.unwrap();
            done.fetch_add(1, Ordering::SeqCst);
        })
        .await;
}

/// Sum of the stored next offsets of generation 1 of `projection`.
async fn applied(ks: &Keyspace, projection: &str, topic: &str) -> i64 {
    ks.offsets(projection, 1, topic)
        .await
        .unwrap()
        .values()
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projector_killed_amid_thousands_of_events_and_restarted_ends_equal_to_a_fresh_rebuild() {
    let mut settings = settings_with_fresh_topic("rs-sigkill").await.unwrap();
    let ks = Keyspace::fresh(&mut settings).await.unwrap();
    let topic = settings.kafka.topic.clone();

    // 700 order lifecycles (about 3 200 events) over 50 customers and five days.
    let customers: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
    let mut expected: BTreeMap<Uuid, Expected> = BTreeMap::new();
    let mut published: BTreeMap<Uuid, Vec<Vec<u8>>> = BTreeMap::new();
    let mut batches = Vec::new();
    for i in 0..700 {
        let plan = Plan::mixed(i, customers[i % customers.len()]);
        let times = plan.times(i);
        let envelopes = plan.envelopes(&settings.tenant, &times);
        expected.insert(plan.order, expect(&plan.events, Some(&times)));
        published.insert(
            plan.order,
            envelopes.iter().map(EventEnvelope::to_json).collect(),
        );
        batches.push((plan.order, envelopes));
    }
    let total: i64 = batches.iter().map(|(_, e)| e.len() as i64).sum();
    assert!(total > 3000, "{total} events");

    // A third is in the topic before the projector starts, the rest arrives while it runs.
    let publisher = Arc::new(Publisher::new(&settings.kafka).await.unwrap());
    let rest = batches.split_off(batches.len() / 3);
    publish(publisher.clone(), batches).await;
    let small_batches = [("APP_PROJECTOR__BATCH_SIZE", "50")];
    let mut first = Projector::spawn_process(&settings, &small_batches)
        .await
        .unwrap();
    let producing = tokio::spawn(publish(publisher.clone(), rest));

    // SIGKILL once a quarter of the events is applied: mid-batch, offsets not written for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (orders_at_kill, history_at_kill) = loop {
        let orders = applied(&ks, "orders", &topic).await;
        if orders >= total / 4 {
            first.kill();
            break (orders, applied(&ks, "order_history", &topic).await);
        }
        assert!(
            Instant::now() < deadline,
            "the projector applied only {orders} of {total} events"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("killed at orders {orders_at_kill}/{total}, order_history {history_at_kill}/{total}");
    assert!(orders_at_kill < total, "killed in the middle of the stream");

    producing.await.unwrap();
    let second = Projector::spawn_process(&settings, &small_batches)
        .await
        .unwrap();
    ks.drain(&settings, Duration::from_secs(120)).await.unwrap();

    // Every row is what the events say; each paid (and not cancelled) order is one sale.
    let snapshot = Snapshot::read(&ks, 1, 1).await.unwrap();
    assert_no_differences(
        "read models after the kill",
        &snapshot.differences(&expected, Some(&published)),
    );
    let sold: BTreeSet<Uuid> = snapshot.sales.iter().map(|s| s.1).collect();
    assert_eq!(sold.len(), snapshot.sales.len(), "an order counted twice");
    assert_eq!(
        sold,
        expected
            .iter()
            .filter(|(_, e)| e.sale.is_some())
            .map(|(o, _)| *o)
            .collect::<BTreeSet<_>>()
    );

    // And every table equals, row for row, what a fresh rebuild from offset 0 produces.
    let rebuilds = rebuild_beside(&ks, &settings, &["orders", "order_history"]).await;
    for r in &rebuilds {
        assert_generations_equal(&ks, &r.projection, r.previous, r.generation).await;
    }
    for r in rebuilds {
        r.task.abort();
    }

    second.stop().await.unwrap();
    ks.drop_keyspace().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_projectors_share_the_partitions_and_killing_one_hands_its_partitions_to_the_other() {
    let mut settings = settings_with_fresh_topic("rs-two").await.unwrap();
    assert!(settings.kafka.partitions >= 3);
    let ks = Keyspace::fresh(&mut settings).await.unwrap();
    let commands = CommandApi::spawn(settings.clone()).await.unwrap();
    let small_batches = [("APP_PROJECTOR__BATCH_SIZE", "20")];
    let mut a = Projector::spawn_process(&settings, &small_batches)
        .await
        .unwrap();
    let b = Projector::spawn_process(&settings, &small_batches)
        .await
        .unwrap();

    let customers: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    let mut plans: Vec<Plan> = Vec::new();
    let mut next = 0;
    let mut more = |n: usize| -> Vec<Plan> {
        let batch: Vec<Plan> = (next..next + n)
            .map(|i| Plan::mixed(i, customers[i % customers.len()]))
            .collect();
        next += n;
        batch
    };

    // Orders until both instances have applied some: each holds partitions of the group.
    let done = AtomicUsize::new(0);
    let mut rounds = 0;
    loop {
        let wave = more(12);
        send_all(&commands, &wave, 8, &done).await;
        plans.extend(wave);
        ks.drain(&settings, Duration::from_secs(60)).await.unwrap();
        let (by_a, by_b) = (
            a.metric(ORDERS_APPLIED.0, ORDERS_APPLIED.1).await.unwrap(),
            b.metric(ORDERS_APPLIED.0, ORDERS_APPLIED.1).await.unwrap(),
        );
        if by_a > 0.0 && by_b > 0.0 {
            println!("before the kill: a applied {by_a}, b applied {by_b}");
            break;
        }
        rounds += 1;
        assert!(rounds < 8, "the instances never shared: a {by_a}, b {by_b}");
    }

    // More orders; `a` is killed while they are sent and projected.
    let wave = more(90);
    let sent = AtomicUsize::new(0);
    let sending = send_all(&commands, &wave, 8, &sent);
    let killing = async {
        while sent.load(Ordering::SeqCst) < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        a.kill();
    };
    futures::join!(sending, killing);
    plans.extend(wave);
    let b_before = b.metric(ORDERS_APPLIED.0, ORDERS_APPLIED.1).await.unwrap();

    // `b` takes over `a`'s partitions (once the group sees `a` gone) and catches up.
    ks.drain(&settings, Duration::from_secs(90)).await.unwrap();
    let b_after = b.metric(ORDERS_APPLIED.0, ORDERS_APPLIED.1).await.unwrap();
    println!("b applied {b_before} before the drain, {b_after} after");

    let expected: BTreeMap<Uuid, Expected> = plans
        .iter()
        .map(|p| (p.order, expect(&p.events, None)))
        .collect();
    let snapshot = Snapshot::read(&ks, 1, 1).await.unwrap();
    assert_no_differences(
        "read models after the handover",
        &snapshot.differences(&expected, None),
    );

    b.stop().await.unwrap();
    commands.stop().await.unwrap();
    ks.drop_keyspace().await.unwrap();
}
