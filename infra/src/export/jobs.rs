//! The durable job queue (migration `0005_jobs`): a CQL row per job in `jobs`, read by id by
//! clients and written by the worker holding its lease, plus `job_queue`, the ids of the runnable
//! jobs, which workers read instead of scanning `jobs`.
//!
//! Why a table and not a Kafka topic of requests: a job needs per-id state, progress, a result
//! and cancellation that clients read by id anyway (a topic would still need this table); leases
//! taken by LWT let any worker instance take over a job whose worker died, from the last
//! checkpoint.
//!
//! Every write of a worker is an LWT conditioned on its `lease_version` and on the job still
//! running, so a worker that lost its lease (paused, expired, taken over) or whose job was
//! cancelled learns it at its next write and stops.

use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::{DateTime, TimeDelta, Utc};
use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::manifest::{FileEntry, PartitionRange, Selection};
use super::read::{parts, Part};
use super::Format;

/// Partitions of `job_queue`.
pub const QUEUE_SHARDS: i32 = 8;
/// The only kind of job today.
pub const EXPORT: &str = "export";

/// What an export job was asked for, as validated by query-api (`to` already capped to the
/// time of the request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSpec {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    #[serde(default)]
    pub aggregate_ids: Vec<Uuid>,
    #[serde(default)]
    pub event_types: Vec<String>,
    pub format: Format,
    pub after_job: Option<Uuid>,
    /// The event topic to read (query-api's `APP_KAFKA__TOPIC`): only workers reading the same
    /// topic take the job.
    #[serde(default)]
    pub topic: String,
}

impl ExportSpec {
    /// What the job's files hold: `tenant`'s events of the window, through the filters.
    pub fn selection(&self, tenant: &str) -> Selection {
        Selection {
            from: Some(self.from),
            to: Some(self.to),
            tenant_id: Some(tenant.to_string()),
            aggregate_ids: self.aggregate_ids.clone(),
            event_types: self.event_types.clone(),
        }
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            other => bail!("unknown job state {other:?}"),
        })
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// The Kafka offsets a job covers, fixed once by the first worker that runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub topic: String,
    /// Offsets per part file, as configured when the plan was made (kept so a resumed job cuts
    /// the same parts whatever the settings are now).
    pub part_records: u64,
    pub partitions: Vec<PartitionRange>,
    pub planned_at: DateTime<Utc>,
}

impl Plan {
    pub fn parts(&self) -> Vec<Part> {
        parts(&self.partitions, self.part_records)
    }

    /// Records in the covered offsets: an upper bound of the events the job writes.
    pub fn records(&self) -> u64 {
        self.partitions.iter().map(|r| r.len()).sum()
    }
}

/// One job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub tenant: String,
    pub id: Uuid,
    pub spec: ExportSpec,
    pub idempotency_key: Option<String>,
    pub state: JobState,
    pub plan: Option<Plan>,
    pub parts_total: i32,
    /// Parts durably written (the checkpoint).
    pub parts_done: i32,
    pub estimated_events: i64,
    /// Events and bytes of the parts done.
    pub events: i64,
    pub bytes: i64,
    /// Events and bytes of the part being written (progress only).
    pub part_events: i64,
    pub part_bytes: i64,
    pub files: Vec<FileEntry>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub lease_version: i64,
    pub attempts: i32,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(scylla::DeserializeRow)]
struct JobRow {
    tenant_id: String,
    job_id: Uuid,
    request: Option<String>,
    idempotency_key: Option<String>,
    state: Option<String>,
    plan: Option<String>,
    parts_total: Option<i32>,
    parts_done: Option<i32>,
    estimated_events: Option<i64>,
    events: Option<i64>,
    bytes: Option<i64>,
    part_events: Option<i64>,
    part_bytes: Option<i64>,
    files: Option<String>,
    lease_owner: Option<String>,
    lease_until: Option<DateTime<Utc>>,
    lease_version: Option<i64>,
    attempts: Option<i32>,
    error: Option<String>,
    created_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "tenant_id, job_id, request, idempotency_key, state, plan, parts_total, \
     parts_done, estimated_events, events, bytes, part_events, part_bytes, files, lease_owner, \
     lease_until, lease_version, attempts, error, created_at, started_at, finished_at, updated_at";

impl TryFrom<JobRow> for Job {
    type Error = anyhow::Error;

