//! Kafka high watermarks for projection lag, from one shared metadata consumer.
//!
//! librdkafka's metadata and watermark calls block, so they run on the blocking pool; the whole
//! lookup is bounded so `/v1/projections` answers 503 instead of hanging when Kafka is down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer};

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

#[async_trait]
impl EndOffsets for KafkaEndOffsets {
    async fn end_offsets(&self, topic: &str) -> StoreResult<BTreeMap<i32, i64>> {
        let consumer = self.consumer.clone();
        let topic = topic.to_string();
        let lookup = tokio::task::spawn_blocking(move || -> Result<BTreeMap<i32, i64>, String> {
            let metadata = consumer
                .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
                .map_err(|e| format!("metadata of {topic}: {e}"))?;
            let Some(t) = metadata.topics().first() else {
                return Err(format!("topic {topic} not in metadata"));
            };
            if let Some(err) = t.error() {
                return Err(format!("topic {topic}: {err:?}"));
            }
            let mut ends = BTreeMap::new();
            for partition in t.partitions() {
                let (_low, high) = consumer
                    .fetch_watermarks(&topic, partition.id(), REQUEST_TIMEOUT)
                    .map_err(|e| format!("watermarks of {topic}/{}: {e}", partition.id()))?;
                ends.insert(partition.id(), high);
            }
            Ok(ends)
        });
        match tokio::time::timeout(TOTAL_TIMEOUT, lookup).await {
            Ok(Ok(Ok(ends))) => Ok(ends),
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
