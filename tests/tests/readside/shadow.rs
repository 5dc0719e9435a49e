//! `projector shadow`: a shadow generation built beside the live one and compared with it, row by
//! row, against the real Kafka and CQL, with the real projector binary serving meanwhile.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use futures::StreamExt;
use projector::shadow::{ShadowOptions, ShadowReport, SHADOWING};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use scylla::value::CqlTimestamp;
use serde_json::{json, Value};
use tests::{
    bin_dir, read_topic, settings_env, settings_with_fresh_topic, CommandApi, Keyspace, Projector,
    QueryApi,
};
use uuid::Uuid;

use crate::model::Plan;

fn options(out: &std::path::Path) -> ShadowOptions {
    ShadowOptions {
        out: Some(out.to_path_buf()),
        grace: Duration::from_secs(2),
        ..ShadowOptions::new("orders")
    }
}

fn table<'a>(report: &'a ShadowReport, name: &str) -> &'a projector::shadow::diff::TableDiff {
    report
        .tables
        .iter()
        .find(|t| t.table == name)
        .unwrap_or_else(|| panic!("no table {name} in {report:#?}"))
}

fn counts(report: &ShadowReport, name: &str) -> (u64, u64, u64) {
    let t = table(report, name);
    (t.only_in_live, t.only_in_shadow, t.differing)
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn tables_of(ks: &Keyspace, generation: i32) -> Vec<String> {
    let rows = ks
        .session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            (ks.name.as_str(),),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let suffix = format!("_g{generation}");
    rows.rows::<(String,)>()
        .unwrap()
        .map(|r| r.unwrap().0)
        .filter(|t| t.ends_with(&suffix))
        .collect()
}

/// Members of a consumer group (none when nobody is in it, or it never existed).
async fn group_members(settings: &infra::Settings, group: String) -> usize {
    let config = infra::kafka::base_config(&settings.kafka);
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create().unwrap();
        let list = client
            .fetch_group_list(Some(&group), Duration::from_secs(10))
            .unwrap();
        list.groups().iter().map(|g| g.members().len()).sum()
    })
    .await
    .unwrap()
}

