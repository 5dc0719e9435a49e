//! `GET /v1/projections` during a rebuild: the generation being built shows up with its progress
//! between 0 and 1, a rate and the time left, then the switch; and a `projection_control` row
//! shows as `paused`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use command_api::publisher::Publisher;
use futures::StreamExt;
use serde_json::{json, Value};
use tests::{end_offsets, settings_with_fresh_topic, Keyspace, Projector, QueryApi};
use uuid::Uuid;

use crate::model::Plan;

/// The entry of projection `name` in a `/v1/projections` body.
fn entry(body: &Value, name: &str) -> Value {
    body["projections"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_shows_its_progress_rate_and_time_left_then_the_switch_and_a_pause_shows() {
    let mut settings = settings_with_fresh_topic("rs-projections").await.unwrap();
    let ks = Keyspace::fresh(&mut settings).await.unwrap();
    let topic = settings.kafka.topic.clone();

    // A backlog of order lifecycles, projected into generation 1.
    let customers: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
    let batches: Vec<_> = (0..1500)
        .map(|i| {
            let plan = Plan::mixed(i, customers[i % customers.len()]);
            let times = plan.times(i);
            (plan.order, plan.envelopes(&settings.tenant, &times))
        })
        .collect();
    let publisher = Arc::new(Publisher::new(&settings.kafka).await.unwrap());
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
    let projector = Projector::spawn(&settings);
    ks.drain(&settings, Duration::from_secs(120)).await.unwrap();
    projector.stop().await.unwrap();
    let ends = end_offsets(&settings, &topic).await.unwrap();
    let total: i64 = ends.values().sum();
    assert!(total > 5000, "{total} events");

    // An operator's pause of order_history, as `projector ctl pause` records it.
    ks.session
        .query_unpaged(
            "INSERT INTO projection_control (projection, paused, changed_by, reason, changed_at) \
             VALUES (?, true, ?, ?, ?)",
            (
                "order_history",
                "tests",
                "checking the report",
                chrono::Utc::now(),
            ),
        )
        .await
        .unwrap();
    let queries = QueryApi::spawn(&settings).await.unwrap();
    let before = queries.get("/v1/projections").await.unwrap();
    assert_eq!(before.status, 200, "{}", before.body);
    let history = entry(&before.body, "order_history");
    assert_eq!(history["paused"], json!(true), "{}", before.body);
    assert_eq!(history["control"]["by"], json!("tests"));
    assert_eq!(history["control"]["reason"], json!("checking the report"));
    assert!(history["control"]["at"].is_string());
    let orders = entry(&before.body, "orders");
    assert_eq!(
        (&orders["paused"], &orders["control"], &orders["building"]),
        (&json!(false), &Value::Null, &Value::Null),
        "{}",
        before.body
    );

    // The rebuild of orders, alone (no service instance), in small batches so it takes a while.
    let mut slow = settings.clone();
    slow.projector.batch_size = 10;
    let rebuild = tokio::spawn(projector::rebuild_with(
        slow,
        projector::RebuildOptions {
            projection: "orders".into(),
            from: None,
            progress: false,
            grace: Duration::from_secs(1),
        },
    ));

    // Read the report as the rebuild goes.
    let mut readings: Vec<Value> = Vec::new();
    let started = Instant::now();
    while !rebuild.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the rebuild did not finish"
        );
        let r = queries.get("/v1/projections").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let orders = entry(&r.body, "orders");
        if orders["building"].is_object() {
            readings.push(orders);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = rebuild.await.unwrap().unwrap();
    assert_eq!((report.previous_generation, report.generation), (1, 2));

    let progress: Vec<f64> = readings
        .iter()
        .filter_map(|o| o["building"]["progress"].as_f64())
        .collect();
    println!(
        "{} readings of the build over {:?}; progress {:?}",
        readings.len(),
        started.elapsed(),
        progress
    );
    let midway = readings
        .iter()
        .find(|o| {
            o["building"]["progress"]
                .as_f64()
                .is_some_and(|p| p > 0.0 && p < 1.0)
        })
        .unwrap_or_else(|| panic!("no reading with 0 < progress < 1: {readings:?}"));
    let building = &midway["building"];
    assert_eq!(midway["generation"], json!(1), "generation 1 still serves");
    assert_eq!(midway["state"], json!("rebuilding"));
    assert_eq!(building["generation"], json!(2));
    assert_eq!(building["kind"], json!("rebuilding"));
    assert_eq!(building["from"], Value::Null);
    // Rebuilt from the start of the topic, towards its end.
    let partitions = building["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), ends.len());
    for p in partitions {
        let partition = p["partition"].as_i64().unwrap() as i32;
        assert_eq!(p["start_offset"], json!(0), "{p}");
        assert_eq!(p["target"], json!(ends[&partition]), "{p}");
    }
    assert_eq!(building["to_apply"], json!(total));
    let applied = building["applied"].as_i64().unwrap();
    assert!(0 < applied && applied < total, "{building}");
    assert_eq!(building["remaining"], json!(total - applied));
    // Progress only goes forward.
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress went back: {progress:?}"
    );
    // Two readings a second apart give a rate and the time left.
    let timed = readings
        .iter()
        .find(|o| o["building"]["rate"].as_f64().is_some_and(|r| r > 0.0))
        .unwrap_or_else(|| panic!("no reading with a rate: {readings:?}"));
    let eta = timed["building"]["eta_seconds"].as_f64();
    assert!(eta.is_some_and(|s| s >= 0.0), "{timed}");
    assert!(
        readings[0]["building"]["rate"].is_null(),
        "one reading has no rate"
    );

    // The switch: generation 2 serves, nothing is being built.
    let after = queries.get("/v1/projections").await.unwrap();
    let orders = entry(&after.body, "orders");
    assert_eq!(
        (&orders["generation"], &orders["state"], &orders["building"]),
        (&json!(2), &json!("live"), &Value::Null),
        "{}",
        after.body
    );
    assert_eq!(orders["lag"], json!(0), "{}", after.body);

    // A resume shows too.
    ks.session
        .query_unpaged(
            "UPDATE projection_control SET paused = false, reason = ? WHERE projection = ?",
            ("done", "order_history"),
        )
        .await
        .unwrap();
    let resumed = queries.get("/v1/projections").await.unwrap();
    let history = entry(&resumed.body, "order_history");
    assert_eq!(history["paused"], json!(false));
    assert_eq!(history["control"]["reason"], json!("done"));

    queries.stop().await.unwrap();
    ks.drop_keyspace().await.unwrap();
}
