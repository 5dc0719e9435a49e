//! Freshness: commands in open loop, each read back through query-api with `min_version`, at
//! half the write path's peak and at half the peak the whole system sustains (measured here in
//! closed loop with every command read back).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::measure::{self, closed_loop, open_loop};
use crate::report::{cpu, ms, rate};
use crate::stack::{active_generation, applied, end_offsets_total, prepare_applied};
use crate::write_path::WritePath;
use crate::{section, workload, Bench};

pub async fn run(b: &mut Bench, write: &WritePath) {
    if let Err(e) = b.ensure_projector().await {
        b.table
            .not_measured("freshness", format!("projector: {e:#}"));
        return;
    }
    let query = match b.ensure_query().await {
        Ok(q) => q,
        Err(e) => {
            b.table
                .not_measured("freshness", format!("query-api: {e:#}"));
            return;
        }
    };
    let ks = b.ks().to_string();
    let g = active_generation(&b.session, &ks, "orders")
        .await
        .unwrap_or(1);
    if let Err(e) = drain_backlog(b).await {
        b.table.not_measured("freshness", format!("{e:#}"));
        return;
    }
    let select = match b
        .session
        .prepare(format!(
            "SELECT version FROM {ks}.order_detail_g{g} WHERE tenant_id = ? AND order_id = ?"
        ))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            b.table.not_measured("freshness", format!("{e:#}"));
            return;
        }
    };
    let (session, tenant) = (b.session.clone(), b.settings.tenant.clone());
    let fresh = || workload::Freshness {
        query: query.clone(),
        api: Arc::new(Mutex::new(measure::histogram())),
        failures: Arc::new(AtomicU64::new(0)),
        in_flight: Arc::new(AtomicU64::new(0)),
        session: session.clone(),
        select: select.clone(),
        tenant: tenant.clone(),
        table: Arc::new(Mutex::new(measure::histogram())),
        watching: Arc::new(AtomicBool::new(false)),
    };
    let (half, peak_c, peak_cmd) = (write.half, write.peak_c, write.peak_cmd);
    section(&format!(
        "freshness: command accepted → visible through query-api, at {half:.0} commands/s (half the write path's peak)"
    ));
    // Above what the whole system sustains with the read side running (the write path's peak is
    // measured alone), so the views fall behind and freshness is queueing: shown, not judged.
    freshness(b, &format!("@ {half:.0} commands/s"), false, half, fresh()).await;

    // The same at half the peak the whole system sustains: commands while the projector
    // applies them and every one is read back, in closed loop. The write path's peak above
    // runs with nothing else on the machine; on one 2-core box the read side takes its
    // share of the same CPUs. Each client waits for its read-back (tens of ms), so four
    // times the write path's peak concurrency keeps the machine saturated.
    let c = (peak_c * 4).clamp(32, 256);
    section(&format!(
        "system peak: commands with every one read back through query-api, closed loop c={c}"
    ));
    let system = closed_loop(
        "commands + read-back (closed loop)",
        c,
        b.plan.warmup,
        b.plan.throughput,
        &b.procs,
        workload::closed_commands_read_back(b.http.clone(), b.cmd_base(), query.clone(), c),
    )
    .await;
    b.table
        .row(
            format!(
                "commands/s, peak with the read side running (c={c}, each command read back with `min_version`; errors {})",
                system.errors
            ),
            rate(system.rate()),
        )
        .baseline(format!("write path alone {}", rate(peak_cmd)))
        .ratio(system.rate(), peak_cmd);
    let half_system = (system.rate() / 2.0).max(1.0);
    section(&format!(
        "freshness at half the system's peak ({half_system:.0} commands/s)"
    ));
    freshness(
        b,
        &format!("@ {half_system:.0} commands/s (half the system's peak)"),
        true,
        half_system,
        fresh(),
    )
    .await;
}

