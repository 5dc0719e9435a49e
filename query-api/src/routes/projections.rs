//! `GET /v1/projections`: each projection's state, serving generation and lag per partition of the
//! event topic (Kafka high watermark minus the projection's next offset), whether operators paused
//! it, and the generation being built beside the serving one (a rebuild or a shadow) with its
//! progress, rate and an estimate of the time left.
//!
//! Progress of a build counts from the offsets its generation was seeded with — the first offsets
//! at its `--from` time, or the start of the topic — which this instance looks up once per build
//! in Kafka, as the projector did ([`crate::store::EndOffsets::start_offsets`]). A rebuild's
//! target is the topic's end offsets, a shadow's the active generation's offsets. Rate and time
//! left need two readings: [`BuildReadings`] keeps, per projection and generation, the readings of
//! this instance (at least [`MIN_SPAN`] apart).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiResult;
use crate::routes::PROBLEM;
use crate::store::{BuildRecord, EndOffsets, ProjectionRecord, StoreResult};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/projections", get(projections))
}

/// How far one projection is behind on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PartitionLag {
    pub partition: i32,
    /// The next offset the projection will apply.
    pub offset: i64,
    /// The partition's high watermark.
    pub end_offset: i64,
    pub lag: i64,
}

/// One projection: its serving generation and lag, its pause, and the generation being built.
#[derive(Debug, Clone, PartialEq, Default, Serialize, ToSchema)]
pub struct ProjectionStatus {
    pub name: String,
    /// The generation serving reads (the active one); `lag` and `partitions` are its own.
    pub generation: i32,
    /// `live`, `rebuilding` or `shadowing`.
    pub state: String,
    /// Sum of the partitions' lag.
    pub lag: i64,
    pub partitions: Vec<PartitionLag>,
    /// Operators paused the projection (`projector ctl pause`): nothing is applied until resumed.
    pub paused: bool,
    /// The last pause or resume: who, why, when. `null` when never paused.
    pub control: Option<ControlChange>,
    /// The generation being built beside the serving one; `null` when none is.
    pub building: Option<Building>,
}

/// The last change of a projection's pause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ControlChange {
    /// Who paused or resumed it.
    pub by: Option<String>,
    /// Why, in the operator's words.
    pub reason: Option<String>,
    pub at: Option<DateTime<Utc>>,
}

/// What kind of build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BuildKind {
    /// `projector rebuild`: switched to once it reaches the end of the topic.
    Rebuilding,
    /// `projector shadow`: built up to the active generation's offsets, then compared with it.
    Shadowing,
}

impl From<read_models::BuildKind> for BuildKind {
    fn from(kind: read_models::BuildKind) -> Self {
        match kind {
            read_models::BuildKind::Rebuilding => BuildKind::Rebuilding,
            read_models::BuildKind::Shadowing => BuildKind::Shadowing,
        }
    }
}

/// A generation being built, and how far it is.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Building {
    pub generation: i32,
    pub kind: BuildKind,
    /// The build's `--from`: it applies events from that time on; `null` for the whole topic.
    pub from: Option<DateTime<Utc>>,
    /// Events applied since the build started, over those it has to apply to reach its target:
    /// from 0 to 1.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub progress: f64,
    /// Events applied since the build started.
    pub applied: i64,
    /// Events between the build's start and its target.
    pub to_apply: i64,
    /// Events still to apply to reach the target.
    pub remaining: i64,
    /// Events applied per second between two readings of this instance; `null` until there are
    /// two.
    pub rate: Option<f64>,
    /// Seconds until the target is reached, at the pace the remaining events went down between two
    /// readings; `null` until there are two, or while they do not go down.
    pub eta_seconds: Option<f64>,
    pub partitions: Vec<BuildPartition>,
}

/// A build on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BuildPartition {
    pub partition: i32,
    /// Where the build started.
    pub start_offset: i64,
    /// The next offset the build will apply.
    pub offset: i64,
    /// Where it is going: the partition's end offset for a rebuild, the active generation's
    /// offset for a shadow.
    pub target: i64,
    pub remaining: i64,
}

