//! A rebuild (blue/green) while commands keep arriving and a reader keeps reading.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tests::{settings_with_fresh_topic, CommandApi, Keyspace, Projector, QueryApi};
use uuid::Uuid;

use crate::model::{
    assert_generations_equal, assert_no_differences, expect, rebuild_beside, Expected, Plan,
    Snapshot,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_while_commands_keep_arriving_ends_equal_to_a_fresh_rebuild_and_no_read_fails() {
    let mut settings = settings_with_fresh_topic("rs-rebuild").await.unwrap();
    let ks = Keyspace::fresh(&mut settings).await.unwrap();
    let commands = Arc::new(CommandApi::spawn(settings.clone()).await.unwrap());
    let projector = Projector::spawn(&settings);
    let queries = Arc::new(QueryApi::spawn(&settings).await.unwrap());

    // Some history, and a known order to read.
    let customers: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
    let mut plans: Vec<Plan> = (0..40)
        .map(|i| Plan::mixed(i, customers[i % customers.len()]))
        .collect();
    futures::stream::iter(&plans)
        .for_each_concurrent(8, |plan| {
            let commands = commands.clone();
            async move { plan.send(&commands).await.unwrap() }
        })
        .await;
    ks.drain(&settings, Duration::from_secs(60)).await.unwrap();
    let known = plans[1].order;
    let known_view = queries.get(&format!("/v1/orders/{known}")).await.unwrap();
    assert_eq!(known_view.status, 200, "{}", known_view.body);

    // A writer that keeps sending new orders, and a reader hammering the known order.
    let stop_writing = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (commands, customers, stop) =
            (commands.clone(), customers.clone(), stop_writing.clone());
        async move {
            let mut sent = Vec::new();
            let mut i = 1000;
            while !stop.load(Ordering::SeqCst) {
                let wave: Vec<Plan> = (i..i + 4)
                    .map(|i| Plan::mixed(i, customers[i % customers.len()]))
                    .collect();
                i += 4;
                futures::future::join_all(wave.iter().map(|p| p.send(&commands)))
                    .await
                    .into_iter()
                    .collect::<anyhow::Result<Vec<()>>>()
                    .unwrap();
                sent.extend(wave);
            }
            sent
        }
    });
    let stop_reading = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn({
        let (queries, stop, reads) = (queries.clone(), stop_reading.clone(), reads.clone());
        let expected = known_view.body.clone();
        async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match queries.get(&format!("/v1/orders/{known}")).await {
                    Ok(r) if (200..300).contains(&r.status) && r.body == expected => {}
                    Ok(r) => failures.push(format!("{}: {}", r.status, r.body)),
                    Err(err) => failures.push(format!("{err:#}")),
                }
                reads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            failures
        }
    });

    // The rebuild: generation 2 filled beside generation 1, switched, generation 1 dropped.
    let before = reads.load(Ordering::SeqCst);
    let report = projector::rebuild_with(
        settings.clone(),
        projector::RebuildOptions {
            projection: "orders".into(),
            from: None,
            progress: false,
            grace: Duration::from_secs(2),
        },
    )
    .await
    .unwrap();
    assert_eq!((report.previous_generation, report.generation), (1, 2));
    let during = reads.load(Ordering::SeqCst) - before;
    // Reads go on for a while after the old tables are gone.
    let after_drop = reads.load(Ordering::SeqCst);
    while reads.load(Ordering::SeqCst) < after_drop + 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_writing.store(true, Ordering::SeqCst);
    plans.extend(writer.await.unwrap());
    stop_reading.store(true, Ordering::SeqCst);
    let failures = reader.await.unwrap();
    println!(
        "rebuild: {report:?}; {during} reads during it, {} in all, {} orders",
        reads.load(Ordering::SeqCst),
        plans.len()
    );
    assert!(during > 20, "only {during} reads during the rebuild");
    assert!(
        failures.is_empty(),
        "{} reads failed, first: {:?}",
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );

    // Generation 2 serves and holds every order as the commands left it…
    ks.drain(&settings, Duration::from_secs(60)).await.unwrap();
    assert_eq!(ks.generations("orders").await.unwrap(), Some((2, None)));
    let projections = queries.get("/v1/projections").await.unwrap();
    let orders = projections.body["projections"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "orders").cloned())
        .unwrap_or_default();
    assert_eq!(
        (&orders["generation"], &orders["state"]),
        (&json!(2), &json!("live")),
        "{}",
        projections.body
    );
    let expected: BTreeMap<Uuid, Expected> = plans
        .iter()
        .map(|p| (p.order, expect(&p.events, None)))
        .collect();
    let snapshot = Snapshot::read(&ks, 2, 1).await.unwrap();
    assert_no_differences(
        "generation 2 after the rebuild",
        &snapshot.differences(&expected, None),
    );

    // …row for row the same as a fresh rebuild from offset 0.
    let rebuilds = rebuild_beside(&ks, &settings, &["orders"]).await;
    for r in &rebuilds {
        assert_generations_equal(&ks, &r.projection, r.previous, r.generation).await;
    }
    for r in rebuilds {
        r.task.abort();
    }

    drop(queries);
    projector.stop().await.unwrap();
    drop(commands);
    ks.drop_keyspace().await.unwrap();
}
