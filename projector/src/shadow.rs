//! Shadow replay: build a projection's next generation from the topic with the code of this
//! binary, up to where the live generation is, and report how the two differ, table by table and
//! row by row. `--promote` then switches reads to it; otherwise it is dropped.
//!
//! 1. Refused unless the projection is live with no generation being built. Generation
//!    `active + 1` is claimed by LWT with state `shadowing` (so a rebuild and a shadow exclude
//!    each other), its leftover tables and offsets dropped, fresh tables created and its offsets
//!    seeded (offset 0, or the first offset at `--from`). Service instances do not consume a
//!    shadowing generation: only this process writes it ([`build`]).
//! 2. The target is the live generation's stored offsets. This process consumes up to them with
//!    a consumer of its own (partitions assigned by hand, no group joined); if the live offsets
//!    moved meanwhile, the target is extended and consumption goes on, for at most
//!    [`MAX_ROUNDS`] rounds.
//! 3. Every table of both generations is compared ([`diff`]); differences found while the live
//!    generation kept moving are caught up with and read again (at most [`MAX_SETTLE`] times),
//!    so only differences that hold at the same offsets are reported. Every difference is written
//!    as a JSON line to the output file.
//! 4. `--promote` switches `active_generation` to the shadow by LWT (still `shadowing`, still
//!    the same generations), the service instances carry it on from its stored offsets, and the
//!    old generation is dropped after the grace period, as a rebuild does. Without it, or on any
//!    failure, or on Ctrl-C, the shadow's tables and offsets are dropped and the claim released.
//!
//! A shadow whose process died (`kill -9`) stays claimed; `projector shadow <name> --abandon`
//! releases it and drops its tables.

pub mod build;
pub mod diff;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use infra::Settings;
use scylla::client::session::Session;
use serde::{Deserialize, Serialize};

use crate::projections::{self, Projection};
use crate::rebuild::{retire, start_offsets, DEFAULT_GRACE};
use crate::registry::{OffsetStore, Registry, LIVE};
use crate::topic::TopicInfo;
use build::{Builder, DeadLetter};
use diff::{Differ, Difference, Kind, Outcome, TableDiff};

/// The `state` of a projection whose `building_generation` is a shadow.
pub use crate::registry::SHADOWING;
/// Rounds of catching up with a live generation that keeps moving before the diff.
pub const MAX_ROUNDS: u32 = 5;
/// Times differences are caught up with and read again while the live generation moves.
pub const MAX_SETTLE: u32 = 3;
/// How long the live generation is given to record the offsets of rows it already wrote before
/// differences are read again.
const SETTLE_PAUSE: Duration = Duration::from_millis(500);
/// Candidates read again concurrently.
const CLASSIFY_CONCURRENCY: usize = 32;

#[derive(Debug, Clone)]
pub struct ShadowOptions {
    pub projection: String,
    /// Start from the first event at or after this time instead of the start of the topic.
    pub from: Option<DateTime<Utc>>,
    /// Switch reads to the shadow generation once compared.
    pub promote: bool,
    /// Where the differences go (JSON lines); default `shadow-<projection>-g<gen>.jsonl`.
    pub out: Option<PathBuf>,
    /// Draw progress bars on the terminal.
    pub progress: bool,
    /// Delay between a promotion and dropping the old generation.
    pub grace: Duration,
}

impl ShadowOptions {
    pub fn new(projection: &str) -> Self {
        Self {
            projection: projection.to_string(),
            from: None,
            promote: false,
            out: None,
            progress: false,
            grace: DEFAULT_GRACE,
        }
    }
}

