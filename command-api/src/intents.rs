//! Publish intents, written in group commits.
//!
//! Every command writes an intent row before its LWT and marks it published after the produce
//! (`repository.rs`, steps 4 and 6). The intents of one 5-second bucket share a CQL partition, so
//! instead of one request per row, the intents that queue up while writes are in flight go
//! together as one unlogged single-partition batch: one request for the driver, one mutation for
//! the database. Nothing waits on a timer: a lone command's intent is written at once; under load
//! the queue fills while up to [`FLUSHES`] writes are in flight, and the next write takes all of
//! it. An insert is acknowledged to its command only once its batch is written (the intent must be
//! durable before the LWT); marks are not waited for (a lost mark only makes the sweeper
//! republish a batch, which consumers de-duplicate).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tokio::sync::{mpsc, oneshot, Semaphore};
use uuid::Uuid;

use events::ORDER_AGGREGATE;

/// Writes in flight at once.
const FLUSHES: usize = 4;
/// At most this many rows per batch (~100 bytes each).
const MAX_ROWS: usize = 48;

/// The statements the log writes with.
pub struct IntentStatements {
    /// `INSERT INTO publish_intents (tenant_id, bucket, aggregate_type, aggregate_id, version,
    /// created_at) VALUES (?, ?, ?, ?, ?, ?)`
    pub insert: PreparedStatement,
    /// `UPDATE publish_intents SET published = true WHERE tenant_id = ? AND bucket = ? AND
    /// aggregate_type = ? AND aggregate_id = ? AND version = ?`
    pub mark: PreparedStatement,
}

/// The handle commands write their intents through.
pub struct IntentLog {
    jobs: mpsc::UnboundedSender<Job>,
}

struct Job {
    bucket: DateTime<Utc>,
    order_id: Uuid,
    version: i64,
    kind: Kind,
}

enum Kind {
    Insert {
        created_at: DateTime<Utc>,
        done: oneshot::Sender<Result<(), String>>,
    },
    Mark,
}

type Values = Box<dyn SerializeRow + Send + Sync>;

impl IntentLog {
    /// Start the writer task (it ends when the log is dropped).
    pub fn start(session: Arc<Session>, statements: IntentStatements, tenant: String) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(session, Arc::new(statements), tenant, queue));
        Self { jobs }
    }

    /// Write the intent of the batch ending at `version`; returns once it is durable.
    pub async fn insert(
        &self,
        bucket: DateTime<Utc>,
        order_id: Uuid,
        version: i64,
        created_at: DateTime<Utc>,
    ) -> Result<(), String> {
        let (done, written) = oneshot::channel();
        self.jobs
            .send(Job {
                bucket,
                order_id,
                version,
                kind: Kind::Insert { created_at, done },
            })
            .map_err(|_| "the intent writer stopped".to_string())?;
        written
            .await
            .map_err(|_| "the intent writer stopped".to_string())?
    }

    /// Mark the intent of the batch ending at `version` published, in the background.
    pub fn mark_published(&self, bucket: DateTime<Utc>, order_id: Uuid, version: i64) {
        let _ = self.jobs.send(Job {
            bucket,
            order_id,
            version,
            kind: Kind::Mark,
        });
    }
}

async fn run(
    session: Arc<Session>,
    statements: Arc<IntentStatements>,
    tenant: String,
    mut queue: mpsc::UnboundedReceiver<Job>,
) {
    let flushes = Arc::new(Semaphore::new(FLUSHES));
    loop {
        // Take the queue only when a write can start: what arrives meanwhile waits for the next.
        let Ok(permit) = flushes.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_ROWS {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (session, statements, tenant) = (session.clone(), statements.clone(), tenant.clone());
        tokio::spawn(async move {
            flush(&session, &statements, &tenant, jobs).await;
            drop(permit);
        });
    }
}

/// Write the jobs, one batch per bucket (one at a bucket boundary, usually), and tell each
/// insert how it went.
async fn flush(session: &Session, statements: &IntentStatements, tenant: &str, jobs: Vec<Job>) {
    let mut by_bucket: HashMap<DateTime<Utc>, Vec<Job>> = HashMap::new();
    for job in jobs {
        by_bucket.entry(job.bucket).or_default().push(job);
    }
    join_all(
        by_bucket
            .into_values()
            .map(|jobs| write_bucket(session, statements, tenant, jobs)),
    )
    .await;
}

async fn write_bucket(
    session: &Session,
    statements: &IntentStatements,
    tenant: &str,
    jobs: Vec<Job>,
) {
    let rows: Vec<(&PreparedStatement, Values)> = jobs
        .iter()
        .map(|job| match &job.kind {
            Kind::Insert { created_at, .. } => (
                &statements.insert,
                Box::new((
                    tenant.to_string(),
                    job.bucket,
                    ORDER_AGGREGATE,
                    job.order_id,
                    job.version,
                    *created_at,
                )) as Values,
            ),
            Kind::Mark => (
                &statements.mark,
                Box::new((
                    tenant.to_string(),
                    job.bucket,
                    ORDER_AGGREGATE,
                    job.order_id,
                    job.version,
                )) as Values,
            ),
        })
        .collect();
    let result = if let [(statement, values)] = rows.as_slice() {
        session.execute_unpaged(statement, values).await.map(drop)
    } else {
        let mut batch = Batch::new(BatchType::Unlogged);
        for (statement, _) in &rows {
            batch.append_statement((*statement).clone());
        }
        batch.set_is_idempotent(true);
        let values: Vec<&Values> = rows.iter().map(|(_, values)| values).collect();
        session.batch(&batch, &values).await.map(drop)
    };
    let result = result.map_err(|e| e.to_string());
    metrics::histogram!("command_intent_batch_rows").record(jobs.len() as f64);
    for job in jobs {
        match job.kind {
            Kind::Insert { done, .. } => {
                let _ = done.send(result.clone());
            }
            Kind::Mark => {
                if let Err(error) = &result {
                    tracing::warn!(order_id = %job.order_id, version = job.version, %error, "marking a batch published failed");
                }
            }
        }
    }
}
