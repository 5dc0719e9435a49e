//! Operators' control of a projection: pause, resume, reset, skip, and the audit of every change.
//!
//! **State.** `projection_control` holds whether a projection is paused, who changed it, why and
//! when (`changed_at` also names the pause: see below); `projection_skips` the records its consumers
//! move past; `projection_audit` every change with who, why and what. The service reads the control
//! row and the skips of each projection it runs every second with the registry ([`Gate::update`]),
//! *before* it starts any consumer, so a pause holds on every instance, across restarts and
//! rebalances: a paused projection has no consumer anywhere, and its lag grows.
//!
//! **Acknowledgements.** Every instance writes a heartbeat per projection every second
//! (`projection_instances`): whether it runs a consumer of it, and which pause (the control row's
//! `changed_at`) it has stopped all of them for. A consumer stopping for a pause abandons the batch
//! in hand without writing its offsets, so once an instance acknowledges a pause, nothing of it can
//! still write offsets.
//!
//! **The reset race, and how it is closed.** A consumer writes a batch's offsets after the view
//! writes; a reset written while any consumer is still working would be overwritten by that
//! consumer's next offsets write. So a reset (and a skip) requires the projection to be paused, and
//! writes only once every *live* instance acknowledged the current pause. An instance is live while
//! its heartbeat is younger than [`LEASE`]. An instance that stopped heartbeating (killed, frozen,
//! cut off from CQL) cannot write offsets either: every consumer checks, before each offsets write,
//! that its instance confirmed the control state within [`FENCE`], and otherwise waits. The lease
//! (20 s) covers the fence (5 s), one CQL request timeout for a write already under way (5 s) and a
//! clock difference between hosts of up to 5 s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimeuuid, CqlValue, Row};
use serde::{Deserialize, Serialize};

/// How long a heartbeat keeps an instance counted as live.
pub const LEASE: Duration = Duration::from_secs(20);
/// How old an instance's last confirmation of the control state may be before its consumers stop
/// writing offsets (and wait for a fresh one).
pub const FENCE: Duration = Duration::from_secs(5);
/// How long heartbeat rows live (a dead instance's row goes away).
const HEARTBEAT_TTL_SECS: i32 = 300;

pub const ACTION_PAUSE: &str = "pause";
pub const ACTION_RESUME: &str = "resume";
pub const ACTION_RESET: &str = "reset";
pub const ACTION_SKIP: &str = "skip";
pub const ACTION_REDRIVE: &str = "redrive";

/// Metrics of the control surface.
pub const PAUSED: &str = "projector_paused";
pub const SKIPPED: &str = "projector_skipped_total";
pub const REDRIVEN: &str = "projector_redriven_total";
pub const CONTROL_CHANGES: &str = "projector_control_changes_total";

/// One projection's control row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    pub projection: String,
    pub paused: bool,
    pub changed_by: Option<String>,
    pub reason: Option<String>,
    /// When the state last changed; also the identity of the current pause.
    pub changed_at: Option<DateTime<Utc>>,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub reason: String,
    pub detail: serde_json::Value,
}

/// A record to move past.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skip {
    pub partition: i32,
    pub offset: i64,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
}

/// One instance's last heartbeat for a projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub instance: String,
    pub consuming: bool,
    /// The pause (its `changed_at`) this instance stopped every consumer for.
    pub acked_pause: Option<DateTime<Utc>>,
    pub heartbeat_at: Option<DateTime<Utc>>,
}

impl Heartbeat {
    /// Heard from within the [`LEASE`] (by this host's clock).
    pub fn live(&self, now: DateTime<Utc>) -> bool {
        let lease = chrono::Duration::from_std(LEASE).unwrap_or_else(|_| chrono::Duration::zero());
        self.heartbeat_at.is_some_and(|at| at > now - lease)
    }

    /// Stopped for exactly this pause.
    pub fn acknowledges(&self, pause: Option<DateTime<Utc>>) -> bool {
        !self.consuming && pause.is_some() && self.acked_pause == pause
    }
}

/// Which live instances have stopped for a pause, and which have not (yet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quiescence {
    pub acknowledged: Vec<String>,
    pub pending: Vec<String>,
}

