//! Publication of event batches to Kafka: to the aggregate's own partition, in sequence order,
//! every record acknowledged by all in-sync replicas (the producer is idempotent).

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::{headers, EventEnvelope};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::write::store::EventLog;

/// Why a batch could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("Kafka did not acknowledge the batch: {0}")]
    Kafka(String),
}

pub struct Publisher {
    producer: FutureProducer,
    probe: Arc<BaseConsumer>,
    topic: String,
    partitions: AtomicI32,
    /// The longest a publication may wait for its acknowledgements.
    timeout: Duration,
    /// Set when a produce failed; cleared by the next success. While set, commands check that a
    /// broker answers before they write anything, so a Kafka outage refuses commands up front.
    degraded: AtomicBool,
}

impl Publisher {
    pub async fn new(settings: &infra::settings::Kafka) -> anyhow::Result<Self> {
        let producer = infra::kafka::producer(settings)?;
        let probe: BaseConsumer = infra::kafka::base_config(settings).create()?;
        let partitions =
            infra::kafka::partition_count(settings, &settings.topic, Duration::from_secs(10))
                .await?;
        Ok(Self {
            producer,
            probe: Arc::new(probe),
            topic: settings.topic.clone(),
            partitions: AtomicI32::new(partitions),
            timeout: settings.message_timeout(),
            degraded: AtomicBool::new(false),
        })
    }

    /// The metadata client this publisher probes Kafka with (readiness shares it).
    pub fn probe(&self) -> Arc<BaseConsumer> {
        self.probe.clone()
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition a new aggregate is pinned to, for life: adding partitions later never moves
    /// an existing aggregate, so its events stay in order.
    pub fn partition_for(&self, aggregate_id: uuid::Uuid) -> i32 {
        let n = self.partitions.load(Ordering::Relaxed).max(1) as u64;
        // The low 64 bits of v4 and v7 UUIDs are random.
        ((aggregate_id.as_u128() as u64) % n) as i32
    }

    /// Re-read the partition count (ops may add partitions at any time), through the producer's
    /// own client: the answer also refreshes the producer's metadata, so it knows a partition
    /// before any aggregate is placed on it (a send to a partition it does not know fails).
    /// The count only grows: a partial answer never moves new aggregates back.
    pub async fn refresh_partitions(&self) {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let counted = tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            let t = metadata.topics().first().ok_or("topic not in metadata")?;
            match t.error() {
                Some(e) => Err(format!("{e:?}")),
                None if t.partitions().iter().any(|p| p.leader() < 0) => {
                    Err("a partition without leader".to_string())
                }
                None => Ok(t.partitions().len() as i32),
            }
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match counted {
            Ok(n) => {
                let before = self.partitions.fetch_max(n, Ordering::Relaxed);
                if before < n {
                    tracing::info!(topic = %self.topic, before, after = n, "partition count grew");
                }
            }
            Err(e) => tracing::debug!(error = %e, "partition refresh failed"),
        }
    }

    /// Before writing a command while Kafka is known to be failing: does a broker answer now?
    pub async fn check_available(&self) -> Result<(), PublishError> {
        if !self.degraded.load(Ordering::Relaxed) {
            return Ok(());
        }
        let probe = self.probe.clone();
        let answered = tokio::task::spawn_blocking(move || {
            probe
                .fetch_metadata(None, Duration::from_millis(1500))
                .is_ok_and(|m| !m.brokers().is_empty())
        })
        .await
        .unwrap_or(false);
        if answered {
            Ok(())
        } else {
            Err(PublishError::Kafka("no broker answers".into()))
        }
    }

    /// Produce the batch to `partition` and wait for every acknowledgement. The write path runs it
    /// inside its `kafka.produce` span.
    pub async fn publish(
        &self,
        partition: i32,
        batch: &[EventEnvelope],
    ) -> Result<(), PublishError> {
        let start = Instant::now();
        let mut deliveries = Vec::with_capacity(batch.len());
        for envelope in batch {
            let payload = envelope.to_json();
            let key = envelope.key();
            let record = FutureRecord::to(&self.topic)
                .partition(partition)
                .key(&key)
                .payload(&payload)
                .headers(record_headers(envelope));
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((e, _)) => return Err(self.failed(e.to_string())),
            }
        }
        // librdkafka enforces `message.timeout.ms` only loosely while a broker is going away
        // (in-flight requests wait for their own timeout); the bound promised to clients is ours.
        let all = futures::future::join_all(deliveries);
        let Ok(results) = tokio::time::timeout(self.timeout, all).await else {
            return Err(self.failed(format!(
                "no acknowledgement within {} ms",
                self.timeout.as_millis()
            )));
        };
        for result in results {
            match result {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(self.failed(e.to_string())),
                Err(_) => return Err(self.failed("producer dropped the delivery".into())),
            }
        }
        self.degraded.store(false, Ordering::Relaxed);
        metrics::histogram!("kafka_produce_seconds").record(start.elapsed().as_secs_f64());
        Ok(())
    }

    fn failed(&self, reason: String) -> PublishError {
        self.degraded.store(true, Ordering::Relaxed);
        metrics::counter!("kafka_produce_failures_total").increment(1);
        tracing::warn!(error = %reason, "publication failed");
        PublishError::Kafka(reason)
    }

    /// Wait for everything queued to be delivered (graceful shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "producer flush incomplete");
        }
    }
}

#[async_trait::async_trait]
impl EventLog for Publisher {
    fn partition_for(&self, aggregate_id: uuid::Uuid) -> i32 {
        Publisher::partition_for(self, aggregate_id)
    }

    async fn check_available(&self) -> Result<(), PublishError> {
        Publisher::check_available(self).await
    }

    async fn publish(&self, partition: i32, batch: &[EventEnvelope]) -> Result<(), PublishError> {
        Publisher::publish(self, partition, batch).await
    }
}

/// Type, version and metadata repeated as headers for tools that do not parse the JSON.
pub fn record_headers(e: &EventEnvelope) -> OwnedHeaders {
    let sequence = e.sequence.to_string();
    let version = e.schema_version.to_string();
    let event_id = e.event_id.to_string();
    let command_id = e.metadata.command_id.to_string();
    let mut h = OwnedHeaders::new_with_capacity(12);
    for (key, value) in [
        (headers::EVENT_ID, event_id.as_str()),
        (headers::EVENT_TYPE, e.event_type.as_str()),
        (headers::SCHEMA_VERSION, version.as_str()),
        (headers::AGGREGATE_TYPE, e.aggregate_type.as_str()),
        (headers::TENANT_ID, e.tenant_id.as_str()),
        (headers::SEQUENCE, sequence.as_str()),
        (headers::COMMAND_ID, command_id.as_str()),
        (headers::CORRELATION_ID, e.metadata.correlation_id.as_str()),
        (headers::CAUSATION_ID, e.metadata.causation_id.as_str()),
        (headers::CONTENT_TYPE, "application/json"),
    ] {
        h = h.insert(Header {
            key,
            value: Some(value),
        });
    }
    if let Some(tp) = &e.metadata.traceparent {
        h = h.insert(Header {
            key: headers::TRACEPARENT,
            value: Some(tp.as_str()),
        });
    }
    if let Some(ts) = &e.metadata.tracestate {
        h = h.insert(Header {
            key: headers::TRACESTATE,
            value: Some(ts.as_str()),
        });
    }
    h
}