    fn try_from(row: JobRow) -> anyhow::Result<Self> {
        let spec: ExportSpec = serde_json::from_str(row.request.as_deref().unwrap_or(""))
            .with_context(|| format!("job {}: request", row.job_id))?;
        let plan = match row.plan.as_deref() {
            None | Some("") => None,
            Some(text) => Some(
                serde_json::from_str(text).with_context(|| format!("job {}: plan", row.job_id))?,
            ),
        };
        let files = match row.files.as_deref() {
            None | Some("") => Vec::new(),
            Some(text) => {
                serde_json::from_str(text).with_context(|| format!("job {}: files", row.job_id))?
            }
        };
        Ok(Job {
            tenant: row.tenant_id,
            id: row.job_id,
            spec,
            idempotency_key: row.idempotency_key,
            state: JobState::parse(row.state.as_deref().unwrap_or("queued"))?,
            plan,
            parts_total: row.parts_total.unwrap_or(0),
            parts_done: row.parts_done.unwrap_or(0),
            estimated_events: row.estimated_events.unwrap_or(0),
            events: row.events.unwrap_or(0),
            bytes: row.bytes.unwrap_or(0),
            part_events: row.part_events.unwrap_or(0),
            part_bytes: row.part_bytes.unwrap_or(0),
            files,
            lease_owner: row.lease_owner,
            lease_until: row.lease_until,
            lease_version: row.lease_version.unwrap_or(0),
            attempts: row.attempts.unwrap_or(0),
            error: row.error,
            created_at: row.created_at.unwrap_or_else(Utc::now),
            started_at: row.started_at,
            finished_at: row.finished_at,
            updated_at: row.updated_at,
        })
    }
}

/// The answer to a job creation.
#[derive(Debug)]
pub enum Created {
    /// A new job.
    New(Job),
    /// The job an `Idempotency-Key` made earlier for the same request.
    Existing(Job),
    /// The key was used for another request.
    KeyReused,
}

/// An entry of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub shard: i32,
    pub job_id: Uuid,
    pub tenant: String,
    pub queued_at: Option<DateTime<Utc>>,
}

/// The lease a worker holds on a job: every write it makes names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub tenant: String,
    pub job_id: Uuid,
    pub version: i64,
    pub owner: String,
}

/// Progress of the part being written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartProgress {
    pub events: i64,
    pub bytes: i64,
}

/// A durable checkpoint: parts `0..parts_done` are written, with these totals and files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub parts_done: i32,
    pub events: i64,
    pub bytes: i64,
    pub files: Vec<FileEntry>,
}

struct Statements {
    insert_job: PreparedStatement,
    select_job: PreparedStatement,
    select_job_serial: PreparedStatement,
    insert_key: PreparedStatement,
    select_key_serial: PreparedStatement,
    enqueue: PreparedStatement,
    dequeue: PreparedStatement,
    list_queue: PreparedStatement,
    take: PreparedStatement,
    renew: PreparedStatement,
    set_plan: PreparedStatement,
    checkpoint: PreparedStatement,
    finish: PreparedStatement,
    release: PreparedStatement,
    cancel: PreparedStatement,
}

/// The job tables of one keyspace.
#[derive(Clone)]
pub struct JobStore {
    session: Arc<Session>,
    statements: Arc<Statements>,
}

fn serial(consistency: SerialConsistency) -> Consistency {
    match consistency {
        SerialConsistency::Serial => Consistency::Serial,
        SerialConsistency::LocalSerial => Consistency::LocalSerial,
    }
}

