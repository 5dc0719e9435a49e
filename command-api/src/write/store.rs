//! The seam between the write path and what it writes to: the aggregate rows and publish intents
//! ([`AggregateStore`], CQL in production) and the event log ([`EventLog`], Kafka). The write path
//! and the sweeper only speak to these two traits, so they run the same against the real stack and
//! against the in-memory doubles of [`super::memory`] in unit and route tests.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use events::EventEnvelope;
use uuid::Uuid;

use super::head::Head;
use super::CommandError;
use crate::domain::order::Order;
use crate::publisher::PublishError;

/// How fresh a read of an aggregate's row must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// The configured consistency (`LOCAL_QUORUM`): sees every acknowledged write.
    Quorum,
    /// The configured serial consistency (`LOCAL_SERIAL`): also settles an LWT still in flight, so
    /// nothing that races this read can be decided on a row about to change.
    Serial,
}

/// What one LWT writes to an aggregate's row.
pub struct NewRow<'a> {
    pub version: i64,
    pub state: &'a Order,
    pub partition: i32,
    pub pending: &'a [EventEnvelope],
    pub recent: &'a HashMap<String, String>,
    pub at: DateTime<Utc>,
}

/// One publish intent: the batch that ends at `version` of an aggregate, written before its LWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub version: i64,
    pub created_at: Option<DateTime<Utc>>,
    pub published: bool,
}

/// The aggregate rows and publish intents; every key carries the tenant.
#[async_trait]
pub trait AggregateStore: Send + Sync + 'static {
    /// Record that `tenant` writes to this store's topic, so that the sweepers sweep its intents.
    async fn register_tenant(&self, tenant: &str) -> Result<(), CommandError>;

    /// Every tenant that ever wrote to this store's topic.
    async fn tenants(&self) -> Result<Vec<String>, CommandError>;

    /// The aggregate's row, with whether its pending batch is recorded as published.
    async fn load(&self, tenant: &str, id: Uuid, read: Read) -> Result<Option<Head>, CommandError>;

    /// Record, before the LWT, that a batch ending at `version` may be committed at `at`.
    async fn write_intent(
        &self,
        tenant: &str,
        id: Uuid,
        version: i64,
        at: DateTime<Utc>,
    ) -> Result<(), CommandError>;

    /// One LWT: `INSERT … IF NOT EXISTS` when `expected` is 0, else `UPDATE … IF version =
    /// expected`. Returns whether it applied.
    async fn commit(
        &self,
        tenant: &str,
        id: Uuid,
        expected: i64,
        row: NewRow<'_>,
    ) -> Result<bool, CommandError>;

    /// Record on its intent that the batch ending at `version` (written at `at`) is in Kafka.
    async fn mark_published(
        &self,
        tenant: &str,
        id: Uuid,
        version: i64,
        at: DateTime<Utc>,
    ) -> Result<(), CommandError>;

    /// Every intent written in the bucket that starts at `bucket`.
    async fn intents(
        &self,
        tenant: &str,
        bucket: DateTime<Utc>,
    ) -> Result<Vec<Intent>, CommandError>;

    /// Where the sweepers got: every bucket before it was swept.
    async fn sweep_progress(&self, tenant: &str) -> Result<Option<DateTime<Utc>>, CommandError>;

    /// Move the sweepers' progress forward (never back, whatever the order of racing writers).
    async fn save_sweep_progress(
        &self,
        tenant: &str,
        until: DateTime<Utc>,
    ) -> Result<(), CommandError>;
}

/// The event log (a Kafka topic): each aggregate's batches go to the partition it was given once.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// The partition a new aggregate is pinned to, for life.
    fn partition_for(&self, aggregate_id: Uuid) -> i32;

    /// Refuse up front while the log is known to be down.
    async fn check_available(&self) -> Result<(), PublishError>;

    /// Append the batch to `partition`, every record acknowledged.
    async fn publish(&self, partition: i32, batch: &[EventEnvelope]) -> Result<(), PublishError>;
}

/// Intents are grouped by the 5-second span they were written in.
pub fn bucket_length() -> TimeDelta {
    TimeDelta::seconds(5)
}

pub fn bucket_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(bucket_length()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_whole_five_second_spans() {
        let t = DateTime::parse_from_rfc3339("2026-11-27T10:11:12.345Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(bucket_of(t).to_rfc3339(), "2026-11-27T10:11:10+00:00");
    }
}
