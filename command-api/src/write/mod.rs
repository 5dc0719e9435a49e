//! The write path: per-aggregate optimistic concurrency in one CQL row, publication to Kafka after
//! the row is committed, and recovery of batches whose writer died in between
//! (docs/architecture.md, "Write path").
//!
//! 1. take the aggregate's row from this instance's cache, or read it;
//! 2. publish a pending batch not yet known published (same partition);
//! 3. run the command through the cqrs-es aggregate (business rules → 422, nothing written);
//! 4. write a publish intent (so the sweeper can find the batch), then one LWT
//!    `UPDATE … IF version = v` (`INSERT … IF NOT EXISTS` for a new aggregate), carrying the new
//!    state, version, the batch as `pending` and the idempotency key's answer; a lost race reads
//!    the row again (serially) and retries a bounded number of times, then 409;
//! 5. produce the batch (acks=all, idempotent) to the partition stored in the row;
//! 6. answer; marking the intent published happens off the request path (a crash there only
//!    causes a harmless republication).
//!
//! Any number of instances serve the same aggregates, so the cached row may be stale. It may only
//! ever cost a retry: a success is guarded by the LWT, and a refusal (422, 412, 409) decided from
//! a cached row is decided again on the row read with serial consistency before it is answered.
//! A remembered answer (idempotency key) is given only once the batch it acknowledged is in Kafka.
//!
//! cqrs-es's `CqrsFramework` is not used: its `EventStore` has no place for the idempotency answer,
//! the `If-Match` precondition or the sticky partition, all of which must commit in the same LWT.
//! The cqrs-es `Aggregate` (`handle`/`apply`) is used as is.

pub mod cql;
mod decide;
pub mod fault;
pub mod head;
pub mod idempotency;
pub mod memory;
pub mod store;

use std::sync::Arc;

use chrono::Utc;
use events::{EventEnvelope, EventMetadata};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::order::{OrderCommand, OrderError};
use crate::publisher::PublishError;
use decide::Checked;
pub use fault::Fault;
use head::{Head, HeadCache, Turns};
use store::{AggregateStore, EventLog, NewRow, Read};

/// One command with what came with it.
#[derive(Debug, Clone)]
pub struct CommandContext {
    /// The caller's tenant (from its token): every key the command reads or writes carries it.
    pub tenant: String,
    pub order_id: Uuid,
    pub command: OrderCommand,
    pub idempotency_key: Option<String>,
    pub if_match: Option<i64>,
    pub metadata: EventMetadata,
}

/// A new event as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventRef {
    pub event_id: Uuid,
    pub sequence: i64,
    pub event_type: String,
}

/// The success body of every command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandResponse {
    pub order_id: Uuid,
    /// The order's version after the command (= sequence of its last event).
    pub version: i64,
    pub events: Vec<EventRef>,
}

/// What an idempotency key answers again: the first success, status and body, and a fingerprint of
/// the request it answered (absent on answers stored before fingerprints existed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutcome {
    pub status: u16,
    pub body: CommandResponse,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Rule(#[from] OrderError),
    #[error("order {0} does not exist")]
    NotFound(Uuid),
    #[error("the order is at version {actual}, not {expected}")]
    PreconditionFailed { expected: i64, actual: i64 },
    #[error("this Idempotency-Key already answered a different request on this order")]
    KeyReused,
    #[error("concurrent writers kept winning after {0} attempts")]
    Conflict(u32),
    #[error("{0} is unavailable: {1}")]
    Unavailable(&'static str, String),
    #[error("{0}")]
    Internal(String),
}

impl CommandError {
    /// A refusal that depends on the row's state, so it must not be answered from a stale copy.
    fn depends_on_row(&self) -> bool {
        matches!(
            self,
            CommandError::Rule(_)
                | CommandError::NotFound(_)
                | CommandError::PreconditionFailed { .. }
        )
    }
}

impl From<PublishError> for CommandError {
    fn from(e: PublishError) -> Self {
        CommandError::Unavailable("Kafka", e.to_string())
    }
}

/// Settings of the write path.
#[derive(Debug, Clone)]
pub struct Limits {
    pub cache_capacity: usize,
    pub max_attempts: u32,
    pub keys_per_aggregate: usize,
    pub fault: Fault,
}

impl Limits {
    pub fn from_settings(settings: &infra::settings::CommandApi) -> Self {
        Self {
            cache_capacity: settings.cache_capacity,
            max_attempts: settings.max_lwt_attempts.max(1),
            keys_per_aggregate: settings.idempotency_keys_per_aggregate,
            fault: Fault::parse(&settings.fault),
        }
    }
}

impl Default for Limits {
    /// The defaults of the settings.
    fn default() -> Self {
        Self::from_settings(&infra::settings::CommandApi::default())
    }
}

/// Where the row an attempt decides on comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// This instance's copy: may be stale.
    Cache,
    /// No read: a new order's `INSERT … IF NOT EXISTS` tells whether the row exists.
    AssumeNew,
    Stored(Read),
}

