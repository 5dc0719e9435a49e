//! One consumer of one generation of one projection: consumer group `projection.<name>.g<gen>`.
//!
//! The consumer runs on a blocking thread of its own, because librdkafka calls the rebalance
//! callback from inside `poll` and that callback must read CQL before it can hand out partitions:
//! - on assignment, each partition starts at the `next_offset` stored in `projection_offsets`
//!   (from the beginning when there is none); Kafka's own committed offsets are never used.
//!   Partitions added to the topic (`stack-admin topics`) are seen at the consumer's next metadata
//!   refresh (`kafka.metadata_refresh_ms`, 3 s), which rebalances the group: having no stored
//!   offset, they are consumed from their first record;
//! - on revocation, nothing is in flight — a batch is always applied and its offsets written
//!   before the next `poll` — except records polled into the batch being gathered, which are
//!   dropped: the partition's next owner starts from the stored offset, before them.
//!
//! A batch (up to `batch_size` records, or what arrived within a few milliseconds of the first) is
//! decoded, grouped by aggregate and handed to the projection's writer; records that cannot be
//! decoded, and aggregates whose apply is rejected `max_apply_attempts` times, go to the
//! dead-letter topic; an unavailable database is waited for, indefinitely. Only then are the
//! batch's offsets written. Stopping (shutdown, or the generation being retired) finishes the
//! batch in hand, writes its offsets and closes the consumer, which leaves the group cleanly.
//!
//! A consumer of the service runs behind its projection's [`Gate`] (operators' control, see
//! [`crate::control`]): paused, it abandons the batch in hand without writing its offsets and
//! stops; records an operator skipped are moved past without being applied; and offsets are
//! written only while the instance confirmed the control state within [`crate::control::FENCE`]
//! (else it waits), so that a reset never races a consumer that lost touch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use infra::Settings;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use scylla::client::session::Session;
use tokio::runtime::Handle;
use tracing::Instrument;

use crate::batch::{apply_groups, decode, group, next_offsets, Group, Record};
use crate::control::Gate;
use crate::projections::{Projection, ProjectionWriter};
use crate::registry::OffsetStore;
use crate::topic::DeadLetters;

/// How long the first poll of a batch waits (also how often a stop request is noticed).
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long a batch keeps gathering after its first record. With a backlog the batch fills from
/// the records librdkafka prefetched long before this; live, it is what an event waits at most
/// before its batch is applied, and it caps a consumer at 500 batches (offsets writes) a second.
const LINGER: Duration = Duration::from_millis(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a backoff looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);
/// The most trace contexts an apply span links to (OpenTelemetry's default span limit).
const MAX_LINKS: usize = 128;

/// How long a poll may block while a batch lingers: what is left of `linger`, rounded up to
/// whole milliseconds. librdkafka takes its timeout in milliseconds and truncates, so the last
/// fraction of a millisecond would become a non-blocking poll, spun on until the linger is over
/// (measured: a quarter of a live projector's CPU went to that spin and its clock reads).
fn poll_timeout(linger: Duration, elapsed: Duration) -> Duration {
    let left = linger.saturating_sub(elapsed);
    Duration::from_millis(u64::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u64::MAX))
}

/// What every consumer of a process shares.
pub struct Shared {
    pub settings: Settings,
    pub session: Arc<Session>,
    pub dead_letters: DeadLetters,
}

/// The consumer group of a projection generation. The keyspace is part of it: two deployments
/// (or test runs) sharing a Kafka cluster but not a keyspace must not share partitions.
pub fn group_id(keyspace: &str, projection: &str, generation: i32) -> String {
    format!("projection.{keyspace}.{projection}.g{generation}")
}

/// A running consumer.
pub struct WorkerHandle {
    pub projection: &'static str,
    pub generation: i32,
    stop: Arc<AtomicBool>,
    join: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl WorkerHandle {
    /// The consumer thread ended on its own (an error it could not get past).
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Finish the batch in hand, write its offsets, close the consumer.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        (&mut self.join).await.context("consumer thread")?
    }
}