/// What a shadow replay found and did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowReport {
    pub projection: String,
    /// The generation that served reads while the shadow was built.
    pub live_generation: i32,
    pub shadow_generation: i32,
    pub from: Option<DateTime<Utc>>,
    /// Records consumed into the shadow (dead letters included).
    pub events: u64,
    /// Rounds of consumption (more than one when the live generation moved on meanwhile).
    pub rounds: u32,
    /// Per partition, where the shadow started and the offsets both generations were compared
    /// at.
    pub start_offsets: BTreeMap<i32, i64>,
    pub end_offsets: BTreeMap<i32, i64>,
    /// Records the shadow could not apply (a service consumer would have dead-lettered them;
    /// the shadow sends nothing to the dead-letter topic). The first 10 000 are listed.
    pub dead_letter_count: u64,
    pub dead_letters: Vec<DeadLetter>,
    /// Per table: rows only in live, only in the shadow, differing, identical.
    pub tables: Vec<TableDiff>,
    /// Rows that differ, in all tables; each is a line of `out`.
    pub differences: u64,
    pub out: String,
    /// Whether reads were switched to the shadow generation.
    pub promoted: bool,
    /// The generation serving reads now.
    pub active_generation: i32,
    pub elapsed_ms: u64,
}

/// The process was asked to stop (Ctrl-C, SIGTERM) before the shadow was done.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// What `--abandon` released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AbandonReport {
    pub projection: String,
    pub active_generation: i32,
    pub dropped_generation: i32,
}

/// `projector shadow …`: run it and print the report, with the exit code of the outcome (0
/// whether or not the generations differ, 130 when interrupted).
pub async fn command(settings: Settings, options: ShadowOptions, abandon_claim: bool) -> ExitCode {
    let name = options.projection.clone();
    if abandon_claim {
        return match abandon(settings, &name).await {
            Ok(report) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                tracing::error!(projection = %name, error = %format!("{err:#}"), "abandoning the shadow failed");
                ExitCode::FAILURE
            }
        };
    }
    match shadow(settings, options, infra::http::shutdown_signal()).await {
        Ok(report) => {
            eprint!("{}", summary(&report));
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(err) if err.is::<Interrupted>() => {
            eprintln!("interrupted: the shadow generation was dropped and the claim released");
            ExitCode::from(130)
        }
        Err(err) => {
            tracing::error!(projection = %name, error = %format!("{err:#}"), "shadow failed");
            ExitCode::FAILURE
        }
    }
}

/// The per-table summary printed for people (standard error; the JSON report goes to standard
/// output).
pub fn summary(report: &ShadowReport) -> String {
    let mut text = format!(
        "{}: shadow g{} against live g{}, {} events, {} not applicable (dead letters)\n",
        report.projection,
        report.shadow_generation,
        report.live_generation,
        report.events,
        report.dead_letter_count
    );
    text.push_str(&format!(
        "{:<24} {:>12} {:>14} {:>10} {:>10}\n",
        "table", "only in live", "only in shadow", "differing", "identical"
    ));
    for t in &report.tables {
        text.push_str(&format!(
            "{:<24} {:>12} {:>14} {:>10} {:>10}\n",
            t.table, t.only_in_live, t.only_in_shadow, t.differing, t.identical
        ));
    }
    text.push_str(&format!(
        "{} differences, listed in {}\n",
        report.differences, report.out
    ));
    if report.promoted {
        text.push_str(&format!(
            "promoted: generation {} serves reads\n",
            report.active_generation
        ));
    } else {
        text.push_str(&format!(
            "not promoted: generation {} dropped, {} still serves\n",
            report.shadow_generation, report.active_generation
        ));
    }
    text
}

/// What the steps of a shadow replay share.
struct Shadow {
    settings: Settings,
    session: Arc<Session>,
    registry: Registry,
    projection: Arc<dyn Projection>,
    topic: TopicInfo,
    live: i32,
    generation: i32,
}

