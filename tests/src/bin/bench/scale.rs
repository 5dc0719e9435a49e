//! Scale rows: what adding instances does on this one box.
//!
//! - The projector, 1, 2 and 4 instances on one projection: each round drains a fresh topic
//!   (6 partitions, a backlog produced before the instances start, all started at once). On two
//!   cores the total rate cannot grow much; what shows scaling is the CPU per event staying flat
//!   and little time lost while the group rebalances (no stored offset moving for ≥ 250 ms).
//! - command-api, 1, 2 and 3 instances: the lifecycle mix in closed loop at c=32, each request to
//!   the next instance in turn (as a round-robin balancer would, so an order's commands land on
//!   different instances and each instance's row cache misses), and, for 2 and 3, each order kept
//!   on one instance (as a balancer hashing the order id would); CPU per command, and false
//!   answers (any answer but the expected status with the order's next version).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use uuid::Uuid;

use crate::measure::{closed_loop, op, OpFn};
use crate::report::{cpu, rate};
use crate::services::Service;
use crate::stack::{active_generation, end_offsets_total, follow};
use crate::{section, workload, Bench};

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    projectors(b).await?;
    command_apis(b).await
}

async fn projectors(b: &mut Bench) -> anyhow::Result<()> {
    // The run's own projector would share the consumer group (same keyspace, projection and
    // generation): stopped, so each round's group holds that round's instances only.
    if let Some(p) = b.projector.take() {
        p.stop(Duration::from_secs(15)).await;
    }
    let ks = b.ks().to_string();
    let generation = active_generation(&b.session, &ks, "orders").await?;
    let orders = b.plan.scale_backlog_orders;
    let mut first: Option<(f64, f64)> = None;
    for n in [1usize, 2, 4] {
        section(&format!(
            "scale: {n} projector instance(s) draining {} events of a fresh topic",
            orders * workload::STEPS
        ));
        let mut settings = b.settings.clone();
        settings.kafka.topic = format!("bench.{}.scale{n}", b.id);
        settings.kafka.dead_letter_topic = format!("bench.{}.scale{n}.dlq", b.id);
        infra::kafka::ensure_topics(&settings.kafka).await?;
        let producer = infra::kafka::producer(&settings.kafka)?;
        let pb = indicatif::ProgressBar::new((orders * workload::STEPS) as u64);
        workload::produce_backlog(
            &producer,
            &settings.kafka.topic,
            settings.kafka.partitions,
            &settings.tenant,
            orders,
            orders.min(10_000),
            &pb,
        )
        .await?;
        pb.finish_and_clear();
        let target = end_offsets_total(&settings.kafka, &settings.kafka.topic).await?;
        let started = Instant::now();
        let instances = futures::future::join_all(
            (0..n).map(|_| Service::start("projector", &settings, &[], &b.log_dir, &b.http)),
        )
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()
        .context("starting projector instances")?;
        let labels: Vec<String> = (0..n).map(|i| format!("projector-x{n}-{i}")).collect();
        for (label, s) in labels.iter().zip(&instances) {
            b.procs.add(label, s.pid());
        }
        let followed = follow(
            &b.session,
            &ks,
            "orders",
            generation,
            &settings.kafka.topic,
            target,
            &b.procs,
            Duration::from_secs(600),
        )
        .await;
        let to_first = started.elapsed();
        for s in instances {
            s.stop(Duration::from_secs(15)).await;
        }
        let f = followed?;
        let events_per_s = f.events as f64 / f.secs;
        let projector_secs: f64 = labels.iter().filter_map(|l| f.cpu.secs.get(l)).sum();
        let per_event = projector_secs * 1000.0 / f.events as f64;
        let cass = f
            .cpu
            .secs
            .get("cassandra")
            .map(|s| s * 1000.0 / f.events as f64);
        eprintln!(
            "  {n} instance(s): {events_per_s:.0} events/s, {:.1} µs projector CPU per event, {:.2} s stalled, {:.1} s in all",
            per_event * 1000.0,
            f.stalled_secs,
            to_first.as_secs_f64()
        );
        let (base_rate, base_cpu) = *first.get_or_insert((events_per_s, per_event));
        b.table
            .row(
                format!(
                    "scale: projector × {n} on one projection (orders; {} partitions), events/s",
                    settings.kafka.partitions
                ),
                rate(events_per_s),
            )
            .baseline(format!("× 1: {}", rate(base_rate)))
            .ratio(events_per_s, base_rate);
        b.table
            .row(
                format!(
                    "scale: projector × {n}, CPU per event (all instances, both projections; Cassandra {})",
                    cpu(cass)
                ),
                cpu(Some(per_event)),
            )
            .baseline(format!("× 1: {}", cpu(Some(base_cpu))))
            .ratio(per_event, base_cpu);
        b.table.row(
            format!("scale: projector × {n}, time with no progress after the first (rebalances; gaps ≥ 250 ms)"),
            format!("{:.2} s of {:.2} s", f.stalled_secs, f.secs),
        );
    }
    Ok(())
}

