//! What one attempt decides on a given row, without any I/O: answer again, refuse, or the exact
//! row and batch to commit. The caller ([`super::WritePath`]) supplies the row and does the writes.

use std::collections::HashMap;

use chrono::Utc;
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use events::{EventEnvelope, ORDER_AGGREGATE};
use uuid::Uuid;

use super::head::Head;
use super::idempotency::{self, Remembered};
use super::{CommandContext, CommandError, CommandOutcome, CommandResponse, EventRef};
use crate::domain::order::{Order, OrderCommand, OrderError, OrderStatus};

/// The outcome of the checks that come before the command runs.
pub enum Checked {
    /// The key already answered this request on this row.
    Replay { head: Head, outcome: CommandOutcome },
    /// Run the command on this row (a fresh one for a new order).
    Run(Head),
}

/// Idempotency, existence and `If-Match`, in that order: a replay answers whatever the row's
/// version is now.
pub fn check(
    ctx: &CommandContext,
    fingerprint: Uuid,
    head: Option<Head>,
    new_partition: impl FnOnce() -> i32,
) -> Result<Checked, CommandError> {
    let id = ctx.order_id;
    let is_place = matches!(ctx.command, OrderCommand::PlaceOrder { .. });
    if let Some(head) = &head {
        match idempotency::remembered(&head.recent, ctx.idempotency_key.as_deref(), fingerprint) {
            Remembered::New => {}
            Remembered::Reused => return Err(CommandError::KeyReused),
            Remembered::Replay(outcome) => {
                return Ok(Checked::Replay {
                    head: head.clone(),
                    outcome,
                })
            }
        }
    }
    let head = match head {
        Some(head) => head,
        None if is_place => Head {
            version: 0,
            state: Order::default(),
            partition: new_partition(),
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
    Ok(Checked::Run(head))
}

/// What to commit: the row after the command, and the batch it produced.
pub struct Commit {
    /// The version the LWT expects (0: the row must not exist).
    pub expected: i64,
    pub state: Order,
    pub partition: i32,
    pub batch: Vec<EventEnvelope>,
    pub recent: HashMap<String, String>,
    pub outcome: CommandOutcome,
}

/// Run the command through the cqrs-es aggregate (business rules → 422) and build the commit.
pub async fn run(
    ctx: &CommandContext,
    fingerprint: Uuid,
    head: &Head,
    tenant: &str,
    keys_per_aggregate: usize,
) -> Result<Commit, CommandError> {
    let id = ctx.order_id;
    let is_place = matches!(ctx.command, OrderCommand::PlaceOrder { .. });
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
            tenant_id: tenant.to_string(),
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
    let outcome = CommandOutcome {
        status: if is_place { 201 } else { 200 },
        body: CommandResponse {
            order_id: id,
            version: head.version + batch.len() as i64,
            events: batch
                .iter()
                .map(|e| EventRef {
                    event_id: e.event_id,
                    sequence: e.sequence as i64,
                    event_type: e.event_type.clone(),
                })
                .collect(),
        },
        fingerprint: Some(fingerprint),
    };
    let mut recent = head.recent.clone();
    if let Some(key) = &ctx.idempotency_key {
        let answer = serde_json::to_string(&outcome)
            .map_err(|e| CommandError::Internal(format!("encoding the answer: {e}")))?;
        recent.insert(key.clone(), answer);
        idempotency::prune(&mut recent, keys_per_aggregate);
    }
    Ok(Commit {
        expected: head.version,
        state,
        partition: head.partition,
        batch,
        recent,
        outcome,
    })
}
