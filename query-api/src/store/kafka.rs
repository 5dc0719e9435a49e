//! Kafka high watermarks for projection lag, and the offsets a build was seeded with, from one
//! shared metadata consumer.
//!
//! librdkafka's metadata and watermark calls block, so they run on the blocking pool; the whole
//! lookup is bounded so `/v1/projections` answers 503 instead of hanging when Kafka is down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{EndOffsets, StoreError, StoreResult};

/// Each broker request may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
/// The whole lookup (metadata and every partition) may take this long.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(4);

pub struct KafkaEndOffsets {
    consumer: Arc<BaseConsumer>,
}

impl KafkaEndOffsets {
    /// Creating the client does not contact the brokers.
    pub fn new(settings: &infra::settings::Kafka) -> anyhow::Result<Self> {
        use anyhow::Context;
        let consumer: BaseConsumer = infra::kafka::base_config(settings)
            .create()
            .context("creating the Kafka watermark client")?;
        Ok(Self {
            consumer: Arc::new(consumer),
        })
    }
}

/// partition → (low, high) watermarks of every partition of `topic`.
fn watermarks(consumer: &BaseConsumer, topic: &str) -> Result<BTreeMap<i32, (i64, i64)>, String> {
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let Some(t) = metadata.topics().first() else {
        return Err(format!("topic {topic} not in metadata"));
    };
    if let Some(err) = t.error() {
        return Err(format!("topic {topic}: {err:?}"));
    }
    let mut marks = BTreeMap::new();
    for partition in t.partitions() {
        let mark = consumer
            .fetch_watermarks(topic, partition.id(), REQUEST_TIMEOUT)
            .map_err(|e| format!("watermarks of {topic}/{}: {e}", partition.id()))?;
        marks.insert(partition.id(), mark);
    }
    Ok(marks)
}

/// partition → the first offset at or after `from` (the high watermark when there is none), as
/// the projector's `TopicInfo::offsets_at` seeds a build.
fn offsets_at(
    consumer: &BaseConsumer,
    topic: &str,
    from: DateTime<Utc>,
) -> Result<BTreeMap<i32, i64>, String> {
    let marks = watermarks(consumer, topic)?;
    let mut query = TopicPartitionList::new();
    for partition in marks.keys() {
        query
            .add_partition_offset(topic, *partition, Offset::Offset(from.timestamp_millis()))
            .map_err(|e| format!("offsets of {topic}/{partition} at {from}: {e}"))?;
    }
    let answer = consumer
        .offsets_for_times(query, REQUEST_TIMEOUT)
        .map_err(|e| format!("offsets of {topic} at {from}: {e}"))?;
    Ok(answer
        .elements_for_topic(topic)
        .iter()
        .map(|element| {
            let partition = element.partition();
            let high = marks.get(&partition).map_or(0, |(_, high)| *high);
            match element.offset() {
                Offset::Offset(offset) => (partition, offset),
                _ => (partition, high),
            }
        })
        .collect())
}

impl KafkaEndOffsets {
    /// Run a blocking lookup on the blocking pool, bounded by [`TOTAL_TIMEOUT`].
    async fn lookup<T: Send + 'static>(
        &self,
        lookup: impl FnOnce(&BaseConsumer) -> Result<T, String> + Send + 'static,
    ) -> StoreResult<T> {
        let consumer = self.consumer.clone();
        let task = tokio::task::spawn_blocking(move || lookup(&consumer));
        match tokio::time::timeout(TOTAL_TIMEOUT, task).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(detail))) => Err(StoreError::Unavailable {
                what: "reading Kafka watermarks",
                detail,
            }),
            Ok(Err(join)) => Err(StoreError::unavailable("reading Kafka watermarks")(&join)),
            Err(_) => Err(StoreError::Unavailable {
                what: "reading Kafka watermarks",
                detail: format!("no answer within {TOTAL_TIMEOUT:?}"),
            }),
        }
    }
}

#[async_trait]
impl EndOffsets for KafkaEndOffsets {
    async fn end_offsets(&self, topic: &str) -> StoreResult<BTreeMap<i32, i64>> {
        let topic = topic.to_string();
        self.lookup(move |consumer| {
            Ok(watermarks(consumer, &topic)?
                .into_iter()
                .map(|(partition, (_, high))| (partition, high))
                .collect())
        })
        .await
    }

    async fn start_offsets(
        &self,
        topic: &str,
        from: Option<DateTime<Utc>>,
    ) -> StoreResult<BTreeMap<i32, i64>> {
        let topic = topic.to_string();
        self.lookup(move |consumer| match from {
            Some(from) => offsets_at(consumer, &topic, from),
            None => Ok(watermarks(consumer, &topic)?
                .into_iter()
                .map(|(partition, (low, _))| (partition, low))
                .collect()),
        })
        .await
    }
}