impl Drop for WorkerHandle {
    /// A handle dropped without [`WorkerHandle::stop`] (the service's future was cancelled, or
    /// its owner panicked) still stops the consumer thread: nobody could reach it any more, and a
    /// runtime shutting down waits for its blocking threads, forever if they poll on.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Start consuming `generation` of `projection`, outside of operators' control (a rebuild's own
/// consumer).
pub async fn spawn(
    shared: Arc<Shared>,
    projection: Arc<dyn Projection>,
    generation: i32,
) -> anyhow::Result<WorkerHandle> {
    spawn_gated(shared, projection, generation, None).await
}

/// Start consuming `generation` of `projection` behind `gate` (pause, skips, the offsets fence).
pub async fn spawn_gated(
    shared: Arc<Shared>,
    projection: Arc<dyn Projection>,
    generation: i32,
    gate: Option<Arc<Gate>>,
) -> anyhow::Result<WorkerHandle> {
    let name = projection.name();
    let topic = shared.settings.kafka.topic.clone();
    let writer = projection
        .writer(
            shared.session.clone(),
            &shared.settings.cql.keyspace,
            generation,
        )
        .await
        .with_context(|| format!("preparing the statements of {name} g{generation}"))?;
    let offsets = OffsetStore::new(
        shared.session.clone(),
        &shared.settings.cql.keyspace,
        name,
        generation,
        &topic,
    )
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let worker = Worker {
        projection: name,
        generation,
        topic,
        shared,
        writer,
        offsets,
        stop: stop.clone(),
        runtime: Handle::current(),
        gate,
    };
    let join = tokio::task::spawn_blocking(move || worker.run());
    Ok(WorkerHandle {
        projection: name,
        generation,
        stop,
        join,
    })
}

/// The batch could not be finished because the worker is stopping; nothing of it was recorded,
/// so the partition's next owner applies it again.
struct Abandoned;

struct Worker {
    projection: &'static str,
    generation: i32,
    topic: String,
    shared: Arc<Shared>,
    writer: Arc<dyn ProjectionWriter>,
    offsets: OffsetStore,
    stop: Arc<AtomicBool>,
    runtime: Handle,
    gate: Option<Arc<Gate>>,
}

impl Worker {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// An operator paused the projection: apply nothing more, write no offsets.
    fn paused(&self) -> bool {
        self.gate.as_ref().is_some_and(|g| g.paused())
    }

    /// Wait until offsets may be written: the instance confirmed, within the fence, that the
    /// projection is not paused. Abandons when stopping or paused.
    async fn fenced(&self) -> Result<(), Abandoned> {
        let Some(gate) = &self.gate else {
            return Ok(());
        };
        let mut backoff = BACKOFF_MIN;
        loop {
            if gate.paused() {
                return Err(Abandoned);
            }
            if gate.fresh() {
                return Ok(());
            }
            tracing::warn!(
                projection = self.projection,
                generation = self.generation,
                "the control state was not confirmed recently; holding the offsets write"
            );
            backoff = self.pause(backoff).await?;
        }
    }

