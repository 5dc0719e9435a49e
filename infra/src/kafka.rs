//! Kafka clients with the project's guarantees: an idempotent producer that waits for every
//! in-sync replica, consumers that never commit on their own, and idempotent topic administration.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;

use crate::settings::Kafka;

/// The base configuration every client shares (brokers, TLS/SASL extras).
pub fn base_config(settings: &Kafka) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    for (key, value) in &settings.properties {
        config.set(key, value);
    }
    config
}

/// Producer for events: acks from all in-sync replicas, idempotence on, bounded delivery time.
///
/// A record sent to an explicit partition that the producer's cached metadata does not know
/// fails at once (`UnknownPartition`), so the producer refreshes the topic's metadata every
/// `metadata_refresh_ms` as consumers do: partitions added to the topic can be produced to within
/// that interval (librdkafka's default is five minutes).
pub fn producer(settings: &Kafka) -> anyhow::Result<FutureProducer> {
    base_config(settings)
        .set(
            "topic.metadata.refresh.interval.ms",
            settings.metadata_refresh_ms.max(100).to_string(),
        )
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set(
            "max.in.flight.requests.per.connection",
            settings.max_in_flight.clamp(1, 5).to_string(),
        )
        .set("linger.ms", settings.linger_ms.to_string())
        .set(
            "message.timeout.ms",
            settings.message_timeout_ms.to_string(),
        )
        .set("compression.type", "lz4")
        .create()
        .context("creating the Kafka producer")
}

/// Consumer configuration for one consumer group: offsets are stored by the application only after
/// the downstream write succeeded, and never committed to Kafka automatically.
///
/// The topic's metadata is refreshed every `metadata_refresh_ms` (librdkafka's default is five
/// minutes): a member that sees the partition count grow rejoins the group, so partitions added by
/// `stack-admin topics` are assigned, and consumed from their beginning, within that interval.
pub fn consumer_config(settings: &Kafka, group_id: &str) -> ClientConfig {
    let mut config = base_config(settings);
    config
        .set("group.id", group_id)
        .set(
            "topic.metadata.refresh.interval.ms",
            settings.metadata_refresh_ms.max(100).to_string(),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.queue.backoff.ms", "5")
        .set("fetch.wait.max.ms", "50")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("partition.assignment.strategy", "cooperative-sticky");
    config
}

pub fn admin(settings: &Kafka) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    base_config(settings)
        .create()
        .context("creating the Kafka admin client")
}

/// Number of partitions of `topic`, by metadata requests. A topic just created reaches every
/// broker's metadata cache a moment later, so "unknown topic" and "leader not available" are
/// retried until `timeout`.
pub async fn partition_count(
    settings: &Kafka,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<i32> {
    let config = base_config(settings);
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create().context("creating a metadata client")?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let metadata = client
                .fetch_metadata(Some(&topic), left.max(Duration::from_millis(100)))
                .with_context(|| format!("fetching metadata of {topic}"))?;
            let problem = match metadata.topics().first() {
                None => "not in metadata".to_string(),
                Some(t) => match t.error() {
                    Some(err) => format!("{err:?}"),
                    None if t.partitions().is_empty() => "no partitions yet".to_string(),
                    None if t.partitions().iter().any(|p| p.leader() < 0) => {
                        "a partition without leader".to_string()
                    }
                    None => return Ok(t.partitions().len() as i32),
                },
            };
            if std::time::Instant::now() >= deadline {
                bail!("topic {topic}: {problem}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .context("metadata task")?
}

/// A metadata request answered by a broker: the cluster is reachable.
pub async fn ping(settings: &Kafka, timeout: Duration) -> anyhow::Result<usize> {
    let config = base_config(settings);
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create().context("creating a metadata client")?;
        let metadata = client
            .fetch_metadata(None, timeout)
            .context("Kafka metadata request")?;
        if metadata.brokers().is_empty() {
            bail!("no brokers in metadata");
        }
        Ok(metadata.brokers().len())
    })
    .await
    .context("metadata task")?
}

/// Create the event and dead-letter topics if missing, and grow the event topic's partitions up to
/// the configured count (never shrinks: Kafka cannot).
pub async fn ensure_topics(settings: &Kafka) -> anyhow::Result<()> {
    let admin = admin(settings)?;
    let retention = settings.retention_ms.to_string();
    let min_isr = settings.min_insync_replicas.to_string();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for (name, partitions) in [
        (&settings.topic, settings.partitions),
        (&settings.dead_letter_topic, settings.partitions.min(3)),
    ] {
        let topic = NewTopic::new(
            name,
            partitions,
            TopicReplication::Fixed(settings.replication_factor),
        )
        .set("retention.ms", &retention)
        .set("min.insync.replicas", &min_isr)
        .set("cleanup.policy", "delete");
        let results = admin
            .create_topics([&topic], &opts)
            .await
            .context("create_topics")?;
        for result in results {
            match result {
                Ok(topic) => tracing::info!(%topic, partitions, "topic created"),
                Err((topic, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::debug!(%topic, "topic exists")
                }
                Err((topic, code)) => bail!("creating topic {topic}: {code}"),
            }
        }
    }
    // Both topics answer metadata with a leader for every partition before this returns, so a
    // client started right after never sees "unknown topic".
    partition_count(
        settings,
        &settings.dead_letter_topic,
        Duration::from_secs(30),
    )
    .await?;
    let current = partition_count(settings, &settings.topic, Duration::from_secs(30)).await?;
    if current < settings.partitions {
        let grow = NewPartitions::new(&settings.topic, settings.partitions as usize);
        for result in admin
            .create_partitions([&grow], &opts)
            .await
            .context("create_partitions")?
        {
            if let Err((topic, code)) = result {
                bail!("growing {topic}: {code}");
            }
        }
        tracing::info!(topic = %settings.topic, from = current, to = settings.partitions, "partitions added");
    }
    Ok(())
}

/// Header values as a map, for decoding and tests.
pub fn header_map(headers: Option<&rdkafka::message::BorrowedHeaders>) -> HashMap<String, String> {
    use rdkafka::message::Headers;
    let mut map = HashMap::new();
    if let Some(headers) = headers {
        for header in headers.iter() {
            if let Some(value) = header.value {
                map.insert(
                    header.key.to_string(),
                    String::from_utf8_lossy(value).into_owned(),
                );
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_refresh_the_topic_metadata_every_few_seconds() {
        let mut settings = Kafka::default();
        assert_eq!(settings.metadata_refresh_ms, 3_000);
        settings.metadata_refresh_ms = 4_000;
        let consumer = consumer_config(&settings, "g");
        assert_eq!(
            consumer.get("topic.metadata.refresh.interval.ms"),
            Some("4000")
        );
        // A new partition without stored offsets starts at its beginning.
        assert_eq!(consumer.get("auto.offset.reset"), Some("earliest"));
    }
}
