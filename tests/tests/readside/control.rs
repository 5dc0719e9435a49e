//! Projection control against the real stack, each test with two projector instances: pause
//! (holding through a restart) and resume, reset to a time, skip of one record, dead letters
//! re-driven once their cause is removed, and the bearer checks of the control routes.
//!
//! The real binaries (`Projector::spawn_process`) serve the HTTP routes on a known port; the
//! reset test drives `projector ctl` as a child process against two in-process projectors.

use std::collections::BTreeMap;
use std::time::Duration;

use command_api::publisher::Publisher;
use events::{LineItem, OrderEvent};
use infra::Settings;
use serde_json::{json, Value};
use tests::{
    bin_dir, client_for, end_offsets, envelope, read_topic, settings_env,
    settings_with_fresh_topic, Keyspace, Projector, Reply,
};
use uuid::Uuid;

const TABLES: [&str; 4] = [
    "order_detail_g1",
    "orders_by_customer_g1",
    "sales_by_day_g1",
    "order_events_g1",
];
const DRAIN: Duration = Duration::from_secs(90);
/// How long a running consumer would need, at most, to apply what was just published.
const WOULD_HAVE_APPLIED: Duration = Duration::from_secs(4);

/// The control routes of one projector process, with a token of every scope (`sub` "tests").
struct Ops {
    http: reqwest::Client,
    base: String,
}