/// The shard of `job_queue` a job is queued in.
pub fn shard_of(job_id: Uuid) -> i32 {
    (job_id.as_u128() % QUEUE_SHARDS as u128) as i32
}

impl JobStore {
    /// Prepare the statements on `keyspace` (which must hold migration 0005).
    pub async fn new(
        session: Arc<Session>,
        keyspace: &str,
        serial_consistency: &str,
    ) -> anyhow::Result<Self> {
        let serial = serial(crate::cql::serial_consistency(serial_consistency)?);
        let ks = keyspace;
        let prepare = |cql: String| {
            let session = session.clone();
            async move {
                session
                    .prepare(cql.clone())
                    .await
                    .with_context(|| format!("preparing {cql}"))
            }
        };
        let mut select_job_serial = prepare(format!(
            "SELECT {COLUMNS} FROM {ks}.jobs WHERE tenant_id = ? AND job_id = ?"
        ))
        .await?;
        select_job_serial.set_consistency(serial);
        let mut select_key_serial = prepare(format!(
            "SELECT job_id, fingerprint FROM {ks}.job_keys WHERE tenant_id = ? AND idempotency_key = ?"
        ))
        .await?;
        select_key_serial.set_consistency(serial);
        // Conditions every worker write carries: its lease, on a job still running.
        let leased =
            "WHERE tenant_id = ? AND job_id = ? IF lease_version = ? AND state = 'running'";
        let statements = Statements {
            insert_job: prepare(format!(
                "INSERT INTO {ks}.jobs (tenant_id, job_id, kind, request, idempotency_key, state, \
                 parts_total, parts_done, estimated_events, events, bytes, part_events, part_bytes, \
                 lease_version, attempts, created_at, updated_at) \
                 VALUES (?, ?, '{EXPORT}', ?, ?, 'queued', 0, 0, 0, 0, 0, 0, 0, 0, 0, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            select_job: prepare(format!(
                "SELECT {COLUMNS} FROM {ks}.jobs WHERE tenant_id = ? AND job_id = ?"
            ))
            .await?,
            select_job_serial,
            insert_key: prepare(format!(
                "INSERT INTO {ks}.job_keys (tenant_id, idempotency_key, job_id, fingerprint, created_at) \
                 VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            select_key_serial,
            enqueue: prepare(format!(
                "INSERT INTO {ks}.job_queue (shard, job_id, tenant_id, queued_at) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            dequeue: prepare(format!(
                "DELETE FROM {ks}.job_queue WHERE shard = ? AND job_id = ?"
            ))
            .await?,
            list_queue: prepare(format!(
                "SELECT shard, job_id, tenant_id, queued_at FROM {ks}.job_queue WHERE shard IN ?"
            ))
            .await?,
            take: prepare(format!(
                "UPDATE {ks}.jobs SET lease_owner = ?, lease_until = ?, lease_version = ?, \
                 state = 'running', attempts = ?, started_at = ?, part_events = 0, part_bytes = 0, \
                 updated_at = ? WHERE tenant_id = ? AND job_id = ? \
                 IF lease_version = ? AND state IN ('queued', 'running')"
            ))
            .await?,
            renew: prepare(format!(
                "UPDATE {ks}.jobs SET lease_until = ?, part_events = ?, part_bytes = ?, updated_at = ? {leased}"
            ))
            .await?,
            set_plan: prepare(format!(
                "UPDATE {ks}.jobs SET plan = ?, parts_total = ?, estimated_events = ?, \
                 lease_until = ?, updated_at = ? {leased}"
            ))
            .await?,
            checkpoint: prepare(format!(
                "UPDATE {ks}.jobs SET parts_done = ?, events = ?, bytes = ?, files = ?, \
                 part_events = 0, part_bytes = 0, lease_until = ?, updated_at = ? {leased}"
            ))
            .await?,
            finish: prepare(format!(
                "UPDATE {ks}.jobs SET state = ?, error = ?, finished_at = ?, lease_until = ?, \
                 part_events = 0, part_bytes = 0, updated_at = ? {leased}"
            ))
            .await?,
            release: prepare(format!(
                "UPDATE {ks}.jobs SET lease_owner = null, lease_until = ?, error = ?, updated_at = ? {leased}"
            ))
            .await?,
            cancel: prepare(format!(
                "UPDATE {ks}.jobs SET state = 'cancelled', finished_at = ?, updated_at = ? \
                 WHERE tenant_id = ? AND job_id = ? IF state IN ('queued', 'running')"
            ))
            .await?,
        };
        Ok(Self {
            session,
            statements: Arc::new(statements),
        })
    }

    /// Create an export job for `tenant` (queued). With an `Idempotency-Key`, the same key and the
    /// same request give the same job, the same key and another request [`Created::KeyReused`].
    pub async fn create(
        &self,
        tenant: &str,
        spec: &ExportSpec,
        key: Option<(&str, &str)>,
    ) -> anyhow::Result<Created> {
        let now = Utc::now();
        let mut job_id = Uuid::now_v7();
        let mut replay = false;
        if let Some((key, fingerprint)) = key {
            let inserted = self
                .session
                .execute_unpaged(
                    &self.statements.insert_key,
                    (tenant, key, job_id, fingerprint, now),
                )
                .await
                .context("recording the Idempotency-Key")?;
            if !applied(inserted)? {
                let row = self
                    .session
                    .execute_unpaged(&self.statements.select_key_serial, (tenant, key))
                    .await?
                    .into_rows_result()?
                    .maybe_first_row::<(Uuid, Option<String>)>()?;
                let Some((existing, stored)) = row else {
                    bail!("the Idempotency-Key row vanished");
                };
                if stored.as_deref() != Some(fingerprint) {
                    return Ok(Created::KeyReused);
                }
                job_id = existing;
                replay = true;
            }
        }
        let request = serde_json::to_string(spec)?;
        // The queue entry first: a job row never exists without one while it is runnable (an
        // entry whose job row never came is dropped by the workers after a minute).
        if replay {
            if let Some(job) = self.get_serial(tenant, job_id).await? {
                if !job.state.is_finished() {
                    self.enqueue(tenant, job_id, now).await?;
                }
                return Ok(Created::Existing(job));
            }
        }
        self.enqueue(tenant, job_id, now).await?;
        self.session
            .execute_unpaged(
                &self.statements.insert_job,
                (tenant, job_id, request, key.map(|(k, _)| k), now, now),
            )
            .await
            .context("inserting the job")?;
        let job = self
            .get_serial(tenant, job_id)
            .await?
            .context("the job just inserted is not there")?;
        Ok(if replay {
            Created::Existing(job)
        } else {
            Created::New(job)
        })
    }

    async fn enqueue(&self, tenant: &str, job_id: Uuid, at: DateTime<Utc>) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.statements.enqueue,
                (shard_of(job_id), job_id, tenant, at),
            )
            .await
            .context("queueing the job")?;
        Ok(())
    }

