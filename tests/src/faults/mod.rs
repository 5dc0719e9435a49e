//! The fault suite: a steady load through HAProxy while parts of the cluster stack
//! (`infra/dev up --cluster`) are killed, paused and restarted, and the checks that nothing
//! acknowledged was lost and no view went wrong.
//!
//! A run goes like this:
//!
//! 1. [`load`]: K clients place, fill and pay orders through HAProxy (command-api at `:8080`),
//!    retrying with the same `Idempotency-Key`, and read each acknowledged command back through
//!    query-api (`:8081`, `min_version`). Every request is journaled.
//! 2. For each trial of each fault of the [`plan`]: the stack is made whole (every part running,
//!    every partition of the events topic fully replicated, commands succeeding), the fault is
//!    applied while the load runs ([`cluster`]: `infra/dev kill|pause|stop … --cluster`), held,
//!    undone (`start`, `resume`), and the suite waits for the first read-your-writes read after
//!    that. Then [`verify`]: every order touched during the trial (and a sample of older ones)
//!    is read back through query-api at its last acknowledged version, and every order of the run
//!    is checked in the topic.
//! 3. At the end the load stops, every order is checked once more, and the live views are
//!    compared with a rebuild of the whole topic by a projector of the suite's own in a fresh
//!    keyspace (a hash of every read-model table).
//! 4. [`report`]: one row per fault (trials, requests during the fault, share answered 2xx, the
//!    longest gap without a 2xx, time from undo to the first read-your-writes read, acknowledged
//!    commands lost, views differing) and every failed check.
//!
//! Run it with `infra/dev faults [--trials N] …` (the `faults` binary), or the CI-sized plan with
//! `infra/dev test --cluster` (the `cluster` test).

pub mod cluster;
pub mod load;
pub mod plan;
pub mod report;
pub mod topic;
pub mod verify;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use infra::Settings;
use uuid::Uuid;

use cluster::{busiest_leader, control, ensure_parts_running, wait_fully_replicated};
use load::{Journal, Kind, Load, LoadOptions};
use plan::{Fault, Plan};
use report::{Report, TrialResult, Window};
use topic::TopicFollower;

static START: OnceLock<Instant> = OnceLock::new();

/// A progress line, stamped with the time since the suite started.
pub fn say(what: &str) {
    let start = START.get_or_init(Instant::now);
    println!("[faults {:>7.1}s] {what}", start.elapsed().as_secs_f64());
}

/// How a run is made.
#[derive(Debug, Clone)]
pub struct Options {
    pub plan: Plan,
    pub load: LoadOptions,
    /// How long a killed service instance stays down.
    pub service_hold: Duration,
    /// How long a killed broker or Cassandra node stays down.
    pub infra_hold: Duration,
    /// How long a paused broker or Cassandra node stays paused (longer than the session and
    /// request timeouts).
    pub pause: Duration,
    /// Load before each fault.
    pub baseline: Duration,
    /// Extra wait after a Cassandra node is back, so gossip marks it up everywhere before the
    /// next node goes.
    pub cassandra_settle: Duration,
    /// How long the stack may take to answer again after a fault is undone.
    pub recovery_bound: Duration,
    /// Older orders (not touched during the trial) read back after each trial.
    pub older_sample: usize,
    /// Compare the views with a rebuild of the topic at the end.
    pub rebuild: bool,
}

impl Options {
    /// The suite's defaults for `plan`, with the APIs at the addresses of `settings` (HAProxy's,
    /// in the cluster's env file).
    pub fn new(plan: Plan, settings: &Settings) -> Self {
        Self {
            plan,
            load: LoadOptions {
                command_url: format!("http://{}", settings.command_api.addr),
                query_url: format!("http://{}", settings.query_api.addr),
                clients: 8,
                think: Duration::from_millis(20),
                retry_bound: Duration::from_secs(120),
                read_bound: Duration::from_secs(60),
            },
            service_hold: Duration::from_secs(5),
            infra_hold: Duration::from_secs(10),
            pause: Duration::from_secs(15),
            baseline: Duration::from_secs(3),
            cassandra_settle: Duration::from_secs(10),
            recovery_bound: Duration::from_secs(180),
            older_sample: 200,
            rebuild: true,
        }
    }
}

