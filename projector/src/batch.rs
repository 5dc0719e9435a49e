//! A batch of Kafka records on its way to the projections: decoding and grouping, both pure.
//!
//! [`decode`] turns a record into an [`Event`] (the envelope, then the typed event, upcasting old
//! schema versions) or says why it cannot — such a record goes to the dead-letter topic.
//! [`group`] gathers the decoded events by aggregate, each group in sequence order with duplicates
//! dropped, remembering which records each group came from so that a group whose apply keeps
//! failing can be dead-lettered record by record.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use events::{EventEnvelope, OrderEvent};
use uuid::Uuid;

use crate::projections::{AggregateEvents, ApplyError, Event, ProjectionWriter};

/// One consumed record, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    pub fn from_message<M: rdkafka::Message>(message: &M) -> Self {
        use rdkafka::message::Headers;
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// The W3C `traceparent` (and `tracestate`) the command API put in the record's headers.
    pub fn trace_context(&self) -> Option<(&str, Option<&str>)> {
        let header = |name: &str| {
            self.headers
                .iter()
                .find(|(key, _)| key == name)
                .and_then(|(_, value)| value.as_deref())
                .and_then(|value| std::str::from_utf8(value).ok())
        };
        Some((
            header(events::headers::TRACEPARENT)?,
            header(events::headers::TRACESTATE),
        ))
    }
}

/// Decode a record's payload: the envelope JSON, then its typed event.
pub fn decode(payload: Option<&[u8]>) -> Result<Event, String> {
    let bytes = payload.ok_or_else(|| "record has no payload".to_string())?;
    let raw = std::str::from_utf8(bytes).map_err(|e| format!("payload is not UTF-8: {e}"))?;
    let envelope = EventEnvelope::from_json(bytes)
        .map_err(|e| format!("payload is not an event envelope: {e}"))?;
    if envelope.sequence == 0 {
        return Err("envelope sequence is 0 (sequences start at 1)".to_string());
    }
    let event = OrderEvent::from_envelope(&envelope).map_err(|e| e.to_string())?;
    Ok(Event {
        envelope,
        event,
        raw: Arc::from(raw),
    })
}

/// One aggregate's share of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub events: AggregateEvents,
    /// Indices (into the batch) of every record of this aggregate, duplicates included.
    pub records: Vec<usize>,
}

/// Apply every group through `writer`, retrying: unavailability for as long as it lasts,
/// rejections up to `max_attempts`. Between rounds `pause(backoff)` waits and returns the next
/// backoff, or an error that ends the apply (a consumer asked to stop). Returns the groups given
/// up on, with the last error. Shared by the service's consumers and the shadow replay.
pub async fn apply_groups<E, P, F>(
    writer: &dyn ProjectionWriter,
    groups: &[Group],
    max_attempts: u32,
    (projection, generation): (&str, i32),
    first_backoff: Duration,
    mut pause: P,
) -> Result<BTreeMap<usize, String>, E>
where
    P: FnMut(Duration) -> F,
    F: Future<Output = Result<Duration, E>>,
{
    let max_attempts = max_attempts.max(1);
    let mut attempts = vec![0u32; groups.len()];
    let mut given_up = BTreeMap::new();
    let mut pending: Vec<usize> = (0..groups.len()).collect();
    let mut backoff = first_backoff;
    while !pending.is_empty() {
        let batch: Vec<&AggregateEvents> = pending.iter().map(|&g| &groups[g].events).collect();
        let results = writer.apply_batch(&batch).await;
        let mut retry = Vec::new();
        let mut unavailable = None;
        for (&g, result) in pending.iter().zip(results) {
            match result {
                Ok(()) => {}
                Err(ApplyError::Unavailable(error)) => {
                    unavailable = Some(error);
                    retry.push(g);
                }
                Err(ApplyError::Rejected(error)) => {
                    attempts[g] += 1;
                    tracing::warn!(
                        projection,
                        generation,
                        aggregate_id = %groups[g].events.aggregate_id,
                        attempt = attempts[g],
                        max_attempts,
                        %error,
                        "apply rejected"
                    );
                    if attempts[g] >= max_attempts {
                        given_up.insert(g, error);
                    } else {
                        retry.push(g);
                    }
                }
            }
        }
        pending = retry;
        if pending.is_empty() {
            break;
        }
        if let Some(error) = unavailable {
            tracing::warn!(
                projection,
                generation,
                aggregates = pending.len(),
                retry_in_ms = backoff.as_millis() as u64,
                %error,
                "CQL unavailable; retrying until it is back"
            );
        }
        backoff = pause(backoff).await?;
    }
    Ok(given_up)
}

