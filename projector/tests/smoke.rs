//! Smoke test against a real local stack (Kafka on 127.0.0.1:9092, CQL on 127.0.0.1:9042), in a
//! keyspace and topics of its own: `cargo test -p projector --test smoke -- --ignored --nocapture`.
//! The end-to-end suite proper lives in the `tests` crate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use events::{headers, EventEnvelope, EventMetadata, LineItem, OrderEvent, ORDER_AGGREGATE};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use scylla::client::session::Session;
use uuid::Uuid;

fn envelope(order: Uuid, sequence: u64, at: DateTime<Utc>, event: &OrderEvent) -> EventEnvelope {
    EventEnvelope {
        event_id: Uuid::now_v7(),
        tenant_id: events::DEFAULT_TENANT.into(),
        aggregate_type: ORDER_AGGREGATE.into(),
        aggregate_id: order,
        sequence,
        event_type: event.event_type().into(),
        schema_version: event.schema_version(),
        occurred_at: at,
        metadata: EventMetadata::default(),
        payload: event.to_payload(),
    }
}

async fn produce(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    let headers = OwnedHeaders::new().insert(Header {
        key: headers::CONTENT_TYPE,
        value: Some("application/json"),
    });
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

async fn high_watermarks(settings: &infra::settings::Kafka, topic: &str) -> BTreeMap<i32, i64> {
    let config = infra::kafka::base_config(settings);
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create().unwrap();
        let metadata = client
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .unwrap();
        metadata.topics()[0]
            .partitions()
            .iter()
            .map(|p| {
                let (_, high) = client
                    .fetch_watermarks(&topic, p.id(), Duration::from_secs(5))
                    .unwrap();
                (p.id(), high)
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Wait until the stored offsets of `projection` g`generation` reach the topic's end.
async fn drain(session: &Session, settings: &infra::Settings, projection: &str, generation: i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ends = high_watermarks(&settings.kafka, &settings.kafka.topic).await;
        let rows = session
            .query_unpaged(
                "SELECT partition, next_offset FROM projection_offsets WHERE projection = ? AND generation = ?",
                (projection, generation),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap();
        let stored: BTreeMap<i32, i64> = rows
            .rows::<(i32, i64)>()
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        if ends
            .iter()
            .all(|(p, end)| *end == 0 || stored.get(p).is_some_and(|n| n >= end))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{projection} g{generation} did not drain: ends {ends:?}, stored {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Detail = (String, i64, i64, Option<DateTime<Utc>>, Option<i64>);

async fn detail(session: &Session, g: i32, order: Uuid) -> Option<Detail> {
    session
        .query_unpaged(
            format!("SELECT status, total_cents, version, paid_at, paid_cents FROM order_detail_g{g} WHERE tenant_id = 'default' AND order_id = ?"),
            (order,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .maybe_first_row::<Detail>()
        .unwrap()
}

async fn sales(session: &Session, g: i32, day: NaiveDate) -> Vec<(Uuid, i64)> {
    session
        .query_unpaged(
            format!("SELECT order_id, revenue_cents FROM sales_by_day_g{g} WHERE tenant_id = 'default' AND day = ?"),
            (day,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(Uuid, i64)>()
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_flow_into_the_read_models_and_a_rebuild_switches_generations() {
    let (id, settings, admin_session, session) = smoke_stack("warn,projector=info").await;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(projector::run(settings.clone(), async {
        let _ = stopped.await;
    }));

    let producer = infra::kafka::producer(&settings.kafka).unwrap();
    let topic = settings.kafka.topic.clone();
    let (a, b, customer) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let day = |d, h| Utc.with_ymd_and_hms(2026, 3, d, h, 0, 0).unwrap();
    let placed = |order| OrderEvent::OrderPlaced {
        order_id: order,
        customer_id: customer,
        currency: "EUR".into(),
        items: vec![LineItem {
            sku: "A".into(),
            quantity: 2,
            unit_price_cents: 500,
        }],
    };
    let pay = |amount_cents| OrderEvent::PaymentRecorded {
        amount_cents,
        payment_ref: "p".into(),
    };
    let mut records = vec![
        (a, envelope(a, 1, day(1, 9), &placed(a)).to_json()),
        (
            a,
            envelope(
                a,
                2,
                day(1, 10),
                &OrderEvent::ItemAdded(LineItem {
                    sku: "B".into(),
                    quantity: 1,
                    unit_price_cents: 250,
                }),
            )
            .to_json(),
        ),
        (a, envelope(a, 3, day(2, 11), &pay(1250)).to_json()),
        // A republished (duplicate) event: changes nothing.
        (a, envelope(a, 1, day(1, 9), &placed(a)).to_json()),
        (b, envelope(b, 1, day(1, 9), &placed(b)).to_json()),
        (b, envelope(b, 2, day(2, 12), &pay(1000)).to_json()),
        (
            b,
            envelope(
                b,
                3,
                day(3, 8),
                &OrderEvent::OrderCancelled { reason: "r".into() },
            )
            .to_json(),
        ),
        (b, b"this is not json".to_vec()),
    ];
    let mut unknown = envelope(
        b,
        4,
        day(3, 9),
        &OrderEvent::OrderCancelled { reason: "r".into() },
    );
    unknown.event_type = "OrderTeleported".into();
    records.push((b, unknown.to_json()));
    for (key, payload) in &records {
        produce(&producer, &topic, &key.to_string(), payload).await;
    }

    // The service registers the projections itself; wait for it, then for the drain.
    for projection in ["orders", "order_history"] {
        registered(&session, projection).await;
        drain(&session, &settings, projection, 1).await;
    }

    let (status, total, version, paid_at, paid_cents) = detail(&session, 1, a).await.unwrap();
    assert_eq!((status.as_str(), total, version), ("paid", 1250, 3));
    assert_eq!((paid_at, paid_cents), (Some(day(2, 11)), Some(1250)));
    let (status, _, version, _, _) = detail(&session, 1, b).await.unwrap();
    assert_eq!((status.as_str(), version), ("cancelled", 3));
    let day2 = NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
    assert_eq!(sales(&session, 1, day2).await, vec![(a, 1250)]);
    let by_customer = session
        .query_unpaged(
            "SELECT order_id, status, version FROM orders_by_customer_g1 WHERE tenant_id = 'default' AND customer_id = ?",
            (customer,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(Uuid, String, i64)>()
        .unwrap()
        .count();
    assert_eq!(by_customer, 2);
    let history: Vec<(i64, String)> = session
        .query_unpaged(
            "SELECT sequence, envelope FROM order_events_g1 WHERE tenant_id = 'default' AND aggregate_id = ?",
            (a,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(i64, String)>()
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        history.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(history[2].1.as_bytes(), records[2].1.as_slice());

    // Two undecodable records, dead-lettered once per projection.
    let dlq_ends = high_watermarks(&settings.kafka, &settings.kafka.dead_letter_topic).await;
    assert_eq!(dlq_ends.values().sum::<i64>(), 4, "{dlq_ends:?}");
    let dlq_config = infra::kafka::consumer_config(&settings.kafka, &format!("smoke-{id}"));
    let dlq_topic = settings.kafka.dead_letter_topic.clone();
    let dlq_headers = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = dlq_config.create().unwrap();
        consumer.subscribe(&[&dlq_topic]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                return (
                    infra::kafka::header_map(m.headers()),
                    m.key().map(<[u8]>::to_vec),
                );
            }
            assert!(Instant::now() < deadline, "no dead letter read");
        }
    })
    .await
    .unwrap();
    let (dlq_headers, dlq_key) = dlq_headers;
    assert_eq!(dlq_key, Some(b.to_string().into_bytes()));
    assert!(
        dlq_headers.contains_key(headers::DLQ_ERROR),
        "{dlq_headers:?}"
    );
    assert_eq!(dlq_headers[headers::DLQ_ORIGIN_TOPIC], settings.kafka.topic);
    assert_eq!(dlq_headers[headers::CONTENT_TYPE], "application/json");

    // Rebuild `orders` into generation 2 while the service runs.
    let report = projector::rebuild_with(
        settings.clone(),
        projector::RebuildOptions {
            projection: "orders".into(),
            from: None,
            progress: false,
            grace: Duration::from_secs(1),
        },
    )
    .await
    .unwrap();
    println!("{report:?}");
    assert_eq!((report.previous_generation, report.generation), (1, 2));
    assert_eq!(report.events, records.len() as u64);
    assert_eq!(detail(&session, 2, a).await.unwrap().2, 3);
    assert_eq!(sales(&session, 2, day2).await, vec![(a, 1250)]);
    let g1_left = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            (settings.cql.keyspace.as_str(),),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(String,)>()
        .unwrap()
        .map(|r| r.unwrap().0)
        .filter(|t| t.ends_with("_g1") && t != "order_events_g1")
        .count();
    assert_eq!(g1_left, 0, "old generation dropped");

    // The running service moved its live consumer to generation 2.
    produce(
        &producer,
        &topic,
        &a.to_string(),
        &envelope(
            a,
            4,
            day(4, 9),
            &OrderEvent::OrderShipped {
                carrier: "DHL".into(),
                tracking_number: "T".into(),
            },
        )
        .to_json(),
    )
    .await;
    drain(&session, &settings, "orders", 2).await;
    let (status, _, version, _, _) = detail(&session, 2, a).await.unwrap();
    assert_eq!((status.as_str(), version), ("shipped", 4));

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), service)
        .await
        .expect("the service stops on shutdown")
        .unwrap()
        .unwrap();

    drop_stack(&settings, &admin_session).await;
}

/// Logging at `filter`, and a test's own stack: its id, settings naming a migrated keyspace and
/// topics of its own after it, an admin session and one in the keyspace.
async fn smoke_stack(filter: &str) -> (String, infra::Settings, Arc<Session>, Arc<Session>) {
    // Traces are off here: the guard holds nothing.
    let _ = infra::telemetry::init(
        &infra::settings::Telemetry {
            format: "pretty".into(),
            filter: filter.into(),
            ..Default::default()
        },
        "projector-smoke",
    );
    let id = Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut settings = infra::Settings::default();
    settings.cql.keyspace = format!("projector_smoke_{id}");
    settings.cql.consistency = "ONE".into();
    settings.cql.serial_consistency = "SERIAL".into();
    settings.kafka.topic = format!("projector.smoke.{id}");
    settings.kafka.dead_letter_topic = format!("projector.smoke.{id}.dlq");
    settings.kafka.partitions = 3;
    settings.projector.addr = "127.0.0.1:0".into();

    let admin_session = infra::cql::connect(&settings.cql).await.unwrap();
    infra::migrations::run(&admin_session, &settings.cql)
        .await
        .unwrap();
    infra::kafka::ensure_topics(&settings.kafka).await.unwrap();
    let session = infra::cql::connect_keyspace(&settings.cql).await.unwrap();
    (id, settings, admin_session, session)
}

async fn drop_stack(settings: &infra::Settings, admin_session: &Session) {
    admin_session
        .query_unpaged(format!("DROP KEYSPACE {}", settings.cql.keyspace), ())
        .await
        .unwrap();
    let admin = infra::kafka::admin(&settings.kafka).unwrap();
    let _ = admin
        .delete_topics(
            &[&settings.kafka.topic, &settings.kafka.dead_letter_topic],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await;
}

/// Run the projector service until `events` are produced and drained, then stop it.
async fn project(settings: &infra::Settings, session: &Session, events: &[EventEnvelope]) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(projector::run(settings.clone(), async {
        let _ = stopped.await;
    }));
    let producer = infra::kafka::producer(&settings.kafka).unwrap();
    for (i, e) in events.iter().enumerate() {
        produce(&producer, &settings.kafka.topic, &e.key(), &e.to_json()).await;
        // One event a batch: each is folded onto what the projector knows at that moment.
        if i + 1 < events.len() {
            drain_registered(session, settings).await;
        }
    }
    drain_registered(session, settings).await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), service)
        .await
        .expect("the service stops on shutdown")
        .unwrap()
        .unwrap();
}

/// Wait until the service has registered `projection`.
async fn registered(session: &Session, projection: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while session
        .query_unpaged("SELECT name FROM projections WHERE name = ?", (projection,))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows_num()
        == 0
    {
        assert!(Instant::now() < deadline, "{projection} never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`drain`] of `orders` g1, once the service has registered it.
async fn drain_registered(session: &Session, settings: &infra::Settings) {
    registered(session, "orders").await;
    drain(session, settings, "orders", 1).await;
}

/// A new order's first events fold without reading its row; a late duplicate of them (the sweeper
/// republishing a batch) reaching a projector that no longer knows the order must not become the
/// state the order's next event is folded onto.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_duplicate_of_an_orders_first_event_after_a_restart_does_not_rewind_its_view() {
    let (_, settings, admin_session, session) = smoke_stack("warn").await;
    let order = Uuid::now_v7();
    let day = |h| Utc.with_ymd_and_hms(2026, 3, 1, h, 0, 0).unwrap();
    let line = |sku: &str, unit_price_cents| LineItem {
        sku: sku.into(),
        quantity: 1,
        unit_price_cents,
    };
    let placed = envelope(
        order,
        1,
        day(9),
        &OrderEvent::OrderPlaced {
            order_id: order,
            customer_id: Uuid::now_v7(),
            currency: "EUR".into(),
            items: vec![line("A", 1000)],
        },
    );
    let history = [
        placed.clone(),
        envelope(order, 2, day(10), &OrderEvent::ItemAdded(line("B", 250))),
        envelope(
            order,
            3,
            day(11),
            &OrderEvent::PaymentRecorded {
                amount_cents: 1250,
                payment_ref: "p".into(),
            },
        ),
    ];
    project(&settings, &session, &history).await;
    assert_eq!(
        detail(&session, 1, order).await.unwrap(),
        ("paid".into(), 1250, 3, Some(day(11)), Some(1250))
    );

    // A new instance (nothing cached) sees the republished first event, then the next command's.
    let shipped = envelope(
        order,
        4,
        day(12),
        &OrderEvent::OrderShipped {
            carrier: "DHL".into(),
            tracking_number: "T".into(),
        },
    );
    project(&settings, &session, &[placed, shipped]).await;

    assert_eq!(
        detail(&session, 1, order).await.unwrap(),
        ("shipped".into(), 1250, 4, Some(day(11)), Some(1250))
    );
    drop_stack(&settings, &admin_session).await;
}

/// Produce `SMOKE_ORDERS` (default 100) order lifecycles to `SMOKE_TOPIC`, for trying the
/// binary by hand: `SMOKE_TOPIC=t cargo test -p projector --test smoke produce -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "produces to a real Kafka topic named by SMOKE_TOPIC"]
async fn produce_sample_orders() {
    let Ok(topic) = std::env::var("SMOKE_TOPIC") else {
        eprintln!("SMOKE_TOPIC not set; nothing produced");
        return;
    };
    let orders: usize = std::env::var("SMOKE_ORDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let settings = infra::Settings::default();
    let producer = infra::kafka::producer(&settings.kafka).unwrap();
    let now = Utc::now();
    let mut sends = Vec::new();
    for i in 0..orders {
        let order = Uuid::now_v7();
        let customer = Uuid::now_v7();
        let lifecycle = [
            OrderEvent::OrderPlaced {
                order_id: order,
                customer_id: customer,
                currency: "EUR".into(),
                items: vec![LineItem {
                    sku: "A".into(),
                    quantity: 1,
                    unit_price_cents: 1000,
                }],
            },
            OrderEvent::ItemAdded(LineItem {
                sku: "B".into(),
                quantity: 2,
                unit_price_cents: 250,
            }),
            OrderEvent::PaymentRecorded {
                amount_cents: 1500,
                payment_ref: format!("pay-{i}"),
            },
            if i % 3 == 0 {
                OrderEvent::OrderCancelled { reason: "r".into() }
            } else {
                OrderEvent::OrderShipped {
                    carrier: "DHL".into(),
                    tracking_number: format!("T{i}"),
                }
            },
        ];
        let payloads: Vec<Vec<u8>> = lifecycle
            .iter()
            .enumerate()
            .map(|(s, e)| envelope(order, s as u64 + 1, now, e).to_json())
            .collect();
        let (producer, topic) = (producer.clone(), topic.clone());
        sends.push(async move {
            for payload in payloads {
                produce(&producer, &topic, &order.to_string(), &payload).await;
            }
        });
        if sends.len() == 200 {
            futures::future::join_all(std::mem::take(&mut sends)).await;
        }
    }
    futures::future::join_all(sends).await;
    println!("produced {} events to {topic}", orders * 4);
}

/// Drop `SMOKE_KEYSPACE` and the topics `SMOKE_TOPIC` and `SMOKE_TOPIC.dlq` after trying the binary.
#[tokio::test]
#[ignore = "drops a keyspace and topics of a real stack"]
async fn drop_smoke_resources() {
    let settings = infra::Settings::default();
    if let Ok(keyspace) = std::env::var("SMOKE_KEYSPACE") {
        assert!(keyspace.starts_with("projector_"), "only smoke keyspaces");
        let session = infra::cql::connect(&settings.cql).await.unwrap();
        session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
            .await
            .unwrap();
    }
    if let Ok(topic) = std::env::var("SMOKE_TOPIC") {
        assert!(topic.starts_with("projector."), "only smoke topics");
        let admin = infra::kafka::admin(&settings.kafka).unwrap();
        let dlq = format!("{topic}.dlq");
        let _ = admin
            .delete_topics(&[&topic, &dlq], &rdkafka::admin::AdminOptions::new())
            .await;
    }
}
