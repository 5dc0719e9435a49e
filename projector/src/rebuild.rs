//! Rebuilding a projection into a new generation of its tables (blue/green), from the start of
//! the topic or from a point in time, while the current generation keeps serving.
//!
//! 1. Generation `active + 1` gets fresh tables, and its offsets are seeded with where the
//!    rebuild starts (offset 0, or the first offset at `--from`) for every partition.
//! 2. The registry row is claimed by LWT: `building_generation`, state `rebuilding`. Running
//!    service instances start a consumer for it within a second; this process runs one as well
//!    (same consumer group, so they share the partitions).
//! 3. Progress is read from the new generation's stored offsets until they reach the end offsets
//!    captured at the start, then the end offsets of that moment (the live end).
//! 4. `active_generation` is switched by LWT; the service instances stop their consumers of the
//!    old generation (their consumer of the new one carries on), and after a grace period that
//!    lets in-flight reads finish, the old generation's tables and offsets are dropped.
//!
//! A rebuild that was interrupted stays claimed and is carried on by the service instances;
//! running `rebuild` again resumes it (waits for it to catch up, then switches).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use infra::Settings;
use serde::Serialize;

use crate::consumer::{self, Shared};
use crate::projections;
use crate::registry::{OffsetStore, Registry};
use crate::topic::{DeadLetters, TopicInfo};