    fn run(self) -> anyhow::Result<()> {
        let group = group_id(
            &self.shared.settings.cql.keyspace,
            self.projection,
            self.generation,
        );
        let context = Rebalance {
            runtime: self.runtime.clone(),
            offsets: self.offsets.clone(),
            projection: self.projection,
            generation: self.generation,
            stop: self.stop.clone(),
            revoked: Mutex::new(Vec::new()),
            rebalanced: Arc::new(AtomicBool::new(true)),
        };
        let rebalanced = context.rebalanced.clone();
        let consumer: BaseConsumer<Rebalance> =
            infra::kafka::consumer_config(&self.shared.settings.kafka, &group)
                .create_with_context(context)
                .with_context(|| format!("creating consumer {group}"))?;
        consumer
            .subscribe(&[&self.topic])
            .with_context(|| format!("subscribing {group} to {}", self.topic))?;
        tracing::info!(projection = self.projection, generation = self.generation, %group, topic = %self.topic, "consumer started");
        while !self.stopping() {
            let records = self.gather(&consumer);
            // Stopping: leave the batch to the next owner (it starts from the stored offsets).
            // A partition assigned while stopping is positioned at its end, so a batch gathered
            // now must never be applied and recorded. Paused: the same, the next consumer after
            // the resume starts from the stored offsets.
            if self.stopping() || self.paused() {
                break;
            }
            if records.is_empty() {
                continue;
            }
            // Rebalances happen only inside `poll`, so between two batches: rows cached before
            // one may have been moved on by another instance since.
            if rebalanced.swap(false, Ordering::SeqCst) {
                self.writer.forget_cached();
            }
            let span = self.apply_span(&records);
            if self
                .runtime
                .block_on(self.process(records).instrument(span))
                .is_err()
            {
                tracing::info!(
                    projection = self.projection,
                    generation = self.generation,
                    "batch abandoned on stop; its offsets were not written"
                );
                break;
            }
        }
        // Dropping closes the consumer: it leaves the group, which revokes its partitions.
        drop(consumer);
        tracing::info!(projection = self.projection, generation = self.generation, %group, "consumer closed");
        Ok(())
    }

    /// Poll until the batch is full, a few milliseconds passed since its first record, or nothing
    /// came for [`IDLE_POLL`].
    fn gather(&self, consumer: &BaseConsumer<Rebalance>) -> Vec<Record> {
        let batch_size = self.shared.settings.projector.batch_size.max(1);
        let mut records: Vec<Record> = Vec::new();
        let mut first_at: Option<Instant> = None;
        loop {
            let timeout = first_at.map_or(IDLE_POLL, |t| poll_timeout(LINGER, t.elapsed()));
            let polled = consumer.poll(timeout);
            // A rebalance runs inside `poll`: records gathered *before* it from partitions it took
            // away must go (their next owner starts from the stored offset). A record this very
            // poll returned comes from the assignment as it is now, so it is kept. Checked after
            // every poll, idle ones included, so a revocation is never held over to drop records
            // of a later assignment of the same partitions.
            let revoked = consumer.context().take_revoked();
            if !revoked.is_empty() {
                records.retain(|r| !revoked.contains(&r.partition));
                if records.is_empty() {
                    first_at = None;
                }
            }
            match polled {
                Some(Ok(message)) => {
                    records.push(Record::from_message(&message));
                    first_at.get_or_insert_with(Instant::now);
                }
                Some(Err(err)) => {
                    tracing::warn!(projection = self.projection, generation = self.generation, error = %err, "consumer error");
                    if first_at.is_none() {
                        std::thread::sleep(IDLE_POLL);
                        break;
                    }
                }
                None if first_at.is_none() => break,
                None => {}
            }
            let lingered = first_at.is_some_and(|t| t.elapsed() >= LINGER);
            if records.len() >= batch_size || lingered || self.stopping() {
                break;
            }
        }
        records
    }

    /// The span of one batch: when traces are exported, a child of the trace context its events
    /// carry if they all carry one (a single command's events), else linked to each of them.
    fn apply_span(&self, records: &[Record]) -> tracing::Span {
        let span = tracing::info_span!(
            "projector.apply",
            otel.kind = "consumer",
            otel.name = %format_args!("apply {}", self.projection),
            projection = self.projection,
            generation = self.generation,
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.batch.message_count = records.len(),
        );
        if !infra::telemetry::exporting() {
            return span;
        }
        let mut contexts: Vec<(&str, Option<&str>)> = Vec::new();
        for record in records {
            if let Some(context) = record.trace_context() {
                if !contexts.contains(&context) {
                    contexts.push(context);
                }
            }
        }
        match contexts.as_slice() {
            [(traceparent, tracestate)] => {
                infra::telemetry::set_remote_parent(&span, traceparent, *tracestate);
            }
            many => {
                for (traceparent, tracestate) in many.iter().take(MAX_LINKS) {
                    infra::telemetry::add_remote_link(&span, traceparent, *tracestate);
                }
            }
        }
        span
    }

