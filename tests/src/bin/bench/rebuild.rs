//! `projector rebuild` of `orders` into a new generation, run in this process as the command
//! would run it, while the running service joins in as in production.

use std::time::Duration;

use anyhow::Context;
use infra::Settings;
use scylla::client::session::Session;

use crate::measure::Procs;
use crate::report::{cpu, rate};
use crate::stack::{active_generation, end_offsets_total, follow, Followed};
use crate::{section, Bench};

pub async fn run(b: &mut Bench) {
    section(
        "projector rebuild of `orders` into a new generation (the service helps, as in production)",
    );
    let upsert_rate = b.upsert_rate.unwrap_or(f64::NAN);
    let ks = b.ks().to_string();
    match rebuild(&b.settings, &b.session, &ks, &b.procs).await {
        Ok(f) => {
            let r = f.events as f64 / f.secs;
            eprintln!("  {} events in {:.2} s: {r:.0}/s", f.events, f.secs);
            b.table
                .row("**projector events/s, rebuild** (orders)", rate(r))
                .baseline(format!("raw upsert {}", rate(upsert_rate)))
                .ratio(r, upsert_rate)
                .at_least(0.7);
            let per_event = (f.cpu.secs.get("projector").copied().unwrap_or(0.0)
                + f.cpu.secs.get("bench").copied().unwrap_or(0.0))
                * 1000.0
                / f.events as f64;
            b.table.row(
                "CPU per event: rebuild (rebuild process + service)",
                cpu(Some(per_event)),
            );
        }
        Err(e) => b
            .table
            .not_measured("projector events/s, rebuild", format!("{e:#}")),
    }
}

async fn rebuild(
    settings: &Settings,
    session: &Session,
    ks: &str,
    procs: &Procs,
) -> anyhow::Result<Followed> {
    let previous = active_generation(session, ks, "orders").await?;
    let target = end_offsets_total(&settings.kafka, &settings.kafka.topic).await?;
    let task = tokio::spawn(projector::rebuild_with(
        settings.clone(),
        projector::RebuildOptions {
            projection: "orders".into(),
            from: None,
            progress: false,
            grace: Duration::from_secs(1),
        },
    ));
    // The new generation's offsets row appears once the rebuild has seeded it.
    let followed = follow(
        session,
        ks,
        "orders",
        previous + 1,
        &settings.kafka.topic,
        target,
        procs,
        Duration::from_secs(900),
    )
    .await;
    let report = task.await.context("rebuild task")??;
    eprintln!(
        "  rebuild report: generation {} → {}, {} events, {} ms in all (DDL, seeding, group join, catch-up, switch, 1 s grace, drop)",
        report.previous_generation, report.generation, report.events, report.elapsed_ms
    );
    followed
}