async fn command_apis(b: &mut Bench) -> anyhow::Result<()> {
    let mut extra: Vec<Service> = Vec::new();
    let mut first: Option<(f64, f64)> = None;
    let c = 32;
    for (n, affinity) in [
        (1usize, false),
        (2, false),
        (2, true),
        (3, false),
        (3, true),
    ] {
        while extra.len() + 1 < n {
            let s = Service::start("command-api", &b.settings, &[], &b.log_dir, &b.http).await?;
            b.procs
                .add(&format!("command-api-{}", extra.len() + 2), s.pid());
            extra.push(s);
        }
        let mut bases = vec![b.cmd_base()];
        bases.extend(extra.iter().map(|s| format!("http://{}", s.addr)));
        bases.truncate(n);
        let labels: Vec<String> = (1..=n)
            .map(|i| {
                if i == 1 {
                    "command-api".to_string()
                } else {
                    format!("command-api-{i}")
                }
            })
            .collect();
        let routing = if affinity {
            "each order on one instance"
        } else {
            "round-robin per request"
        };
        section(&format!(
            "scale: {n} command-api instance(s), lifecycle mix, {routing}, c={c}"
        ));
        let false_answers = Arc::new(AtomicU64::new(0));
        let outcome = closed_loop(
            &format!("commands over {n} instance(s)"),
            c,
            b.plan.warmup,
            b.plan.throughput,
            &b.procs,
            round_robin(b.http.clone(), bases, c, affinity, false_answers.clone()),
        )
        .await;
        let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        let per = outcome.cpu_ms_per_op(&label_refs).unwrap_or(f64::NAN);
        let stack = outcome.cpu_ms_per_op(&["cassandra", "kafka"]);
        let (base_rate, base_cpu) = *first.get_or_insert((outcome.rate(), per));
        let wrong = false_answers.load(Ordering::Relaxed);
        b.table
            .row(
                format!("scale: command-api × {n}, commands/s (c={c}, {routing})"),
                rate(outcome.rate()),
            )
            .baseline(format!("× 1: {}", rate(base_rate)))
            .ratio(outcome.rate(), base_rate);
        b.table
            .row(
                format!(
                    "scale: command-api × {n}, {routing}, CPU per command (all instances; Cassandra + Kafka {})",
                    cpu(stack)
                ),
                cpu(Some(per)),
            )
            .baseline(format!("× 1: {}", cpu(Some(base_cpu))))
            .ratio(per, base_cpu);
        b.table
            .row(
                format!(
                    "scale: command-api × {n}, false answers (wrong status or version; errors {})",
                    outcome.errors
                ),
                wrong.to_string(),
            )
            .target("0", Some(wrong == 0));
    }
    for s in extra {
        s.stop(Duration::from_secs(10)).await;
    }
    Ok(())
}

/// The lifecycle per worker, each request to the next instance in turn (`affinity`: each worker's
/// orders to one instance); an answer is false unless it has the expected status and the order's
/// next version.
fn round_robin(
    http: reqwest::Client,
    bases: Vec<String>,
    workers: usize,
    affinity: bool,
    false_answers: Arc<AtomicU64>,
) -> OpFn {
    let current: Arc<Vec<Mutex<Uuid>>> =
        Arc::new((0..workers).map(|_| Mutex::new(Uuid::nil())).collect());
    let bases = Arc::new(bases);
    let turn = Arc::new(AtomicU64::new(0));
    op(move |seq, worker| {
        let (http, bases, current, turn, false_answers) = (
            http.clone(),
            bases.clone(),
            current.clone(),
            turn.clone(),
            false_answers.clone(),
        );
        async move {
            let step = (seq % workload::STEPS as u64) as usize;
            let id = if step == 0 {
                let id = Uuid::now_v7();
                if let Ok(mut c) = current[worker].lock() {
                    *c = id;
                }
                id
            } else {
                current[worker].lock().map(|c| *c).unwrap_or_default()
            };
            let pick = if affinity {
                worker as u64
            } else {
                turn.fetch_add(1, Ordering::Relaxed)
            };
            let base = &bases[(pick % bases.len() as u64) as usize];
            match workload::command(&http, base, id, step).await {
                Ok(v) if v == step as i64 + 1 => Ok(()),
                Ok(v) => {
                    false_answers.fetch_add(1, Ordering::Relaxed);
                    anyhow::bail!("step {step} answered version {v}")
                }
                Err(e) => {
                    false_answers.fetch_add(1, Ordering::Relaxed);
                    Err(e)
                }
            }
        }
    })
}
