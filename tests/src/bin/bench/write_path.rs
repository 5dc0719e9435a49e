//! The write path: commands against the raw LWTs (closed loop at each concurrency), open-loop
//! latency at half the peak, and the CPU each process spends per command.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::measure::{closed_loop, open_loop, Outcome};
use crate::raw::{Raw, RawOps};
use crate::report::{cpu, ms, rate};
use crate::{section, workload, Bench};

/// What later phases take from the write path.
pub struct WritePath {
    /// Concurrency and rate of the peak of commands.
    pub peak_c: usize,
    pub peak_cmd: f64,
    /// Half the peak: the operating point of the latency and freshness runs.
    pub half: f64,
}

pub async fn run(b: &mut Bench, raw: &Arc<Raw>) -> WritePath {
    let cmd_base = b.cmd_base();
    // ---------------------------------------------------------------- write path: throughput
    section("write path: closed-loop throughput, raw LWT vs commands");
    let mut lwt_by_c: BTreeMap<usize, Outcome> = BTreeMap::new();
    let mut mix_by_c: BTreeMap<usize, Outcome> = BTreeMap::new();
    let mut cmd_by_c: BTreeMap<usize, Outcome> = BTreeMap::new();
    for &c in &b.plan.concurrencies {
        let lwt_before = crate::stack::cql_requests(&b.session, b.ks()).await;
        let lwt = closed_loop(
            "raw CQL LWT insert",
            c,
            b.plan.warmup,
            b.plan.throughput,
            &b.procs,
            raw.lwt_op(),
        )
        .await;
        let lwt_after = crate::stack::cql_requests(&b.session, b.ks()).await;
        if let Some((total, parts)) =
            crate::stack::cql_requests_per_op(&lwt_before, &lwt_after, lwt.all_ops)
        {
            eprintln!("  CQL requests per raw LWT at c={c}: {total:.2} ({parts})");
            b.table.row(
                format!("CQL requests per raw LWT at c={c}, as Cassandra counts them ({parts})"),
                format!("{total:.2}"),
            );
        }
        let requests_before = crate::stack::cql_requests(&b.session, b.ks()).await;
        let cmd = closed_loop(
            "commands (mix)",
            c,
            b.plan.warmup,
            b.plan.throughput,
            &b.procs,
            workload::closed_commands(b.http.clone(), cmd_base.clone(), c),
        )
        .await;
        let requests_after = crate::stack::cql_requests(&b.session, b.ks()).await;
        if let Some((total, parts)) =
            crate::stack::cql_requests_per_op(&requests_before, &requests_after, cmd.all_ops)
        {
            eprintln!("  CQL requests per command at c={c}: {total:.2} ({parts})");
            b.table.row(
                format!("CQL requests per command at c={c}, as Cassandra counts them ({parts})"),
                format!("{total:.2}"),
            );
        }
        let mix = closed_loop(
            "raw CQL LWT lifecycle",
            c,
            b.plan.warmup,
            b.plan.throughput,
            &b.procs,
            raw.lwt_lifecycle_op(),
        )
        .await;
        lwt_by_c.insert(c, lwt);
        mix_by_c.insert(c, mix);
        cmd_by_c.insert(c, cmd);
    }
    let produce = closed_loop(
        "raw produce (awaited delivery)",
        b.plan.produce_concurrency,
        b.plan.warmup,
        b.plan.throughput,
        &b.procs,
        raw.produce_op(),
    )
    .await;

    for (&c, cmd) in &cmd_by_c {
        let lwt = &lwt_by_c[&c];
        b.table
            .row(
                format!("commands/s, c={c} (closed loop; errors {})", cmd.errors),
                rate(cmd.rate()),
            )
            .baseline(format!("raw LWT {}", rate(lwt.rate())))
            .ratio(cmd.rate(), lwt.rate());
        if let Some(mix) = mix_by_c.get(&c) {
            b.table
                .row(
                    format!("commands/s, c={c}, vs the same LWTs alone"),
                    rate(cmd.rate()),
                )
                .baseline(format!(
                    "raw LWT lifecycle (1 insert + 4 conditional updates per order) {}",
                    rate(mix.rate())
                ))
                .ratio(cmd.rate(), mix.rate());
        }
    }
    let (peak_c, peak_cmd) = cmd_by_c
        .iter()
        .max_by(|a, b| a.1.rate().total_cmp(&b.1.rate()))
        .map(|(c, o)| (*c, o.rate()))
        .unwrap_or((0, 0.0));
    let (lwt_peak_c, peak_lwt) = lwt_by_c
        .iter()
        .max_by(|a, b| a.1.rate().total_cmp(&b.1.rate()))
        .map(|(c, o)| (*c, o.rate()))
        .unwrap_or((0, 0.0));
    b.table
        .row(format!("**commands/s, peak** (c={peak_c})"), rate(peak_cmd))
        .baseline(format!("raw LWT peak {} (c={lwt_peak_c})", rate(peak_lwt)))
        .ratio(peak_cmd, peak_lwt)
        .at_least(0.7);

    // ---------------------------------------------------------------- write path: latency
    let half = (peak_cmd / 2.0).max(1.0);
    section(&format!(
        "write path: open-loop latency at half the peak command rate ({half:.0}/s)"
    ));
    let lwt_lat = open_loop(
        "raw CQL LWT insert",
        half,
        b.plan.latency,
        &b.procs,
        raw.lwt_op(),
    )
    .await;
    let produce_lat = open_loop(
        "raw produce (awaited delivery)",
        half,
        b.plan.latency,
        &b.procs,
        raw.produce_op(),
    )
    .await;
    let cmd_lat = open_loop(
        "commands (mix)",
        half,
        b.plan.latency,
        &b.procs,
        workload::open_commands(b.http.clone(), cmd_base.clone(), None),
    )
    .await;
    let bound = lwt_lat.ms(0.99) + produce_lat.ms(0.99) + 3.0;
    b.table
        .row(
            format!(
                "**command latency p50 / p99 / p999** @ {half:.0}/s open loop (errors {})",
                cmd_lat.errors
            ),
            format!(
                "{} / {} / {}",
                ms(cmd_lat.ms(0.5)),
                ms(cmd_lat.ms(0.99)),
                ms(cmd_lat.ms(0.999))
            ),
        )
        .baseline(format!(
            "raw LWT p99 {} + raw produce p99 {} + 3 ms = {}",
            ms(lwt_lat.ms(0.99)),
            ms(produce_lat.ms(0.99)),
            ms(bound)
        ))
        .ratio(cmd_lat.ms(0.99), bound)
        .target("p99 ≤ baseline", Some(cmd_lat.ms(0.99) <= bound));
    b.table.row(
        format!("raw LWT latency p50 / p99 / p999 @ {half:.0}/s"),
        format!(
            "{} / {} / {}",
            ms(lwt_lat.ms(0.5)),
            ms(lwt_lat.ms(0.99)),
            ms(lwt_lat.ms(0.999))
        ),
    );
    b.table.row(
        format!("raw produce latency p50 / p99 / p999 @ {half:.0}/s"),
        format!(
            "{} / {} / {}",
            ms(produce_lat.ms(0.5)),
            ms(produce_lat.ms(0.99)),
            ms(produce_lat.ms(0.999))
        ),
    );
    b.table.row(
        format!(
            "raw produce/s, awaited delivery, c={}",
            b.plan.produce_concurrency
        ),
        rate(produce.rate()),
    );
    // CPU per command, at the peak.
    if let (Some(cmd), Some(lwt)) = (cmd_by_c.get(&peak_c), lwt_by_c.get(&peak_c)) {
        let base_client = lwt.cpu_ms_per_op(&["bench"]).unwrap_or(0.0)
            + produce.cpu_ms_per_op(&["bench"]).unwrap_or(0.0);
        let svc = cmd.cpu_ms_per_op(&["command-api"]);
        b.table
            .row(
                format!("CPU per command: command-api (c={peak_c})"),
                cpu(svc),
            )
            .baseline(format!(
                "raw LWT + raw produce, client: {}",
                cpu(Some(base_client))
            ))
            .ratio(svc.unwrap_or(f64::NAN), base_client);
        let stack_cmd = cmd.cpu_ms_per_op(&["cassandra", "kafka"]);
        let stack_base = lwt.cpu_ms_per_op(&["cassandra", "kafka"]).unwrap_or(0.0)
            + produce
                .cpu_ms_per_op(&["cassandra", "kafka"])
                .unwrap_or(0.0);
        b.table
            .row(
                format!("CPU per command: Cassandra + Kafka (c={peak_c})"),
                cpu(stack_cmd),
            )
            .baseline(format!("raw LWT + raw produce: {}", cpu(Some(stack_base))))
            .ratio(stack_cmd.unwrap_or(f64::NAN), stack_base);
        // Apart: the LWT baseline is pure Cassandra, the produce baseline pure Kafka (with the
        // batching of 32 concurrent producers, which one command's record rarely gets).
        for (part, name, base_name, base) in [
            (
                "cassandra",
                "Cassandra",
                "raw LWT",
                lwt.cpu_ms_per_op(&["cassandra"]),
            ),
            (
                "kafka",
                "Kafka",
                "raw produce",
                produce.cpu_ms_per_op(&["kafka"]),
            ),
        ] {
            let used = cmd.cpu_ms_per_op(&[part]);
            let base = base.unwrap_or(f64::NAN);
            b.table
                .row(format!("CPU per command: {name} (c={peak_c})"), cpu(used))
                .baseline(format!("{base_name}: {}", cpu(Some(base))))
                .ratio(used.unwrap_or(f64::NAN), base);
        }
        b.table.row(
            format!("CPU per command: load generator (c={peak_c})"),
            cpu(cmd.cpu_ms_per_op(&["bench"])),
        );
    }

    WritePath {
        peak_c,
        peak_cmd,
        half,
    }
}