/// All projections.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Projections {
    pub projections: Vec<ProjectionStatus>,
}

/// Lag of every projection on every partition known to Kafka or to its offsets, and its pause.
/// `building` is left `null`: [`projections`] fills it (it needs the build's start).
pub fn lag_report(records: Vec<ProjectionRecord>, ends: &BTreeMap<i32, i64>) -> Projections {
    let projections = records
        .into_iter()
        .map(|record| {
            let partitions: BTreeSet<i32> =
                ends.keys().chain(record.offsets.keys()).copied().collect();
            let partitions: Vec<PartitionLag> = partitions
                .into_iter()
                .map(|partition| {
                    let offset = record.offsets.get(&partition).copied().unwrap_or(0);
                    let end_offset = ends.get(&partition).copied().unwrap_or(offset);
                    PartitionLag {
                        partition,
                        offset,
                        end_offset,
                        lag: (end_offset - offset).max(0),
                    }
                })
                .collect();
            ProjectionStatus {
                name: record.name,
                generation: record.generation,
                state: record.state,
                lag: partitions.iter().map(|p| p.lag).sum(),
                partitions,
                paused: record.control.as_ref().is_some_and(|c| c.paused),
                control: record.control.map(|c| ControlChange {
                    by: c.changed_by,
                    reason: c.reason,
                    at: c.changed_at,
                }),
                building: None,
            }
        })
        .collect();
    Projections { projections }
}

/// How far a build is, from its start offsets, its targets and its next offsets.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildProgress {
    pub applied: i64,
    pub to_apply: i64,
    pub remaining: i64,
    /// `applied / to_apply`, 1 when there is nothing to apply.
    pub progress: f64,
    pub partitions: Vec<BuildPartition>,
}

impl BuildProgress {
    /// Per partition known to any of the three: a partition without a start started at 0 (it
    /// appeared after the build began and is consumed from its beginning), one without a next
    /// offset is still at its start, one without a target is not to be built further.
    pub fn of(
        starts: &BTreeMap<i32, i64>,
        targets: &BTreeMap<i32, i64>,
        nexts: &BTreeMap<i32, i64>,
    ) -> Self {
        let partitions: BTreeSet<i32> = starts
            .keys()
            .chain(targets.keys())
            .chain(nexts.keys())
            .copied()
            .collect();
        let mut applied = 0i64;
        let mut to_apply = 0i64;
        let mut remaining = 0i64;
        let mut rows = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let next = nexts.get(&partition).copied();
            // A start can only be at or before where the build is.
            let start = starts
                .get(&partition)
                .copied()
                .unwrap_or(0)
                .min(next.unwrap_or(i64::MAX));
            let next = next.unwrap_or(start);
            let target = targets.get(&partition).copied().unwrap_or(next).max(start);
            let left = (target - next).max(0);
            applied = applied.saturating_add((next.min(target) - start).max(0));
            to_apply = to_apply.saturating_add(target - start);
            remaining = remaining.saturating_add(left);
            rows.push(BuildPartition {
                partition,
                start_offset: start,
                offset: next,
                target,
                remaining: left,
            });
        }
        let progress = if to_apply == 0 {
            1.0
        } else {
            (applied as f64 / to_apply as f64).clamp(0.0, 1.0)
        };
        Self {
            applied,
            to_apply,
            remaining,
            progress,
            partitions: rows,
        }
    }
}

/// Readings at least this far apart make a rate.
pub const MIN_SPAN: Duration = Duration::from_secs(1);

/// One look at a build.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub at: Instant,
    pub applied: i64,
    pub remaining: i64,
}