impl Quiescence {
    pub fn of(beats: &[Heartbeat], pause: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Self {
        let mut q = Self::default();
        for beat in beats.iter().filter(|b| b.live(now)) {
            if beat.acknowledges(pause) {
                q.acknowledged.push(beat.instance.clone());
            } else {
                q.pending.push(beat.instance.clone());
            }
        }
        q
    }

    pub fn quiet(&self) -> bool {
        self.pending.is_empty()
    }
}

/// What an instance knows of a projection's control state, shared with its consumers.
pub struct Gate {
    paused: AtomicBool,
    /// When the state was last read successfully (taken before the read was sent).
    confirmed: Mutex<Option<Instant>>,
    skips: RwLock<Arc<BTreeSet<(i32, i64)>>>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            paused: AtomicBool::new(false),
            confirmed: Mutex::new(None),
            skips: RwLock::new(Arc::new(BTreeSet::new())),
        }
    }
}

impl Gate {
    /// The state as read at `read_at`.
    pub fn update(&self, paused: bool, skips: BTreeSet<(i32, i64)>, read_at: Instant) {
        self.paused.store(paused, Ordering::SeqCst);
        if let Ok(mut slot) = self.skips.write() {
            *slot = Arc::new(skips);
        }
        if let Ok(mut confirmed) = self.confirmed.lock() {
            *confirmed = Some(read_at);
        }
    }

    /// Paused: consumers abandon what they hold and stop.
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// The state was confirmed within [`FENCE`]: offsets may be written.
    pub fn fresh(&self) -> bool {
        self.confirmed
            .lock()
            .ok()
            .and_then(|c| *c)
            .is_some_and(|at| at.elapsed() < FENCE)
    }

    /// The record at `partition`/`offset` is to be moved past.
    pub fn skipped(&self, partition: i32, offset: i64) -> bool {
        self.skips
            .read()
            .map(|s| s.contains(&(partition, offset)))
            .unwrap_or(false)
    }
}

/// This process's name among the projector instances: host, pid and a random suffix.
pub fn instance_id(addr: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{host}/{}/{addr}/{}",
        std::process::id(),
        suffix.get(..8).unwrap_or("0")
    )
}

/// `$USER@host`: the actor of `projector ctl` when `--actor` is not given.
pub fn default_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

/// The control tables of one keyspace.
#[derive(Clone)]
pub struct ControlStore {
    session: Arc<Session>,
    keyspace: String,
    select_state: PreparedStatement,
    select_skips: PreparedStatement,
    heartbeat: PreparedStatement,
    select_beats: PreparedStatement,
}