impl Shadow {
    fn name(&self) -> &'static str {
        self.projection.name()
    }

    async fn offsets(&self, generation: i32) -> anyhow::Result<OffsetStore> {
        OffsetStore::new(
            self.session.clone(),
            &self.settings.cql.keyspace,
            self.name(),
            generation,
            &self.settings.kafka.topic,
        )
        .await
    }

    /// Drop the shadow's tables and offsets, then release the claim. Errors are logged: this
    /// runs after a failure too.
    async fn drop_shadow(&self) {
        let name = self.name();
        let generation = self.generation;
        if let Err(err) = self
            .registry
            .drop_tables(self.projection.as_ref(), generation)
            .await
        {
            tracing::warn!(projection = name, generation, error = %format!("{err:#}"), "dropping the shadow's tables failed (the next shadow or rebuild drops them)");
        }
        let cleared = async { self.offsets(generation).await?.clear().await };
        if let Err(err) = cleared.await {
            tracing::warn!(projection = name, generation, error = %format!("{err:#}"), "forgetting the shadow's offsets failed");
        }
        match self
            .registry
            .release(name, self.live, generation, SHADOWING)
            .await
        {
            Ok(true) => {
                tracing::info!(projection = name, generation, "shadow dropped and released")
            }
            Ok(false) => tracing::warn!(
                projection = name,
                generation,
                "the shadow's claim was no longer held"
            ),
            Err(err) => {
                tracing::error!(projection = name, generation, error = %format!("{err:#}"), "releasing the shadow's claim failed; run `projector shadow {name} --abandon`")
            }
        }
    }
}

