//! The write path of DESIGN.md: per-aggregate optimistic concurrency in one CQL row, publication
//! to Kafka after the row is committed, and recovery of batches whose writer died in between.
//!
//! 1. load the aggregate's row (or its cached head);
//! 2. publish a pending batch not yet known published (same partition);
//! 3. run the command through the cqrs-es aggregate (business rules → 422, nothing written);
//! 4. write a publish intent (so the sweeper can find the batch), then one LWT
//!    `UPDATE … IF version = v` (`INSERT … IF NOT EXISTS` for a new aggregate), carrying the new
//!    state, version, the batch as `pending` and the idempotency key's answer; a lost race reloads
//!    and retries a bounded number of times, then 409;
//! 5. produce the batch (acks=all, idempotent) to the partition stored in the row;
//! 6. answer; marking the intent published happens off the request path (a crash there only
//!    causes a harmless republication).
//!
//! The sweeper reads each 5-second bucket of intents once, after its writers had time to finish,
//! and republishes the batches still marked unpublished whose LWT did apply.
//!
//! cqrs-es's `CqrsFramework` is not used: its `EventStore` has no place for the idempotency answer,
//! the `If-Match` precondition or the sticky partition, all of which must commit in the same LWT.
//! The cqrs-es `Aggregate` (`handle`/`apply`) is used as is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use events::{EventEnvelope, EventMetadata, ORDER_AGGREGATE};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::order::{Order, OrderCommand, OrderError, OrderStatus};
use crate::publisher::{PublishError, Publisher};

