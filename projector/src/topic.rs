//! What the projector asks Kafka outside of consuming: the partitions of the topic and their
//! watermarks (for lag and rebuild progress), the offsets of a point in time (rebuild `--from`),
//! and the dead-letter topic that takes records which cannot be applied.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::batch::Record;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Low and high watermark of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    pub low: i64,
    pub high: i64,
}

/// A group-less client for metadata and offset lookups.
#[derive(Clone)]
pub struct TopicInfo {
    client: Arc<BaseConsumer>,
    topic: String,
}

impl TopicInfo {
    pub fn new(settings: &infra::settings::Kafka) -> anyhow::Result<Self> {
        let client: BaseConsumer = infra::kafka::base_config(settings)
            .create()
            .context("creating the Kafka metadata client")?;
        Ok(Self {
            client: Arc::new(client),
            topic: settings.topic.clone(),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&BaseConsumer, &str) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let client = self.client.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || f(&client, &topic))
            .await
            .context("Kafka lookup task")?
    }

    /// Every partition's watermarks.
    pub async fn watermarks(&self) -> anyhow::Result<BTreeMap<i32, Watermark>> {
        self.blocking(|client, topic| {
            let mut marks = BTreeMap::new();
            for partition in partitions(client, topic)? {
                let (low, high) = client
                    .fetch_watermarks(topic, partition, TIMEOUT)
                    .with_context(|| format!("watermarks of {topic}/{partition}"))?;
                marks.insert(partition, Watermark { low, high });
            }
            Ok(marks)
        })
        .await
    }

    /// Per partition, the offset of the first record at or after `at` (the high watermark when
    /// there is none).
    pub async fn offsets_at(&self, at: DateTime<Utc>) -> anyhow::Result<BTreeMap<i32, i64>> {
        let millis = at.timestamp_millis();
        self.blocking(move |client, topic| {
            let mut query = TopicPartitionList::new();
            let mut highs = BTreeMap::new();
            for partition in partitions(client, topic)? {
                query.add_partition_offset(topic, partition, Offset::Offset(millis))?;
                let (_, high) = client
                    .fetch_watermarks(topic, partition, TIMEOUT)
                    .with_context(|| format!("watermarks of {topic}/{partition}"))?;
                highs.insert(partition, high);
            }
            let answer = client
                .offsets_for_times(query, TIMEOUT)
                .context("offsets_for_times")?;
            let mut offsets = BTreeMap::new();
            for element in answer.elements_for_topic(topic) {
                let partition = element.partition();
                let high = highs.get(&partition).copied().unwrap_or(0);
                let offset = match element.offset() {
                    Offset::Offset(offset) => offset,
                    // No record at or after the time: start at the end.
                    _ => high,
                };
                offsets.insert(partition, offset);
            }
            Ok(offsets)
        })
        .await
    }
}

fn partitions(client: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = client
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("metadata of {topic}"))?;
    let Some(t) = metadata.topics().first() else {
        bail!("topic {topic} not in metadata");
    };
    if let Some(err) = t.error() {
        bail!("topic {topic}: {err:?}");
    }
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

/// Sends records that cannot be applied to the dead-letter topic.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    origin_topic: String,
}

impl DeadLetters {
    pub fn new(settings: &infra::settings::Kafka) -> anyhow::Result<Self> {
        Ok(Self {
            producer: infra::kafka::producer(settings)?,
            topic: settings.dead_letter_topic.clone(),
            origin_topic: settings.topic.clone(),
        })
    }

    /// Same key and payload, the original headers, and why and where from.
    pub async fn send(&self, projection: &str, record: &Record, error: &str) -> anyhow::Result<()> {
        use events::headers::*;
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let mut headers = OwnedHeaders::new();
        for (key, value) in &record.headers {
            if !key.starts_with("dlq.") {
                headers = headers.insert(Header {
                    key,
                    value: value.as_deref(),
                });
            }
        }
        for (key, value) in [
            (DLQ_ERROR, error),
            (DLQ_PROJECTION, projection),
            (DLQ_ORIGIN_TOPIC, self.origin_topic.as_str()),
            (DLQ_ORIGIN_PARTITION, partition.as_str()),
            (DLQ_ORIGIN_OFFSET, offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut message = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = &record.key {
            message = message.key(key.as_slice());
        }
        if let Some(payload) = &record.payload {
            message = message.payload(payload.as_slice());
        }
        self.producer
            .send(message, TIMEOUT)
            .await
            .map_err(|(err, _)| err)
            .with_context(|| format!("producing a dead letter to {}", self.topic))?;
        Ok(())
    }
}
