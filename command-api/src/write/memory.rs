//! In-memory [`AggregateStore`] and [`EventLog`] with the same semantics as CQL and Kafka where the
//! write path depends on them (an LWT applies only on the expected version; a log can be down). For
//! unit and route tests only: several write paths over one store behave like several instances
//! over one database. Integration tests run against the real stack.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use events::{EventEnvelope, ORDER_AGGREGATE};
use uuid::Uuid;

use super::head::Head;
use super::store::{bucket_of, AggregateStore, EventLog, Intent, NewRow, Read};
use super::CommandError;
use crate::publisher::PublishError;

/// (tenant, bucket, aggregate id, version) of a publish intent.
type IntentKey = (String, DateTime<Utc>, Uuid, i64);

#[derive(Default)]
struct Tables {
    rows: HashMap<(String, Uuid), Head>,
    /// (tenant, bucket, aggregate id, version) -> (created at, published)
    intents: BTreeMap<IntentKey, (DateTime<Utc>, bool)>,
    progress: HashMap<String, DateTime<Utc>>,
    tenants: BTreeSet<String>,
}

/// Aggregate rows and intents of every tenant in memory.
pub struct MemoryStore {
    /// The tenant [`MemoryStore::version`] looks at.
    tenant: String,
    tables: Mutex<Tables>,
    /// Rows read, by kind (tests count confirmations).
    pub serial_reads: AtomicUsize,
    pub quorum_reads: AtomicUsize,
}

impl MemoryStore {
    pub fn new(tenant: &str) -> Self {
        Self {
            tenant: tenant.to_string(),
            tables: Mutex::new(Tables::default()),
            serial_reads: AtomicUsize::new(0),
            quorum_reads: AtomicUsize::new(0),
        }
    }

    fn tables(&self) -> Result<std::sync::MutexGuard<'_, Tables>, CommandError> {
        self.tables
            .lock()
            .map_err(|_| CommandError::Internal("memory store poisoned".into()))
    }

    /// The stored version of an aggregate of the store's tenant (0 when absent).
    pub fn version(&self, id: Uuid) -> i64 {
        self.version_of(&self.tenant, id)
    }

    /// The stored version of an aggregate of `tenant` (0 when absent).
    pub fn version_of(&self, tenant: &str, id: Uuid) -> i64 {
        self.tables()
            .ok()
            .and_then(|t| t.rows.get(&(tenant.to_string(), id)).map(|h| h.version))
            .unwrap_or(0)
    }
}

#[async_trait]
impl AggregateStore for MemoryStore {
    async fn register_tenant(&self, tenant: &str) -> Result<(), CommandError> {
        self.tables()?.tenants.insert(tenant.to_string());
        Ok(())
    }

    async fn tenants(&self) -> Result<Vec<String>, CommandError> {
        Ok(self.tables()?.tenants.iter().cloned().collect())
    }

    async fn load(&self, tenant: &str, id: Uuid, read: Read) -> Result<Option<Head>, CommandError> {
        match read {
            Read::Quorum => self.quorum_reads.fetch_add(1, Ordering::Relaxed),
            Read::Serial => self.serial_reads.fetch_add(1, Ordering::Relaxed),
        };
        let tables = self.tables()?;
        let Some(mut head) = tables.rows.get(&(tenant.to_string(), id)).cloned() else {
            return Ok(None);
        };
        head.pending_published = match head.pending.last() {
            Some(last) => tables
                .intents
                .get(&(
                    tenant.to_string(),
                    bucket_of(last.occurred_at),
                    id,
                    head.version,
                ))
                .is_some_and(|(_, published)| *published),
            None => true,
        };
        Ok(Some(head))
    }

    async fn write_intent(
        &self,
        tenant: &str,
        id: Uuid,
        version: i64,
        at: DateTime<Utc>,
    ) -> Result<(), CommandError> {
        self.tables()?.intents.insert(
            (tenant.to_string(), bucket_of(at), id, version),
            (at, false),
        );
        Ok(())
    }

