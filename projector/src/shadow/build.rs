//! Filling a shadow generation: a consumer of its own (partitions assigned by hand, no consumer
//! group joined, nothing committed to Kafka) reads each partition from the shadow's next offset up to a
//! target, and every batch is decoded, grouped and applied through the projection's writer for
//! the shadow generation exactly as a service consumer does ([`crate::batch`]). Records a service
//! consumer would send to the dead-letter topic are only counted and listed. The shadow's offsets
//! are written after each batch, so `GET /v1/projections` can show how far it has come.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::ProgressBar;
use infra::Settings;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use scylla::client::session::Session;
use serde::{Deserialize, Serialize};

use crate::batch::{apply_groups, decode, group, next_offsets, Group, Record};
use crate::projections::{Projection, ProjectionWriter};
use crate::registry::OffsetStore;

/// How long the first poll of a batch waits.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// How long a batch keeps gathering after its first record.
const LINGER: Duration = Duration::from_millis(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often progress is logged (the bar is redrawn continuously).
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Most dead letters listed one by one in the report (all are counted).
pub const DEAD_LETTERS_LISTED: usize = 10_000;
/// Attempts at writing the shadow's offsets before the shadow gives up.
const OFFSET_ATTEMPTS: u32 = 10;

/// A record the projection could not apply: a service consumer would have dead-lettered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub error: String,
}

/// The shadow generation being filled.
pub struct Builder {
    projection: &'static str,
    generation: i32,
    topic: String,
    consumer: StreamConsumer,
    writer: Arc<dyn ProjectionWriter>,
    offsets: OffsetStore,
    batch_size: usize,
    max_attempts: u32,
    /// Where the shadow started, per partition.
    pub starts: BTreeMap<i32, i64>,
    /// The next offset to apply, per partition.
    pub next: BTreeMap<i32, i64>,
    /// Records consumed (dead letters included).
    pub events: u64,
    /// Records that could not be applied (the first [`DEAD_LETTERS_LISTED`]).
    pub dead_letters: Vec<DeadLetter>,
    pub dead_letter_count: u64,
}

impl Builder {
    /// A builder of `generation` of `projection` starting at `starts` (already stored as its
    /// offsets by the caller).
    pub async fn new(
        settings: &Settings,
        session: Arc<Session>,
        projection: &Arc<dyn Projection>,
        generation: i32,
        starts: BTreeMap<i32, i64>,
    ) -> anyhow::Result<Self> {
        let name = projection.name();
        let keyspace = settings.cql.keyspace.as_str();
        let writer = projection
            .writer(session.clone(), keyspace, generation)
            .await
            .with_context(|| format!("preparing the statements of {name} g{generation}"))?;
        let offsets =
            OffsetStore::new(session, keyspace, name, generation, &settings.kafka.topic).await?;
        // Partitions are assigned by hand and nothing is committed: the consumer never joins a
        // group. librdkafka still wants a group id for `assign`; this one is the shadow's own,
        // never a service consumer group's (`projection.…`).
        let consumer: StreamConsumer = infra::kafka::base_config(&settings.kafka)
            .set(
                "group.id",
                format!("shadow.{keyspace}.{name}.g{generation}"),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "50")
            .create()
            .context("creating the shadow's Kafka consumer")?;
        Ok(Self {
            projection: name,
            generation,
            topic: settings.kafka.topic.clone(),
            consumer,
            writer,
            offsets,
            batch_size: settings.projector.batch_size.max(1),
            max_attempts: settings.projector.max_apply_attempts.max(1),
            next: starts.clone(),
            starts,
            events: 0,
            dead_letters: Vec::new(),
            dead_letter_count: 0,
        })
    }

    /// Events between the start and `targets`, and how many of them are applied.
    pub fn progress(&self, targets: &BTreeMap<i32, i64>) -> (u64, u64) {
        let mut done = 0u64;
        let mut total = 0u64;
        for (partition, &target) in targets {
            let start = self.starts.get(partition).copied().unwrap_or(0).min(target);
            let next = self.next.get(partition).copied().unwrap_or(start);
            total += u64::try_from(target - start).unwrap_or(0);
            done += u64::try_from(next.min(target) - start).unwrap_or(0);
        }
        (done, total)
    }