/// Events applied per second and seconds left, from an earlier reading and this one; `None`s
/// without an earlier reading or without time between them. The time left is the remaining
/// events over the pace at which they went down (a rebuild chases a growing topic, a shadow a
/// moving live generation): none while they do not go down, 0 once nothing remains.
pub fn rate_and_eta(earlier: Option<Reading>, now: Reading) -> (Option<f64>, Option<f64>) {
    let Some(earlier) = earlier else {
        return (None, None);
    };
    let seconds = now.at.saturating_duration_since(earlier.at).as_secs_f64();
    if seconds <= 0.0 {
        return (None, None);
    }
    let rate = ((now.applied - earlier.applied).max(0) as f64) / seconds;
    let closing = ((earlier.remaining - now.remaining) as f64) / seconds;
    let eta = if now.remaining <= 0 {
        Some(0.0)
    } else if closing > 0.0 {
        Some(now.remaining as f64 / closing)
    } else {
        None
    };
    (Some(rate), eta)
}

/// A build's start offsets, with the `--from` they were looked up for.
type Starts = (Option<DateTime<Utc>>, BTreeMap<i32, i64>);

/// What this instance remembers of one build.
#[derive(Debug, Clone, Default)]
struct Tracked {
    starts: Option<Starts>,
    /// The reading before `last`, at least [`MIN_SPAN`] older.
    previous: Option<Reading>,
    last: Option<Reading>,
}

/// Per projection and generation being built: its start offsets and the last readings, in this
/// query-api instance's memory (another instance has its own; a restart starts over).
#[derive(Debug, Default)]
pub struct BuildReadings {
    builds: Mutex<HashMap<(String, i32), Tracked>>,
}

impl BuildReadings {
    fn tracked<T>(&self, f: impl FnOnce(&mut HashMap<(String, i32), Tracked>) -> T) -> T {
        let mut builds = self
            .builds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut builds)
    }

    /// The start offsets of a build, looked up once.
    async fn starts(
        &self,
        end_offsets: &dyn EndOffsets,
        topic: &str,
        name: &str,
        build: &BuildRecord,
    ) -> StoreResult<BTreeMap<i32, i64>> {
        let key = (name.to_string(), build.generation);
        let known = self.tracked(|builds| {
            builds
                .get(&key)
                .and_then(|t| t.starts.clone())
                .filter(|(from, _)| *from == build.from)
                .map(|(_, starts)| starts)
        });
        if let Some(starts) = known {
            return Ok(starts);
        }
        let starts = end_offsets.start_offsets(topic, build.from).await?;
        self.tracked(|builds| {
            builds.entry(key).or_default().starts = Some((build.from, starts.clone()));
        });
        Ok(starts)
    }

    /// Record `now` and answer the rate and time left against the reading before it.
    pub fn reading(&self, name: &str, generation: i32, now: Reading) -> (Option<f64>, Option<f64>) {
        self.tracked(|builds| {
            let tracked = builds.entry((name.to_string(), generation)).or_default();
            if tracked
                .last
                .is_none_or(|last| now.at.saturating_duration_since(last.at) >= MIN_SPAN)
            {
                tracked.previous = tracked.last.take();
                tracked.last = Some(now);
            }
            rate_and_eta(tracked.previous, now)
        })
    }

    /// Forget builds that are no longer under way.
    fn retain(&self, building: &[(String, i32)]) {
        self.tracked(|builds| builds.retain(|key, _| building.contains(key)));
    }
}