/// How long the old generation's tables outlive the switch, so that reads in flight finish.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
const PROGRESS_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct RebuildOptions {
    pub projection: String,
    /// Start from the first event at or after this time instead of the start of the topic.
    pub from: Option<DateTime<Utc>>,
    /// Draw a progress bar on the terminal.
    pub progress: bool,
    /// Delay between the switch and dropping the old generation.
    pub grace: Duration,
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RebuildReport {
    pub projection: String,
    pub previous_generation: i32,
    pub generation: i32,
    /// An interrupted rebuild was carried on rather than a new one started.
    pub resumed: bool,
    /// Records consumed into the new generation (dead letters included).
    pub events: u64,
    /// Per partition, the offset the new generation had reached when it was switched to.
    pub end_offsets: BTreeMap<i32, i64>,
    pub elapsed_ms: u64,
}

/// Rebuild `name` from the start of the topic (or from `from`), with the default grace period.
pub async fn rebuild(
    settings: Settings,
    name: &str,
    from: Option<DateTime<Utc>>,
    progress: bool,
) -> anyhow::Result<RebuildReport> {
    rebuild_with(
        settings,
        RebuildOptions {
            projection: name.to_string(),
            from,
            progress,
            grace: DEFAULT_GRACE,
        },
    )
    .await
}

pub async fn rebuild_with(
    settings: Settings,
    options: RebuildOptions,
) -> anyhow::Result<RebuildReport> {
    let started = Instant::now();
    let projection = projections::by_name(&options.projection)
        .ok_or_else(|| anyhow!("unknown projection {:?}", options.projection))?;
    let name = projection.name();
    let topic_name = settings.kafka.topic.clone();
    let keyspace = settings.cql.keyspace.clone();
    let session = infra::cql::connect_keyspace(&settings.cql).await?;
    let registry = Registry::new(session.clone(), &settings.cql.keyspace);
    let topic = TopicInfo::new(&settings.kafka)?;

    let state = registry.ensure(projection.as_ref()).await?;
    let previous = state.active_generation;
    let (generation, from, resumed) = match state.building_generation {
        Some(building) if state.state == crate::registry::SHADOWING => {
            bail!(
                "{name} g{building} is being shadowed (`projector shadow`); a rebuild waits until \
                 the shadow is promoted or dropped (`projector shadow {name} --abandon` releases \
                 a shadow whose process is gone)"
            );
        }
        Some(building) => {
            if options.from.is_some() && options.from != state.rebuild_from {
                tracing::warn!(projection = name, generation = building, rebuild_from = ?state.rebuild_from, "a rebuild is already under way; resuming it, --from ignored");
            }
            if !registry.tables_exist(projection.as_ref(), building).await? {
                registry
                    .create_tables(projection.as_ref(), building)
                    .await?;
            }
            (building, state.rebuild_from, true)
        }
        None => {
            let generation = previous + 1;
            // Tables left by an abandoned attempt at this generation would mix old rows in.
            registry
                .drop_tables(projection.as_ref(), generation)
                .await?;
            registry
                .create_tables(projection.as_ref(), generation)
                .await?;
            let seeds = start_offsets(&topic, options.from).await?;
            OffsetStore::new(session.clone(), &keyspace, name, generation, &topic_name)
                .await?
                .save(&seeds)
                .await?;
            if !registry
                .claim_build(name, previous, generation, options.from)
                .await?
            {
                bail!("another rebuild of {name} claimed the projection meanwhile");
            }
            (generation, options.from, false)
        }
    };
    tracing::info!(projection = name, previous_generation = previous, generation, resumed, from = ?from, "rebuild started");

    let offsets =
        OffsetStore::new(session.clone(), &keyspace, name, generation, &topic_name).await?;
    let starts = start_offsets(&topic, from).await?;
    let shared = Arc::new(Shared {
        dead_letters: DeadLetters::new(&settings.kafka)?,
        settings,
        session,
    });
    let mut worker = Some(consumer::spawn(shared.clone(), projection.clone(), generation).await?);

    let bar = if options.progress {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} events ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let mut reached = BTreeMap::new();
    for (stage, message) in [(0, "catching up"), (1, "reaching the live end")] {
        let targets: BTreeMap<i32, i64> = topic
            .watermarks()
            .await?
            .into_iter()
            .map(|(partition, mark)| (partition, mark.high))
            .collect();
        bar.set_message(format!("{name} g{generation}: {message}"));
        tracing::info!(projection = name, generation, stage, targets = ?targets, "waiting for the new generation to reach these offsets");
        loop {
            if worker.as_ref().is_none_or(|w| w.is_finished()) {
                if let Some(dead) = worker.take() {
                    if let Err(err) = dead.stop().await {
                        tracing::warn!(projection = name, generation, error = %format!("{err:#}"), "rebuild consumer failed; restarting it");
                    }
                }
                tokio::time::sleep(PROGRESS_POLL).await;
                worker = consumer::spawn(shared.clone(), projection.clone(), generation)
                    .await
                    .map_err(|err| tracing::warn!(error = %format!("{err:#}"), "restarting the rebuild consumer failed"))
                    .ok();
                continue;
            }
            match offsets.load().await {
                Ok(nexts) => {
                    let p = progress(&starts, &targets, &nexts);
                    bar.set_length(p.total);
                    bar.set_position(p.done);
                    if p.caught_up {
                        reached = nexts;
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "reading rebuild progress failed")
                }
            }
            tokio::time::sleep(PROGRESS_POLL).await;
        }
    }

    if !registry.switch(name, previous, generation).await? {
        bail!("{name} changed while it was rebuilt (another switch?); generation {generation} was not activated");
    }
    bar.finish_with_message(format!("{name}: generation {generation} is live"));
    tracing::info!(
        projection = name,
        previous_generation = previous,
        generation,
        "switched to the new generation"
    );
    if let Some(worker) = worker.take() {
        if let Err(err) = worker.stop().await {
            tracing::warn!(error = %format!("{err:#}"), "rebuild consumer ended with an error");
        }
    }

    tokio::time::sleep(options.grace).await;
    retire(&registry, projection.as_ref(), previous, &topic_name).await;

    let events = reached
        .iter()
        .map(|(partition, next)| (next - starts.get(partition).copied().unwrap_or(0)).max(0) as u64)
        .sum();
    Ok(RebuildReport {
        projection: name.to_string(),
        previous_generation: previous,
        generation,
        resumed,
        events,
        end_offsets: reached,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// Drop a generation that no longer serves: its tables and its offsets. The switch is done by
/// then, so a failure is logged (with how to drop the tables by hand), never returned: the
/// tables only take space.
pub(crate) async fn retire(
    registry: &Registry,
    projection: &dyn projections::Projection,
    generation: i32,
    topic: &str,
) {
    let name = projection.name();
    let cleanup = async {
        registry.drop_tables(projection, generation).await?;
        OffsetStore::new(
            registry.session().clone(),
            registry.keyspace(),
            name,
            generation,
            topic,
        )
        .await?
        .clear()
        .await
        .context("forgetting the old generation's offsets")
    };
    if let Err(err) = cleanup.await {
        tracing::warn!(
            projection = name,
            generation,
            error = %format!("{err:#}"),
            "the old generation could not be dropped; drop its tables by hand (DROP TABLE <table>_g{generation})"
        );
    }
}

/// Where a rebuild starts, per partition: the start of the log, or the first offset at `from`.
pub(crate) async fn start_offsets(
    topic: &TopicInfo,
    from: Option<DateTime<Utc>>,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    match from {
        Some(at) => topic.offsets_at(at).await,
        None => Ok(topic
            .watermarks()
            .await?
            .into_iter()
            .map(|(partition, mark)| (partition, mark.low))
            .collect()),
    }
}

/// How far a rebuild is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    /// Every partition reached its target.
    pub caught_up: bool,
}

/// Progress from the start offsets, the target offsets and the stored next offsets.
pub fn progress(
    starts: &BTreeMap<i32, i64>,
    targets: &BTreeMap<i32, i64>,
    nexts: &BTreeMap<i32, i64>,
) -> Progress {
    let mut done = 0u64;
    let mut total = 0u64;
    let mut caught_up = true;
    for (partition, &target) in targets {
        let start = starts.get(partition).copied().unwrap_or(0).min(target);
        let next = nexts.get(partition).copied().unwrap_or(start);
        total += (target - start).max(0) as u64;
        done += (next.min(target) - start).max(0) as u64;
        caught_up &= next >= target;
    }
    Progress {
        done,
        total,
        caught_up,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_events_between_the_start_and_the_target_of_each_partition() {
        let starts = BTreeMap::from([(0, 0), (1, 10)]);
        let targets = BTreeMap::from([(0, 100), (1, 20)]);
        let nexts = BTreeMap::from([(0, 40), (1, 10)]);

        let p = progress(&starts, &targets, &nexts);

        assert_eq!(
            p,
            Progress {
                done: 40,
                total: 110,
                caught_up: false
            }
        );
    }

    #[test]
    fn a_rebuild_has_caught_up_when_every_partition_reached_its_target() {
        let starts = BTreeMap::from([(0, 0), (1, 0)]);
        let targets = BTreeMap::from([(0, 5), (1, 0)]);
        let nexts = BTreeMap::from([(0, 7)]);

        let p = progress(&starts, &targets, &nexts);

        assert_eq!(
            p,
            Progress {
                done: 5,
                total: 5,
                caught_up: true
            }
        );
    }

    #[test]
    fn a_partition_without_stored_offset_and_with_records_is_not_caught_up() {
        let p = progress(
            &BTreeMap::new(),
            &BTreeMap::from([(3, 2)]),
            &BTreeMap::new(),
        );
        assert!(!p.caught_up);
        assert_eq!(p.total, 2);
    }
}