    /// A job of `tenant` (another tenant's job is `None`, like an unknown one).
    pub async fn get(&self, tenant: &str, job_id: Uuid) -> anyhow::Result<Option<Job>> {
        self.read(&self.statements.select_job, tenant, job_id).await
    }

    /// The same, read with serial consistency (sees every applied LWT).
    pub async fn get_serial(&self, tenant: &str, job_id: Uuid) -> anyhow::Result<Option<Job>> {
        self.read(&self.statements.select_job_serial, tenant, job_id)
            .await
    }

    async fn read(
        &self,
        statement: &PreparedStatement,
        tenant: &str,
        job_id: Uuid,
    ) -> anyhow::Result<Option<Job>> {
        let row = self
            .session
            .execute_unpaged(statement, (tenant, job_id))
            .await
            .context("reading the job")?
            .into_rows_result()?
            .maybe_first_row::<JobRow>()?;
        row.map(Job::try_from).transpose()
    }

    /// Cancel a queued or running job. Returns the job as it is afterwards (`None`: no such job).
    pub async fn cancel(&self, tenant: &str, job_id: Uuid) -> anyhow::Result<Option<Job>> {
        let Some(job) = self.get_serial(tenant, job_id).await? else {
            return Ok(None);
        };
        if !job.state.is_finished() {
            let now = Utc::now();
            let result = self
                .session
                .execute_unpaged(&self.statements.cancel, (now, now, tenant, job_id))
                .await
                .context("cancelling the job")?;
            if applied(result)? {
                self.dequeue(job_id).await?;
            }
        }
        self.get_serial(tenant, job_id).await
    }