    /// Apply every record below `targets` (per partition, exclusive) that is not applied yet.
    pub async fn run_to(
        &mut self,
        targets: &BTreeMap<i32, i64>,
        bar: &ProgressBar,
    ) -> anyhow::Result<()> {
        let mut pending: BTreeSet<i32> = targets
            .iter()
            .filter(|(p, &target)| self.next.get(p).copied().unwrap_or(0) < target)
            .map(|(p, _)| *p)
            .collect();
        let (done, total) = self.progress(targets);
        bar.set_length(total);
        bar.set_position(done);
        if pending.is_empty() {
            return Ok(());
        }
        let mut assignment = TopicPartitionList::new();
        for partition in &pending {
            let next = self.next.get(partition).copied().unwrap_or(0);
            assignment
                .add_partition_offset(&self.topic, *partition, Offset::Offset(next))
                .context("positioning the shadow's consumer")?;
        }
        self.consumer
            .assign(&assignment)
            .context("assigning partitions to the shadow's consumer")?;
        tracing::info!(projection = self.projection, generation = self.generation, targets = ?targets, from = ?self.next, "shadow consuming up to these offsets");
        let mut logged = Instant::now();
        while !pending.is_empty() {
            let (records, passed) = self.gather(targets).await;
            if !records.is_empty() {
                self.process(records).await?;
            }
            // A partition that delivered a record at or past its target, or its end, has
            // delivered everything below the target: nothing more is to come from it.
            for partition in passed {
                if let Some(&target) = targets.get(&partition) {
                    let next = self.next.entry(partition).or_insert(target);
                    *next = (*next).max(target);
                }
            }
            pending.retain(|p| {
                targets
                    .get(p)
                    .is_some_and(|&target| self.next.get(p).copied().unwrap_or(0) < target)
            });
            let (done, total) = self.progress(targets);
            bar.set_position(done);
            if logged.elapsed() >= LOG_EVERY {
                logged = Instant::now();
                tracing::info!(
                    projection = self.projection,
                    generation = self.generation,
                    done,
                    total,
                    dead_letters = self.dead_letter_count,
                    "shadow build progress"
                );
            }
        }
        self.consumer
            .unassign()
            .context("unassigning the shadow's consumer")?;
        Ok(())
    }

    /// Records below their partition's target (at most a batch), and the partitions that are
    /// known to have nothing more below their target.
    async fn gather(&self, targets: &BTreeMap<i32, i64>) -> (Vec<Record>, BTreeSet<i32>) {
        let mut records = Vec::new();
        let mut passed = BTreeSet::new();
        let mut first_at: Option<Instant> = None;
        loop {
            let wait = first_at.map_or(IDLE_POLL, |t| LINGER.saturating_sub(t.elapsed()));
            match tokio::time::timeout(wait, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(message)) => {
                    let record = Record::from_message(&message);
                    let target = targets.get(&record.partition).copied().unwrap_or(0);
                    let next = self.next.get(&record.partition).copied().unwrap_or(0);
                    if record.offset >= target {
                        passed.insert(record.partition);
                    } else if record.offset >= next {
                        records.push(record);
                        first_at.get_or_insert_with(Instant::now);
                    }
                }
                Ok(Err(KafkaError::PartitionEOF(partition))) => {
                    passed.insert(partition);
                }
                Ok(Err(err)) => {
                    tracing::warn!(projection = self.projection, generation = self.generation, error = %err, "shadow consumer error");
                    if first_at.is_none() {
                        tokio::time::sleep(IDLE_POLL).await;
                        break;
                    }
                }
            }
            if records.len() >= self.batch_size || first_at.is_some_and(|t| t.elapsed() >= LINGER) {
                break;
            }
        }
        (records, passed)
    }

    /// Decode, group and apply one batch, then record its offsets.
    async fn process(&mut self, records: Vec<Record>) -> anyhow::Result<()> {
        let mut dead: Vec<(usize, String)> = Vec::new();
        let mut decoded = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            match decode(record.payload.as_deref()) {
                Ok(event) => decoded.push((index, event)),
                Err(error) => dead.push((index, error)),
            }
        }
        let groups = group(decoded);
        let rejected = self.apply(&groups).await;
        for (index, group) in groups.iter().enumerate() {
            if let Some(error) = rejected.get(&index) {
                dead.extend(group.records.iter().map(|&r| (r, error.clone())));
            }
        }
        dead.sort_by_key(|(index, _)| *index);
        for (index, error) in dead {
            let record = &records[index];
            tracing::warn!(
                projection = self.projection,
                generation = self.generation,
                partition = record.partition,
                offset = record.offset,
                %error,
                "record not applied (a service consumer would dead-letter it; the shadow only lists it)"
            );
            self.dead_letter_count += 1;
            if self.dead_letters.len() < DEAD_LETTERS_LISTED {
                self.dead_letters.push(DeadLetter {
                    partition: record.partition,
                    offset: record.offset,
                    error,
                });
            }
        }
        let batch_next = next_offsets(&records);
        let mut attempt = 0;
        let mut backoff = BACKOFF_MIN;
        while let Err(err) = self.offsets.save(&batch_next).await {
            attempt += 1;
            if attempt >= OFFSET_ATTEMPTS {
                return Err(err.context("writing the shadow's offsets"));
            }
            tracing::warn!(projection = self.projection, generation = self.generation, error = %format!("{err:#}"), attempt, "writing the shadow's offsets failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        for (partition, next) in batch_next {
            let entry = self.next.entry(partition).or_insert(next);
            *entry = (*entry).max(next);
        }
        self.events += records.len() as u64;
        Ok(())
    }

    /// Apply every group as a service consumer does ([`apply_groups`]). Returns the groups
    /// given up on.
    async fn apply(&self, groups: &[Group]) -> BTreeMap<usize, String> {
        let applied = apply_groups(
            self.writer.as_ref(),
            groups,
            self.max_attempts,
            (self.projection, self.generation),
            BACKOFF_MIN,
            |backoff| async move {
                tokio::time::sleep(backoff).await;
                Ok::<_, std::convert::Infallible>((backoff * 2).min(BACKOFF_MAX))
            },
        )
        .await;
        match applied {
            Ok(given_up) => given_up,
            Err(never) => match never {},
        }
    }
}