fn bar(progress: bool) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Run a shadow replay of `options.projection`. `cancel` resolving (Ctrl-C) drops the shadow
/// and returns [`Interrupted`].
pub async fn shadow(
    settings: Settings,
    options: ShadowOptions,
    cancel: impl Future<Output = ()>,
) -> anyhow::Result<ShadowReport> {
    let started = Instant::now();
    let projection = projections::by_name(&options.projection)
        .ok_or_else(|| anyhow!("unknown projection {:?}", options.projection))?;
    let name = projection.name();
    let session = infra::cql::connect_keyspace(&settings.cql).await?;
    let registry = Registry::new(session.clone(), &settings.cql.keyspace);
    let topic = TopicInfo::new(&settings.kafka)?;

    let state = registry.ensure(projection.as_ref()).await?;
    if let Some(building) = state.building_generation {
        if state.state == SHADOWING {
            bail!(
                "{name} g{building} is already being shadowed; if no `projector shadow {name}` runs \
                 any more, release it with `projector shadow {name} --abandon`"
            );
        }
        bail!(
            "{name} g{building} is being rebuilt ({}); shadow it once the rebuild is done",
            state.state
        );
    }
    if state.state != LIVE {
        bail!("{name} is {}, not live", state.state);
    }
    let live = state.active_generation;
    let generation = live + 1;
    if !registry
        .claim_as(name, live, generation, options.from, SHADOWING)
        .await?
    {
        bail!("another rebuild or shadow of {name} claimed it meanwhile");
    }
    tracing::info!(projection = name, live_generation = live, generation, from = ?options.from, "shadow claimed");
    let context = Shadow {
        settings,
        session,
        registry,
        projection,
        topic,
        live,
        generation,
    };

    let outcome = tokio::select! {
        outcome = build_and_compare(&context, &options) => outcome,
        () = cancel => Err(anyhow::Error::new(Interrupted)),
    };
    let mut report = match outcome {
        Ok(report) => report,
        Err(err) => {
            if !err.is::<Interrupted>() {
                tracing::error!(projection = name, generation, error = %format!("{err:#}"), "shadow failed; dropping it");
            }
            context.drop_shadow().await;
            return Err(err);
        }
    };

    if options.promote {
        if !context
            .registry
            .switch_from(name, live, generation, SHADOWING)
            .await?
        {
            bail!("{name} changed while it was shadowed (released by --abandon?); generation {generation} was not activated");
        }
        tracing::info!(
            projection = name,
            previous_generation = live,
            generation,
            "shadow promoted: it serves reads now"
        );
        tokio::time::sleep(options.grace).await;
        retire(
            &context.registry,
            context.projection.as_ref(),
            live,
            &context.settings.kafka.topic,
        )
        .await;
        report.promoted = true;
        report.active_generation = generation;
    } else {
        context.drop_shadow().await;
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Steps 1–3: tables and offsets, consumption up to the live offsets, the diff and its file.
async fn build_and_compare(
    context: &Shadow,
    options: &ShadowOptions,
) -> anyhow::Result<ShadowReport> {
    let name = context.name();
    let (live, generation) = (context.live, context.generation);
    let projection = context.projection.as_ref();
    // Leftovers of an earlier shadow or an abandoned rebuild of this generation would mix in.
    context.registry.drop_tables(projection, generation).await?;
    let shadow_offsets = context.offsets(generation).await?;
    shadow_offsets.clear().await?;
    context
        .registry
        .create_tables(projection, generation)
        .await?;
    let starts = start_offsets(&context.topic, options.from).await?;
    shadow_offsets.save(&starts).await?;
    let live_offsets = context.offsets(live).await?;

    let mut builder = Builder::new(
        &context.settings,
        context.session.clone(),
        &context.projection,
        generation,
        starts.clone(),
    )
    .await?;
    let bar = bar(options.progress);
    bar.set_message(format!("{name} g{generation}: building"));
    let mut rounds = 0;
    let mut target = targets(&starts, &builder.next, &live_offsets.load().await?);
    loop {
        rounds += 1;
        builder.run_to(&target, &bar).await?;
        let now = live_offsets.load().await?;
        let moved = targets(&starts, &builder.next, &now);
        if moved == builder.next || rounds >= MAX_ROUNDS {
            break;
        }
        tracing::info!(
            projection = name,
            generation,
            round = rounds,
            "the live generation moved on meanwhile; catching up"
        );
        target = moved;
    }
    let (done, total) = builder.progress(&target);
    bar.finish_with_message(format!("{name} g{generation}: built"));
    tracing::info!(
        projection = name,
        generation,
        rounds,
        events = builder.events,
        done,
        total,
        dead_letters = builder.dead_letter_count,
        "shadow built; comparing"
    );

    let bases: Vec<&str> = projection.tables().to_vec();
    let differ = Differ::new(
        context.session.clone(),
        &context.settings.cql.keyspace,
        &bases,
        live,
        generation,
    )
    .await?;
    let bar = self::bar(options.progress);
    let (identical, candidates) = differ.scan(diff::RANGES, &bar).await?;
    bar.finish_with_message(format!("{name}: g{live} and g{generation} scanned"));
    let mut outcomes = classify(&differ, &candidates).await?;

    // Rows the live generation wrote past its recorded offsets while it was scanned: catch the
    // shadow up with it and read those rows again.
    for pass in 1..=MAX_SETTLE {
        let open: Vec<usize> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| matches!(o, Outcome::Differs(_)))
            .map(|(i, _)| i)
            .collect();
        if open.is_empty() {
            break;
        }
        tokio::time::sleep(SETTLE_PAUSE).await;
        let now = live_offsets.load().await?;
        let moved = targets(&starts, &builder.next, &now);
        if moved == builder.next {
            break;
        }
        tracing::info!(projection = name, generation, pass, differences = open.len(), "the live generation moved during the diff; catching up and reading the differences again");
        builder.run_to(&moved, &ProgressBar::hidden()).await?;
        rounds += 1;
        let again: Vec<diff::Candidate> = open.iter().map(|&i| candidates[i].clone()).collect();
        for (i, outcome) in open.into_iter().zip(classify(&differ, &again).await?) {
            outcomes[i] = outcome;
        }
    }

    let mut tables = differ.summaries();
    for (summary, same) in tables.iter_mut().zip(&identical) {
        summary.identical = *same;
    }
    let mut differences: Vec<(usize, Difference)> = Vec::new();
    for (candidate, outcome) in candidates.iter().zip(outcomes) {
        let Some(summary) = tables.get_mut(candidate.table()) else {
            continue;
        };
        match outcome {
            Outcome::Identical => summary.identical += 1,
            Outcome::Gone => {}
            Outcome::Differs(difference) => {
                match difference.kind {
                    Kind::OnlyInLive => summary.only_in_live += 1,
                    Kind::OnlyInShadow => summary.only_in_shadow += 1,
                    Kind::Differing => summary.differing += 1,
                }
                differences.push((candidate.table(), difference));
            }
        }
    }
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("shadow-{name}-g{generation}.jsonl")));
    write_differences(&out, differences.iter().map(|(_, d)| d))?;
    for t in &tables {
        tracing::info!(projection = name, table = %t.table, only_in_live = t.only_in_live, only_in_shadow = t.only_in_shadow, differing = t.differing, identical = t.identical, "compared");
    }

    Ok(ShadowReport {
        projection: name.to_string(),
        live_generation: live,
        shadow_generation: generation,
        from: options.from,
        events: builder.events,
        rounds,
        start_offsets: starts,
        end_offsets: builder.next.clone(),
        dead_letter_count: builder.dead_letter_count,
        dead_letters: builder.dead_letters.clone(),
        tables,
        differences: differences.len() as u64,
        out: out.display().to_string(),
        promoted: false,
        active_generation: live,
        elapsed_ms: 0,
    })
}