impl ControlStore {
    pub async fn new(session: Arc<Session>, keyspace: &str) -> anyhow::Result<Self> {
        let prepare = |cql: String| {
            let session = session.clone();
            async move {
                let mut statement = session
                    .prepare(cql.as_str())
                    .await
                    .with_context(|| format!("preparing {cql}"))?;
                statement.set_is_idempotent(true);
                Ok::<_, anyhow::Error>(statement)
            }
        };
        Ok(Self {
            select_state: prepare(format!(
                "SELECT paused, changed_by, reason, changed_at FROM {keyspace}.projection_control \
                 WHERE projection = ?"
            ))
            .await?,
            select_skips: prepare(format!(
                "SELECT partition, record_offset, actor, reason, created_at \
                 FROM {keyspace}.projection_skips WHERE projection = ?"
            ))
            .await?,
            heartbeat: prepare(format!(
                "INSERT INTO {keyspace}.projection_instances \
                 (projection, instance, consuming, acked_pause, heartbeat_at) \
                 VALUES (?, ?, ?, ?, ?) USING TTL {HEARTBEAT_TTL_SECS}"
            ))
            .await?,
            select_beats: prepare(format!(
                "SELECT instance, consuming, acked_pause, heartbeat_at \
                 FROM {keyspace}.projection_instances WHERE projection = ?"
            ))
            .await?,
            session,
            keyspace: keyspace.to_string(),
        })
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// The control row of `projection` (not paused when there is none).
    pub async fn state(&self, projection: &str) -> anyhow::Result<ControlState> {
        let rows = self
            .session
            .execute_unpaged(&self.select_state, (projection,))
            .await
            .with_context(|| format!("reading the control state of {projection}"))?
            .into_rows_result()?;
        let row = rows.maybe_first_row::<(
            Option<bool>,
            Option<String>,
            Option<String>,
            Option<DateTime<Utc>>,
        )>()?;
        Ok(match row {
            Some((paused, changed_by, reason, changed_at)) => ControlState {
                projection: projection.to_string(),
                paused: paused.unwrap_or(false),
                changed_by,
                reason,
                changed_at,
            },
            None => ControlState {
                projection: projection.to_string(),
                ..ControlState::default()
            },
        })
    }

    /// Pause (`paused = true`) or resume, by LWT: `Ok(None)` when the projection already was in
    /// that state (a conflict), else the new state.
    pub async fn set_paused(
        &self,
        projection: &str,
        paused: bool,
        actor: &str,
        reason: &str,
    ) -> anyhow::Result<Option<ControlState>> {
        let keyspace = &self.keyspace;
        // The row must exist for the condition below to hold on a first pause.
        self.session
            .query_unpaged(
                format!(
                    "INSERT INTO {keyspace}.projection_control (projection, paused) \
                     VALUES (?, false) IF NOT EXISTS"
                ),
                (projection,),
            )
            .await
            .context("creating the control row")?;
        // Millisecond precision: the value is compared with what CQL gives back.
        let now = DateTime::<Utc>::from_timestamp_millis(Utc::now().timestamp_millis())
            .unwrap_or_else(Utc::now);
        let changed = applied(
            self.session
                .query_unpaged(
                    format!(
                        "UPDATE {keyspace}.projection_control \
                         SET paused = ?, changed_by = ?, reason = ?, changed_at = ? \
                         WHERE projection = ? IF paused = ?"
                    ),
                    (paused, actor, reason, now, projection, !paused),
                )
                .await
                .context("changing the control row")?,
        )?;
        if !changed {
            return Ok(None);
        }
        Ok(Some(ControlState {
            projection: projection.to_string(),
            paused,
            changed_by: Some(actor.to_string()),
            reason: Some(reason.to_string()),
            changed_at: Some(now),
        }))
    }

    /// Record a change in the audit log.
    pub async fn audit(
        &self,
        projection: &str,
        actor: &str,
        action: &str,
        reason: &str,
        detail: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let keyspace = &self.keyspace;
        let detail = detail.to_string();
        self.session
            .query_unpaged(
                format!(
                    "INSERT INTO {keyspace}.projection_audit \
                     (projection, at, actor, action, reason, detail) VALUES (?, now(), ?, ?, ?, ?)"
                ),
                (projection, actor, action, reason, detail.as_str()),
            )
            .await
            .context("writing the audit log")?;
        metrics::counter!(CONTROL_CHANGES, "action" => action.to_string()).increment(1);
        Ok(())
    }

    /// The newest `limit` audit entries of `projection`.
    pub async fn recent_audit(
        &self,
        projection: &str,
        limit: i32,
    ) -> anyhow::Result<Vec<AuditEntry>> {
        let keyspace = &self.keyspace;
        let rows = self
            .session
            .query_unpaged(
                format!(
                    "SELECT at, actor, action, reason, detail FROM {keyspace}.projection_audit \
                     WHERE projection = ? LIMIT ?"
                ),
                (projection, limit.max(1)),
            )
            .await
            .context("reading the audit log")?
            .into_rows_result()?;
        let mut entries = Vec::new();
        for row in rows.rows::<(
            CqlTimeuuid,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        )>()? {
            let (at, actor, action, reason, detail) = row?;
            let uuid = uuid::Uuid::from_bytes(*at.as_bytes());
            let at = uuid
                .get_timestamp()
                .and_then(|ts| {
                    let (secs, nanos) = ts.to_unix();
                    DateTime::<Utc>::from_timestamp(i64::try_from(secs).ok()?, nanos)
                })
                .unwrap_or_default();
            entries.push(AuditEntry {
                at,
                actor: actor.unwrap_or_default(),
                action: action.unwrap_or_default(),
                reason: reason.unwrap_or_default(),
                detail: detail
                    .and_then(|d| serde_json::from_str(&d).ok())
                    .unwrap_or(serde_json::Value::Null),
            });
        }
        Ok(entries)
    }

    /// The records `projection`'s consumers move past.
    pub async fn skips(&self, projection: &str) -> anyhow::Result<Vec<Skip>> {
        let rows = self
            .session
            .execute_unpaged(&self.select_skips, (projection,))
            .await
            .with_context(|| format!("reading the skips of {projection}"))?
            .into_rows_result()?;
        let mut skips = Vec::new();
        for row in rows.rows::<(
            i32,
            i64,
            Option<String>,
            Option<String>,
            Option<DateTime<Utc>>,
        )>()? {
            let (partition, offset, actor, reason, created_at) = row?;
            skips.push(Skip {
                partition,
                offset,
                actor,
                reason,
                created_at,
            });
        }
        Ok(skips)
    }

    pub async fn add_skip(
        &self,
        projection: &str,
        partition: i32,
        offset: i64,
        actor: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        let keyspace = &self.keyspace;
        self.session
            .query_unpaged(
                format!(
                    "INSERT INTO {keyspace}.projection_skips \
                     (projection, partition, record_offset, actor, reason, created_at) \
                     VALUES (?, ?, ?, ?, ?, ?)"
                ),
                (projection, partition, offset, actor, reason, Utc::now()),
            )
            .await
            .context("recording the skip")?;
        Ok(())
    }

    /// This instance's heartbeat for `projection`.
    pub async fn heartbeat(
        &self,
        projection: &str,
        instance: &str,
        consuming: bool,
        acked_pause: Option<DateTime<Utc>>,
    ) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.heartbeat,
                (projection, instance, consuming, acked_pause, Utc::now()),
            )
            .await
            .context("writing the heartbeat")?;
        Ok(())
    }

    /// Remove this instance's heartbeat (it stopped: nothing of it can write any more).
    pub async fn heartbeat_gone(&self, projection: &str, instance: &str) -> anyhow::Result<()> {
        let keyspace = &self.keyspace;
        self.session
            .query_unpaged(
                format!(
                    "DELETE FROM {keyspace}.projection_instances \
                     WHERE projection = ? AND instance = ?"
                ),
                (projection, instance),
            )
            .await
            .context("removing the heartbeat")?;
        Ok(())
    }

    /// Every instance's last heartbeat for `projection` (rows of dead instances included until
    /// they expire; see [`Heartbeat::live`]).
    pub async fn heartbeats(&self, projection: &str) -> anyhow::Result<Vec<Heartbeat>> {
        let rows = self
            .session
            .execute_unpaged(&self.select_beats, (projection,))
            .await
            .context("reading the heartbeats")?
            .into_rows_result()?;
        let mut beats = Vec::new();
        for row in rows.rows::<(
            String,
            Option<bool>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
        )>()? {
            let (instance, consuming, acked_pause, heartbeat_at) = row?;
            beats.push(Heartbeat {
                instance,
                consuming: consuming.unwrap_or(true),
                acked_pause,
                heartbeat_at,
            });
        }
        Ok(beats)
    }

    /// Wait, up to `timeout`, until every live instance has stopped its consumers of `projection`
    /// for the pause `pause`; returns who did and who did not.
    pub async fn await_quiet(
        &self,
        projection: &str,
        pause: Option<DateTime<Utc>>,
        timeout: Duration,
    ) -> anyhow::Result<Quiescence> {
        let started = Instant::now();
        loop {
            let beats = self.heartbeats(projection).await?;
            let quiescence = Quiescence::of(&beats, pause, Utc::now());
            if quiescence.quiet() || started.elapsed() >= timeout {
                return Ok(quiescence);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The original positions (topic, partition, offset) of the dead letters already re-driven
    /// into `generation` of `projection`.
    pub async fn redriven(
        &self,
        projection: &str,
        generation: i32,
    ) -> anyhow::Result<BTreeSet<(String, i32, i64)>> {
        let keyspace = &self.keyspace;
        let rows = self
            .session
            .query_unpaged(
                format!(
                    "SELECT origin_topic, origin_partition, origin_offset \
                     FROM {keyspace}.projection_redriven WHERE projection = ? AND generation = ?"
                ),
                (projection, generation),
            )
            .await
            .context("reading the re-driven dead letters")?
            .into_rows_result()?;
        let mut done = BTreeSet::new();
        for row in rows.rows::<(String, i32, i64)>()? {
            done.insert(row?);
        }
        Ok(done)
    }

    pub async fn mark_redriven(
        &self,
        projection: &str,
        generation: i32,
        origin: (&str, i32, i64),
        actor: &str,
    ) -> anyhow::Result<()> {
        let keyspace = &self.keyspace;
        self.session
            .query_unpaged(
                format!(
                    "INSERT INTO {keyspace}.projection_redriven (projection, generation, \
                     origin_topic, origin_partition, origin_offset, actor, redriven_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?)"
                ),
                (
                    projection,
                    generation,
                    origin.0,
                    origin.1,
                    origin.2,
                    actor,
                    Utc::now(),
                ),
            )
            .await
            .context("recording a re-driven dead letter")?;
        Ok(())
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

pub fn set_paused_gauge(projection: &'static str, paused: bool) {
    metrics::gauge!(PAUSED, "projection" => projection).set(if paused { 1.0 } else { 0.0 });
}

pub fn skipped(projection: &'static str) {
    metrics::counter!(SKIPPED, "projection" => projection).increment(1);
}

/// Where a reset moves a projection to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResetTarget {
    /// The next offset to apply, per partition (partitions not named keep theirs).
    Offsets(BTreeMap<i32, i64>),
    /// The first record at or after this time, on every partition (Kafka's offsets for times).
    Time(DateTime<Utc>),
}

/// Check a reset's offsets against the partitions' watermarks: every partition must exist and
/// every offset lie between its low and high watermark (both included).
pub fn check_offsets(
    offsets: &BTreeMap<i32, i64>,
    marks: &BTreeMap<i32, crate::topic::Watermark>,
) -> Result<(), String> {
    if offsets.is_empty() {
        return Err("no partition given".into());
    }
    for (partition, offset) in offsets {
        let Some(mark) = marks.get(partition) else {
            return Err(format!(
                "partition {partition} does not exist (the topic has {})",
                marks.len()
            ));
        };
        if *offset < mark.low || *offset > mark.high {
            return Err(format!(
                "offset {offset} of partition {partition} is outside {}..={}",
                mark.low, mark.high
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::Watermark;

    fn beat(
        instance: &str,
        consuming: bool,
        acked: Option<DateTime<Utc>>,
        age_s: i64,
        now: DateTime<Utc>,
    ) -> Heartbeat {
        Heartbeat {
            instance: instance.into(),
            consuming,
            acked_pause: acked,
            heartbeat_at: Some(now - chrono::Duration::seconds(age_s)),
        }
    }

    #[test]
    fn a_pause_is_quiet_once_every_live_instance_stopped_for_it() {
        let now = Utc::now();
        let pause = Some(now - chrono::Duration::seconds(3));
        let earlier = Some(now - chrono::Duration::seconds(60));
        let beats = vec![
            beat("a", false, pause, 1, now),
            beat("b", false, earlier, 1, now),
            beat("c", true, None, 1, now),
            // Dead: no heartbeat for longer than the lease.
            beat("d", true, None, 30, now),
        ];
        let q = Quiescence::of(&beats, pause, now);
        assert_eq!(q.acknowledged, vec!["a"]);
        assert_eq!(q.pending, vec!["b", "c"]);
        assert!(!q.quiet());
        let q = Quiescence::of(&beats[..1], pause, now);
        assert!(q.quiet());
        // Without a pause nothing acknowledges.
        assert!(!Quiescence::of(&beats[..1], None, now).quiet());
    }

    #[test]
    fn a_gate_is_fresh_only_shortly_after_a_confirmation() {
        let gate = Gate::default();
        assert!(!gate.fresh());
        gate.update(false, BTreeSet::from([(1, 7)]), Instant::now());
        assert!(gate.fresh());
        assert!(!gate.paused());
        assert!(gate.skipped(1, 7));
        assert!(!gate.skipped(1, 8));
        if let Some(old) = Instant::now().checked_sub(FENCE + Duration::from_secs(1)) {
            gate.update(true, BTreeSet::new(), old);
            assert!(!gate.fresh());
            assert!(gate.paused());
        }
    }

    #[test]
    fn reset_offsets_must_lie_within_the_partitions() {
        let marks = BTreeMap::from([
            (0, Watermark { low: 0, high: 10 }),
            (1, Watermark { low: 5, high: 6 }),
        ]);
        assert!(check_offsets(&BTreeMap::from([(0, 0), (1, 6)]), &marks).is_ok());
        assert!(check_offsets(&BTreeMap::from([(0, 11)]), &marks)
            .unwrap_err()
            .contains("outside"));
        assert!(check_offsets(&BTreeMap::from([(1, 4)]), &marks).is_err());
        assert!(check_offsets(&BTreeMap::from([(2, 0)]), &marks)
            .unwrap_err()
            .contains("does not exist"));
        assert!(check_offsets(&BTreeMap::new(), &marks).is_err());
    }

    #[test]
    fn the_default_actor_names_user_and_host() {
        assert!(default_actor().contains('@'));
    }
}
