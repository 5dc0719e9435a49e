//! A record the projector cannot decode goes to the dead-letter topic, with why and where from,
//! and the partition keeps moving.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use command_api::publisher::Publisher;
use events::{headers, LineItem, OrderEvent};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::json;
use tests::{read_topic, settings_with_fresh_topic, Keyspace, Projector, QueryApi};
use uuid::Uuid;

use crate::model::Plan;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_that_is_not_json_lands_in_the_dead_letter_topic_and_the_partition_keeps_moving() {
    let mut settings = settings_with_fresh_topic("rs-dlq").await.unwrap();
    let ks = Keyspace::fresh(&mut settings).await.unwrap();
    let projector = Projector::spawn(&settings);
    let queries = QueryApi::spawn(&settings).await.unwrap();

    // The broken record, then a valid event, on the same partition.
    let partition = 1;
    let key = Uuid::now_v7().to_string();
    let garbage = b"{\"event_id\": this is not json".to_vec();
    let producer = infra::kafka::producer(&settings.kafka).unwrap();
    let delivery = producer
        .send(
            FutureRecord::to(&settings.kafka.topic)
                .partition(partition)
                .key(&key)
                .payload(&garbage)
                .headers(OwnedHeaders::new().insert(Header {
                    key: headers::CONTENT_TYPE,
                    value: Some("application/json"),
                })),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(err, _)| err)
        .unwrap();
    assert_eq!(delivery.partition, partition);

    let order = Uuid::now_v7();
    let plan = Plan {
        order,
        events: vec![OrderEvent::OrderPlaced {
            order_id: order,
            customer_id: Uuid::now_v7(),
            currency: "EUR".into(),
            items: vec![LineItem {
                sku: "AFTER".into(),
                quantity: 1,
                unit_price_cents: 42,
            }],
        }],
    };
    let publisher = Publisher::new(&settings.kafka).await.unwrap();
    publisher
        .publish(partition, &plan.envelopes(&settings.tenant, &[Utc::now()]))
        .await
        .unwrap();

    ks.drain(&settings, Duration::from_secs(60)).await.unwrap();

    // The valid event behind it was projected.
    let view = queries.get(&format!("/v1/orders/{order}")).await.unwrap();
    assert_eq!(view.status, 200, "{}", view.body);
    assert_eq!(
        (&view.body["version"], &view.body["total_cents"]),
        (&json!(1), &json!(42))
    );
    let history = queries
        .get(&format!("/v1/orders/{order}/events"))
        .await
        .unwrap();
    assert_eq!(history.body["events"].as_array().map(Vec::len), Some(1));

    // One dead letter per projection, same key and payload, original headers, why and where from.
    let dead = read_topic(&settings, &settings.kafka.dead_letter_topic)
        .await
        .unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    let projections: BTreeSet<&str> = dead
        .iter()
        .map(|r| r.headers[headers::DLQ_PROJECTION].as_str())
        .collect();
    assert_eq!(projections, BTreeSet::from(["order_history", "orders"]));
    for letter in &dead {
        assert_eq!(letter.key.as_deref(), Some(key.as_str()));
        assert_eq!(letter.payload, garbage);
        assert!(
            !letter.headers[headers::DLQ_ERROR].is_empty(),
            "{:?}",
            letter.headers
        );
        assert_eq!(
            letter.headers[headers::DLQ_ORIGIN_TOPIC],
            settings.kafka.topic
        );
        assert_eq!(
            letter.headers[headers::DLQ_ORIGIN_PARTITION],
            partition.to_string()
        );
        assert_eq!(
            letter.headers[headers::DLQ_ORIGIN_OFFSET],
            delivery.offset.to_string()
        );
        assert_eq!(letter.headers[headers::CONTENT_TYPE], "application/json");
    }

    queries.stop().await.unwrap();
    projector.stop().await.unwrap();
    ks.drop_keyspace().await.unwrap();
}
