//! The projector draining a backlog live (the commands' events plus a synthetic backlog), against
//! raw upserts of one row, the same rows batched as the projector batches them, and a raw
//! consume of the same topic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::measure::{closed_loop, Outcome};
use crate::raw::{Raw, RawOps, EVENTS_PER_BATCH};
use crate::report::{cpu, rate};
use crate::stack::{end_offsets_total, follow, raw_consume};
use crate::{section, workload, Bench};

/// Runs the phase; the ids of the backlog's orders (the read phase reads them).
pub async fn run(b: &mut Bench, raw: &Arc<Raw>) -> anyhow::Result<Arc<Vec<Uuid>>> {
    section("projector baselines: raw upserts, one row each and the projector's rows batched");
    let upsert = closed_loop(
        "raw CQL upsert",
        b.plan.upsert_concurrency,
        b.plan.warmup,
        b.plan.throughput,
        &b.procs,
        raw.upsert_op(),
    )
    .await;
    let batched = closed_loop(
        "raw CQL batched rows (10 events a batch)",
        batched_concurrency(b),
        b.plan.warmup,
        b.plan.throughput,
        &b.procs,
        raw.batched_rows_op(),
    )
    .await;
    section(&format!(
        "projector: backlog of {} orders ({} events) produced to {}",
        b.plan.backlog_orders,
        b.plan.backlog_orders * workload::STEPS,
        b.settings.kafka.topic
    ));
    let events_producer = infra::kafka::producer(&b.settings.kafka)?;
    let pb = indicatif::ProgressBar::new((b.plan.backlog_orders * workload::STEPS) as u64);
    let t = Instant::now();
    let order_ids = workload::produce_backlog(
        &events_producer,
        &b.settings.kafka.topic,
        b.partitions(),
        &b.settings.tenant,
        b.plan.backlog_orders,
        b.plan.wave,
        &pb,
    )
    .await?;
    pb.finish_and_clear();
    eprintln!("  produced in {:.1} s", t.elapsed().as_secs_f64());
    let order_ids = Arc::new(order_ids);
    let end_total = end_offsets_total(&b.settings.kafka, &b.settings.kafka.topic).await?;

    section("raw consume of the events topic");
    let consume = raw_consume(
        &b.settings.kafka,
        &b.settings.kafka.topic,
        end_total,
        &b.procs,
    )
    .await;
    match &consume {
        Ok((n, secs, _)) => eprintln!("  {n} records in {secs:.2} s: {:.0}/s", *n as f64 / secs),
        Err(e) => eprintln!("  failed: {e:#}"),
    }

    section("projector live: the service drains the topic (commands' events + backlog)");
    let projector_svc = b.ensure_projector().await;
    let mut projector_live = None;
    let mut history_live = None;
    match &projector_svc {
        Ok(()) => {
            let (orders, history) = tokio::join!(
                follow(
                    &b.session,
                    b.ks(),
                    "orders",
                    1,
                    &b.settings.kafka.topic,
                    end_total,
                    &b.procs,
                    Duration::from_secs(600)
                ),
                follow(
                    &b.session,
                    b.ks(),
                    "order_history",
                    1,
                    &b.settings.kafka.topic,
                    end_total,
                    &b.procs,
                    Duration::from_secs(600)
                ),
            );
            projector_live = Some(orders);
            history_live = Some(history);
        }
        Err(e) => b.table.not_measured("projector", format!("{e:#}")),
    }
    let upsert_rate = upsert.rate();
    b.upsert_rate = Some(upsert_rate);
    if let Some(live) = &projector_live {
        match live {
            Ok(f) => {
                let r = f.events as f64 / f.secs;
                eprintln!("  orders: {} events in {:.2} s: {r:.0}/s", f.events, f.secs);
                b.table
                    .row(
                        "**projector events/s, live** (orders; order_history beside)",
                        rate(r),
                    )
                    .baseline(format!(
                        "raw upsert {} (c={})",
                        rate(upsert_rate),
                        b.plan.upsert_concurrency
                    ))
                    .ratio(r, upsert_rate)
                    .at_least(0.7);
                if let Ok((n, secs, _)) = &consume {
                    let c = *n as f64 / secs;
                    b.table
                        .row("projector events/s, live, vs raw consume", rate(r))
                        .baseline(format!("raw consume {}", rate(c)))
                        .ratio(r, c);
                }
                let per_event = f
                    .cpu
                    .secs
                    .get("projector")
                    .map(|s| s * 1000.0 / f.events as f64);
                let base = upsert.cpu_ms_per_op(&["bench"]);
                b.table
                    .row(
                        "CPU per event: projector, live (both projections)",
                        cpu(per_event),
                    )
                    .baseline(format!("raw upsert, client: {}", cpu(base)))
                    .ratio(per_event.unwrap_or(f64::NAN), base.unwrap_or(0.0));
                let cass = f
                    .cpu
                    .secs
                    .get("cassandra")
                    .map(|s| s * 1000.0 / f.events as f64);
                let cass_base = upsert.cpu_ms_per_op(&["cassandra"]);
                b.table
                    .row(
                        "CPU per event: Cassandra, live (both projections)",
                        cpu(cass),
                    )
                    .baseline(format!("per raw upsert: {}", cpu(cass_base)))
                    .ratio(cass.unwrap_or(f64::NAN), cass_base.unwrap_or(0.0));
                // The same rows, batched the same way: what is left is the projector's own
                // overhead (consume, decode, fold, offsets, the read of a row not cached).
                table_batched(b, r, cass, &batched);
            }
            Err(e) => b
                .table
                .not_measured("projector events/s, live", format!("{e:#}")),
        }
    }
    if let Some(Ok(f)) = &history_live {
        let r = f.events as f64 / f.secs;
        eprintln!(
            "  order_history: {} events in {:.2} s: {r:.0}/s",
            f.events, f.secs
        );
        b.table
            .row("projector events/s, live (order_history)", rate(r))
            .baseline(format!("raw upsert {}", rate(upsert_rate)))
            .ratio(r, upsert_rate);
    }
    b.table.row(
        format!("raw upsert/s, c={}", b.plan.upsert_concurrency),
        rate(upsert_rate),
    );
    if let Ok((n, secs, _)) = &consume {
        b.table.row(
            "raw consume/s (rdkafka, projector's consumer settings)",
            rate(*n as f64 / secs),
        );
    }
    Ok(order_ids)
}