/// One command with what came with it.
#[derive(Debug, Clone)]
pub struct CommandContext {
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

/// What an idempotency key answers again: the first success, status and body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutcome {
    pub status: u16,
    pub body: CommandResponse,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Rule(#[from] OrderError),
    #[error("order {0} does not exist")]
    NotFound(Uuid),
    #[error("the order is at version {actual}, not {expected}")]
    PreconditionFailed { expected: i64, actual: i64 },
    #[error("concurrent writers kept winning after {0} attempts")]
    Conflict(u32),
    #[error("{0} is unavailable: {1}")]
    Unavailable(&'static str, String),
    #[error("{0}")]
    Internal(String),
}

impl From<PublishError> for CommandError {
    fn from(e: PublishError) -> Self {
        CommandError::Unavailable("Kafka", e.to_string())
    }
}

fn cql_unavailable(e: impl std::fmt::Display) -> CommandError {
    CommandError::Unavailable("the CQL database", e.to_string())
}

/// The aggregate's row as the write path needs it.
#[derive(Debug, Clone)]
pub struct Head {
    pub version: i64,
    pub state: Order,
    pub partition: i32,
    pub pending: Vec<EventEnvelope>,
    /// Kafka acknowledged `pending` (as recorded on its intent).
    pub pending_published: bool,
    pub recent: HashMap<String, String>,
}

impl Head {
    /// The last batch is committed but not known to be in Kafka.
    pub fn has_unpublished(&self) -> bool {
        !self.pending.is_empty() && !self.pending_published
    }
}

/// Test-only fault injection between the LWT and the produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    AbortAfterLwt,
    ExitAfterLwt,
}

impl Fault {
    pub fn parse(s: &str) -> Self {
        match s {
            "abort_after_lwt" => Fault::AbortAfterLwt,
            "exit_after_lwt" => Fault::ExitAfterLwt,
            _ => Fault::None,
        }
    }
}

struct Statements {
    load: PreparedStatement,
    insert: PreparedStatement,
    update: PreparedStatement,
    mark_published: PreparedStatement,
    insert_intent: PreparedStatement,
    intent_published: PreparedStatement,
    select_intents: PreparedStatement,
    load_progress: PreparedStatement,
    save_progress: PreparedStatement,
}

pub struct OrderRepository {
    session: Arc<Session>,
    statements: Statements,
    publisher: Arc<Publisher>,
    tenant: String,
    cache: Mutex<HashMap<Uuid, Head>>,
    cache_capacity: usize,
    /// Commands on one aggregate queue up inside an instance instead of racing each other's LWT.
    locks: Vec<tokio::sync::Mutex<()>>,
    max_attempts: u32,
    keys_per_aggregate: usize,
    fault: Fault,
}

const LOCK_STRIPES: usize = 1024;

impl OrderRepository {
    pub async fn new(
        session: Arc<Session>,
        publisher: Arc<Publisher>,
        settings: &infra::Settings,
    ) -> anyhow::Result<Self> {
        // Tables are qualified with the keyspace: prepared statements must not depend on `USE`.
        let keyspace = settings.cql.keyspace.clone();
        let prepare = |cql: &'static str| {
            let session = session.clone();
            let cql = cql
                .replace(" aggregates ", &format!(" {keyspace}.aggregates "))
                .replace(
                    " publish_intents ",
                    &format!(" {keyspace}.publish_intents "),
                )
                .replace(
                    " sweeper_progress ",
                    &format!(" {keyspace}.sweeper_progress "),
                );
            async move {
                session
                    .prepare(cql.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("preparing {cql}: {e}"))
            }
        };
        let statements = Statements {
            load: prepare(
                "SELECT version, state, partition, pending, recent_commands \
                 FROM aggregates WHERE tenant_id = ? AND aggregate_type = ? AND aggregate_id = ?",
            )
            .await?,
            insert: prepare(
                "INSERT INTO aggregates (tenant_id, aggregate_type, aggregate_id, version, state, \
                 partition, pending, recent_commands, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
            )
            .await?,
            update: prepare(
                "UPDATE aggregates SET version = ?, state = ?, pending = ?, recent_commands = ?, \
                 updated_at = ? WHERE tenant_id = ? AND aggregate_type = ? AND aggregate_id = ? \
                 IF version = ?",
            )
            .await?,
            mark_published: prepare(
                "UPDATE publish_intents SET published = true WHERE tenant_id = ? AND bucket = ? \
                 AND aggregate_type = ? AND aggregate_id = ? AND version = ?",
            )
            .await?,
            insert_intent: prepare(
                "INSERT INTO publish_intents (tenant_id, bucket, aggregate_type, aggregate_id, \
                 version, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .await?,
            intent_published: prepare(
                "SELECT published FROM publish_intents WHERE tenant_id = ? AND bucket = ? \
                 AND aggregate_type = ? AND aggregate_id = ? AND version = ?",
            )
            .await?,
            select_intents: prepare(
                "SELECT aggregate_type, aggregate_id, version, published FROM publish_intents \
                 WHERE tenant_id = ? AND bucket = ?",
            )
            .await?,
            load_progress: prepare("SELECT swept_until FROM sweeper_progress WHERE tenant_id = ?")
                .await?,
            // Timestamped with the position itself: racing sweepers can only move it forward.
            save_progress: prepare(
                "UPDATE sweeper_progress USING TIMESTAMP ? SET swept_until = ? WHERE tenant_id = ?",
            )
            .await?,
        };
        let fault = Fault::parse(&settings.command_api.fault);
        if fault != Fault::None {
            tracing::warn!(
                ?fault,
                "FAULT INJECTION IS ON: this instance is for tests only"
            );
        }
        Ok(Self {
            session,
            statements,
            publisher,
            tenant: settings.tenant.clone(),
            cache: Mutex::new(HashMap::new()),
            cache_capacity: settings.command_api.cache_capacity.max(1),
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            max_attempts: settings.command_api.max_lwt_attempts.max(1),
            keys_per_aggregate: settings.command_api.idempotency_keys_per_aggregate,
            fault,
        })
    }

    fn cached(&self, id: Uuid) -> Option<Head> {
        self.cache.lock().ok()?.get(&id).cloned()
    }

