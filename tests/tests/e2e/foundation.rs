//! The real parts do what the rest relies on: Kafka keeps envelopes and headers, migrations are
//! idempotent, and the CQL database refuses a second `INSERT … IF NOT EXISTS`.

use chrono::Utc;
use command_api::publisher::Publisher;
use events::{headers, EventEnvelope, EventMetadata, OrderEvent};
use scylla::value::{CqlValue, Row};
use tests::{read_topic, settings_with_fresh_topic};
use uuid::Uuid;

#[tokio::test]
async fn an_envelope_goes_through_kafka_with_its_headers() {
    let settings = settings_with_fresh_topic("envelope").await.unwrap();
    let publisher = Publisher::new(&settings.kafka).await.unwrap();
    let event = OrderEvent::OrderCancelled {
        reason: "test".into(),
    };
    let envelope = EventEnvelope {
        event_id: Uuid::now_v7(),
        tenant_id: "default".into(),
        aggregate_type: "order".into(),
        aggregate_id: Uuid::now_v7(),
        sequence: 7,
        event_type: event.event_type().into(),
        schema_version: event.schema_version(),
        occurred_at: Utc::now(),
        metadata: EventMetadata {
            command_id: Uuid::now_v7(),
            correlation_id: "corr-1".into(),
            causation_id: "cause-1".into(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: None,
        },
        payload: event.to_payload(),
    };
    publisher
        .publish(2, std::slice::from_ref(&envelope))
        .await
        .unwrap();

    let records = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.partition, 2);
    assert_eq!(
        record.key.as_deref(),
        Some(envelope.aggregate_id.to_string().as_str())
    );
    assert_eq!(record.envelope().unwrap(), envelope);
    assert_eq!(record.headers[headers::EVENT_TYPE], "OrderCancelled");
    assert_eq!(record.headers[headers::SCHEMA_VERSION], "1");
    assert_eq!(record.headers[headers::SEQUENCE], "7");
    assert_eq!(record.headers[headers::CORRELATION_ID], "corr-1");
    assert_eq!(
        record.headers[headers::TRACEPARENT],
        envelope.metadata.traceparent.clone().unwrap()
    );
    assert_eq!(
        OrderEvent::from_envelope(&record.envelope().unwrap()).unwrap(),
        event
    );
}

#[tokio::test]
async fn migrations_applied_twice_change_nothing_the_second_time() {
    let mut settings = infra::Settings::load().unwrap();
    settings.cql.keyspace = format!("test_migrations_{}", Uuid::now_v7().simple());
    let session = infra::cql::connect(&settings.cql).await.unwrap();
    let first = infra::migrations::run(&session, &settings.cql)
        .await
        .unwrap();
    assert_eq!(first.len(), infra::migrations::MIGRATIONS.len());
    let second = infra::migrations::run(&session, &settings.cql)
        .await
        .unwrap();
    assert!(second.is_empty(), "second run applied {second:?}");
    let recorded = session
        .query_unpaged(
            format!(
                "SELECT version FROM {}.schema_migrations",
                settings.cql.keyspace
            ),
            &[],
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows_num();
    assert_eq!(recorded, infra::migrations::MIGRATIONS.len());
    session
        .query_unpaged(format!("DROP KEYSPACE {}", settings.cql.keyspace), &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn insert_if_not_exists_refuses_the_second_insert() {
    let settings = infra::Settings::load().unwrap();
    let session = infra::cql::connect_keyspace(&settings.cql).await.unwrap();
    let id = Uuid::now_v7();
    let insert =
        "INSERT INTO aggregates (tenant_id, aggregate_type, aggregate_id, version, state) \
                  VALUES ('test', 'lwt-probe', ?, ?, ?) IF NOT EXISTS";
    let applied = |rows: scylla::response::query_result::QueryResult| {
        let row: Row = rows.into_rows_result().unwrap().first_row::<Row>().unwrap();
        matches!(row.columns.first(), Some(Some(CqlValue::Boolean(true))))
    };
    let first = session
        .query_unpaged(insert, (id, 1i64, "first"))
        .await
        .unwrap();
    assert!(applied(first));
    let second = session
        .query_unpaged(insert, (id, 2i64, "second"))
        .await
        .unwrap();
    assert!(!applied(second));
    let (version, state): (i64, String) = session
        .query_unpaged(
            "SELECT version, state FROM aggregates WHERE tenant_id = 'test' \
             AND aggregate_type = 'lwt-probe' AND aggregate_id = ?",
            (id,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .first_row::<(i64, String)>()
        .unwrap();
    assert_eq!((version, state.as_str()), (1, "first"));
}
