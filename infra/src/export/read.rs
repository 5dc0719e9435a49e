//! Reading the event topic for exports: which offsets a window covers per partition
//! ([`plan_ranges`]), how they split into part files ([`parts`]), and reading one offset range
//! through the selection into a sink ([`read_range`]). Blocking (librdkafka's `BaseConsumer`):
//! call from `spawn_blocking`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::manifest::{PartitionRange, Selection};
use super::write::{EventSink, Record};
use crate::settings::Kafka;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for records a range is known to hold (the broker answers in milliseconds).
const STALL: Duration = Duration::from_secs(60);

/// A consumer for exports: no group membership, no commits, positions set by `assign`.
pub fn consumer(settings: &Kafka) -> anyhow::Result<BaseConsumer> {
    crate::kafka::base_config(settings)
        .set("group.id", format!("export-{}", uuid::Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the export consumer")
}

/// The partitions of `topic`.
pub fn partitions(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .context("topic metadata")?;
    let Some(t) = metadata.topics().first() else {
        bail!("topic {topic} not in metadata");
    };
    if let Some(err) = t.error() {
        bail!("topic {topic}: {err:?}");
    }
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// The first offset of each partition whose record time is at or after `at`; the high watermark
/// where there is none.
fn offsets_at(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    at: DateTime<Utc>,
    high: &BTreeMap<i32, i64>,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let mut query = TopicPartitionList::new();
    for &p in partitions {
        query.add_partition_offset(topic, p, Offset::Offset(at.timestamp_millis()))?;
    }
    let found = consumer
        .offsets_for_times(query, TIMEOUT)
        .context("offsets_for_times")?;
    let mut offsets = BTreeMap::new();
    for element in found.elements() {
        let end = high.get(&element.partition()).copied().unwrap_or(0);
        let offset = match element.offset() {
            Offset::Offset(o) => o.min(end),
            _ => end,
        };
        offsets.insert(element.partition(), offset);
    }
    Ok(offsets)
}

/// The offsets an export of `[from, to)` covers, per partition: from the first record at or after
/// `from` (or exactly `start`, the end offsets of a previous export, when given; `from` then only
/// filters) to the first record at or after `to` (the end of the partition when `to` is past its
/// last record). Every partition of the topic is listed, empty ranges included, so the next export
/// knows where each starts.
pub fn plan_ranges(
    consumer: &BaseConsumer,
    topic: &str,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    start: Option<&BTreeMap<i32, i64>>,
) -> anyhow::Result<Vec<PartitionRange>> {
    let partitions = partitions(consumer, topic)?;
    let mut low = BTreeMap::new();
    let mut high = BTreeMap::new();
    for &p in &partitions {
        let (l, h) = consumer
            .fetch_watermarks(topic, p, TIMEOUT)
            .with_context(|| format!("watermarks of partition {p}"))?;
        low.insert(p, l);
        high.insert(p, h);
    }
    let starts = match (start, from) {
        (Some(start), _) => partitions
            .iter()
            .map(|p| (*p, start.get(p).copied().unwrap_or(0)))
            .collect(),
        (None, Some(from)) => offsets_at(consumer, topic, &partitions, from, &high)?,
        (None, None) => low.clone(),
    };
    let ends = match to {
        Some(to) => offsets_at(consumer, topic, &partitions, to, &high)?,
        None => high.clone(),
    };
    Ok(partitions
        .iter()
        .map(|p| {
            let from_offset = starts
                .get(p)
                .copied()
                .unwrap_or(0)
                .max(low.get(p).copied().unwrap_or(0));
            let to_offset = ends.get(p).copied().unwrap_or(0).max(from_offset);
            PartitionRange {
                partition: *p,
                from_offset,
                to_offset,
            }
        })
        .collect())
}

/// One part file of an export: a slice of one partition's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Its number: `part-<index>.<ext>`.
    pub index: usize,
    pub range: PartitionRange,
}

impl Part {
    pub fn file_name(&self, format: super::Format) -> String {
        format!("part-{:05}.{}", self.index, format.extension())
    }
}

/// Split `ranges` into parts of at most `per_part` offsets, in partition then offset order. The
/// same ranges always give the same parts, so a part written again (after a worker died before
/// recording it) holds exactly what it held before.
pub fn parts(ranges: &[PartitionRange], per_part: u64) -> Vec<Part> {
    let per_part = per_part.max(1) as i64;
    let mut sorted = ranges.to_vec();
    sorted.sort_by_key(|r| r.partition);
    let mut parts = Vec::new();
    for r in sorted {
        let mut from = r.from_offset;
        while from < r.to_offset {
            let to = (from.saturating_add(per_part)).min(r.to_offset);
            parts.push(Part {
                index: parts.len(),
                range: PartitionRange {
                    partition: r.partition,
                    from_offset: from,
                    to_offset: to,
                },
            });
            from = to;
        }
    }
    parts
}

/// Whether an event is selected.
pub fn selected(
    selection: &Selection,
    e: &events::EventEnvelope,
    timestamp_ms: Option<i64>,
) -> bool {
    if let Some(tenant) = &selection.tenant_id {
        if *tenant != e.tenant_id {
            return false;
        }
    }
    if !selection.aggregate_ids.is_empty() && !selection.aggregate_ids.contains(&e.aggregate_id) {
        return false;
    }
    if !selection.event_types.is_empty() && !selection.event_types.contains(&e.event_type) {
        return false;
    }
    let at = timestamp_ms.unwrap_or_else(|| e.occurred_at.timestamp_millis());
    if selection
        .from
        .is_some_and(|from| at < from.timestamp_millis())
    {
        return false;
    }
    if selection.to.is_some_and(|to| at >= to.timestamp_millis()) {
        return false;
    }
    true
}

/// What reading a range found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeReport {
    /// Records read.
    pub read: u64,
    /// Events written to the sink.
    pub written: u64,
    /// Records that are not envelopes.
    pub skipped: u64,
}

/// Read `range` of `topic` and write the selected envelopes to `sink`, in offset order.
/// `progress` is called every 1000 records with the report so far and the sink's bytes; `stop`
/// aborts the read.
pub fn read_range(
    consumer: &BaseConsumer,
    topic: &str,
    range: PartitionRange,
    selection: &Selection,
    sink: &mut dyn EventSink,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&RangeReport, u64),
) -> anyhow::Result<RangeReport> {
    let mut report = RangeReport::default();
    if range.is_empty() {
        return Ok(report);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, range.partition, Offset::Offset(range.from_offset))?;
    consumer
        .assign(&assignment)
        .context("assigning the partition")?;
    let mut last_seen = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            bail!("stopped");
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            // Offsets without a record at the end of the range (none in this system's topics,
            // but Kafka allows them): the position tells when the range is passed.
            let position = consumer
                .position()
                .ok()
                .and_then(|tpl| {
                    tpl.find_partition(topic, range.partition)
                        .map(|e| e.offset())
                })
                .and_then(|o| o.to_raw());
            if position.is_some_and(|p| p >= range.to_offset) {
                break;
            }
            if last_seen.elapsed() > STALL {
                bail!(
                    "no record of partition {} past offset {:?} within {STALL:?}",
                    range.partition,
                    position
                );
            }
            continue;
        };
        let message = message.context("consuming")?;
        last_seen = Instant::now();
        if message.offset() >= range.to_offset {
            break;
        }
        if message.offset() < range.from_offset {
            continue;
        }
        report.read += 1;
        let raw = message.payload().unwrap_or_default();
        let timestamp_ms = message.timestamp().to_millis();
        match events::EventEnvelope::from_json(raw) {
            Ok(envelope) if selected(selection, &envelope, timestamp_ms) => {
                sink.write(&Record {
                    envelope: &envelope,
                    raw,
                    partition: range.partition,
                    offset: message.offset(),
                    timestamp_ms,
                })?;
                report.written += 1;
            }
            Ok(_) => {}
            Err(_) => report.skipped += 1,
        }
        if report.read % 1000 == 0 {
            progress(&report, sink.bytes());
        }
        if message.offset() + 1 >= range.to_offset {
            break;
        }
    }
    consumer.unassign().context("unassigning the partition")?;
    progress(&report, sink.bytes());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::{EventEnvelope, EventMetadata, OrderEvent};
    use uuid::Uuid;

    fn range(partition: i32, from: i64, to: i64) -> PartitionRange {
        PartitionRange {
            partition,
            from_offset: from,
            to_offset: to,
        }
    }

    #[test]
    fn parts_are_fixed_slices_of_each_partition_in_order() {
        let ranges = [range(1, 0, 5), range(0, 10, 35), range(2, 7, 7)];
        let parts = parts(&ranges, 10);
        let slices: Vec<(usize, i32, i64, i64)> = parts
            .iter()
            .map(|p| {
                (
                    p.index,
                    p.range.partition,
                    p.range.from_offset,
                    p.range.to_offset,
                )
            })
            .collect();
        assert_eq!(
            slices,
            vec![(0, 0, 10, 20), (1, 0, 20, 30), (2, 0, 30, 35), (3, 1, 0, 5)]
        );
        assert_eq!(super::parts(&ranges, 10), parts, "deterministic");
        assert_eq!(
            parts[1].file_name(crate::export::Format::Parquet),
            "part-00001.parquet"
        );
        let covered: u64 = parts.iter().map(|p| p.range.len()).sum();
        assert_eq!(covered, 30, "every offset in exactly one part");
    }

    #[test]
    fn the_selection_filters_tenant_aggregates_types_and_time() {
        let id = Uuid::now_v7();
        let event = OrderEvent::OrderCancelled { reason: "r".into() };
        let e = EventEnvelope {
            event_id: Uuid::now_v7(),
            tenant_id: "acme".into(),
            aggregate_type: "order".into(),
            aggregate_id: id,
            sequence: 1,
            event_type: event.event_type().into(),
            schema_version: 1,
            occurred_at: Utc::now(),
            metadata: EventMetadata::default(),
            payload: event.to_payload(),
        };
        let at = 1_000_000;
        let t = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms).unwrap();
        let all = Selection::default();
        assert!(selected(&all, &e, Some(at)));
        let window = Selection {
            from: Some(t(at)),
            to: Some(t(at + 1)),
            ..Default::default()
        };
        assert!(selected(&window, &e, Some(at)), "from is included");
        assert!(!selected(&window, &e, Some(at + 1)), "to is excluded");
        assert!(!selected(&window, &e, Some(at - 1)));
        let tenant = Selection {
            tenant_id: Some("other".into()),
            ..Default::default()
        };
        assert!(!selected(&tenant, &e, Some(at)));
        let aggregates = Selection {
            aggregate_ids: vec![Uuid::now_v7()],
            ..Default::default()
        };
        assert!(!selected(&aggregates, &e, Some(at)));
        let types = Selection {
            event_types: vec!["OrderPlaced".into(), "OrderCancelled".into()],
            aggregate_ids: vec![id],
            ..Default::default()
        };
        assert!(selected(&types, &e, Some(at)));
    }
}