    fn remember(&self, id: Uuid, head: Head) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= self.cache_capacity && !cache.contains_key(&id) {
                // Evict an arbitrary entry; a miss only costs one read.
                if let Some(victim) = cache.keys().next().copied() {
                    cache.remove(&victim);
                }
            }
            cache.insert(id, head);
        }
    }

    fn forget(&self, id: Uuid) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(&id);
        }
    }

    /// Read the aggregate's row.
    pub async fn load(&self, id: Uuid) -> Result<Option<Head>, CommandError> {
        type RowT = (
            Option<i64>,
            Option<String>,
            Option<i32>,
            Option<String>,
            Option<HashMap<String, String>>,
        );
        let result = self
            .session
            .execute_unpaged(&self.statements.load, (&self.tenant, ORDER_AGGREGATE, id))
            .await
            .map_err(cql_unavailable)?;
        let rows = result
            .into_rows_result()
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        let row = rows
            .maybe_first_row::<RowT>()
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        let Some((version, state, partition, pending, recent)) = row else {
            return Ok(None);
        };
        let state: Order = serde_json::from_str(state.as_deref().unwrap_or("{}"))
            .map_err(|e| CommandError::Internal(format!("stored state of {id}: {e}")))?;
        let pending: Vec<EventEnvelope> = match pending.as_deref() {
            Some(p) if !p.is_empty() => serde_json::from_str(p)
                .map_err(|e| CommandError::Internal(format!("pending batch of {id}: {e}")))?,
            _ => Vec::new(),
        };
        let version = version.unwrap_or(0);
        let pending_published = match pending.last() {
            Some(last) => {
                self.intent_is_published(id, last.occurred_at, version)
                    .await?
            }
            None => true,
        };
        Ok(Some(Head {
            version,
            state,
            partition: partition.unwrap_or(0),
            pending,
            pending_published,
            recent: recent.unwrap_or_default(),
        }))
    }

    /// Whether the intent of the batch ending at `version` (written at `at`) is marked published.
    /// A missing intent (expired) counts as unpublished: republishing is always safe.
    async fn intent_is_published(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        version: i64,
    ) -> Result<bool, CommandError> {
        let result = self
            .session
            .execute_unpaged(
                &self.statements.intent_published,
                (&self.tenant, bucket_of(at), ORDER_AGGREGATE, id, version),
            )
            .await
            .map_err(cql_unavailable)?;
        let published = result
            .into_rows_result()
            .map_err(|e| CommandError::Internal(e.to_string()))?
            .maybe_first_row::<(Option<bool>,)>()
            .map_err(|e| CommandError::Internal(e.to_string()))?
            .and_then(|(p,)| p)
            .unwrap_or(false);
        Ok(published)
    }

    /// Run one command through the write path.
    #[tracing::instrument(skip_all, fields(order_id = %ctx.order_id, command = ctx.command.name()))]
    pub async fn execute(&self, ctx: CommandContext) -> Result<CommandOutcome, CommandError> {
        let id = ctx.order_id;
        let _turn = self.locks[stripe(id)].lock().await;
        let mut head = self.cached(id);
        let mut from_cache = head.is_some();
        // Placing an order needs no read first: its `INSERT … IF NOT EXISTS` tells whether the
        // row exists, and only then is it read (to answer a replay or refuse a second placing).
        let mut assume_new = head.is_none()
            && ctx.if_match.is_none()
            && matches!(ctx.command, OrderCommand::PlaceOrder { .. });
        let mut attempt = 1;
        while attempt <= self.max_attempts {
            if !from_cache && !assume_new {
                head = self.load(id).await?;
            }
            if attempt > 1 {
                metrics::counter!("command_lwt_retries_total").increment(1);
            }
            match self.attempt(&ctx, head.take()).await? {
                Attempt::Done(outcome) => return Ok(outcome),
                Attempt::LostRace if assume_new => {
                    // The order exists: read it and decide again; not a lost race.
                    assume_new = false;
                    from_cache = false;
                    continue;
                }
                Attempt::LostRace => {
                    metrics::counter!("command_lwt_conflicts_total").increment(1);
                    tracing::debug!(attempt, "LWT lost a race; reloading");
                    self.forget(id);
                    from_cache = false;
                }
            }
            attempt += 1;
        }
        Err(CommandError::Conflict(self.max_attempts))
    }

    async fn attempt(
        &self,
        ctx: &CommandContext,
        head: Option<Head>,
    ) -> Result<Attempt, CommandError> {
        let id = ctx.order_id;
        let is_place = matches!(ctx.command, OrderCommand::PlaceOrder { .. });

        if let (Some(key), Some(head)) = (&ctx.idempotency_key, &head) {
            if let Some(stored) = head.recent.get(key) {
                if let Ok(outcome) = serde_json::from_str::<CommandOutcome>(stored) {
                    metrics::counter!("command_idempotent_replays_total").increment(1);
                    return Ok(Attempt::Done(outcome));
                }
            }
        }
        let mut head = match head {
            Some(head) => head,
            None if is_place => Head {
                version: 0,
                state: Order::default(),
                partition: self.publisher.partition_for(id),
                pending: Vec::new(),
                pending_published: true,
                recent: HashMap::new(),
            },
            None => return Err(CommandError::NotFound(id)),
        };
        if let Some(expected) = ctx.if_match {
            if expected != head.version {
                return Err(CommandError::PreconditionFailed {
                    expected,
                    actual: head.version,
                });
            }
        }
        if head.version > 0 && head.state.status == OrderStatus::New {
            return Err(CommandError::Internal(format!("row of {id} has no state")));
        }
        if is_place && head.version > 0 {
            return Err(OrderError::AlreadyPlaced.into());
        }

        // Refuse up front while Kafka is known to be down: nothing is written for a refused
        // command, and it does not wait for a produce that cannot succeed.
        self.publisher.check_available().await?;

        // 2. A batch committed by a writer that did not live to publish it goes first.
        if head.has_unpublished() {
            self.publisher
                .publish(head.partition, &head.pending)
                .await?;
            metrics::counter!("command_pending_republished_total").increment(1);
            self.after_publish(id, &head.pending, head.version);
            head.pending_published = true;
            self.remember(id, head.clone());
        }

        // 3. Business rules, through the cqrs-es aggregate.
        let mut state = head.state.clone();
        let sink = EventSink::default();
        state.handle(ctx.command.clone(), &(), &sink).await?;
        let new_events = sink.collect().await;
        if new_events.is_empty() {
            return Err(CommandError::Internal("command produced no event".into()));
        }

        let now = Utc::now();
        let batch: Vec<EventEnvelope> = new_events
            .iter()
            .enumerate()
            .map(|(i, event)| EventEnvelope {
                event_id: Uuid::now_v7(),
                tenant_id: self.tenant.clone(),
                aggregate_type: ORDER_AGGREGATE.to_string(),
                aggregate_id: id,
                sequence: (head.version + 1 + i as i64) as u64,
                event_type: event.0.event_type().to_string(),
                schema_version: event.0.schema_version(),
                occurred_at: now,
                metadata: ctx.metadata.clone(),
                payload: event.0.to_payload(),
            })
            .collect();
        let new_version = head.version + batch.len() as i64;
        let outcome = CommandOutcome {
            status: if is_place { 201 } else { 200 },
            body: CommandResponse {
                order_id: id,
                version: new_version,
                events: batch
                    .iter()
                    .map(|e| EventRef {
                        event_id: e.event_id,
                        sequence: e.sequence as i64,
                        event_type: e.event_type.clone(),
                    })
                    .collect(),
            },
        };
        let mut recent = head.recent.clone();
        if let Some(key) = &ctx.idempotency_key {
            recent.insert(
                key.clone(),
                serde_json::to_string(&outcome).unwrap_or_default(),
            );
            prune_recent(&mut recent, self.keys_per_aggregate);
        }

        // 4. Intent first, then the LWT.
        let bucket = bucket_of(now);
        self.session
            .execute_unpaged(
                &self.statements.insert_intent,
                (&self.tenant, bucket, ORDER_AGGREGATE, id, new_version, now),
            )
            .await
            .map_err(cql_unavailable)?;
        let state_json = serde_json::to_string(&state).unwrap_or_default();
        let pending_json = serde_json::to_string(&batch).unwrap_or_default();
        let applied = if head.version == 0 {
            self.lwt(
                &self.statements.insert,
                (
                    &self.tenant,
                    ORDER_AGGREGATE,
                    id,
                    new_version,
                    &state_json,
                    head.partition,
                    &pending_json,
                    &recent,
                    now,
                    now,
                ),
            )
            .await?
        } else {
            self.lwt(
                &self.statements.update,
                (
                    new_version,
                    &state_json,
                    &pending_json,
                    &recent,
                    now,
                    &self.tenant,
                    ORDER_AGGREGATE,
                    id,
                    head.version,
                ),
            )
            .await?
        };
        if !applied {
            return Ok(Attempt::LostRace);
        }
        let committed = Head {
            version: new_version,
            state,
            partition: head.partition,
            pending: batch,
            pending_published: false,
            recent,
        };
        self.remember(id, committed.clone());

        match self.fault {
            Fault::None => {}
            Fault::AbortAfterLwt => {
                self.forget(id);
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
        self.publisher
            .publish(committed.partition, &committed.pending)
            .await?;
        // 6. Off the request path.
        self.after_publish(id, &committed.pending, new_version);
        self.remember(
            id,
            Head {
                pending_published: true,
                ..committed
            },
        );
        Ok(Attempt::Done(outcome))
    }

    async fn lwt(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<bool, CommandError> {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(cql_unavailable)?;
        let rows = result
            .into_rows_result()
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        let row: Option<Row> = rows
            .maybe_first_row::<Row>()
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        Ok(matches!(
            row.as_ref().and_then(|r| r.columns.first()),
            Some(Some(CqlValue::Boolean(true)))
        ))
    }

    /// Record on its intent that the batch ending at `version` is in Kafka, in the background.
    fn after_publish(&self, id: Uuid, batch: &[EventEnvelope], version: i64) {
        let Some(bucket) = batch.last().map(|e| bucket_of(e.occurred_at)) else {
            return;
        };
        let session = self.session.clone();
        let mark = self.statements.mark_published.clone();
        let tenant = self.tenant.clone();
        tokio::spawn(async move {
            if let Err(e) = session
                .execute_unpaged(&mark, (&tenant, bucket, ORDER_AGGREGATE, id, version))
                .await
            {
                tracing::warn!(order_id = %id, error = %e, "marking a batch published failed");
            }
        });
    }

    /// One sweeper pass: every bucket of intents from where the sweepers stopped (at most
    /// `lookback_minutes` ago) up to `grace` ago is read once; each batch still unpublished whose
    /// LWT applied is published. Returns the batches republished.
    pub async fn sweep(
        &self,
        grace: std::time::Duration,
        lookback_minutes: u32,
    ) -> Result<usize, CommandError> {
        let now = Utc::now();
        let horizon = now - TimeDelta::from_std(grace).unwrap_or(TimeDelta::seconds(10));
        let oldest = bucket_of(now - TimeDelta::minutes(i64::from(lookback_minutes)));
        let progress = self.sweep_progress().await?;
        let mut bucket = progress.map_or(oldest, |p| bucket_of(p).max(oldest));
        let mut republished = 0;
        // Only whole buckets that ended before the horizon: no writer of theirs is still running.
        while bucket + bucket_length() <= horizon {
            republished += self.sweep_bucket(bucket).await?;
            bucket += bucket_length();
            self.session
                .execute_unpaged(
                    &self.statements.save_progress,
                    (bucket.timestamp_micros(), bucket, &self.tenant),
                )
                .await
                .map_err(cql_unavailable)?;
        }
        Ok(republished)
    }

    async fn sweep_progress(&self) -> Result<Option<DateTime<Utc>>, CommandError> {
        let result = self
            .session
            .execute_unpaged(&self.statements.load_progress, (&self.tenant,))
            .await
            .map_err(cql_unavailable)?;
        Ok(result
            .into_rows_result()
            .map_err(|e| CommandError::Internal(e.to_string()))?
            .maybe_first_row::<(Option<DateTime<Utc>>,)>()
            .map_err(|e| CommandError::Internal(e.to_string()))?
            .and_then(|(p,)| p))
    }

    async fn sweep_bucket(&self, bucket: DateTime<Utc>) -> Result<usize, CommandError> {
        let result = self
            .session
            .execute_unpaged(&self.statements.select_intents, (&self.tenant, bucket))
            .await
            .map_err(cql_unavailable)?;
        let intents: Vec<(String, Uuid, i64, Option<bool>)> = result
            .into_rows_result()
            .map_err(|e| CommandError::Internal(e.to_string()))?
            .rows::<(String, Uuid, i64, Option<bool>)>()
            .map_err(|e| CommandError::Internal(e.to_string()))?
            .filter_map(Result::ok)
            .collect();
        let mut republished = 0;
        for (aggregate_type, id, version, published) in intents {
            if aggregate_type != ORDER_AGGREGATE || published == Some(true) {
                continue;
            }
            let _turn = self.locks[stripe(id)].lock().await;
            // The row tells whether this intent's LWT applied and whether its batch is still the
            // pending one (a later batch means a later writer published this one first).
            let Some(head) = self.load(id).await? else {
                continue;
            };
            if head.version == version && head.has_unpublished() {
                self.publisher
                    .publish(head.partition, &head.pending)
                    .await?;
                metrics::counter!("sweeper_republished_total").increment(1);
                tracing::info!(order_id = %id, version, "sweeper republished a batch");
                self.after_publish(id, &head.pending, version);
                self.forget(id);
                republished += 1;
            }
        }
        Ok(republished)
    }
}

enum Attempt {
    Done(CommandOutcome),
    LostRace,
}

fn stripe(id: Uuid) -> usize {
    (id.as_u128() as u64 % LOCK_STRIPES as u64) as usize
}

/// Intents are grouped by the 5-second span they were written in.
fn bucket_length() -> TimeDelta {
    TimeDelta::seconds(5)
}

fn bucket_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(bucket_length()).unwrap_or(t)
}

/// Keep the `keep` most recent idempotency answers (by the version they produced).
fn prune_recent(recent: &mut HashMap<String, String>, keep: usize) {
    if recent.len() <= keep {
        return;
    }
    let mut by_version: Vec<(i64, String)> = recent
        .iter()
        .map(|(k, v)| {
            let version = serde_json::from_str::<CommandOutcome>(v)
                .map(|o| o.body.version)
                .unwrap_or(0);
            (version, k.clone())
        })
        .collect();
    by_version.sort();
    let excess = recent.len() - keep;
    for (_, key) in by_version.into_iter().take(excess) {
        recent.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(version: i64) -> String {
        serde_json::to_string(&CommandOutcome {
            status: 200,
            body: CommandResponse {
                order_id: Uuid::nil(),
                version,
                events: vec![],
            },
        })
        .unwrap()
    }

    #[test]
    fn pruning_keeps_the_newest_idempotency_answers() {
        let mut recent: HashMap<String, String> =
            (1..=5).map(|v| (format!("k{v}"), outcome(v))).collect();
        prune_recent(&mut recent, 3);
        let mut keys: Vec<_> = recent.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, vec!["k3", "k4", "k5"]);
    }

    #[test]
    fn buckets_are_whole_five_second_spans() {
        let t = DateTime::parse_from_rfc3339("2026-11-27T10:11:12.345Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(bucket_of(t).to_rfc3339(), "2026-11-27T10:11:10+00:00");
    }

    #[test]
    fn a_head_with_an_unconfirmed_batch_needs_publishing() {
        let env = EventEnvelope {
            event_id: Uuid::nil(),
            tenant_id: "default".into(),
            aggregate_type: "order".into(),
            aggregate_id: Uuid::nil(),
            sequence: 3,
            event_type: "OrderCancelled".into(),
            schema_version: 1,
            occurred_at: Utc::now(),
            metadata: EventMetadata::default(),
            payload: serde_json::json!({"reason": "r"}),
        };
        let mut head = Head {
            version: 3,
            state: Order::default(),
            partition: 0,
            pending: vec![env],
            pending_published: false,
            recent: HashMap::new(),
        };
        assert!(head.has_unpublished());
        head.pending_published = true;
        assert!(!head.has_unpublished());
    }

    #[test]
    fn fault_names_parse_and_default_to_none() {
        assert_eq!(Fault::parse("abort_after_lwt"), Fault::AbortAfterLwt);
        assert_eq!(Fault::parse("exit_after_lwt"), Fault::ExitAfterLwt);
        assert_eq!(Fault::parse("none"), Fault::None);
        assert_eq!(Fault::parse("garbage"), Fault::None);
    }
}
