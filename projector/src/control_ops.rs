//! The operations of projection control, shared by the HTTP routes ([`crate::control_http`]) and
//! `projector ctl` ([`crate::ctl`]): each checks its request, acts on CQL and Kafka, logs and
//! audits the change with its actor and reason, and answers a JSON report or a [`ControlError`].
//!
//! | operation | needs | effect |
//! |---|---|---|
//! | pause | running | `paused = true`; answers once every live instance stopped its consumers (or after the wait, listing those that had not) |
//! | resume | paused | `paused = false`; instances start their consumers within a second, from the stored offsets |
//! | reset | paused, every live instance stopped, no rebuild under way | rewrites the active generation's stored offsets (per partition, or those of a time) |
//! | skip | paused, the record not applied yet | records `(partition, offset)`; consumers move past it without applying it |
//! | dead letters | — | lists the projection's dead letters |
//! | redrive | — | applies the dead letters not re-driven yet to the active generation |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use infra::Settings;
use scylla::client::session::Session;
use serde::{Deserialize, Serialize};

use crate::control::{
    check_offsets, AuditEntry, ControlState, ControlStore, Heartbeat, Quiescence, ResetTarget,
    Skip, ACTION_PAUSE, ACTION_REDRIVE, ACTION_RESET, ACTION_RESUME, ACTION_SKIP,
};
use crate::dead_letters::{self, DeadLetter, RedriveReport};
use crate::projections::{self, Projection};
use crate::registry::{OffsetStore, Registry};
use crate::topic::TopicInfo;

/// The longest a reason may be.
pub const MAX_REASON: usize = 500;
/// How long a pause waits for the instances to stop, and a reset for them to have stopped.
pub const DEFAULT_QUIET_WAIT: Duration = Duration::from_secs(30);

/// Why an operation was refused or failed; the HTTP status follows.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// 404: no such projection.
    #[error("{0}")]
    NotFound(String),
    /// 422: a value out of range (`field`, message).
    #[error("{0}: {1}")]
    Invalid(String, String),
    /// 409: the projection is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// 503: CQL or Kafka did not answer.
    #[error("{0:#}")]
    Unavailable(anyhow::Error),
}

impl From<anyhow::Error> for ControlError {
    fn from(err: anyhow::Error) -> Self {
        ControlError::Unavailable(err)
    }
}

pub type ControlResult<T> = Result<T, ControlError>;

/// A reason: required, not blank, at most [`MAX_REASON`] characters.
pub fn check_reason(reason: &str) -> ControlResult<&str> {
    let trimmed = reason.trim();
    if trimmed.is_empty() {
        return Err(ControlError::Invalid(
            "reason".into(),
            "must not be blank".into(),
        ));
    }
    if trimmed.chars().count() > MAX_REASON {
        return Err(ControlError::Invalid(
            "reason".into(),
            format!("at most {MAX_REASON} characters"),
        ));
    }
    Ok(trimmed)
}

/// Who asked and why.
#[derive(Debug, Clone)]
pub struct Change {
    pub actor: String,
    pub reason: String,
}

/// The answer to a pause or a resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseReport {
    pub state: ControlState,
    /// pause: the live instances that stopped (acknowledged) and those that had not within the
    /// wait; empty lists for a resume.
    pub acknowledged: Vec<String>,
    pub pending: Vec<String>,
}

/// The answer to a reset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetReport {
    pub projection: String,
    pub generation: i32,
    /// Stored next offsets before and after, per partition.
    pub previous: BTreeMap<i32, i64>,
    pub offsets: BTreeMap<i32, i64>,
    pub to_time: Option<DateTime<Utc>>,
}

/// The answer to a skip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipReport {
    pub projection: String,
    pub generation: i32,
    pub partition: i32,
    pub offset: i64,
    /// The partition's stored next offset now (the record is at or after it).
    pub next_offset: i64,
}

/// A projection's control state, with what the instances report and the latest changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlStatus {
    pub state: ControlState,
    pub active_generation: i32,
    pub building_generation: Option<i32>,
    /// Stored next offsets of the active generation.
    pub offsets: BTreeMap<i32, i64>,
    pub skips: Vec<Skip>,
    /// Live instances' last heartbeats.
    pub instances: Vec<Heartbeat>,
    /// The newest changes first.
    pub audit: Vec<AuditEntry>,
}

/// The answer to a dead-letter listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterList {
    pub projection: String,
    /// How many dead letters the projection has in all.
    pub total: usize,
    pub dead_letters: Vec<DeadLetter>,
}

/// Carries out control operations for one deployment (keyspace, topics).
#[derive(Clone)]
pub struct Controller {
    pub settings: Arc<Settings>,
    pub store: ControlStore,
    pub registry: Registry,
    pub topic: TopicInfo,
    /// How long a pause waits for the instances to stop.
    pub quiet_wait: Duration,
}

