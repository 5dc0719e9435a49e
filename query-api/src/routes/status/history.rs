//! The status page's memory: every [`INTERVAL`] a background task records one [`Sample`] (the
//! projections' lag from the store and Kafka, as `/v1/projections` computes it, and the figures
//! of every configured `/metrics` source and of this process), keeping [`WINDOW`] of them, so the
//! page's plots have history the moment it is opened. [`History::report`] turns the samples into
//! what `/status.json` serves: series of points and the latest values.
//!
//! Counters are turned into rates per source, between two samples where that source answered both
//! times (a counter that went down means the process restarted: its new value is the increase),
//! then summed over the sources: with several instances of a service, list each instance once.
//! Gauges (the oldest unpublished intent) take the largest value over the sources.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::prometheus;
use super::scrape;
use crate::routes::projections::{lag_report, PartitionLag, ProjectionStatus};
use crate::AppState;

/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// How much history is kept.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Bound on one scrape of a source.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on reading the projections and the topic's end offsets.
const LAG_TIMEOUT: Duration = Duration::from_secs(4);

/// Command outcomes counted as failures of the service (not of the request): 503 and 500.
const FAILED_OUTCOMES: [&str; 2] = ["unavailable", "error"];

/// The figures of one `/metrics` scrape this page shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// `commands_total` by `outcome`.
    pub commands: BTreeMap<String, f64>,
    /// `projector_events_applied_total` by `projection`.
    pub events_applied: BTreeMap<String, f64>,
    /// `projector_dead_letters_total` by `projection`.
    pub dead_letters: BTreeMap<String, f64>,
    /// `command_oldest_unpublished_intent_seconds` (largest when several lines).
    pub oldest_unpublished_seconds: Option<f64>,
    /// `http_requests_total` of `GET /v1/…` routes (the queries), by status class (`2xx`, …).
    pub queries: BTreeMap<String, f64>,
}

impl Figures {
    pub fn from_text(text: &str) -> Self {
        let mut figures = Figures::default();
        for line in prometheus::parse(text) {
            if !line.value.is_finite() {
                continue;
            }
            let add = |map: &mut BTreeMap<String, f64>, key: Option<&str>| {
                *map.entry(key.unwrap_or("").to_string()).or_default() += line.value;
            };
            match line.name.as_str() {
                "commands_total" => add(&mut figures.commands, line.label("outcome")),
                "projector_events_applied_total" => {
                    add(&mut figures.events_applied, line.label("projection"))
                }
                "projector_dead_letters_total" => {
                    add(&mut figures.dead_letters, line.label("projection"))
                }
                "command_oldest_unpublished_intent_seconds" => {
                    let seen = figures.oldest_unpublished_seconds.unwrap_or(0.0);
                    figures.oldest_unpublished_seconds = Some(seen.max(line.value));
                }
                "http_requests_total"
                    if line.label("method") == Some("GET")
                        && line.label("route").is_some_and(|r| r.starts_with("/v1/")) =>
                {
                    let class = line
                        .label("status")
                        .and_then(|s| s.chars().next())
                        .map(|c| format!("{c}xx"));
                    add(&mut figures.queries, class.as_deref());
                }
                _ => {}
            }
        }
        figures
    }

    fn commands_total(&self) -> f64 {
        self.commands.values().sum()
    }

    fn commands_failed(&self) -> f64 {
        FAILED_OUTCOMES
            .iter()
            .filter_map(|o| self.commands.get(*o))
            .sum()
    }
}

/// One scrape of one source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSample {
    pub url: String,
    pub figures: Result<Figures, String>,
}

/// Everything recorded at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Unix time in milliseconds.
    pub at_ms: i64,
    /// Lag of every projection's serving generation, or why it could not be read.
    pub projections: Result<Vec<ProjectionStatus>, String>,
    /// The configured sources, in the order of the setting.
    pub sources: Vec<SourceSample>,
    /// This query-api's own metrics.
    pub own: Figures,
}