/// Read every candidate again, in order.
async fn classify(differ: &Differ, candidates: &[diff::Candidate]) -> anyhow::Result<Vec<Outcome>> {
    futures::stream::iter(candidates.iter().map(|c| differ.classify(c)))
        .buffered(CLASSIFY_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Per partition, what the shadow must reach: the live generation's stored offset, never below
/// where the shadow started or already is (a partition the live generation has no offset for
/// has applied nothing, so nothing is to be consumed from it).
pub fn targets(
    starts: &BTreeMap<i32, i64>,
    shadow: &BTreeMap<i32, i64>,
    live: &BTreeMap<i32, i64>,
) -> BTreeMap<i32, i64> {
    let mut targets = BTreeMap::new();
    for partition in starts.keys().chain(shadow.keys()).chain(live.keys()) {
        let floor = shadow
            .get(partition)
            .or_else(|| starts.get(partition))
            .copied()
            .unwrap_or(0);
        let live = live.get(partition).copied().unwrap_or(floor);
        targets.insert(*partition, live.max(floor));
    }
    targets
}

fn write_differences<'a>(
    path: &PathBuf,
    differences: impl Iterator<Item = &'a Difference>,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for difference in differences {
        serde_json::to_writer(&mut out, difference)?;
        out.write_all(b"\n")?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Release the shadow claim of `name` left by a process that is gone, and drop its generation.
pub async fn abandon(settings: Settings, name: &str) -> anyhow::Result<AbandonReport> {
    let projection =
        projections::by_name(name).ok_or_else(|| anyhow!("unknown projection {name:?}"))?;
    let session = infra::cql::connect_keyspace(&settings.cql).await?;
    let registry = Registry::new(session.clone(), &settings.cql.keyspace);
    let Some(state) = registry.get(name).await? else {
        bail!("{name} is not registered");
    };
    let Some(generation) = state
        .building_generation
        .filter(|_| state.state == SHADOWING)
    else {
        bail!("{name} is not being shadowed (state {})", state.state);
    };
    let context = Shadow {
        topic: TopicInfo::new(&settings.kafka)?,
        settings,
        session,
        registry,
        projection,
        live: state.active_generation,
        generation,
    };
    context.drop_shadow().await;
    if let Some(after) = context.registry.get(name).await? {
        if after.building_generation == Some(generation) {
            bail!("{name} g{generation} is still claimed");
        }
    }
    Ok(AbandonReport {
        projection: name.to_string(),
        active_generation: state.active_generation,
        dropped_generation: generation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_the_live_offsets_never_below_the_shadow() {
        let starts = BTreeMap::from([(0, 0), (1, 0), (2, 5)]);
        let shadow = BTreeMap::from([(0, 4), (1, 0), (2, 5)]);
        let live = BTreeMap::from([(0, 10), (2, 3)]);
        assert_eq!(
            targets(&starts, &shadow, &live),
            BTreeMap::from([(0, 10), (1, 0), (2, 5)])
        );
        // Caught up: the target is where the shadow is.
        let done = BTreeMap::from([(0, 10), (1, 0), (2, 5)]);
        assert_eq!(targets(&starts, &done, &live), done);
    }
}