/// Group decoded events (with their record index) by aggregate, in order of first appearance;
/// within a group by sequence, the first of several records with one sequence kept.
pub fn group(decoded: Vec<(usize, Event)>) -> Vec<Group> {
    struct Gathering {
        tenant_id: String,
        aggregate_id: Uuid,
        records: Vec<usize>,
        events: BTreeMap<u64, Event>,
    }
    let mut index: HashMap<(String, Uuid), usize> = HashMap::new();
    let mut groups: Vec<Gathering> = Vec::new();
    for (record, event) in decoded {
        let (tenant_id, aggregate_id) = (
            event.envelope.tenant_id.clone(),
            event.envelope.aggregate_id,
        );
        let slot = *index
            .entry((tenant_id.clone(), aggregate_id))
            .or_insert_with(|| {
                groups.push(Gathering {
                    tenant_id,
                    aggregate_id,
                    records: Vec::new(),
                    events: BTreeMap::new(),
                });
                groups.len() - 1
            });
        let gathering = &mut groups[slot];
        gathering.records.push(record);
        gathering
            .events
            .entry(event.envelope.sequence)
            .or_insert(event);
    }
    groups
        .into_iter()
        .map(|g| Group {
            events: AggregateEvents {
                tenant_id: g.tenant_id,
                aggregate_id: g.aggregate_id,
                events: g.events.into_values().collect(),
            },
            records: g.records,
        })
        .collect()
}

/// The next offset to consume per partition after this batch: last offset seen + 1.
pub fn next_offsets(records: &[Record]) -> BTreeMap<i32, i64> {
    let mut next = BTreeMap::new();
    for record in records {
        let entry = next.entry(record.partition).or_insert(record.offset + 1);
        *entry = (*entry).max(record.offset + 1);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projections::fixtures::{at, event};

    fn cancelled(order: Uuid, sequence: u64) -> Event {
        event(
            order,
            sequence,
            at(1, 1),
            OrderEvent::OrderCancelled { reason: "r".into() },
        )
    }

    #[test]
    fn a_record_carries_the_trace_context_of_its_headers() {
        let mut record = Record {
            partition: 0,
            offset: 0,
            key: None,
            payload: None,
            headers: vec![(
                "traceparent".into(),
                Some(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec()),
            )],
        };
        assert_eq!(
            record.trace_context(),
            Some((
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                None
            ))
        );
        record
            .headers
            .push(("tracestate".into(), Some(b"k=v".to_vec())));
        assert_eq!(record.trace_context().and_then(|c| c.1), Some("k=v"));
        record.headers.clear();
        assert_eq!(record.trace_context(), None);
    }

    #[test]
    fn an_envelope_decodes_into_its_typed_event_and_keeps_its_raw_json() {
        let original = cancelled(Uuid::now_v7(), 3);

        let decoded = decode(Some(original.raw.as_bytes())).unwrap();

        assert_eq!(decoded, original);
    }

    #[test]
    fn an_old_schema_version_is_upcast_while_decoding() {
        let mut envelope = cancelled(Uuid::now_v7(), 2).envelope;
        envelope.event_type = "ItemAdded".into();
        envelope.schema_version = 1;
        envelope.payload = serde_json::json!({"sku": "A", "quantity": 1, "price_cents": 5});

        let decoded = decode(Some(&envelope.to_json())).unwrap();

        assert!(matches!(decoded.event, OrderEvent::ItemAdded(ref l) if l.unit_price_cents == 5));
    }

    #[test]
    fn a_record_that_is_not_json_cannot_be_decoded() {
        let err = decode(Some(b"not json")).unwrap_err();
        assert!(err.contains("not an event envelope"), "{err}");
        assert!(decode(None).is_err());
    }

    #[test]
    fn an_unknown_event_type_or_future_version_cannot_be_decoded() {
        let mut envelope = cancelled(Uuid::now_v7(), 1).envelope;
        envelope.event_type = "OrderTeleported".into();
        assert!(decode(Some(&envelope.to_json()))
            .unwrap_err()
            .contains("unknown event type"));

        let mut envelope = cancelled(Uuid::now_v7(), 1).envelope;
        envelope.schema_version = 9;
        assert!(decode(Some(&envelope.to_json()))
            .unwrap_err()
            .contains("newer"));
    }

    #[test]
    fn events_are_grouped_by_aggregate_in_sequence_order_without_duplicates() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let decoded = vec![
            (0, cancelled(a, 2)),
            (1, cancelled(b, 1)),
            (2, cancelled(a, 1)),
            (3, cancelled(a, 2)),
        ];

        let groups = group(decoded);

        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].events.aggregate_id, a);
        let sequences: Vec<_> = groups[0]
            .events
            .events
            .iter()
            .map(|e| e.envelope.sequence)
            .collect();
        assert_eq!(sequences, vec![1, 2]);
        assert_eq!(groups[0].records, vec![0, 2, 3]);
        assert_eq!(groups[1].events.aggregate_id, b);
        assert_eq!(groups[1].records, vec![1]);
    }

    #[test]
    fn the_next_offset_of_a_partition_follows_its_last_record() {
        let record = |partition, offset| Record {
            partition,
            offset,
            key: None,
            payload: None,
            headers: Vec::new(),
        };
        let next = next_offsets(&[record(0, 5), record(1, 9), record(0, 7), record(0, 6)]);
        assert_eq!(next, BTreeMap::from([(0, 8), (1, 10)]));
    }
}