/// Every read the projection serves, for these orders and customers: equal before and after a
/// promotion when the shadow is equal to the live generation.
async fn reads(queries: &QueryApi, orders: &[Uuid], customers: &[Uuid]) -> BTreeMap<String, Value> {
    let today = Utc::now().date_naive();
    let day = |d: NaiveDate| d.format("%Y-%m-%d").to_string();
    let mut paths: Vec<String> = orders.iter().map(|o| format!("/v1/orders/{o}")).collect();
    paths.extend(
        customers
            .iter()
            .map(|c| format!("/v1/customers/{c}/orders?limit=100")),
    );
    paths.push(format!(
        "/v1/stats/sales?from={}&to={}",
        day(today.pred_opt().unwrap()),
        day(today.succ_opt().unwrap())
    ));
    let mut answers = BTreeMap::new();
    for path in paths {
        let reply = queries.get(&path).await.unwrap();
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        answers.insert(path, reply.body);
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shadow_of_orders_agrees_with_live_then_reports_exactly_the_corrupted_rows_and_promotes()
{
    let mut settings = settings_with_fresh_topic("rs-shadow").await.unwrap();
    let ks = Keyspace::fresh(&mut settings).await.unwrap();
    let tenant = settings.tenant.clone();
    let topic = settings.kafka.topic.clone();
    let commands = Arc::new(CommandApi::spawn(settings.clone()).await.unwrap());
    // The real binary serves the projections throughout (and must leave the shadow alone).
    let projector = Projector::spawn_process(&settings, &[]).await.unwrap();
    let queries = QueryApi::spawn(&settings).await.unwrap();
    queries
        .wait_read_models(Duration::from_secs(30))
        .await
        .unwrap();

    // Some history: orders of 4–6 events each, and one record no projection can decode.
    let customers: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
    let mut plans: Vec<Plan> = (0..30)
        .map(|i| Plan::mixed(i, customers[i % customers.len()]))
        .collect();
    futures::stream::iter(&plans)
        .for_each_concurrent(8, |plan| {
            let commands = commands.clone();
            async move { plan.send(&commands).await.unwrap() }
        })
        .await;
    let producer = infra::kafka::producer(&settings.kafka).unwrap();
    let poison = producer
        .send(
            FutureRecord::to(&topic)
                .partition(1)
                .key("poison")
                .payload("this is not an envelope"),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(err, _)| err)
        .unwrap();
    ks.drain(&settings, Duration::from_secs(60)).await.unwrap();
    // Dead-lettered once by each running projection (`orders`, `order_history`).
    let dlq = &settings.kafka.dead_letter_topic;
    assert_eq!(read_topic(&settings, dlq).await.unwrap().len(), 2);

    // 1. No code change, commands still arriving: no difference in any table.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (commands, customers, stop) = (commands.clone(), customers.clone(), stop.clone());
        async move {
            let mut sent = Vec::new();
            let mut i = 100;
            while !stop.load(Ordering::SeqCst) {
                let wave: Vec<Plan> = (i..i + 2)
                    .map(|i| Plan::mixed(i, customers[i % customers.len()]))
                    .collect();
                i += 2;
                for plan in &wave {
                    plan.send(&commands).await.unwrap();
                }
                sent.extend(wave);
            }
            sent
        }
    });
    let dir = std::env::temp_dir();
    let first_out = dir.join(format!("shadow-{}-1.jsonl", ks.name));
    let first = projector::shadow::shadow(
        settings.clone(),
        options(&first_out),
        std::future::pending(),
    )
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    plans.extend(writer.await.unwrap());
    println!("first shadow: {first:#?}");
    assert_eq!((first.live_generation, first.shadow_generation), (1, 2));
    assert_eq!(first.differences, 0, "{first:#?}");
    assert_eq!(
        first
            .tables
            .iter()
            .map(|t| t.table.as_str())
            .collect::<Vec<_>>(),
        ["order_detail", "orders_by_customer", "sales_by_day"]
    );
    for t in &first.tables {
        assert_eq!(
            (t.only_in_live, t.only_in_shadow, t.differing),
            (0, 0, 0),
            "{t:?}"
        );
    }
    assert!(table(&first, "order_detail").identical >= 30, "{first:#?}");
    assert!(table(&first, "sales_by_day").identical > 0, "{first:#?}");
    // The poison record is listed, not dead-lettered a second time.
    assert_eq!(first.dead_letter_count, 1);
    assert_eq!(
        (
            first.dead_letters[0].partition,
            first.dead_letters[0].offset
        ),
        (poison.partition, poison.offset)
    );
    assert_eq!(read_topic(&settings, dlq).await.unwrap().len(), 2);
    assert!(lines(&first_out).is_empty());
    // Dropped: the registry as before, no tables or offsets of generation 2 left.
    assert_eq!(ks.generations("orders").await.unwrap(), Some((1, None)));
    assert!(tables_of(&ks, 2).await.is_empty());
    assert!(ks.offsets("orders", 2, &topic).await.unwrap().is_empty());
    ks.drain(&settings, Duration::from_secs(60)).await.unwrap();

    // 2. Corrupt three rows of the live tables, then shadow with the real binary.
    let tampered = plans[3].order;
    ks.session
        .query_unpaged(
            "UPDATE order_detail_g1 SET status = 'tampered' WHERE tenant_id = ? AND order_id = ?",
            (&tenant, tampered),
        )
        .await
        .unwrap();
    let removed = plans[4].order;
    let removed_customer = customers[4 % customers.len()];
    let (placed_at, status, total, version) = ks
        .session
        .query_unpaged(
            "SELECT placed_at, status, total_cents, version FROM orders_by_customer_g1 \
             WHERE tenant_id = ? AND customer_id = ? AND order_id = ? ALLOW FILTERING",
            (&tenant, removed_customer, removed),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .first_row::<(CqlTimestamp, String, i64, i64)>()
        .unwrap();
    ks.session
        .query_unpaged(
            "DELETE FROM orders_by_customer_g1 WHERE tenant_id = ? AND customer_id = ? \
             AND placed_at = ? AND order_id = ?",
            (&tenant, removed_customer, placed_at, removed),
        )
        .await
        .unwrap();
    let intruder = Uuid::now_v7();
    let intruder_day = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    ks.session
        .query_unpaged(
            "INSERT INTO sales_by_day_g1 (tenant_id, day, order_id, revenue_cents, version) \
             VALUES (?, ?, ?, 12345, 1)",
            (&tenant, intruder_day, intruder),
        )
        .await
        .unwrap();

    let second_out = dir.join(format!("shadow-{}-2.jsonl", ks.name));
    let output = {
        let mut cmd = Command::new(bin_dir().join("projector"));
        cmd.args(["shadow", "orders", "--no-progress", "--out"])
            .arg(&second_out)
            .envs(settings_env(&settings).unwrap())
            .env("APP_TELEMETRY__FORMAT", "json");
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    // Log lines go to standard output too (one JSON object per line); the report is the
    // pretty-printed object at the end.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report_at = stdout.rfind("\n{\n").map_or(0, |at| at + 1);
    let second: ShadowReport =
        serde_json::from_str(&stdout[report_at..]).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    println!("second shadow: {second:#?}\n{stderr}");
    assert_eq!(second.differences, 3, "{second:#?}");
    assert_eq!(counts(&second, "order_detail"), (0, 0, 1));
    assert_eq!(counts(&second, "orders_by_customer"), (0, 1, 0));
    assert_eq!(counts(&second, "sales_by_day"), (1, 0, 0));
    let mut found = lines(&second_out);
    found.sort_by_key(|l| l["table"].as_str().unwrap_or_default().to_string());
    assert_eq!(found.len(), 3, "{found:#?}");
    let (detail, by_customer, sales) = (&found[0], &found[1], &found[2]);
    assert_eq!(
        (&detail["table"], &detail["kind"], &detail["key"]),
        (
            &json!("order_detail"),
            &json!("differing"),
            &json!({"tenant_id": tenant, "order_id": tampered})
        )
    );
    assert_eq!(detail["columns"], json!(["status"]));
    assert_eq!(detail["live"]["status"], json!("tampered"));
    let true_status = detail["shadow"]["status"].clone();
    assert_ne!(true_status, json!("tampered"));
    assert_eq!(
        (
            &by_customer["table"],
            &by_customer["kind"],
            &by_customer["live"]
        ),
        (
            &json!("orders_by_customer"),
            &json!("only_in_shadow"),
            &Value::Null
        )
    );
    assert_eq!(by_customer["key"]["order_id"], json!(removed));
    assert_eq!(by_customer["key"]["customer_id"], json!(removed_customer));
    assert_eq!(by_customer["shadow"]["version"], json!(version));
    assert_eq!(
        (&sales["table"], &sales["kind"], &sales["shadow"]),
        (&json!("sales_by_day"), &json!("only_in_live"), &Value::Null)
    );
    assert_eq!(
        sales["key"],
        json!({"tenant_id": tenant, "day": "2026-01-01", "order_id": intruder})
    );
    assert_eq!(sales["live"]["revenue_cents"], json!(12345));
    assert_eq!(ks.generations("orders").await.unwrap(), Some((1, None)));
    assert!(tables_of(&ks, 2).await.is_empty());

    // An interrupted shadow (Ctrl-C) releases its claim.
    let interrupted = projector::shadow::shadow(
        settings.clone(),
        options(&first_out),
        tokio::time::sleep(Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    assert!(
        interrupted.is::<projector::shadow::Interrupted>(),
        "{interrupted:#}"
    );
    assert_eq!(ks.generations("orders").await.unwrap(), Some((1, None)));

    // 3. While a shadow holds generation 2, the running projector does not consume it (and a
    // rebuild or a second shadow is refused).
    let registry = projector::registry::Registry::new(ks.session.clone(), &ks.name);
    let orders = projector::projections::by_name("orders").unwrap();
    assert!(registry
        .claim_as("orders", 1, 2, None, SHADOWING)
        .await
        .unwrap());
    registry.create_tables(orders.as_ref(), 2).await.unwrap();
    let during: Vec<Plan> = (200..203)
        .map(|i| Plan::mixed(i, customers[i % customers.len()]))
        .collect();
    for plan in &during {
        plan.send(&commands).await.unwrap();
    }
    ks.drain(&settings, Duration::from_secs(60)).await.unwrap();
    // Several registry polls (every second) of the running projector.
    tokio::time::sleep(Duration::from_secs(3)).await;
    plans.extend(during);
    assert!(ks.offsets("orders", 2, &topic).await.unwrap().is_empty());
    assert!(ks.table_rows("order_detail_g2").await.unwrap().is_empty());
    assert_eq!(
        group_members(
            &settings,
            projector::consumer::group_id(&ks.name, "orders", 2)
        )
        .await,
        0
    );
    let refused = projector::rebuild_with(
        settings.clone(),
        projector::RebuildOptions {
            projection: "orders".into(),
            from: None,
            progress: false,
            grace: Duration::from_secs(1),
        },
    )
    .await
    .unwrap_err();
    assert!(format!("{refused:#}").contains("shadowed"), "{refused:#}");
    let refused = projector::shadow::shadow(
        settings.clone(),
        options(&first_out),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{refused:#}").contains("already being shadowed"),
        "{refused:#}"
    );
    let abandoned = projector::shadow::abandon(settings.clone(), "orders")
        .await
        .unwrap();
    assert_eq!(abandoned.dropped_generation, 2);
    assert_eq!(ks.generations("orders").await.unwrap(), Some((1, None)));
    assert!(tables_of(&ks, 2).await.is_empty());

    // 4. Repair the live rows; a promoting shadow finds no difference, switches, and every read
    // answers as before.
    ks.session
        .query_unpaged(
            "UPDATE order_detail_g1 SET status = ? WHERE tenant_id = ? AND order_id = ?",
            (true_status.as_str().unwrap(), &tenant, tampered),
        )
        .await
        .unwrap();
    ks.session
        .query_unpaged(
            "INSERT INTO orders_by_customer_g1 (tenant_id, customer_id, placed_at, order_id, \
             status, total_cents, version) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                &tenant,
                removed_customer,
                placed_at,
                removed,
                &status,
                total,
                version,
            ),
        )
        .await
        .unwrap();
    ks.session
        .query_unpaged(
            "DELETE FROM sales_by_day_g1 WHERE tenant_id = ? AND day = ? AND order_id = ?",
            (&tenant, intruder_day, intruder),
        )
        .await
        .unwrap();
    // Past query-api's cache TTL.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let order_ids: Vec<Uuid> = plans.iter().map(|p| p.order).collect();
    let before = reads(&queries, &order_ids, &customers).await;
    let third_out = dir.join(format!("shadow-{}-3.jsonl", ks.name));
    let third = projector::shadow::shadow(
        settings.clone(),
        ShadowOptions {
            promote: true,
            ..options(&third_out)
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    println!("promoting shadow: {third:#?}");
    assert_eq!(third.differences, 0, "{third:#?}");
    assert!(third.promoted);
    assert_eq!((third.shadow_generation, third.active_generation), (2, 2));
    assert_eq!(ks.generations("orders").await.unwrap(), Some((2, None)));
    assert!(tables_of(&ks, 1)
        .await
        .iter()
        .all(|t| !t.starts_with("order_detail") && !t.starts_with("orders_by_customer")));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = reads(&queries, &order_ids, &customers).await;
    for (path, answer) in &before {
        assert_eq!(Some(answer), after.get(path), "{path}");
    }

    // The running projector carries the promoted generation on.
    let later = Plan::mixed(300, customers[0]);
    later.send(&commands).await.unwrap();
    ks.drain(&settings, Duration::from_secs(60)).await.unwrap();
    let view = queries
        .get(&format!(
            "/v1/orders/{}?min_version={}",
            later.order,
            later.events.len()
        ))
        .await
        .unwrap();
    assert_eq!(view.status, 200, "{}", view.body);

    for path in [first_out, second_out, third_out] {
        let _ = std::fs::remove_file(path);
    }
    drop(queries);
    projector.stop().await.unwrap();
    drop(commands);
    ks.drop_keyspace().await.unwrap();
}