/// Batches in flight for the batched baseline: the projector sends up to 8 per consumer batch,
/// and its 2 projections × 6 partitions' consumers share one client.
fn batched_concurrency(b: &Bench) -> usize {
    (b.plan.upsert_concurrency / 4).max(1)
}

fn table_batched(b: &mut Bench, events_per_s: f64, cass: Option<f64>, batched: &Outcome) {
    let per = EVENTS_PER_BATCH as f64;
    let batched_rate = batched.rate() * per;
    let c = batched_concurrency(b);
    b.table
        .row(
            "projector events/s, live, vs the same rows batched",
            rate(events_per_s),
        )
        .baseline(format!(
            "raw batched rows {} events/s (3.2 rows an event, 32 a batch, c={c}; errors {})",
            rate(batched_rate),
            batched.errors
        ))
        .ratio(events_per_s, batched_rate);
    let base = batched.cpu_ms_per_op(&["cassandra"]).map(|ms| ms / per);
    b.table
        .row(
            "CPU per event: Cassandra, live, vs the same rows batched",
            cpu(cass),
        )
        .baseline(format!("raw batched rows: {}", cpu(base)))
        .ratio(cass.unwrap_or(f64::NAN), base.unwrap_or(0.0));
    let client = batched.cpu_ms_per_op(&["bench"]).map(|ms| ms / per);
    b.table.row(
        "CPU per event: raw batched rows, client (the driver's share)",
        cpu(client),
    );
}