impl Controller {
    pub async fn new(settings: Settings, session: Arc<Session>) -> anyhow::Result<Self> {
        let keyspace = settings.cql.keyspace.clone();
        Ok(Self {
            store: ControlStore::new(session.clone(), &keyspace).await?,
            registry: Registry::new(session, &keyspace),
            topic: TopicInfo::new(&settings.kafka)?,
            settings: Arc::new(settings),
            quiet_wait: DEFAULT_QUIET_WAIT,
        })
    }

    fn projection(&self, name: &str) -> ControlResult<Arc<dyn Projection>> {
        projections::by_name(name).ok_or_else(|| {
            let known: Vec<_> = projections::all().iter().map(|p| p.name()).collect();
            ControlError::NotFound(format!(
                "no projection {name:?} (known: {})",
                known.join(", ")
            ))
        })
    }

    async fn offsets(&self, name: &str, generation: i32) -> anyhow::Result<OffsetStore> {
        OffsetStore::new(
            self.registry.session().clone(),
            self.registry.keyspace(),
            name,
            generation,
            &self.settings.kafka.topic,
        )
        .await
    }

    async fn audit(
        &self,
        name: &str,
        change: &Change,
        action: &str,
        detail: serde_json::Value,
    ) -> anyhow::Result<()> {
        tracing::info!(
            projection = name,
            actor = %change.actor,
            action,
            reason = %change.reason,
            detail = %detail,
            "projection control change"
        );
        self.store
            .audit(name, &change.actor, action, &change.reason, &detail)
            .await
    }

    pub async fn status(&self, name: &str) -> ControlResult<ControlStatus> {
        let projection = self.projection(name)?;
        let name = projection.name();
        let registry = self.registry.ensure(projection.as_ref()).await?;
        let offsets = self
            .offsets(name, registry.active_generation)
            .await?
            .load()
            .await?;
        let now = Utc::now();
        Ok(ControlStatus {
            state: self.store.state(name).await?,
            active_generation: registry.active_generation,
            building_generation: registry.building_generation,
            offsets,
            skips: self.store.skips(name).await?,
            instances: self
                .store
                .heartbeats(name)
                .await?
                .into_iter()
                .filter(|b| b.live(now))
                .collect(),
            audit: self.store.recent_audit(name, 20).await?,
        })
    }

    pub async fn pause(&self, name: &str, change: &Change) -> ControlResult<PauseReport> {
        let name = self.projection(name)?.name();
        check_reason(&change.reason)?;
        let Some(state) = self
            .store
            .set_paused(name, true, &change.actor, &change.reason)
            .await?
        else {
            return Err(ControlError::Conflict(format!("{name} is already paused")));
        };
        self.audit(name, change, ACTION_PAUSE, serde_json::json!({}))
            .await?;
        let quiet = self
            .store
            .await_quiet(name, state.changed_at, self.quiet_wait)
            .await?;
        if !quiet.quiet() {
            tracing::warn!(projection = name, pending = ?quiet.pending, "paused, but some instances have not stopped yet");
        }
        Ok(PauseReport {
            state,
            acknowledged: quiet.acknowledged,
            pending: quiet.pending,
        })
    }

    pub async fn resume(&self, name: &str, change: &Change) -> ControlResult<PauseReport> {
        let name = self.projection(name)?.name();
        check_reason(&change.reason)?;
        let Some(state) = self
            .store
            .set_paused(name, false, &change.actor, &change.reason)
            .await?
        else {
            return Err(ControlError::Conflict(format!("{name} is not paused")));
        };
        self.audit(name, change, ACTION_RESUME, serde_json::json!({}))
            .await?;
        Ok(PauseReport {
            state,
            acknowledged: Vec::new(),
            pending: Vec::new(),
        })
    }

    /// Paused, and every live instance stopped for this pause: nothing can write offsets.
    async fn require_quiet(&self, name: &str, what: &str) -> ControlResult<ControlState> {
        let state = self.store.state(name).await?;
        if !state.paused {
            return Err(ControlError::Conflict(format!(
                "{name} is not paused: pause it before a {what} (POST /v1/projections/{name}/pause)"
            )));
        }
        let quiet: Quiescence = self
            .store
            .await_quiet(name, state.changed_at, self.quiet_wait)
            .await?;
        if !quiet.quiet() {
            return Err(ControlError::Conflict(format!(
                "{name} is paused but these instances have not stopped consuming yet: {}",
                quiet.pending.join(", ")
            )));
        }
        Ok(state)
    }