enum Attempt {
    Done(CommandOutcome),
    LostRace,
}

pub struct WritePath {
    store: Arc<dyn AggregateStore>,
    log: Arc<dyn EventLog>,
    cache: HeadCache,
    turns: Turns,
    limits: Limits,
    /// Tenants this instance has recorded in the store (once per process each).
    registered: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl WritePath {
    pub fn new(store: Arc<dyn AggregateStore>, log: Arc<dyn EventLog>, limits: Limits) -> Self {
        if limits.fault != Fault::None {
            tracing::warn!(fault = ?limits.fault, "FAULT INJECTION IS ON: this instance is for tests only");
        }
        Self {
            store,
            log,
            cache: HeadCache::new(limits.cache_capacity),
            turns: Turns::new(),
            limits,
            registered: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Record `tenant` in the store (so that the sweepers sweep its intents) unless this instance
    /// already did.
    pub async fn register_tenant(&self, tenant: &str) -> Result<(), CommandError> {
        let known = self
            .registered
            .lock()
            .map(|r| r.contains(tenant))
            .unwrap_or(false);
        if !known {
            self.store.register_tenant(tenant).await?;
            if let Ok(mut r) = self.registered.lock() {
                r.insert(tenant.to_string());
            }
        }
        Ok(())
    }

    pub fn store(&self) -> &Arc<dyn AggregateStore> {
        &self.store
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Run one command through the write path.
    #[tracing::instrument(skip_all, fields(order_id = %ctx.order_id, command = ctx.command.name()))]
    pub async fn execute(&self, ctx: CommandContext) -> Result<CommandOutcome, CommandError> {
        let (tenant, id) = (ctx.tenant.as_str(), ctx.order_id);
        let fingerprint = idempotency::fingerprint(&ctx.command);
        let _turn = self.turns.take(id).await;
        let cached = self.cache.get(tenant, id);
        let mut source = if cached.is_some() {
            Source::Cache
        } else if ctx.if_match.is_none() && matches!(ctx.command, OrderCommand::PlaceOrder { .. }) {
            // Placing an order needs no read first: its `INSERT … IF NOT EXISTS` tells whether
            // the row exists, and only then is it read (to answer a replay or refuse).
            Source::AssumeNew
        } else {
            Source::Stored(Read::Quorum)
        };
        let mut head = cached;
        let mut attempt = 1;
        while attempt <= self.limits.max_attempts {
            if let Source::Stored(read) = source {
                head = self.store.load(tenant, id, read).await?;
            }
            if attempt > 1 {
                metrics::counter!("command_lwt_retries_total").increment(1);
            }
            match self.attempt(&ctx, fingerprint, head.take()).await {
                Ok(Attempt::Done(outcome)) => return Ok(outcome),
                Ok(Attempt::LostRace) if source == Source::AssumeNew => {
                    // The order exists: read it and decide again; not a lost race.
                    source = Source::Stored(Read::Serial);
                    continue;
                }
                Ok(Attempt::LostRace) => {
                    metrics::counter!("command_lwt_conflicts_total").increment(1);
                    tracing::debug!(attempt, "LWT lost a race; reading the row again");
                    self.cache.forget(tenant, id);
                    // The winner's LWT may still be settling: read serially.
                    source = Source::Stored(Read::Serial);
                }
                Err(refusal) if source == Source::Cache && refusal.depends_on_row() => {
                    // Decided on this instance's copy: confirm on the stored row before answering.
                    metrics::counter!("command_refusals_confirmed_total").increment(1);
                    tracing::debug!(error = %refusal, "confirming a refusal on the stored row");
                    self.cache.forget(tenant, id);
                    source = Source::Stored(Read::Serial);
                    continue;
                }
                Err(e) => return Err(e),
            }
            attempt += 1;
        }
        Err(CommandError::Conflict(self.limits.max_attempts))
    }

    async fn attempt(
        &self,
        ctx: &CommandContext,
        fingerprint: Uuid,
        head: Option<Head>,
    ) -> Result<Attempt, CommandError> {
        let (tenant, id) = (ctx.tenant.as_str(), ctx.order_id);
        let checked = decide::check(ctx, fingerprint, head, || self.log.partition_for(id))?;
        let mut head = match checked {
            Checked::Replay { head, outcome } => {
                // The answer acknowledged a batch: answer again only once it is in Kafka.
                if head.has_unpublished() {
                    self.log.check_available().await?;
                    self.publish_pending(tenant, id, head).await?;
                }
                metrics::counter!("command_idempotent_replays_total").increment(1);
                return Ok(Attempt::Done(outcome));
            }
            Checked::Run(head) => head,
        };

        // Refuse up front while Kafka is known to be down: nothing is written for a refused
        // command, and it does not wait for a produce that cannot succeed.
        self.log.check_available().await?;

        // 2. A batch committed by a writer that did not live to publish it goes first.
        if head.has_unpublished() {
            head = self.publish_pending(tenant, id, head).await?;
            metrics::counter!("command_pending_republished_total").increment(1);
        }

        // 3. Business rules, through the cqrs-es aggregate.
        let commit = decide::run(
            ctx,
            fingerprint,
            &head,
            tenant,
            self.limits.keys_per_aggregate,
        )
        .await?;

        // 4. Intent first, then the LWT.
        let decide::Commit {
            expected,
            state,
            partition,
            batch,
            recent,
            outcome,
        } = commit;
        let now = batch.first().map_or_else(Utc::now, |e| e.occurred_at);
        let version = outcome.body.version;
        self.register_tenant(tenant).await?;
        self.store.write_intent(tenant, id, version, now).await?;
        let applied = self
            .store
            .commit(
                tenant,
                id,
                expected,
                NewRow {
                    version,
                    state: &state,
                    partition,
                    pending: &batch,
                    recent: &recent,
                    at: now,
                },
            )
            .instrument(lwt_span(expected, version))
            .await?;
        if !applied {
            return Ok(Attempt::LostRace);
        }
        let committed = Head {
            version,
            state,
            partition,
            pending: batch,
            pending_published: false,
            recent,
        };
        self.cache.put(tenant, id, committed.clone());

        match self.limits.fault {
            Fault::None => {}
            Fault::AbortAfterLwt => {
                self.cache.forget(tenant, id);
                return Err(CommandError::Internal(
                    "fault injected after the LWT, before the produce".into(),
                ));
            }
            Fault::ExitAfterLwt => {
                tracing::error!("fault injected: exiting after the LWT, before the produce");
                std::process::abort();
            }
        }

        // 5. Publish; on failure the batch stays pending for the sweeper or the next command.
        self.publish_pending(tenant, id, committed).await?;
        Ok(Attempt::Done(outcome))
    }

    /// Publish the row's pending batch, record it (off the request path) and cache the row.
    async fn publish_pending(
        &self,
        tenant: &str,
        id: Uuid,
        mut head: Head,
    ) -> Result<Head, CommandError> {
        self.log
            .publish(head.partition, &head.pending)
            .instrument(produce_span(head.partition, &head.pending))
            .await?;
        self.after_publish(tenant, id, &head.pending, head.version);
        head.pending_published = true;
        self.cache.put(tenant, id, head.clone());
        Ok(head)
    }

    /// Record on its intent that the batch ending at `version` is in Kafka, in the background.
    fn after_publish(&self, tenant: &str, id: Uuid, batch: &[EventEnvelope], version: i64) {
        let Some(at) = batch.last().map(|e| e.occurred_at) else {
            return;
        };
        let store = self.store.clone();
        let tenant = tenant.to_string();
        tokio::spawn(async move {
            if let Err(e) = store.mark_published(&tenant, id, version, at).await {
                tracing::warn!(order_id = %id, error = %e, "marking a batch published failed");
            }
        });
    }

    /// The sweeper's part: publish the batch ending at `version` if the row (read serially) still
    /// holds it unpublished. Returns whether it published.
    pub async fn republish(
        &self,
        tenant: &str,
        id: Uuid,
        version: i64,
    ) -> Result<bool, CommandError> {
        let _turn = self.turns.take(id).await;
        // The row tells whether this intent's LWT applied and whether its batch is still the
        // pending one (a later batch means a later writer published this one first).
        let Some(head) = self.store.load(tenant, id, Read::Serial).await? else {
            return Ok(false);
        };
        if head.version != version || !head.has_unpublished() {
            return Ok(false);
        }
        self.log
            .publish(head.partition, &head.pending)
            .instrument(produce_span(head.partition, &head.pending))
            .await?;
        self.after_publish(tenant, id, &head.pending, version);
        self.cache.forget(tenant, id);
        Ok(true)
    }
}

/// The span of step 4's LWT (a client span when traces are exported).
fn lwt_span(expected: i64, version: i64) -> tracing::Span {
    tracing::info_span!(
        "cql.lwt",
        otel.kind = "client",
        db.system.name = "cassandra",
        db.operation.name = if expected == 0 {
            "INSERT IF NOT EXISTS"
        } else {
            "UPDATE IF"
        },
        expected_version = expected,
        version,
    )
}

/// The span of a batch's produce (a producer span when traces are exported).
fn produce_span(partition: i32, batch: &[EventEnvelope]) -> tracing::Span {
    tracing::info_span!(
        "kafka.produce",
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.destination.partition.id = partition,
        messaging.batch.message_count = batch.len(),
    )
}

#[cfg(test)]
mod tests;
