//! Exports of the event stream for analysts, shared by `stack-admin export` and the export jobs
//! of query-api and the projector's job worker.
//!
//! - [`read`]: which Kafka offsets a time window covers per partition, their split into
//!   deterministic part files, and reading a range through a [`manifest::Selection`] (tenant,
//!   aggregates, event types, time);
//! - [`write`]: JSON lines (envelopes as stored) or Parquet (one row per event);
//! - [`manifest`]: `manifest.json`, the offsets an export covered, where the next one starts;
//! - [`store`]: the object store the jobs write to (`APP_JOBS__STORE`);
//! - [`jobs`]: the durable job queue in CQL (state, progress, leases, checkpoints);
//! - [`export`] / [`export_with`]: the whole topic (or from a time, or from a manifest's end
//!   offsets) to one output, up to the end offsets taken when it starts, or following new events.

pub mod jobs;
pub mod manifest;
pub mod read;
pub mod store;
pub mod write;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use rdkafka::consumer::Consumer;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::settings::Kafka;
pub use manifest::{FileEntry, Manifest, PartitionRange, Selection};
use write::{EventSink, JsonlSink, Record};

/// The format of an export's files.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON lines: each envelope exactly as stored in Kafka.
    #[default]
    Jsonl,
    /// Apache Parquet: one row per event, the envelope's fields as columns, the payload as JSON
    /// text.
    Parquet,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Parquet => "parquet",
        }
    }

    /// The media type of its files.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jsonl => "application/x-ndjson",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "jsonl" => Ok(Format::Jsonl),
            "parquet" => Ok(Format::Parquet),
            other => bail!("unknown format {other:?} (jsonl or parquet)"),
        }
    }
}

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportRequest {
    /// First event at or after this time; the beginning of the topic when `None`. With
    /// `start_offsets` it only filters.
    pub from: Option<DateTime<Utc>>,
    /// Only this aggregate's events.
    pub aggregate_id: Option<Uuid>,
    /// Only these event types (all when empty).
    pub event_types: Vec<String>,
    /// Only the events of this tenant (every tenant's when `None`).
    pub tenant: Option<String>,
    /// Start exactly at these offsets (a previous export's [`Manifest::end_offsets`]).
    pub start_offsets: Option<BTreeMap<i32, i64>>,
    /// Keep waiting for new events instead of stopping at the end offsets (JSON lines only).
    pub follow: bool,
    pub progress: bool,
}

impl ExportRequest {
    pub fn selection(&self) -> Selection {
        Selection {
            from: self.from,
            to: None,
            tenant_id: self.tenant.clone(),
            aggregate_ids: self.aggregate_id.into_iter().collect(),
            event_types: self.event_types.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    pub read: u64,
    pub written: u64,
    /// Records that are not envelopes (they are in the dead-letter topic's business, not ours).
    pub skipped: u64,
    /// The offsets read per partition (not filled when following).
    pub ranges: Vec<PartitionRange>,
}

/// Write the selected envelopes to `out`, one JSON document per line, partition by partition in
/// offset order (so each aggregate's events come in sequence order).
pub fn export(
    settings: &Kafka,
    request: &ExportRequest,
    out: &mut dyn Write,
) -> anyhow::Result<ExportReport> {
    if request.follow {
        return follow(settings, request, out);
    }
    let mut sink = JsonlSink::new(out);
    let report = export_with(settings, request, &mut sink)?;
    sink.finish()?;
    Ok(report)
}

/// Export into any sink (JSON lines or Parquet), up to the end offsets taken at the start.
pub fn export_with(
    settings: &Kafka,
    request: &ExportRequest,
    sink: &mut dyn EventSink,
) -> anyhow::Result<ExportReport> {
    if request.follow {
        bail!("following new events writes JSON lines only");
    }
    let consumer = read::consumer(settings)?;
    let topic = settings.topic.as_str();
    let ranges = read::plan_ranges(
        &consumer,
        topic,
        request.from,
        None,
        request.start_offsets.as_ref(),
    )?;
    let total: u64 = ranges.iter().map(|r| r.len()).sum();
    let bar = progress_bar(request.progress, total);
    let selection = request.selection();
    let stop = AtomicBool::new(false);
    let mut report = ExportReport {
        ranges: ranges.clone(),
        ..Default::default()
    };
    for range in ranges {
        let before = bar.position();
        let part = read::read_range(
            &consumer,
            topic,
            range,
            &selection,
            sink,
            &stop,
            &mut |r, _| bar.set_position(before + r.read),
        )?;
        report.read += part.read;
        report.written += part.written;
        report.skipped += part.skipped;
        tracing::debug!(
            partition = range.partition,
            from_offset = range.from_offset,
            to_offset = range.to_offset,
            written = part.written,
            "partition exported"
        );
    }
    bar.finish_and_clear();
    Ok(report)
}

/// A progress bar on standard error when asked for (hidden otherwise).
pub fn progress_bar(shown: bool, total: u64) -> indicatif::ProgressBar {
    if !shown {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} exporting [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// JSON lines from the start offsets on, then every new event until the process is stopped.
fn follow(
    settings: &Kafka,
    request: &ExportRequest,
    out: &mut dyn Write,
) -> anyhow::Result<ExportReport> {
    let consumer = read::consumer(settings)?;
    let topic = settings.topic.as_str();
    let ranges = read::plan_ranges(
        &consumer,
        topic,
        request.from,
        None,
        request.start_offsets.as_ref(),
    )?;
    let mut starts = TopicPartitionList::new();
    for r in &ranges {
        starts.add_partition_offset(topic, r.partition, Offset::Offset(r.from_offset))?;
    }
    consumer.assign(&starts).context("assigning partitions")?;
    let selection = request.selection();
    let mut sink = JsonlSink::new(out);
    let mut report = ExportReport::default();
    loop {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            // Idle: what was written reaches the reader now.
            sink.flush()?;
            continue;
        };
        let message = message.context("consuming")?;
        report.read += 1;
        let raw = message.payload().unwrap_or_default();
        let timestamp_ms = message.timestamp().to_millis();
        match events::EventEnvelope::from_json(raw) {
            Ok(e) if read::selected(&selection, &e, timestamp_ms) => {
                sink.write(&Record {
                    envelope: &e,
                    raw,
                    partition: message.partition(),
                    offset: message.offset(),
                    timestamp_ms,
                })?;
                report.written += 1;
            }
            Ok(_) => {}
            Err(_) => report.skipped += 1,
        }
    }
}