    async fn process(&self, records: Vec<Record>) -> Result<(), Abandoned> {
        let started = Instant::now();
        let mut dead: Vec<(usize, String)> = Vec::new();
        let mut decoded = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            if self
                .gate
                .as_ref()
                .is_some_and(|g| g.skipped(record.partition, record.offset))
            {
                // Moved past, not applied: its offset still counts in the batch's offsets.
                crate::control::skipped(self.projection);
                tracing::warn!(
                    projection = self.projection,
                    generation = self.generation,
                    partition = record.partition,
                    offset = record.offset,
                    "record skipped by an operator; not applied"
                );
                continue;
            }
            match decode(record.payload.as_deref()) {
                Ok(event) => decoded.push((index, event)),
                Err(error) => dead.push((index, error)),
            }
        }
        let groups = group(decoded);
        let rejected = self.apply(&groups).await?;
        let mut applied = 0;
        for (index, group) in groups.iter().enumerate() {
            match rejected.get(&index) {
                Some(error) => dead.extend(group.records.iter().map(|&r| (r, error.clone()))),
                None => applied += group.records.len(),
            }
        }
        dead.sort_by_key(|(index, _)| *index);
        for (index, error) in &dead {
            self.dead_letter(&records[*index], error).await?;
        }
        let next = next_offsets(&records);
        let mut backoff = BACKOFF_MIN;
        self.fenced().await?;
        while let Err(err) = self.offsets.save(&next).await {
            tracing::warn!(projection = self.projection, generation = self.generation, error = %format!("{err:#}"), "writing offsets failed; retrying");
            backoff = self.pause(backoff).await?;
            self.fenced().await?;
        }
        crate::metrics::events_applied(self.projection, applied);
        crate::metrics::apply_seconds(self.projection, started.elapsed().as_secs_f64());
        tracing::debug!(
            projection = self.projection,
            generation = self.generation,
            records = records.len(),
            aggregates = groups.len(),
            dead_letters = dead.len(),
            offsets = ?next,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch applied"
        );
        Ok(())
    }

    /// Apply every group ([`apply_groups`]); abandoned when asked to stop while retrying.
    async fn apply(&self, groups: &[Group]) -> Result<BTreeMap<usize, String>, Abandoned> {
        apply_groups(
            self.writer.as_ref(),
            groups,
            self.shared.settings.projector.max_apply_attempts,
            (self.projection, self.generation),
            BACKOFF_MIN,
            |backoff| self.pause(backoff),
        )
        .await
    }

    async fn dead_letter(&self, record: &Record, error: &str) -> Result<(), Abandoned> {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self
                .shared
                .dead_letters
                .send(self.projection, record, error)
                .await
            {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(projection = self.projection, error = %format!("{err:#}"), "dead-letter produce failed; retrying");
                    backoff = self.pause(backoff).await?;
                }
            }
        }
        crate::metrics::dead_letter(self.projection);
        tracing::warn!(
            projection = self.projection,
            generation = self.generation,
            partition = record.partition,
            offset = record.offset,
            %error,
            "record dead-lettered"
        );
        Ok(())
    }

    /// Sleep `backoff` (abandoning when asked to stop) and return the next, doubled backoff.
    async fn pause(&self, backoff: Duration) -> Result<Duration, Abandoned> {
        let until = Instant::now() + backoff;
        loop {
            if self.stopping() {
                return Err(Abandoned);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok((backoff * 2).min(BACKOFF_MAX));
            }
            tokio::time::sleep(left.min(STOP_CHECK)).await;
        }
    }
}

/// The consumer context: positions assigned partitions at their stored offsets and remembers
/// revoked ones so that the batch being gathered can drop their records.
struct Rebalance {
    runtime: Handle,
    offsets: OffsetStore,
    projection: &'static str,
    generation: i32,
    stop: Arc<AtomicBool>,
    revoked: Mutex<Vec<i32>>,
    /// Set by every assignment change; the worker then empties its writer's row cache.
    rebalanced: Arc<AtomicBool>,
}