    async fn commit(
        &self,
        tenant: &str,
        id: Uuid,
        expected: i64,
        row: NewRow<'_>,
    ) -> Result<bool, CommandError> {
        let mut tables = self.tables()?;
        let key = (tenant.to_string(), id);
        let current = tables.rows.get(&key).map(|h| h.version);
        let applies = match current {
            None => expected == 0,
            Some(v) => expected != 0 && v == expected,
        };
        if applies {
            tables.rows.insert(
                key,
                Head {
                    version: row.version,
                    state: row.state.clone(),
                    partition: row.partition,
                    pending: row.pending.to_vec(),
                    pending_published: false,
                    recent: row.recent.clone(),
                },
            );
        }
        Ok(applies)
    }

    async fn mark_published(
        &self,
        tenant: &str,
        id: Uuid,
        version: i64,
        at: DateTime<Utc>,
    ) -> Result<(), CommandError> {
        let mut tables = self.tables()?;
        let entry = tables
            .intents
            .entry((tenant.to_string(), bucket_of(at), id, version))
            .or_insert((at, false));
        entry.1 = true;
        Ok(())
    }

    async fn intents(
        &self,
        tenant: &str,
        bucket: DateTime<Utc>,
    ) -> Result<Vec<Intent>, CommandError> {
        Ok(self
            .tables()?
            .intents
            .iter()
            .filter(|((t, b, _, _), _)| t == tenant && *b == bucket)
            .map(|((_, _, id, version), (at, published))| Intent {
                aggregate_type: ORDER_AGGREGATE.to_string(),
                aggregate_id: *id,
                version: *version,
                created_at: Some(*at),
                published: *published,
            })
            .collect())
    }

    async fn sweep_progress(&self, tenant: &str) -> Result<Option<DateTime<Utc>>, CommandError> {
        Ok(self.tables()?.progress.get(tenant).copied())
    }

    async fn save_sweep_progress(
        &self,
        tenant: &str,
        until: DateTime<Utc>,
    ) -> Result<(), CommandError> {
        let mut tables = self.tables()?;
        let progress = tables.progress.entry(tenant.to_string()).or_insert(until);
        *progress = (*progress).max(until);
        Ok(())
    }
}

/// A log of published envelopes per partition; `set_down(true)` makes every publish fail.
pub struct MemoryLog {
    partitions: i32,
    records: Mutex<Vec<(i32, EventEnvelope)>>,
    down: AtomicBool,
}

impl MemoryLog {
    pub fn new(partitions: i32) -> Self {
        Self {
            partitions: partitions.max(1),
            records: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    /// The sequences published for one aggregate, in log order, after de-duplication as consumers
    /// do it (a republished batch is harmless; an event out of order would not be).
    pub fn sequences(&self, id: Uuid) -> Vec<u64> {
        let mut seen = std::collections::BTreeSet::new();
        self.records
            .lock()
            .map(|r| {
                r.iter()
                    .filter(|(_, e)| e.aggregate_id == id && seen.insert(e.sequence))
                    .map(|(_, e)| e.sequence)
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    fn partition_for(&self, aggregate_id: Uuid) -> i32 {
        ((aggregate_id.as_u128() as u64) % self.partitions as u64) as i32
    }

    async fn check_available(&self) -> Result<(), PublishError> {
        if self.down.load(Ordering::Relaxed) {
            Err(PublishError::Kafka("the log is down".into()))
        } else {
            Ok(())
        }
    }

    async fn publish(&self, partition: i32, batch: &[EventEnvelope]) -> Result<(), PublishError> {
        self.check_available().await?;
        let mut records = self
            .records
            .lock()
            .map_err(|_| PublishError::Kafka("memory log poisoned".into()))?;
        records.extend(batch.iter().map(|e| (partition, e.clone())));
        Ok(())
    }
}
