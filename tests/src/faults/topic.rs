//! The events topic, read once and followed: a consumer of the suite's own reads every record
//! from the beginning in a thread and keeps, per aggregate, its events in topic order. A check
//! waits until it has read up to the end offsets as they are at that moment, then looks.
//!
//! `tests::read_topic` reads the same records the same way, but from the beginning at every call
//! and within a fixed 30 s: with tens of thousands of records a check after every trial would
//! re-read the whole topic each time and, in a debug build, run into that bound.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use events::EventEnvelope;
use infra::Settings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use uuid::Uuid;

/// One event of an aggregate as the topic holds it.
#[derive(Debug, Clone)]
pub struct TopicEvent {
    pub partition: i32,
    pub offset: i64,
    pub sequence: u64,
    pub event_id: Uuid,
    pub event_type: String,
}

#[derive(Default)]
struct State {
    /// Per partition, the offset of the next record to read.
    positions: BTreeMap<i32, i64>,
    events: HashMap<Uuid, Vec<TopicEvent>>,
    records: usize,
    /// Records that are not an envelope: (partition, offset, error).
    undecodable: Vec<(i32, i64, String)>,
    failed: Option<String>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The follower; stops its thread when dropped.
pub struct TopicFollower {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TopicFollower {
    /// Start reading every partition of `settings.kafka.topic` from its beginning.
    pub fn start(settings: &Settings) -> anyhow::Result<Self> {
        let topic = settings.kafka.topic.clone();
        let consumer: BaseConsumer = infra::kafka::base_config(&settings.kafka)
            .set("group.id", format!("faults-reader-{}", Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "100")
            .create()
            .context("creating the topic reader")?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .context("reading the topic's metadata")?;
        let partitions: Vec<i32> = metadata
            .topics()
            .first()
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            bail!("{topic} has no partitions");
        }
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(&topic, *p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let state = Arc::new(Mutex::new(State {
            positions: partitions.iter().map(|p| (*p, 0)).collect(),
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::Builder::new()
                .name("faults-topic".into())
                .spawn(move || follow(&consumer, &state, &stop))?
        };
        Ok(Self {
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// Wait until every partition has been read up to `ends` (high watermarks).
    pub async fn caught_up(
        &self,
        ends: &BTreeMap<i32, i64>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let behind: Vec<String> = {
                let state = lock(&self.state);
                if let Some(failed) = &state.failed {
                    bail!("the topic reader stopped: {failed}");
                }
                ends.iter()
                    .filter_map(|(p, end)| {
                        let at = state.positions.get(p).copied();
                        match at {
                            Some(at) if at >= *end => None,
                            Some(at) => Some(format!("p{p}: {at} < {end}")),
                            None => Some(format!("p{p}: not assigned")),
                        }
                    })
                    .collect()
            };
            if behind.is_empty() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "the topic reader did not reach the end offsets within {timeout:?}: {behind:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The events of `aggregate` below `ends` (the offsets [`TopicFollower::caught_up`] waited
    /// for), in topic order, duplicates included: what `tests::read_topic` would have returned
    /// for it when `ends` were measured, nothing the reader has taken in since.
    pub fn events_of(&self, aggregate: Uuid, ends: &BTreeMap<i32, i64>) -> Vec<TopicEvent> {
        lock(&self.state)
            .events
            .get(&aggregate)
            .map(|events| {
                events
                    .iter()
                    .filter(|e| e.offset < ends.get(&e.partition).copied().unwrap_or(0))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Records read so far, and those that were not envelopes (`partition/offset: error`).
    pub fn counts(&self) -> (usize, Vec<String>) {
        let state = lock(&self.state);
        (
            state.records,
            state
                .undecodable
                .iter()
                .map(|(p, o, e)| format!("{p}/{o}: {e}"))
                .collect(),
        )
    }
}

impl Drop for TopicFollower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn follow(consumer: &BaseConsumer, state: &Mutex<State>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        // Errors here are transient (a broker down during a fault): librdkafka reconnects.
        let Ok(message) = message else {
            continue;
        };
        let (partition, offset) = (message.partition(), message.offset());
        let decoded = EventEnvelope::from_json(message.payload().unwrap_or_default());
        let mut state = lock(state);
        let position = state.positions.entry(partition).or_insert(0);
        if offset < *position {
            // Already read (a reconnect re-fetching): the topic order is kept as first read.
            continue;
        }
        *position = offset + 1;
        state.records += 1;
        match decoded {
            Ok(e) => state
                .events
                .entry(e.aggregate_id)
                .or_default()
                .push(TopicEvent {
                    partition,
                    offset,
                    sequence: e.sequence,
                    event_id: e.event_id,
                    event_type: e.event_type,
                }),
            Err(e) => state.undecodable.push((partition, offset, format!("{e}"))),
        }
    }
}