/// Projections, their serving generation and lag, their pause, the generation being built.
#[utoipa::path(
    get,
    path = "/v1/projections",
    tag = "ops",
    responses(
        (status = 200, description = "Every registered projection", body = Projections),
        (status = 503, description = "Kafka or the store unreachable", body = infra::http::Problem, content_type = PROBLEM),
    )
)]
pub async fn projections(State(state): State<AppState>) -> ApiResult<Json<Projections>> {
    let topic: &str = &state.topic;
    let (records, ends) = tokio::join!(
        state.store.projections(topic),
        state.end_offsets.end_offsets(topic)
    );
    let (records, ends) = (records?, ends?);
    let builds: Vec<(String, BuildRecord, BTreeMap<i32, i64>)> = records
        .iter()
        .filter_map(|r| {
            let build = r.building.clone()?;
            Some((r.name.clone(), build, r.offsets.clone()))
        })
        .collect();
    let mut report = lag_report(records, &ends);
    state.builds.retain(
        &builds
            .iter()
            .map(|(name, build, _)| (name.clone(), build.generation))
            .collect::<Vec<_>>(),
    );
    for (name, build, active_offsets) in builds {
        let starts = state
            .builds
            .starts(state.end_offsets.as_ref(), topic, &name, &build)
            .await?;
        let kind = BuildKind::from(build.kind);
        let targets = match kind {
            BuildKind::Rebuilding => &ends,
            BuildKind::Shadowing => &active_offsets,
        };
        let progress = BuildProgress::of(&starts, targets, &build.offsets);
        let (rate, eta_seconds) = state.builds.reading(
            &name,
            build.generation,
            Reading {
                at: Instant::now(),
                applied: progress.applied,
                remaining: progress.remaining,
            },
        );
        tracing::debug!(projection = %name, generation = build.generation, progress = progress.progress, rate, eta_seconds, "build progress");
        if let Some(status) = report.projections.iter_mut().find(|p| p.name == name) {
            status.building = Some(Building {
                generation: build.generation,
                kind,
                from: build.from,
                progress: progress.progress,
                applied: progress.applied,
                to_apply: progress.to_apply,
                remaining: progress.remaining,
                rate,
                eta_seconds,
                partitions: progress.partitions,
            });
        }
    }
    Ok(Json(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_end_minus_next_offset_and_missing_offsets_count_from_zero() {
        let ends = BTreeMap::from([(0, 10), (1, 5), (2, 0)]);
        let record = ProjectionRecord {
            name: "orders".into(),
            generation: 2,
            state: "live".into(),
            offsets: BTreeMap::from([(0, 7), (2, 0)]),
            ..ProjectionRecord::default()
        };
        let report = lag_report(vec![record], &ends);
        let p = &report.projections[0];
        assert_eq!(p.generation, 2);
        let lags: Vec<_> = p
            .partitions
            .iter()
            .map(|p| (p.partition, p.offset, p.end_offset, p.lag))
            .collect();
        assert_eq!(lags, [(0, 7, 10, 3), (1, 0, 5, 5), (2, 0, 0, 0)]);
        assert_eq!(p.lag, 8);
        assert!(!p.paused);
        assert_eq!(p.control, None);
    }

    #[test]
    fn the_control_row_says_whether_a_projection_is_paused_and_by_whom() {
        let at = Utc::now();
        let record = ProjectionRecord {
            name: "orders".into(),
            generation: 1,
            state: "live".into(),
            control: Some(read_models::ControlState {
                projection: "orders".into(),
                paused: true,
                changed_by: Some("alice".into()),
                reason: Some("bad deploy".into()),
                changed_at: Some(at),
            }),
            ..ProjectionRecord::default()
        };
        let p = &lag_report(vec![record], &BTreeMap::new()).projections[0];
        assert!(p.paused);
        assert_eq!(
            p.control,
            Some(ControlChange {
                by: Some("alice".into()),
                reason: Some("bad deploy".into()),
                at: Some(at),
            })
        );
    }

    #[test]
    fn progress_counts_what_was_applied_since_the_start_over_what_there_is_to_apply() {
        let starts = BTreeMap::from([(0, 0), (1, 10)]);
        let targets = BTreeMap::from([(0, 100), (1, 30), (2, 10)]);
        let nexts = BTreeMap::from([(0, 40), (1, 20)]);

        let p = BuildProgress::of(&starts, &targets, &nexts);

        // p0: 40 of 100; p1: 10 of 20; p2 appeared later, started at 0: 0 of 10.
        assert_eq!((p.applied, p.to_apply, p.remaining), (50, 130, 80));
        assert!((p.progress - 50.0 / 130.0).abs() < 1e-9);
        let rows: Vec<_> = p
            .partitions
            .iter()
            .map(|r| (r.partition, r.start_offset, r.offset, r.target, r.remaining))
            .collect();
        assert_eq!(
            rows,
            [(0, 0, 40, 100, 60), (1, 10, 20, 30, 10), (2, 0, 0, 10, 10)]
        );
    }

    #[test]
    fn a_build_past_its_target_or_with_nothing_to_apply_is_complete() {
        let done = BuildProgress::of(
            &BTreeMap::from([(0, 5)]),
            &BTreeMap::from([(0, 8)]),
            &BTreeMap::from([(0, 9)]),
        );
        assert_eq!((done.applied, done.remaining, done.progress), (3, 0, 1.0));
        let empty = BuildProgress::of(&BTreeMap::new(), &BTreeMap::new(), &BTreeMap::new());
        assert_eq!((empty.to_apply, empty.progress), (0, 1.0));
        // A start looked up after the fact beyond where the build is cannot be its start.
        let late = BuildProgress::of(
            &BTreeMap::from([(0, 50)]),
            &BTreeMap::from([(0, 100)]),
            &BTreeMap::from([(0, 20)]),
        );
        assert_eq!(late.partitions[0].start_offset, 20);
        assert_eq!(late.progress, 0.0);
    }

    fn reading(at: Instant, seconds: u64, applied: i64, remaining: i64) -> Reading {
        Reading {
            at: at + Duration::from_secs(seconds),
            applied,
            remaining,
        }
    }

    #[test]
    fn rate_and_time_left_need_two_readings() {
        let t = Instant::now();
        assert_eq!(rate_and_eta(None, reading(t, 0, 10, 100)), (None, None));
        assert_eq!(
            rate_and_eta(Some(reading(t, 0, 10, 100)), reading(t, 0, 10, 100)),
            (None, None)
        );
    }

    #[test]
    fn the_time_left_is_the_remaining_events_over_the_pace_they_go_down() {
        let t = Instant::now();
        // 200 applied in 2 s while 40 new events arrived: the gap closed by 160.
        let (rate, eta) = rate_and_eta(Some(reading(t, 0, 100, 400)), reading(t, 2, 300, 240));
        assert_eq!(rate, Some(100.0));
        assert_eq!(eta, Some(3.0));
        // Nothing applied: rate 0, no estimate.
        let (rate, eta) = rate_and_eta(Some(reading(t, 0, 100, 400)), reading(t, 2, 100, 410));
        assert_eq!((rate, eta), (Some(0.0), None));
        // Applying, but slower than events arrive: no estimate either.
        let (rate, eta) = rate_and_eta(Some(reading(t, 0, 100, 400)), reading(t, 2, 150, 420));
        assert_eq!((rate, eta), (Some(25.0), None));
        // Caught up.
        let (_, eta) = rate_and_eta(Some(reading(t, 0, 100, 10)), reading(t, 1, 110, 0));
        assert_eq!(eta, Some(0.0));
    }

    #[test]
    fn readings_closer_than_the_span_are_measured_against_the_one_before() {
        let readings = BuildReadings::default();
        let t = Instant::now();
        let at = |ms: u64, applied: i64| Reading {
            at: t + Duration::from_millis(ms),
            applied,
            remaining: 1000 - applied,
        };
        assert_eq!(readings.reading("orders", 2, at(0, 0)), (None, None));
        // Half a second later: still only one reading kept.
        assert_eq!(readings.reading("orders", 2, at(500, 50)), (None, None));
        let (rate, eta) = readings.reading("orders", 2, at(1000, 100));
        assert_eq!(rate, Some(100.0));
        assert_eq!(eta, Some(9.0));
        // Between two kept readings, against the older one.
        let (rate, _) = readings.reading("orders", 2, at(1500, 200));
        assert!((rate.unwrap() - 200.0 / 1.5).abs() < 1e-9);
        // Another generation is another build.
        assert_eq!(readings.reading("orders", 3, at(1500, 0)), (None, None));
        readings.retain(&[("orders".into(), 3)]);
        assert_eq!(readings.reading("orders", 2, at(3000, 300)), (None, None));
    }
}