    /// The runnable jobs.
    pub async fn queued(&self) -> anyhow::Result<Vec<Queued>> {
        let shards: Vec<i32> = (0..QUEUE_SHARDS).collect();
        let rows = self
            .session
            .execute_unpaged(&self.statements.list_queue, (shards,))
            .await
            .context("reading the job queue")?
            .into_rows_result()?;
        let mut queued = Vec::new();
        for row in rows.rows::<(i32, Uuid, Option<String>, Option<DateTime<Utc>>)>()? {
            let (shard, job_id, tenant, queued_at) = row?;
            queued.push(Queued {
                shard,
                job_id,
                tenant: tenant.unwrap_or_default(),
                queued_at,
            });
        }
        queued.sort_by_key(|q| q.job_id);
        Ok(queued)
    }

    /// Remove a job from the queue (it finished, or its row never came).
    pub async fn dequeue(&self, job_id: Uuid) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(&self.statements.dequeue, (shard_of(job_id), job_id))
            .await
            .context("dequeueing the job")?;
        Ok(())
    }

    /// Take the lease of `job` (as read) for `lease`, if nobody else holds it now.
    pub async fn take(
        &self,
        job: &Job,
        owner: &str,
        lease: TimeDelta,
    ) -> anyhow::Result<Option<Lease>> {
        let now = Utc::now();
        if job.state.is_finished() {
            return Ok(None);
        }
        if job.lease_owner.is_some() && job.lease_until.is_some_and(|until| until > now) {
            return Ok(None);
        }
        let version = job.lease_version + 1;
        let result = self
            .session
            .execute_unpaged(
                &self.statements.take,
                (
                    owner,
                    now + lease,
                    version,
                    job.attempts + 1,
                    job.started_at.unwrap_or(now),
                    now,
                    job.tenant.as_str(),
                    job.id,
                    job.lease_version,
                ),
            )
            .await
            .context("taking the job's lease")?;
        Ok(applied(result)?.then(|| Lease {
            tenant: job.tenant.clone(),
            job_id: job.id,
            version,
            owner: owner.to_string(),
        }))
    }

    /// Extend the lease and record the progress of the part being written. `false`: the lease is
    /// lost or the job cancelled; stop.
    pub async fn renew(
        &self,
        lease: &Lease,
        duration: TimeDelta,
        progress: PartProgress,
    ) -> anyhow::Result<bool> {
        let now = Utc::now();
        applied(
            self.session
                .execute_unpaged(
                    &self.statements.renew,
                    (
                        now + duration,
                        progress.events,
                        progress.bytes,
                        now,
                        lease.tenant.as_str(),
                        lease.job_id,
                        lease.version,
                    ),
                )
                .await
                .context("renewing the lease")?,
        )
    }

    /// Record the plan (once, by the first worker).
    pub async fn set_plan(
        &self,
        lease: &Lease,
        plan: &Plan,
        duration: TimeDelta,
    ) -> anyhow::Result<bool> {
        let now = Utc::now();
        let parts = i32::try_from(plan.parts().len()).unwrap_or(i32::MAX);
        applied(
            self.session
                .execute_unpaged(
                    &self.statements.set_plan,
                    (
                        serde_json::to_string(plan)?,
                        parts,
                        i64::try_from(plan.records()).unwrap_or(i64::MAX),
                        now + duration,
                        now,
                        lease.tenant.as_str(),
                        lease.job_id,
                        lease.version,
                    ),
                )
                .await
                .context("recording the plan")?,
        )
    }

    /// Record that parts `0..parts_done` are durably written.
    pub async fn checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
        duration: TimeDelta,
    ) -> anyhow::Result<bool> {
        let now = Utc::now();
        applied(
            self.session
                .execute_unpaged(
                    &self.statements.checkpoint,
                    (
                        checkpoint.parts_done,
                        checkpoint.events,
                        checkpoint.bytes,
                        serde_json::to_string(&checkpoint.files)?,
                        now + duration,
                        now,
                        lease.tenant.as_str(),
                        lease.job_id,
                        lease.version,
                    ),
                )
                .await
                .context("recording a checkpoint")?,
        )
    }

    /// End the job (`succeeded` or `failed` with an error) and take it off the queue.
    pub async fn finish(
        &self,
        lease: &Lease,
        state: JobState,
        error: Option<&str>,
    ) -> anyhow::Result<bool> {
        let now = Utc::now();
        let done = applied(
            self.session
                .execute_unpaged(
                    &self.statements.finish,
                    (
                        state.as_str(),
                        error,
                        now,
                        now,
                        now,
                        lease.tenant.as_str(),
                        lease.job_id,
                        lease.version,
                    ),
                )
                .await
                .context("finishing the job")?,
        )?;
        if done {
            self.dequeue(lease.job_id).await?;
        }
        Ok(done)
    }

    /// Give the job back after a failure that may pass (Kafka or the store unreachable): another
    /// worker (or this one) takes it again after `retry_in`.
    pub async fn release(
        &self,
        lease: &Lease,
        error: &str,
        retry_in: TimeDelta,
    ) -> anyhow::Result<bool> {
        let now = Utc::now();
        applied(
            self.session
                .execute_unpaged(
                    &self.statements.release,
                    (
                        now + retry_in,
                        error,
                        now,
                        lease.tenant.as_str(),
                        lease.job_id,
                        lease.version,
                    ),
                )
                .await
                .context("releasing the job")?,
        )
    }
}