impl Ops {
    fn of(settings: &Settings, projector: &Projector) -> Self {
        Self {
            http: client_for(settings),
            base: format!("http://{}", projector.addr.expect("a child process")),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        Reply::from(
            self.http
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
        .unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        Reply::from(
            self.http
                .post(format!("{}{path}", self.base))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
        .unwrap()
    }

    /// POST and require 200.
    async fn ok(&self, path: &str, body: Value) -> Value {
        let reply = self.post(path, body).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        reply.body
    }
}

fn line(sku: &str, quantity: u32, unit_price_cents: i64) -> LineItem {
    LineItem {
        sku: sku.into(),
        quantity,
        unit_price_cents,
    }
}

fn placed(order: Uuid) -> OrderEvent {
    OrderEvent::OrderPlaced {
        order_id: order,
        customer_id: Uuid::now_v7(),
        currency: "EUR".into(),
        items: vec![line("FIRST", 1, 100)],
    }
}

/// Publish `events` of `order` as its sequences `first..`, on `partition`.
async fn publish(
    publisher: &Publisher,
    settings: &Settings,
    partition: i32,
    order: Uuid,
    first: u64,
    events: Vec<OrderEvent>,
) {
    let batch: Vec<_> = events
        .into_iter()
        .zip(first..)
        .map(|(event, sequence)| envelope(&settings.tenant, order, sequence, event))
        .collect();
    publisher.publish(partition, &batch).await.unwrap();
}

async fn snapshot(ks: &Keyspace) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for table in TABLES {
        all.push(ks.table_rows(table).await.unwrap());
    }
    all
}

/// `order_detail` of one order: (version, skus).
async fn detail(ks: &Keyspace, settings: &Settings, order: Uuid) -> Option<(i64, Vec<String>)> {
    use read_models::orders::order_detail::{ITEMS, ORDER_ID, TABLE, TENANT_ID, VERSION};
    let row = ks
        .session
        .query_unpaged(
            format!(
                "SELECT {VERSION}, {ITEMS} FROM {} WHERE {TENANT_ID} = ? AND {ORDER_ID} = ?",
                TABLE.name(1)
            ),
            (settings.tenant.as_str(), order),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .maybe_first_row::<(Option<i64>, Option<String>)>()
        .unwrap()?;
    let items: Vec<LineItem> = serde_json::from_str(row.1.as_deref().unwrap_or("[]")).unwrap();
    Some((
        row.0.unwrap_or(0),
        items.into_iter().map(|i| i.sku).collect(),
    ))
}

async fn history_len(ks: &Keyspace, settings: &Settings, order: Uuid) -> usize {
    use read_models::order_history::order_events::{AGGREGATE_ID, SEQUENCE, TABLE, TENANT_ID};
    ks.session
        .query_unpaged(
            format!(
                "SELECT {SEQUENCE} FROM {} WHERE {TENANT_ID} = ? AND {AGGREGATE_ID} = ?",
                TABLE.name(1)
            ),
            (settings.tenant.as_str(), order),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows_num()
}

fn instances(body: &Value, key: &str) -> usize {
    body[key].as_array().map(Vec::len).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pause_holds_through_a_projector_restart_and_resume_catches_up() {
    let mut settings = settings_with_fresh_topic("rs-pause").await.unwrap();
    let ks = Keyspace::fresh(&mut settings).await.unwrap();
    let mut first = Projector::spawn_process(&settings, &[]).await.unwrap();
    let second = Projector::spawn_process(&settings, &[]).await.unwrap();
    let ops = Ops::of(&settings, &second);
    let publisher = Publisher::new(&settings.kafka).await.unwrap();

    let before = Uuid::now_v7();
    publish(&publisher, &settings, 0, before, 1, vec![placed(before)]).await;
    ks.drain(&settings, DRAIN).await.unwrap();

    let paused = ops
        .ok(
            "/v1/projections/orders/pause",
            json!({"reason": "investigating a bad deploy"}),
        )
        .await;
    assert_eq!(paused["state"]["paused"], json!(true));
    assert_eq!(paused["state"]["changed_by"], json!("tests"));
    assert_eq!(instances(&paused, "acknowledged"), 2, "{paused}");
    assert_eq!(instances(&paused, "pending"), 0, "{paused}");
    assert_eq!(
        second
            .metric("projector_paused", "projection=\"orders\"")
            .await
            .unwrap(),
        1.0
    );
    let offsets = ks
        .offsets("orders", 1, &settings.kafka.topic)
        .await
        .unwrap();
    let views = snapshot(&ks).await;

    // Published while paused: the lag grows, nothing is applied.
    let during = Uuid::now_v7();
    publish(
        &publisher,
        &settings,
        1,
        during,
        1,
        vec![placed(during), OrderEvent::ItemAdded(line("SECOND", 2, 50))],
    )
    .await;
    tokio::time::sleep(WOULD_HAVE_APPLIED).await;
    assert_eq!(
        ks.offsets("orders", 1, &settings.kafka.topic)
            .await
            .unwrap(),
        offsets
    );
    assert_eq!(detail(&ks, &settings, during).await, None);
    let ends = end_offsets(&settings, &settings.kafka.topic).await.unwrap();
    assert!(
        ends[&1] > offsets.get(&1).copied().unwrap_or(0),
        "lag on partition 1: {ends:?} vs {offsets:?}"
    );
    // The other projection is not paused.
    assert_eq!(history_len(&ks, &settings, during).await, 2);

    // A restart (kill -9 of one instance, a new one started) does not lift the pause.
    first.kill();
    let third = Projector::spawn_process(&settings, &[]).await.unwrap();
    tokio::time::sleep(WOULD_HAVE_APPLIED).await;
    assert_eq!(
        ks.offsets("orders", 1, &settings.kafka.topic)
            .await
            .unwrap(),
        offsets
    );
    let mut after_restart = snapshot(&ks).await;
    after_restart[3] = views[3].clone(); // order_events belongs to order_history, not paused
    assert_eq!(after_restart, views);
    let status = Ops::of(&settings, &third)
        .get("/v1/projections/orders/control")
        .await;
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(status.body["state"]["paused"], json!(true));
    assert!(
        status.body["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["consuming"] == json!(false)),
        "{}",
        status.body
    );

    // Resume: every instance consumes again and the projection catches up.
    let resumed = Ops::of(&settings, &third)
        .ok(
            "/v1/projections/orders/resume",
            json!({"reason": "deploy rolled back"}),
        )
        .await;
    assert_eq!(resumed["state"]["paused"], json!(false));
    ks.drain(&settings, DRAIN).await.unwrap();
    assert_eq!(
        detail(&ks, &settings, during).await,
        Some((2, vec!["FIRST".into(), "SECOND".into()]))
    );

    // Both changes are in the audit log, newest first, with who and why.
    let status = ops.get("/v1/projections/orders/control").await;
    let audit = status.body["audit"].as_array().unwrap();
    let actions: Vec<_> = audit
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["resume", "pause"], "{}", status.body);
    assert_eq!(audit[1]["actor"], json!("tests"));
    assert_eq!(audit[1]["reason"], json!("investigating a bad deploy"));

    drop(second);
    drop(third);
    ks.drop_keyspace().await.unwrap();
}

/// `projector ctl <args>` with the test's settings; its JSON output.
fn ctl(settings: &Settings, args: &[&str]) -> Value {
    let output = std::process::Command::new(bin_dir().join("projector"))
        .envs(settings_env(settings).unwrap())
        .env("APP_TELEMETRY__FORMAT", "json")
        .arg("ctl")
        .arg("--actor")
        .arg("ops-on-call")
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "projector ctl {args:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Logs go to standard output too (JSON lines here); the result is the last document.
    serde_json::Deserializer::from_slice(&output.stdout)
        .into_iter::<Value>()
        .filter_map(Result::ok)
        .last()
        .unwrap()
}

fn offsets_of(value: &Value) -> BTreeMap<i32, i64> {
    value
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, o)| (p.parse().unwrap(), o.as_i64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reset_to_a_time_reapplies_from_there_and_leaves_the_views_unchanged() {
    let mut settings = settings_with_fresh_topic("rs-reset").await.unwrap();
    let ks = Keyspace::fresh(&mut settings).await.unwrap();
    let first = Projector::spawn(&settings);
    let second = Projector::spawn(&settings);
    let publisher = Publisher::new(&settings.kafka).await.unwrap();

    // Some orders, then a point in time, then more events (on old and new orders).
    let orders: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
    for (i, order) in orders.iter().enumerate() {
        let partition = (i % 3) as i32;
        publish(
            &publisher,
            &settings,
            partition,
            *order,
            1,
            vec![placed(*order)],
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let point = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, order) in orders.iter().enumerate() {
        let partition = (i % 3) as i32;
        publish(
            &publisher,
            &settings,
            partition,
            *order,
            2,
            vec![
                OrderEvent::ItemAdded(line("LATER", 1, 10)),
                OrderEvent::PaymentRecorded {
                    amount_cents: 110,
                    payment_ref: format!("pay-{i}"),
                },
            ],
        )
        .await;
    }
    ks.drain(&settings, DRAIN).await.unwrap();
    let full = ks
        .offsets("orders", 1, &settings.kafka.topic)
        .await
        .unwrap();
    let views = snapshot(&ks).await;
    assert_eq!(views[2].len(), 6, "six paid orders: {:?}", views[2]);

    // A reset is refused while the projection runs.
    let refused = std::process::Command::new(bin_dir().join("projector"))
        .envs(settings_env(&settings).unwrap())
        .args(["ctl", "reset", "orders", "--reason", "r", "--to-time"])
        .arg(point.to_rfc3339())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not paused"));

    let paused = ctl(
        &settings,
        &["pause", "orders", "--reason", "replay the afternoon"],
    );
    assert_eq!(instances(&paused, "acknowledged"), 2, "{paused}");
    let reset = ctl(
        &settings,
        &[
            "reset",
            "orders",
            "--reason",
            "replay the afternoon",
            "--to-time",
            &point.to_rfc3339(),
        ],
    );
    let back = offsets_of(&reset["offsets"]);
    assert_eq!(offsets_of(&reset["previous"]), full);
    // Every partition went back by the two events published after the point, per order on it.
    for (partition, next) in &full {
        assert_eq!(back[partition], next - 4, "partition {partition}: {reset}");
    }
    assert_eq!(
        ks.offsets("orders", 1, &settings.kafka.topic)
            .await
            .unwrap(),
        back
    );

    ctl(
        &settings,
        &["resume", "orders", "--reason", "replay the afternoon"],
    );
    ks.drain(&settings, DRAIN).await.unwrap();
    assert_eq!(
        ks.offsets("orders", 1, &settings.kafka.topic)
            .await
            .unwrap(),
        full
    );
    assert_eq!(snapshot(&ks).await, views);

    let status = ctl(&settings, &["status", "orders"]);
    let audit = status["audit"].as_array().unwrap();
    assert_eq!(audit[1]["action"], json!("reset"));
    assert_eq!(audit[1]["actor"], json!("ops-on-call"));
    assert_eq!(offsets_of(&audit[1]["detail"]["offsets"]), back);

    first.stop().await.unwrap();
    second.stop().await.unwrap();
    ks.drop_keyspace().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_skip_moves_past_exactly_one_record() {
    let mut settings = settings_with_fresh_topic("rs-skip").await.unwrap();
    let ks = Keyspace::fresh(&mut settings).await.unwrap();
    let first = Projector::spawn_process(&settings, &[]).await.unwrap();
    let second = Projector::spawn_process(&settings, &[]).await.unwrap();
    let ops = Ops::of(&settings, &first);
    let publisher = Publisher::new(&settings.kafka).await.unwrap();

    let order = Uuid::now_v7();
    let partition = 2;
    publish(
        &publisher,
        &settings,
        partition,
        order,
        1,
        vec![placed(order)],
    )
    .await;
    ks.drain(&settings, DRAIN).await.unwrap();
    ops.ok(
        "/v1/projections/orders/pause",
        json!({"reason": "poison ahead"}),
    )
    .await;
    publish(
        &publisher,
        &settings,
        partition,
        order,
        2,
        vec![
            OrderEvent::ItemAdded(line("POISON", 1, 1)),
            OrderEvent::ItemAdded(line("KEPT", 1, 2)),
        ],
    )
    .await;
    let records = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    let offset_of = |sequence: u64| {
        records
            .iter()
            .find(|r| r.envelope().unwrap().sequence == sequence)
            .map(|r| r.offset)
            .unwrap()
    };

    // An offset already applied is behind the projection: refused.
    let behind = ops
        .post(
            "/v1/projections/orders/skip",
            json!({"reason": "r", "partition": partition, "offset": offset_of(1)}),
        )
        .await;
    assert_eq!(behind.status, 409, "{}", behind.body);
    assert_eq!(
        behind.header("content-type"),
        Some("application/problem+json")
    );
    let skipped = ops
        .ok(
            "/v1/projections/orders/skip",
            json!({"reason": "the POISON line is bogus", "partition": partition, "offset": offset_of(2)}),
        )
        .await;
    assert_eq!(skipped["offset"], json!(offset_of(2)));

    ops.ok(
        "/v1/projections/orders/resume",
        json!({"reason": "skip recorded"}),
    )
    .await;
    ks.drain(&settings, DRAIN).await.unwrap();
    // The skipped event's effect is absent, the next one applied.
    assert_eq!(
        detail(&ks, &settings, order).await,
        Some((3, vec!["FIRST".into(), "KEPT".into()]))
    );
    // Only `orders` skips it.
    assert_eq!(history_len(&ks, &settings, order).await, 3);
    let status = ops.get("/v1/projections/orders/control").await;
    assert_eq!(status.body["skips"][0]["offset"], json!(offset_of(2)));
    let skipped_total = first
        .metric("projector_skipped_total", "projection=\"orders\"")
        .await
        .unwrap()
        + second
            .metric("projector_skipped_total", "projection=\"orders\"")
            .await
            .unwrap();
    assert_eq!(skipped_total, 1.0);

    drop(first);
    drop(second);
    ks.drop_keyspace().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_redriven_after_its_cause_is_removed_is_applied_once() {
    let mut settings = settings_with_fresh_topic("rs-redrive").await.unwrap();
    let ks = Keyspace::fresh(&mut settings).await.unwrap();
    let first = Projector::spawn_process(&settings, &[]).await.unwrap();
    let second = Projector::spawn_process(&settings, &[]).await.unwrap();
    let ops = Ops::of(&settings, &second);
    let publisher = Publisher::new(&settings.kafka).await.unwrap();

    let order = Uuid::now_v7();
    let partition = 1;
    publish(
        &publisher,
        &settings,
        partition,
        order,
        1,
        vec![placed(order)],
    )
    .await;
    ks.drain(&settings, DRAIN).await.unwrap();

    // The cause: a stored row this build cannot read (an unknown status). Pausing and resuming
    // starts fresh consumers, whose writers have to read the row to fold the next event.
    ops.ok(
        "/v1/projections/orders/pause",
        json!({"reason": "corrupt a row"}),
    )
    .await;
    // A timestamp above the row's (its version): this write wins over the projector's.
    ks.session
        .query_unpaged(
            "UPDATE order_detail_g1 USING TIMESTAMP 1000 SET status = 'bogus' \
             WHERE tenant_id = ? AND order_id = ?",
            (settings.tenant.as_str(), order),
        )
        .await
        .unwrap();
    publish(
        &publisher,
        &settings,
        partition,
        order,
        2,
        vec![OrderEvent::ItemAdded(line("ADDED", 1, 5))],
    )
    .await;
    ops.ok("/v1/projections/orders/resume", json!({"reason": "go"}))
        .await;
    ks.drain(&settings, DRAIN).await.unwrap();

    let listed = ops.get("/v1/projections/orders/dead-letters").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body["total"], json!(1), "{}", listed.body);
    let letter = &listed.body["dead_letters"][0];
    assert_eq!(letter["event_type"], json!("ItemAdded"));
    assert_eq!(letter["sequence"], json!(2));
    assert_eq!(letter["origin_partition"], json!(partition));
    assert_eq!(letter["aggregate_id"], json!(order.to_string()));
    assert_eq!(letter["redriven"], json!(false));
    assert!(
        letter["error"].as_str().unwrap().contains("unknown status"),
        "{letter}"
    );
    assert_eq!(
        ops.get("/v1/projections/order_history/dead-letters")
            .await
            .body["total"],
        json!(0)
    );

    // The cause is still there: it fails again, and is reported with its error.
    let again = ops
        .ok(
            "/v1/projections/orders/dead-letters/redrive",
            json!({"reason": "first try"}),
        )
        .await;
    assert_eq!(
        (&again["applied"], &again["failed"]),
        (&json!(0), &json!(1)),
        "{again}"
    );
    assert!(again["failures"][0]["error"]
        .as_str()
        .unwrap()
        .contains("unknown status"));

    // The cause removed: applied once.
    ks.session
        .query_unpaged(
            "UPDATE order_detail_g1 USING TIMESTAMP 1001 SET status = 'open' \
             WHERE tenant_id = ? AND order_id = ?",
            (settings.tenant.as_str(), order),
        )
        .await
        .unwrap();
    let redriven = ops
        .ok(
            "/v1/projections/orders/dead-letters/redrive",
            json!({"reason": "row repaired"}),
        )
        .await;
    assert_eq!(
        (&redriven["applied"], &redriven["failed"]),
        (&json!(1), &json!(0)),
        "{redriven}"
    );
    assert_eq!(
        detail(&ks, &settings, order).await,
        Some((2, vec!["FIRST".into(), "ADDED".into()]))
    );
    let second_time = ops
        .ok(
            "/v1/projections/orders/dead-letters/redrive",
            json!({"reason": "again"}),
        )
        .await;
    assert_eq!(
        (
            &second_time["applied"],
            &second_time["failed"],
            &second_time["already_redriven"]
        ),
        (&json!(0), &json!(0), &json!(1)),
        "{second_time}"
    );
    let listed = ops.get("/v1/projections/orders/dead-letters").await;
    assert_eq!(listed.body["dead_letters"][0]["redriven"], json!(true));

    drop(first);
    drop(second);
    ks.drop_keyspace().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_control_routes_need_a_token_with_the_ops_scope_and_answer_problems() {
    let mut settings = settings_with_fresh_topic("rs-ctl-auth").await.unwrap();
    let ks = Keyspace::fresh(&mut settings).await.unwrap();
    let first = Projector::spawn_process(&settings, &[]).await.unwrap();
    let second = Projector::spawn_process(&settings, &[]).await.unwrap();
    let base = format!("http://{}", first.addr.unwrap());
    let url = |path: &str| format!("{base}{path}");
    let plain = tests::client();
    let send = |request: reqwest::RequestBuilder| async move {
        Reply::from(request.send().await.unwrap()).await.unwrap()
    };

    // No token: 401 with the RFC 6750 challenge.
    let anonymous = send(plain.get(url("/v1/projections/orders/control"))).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert!(anonymous
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer"));
    let anonymous = send(
        plain
            .post(url("/v1/projections/orders/pause"))
            .json(&json!({"reason": "r"})),
    )
    .await;
    assert_eq!(anonymous.status, 401);
    // A token without `ops`: 403.
    let reader = tests::token(&settings, &settings.tenant, &["orders:read"]).unwrap();
    let forbidden = send(
        plain
            .post(url("/v1/projections/orders/pause"))
            .bearer_auth(&reader)
            .json(&json!({"reason": "r"})),
    )
    .await;
    assert_eq!(forbidden.status, 403, "{}", forbidden.body);
    assert_eq!(
        forbidden.body["type"],
        json!("/problems/insufficient_scope")
    );
    // Nothing was paused by the refused requests.
    let ops_token = tests::token(&settings, "any-tenant", &["ops"]).unwrap();
    let status = send(
        plain
            .get(url("/v1/projections/orders/control"))
            .bearer_auth(&ops_token),
    )
    .await;
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(status.body["state"]["paused"], json!(false));
    // The operational routes stay open.
    assert_eq!(send(plain.get(url("/healthz"))).await.status, 200);

    // Problems: unknown projection, missing reason, broken JSON, a state conflict.
    let ops = Ops::of(&settings, &first);
    let unknown = ops
        .post("/v1/projections/nope/pause", json!({"reason": "r"}))
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.header("content-type"),
        Some("application/problem+json")
    );
    let no_reason = ops.post("/v1/projections/orders/pause", json!({})).await;
    assert_eq!(no_reason.status, 422, "{}", no_reason.body);
    assert_eq!(no_reason.body["errors"][0]["field"], json!("reason"));
    let blank = ops
        .post("/v1/projections/orders/pause", json!({"reason": "  "}))
        .await;
    assert_eq!(blank.status, 422);
    let broken = send(
        ops.http
            .post(url("/v1/projections/orders/skip"))
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(broken.status, 400);
    let not_paused = ops
        .post("/v1/projections/orders/resume", json!({"reason": "r"}))
        .await;
    assert_eq!(not_paused.status, 409, "{}", not_paused.body);
    let reset_running = ops
        .post(
            "/v1/projections/orders/reset",
            json!({"reason": "r", "offsets": {"0": 0}}),
        )
        .await;
    assert_eq!(reset_running.status, 409, "{}", reset_running.body);
    let bad_partition = ops
        .post(
            "/v1/projections/orders/reset",
            json!({"reason": "r", "offsets": {"7": 0}}),
        )
        .await;
    assert_eq!(bad_partition.status, 422, "{}", bad_partition.body);

    drop(first);
    drop(second);
    ks.drop_keyspace().await.unwrap();
}
