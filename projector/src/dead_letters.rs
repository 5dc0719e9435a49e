//! The dead letters of a projection: listing them from the dead-letter topic, and re-driving them
//! into the projection once their cause is fixed.
//!
//! A dead letter is the original record (key, payload, headers) plus the `dlq.*` headers the
//! consumer added ([`crate::topic::DeadLetters::send`]): why, which projection, and where from.
//! Listing reads the dead-letter topic from its beginning to its end as it is now and keeps the
//! records of one projection whose origin is this deployment's event topic.
//!
//! Re-driving decodes each of them again (a fixed build decodes what an older one could not),
//! groups them by aggregate and applies them through the projection's writer for its active
//! generation, once, exactly as the consumer would: the writes are idempotent and ordered by
//! version, so re-driving an event the view already reflects changes nothing. Each dead letter
//! applied is recorded by its original position (`projection_redriven`), so a second redrive does
//! not apply or count it again; those that fail again are reported with their error and stay.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::batch::{decode, group, Record};
use crate::control::ControlStore;
use crate::projections::Projection;

const TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a listing reads the dead-letter topic.
const READ_BOUND: Duration = Duration::from_secs(60);

/// One dead letter of a projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Its position in the dead-letter topic.
    pub partition: i32,
    pub offset: i64,
    /// Where the record came from.
    pub origin_topic: Option<String>,
    pub origin_partition: Option<i32>,
    pub origin_offset: Option<i64>,
    pub tenant_id: Option<String>,
    pub aggregate_id: Option<String>,
    pub event_type: Option<String>,
    pub sequence: Option<u64>,
    /// Why it could not be applied.
    pub error: String,
    /// When it was dead-lettered.
    pub at: Option<DateTime<Utc>>,
    /// Already re-driven into the active generation.
    pub redriven: bool,
}

impl DeadLetter {
    /// The record's original position, the key of `projection_redriven`.
    pub fn origin(&self) -> Option<(String, i32, i64)> {
        Some((
            self.origin_topic.clone()?,
            self.origin_partition?,
            self.origin_offset?,
        ))
    }
}

fn header<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|(key, _)| key == name)
        .and_then(|(_, value)| value.as_deref())
        .and_then(|value| std::str::from_utf8(value).ok())
}

/// Describe a record of the dead-letter topic (its `redriven` flag left false).
pub fn describe(record: &Record, timestamp_ms: Option<i64>) -> DeadLetter {
    use events::headers::*;
    DeadLetter {
        partition: record.partition,
        offset: record.offset,
        origin_topic: header(record, DLQ_ORIGIN_TOPIC).map(String::from),
        origin_partition: header(record, DLQ_ORIGIN_PARTITION).and_then(|v| v.parse().ok()),
        origin_offset: header(record, DLQ_ORIGIN_OFFSET).and_then(|v| v.parse().ok()),
        tenant_id: header(record, TENANT_ID).map(String::from),
        aggregate_id: record
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(String::from),
        event_type: header(record, EVENT_TYPE).map(String::from),
        sequence: header(record, SEQUENCE).and_then(|v| v.parse().ok()),
        error: header(record, DLQ_ERROR).unwrap_or_default().to_string(),
        at: timestamp_ms.and_then(DateTime::<Utc>::from_timestamp_millis),
        redriven: false,
    }
}

