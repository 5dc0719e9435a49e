//! Analysts' export of the event stream: all of it, one aggregate, or from a time.

use chrono::{TimeDelta, Utc};
use command_api::publisher::Publisher;
use events::{EventEnvelope, EventMetadata, OrderEvent};
use infra::export::{export, ExportRequest};
use tests::settings_with_fresh_topic;
use uuid::Uuid;

fn envelope(aggregate_id: Uuid, sequence: u64, at: chrono::DateTime<Utc>) -> EventEnvelope {
    envelope_of("default", aggregate_id, sequence, at)
}

fn envelope_of(
    tenant: &str,
    aggregate_id: Uuid,
    sequence: u64,
    at: chrono::DateTime<Utc>,
) -> EventEnvelope {
    let event = OrderEvent::OrderCancelled {
        reason: format!("#{sequence}"),
    };
    EventEnvelope {
        event_id: Uuid::now_v7(),
        tenant_id: tenant.into(),
        aggregate_type: "order".into(),
        aggregate_id,
        sequence,
        event_type: event.event_type().into(),
        schema_version: 1,
        occurred_at: at,
        metadata: EventMetadata::default(),
        payload: event.to_payload(),
    }
}

fn lines(bytes: &[u8]) -> Vec<EventEnvelope> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| EventEnvelope::from_json(l.as_bytes()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_exports_whole_by_aggregate_and_from_a_time() {
    let settings = settings_with_fresh_topic("export").await.unwrap();
    let publisher = Publisher::new(&settings.kafka).await.unwrap();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let now = Utc::now();
    publisher
        .publish(0, &[envelope(a, 1, now), envelope(a, 2, now)])
        .await
        .unwrap();
    publisher.publish(1, &[envelope(b, 1, now)]).await.unwrap();
    // Another tenant's order, which a tenant's export never holds.
    let c = Uuid::now_v7();
    publisher
        .publish(2, &[envelope_of("other", c, 1, now)])
        .await
        .unwrap();
    // Kafka record timestamps are the produce time: wait, then produce the "later" event.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let later = Utc::now();
    publisher
        .publish(0, &[envelope(a, 3, later + TimeDelta::milliseconds(1))])
        .await
        .unwrap();

    let kafka = settings.kafka.clone();
    let run = move |request: ExportRequest| {
        let kafka = kafka.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                let report = export(&kafka, &request, &mut out).unwrap();
                (report, lines(&out))
            })
            .await
            .unwrap()
        }
    };

    let (report, everything) = run(ExportRequest::default()).await;
    assert_eq!(report.written, 5, "every tenant's events");
    assert!(everything.iter().any(|e| e.aggregate_id == c));
    let (report, all) = run(ExportRequest {
        tenant: Some("default".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(report.written, 4, "one tenant's events only");
    assert!(all.iter().all(|e| e.tenant_id == "default"));
    let (_, others) = run(ExportRequest {
        tenant: Some("other".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        others.iter().map(|e| e.aggregate_id).collect::<Vec<_>>(),
        vec![c]
    );
    let of_a: Vec<u64> = all
        .iter()
        .filter(|e| e.aggregate_id == a)
        .map(|e| e.sequence)
        .collect();
    assert_eq!(
        of_a,
        vec![1, 2, 3],
        "one aggregate's events in sequence order"
    );

    let (_, only_b) = run(ExportRequest {
        aggregate_id: Some(b),
        ..Default::default()
    })
    .await;
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].aggregate_id, b);

    let (_, since) = run(ExportRequest {
        from: Some(later),
        ..Default::default()
    })
    .await;
    assert_eq!(
        since.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![3]
    );
}