/// Run the plan against the cluster of `settings` and report; the report says whether every
/// check passed ([`Report::passed`]). An error is returned only when the run could not start.
pub async fn run(settings: &Settings, options: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    START.get_or_init(Instant::now);
    say(&format!(
        "plan: {} ({} trials), {} clients through {} and {}",
        options
            .plan
            .steps
            .iter()
            .map(|(f, n)| format!("{f} x{n}"))
            .collect::<Vec<_>>()
            .join(", "),
        options.plan.trials(),
        options.load.clients,
        options.load.command_url,
        options.load.query_url
    ));
    ensure_parts_running().await?;
    wait_fully_replicated(settings, &settings.kafka.topic, Duration::from_secs(180)).await?;
    let topic = TopicFollower::start(settings)?;
    let load = Load::start(options.load.clone())?;
    let journal = load.journal.clone();
    let ticker = tokio::spawn(tick(journal.clone()));
    let mut report = Report::default();

    let outcome: anyhow::Result<()> = async {
        wait_for_command(&journal, Duration::from_secs(120))
            .await
            .context("the load never got a command through")?;
        let total = options.plan.trials();
        let mut done = 0;
        for (fault, trials) in &options.plan.steps {
            for index in 0..*trials {
                done += 1;
                say(&format!(
                    "== {fault} {}/{trials} (trial {done} of {total})",
                    index + 1
                ));
                let result = trial(settings, options, &journal, &topic, *fault, index).await?;
                say(&format!(
                    "{fault} {}/{trials}: {}; {} requests, {:.1} % 2xx (others: {}), RYW reads \
                     ok {}/{}, longest gap {:.1} s, first RYW after undo {}, {} orders read, \
                     lost {}, views differing {}, topic anomalies {}",
                    index + 1,
                    result.action,
                    result.window.sent,
                    if result.window.sent == 0 {
                        100.0
                    } else {
                        100.0 * result.window.ok as f64 / result.window.sent as f64
                    },
                    result.window.failed_text(),
                    result.window.reads_ok,
                    result.window.reads_sent,
                    result.window.longest_gap.as_secs_f64(),
                    result
                        .window
                        .first_read_after_undo
                        .map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64())),
                    result.findings.orders_read,
                    result.findings.lost_commands,
                    result.findings.views_differing,
                    result.findings.topic_anomalies,
                ));
                for d in result.findings.details.iter().take(10) {
                    say(&format!("  {d}"));
                }
                for e in &result.transport_errors {
                    say(&format!("  no answer: {e}"));
                }
                report.trials.push(result);
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        say(&format!("the run stops early: {e:#}"));
        report.aborted = Some(format!("{e:#}"));
    }

    say("stopping the load");
    let journal = load.stop().await;
    ticker.abort();
    report.wrong_answers = journal
        .wrong_answers_since(started)
        .into_iter()
        .filter(|w| !report.trials.iter().any(|t| t.wrong_answers.contains(w)))
        .collect();
    report.totals = journal.totals();

    // Whatever happened, leave the stack whole, then check every order of the run.
    if let Err(e) = ensure_parts_running().await {
        say(&format!("could not make the stack whole again: {e:#}"));
    }
    say("final check of every order of the run");
    let orders = journal.orders();
    let every: HashSet<Uuid> = orders.iter().map(|(id, _)| *id).collect();
    match verify::check_orders(
        settings,
        &topic,
        &options.load.query_url,
        &orders,
        &every,
        || started_of(&journal),
        options.load.read_bound,
    )
    .await
    {
        Ok(f) => report.final_findings = Some(f),
        Err(e) => say(&format!("final check failed to run: {e:#}")),
    }
    (report.topic_records, report.undecodable) = topic.counts();
    drop(topic);
    if options.rebuild {
        say("comparing the views with a rebuild of the topic");
        match verify::compare_with_rebuild(settings).await {
            Ok(c) => report.comparison = Some(c),
            Err(e) => {
                say(&format!("comparison failed to run: {e:#}"));
                report.aborted.get_or_insert(format!("comparison: {e:#}"));
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The highest step sent of every order, as the journal has it now.
fn started_of(journal: &Journal) -> HashMap<Uuid, u64> {
    journal
        .orders()
        .into_iter()
        .map(|(id, log)| (id, log.started))
        .collect()
}

/// Every 15 s, how the load fares.
async fn tick(journal: Arc<Journal>) {
    let every = Duration::from_secs(15);
    loop {
        tokio::time::sleep(every).await;
        let since = Instant::now() - every;
        let recent = journal.attempts_since(since);
        let commands: Vec<_> = recent.iter().filter(|a| a.kind == Kind::Command).collect();
        let ok = commands.iter().filter(|a| a.ok).count();
        let reads = recent
            .iter()
            .filter(|a| a.kind == Kind::Read && a.ok)
            .count();
        let t = journal.totals();
        say(&format!(
            "load: {:.1} commands/s acknowledged, {} of {} requests 2xx in the last 15 s, \
             {reads} reads; {} orders, {} commands acknowledged so far",
            ok as f64 / every.as_secs_f64(),
            ok,
            commands.len(),
            t.orders,
            t.acked_commands
        ));
    }
}

/// Wait until a command is answered 2xx after now.
async fn wait_for_command(journal: &Journal, timeout: Duration) -> anyhow::Result<Duration> {
    let since = Instant::now();
    loop {
        if journal
            .attempts_since(since)
            .iter()
            .any(|a| a.kind == Kind::Command && a.ok)
        {
            return Ok(since.elapsed());
        }
        if since.elapsed() > timeout {
            anyhow::bail!("no command answered 2xx within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until a read-your-writes read sent at or after `undone` succeeds.
async fn wait_for_read(journal: &Journal, undone: Instant, timeout: Duration) -> bool {
    loop {
        if journal
            .attempts_since(undone)
            .iter()
            .any(|a| a.kind == Kind::Read && a.ok && a.sent >= undone)
        {
            return true;
        }
        if undone.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Make the stack whole before a trial: every part running, the events topic fully replicated,
/// commands answered.
async fn whole(settings: &Settings, journal: &Journal) -> anyhow::Result<()> {
    ensure_parts_running().await?;
    wait_fully_replicated(settings, &settings.kafka.topic, Duration::from_secs(180)).await?;
    wait_for_command(journal, Duration::from_secs(120)).await?;
    Ok(())
}

/// A fault applied and undone.
struct Applied {
    begun: Instant,
    undone: Instant,
    /// How long the undo (`start`, `resume`) took to return, attempts included.
    undo_took: Option<Duration>,
    /// The first attempt of the undo failed (e.g. `start` gave up waiting for the part).
    undo_retried: bool,
    error: Option<String>,
}

/// `action` on `part`, then (after `hold`, only if the action worked) `undo` on it, retried once.
async fn fault_and_undo(action: &str, undo: &str, part: &str, hold: Duration) -> Applied {
    say(&format!("{action} {part}"));
    let begun = Instant::now();
    let mut error = None;
    match control(action, part).await {
        Ok(_) => tokio::time::sleep(hold).await,
        Err(e) => error = Some(format!("{action} {part}: {e:#}")),
    }
    say(&format!("{undo} {part}"));
    let undo_began = Instant::now();
    let mut undone = control(undo, part).await;
    let mut retried = false;
    if undone.is_err() {
        say(&format!("{undo} {part} failed; once more"));
        retried = true;
        undone = control(undo, part).await;
    }
    let undo_took = match undone {
        Ok(_) => {
            let took = undo_began.elapsed();
            say(&format!(
                "{part} {undo} returned after {:.1} s{}",
                took.as_secs_f64(),
                if retried { " (second attempt)" } else { "" }
            ));
            Some(took)
        }
        Err(e) => {
            error.get_or_insert(format!("{undo} {part}: {e:#}"));
            None
        }
    };
    Applied {
        begun,
        undone: Instant::now(),
        undo_took,
        undo_retried: retried,
        error,
    }
}

fn took(applied: &Applied) -> String {
    let retried = if applied.undo_retried {
        ", second attempt"
    } else {
        ""
    };
    applied.undo_took.map_or("failed".into(), |d| {
        format!("{:.0} s{retried}", d.as_secs_f64())
    })
}

/// The broker to hit: the one leading the most partitions of the events topic.
async fn leader_part(settings: &Settings, index: usize) -> (String, String) {
    match busiest_leader(settings, &settings.kafka.topic).await {
        Ok((leader, counts)) => (
            format!("kafka-{leader}"),
            format!(
                "leader of {}/{} partitions",
                counts.get(&leader).copied().unwrap_or(0),
                counts.values().sum::<usize>()
            ),
        ),
        Err(e) => {
            let n = index % 3 + 1;
            say(&format!("no leaders known ({e:#}): taking kafka-{n}"));
            (format!("kafka-{n}"), "leaders unknown".into())
        }
    }
}

/// One trial: make the stack whole, run the load a moment, apply the fault, hold, undo, wait for
/// read-your-writes again, check.
async fn trial(
    settings: &Settings,
    options: &Options,
    journal: &Journal,
    topic: &TopicFollower,
    fault: Fault,
    index: usize,
) -> anyhow::Result<TrialResult> {
    whole(settings, journal)
        .await
        .context("making the stack whole before the trial")?;
    let trial_start = Instant::now();
    tokio::time::sleep(options.baseline).await;

    let (action, applied) = match fault {
        Fault::ServiceKill(service) => {
            let part = format!("{}-{}", service.name(), index % 2 + 1);
            let a = fault_and_undo("kill", "start", &part, options.service_hold).await;
            (format!("kill -9 {part}, start ({})", took(&a)), a)
        }
        Fault::BrokerKill => {
            let (part, why) = leader_part(settings, index).await;
            let a = fault_and_undo("kill", "start", &part, options.infra_hold).await;
            (format!("kill -9 {part} ({why}), start ({})", took(&a)), a)
        }
        Fault::CassandraKill => {
            let part = format!("cassandra-{}", index % 3 + 1);
            let a = fault_and_undo("kill", "start", &part, options.infra_hold).await;
            (format!("kill -9 {part}, start ({})", took(&a)), a)
        }
        Fault::BrokerPause => {
            let (part, why) = leader_part(settings, index).await;
            let a = fault_and_undo("pause", "resume", &part, options.pause).await;
            let secs = options.pause.as_secs();
            (format!("SIGSTOP {part} ({why}) for {secs} s, SIGCONT"), a)
        }
        Fault::CassandraPause => {
            let part = format!("cassandra-{}", (index + 1) % 3 + 1);
            let a = fault_and_undo("pause", "resume", &part, options.pause).await;
            let secs = options.pause.as_secs();
            (format!("SIGSTOP {part} for {secs} s, SIGCONT"), a)
        }
        Fault::RollingBrokers | Fault::RollingCassandra => {
            let kind = if fault == Fault::RollingBrokers {
                "kafka"
            } else {
                "cassandra"
            };
            let begun = Instant::now();
            let mut error = None;
            let mut starts = Vec::new();
            for n in 1..=3 {
                let part = format!("{kind}-{n}");
                let a = fault_and_undo("stop", "start", &part, Duration::ZERO).await;
                starts.push(took(&a));
                if let Some(e) = a.error {
                    error.get_or_insert(e);
                }
                if kind == "kafka" {
                    match wait_fully_replicated(
                        settings,
                        &settings.kafka.topic,
                        Duration::from_secs(180),
                    )
                    .await
                    {
                        Ok(took) => say(&format!(
                            "every partition fully replicated {:.1} s after {part} came back",
                            took.as_secs_f64()
                        )),
                        Err(e) => {
                            error.get_or_insert(format!("{e:#}"));
                        }
                    }
                } else if n < 3 {
                    tokio::time::sleep(options.cassandra_settle).await;
                }
            }
            (
                format!(
                    "stop and start {kind}-1, -2, -3 one by one (starts {})",
                    starts.join(", ")
                ),
                Applied {
                    begun,
                    undone: Instant::now(),
                    undo_took: None,
                    undo_retried: false,
                    error,
                },
            )
        }
    };
    let Applied {
        begun,
        undone,
        error,
        ..
    } = applied;

    if !wait_for_read(journal, undone, options.recovery_bound).await {
        say(&format!(
            "no read-your-writes read succeeded within {:?} of the undo",
            options.recovery_bound
        ));
    }
    if matches!(fault, Fault::CassandraKill | Fault::CassandraPause) {
        tokio::time::sleep(options.cassandra_settle).await;
    }
    let window = Window::measure(
        &journal.attempts_since(begun),
        begun,
        undone,
        Instant::now(),
    );

    // Orders touched since the trial began, and a sample of older ones.
    let orders = journal.orders();
    let mut to_read: HashSet<Uuid> = orders
        .iter()
        .filter(|(_, log)| log.last_sent >= trial_start)
        .map(|(id, _)| *id)
        .collect();
    let older: Vec<Uuid> = orders
        .iter()
        .filter(|(id, log)| log.acked > 0 && !to_read.contains(id))
        .map(|(id, _)| *id)
        .collect();
    if !older.is_empty() {
        for _ in 0..options.older_sample.min(older.len()) {
            let pick = (Uuid::new_v4().as_u128() % older.len() as u128) as usize;
            to_read.insert(older[pick]);
        }
    }
    say(&format!(
        "checking {} orders through query-api and {} in the topic",
        to_read.len(),
        orders.len()
    ));
    let findings = verify::check_orders(
        settings,
        topic,
        &options.load.query_url,
        &orders,
        &to_read,
        || started_of(journal),
        options.load.read_bound,
    )
    .await
    .context("checking the acknowledged commands")?;
    Ok(TrialResult {
        fault,
        trial: index + 1,
        action,
        duration: undone.saturating_duration_since(begun),
        window,
        findings,
        wrong_answers: journal.wrong_answers_since(trial_start),
        transport_errors: journal
            .transport_errors_since(trial_start)
            .into_iter()
            .take(5)
            .collect(),
        error,
    })
}