/// Wait until both projections have applied everything on the topic. With no projector phase
/// before this one (`--phases write,freshness`) the projector starts on the write phase's events,
/// and an open loop measured while it drains that backlog would time the backlog, not freshness.
async fn drain_backlog(b: &Bench) -> anyhow::Result<()> {
    let (ks, topic) = (b.ks(), b.settings.kafka.topic.as_str());
    let target = end_offsets_total(&b.settings.kafka, topic).await?;
    let select = prepare_applied(&b.session, ks).await?;
    let mut generations = Vec::new();
    for name in ["orders", "order_history"] {
        generations.push((
            name,
            active_generation(&b.session, ks, name).await.unwrap_or(1),
        ));
    }
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        let mut least = i64::MAX;
        for (name, g) in &generations {
            least = least.min(applied(&b.session, &select, name, *g, topic).await?);
        }
        if least >= target {
            if started.elapsed() > Duration::from_secs(1) {
                eprintln!(
                    "  the projector caught up with the topic's {target} records in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!(
                "the projector applied {least} of the topic's {target} records within 600 s"
            );
        }
        if said.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "  waiting for the projector to catch up: {least} of {target} records applied"
            );
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One freshness run: commands in open loop at `rate`, each read back through query-api with
/// `min_version`, one at a time also watched at the table; rows go to the table (`headline`: the
/// row judged against the target, with the CPU and read-count rows beside it).
async fn freshness(
    b: &mut Bench,
    at: &str,
    headline: bool,
    rate_per_s: f64,
    fresh: workload::Freshness,
) {
    let (http, cmd_base) = (b.http.clone(), b.cmd_base());
    let before = metrics(&http, &fresh.query).await;
    let load = open_loop(
        "commands + read-back (min_version)",
        rate_per_s,
        b.plan.latency,
        &b.procs,
        workload::open_commands(http.clone(), cmd_base.clone(), Some(fresh.clone())),
    )
    .await;
    // Every read-back lands: each waits at most 5 s in query-api (`wait_ms`) and 15 s in the
    // client, so none is left out of the histogram for being slow.
    let waited = Instant::now();
    while fresh.in_flight.load(Ordering::Acquire) > 0 && waited.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = fresh.in_flight.load(Ordering::Acquire);
    if left > 0 {
        eprintln!("  {left} read-backs still unanswered after 20 s: counted as failures");
        fresh.failures.fetch_add(left, Ordering::Relaxed);
    }
    let snapshot = |h: &Arc<Mutex<hdrhistogram::Histogram<u64>>>| {
        h.lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| measure::histogram())
    };
    let (h, t) = (snapshot(&fresh.api), snapshot(&fresh.table));
    let q = |h: &hdrhistogram::Histogram<u64>, x: f64| h.value_at_quantile(x) as f64 / 1000.0;
    let failures = fresh.failures.load(Ordering::Relaxed);
    eprintln!(
        "  freshness through query-api over {} commands: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, read-back failures {failures}",
        h.len(), q(&h, 0.5), q(&h, 0.99), h.max() as f64 / 1000.0
    );
    eprintln!(
        "  freshness at the table over {} commands: p50 {:.2} ms, p99 {:.2} ms",
        t.len(),
        q(&t, 0.5),
        q(&t, 0.99)
    );
    let name = if headline {
        "**freshness p50 / p99**"
    } else {
        "freshness p50 / p99"
    };
    let row = b.table.row(
        format!(
            "{name} {at}, through query-api `min_version` (n={}, failures {failures}: non-2xx or no answer, timed and counted; command errors {})",
            h.len(),
            load.errors
        ),
        format!("{} / {}", ms(q(&h, 0.5)), ms(q(&h, 0.99))),
    );
    if headline {
        row.target(
            "p99 ≤ 50 ms, p50 ≤ 15 ms",
            Some(q(&h, 0.99) <= 50.0 && q(&h, 0.5) <= 15.0 && !h.is_empty() && failures == 0),
        );
    }
    b.table.row(
        format!(
            "freshness p50 / p99 {at} at the table (one command at a time, order_detail polled every 2 ms, n={})",
            t.len()
        ),
        format!("{} / {}", ms(q(&t, 0.5)), ms(q(&t, 0.99))),
    );
    b.table.row(
        format!("command latency p50 / p99 during the freshness run {at}"),
        format!("{} / {}", ms(load.ms(0.5)), ms(load.ms(0.99))),
    );
    let after = metrics(&http, &fresh.query).await;
    let (before, after) = (before.as_deref(), after.as_deref());
    // Where the tail is spent: inside query-api (its own request timer, from its histogram) or
    // outside it (the client, the network stack, the scheduler of a busy box).
    if let (Some(before), Some(after)) = (
        before.and_then(served_within),
        after.and_then(served_within),
    ) {
        let served: Vec<(f64, f64)> = after
            .iter()
            .map(|(le, n)| {
                let was = before
                    .iter()
                    .find(|(b, _)| b == le)
                    .map_or(0.0, |(_, n)| *n);
                (*le, n - was)
            })
            .collect();
        let total = served
            .iter()
            .find(|(le, _)| le.is_infinite())
            .map_or(0.0, |(_, n)| *n);
        let share = |bound: f64| {
            served
                .iter()
                .find(|(le, _)| (*le - bound).abs() < 1e-9)
                .map(|(_, n)| n / total.max(1.0))
        };
        let client = |bound_ms: f64| {
            let within = h
                .iter_recorded()
                .filter(|v| v.value_iterated_to() as f64 / 1000.0 <= bound_ms)
                .map(|v| v.count_at_value())
                .sum::<u64>();
            within as f64 / h.len().max(1) as f64
        };
        if let (Some(s20), Some(s50)) = (share(0.02), share(0.05)) {
            let pct = |x: f64| format!("{:.1} %", x * 100.0);
            eprintln!(
                "  read-backs within 20 / 50 ms: query-api's own timer {} / {}, the client's {} / {}",
                pct(s20),
                pct(s50),
                pct(client(20.0)),
                pct(client(50.0))
            );
            b.table.row(
                format!("read-backs answered within 20 ms / 50 ms {at}: as timed inside query-api (its request histogram, n={total:.0}) vs by the client"),
                format!(
                    "{} / {} inside, {} / {} at the client",
                    pct(s20),
                    pct(s50),
                    pct(client(20.0)),
                    pct(client(50.0))
                ),
            );
        }
    }
    if let (Some(before), Some(after)) = (
        before.map(order_detail_reads),
        after.map(order_detail_reads),
    ) {
        if !h.is_empty() {
            let per = (after - before) / h.len() as f64;
            eprintln!("  query-api read order_detail {per:.2} times per read-back");
            b.table.row(
                format!(
                    "CQL reads of the order per read-back {at} (query-api, `min_version` waits)"
                ),
                format!("{per:.2}"),
            );
        }
    }
    for (label, who) in [
        ("query-api", "query-api"),
        ("projector", "projector"),
        ("Cassandra", "cassandra"),
    ] {
        b.table.row(
            format!("CPU per command during the freshness run {at}: {label}"),
            cpu(load.cpu_ms_per_op(&[who])),
        );
    }
}

/// query-api's `/metrics` text; `None` when it cannot be read.
async fn metrics(http: &reqwest::Client, base: &str) -> Option<String> {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// query-api's `query_order_detail_reads_total` (its CQL reads of `order_detail`); absent (0)
/// until the first read.
fn order_detail_reads(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("query_order_detail_reads_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// query-api's request-time histogram of `GET /v1/orders/{id}` answered 200, as cumulative
/// `(le, count)` buckets (seconds; the last is `+Inf`); `None` when a bucket line is malformed.
fn served_within(metrics: &str) -> Option<Vec<(f64, f64)>> {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in metrics.lines().filter(|l| {
        l.starts_with("http_request_duration_seconds_bucket{")
            && l.contains("route=\"/v1/orders/{id}\"")
            && l.contains("status=\"200\"")
    }) {
        let le = line.split("le=\"").nth(1)?.split('"').next()?;
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().ok()?
        };
        let n: f64 = line.split_whitespace().last()?.parse().ok()?;
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some(bucket) => bucket.1 += n,
            None => buckets.push((le, n)),
        }
    }
    // Absent until the first answer: nothing counted yet.
    Some(buckets)
}