/// Every dead letter of `projection` whose origin is `settings.topic`, in topic order, with its
/// record.
pub async fn read(
    settings: &infra::settings::Kafka,
    projection: &str,
) -> anyhow::Result<Vec<(DeadLetter, Record)>> {
    let config = infra::kafka::base_config(settings);
    let dlq = settings.dead_letter_topic.clone();
    let origin = settings.topic.clone();
    let projection = projection.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config
            .clone()
            .set(
                "group.id",
                format!("dead-letters-reader-{}", uuid::Uuid::now_v7()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .context("creating the dead-letter reader")?;
        let metadata = consumer
            .fetch_metadata(Some(&dlq), TIMEOUT)
            .with_context(|| format!("metadata of {dlq}"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .first()
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        let mut ends = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        for partition in partitions {
            let (low, high) = consumer
                .fetch_watermarks(&dlq, partition, TIMEOUT)
                .with_context(|| format!("watermarks of {dlq}/{partition}"))?;
            if high > low {
                ends.insert(partition, high);
                assignment.add_partition_offset(&dlq, partition, Offset::Offset(low))?;
            }
        }
        let mut letters = Vec::new();
        if ends.is_empty() {
            return Ok(letters);
        }
        consumer.assign(&assignment)?;
        let deadline = Instant::now() + READ_BOUND;
        let mut done = BTreeSet::new();
        while done.len() < ends.len() {
            if Instant::now() > deadline {
                anyhow::bail!("reading {dlq} took longer than {READ_BOUND:?}");
            }
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.with_context(|| format!("reading {dlq}"))?;
            let end = ends.get(&message.partition()).copied().unwrap_or(0);
            if message.offset() + 1 >= end {
                done.insert(message.partition());
            }
            if message.offset() >= end {
                continue;
            }
            let record = Record::from_message(&message);
            if header(&record, events::headers::DLQ_PROJECTION) != Some(projection.as_str()) {
                continue;
            }
            if header(&record, events::headers::DLQ_ORIGIN_TOPIC) != Some(origin.as_str()) {
                continue;
            }
            let letter = describe(&record, message.timestamp().to_millis());
            letters.push((letter, record));
        }
        letters.sort_by_key(|(l, _)| (l.partition, l.offset));
        Ok(letters)
    })
    .await
    .context("dead-letter reader task")?
}

/// One dead letter that failed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedriveFailure {
    pub partition: i32,
    pub offset: i64,
    pub origin_partition: Option<i32>,
    pub origin_offset: Option<i64>,
    pub aggregate_id: Option<String>,
    pub error: String,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedriveReport {
    pub projection: String,
    pub generation: i32,
    /// Dead letters applied now.
    pub applied: usize,
    /// Dead letters that failed again (each with its error).
    pub failed: usize,
    /// Dead letters applied by an earlier redrive (not applied again).
    pub already_redriven: usize,
    pub failures: Vec<RedriveFailure>,
}

/// Re-drive every dead letter of `projection` not re-driven yet into `generation`.
pub async fn redrive(
    settings: &infra::Settings,
    store: &ControlStore,
    projection: &dyn Projection,
    generation: i32,
    actor: &str,
) -> anyhow::Result<RedriveReport> {
    let name = projection.name();
    let letters = read(&settings.kafka, name).await?;
    let done = store.redriven(name, generation).await?;
    let mut report = RedriveReport {
        projection: name.to_string(),
        generation,
        ..RedriveReport::default()
    };
    let failure = |letter: &DeadLetter, error: String| RedriveFailure {
        partition: letter.partition,
        offset: letter.offset,
        origin_partition: letter.origin_partition,
        origin_offset: letter.origin_offset,
        aggregate_id: letter.aggregate_id.clone(),
        error,
    };
    // One entry per original record (a record dead-lettered twice is re-driven once).
    let mut seen = BTreeSet::new();
    let mut candidates: Vec<(DeadLetter, Record)> = Vec::new();
    for (letter, record) in letters {
        let Some(origin) = letter.origin() else {
            report
                .failures
                .push(failure(&letter, "the dead letter names no origin".into()));
            continue;
        };
        if done.contains(&origin) {
            report.already_redriven += 1;
            continue;
        }
        if seen.insert(origin) {
            candidates.push((letter, record));
        }
    }
    let mut decoded = Vec::new();
    for (index, (letter, record)) in candidates.iter().enumerate() {
        match decode(record.payload.as_deref()) {
            Ok(event) => decoded.push((index, event)),
            Err(error) => report.failures.push(failure(letter, error)),
        }
    }
    let groups = group(decoded);
    if !groups.is_empty() {
        let writer = projection
            .writer(store.session().clone(), store.keyspace(), generation)
            .await
            .with_context(|| format!("preparing the writer of {name} g{generation}"))?;
        let batch: Vec<_> = groups.iter().map(|g| &g.events).collect();
        let results = writer.apply_batch(&batch).await;
        for (group, result) in groups.iter().zip(results) {
            match result {
                Ok(()) => {
                    for &index in &group.records {
                        let (letter, _) = &candidates[index];
                        if let Some(origin) = letter.origin() {
                            store
                                .mark_redriven(
                                    name,
                                    generation,
                                    (&origin.0, origin.1, origin.2),
                                    actor,
                                )
                                .await?;
                        }
                        report.applied += 1;
                        metrics::counter!(crate::control::REDRIVEN, "projection" => name)
                            .increment(1);
                    }
                }
                Err(error) => {
                    for &index in &group.records {
                        let (letter, _) = &candidates[index];
                        report.failures.push(failure(letter, error.to_string()));
                    }
                }
            }
        }
    }
    report.failed = report.failures.len();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_is_described_from_its_headers() {
        let h = |k: &str, v: &str| (k.to_string(), Some(v.as_bytes().to_vec()));
        let record = Record {
            partition: 1,
            offset: 4,
            key: Some(b"0195a4d2-0000-7000-8000-000000000001".to_vec()),
            payload: Some(b"{}".to_vec()),
            headers: vec![
                h("event_type", "ItemAdded"),
                h("sequence", "2"),
                h("tenant_id", "acme"),
                h("dlq.error", "order_detail.status: unknown status \"x\""),
                h("dlq.projection", "orders"),
                h("dlq.origin.topic", "orders.events"),
                h("dlq.origin.partition", "2"),
                h("dlq.origin.offset", "17"),
            ],
        };
        let letter = describe(&record, Some(1_700_000_000_000));
        assert_eq!((letter.partition, letter.offset), (1, 4));
        assert_eq!(letter.origin(), Some(("orders.events".to_string(), 2, 17)));
        assert_eq!(letter.event_type.as_deref(), Some("ItemAdded"));
        assert_eq!(letter.sequence, Some(2));
        assert_eq!(letter.tenant_id.as_deref(), Some("acme"));
        assert!(letter.error.contains("unknown status"));
        assert_eq!(
            letter.aggregate_id.as_deref(),
            Some("0195a4d2-0000-7000-8000-000000000001")
        );
        assert_eq!(letter.at.map(|t| t.timestamp()), Some(1_700_000_000));
        assert!(!letter.redriven);
    }
}