    pub async fn reset(
        &self,
        name: &str,
        target: &ResetTarget,
        change: &Change,
    ) -> ControlResult<ResetReport> {
        let projection = self.projection(name)?;
        let name = projection.name();
        check_reason(&change.reason)?;
        let marks = self.topic.watermarks().await?;
        let (offsets, to_time) = match target {
            ResetTarget::Offsets(offsets) => {
                check_offsets(offsets, &marks)
                    .map_err(|e| ControlError::Invalid("offsets".into(), e))?;
                (offsets.clone(), None)
            }
            ResetTarget::Time(at) => (self.topic.offsets_at(*at).await?, Some(*at)),
        };
        let registry = self.registry.ensure(projection.as_ref()).await?;
        if let Some(building) = registry.building_generation {
            return Err(ControlError::Conflict(format!(
                "{name} is being rebuilt into generation {building}; reset once it switched"
            )));
        }
        self.require_quiet(name, "reset").await?;
        let generation = registry.active_generation;
        let store = self.offsets(name, generation).await?;
        let previous = store.load().await?;
        store.save(&offsets).await?;
        let report = ResetReport {
            projection: name.to_string(),
            generation,
            previous,
            offsets,
            to_time,
        };
        self.audit(
            name,
            change,
            ACTION_RESET,
            serde_json::json!({
                "generation": generation,
                "previous": report.previous,
                "offsets": report.offsets,
                "to_time": to_time,
            }),
        )
        .await?;
        Ok(report)
    }

    pub async fn skip(
        &self,
        name: &str,
        partition: i32,
        offset: i64,
        change: &Change,
    ) -> ControlResult<SkipReport> {
        let projection = self.projection(name)?;
        let name = projection.name();
        check_reason(&change.reason)?;
        let marks = self.topic.watermarks().await?;
        let Some(mark) = marks.get(&partition) else {
            return Err(ControlError::Invalid(
                "partition".into(),
                format!(
                    "partition {partition} does not exist (the topic has {})",
                    marks.len()
                ),
            ));
        };
        if offset < mark.low || offset >= mark.high {
            return Err(ControlError::Invalid(
                "offset".into(),
                format!(
                    "partition {partition} holds offsets {}..{}, not {offset}",
                    mark.low, mark.high
                ),
            ));
        }
        let registry = self.registry.ensure(projection.as_ref()).await?;
        self.require_quiet(name, "skip").await?;
        let generation = registry.active_generation;
        let next = self
            .offsets(name, generation)
            .await?
            .load()
            .await?
            .get(&partition)
            .copied()
            .unwrap_or(mark.low);
        if offset < next {
            return Err(ControlError::Conflict(format!(
                "{name} g{generation} has already applied partition {partition} up to {next}; \
                 offset {offset} is behind it (reset before it first to re-apply without it)"
            )));
        }
        self.store
            .add_skip(name, partition, offset, &change.actor, &change.reason)
            .await?;
        self.audit(
            name,
            change,
            ACTION_SKIP,
            serde_json::json!({"generation": generation, "partition": partition, "offset": offset}),
        )
        .await?;
        Ok(SkipReport {
            projection: name.to_string(),
            generation,
            partition,
            offset,
            next_offset: next,
        })
    }

    pub async fn dead_letters(&self, name: &str, limit: usize) -> ControlResult<DeadLetterList> {
        let projection = self.projection(name)?;
        let name = projection.name();
        let registry = self.registry.ensure(projection.as_ref()).await?;
        let done = self
            .store
            .redriven(name, registry.active_generation)
            .await?;
        let letters = dead_letters::read(&self.settings.kafka, name).await?;
        let total = letters.len();
        let dead_letters = letters
            .into_iter()
            .take(limit)
            .map(|(mut letter, _)| {
                letter.redriven = letter.origin().is_some_and(|o| done.contains(&o));
                letter
            })
            .collect();
        Ok(DeadLetterList {
            projection: name.to_string(),
            total,
            dead_letters,
        })
    }

    pub async fn redrive(&self, name: &str, change: &Change) -> ControlResult<RedriveReport> {
        let projection = self.projection(name)?;
        let name = projection.name();
        check_reason(&change.reason)?;
        let registry = self.registry.ensure(projection.as_ref()).await?;
        let report = dead_letters::redrive(
            &self.settings,
            &self.store,
            projection.as_ref(),
            registry.active_generation,
            &change.actor,
        )
        .await?;
        self.audit(
            name,
            change,
            ACTION_REDRIVE,
            serde_json::json!({
                "generation": report.generation,
                "applied": report.applied,
                "failed": report.failed,
                "already_redriven": report.already_redriven,
            }),
        )
        .await?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_required_and_bounded() {
        assert_eq!(check_reason("  bad deploy ").unwrap(), "bad deploy");
        assert!(matches!(
            check_reason("   "),
            Err(ControlError::Invalid(field, _)) if field == "reason"
        ));
        assert!(check_reason(&"x".repeat(MAX_REASON + 1)).is_err());
        assert!(check_reason(&"x".repeat(MAX_REASON)).is_ok());
    }
}