/// The `[applied]` column of a lightweight transaction's answer.
fn applied(result: QueryResult) -> anyhow::Result<bool> {
    let rows = result.into_rows_result()?;
    let row: Row = rows.first_row()?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => bail!("unexpected LWT answer {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_say_when_they_are_final() {
        for s in [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ] {
            assert_eq!(JobState::parse(s.as_str()).unwrap(), s);
        }
        assert!(!JobState::Running.is_finished());
        assert!(JobState::Cancelled.is_finished());
        assert!(JobState::parse("done").is_err());
    }

    #[test]
    fn jobs_spread_over_the_queue_shards() {
        let shards: std::collections::BTreeSet<i32> =
            (0..200).map(|_| shard_of(Uuid::now_v7())).collect();
        assert!(shards.iter().all(|s| (0..QUEUE_SHARDS).contains(s)));
        assert!(shards.len() > 4, "{shards:?}");
    }

    #[test]
    fn a_plan_cuts_the_same_parts_whatever_the_settings_are_now() {
        let plan = Plan {
            topic: "t".into(),
            part_records: 10,
            partitions: vec![PartitionRange {
                partition: 0,
                from_offset: 0,
                to_offset: 25,
            }],
            planned_at: Utc::now(),
        };
        let text = serde_json::to_string(&plan).unwrap();
        let back: Plan = serde_json::from_str(&text).unwrap();
        assert_eq!(back.parts().len(), 3);
        assert_eq!(back.records(), 25);
    }
}