/// The samples of the last [`WINDOW`], oldest first; cheap to clone, shared by the sampler and
/// the handler.
#[derive(Clone, Default)]
pub struct History {
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

impl History {
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = sample.at_ms - WINDOW.as_millis() as i64;
        samples.push_back(sample);
        while samples.front().is_some_and(|s| s.at_ms < oldest) {
            samples.pop_front();
        }
    }

    /// What `/status.json` serves, as of now.
    pub fn report(&self, topic: &str) -> Report {
        let samples: Vec<Sample> = self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        build_report(&samples, topic, chrono::Utc::now().timestamp_millis())
    }
}

/// Parse the `query_api.status_sources` setting: comma-separated, trimmed, empties dropped.
pub fn source_list(setting: &str) -> Vec<String> {
    setting
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// The background task that fills a [`History`]; stops (aborts) when dropped.
pub struct Sampler {
    history: History,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Start sampling every [`INTERVAL`] (the first sample at once).
    pub fn spawn(sources: Vec<String>, state: &AppState) -> Self {
        let history = History::default();
        let task = tokio::spawn(run(sources, state.clone(), history.clone()));
        Self { history, task }
    }

    pub fn history(&self) -> History {
        self.history.clone()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(sources: Vec<String>, state: AppState, history: History) {
    tracing::info!(sources = ?sources, "status page sampling every {} s", INTERVAL.as_secs());
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether each source answered last time, to log changes rather than every failure.
    let mut was_up: Vec<Option<bool>> = vec![None; sources.len()];
    loop {
        ticks.tick().await;
        let sample = take_sample(&sources, &state).await;
        for (source, up) in sample.sources.iter().zip(was_up.iter_mut()) {
            match (&source.figures, *up) {
                (Err(error), Some(true) | None) => {
                    tracing::warn!(source = %source.url, %error, "status page: a metrics source does not answer");
                    *up = Some(false);
                }
                (Ok(_), Some(false)) => {
                    tracing::info!(source = %source.url, "status page: a metrics source answers again");
                    *up = Some(true);
                }
                (Ok(_), None) => *up = Some(true),
                _ => {}
            }
        }
        if let Err(error) = &sample.projections {
            tracing::debug!(%error, "status page: projection lag not readable");
        }
        history.push(sample);
    }
}

async fn take_sample(sources: &[String], state: &AppState) -> Sample {
    let at_ms = chrono::Utc::now().timestamp_millis();
    let scrapes = futures::future::join_all(sources.iter().map(|url| async move {
        SourceSample {
            url: url.clone(),
            figures: scrape::get(url, SCRAPE_TIMEOUT)
                .await
                .map(|text| Figures::from_text(&text)),
        }
    }));
    let lag = async {
        let topic: &str = &state.topic;
        let read = async {
            let (records, ends) = tokio::join!(
                state.store.projections(topic),
                state.end_offsets.end_offsets(topic)
            );
            let records = records.map_err(|e| e.to_string())?;
            let ends = ends.map_err(|e| e.to_string())?;
            Ok::<_, String>(lag_report(records, &ends).projections)
        };
        match tokio::time::timeout(LAG_TIMEOUT, read).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} ms", LAG_TIMEOUT.as_millis())),
        }
    };
    let (sources, projections) = tokio::join!(scrapes, lag);
    Sample {
        at_ms,
        projections,
        sources,
        own: Figures::from_text(&state.metrics.render()),
    }
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

/// `[unix ms, value]`.
pub type Point = (i64, f64);

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub generated_at_ms: i64,
    pub interval_ms: u64,
    pub window_ms: u64,
    pub topic: String,
    /// Samples held (at most one per interval over the window).
    pub samples: usize,
    /// When the oldest and the latest sample held were taken.
    pub oldest_sample_ms: Option<i64>,
    pub latest_sample_ms: Option<i64>,
    pub sources: Vec<SourceReport>,
    /// Why the latest sample has no projection lag, if it has none.
    pub projections_error: Option<String>,
    pub projections: Vec<ProjectionReport>,
    pub commands: CommandsReport,
    pub queries: QueriesReport,
    pub oldest_unpublished_intent: GaugeReport,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SourceReport {
    pub url: String,
    /// Whether it answered at the latest sample.
    pub up: bool,
    pub error: Option<String>,
    /// The latest sample it answered.
    pub last_up_ms: Option<i64>,
}

/// One generation of one projection.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProjectionReport {
    pub name: String,
    pub generation: i32,
    /// `live` or `rebuilding`, as of the latest sample that had it.
    pub state: String,
    /// Whether it serves reads now (it is in the latest sample).
    pub serving: bool,
    /// Lag now (the latest sample), summed and per partition.
    pub lag: Option<i64>,
    pub partitions: Vec<PartitionLag>,
    /// Lag per partition over the window.
    pub lag_history: Vec<PartitionSeries>,
    /// Events the projector applied per second (all generations of the projection).
    pub applied_per_second: Vec<Point>,
    /// Dead letters of the projection: counted by the sources now, and added over the window.
    pub dead_letters: f64,
    pub dead_letters_in_window: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PartitionSeries {
    pub partition: i32,
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CommandsReport {
    /// Commands answered per second, all outcomes.
    pub per_second: Vec<Point>,
    /// Commands that failed in the service (`unavailable`, `error`) per second.
    pub failed_per_second: Vec<Point>,
    /// failed / all, for intervals with commands.
    pub error_share: Vec<Point>,
    /// Per outcome, per second over the latest interval.
    pub outcomes_now: BTreeMap<String, f64>,
    /// Per outcome, counted by the sources now.
    pub totals: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueriesReport {
    /// `GET /v1/…` requests this query-api answered per second.
    pub per_second: Vec<Point>,
    /// Share of them answered 5xx, for intervals with requests.
    pub error_share: Vec<Point>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GaugeReport {
    pub now: Option<f64>,
    pub points: Vec<Point>,
}

/// How much a counter picked from each source grew between two samples, summed over the sources
/// that answered both times; `None` when none did.
fn increase(prev: &Sample, cur: &Sample, pick: &dyn Fn(&Figures) -> f64) -> Option<f64> {
    let mut total = None;
    for (p, c) in prev.sources.iter().zip(&cur.sources) {
        if let (Ok(p), Ok(c)) = (&p.figures, &c.figures) {
            let (before, now) = (pick(p), pick(c));
            // A counter that went down was reset by a restart: it grew by its new value.
            let grew = if now >= before { now - before } else { now };
            *total.get_or_insert(0.0) += grew;
        }
    }
    total
}

fn own_increase(prev: &Sample, cur: &Sample, pick: &dyn Fn(&Figures) -> f64) -> f64 {
    let (before, now) = (pick(&prev.own), pick(&cur.own));
    if now >= before {
        now - before
    } else {
        now
    }
}

fn seconds_between(prev: &Sample, cur: &Sample) -> f64 {
    ((cur.at_ms - prev.at_ms) as f64 / 1000.0).max(0.001)
}

/// A rate point per pair of consecutive samples, at the later one.
fn rate_series(samples: &[Sample], pick: &dyn Fn(&Figures) -> f64) -> Vec<Point> {
    samples
        .windows(2)
        .filter_map(|w| {
            increase(&w[0], &w[1], pick).map(|n| (w[1].at_ms, n / seconds_between(&w[0], &w[1])))
        })
        .collect()
}

/// The sum over the answering sources of the latest sample.
fn latest_sum(samples: &[Sample], pick: &dyn Fn(&Figures) -> f64) -> f64 {
    samples
        .last()
        .map(|s| {
            s.sources
                .iter()
                .filter_map(|src| src.figures.as_ref().ok())
                .map(pick)
                .sum()
        })
        .unwrap_or(0.0)
}

pub fn build_report(samples: &[Sample], topic: &str, now_ms: i64) -> Report {
    let latest = samples.last();

    let sources = latest
        .map(|l| {
            l.sources
                .iter()
                .enumerate()
                .map(|(i, s)| SourceReport {
                    url: s.url.clone(),
                    up: s.figures.is_ok(),
                    error: s.figures.as_ref().err().cloned(),
                    last_up_ms: samples
                        .iter()
                        .rev()
                        .find(|x| x.sources.get(i).is_some_and(|s| s.figures.is_ok()))
                        .map(|x| x.at_ms),
                })
                .collect()
        })
        .unwrap_or_default();

    // Every projection and generation seen in the window, the serving ones first.
    let mut keys: BTreeSet<(String, i32)> = BTreeSet::new();
    for sample in samples {
        if let Ok(projections) = &sample.projections {
            keys.extend(projections.iter().map(|p| (p.name.clone(), p.generation)));
        }
    }
    let now_of = |name: &str, generation: i32| -> Option<&ProjectionStatus> {
        latest
            .and_then(|l| l.projections.as_ref().ok())
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p.name == name && p.generation == generation)
            })
    };
    let mut projections: Vec<ProjectionReport> = keys
        .into_iter()
        .map(|(name, generation)| {
            let mut history: BTreeMap<i32, Vec<Point>> = BTreeMap::new();
            let mut state = String::new();
            for sample in samples {
                let Ok(ps) = &sample.projections else {
                    continue;
                };
                let Some(p) = ps
                    .iter()
                    .find(|p| p.name == name && p.generation == generation)
                else {
                    continue;
                };
                state.clone_from(&p.state);
                for part in &p.partitions {
                    history
                        .entry(part.partition)
                        .or_default()
                        .push((sample.at_ms, part.lag as f64));
                }
            }
            let now = now_of(&name, generation);
            let applied = |f: &Figures| f.events_applied.get(&name).copied().unwrap_or(0.0);
            let dead = |f: &Figures| f.dead_letters.get(&name).copied().unwrap_or(0.0);
            ProjectionReport {
                serving: now.is_some(),
                lag: now.map(|p| p.lag),
                partitions: now.map(|p| p.partitions.clone()).unwrap_or_default(),
                lag_history: history
                    .into_iter()
                    .map(|(partition, points)| PartitionSeries { partition, points })
                    .collect(),
                applied_per_second: rate_series(samples, &applied),
                dead_letters: latest_sum(samples, &dead),
                dead_letters_in_window: samples
                    .windows(2)
                    .filter_map(|w| increase(&w[0], &w[1], &dead))
                    .sum(),
                name,
                generation,
                state,
            }
        })
        .collect();
    projections.sort_by(|a, b| {
        b.serving
            .cmp(&a.serving)
            .then_with(|| a.name.cmp(&b.name))
            .then(a.generation.cmp(&b.generation))
    });

    let total = |f: &Figures| f.commands_total();
    let failed = |f: &Figures| f.commands_failed();
    let mut error_share = Vec::new();
    for w in samples.windows(2) {
        if let (Some(all), Some(bad)) = (
            increase(&w[0], &w[1], &total),
            increase(&w[0], &w[1], &failed),
        ) {
            if all > 0.0 {
                error_share.push((w[1].at_ms, bad / all));
            }
        }
    }
    let outcomes: BTreeSet<String> = samples
        .iter()
        .flat_map(|s| &s.sources)
        .filter_map(|s| s.figures.as_ref().ok())
        .flat_map(|f| f.commands.keys().cloned())
        .collect();
    let mut outcomes_now = BTreeMap::new();
    let mut totals = BTreeMap::new();
    for outcome in outcomes {
        let pick = |f: &Figures| f.commands.get(&outcome).copied().unwrap_or(0.0);
        if let [.., prev, cur] = samples {
            if let Some(n) = increase(prev, cur, &pick) {
                outcomes_now.insert(outcome.clone(), n / seconds_between(prev, cur));
            }
        }
        totals.insert(outcome.clone(), latest_sum(samples, &pick));
    }
    let commands = CommandsReport {
        per_second: rate_series(samples, &total),
        failed_per_second: rate_series(samples, &failed),
        error_share,
        outcomes_now,
        totals,
    };

    let queries_all = |f: &Figures| f.queries.values().sum::<f64>();
    let queries_5xx = |f: &Figures| f.queries.get("5xx").copied().unwrap_or(0.0);
    let mut queries = QueriesReport {
        per_second: Vec::new(),
        error_share: Vec::new(),
    };
    for w in samples.windows(2) {
        let all = own_increase(&w[0], &w[1], &queries_all);
        queries
            .per_second
            .push((w[1].at_ms, all / seconds_between(&w[0], &w[1])));
        if all > 0.0 {
            let bad = own_increase(&w[0], &w[1], &queries_5xx);
            queries.error_share.push((w[1].at_ms, bad / all));
        }
    }

    let oldest = |s: &Sample| -> Option<f64> {
        s.sources
            .iter()
            .filter_map(|src| src.figures.as_ref().ok())
            .filter_map(|f| f.oldest_unpublished_seconds)
            .reduce(f64::max)
    };
    let oldest_unpublished_intent = GaugeReport {
        now: latest.and_then(oldest),
        points: samples
            .iter()
            .filter_map(|s| oldest(s).map(|v| (s.at_ms, v)))
            .collect(),
    };

    Report {
        generated_at_ms: now_ms,
        interval_ms: INTERVAL.as_millis() as u64,
        window_ms: WINDOW.as_millis() as u64,
        topic: topic.to_string(),
        samples: samples.len(),
        oldest_sample_ms: samples.first().map(|s| s.at_ms),
        latest_sample_ms: latest.map(|l| l.at_ms),
        sources,
        projections_error: latest.and_then(|l| l.projections.as_ref().err().cloned()),
        projections,
        commands,
        queries,
        oldest_unpublished_intent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(accepted: f64, unavailable: f64, applied: f64) -> Figures {
        Figures {
            commands: BTreeMap::from([
                ("accepted".to_string(), accepted),
                ("unavailable".to_string(), unavailable),
            ]),
            events_applied: BTreeMap::from([("orders".to_string(), applied)]),
            ..Figures::default()
        }
    }

    fn lag(generation: i32, lags: &[i64]) -> ProjectionStatus {
        let partitions: Vec<PartitionLag> = lags
            .iter()
            .enumerate()
            .map(|(i, lag)| PartitionLag {
                partition: i as i32,
                offset: 0,
                end_offset: *lag,
                lag: *lag,
            })
            .collect();
        ProjectionStatus {
            name: "orders".into(),
            generation,
            state: "live".into(),
            lag: lags.iter().sum(),
            partitions,
            ..ProjectionStatus::default()
        }
    }

    fn sample(at_s: i64, commands: Result<Figures, String>, lags: &[i64]) -> Sample {
        Sample {
            at_ms: at_s * 1000,
            projections: Ok(vec![lag(1, lags)]),
            sources: vec![SourceSample {
                url: "http://c/metrics".into(),
                figures: commands,
            }],
            own: Figures::default(),
        }
    }

    #[test]
    fn figures_are_read_from_metrics_text() {
        let text = "commands_total{command=\"place\",outcome=\"accepted\"} 3\n\
                    commands_total{command=\"pay\",outcome=\"accepted\"} 2\n\
                    commands_total{command=\"pay\",outcome=\"unavailable\"} 1\n\
                    projector_events_applied_total{projection=\"orders\"} 40\n\
                    projector_dead_letters_total{projection=\"orders\"} 2\n\
                    command_oldest_unpublished_intent_seconds 7.5\n\
                    http_requests_total{route=\"/v1/orders/{id}\",method=\"GET\",status=\"200\"} 9\n\
                    http_requests_total{route=\"/v1/orders/{id}\",method=\"GET\",status=\"503\"} 1\n\
                    http_requests_total{route=\"/v1/orders\",method=\"POST\",status=\"201\"} 5\n\
                    http_requests_total{route=\"/metrics\",method=\"GET\",status=\"200\"} 5\n";
        let f = Figures::from_text(text);
        assert_eq!(f.commands["accepted"], 5.0);
        assert_eq!(f.commands_failed(), 1.0);
        assert_eq!(f.events_applied["orders"], 40.0);
        assert_eq!(f.dead_letters["orders"], 2.0);
        assert_eq!(f.oldest_unpublished_seconds, Some(7.5));
        assert_eq!(
            f.queries,
            BTreeMap::from([("2xx".into(), 9.0), ("5xx".into(), 1.0)])
        );
    }

    #[test]
    fn rates_skip_unanswered_sources_and_survive_restarts() {
        let samples = vec![
            sample(0, Ok(figures(0.0, 0.0, 0.0)), &[0, 0]),
            sample(5, Ok(figures(8.0, 2.0, 30.0)), &[4, 0]),
            sample(10, Err("connecting: refused".into()), &[6, 1]),
            // Restarted: counters start again from zero.
            sample(15, Ok(figures(5.0, 0.0, 10.0)), &[0, 0]),
            sample(20, Ok(figures(10.0, 0.0, 20.0)), &[0, 0]),
        ];
        let r = build_report(&samples, "t", 21_000);
        assert_eq!(r.samples, 5);
        assert_eq!(r.commands.per_second, vec![(5_000, 2.0), (20_000, 1.0)]);
        assert_eq!(
            r.commands.failed_per_second,
            vec![(5_000, 0.4), (20_000, 0.0)]
        );
        assert_eq!(r.commands.error_share, vec![(5_000, 0.2), (20_000, 0.0)]);
        assert_eq!(r.commands.outcomes_now["accepted"], 1.0);
        assert_eq!(r.commands.totals["accepted"], 10.0);
        let p = &r.projections[0];
        assert_eq!(
            (p.name.as_str(), p.generation, p.serving),
            ("orders", 1, true)
        );
        assert_eq!(p.lag, Some(0));
        assert_eq!(p.lag_history.len(), 2);
        assert_eq!(
            p.lag_history[0].points,
            vec![
                (0, 0.0),
                (5_000, 4.0),
                (10_000, 6.0),
                (15_000, 0.0),
                (20_000, 0.0)
            ]
        );
        assert_eq!(p.applied_per_second, vec![(5_000, 6.0), (20_000, 2.0)]);
        assert!(r.sources[0].up);
        assert_eq!(r.sources[0].last_up_ms, Some(20_000));
    }

    #[test]
    fn an_old_generation_stays_in_the_report_but_no_longer_serves() {
        let mut samples = vec![sample(0, Ok(Figures::default()), &[3])];
        let mut switched = sample(5, Ok(Figures::default()), &[0]);
        switched.projections = Ok(vec![lag(2, &[0])]);
        samples.push(switched);
        let mut failed = sample(10, Ok(Figures::default()), &[0]);
        failed.projections = Err("cql down".into());
        samples.push(failed.clone());
        let r = build_report(&samples, "t", 10_000);
        assert_eq!(r.projections_error.as_deref(), Some("cql down"));
        // Nothing serves at the latest sample: both are listed, by generation.
        let listed: Vec<_> = r
            .projections
            .iter()
            .map(|p| (p.generation, p.serving))
            .collect();
        assert_eq!(listed, [(1, false), (2, false)]);
        samples.pop();
        let r = build_report(&samples, "t", 10_000);
        let listed: Vec<_> = r
            .projections
            .iter()
            .map(|p| (p.generation, p.serving))
            .collect();
        assert_eq!(listed, [(2, true), (1, false)]);
    }

    #[test]
    fn the_ring_keeps_the_window() {
        let history = History::default();
        for i in 0..400 {
            history.push(sample(i * 5, Ok(Figures::default()), &[0]));
        }
        let r = history.report("t");
        assert_eq!(r.samples, (WINDOW.as_secs() / 5 + 1) as usize);
        assert_eq!(r.latest_sample_ms, Some(399 * 5_000));
    }

    #[test]
    fn sources_are_split_on_commas() {
        assert_eq!(
            source_list(" http://a/metrics, ,http://b/metrics,"),
            vec!["http://a/metrics", "http://b/metrics"]
        );
    }
}
