//! Export of the event stream for analysts: every envelope from the start (or from a time), of all
//! aggregates or of one, as JSON lines, up to the end offsets taken when the export starts (or
//! following new events with `follow`).

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use uuid::Uuid;

use crate::settings::Kafka;

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportRequest {
    /// First event at or after this time; the beginning of the topic when `None`.
    pub from: Option<DateTime<Utc>>,
    /// Only this aggregate's events.
    pub aggregate_id: Option<Uuid>,
    /// Only the events of this tenant (every tenant's when `None`).
    pub tenant: Option<String>,
    /// Keep waiting for new events instead of stopping at the end offsets.
    pub follow: bool,
    pub progress: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    pub read: u64,
    pub written: u64,
    /// Records that are not envelopes (they are in the dead-letter topic's business, not ours).
    pub skipped: u64,
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// Write the selected envelopes to `out`, one JSON document per line, in offset order per
/// partition (so each aggregate's events come in sequence order).
pub fn export(
    settings: &Kafka,
    request: &ExportRequest,
    out: &mut dyn Write,
) -> anyhow::Result<ExportReport> {
    let consumer: BaseConsumer = crate::kafka::base_config(settings)
        .set("group.id", format!("export-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the export consumer")?;
    let topic = settings.topic.as_str();
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .context("topic metadata")?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();

    let mut starts = TopicPartitionList::new();
    for &p in &partitions {
        let offset = match request.from {
            Some(t) => Offset::Offset(t.timestamp_millis()),
            None => Offset::Beginning,
        };
        starts.add_partition_offset(topic, p, offset)?;
    }
    if request.from.is_some() {
        starts = consumer
            .offsets_for_times(starts, TIMEOUT)
            .context("offsets_for_times")?;
    }
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    let mut total = 0u64;
    for element in starts.elements() {
        let (low, high) = consumer.fetch_watermarks(topic, element.partition(), TIMEOUT)?;
        let start = match element.offset() {
            Offset::Offset(o) => o,
            Offset::End => high,
            _ => low,
        };
        if high > start || request.follow {
            remaining.insert(element.partition(), high);
            total += (high - start).max(0) as u64;
        }
    }
    consumer.assign(&starts).context("assigning partitions")?;

    let bar = if request.progress {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} exporting [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let wanted_key = request.aggregate_id.map(|id| id.to_string());
    let mut report = ExportReport::default();
    while request.follow || !remaining.is_empty() {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.context("consuming")?;
        let partition = message.partition();
        let end = remaining.get(&partition).copied();
        if !request.follow && end.is_some_and(|end| message.offset() >= end) {
            remaining.remove(&partition);
            continue;
        }
        report.read += 1;
        bar.inc(1);
        let key_matches = match (&wanted_key, message.key()) {
            (None, _) => true,
            (Some(wanted), Some(key)) => key == wanted.as_bytes(),
            (Some(_), None) => false,
        };
        if key_matches {
            let payload = message.payload().unwrap_or_default();
            match events::EventEnvelope::from_json(payload) {
                Ok(e) if request.tenant.as_ref().is_none_or(|t| *t == e.tenant_id) => {
                    out.write_all(payload)?;
                    out.write_all(b"\n")?;
                    report.written += 1;
                }
                Ok(_) => {}
                Err(_) => report.skipped += 1,
            }
        }
        if !request.follow && end.is_some_and(|end| message.offset() + 1 >= end) {
            remaining.remove(&partition);
        }
    }
    out.flush()?;
    bar.finish_and_clear();
    Ok(report)
}