impl Rebalance {
    fn take_revoked(&self) -> Vec<i32> {
        let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *revoked)
    }

    /// The stored offsets, waiting for CQL as long as it takes (unless stopping: then `None`).
    fn stored_offsets(&self) -> Option<BTreeMap<i32, i64>> {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.runtime.block_on(self.offsets.load()) {
                Ok(offsets) => return Some(offsets),
                Err(err) => {
                    tracing::warn!(projection = self.projection, generation = self.generation, error = %format!("{err:#}"), "reading offsets on assignment failed; retrying");
                }
            }
            let until = Instant::now() + backoff;
            while Instant::now() < until {
                if self.stop.load(Ordering::SeqCst) {
                    return None;
                }
                std::thread::sleep(STOP_CHECK);
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, partitions: &TopicPartitionList) {
        let stored = self.stored_offsets();
        let mut assignment = TopicPartitionList::with_capacity(partitions.count());
        let mut starts = Vec::new();
        for element in partitions.elements() {
            let partition = element.partition();
            let offset = match stored.as_ref() {
                Some(stored) => stored
                    .get(&partition)
                    .map_or(Offset::Beginning, |next| Offset::Offset(*next)),
                // Stopping before the offsets could be read: assign (the protocol wants it) but
                // nothing from these partitions will be applied.
                None => Offset::End,
            };
            if stored.is_none() {
                self.revoked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(partition);
            }
            starts.push((partition, offset));
            if let Err(err) = assignment.add_partition_offset(element.topic(), partition, offset) {
                tracing::error!(partition, error = %err, "cannot position partition");
            }
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(&assignment),
            _ => consumer.assign(&assignment),
        };
        match result {
            Ok(()) => {
                tracing::info!(projection = self.projection, generation = self.generation, partitions = ?starts, "partitions assigned")
            }
            Err(err) => {
                tracing::error!(projection = self.projection, generation = self.generation, error = %err, "assigning partitions failed")
            }
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, partitions: &TopicPartitionList) {
        let revoked: Vec<i32> = partitions
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(revoked.iter().copied());
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(partitions),
            _ => consumer.unassign(),
        };
        match result {
            Ok(()) => {
                tracing::info!(projection = self.projection, generation = self.generation, partitions = ?revoked, "partitions revoked")
            }
            Err(err) => {
                tracing::error!(projection = self.projection, generation = self.generation, error = %err, "revoking partitions failed")
            }
        }
    }
}

impl ClientContext for Rebalance {}

impl ConsumerContext for Rebalance {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        self.rebalanced.store(true, Ordering::SeqCst);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(consumer, partitions)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(consumer, partitions)
            }
            other => {
                tracing::error!(projection = self.projection, generation = self.generation, error = ?other, "rebalance error; dropping the assignment");
                let all: Vec<i32> = match consumer.assignment() {
                    Ok(assigned) => assigned.elements().iter().map(|e| e.partition()).collect(),
                    Err(_) => Vec::new(),
                };
                self.revoked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(all);
                if let Err(err) = consumer.unassign() {
                    tracing::error!(error = %err, "unassign failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_generation_of_a_projection_has_its_own_consumer_group() {
        assert_eq!(
            group_id("orders", "orders", 1),
            "projection.orders.orders.g1"
        );
        assert_eq!(
            group_id("orders", "order_history", 12),
            "projection.orders.order_history.g12"
        );
        assert_ne!(group_id("a", "orders", 1), group_id("b", "orders", 1));
    }

    #[test]
    fn a_lingering_poll_blocks_for_whole_milliseconds_until_the_linger_is_over() {
        let ms = Duration::from_millis;
        let linger = ms(2);
        assert_eq!(poll_timeout(linger, Duration::ZERO), ms(2));
        assert_eq!(poll_timeout(linger, Duration::from_micros(1100)), ms(1));
        // Less than a millisecond left: still a blocking poll, not a spin.
        assert_eq!(poll_timeout(linger, Duration::from_micros(1999)), ms(1));
        assert_eq!(poll_timeout(linger, ms(2)), Duration::ZERO);
        assert_eq!(poll_timeout(linger, ms(5)), Duration::ZERO);
    }
}
