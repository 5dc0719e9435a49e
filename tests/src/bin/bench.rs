//! `infra/dev bench [--quick]`: the system measured side by side with raw baselines, on this
//! machine, in one run (see BENCHMARKS.md for the method). `infra/dev bench --tracing-cost`
//! measures only what exporting traces costs the write path.
//!
//! Everything runs in an isolated keyspace (`bench_<time>`) and fresh topics, so the dev stack's
//! own data and running services are untouched; both are dropped at the end (`--keep` keeps them).
//! The services under test are child processes of this binary (`--serve <role>`), so each has its
//! own CPU account and resident memory; the load generator and the raw baselines run here.

#[global_allocator]
static ALLOCATOR: infra::Allocator = infra::Allocator;

#[path = "../bench/measure.rs"]
mod measure;
#[path = "../bench/report.rs"]
mod report;
#[path = "../bench/services.rs"]
mod services;
#[path = "../bench/tracing_cost.rs"]
mod tracing_cost;
#[path = "../bench/workload.rs"]
mod workload;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::Parser;
use infra::Settings;
use measure::{closed_loop, op, open_loop, Outcome, Procs};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use report::{cpu, ms, rate, Table};
use scylla::client::session::Session;
use scylla::value::{CqlValue, Row};
use services::Service;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "The CQRS backend measured against raw baselines"
)]
struct Cli {
    /// Short run (under 5 minutes on 2 cores): concurrencies 1/8/32, a few seconds per point.
    #[arg(long)]
    quick: bool,
    /// Keep the bench keyspace and topics afterwards.
    #[arg(long)]
    keep: bool,
    /// Where the report goes (default: <target>/bench).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Command concurrencies (closed loop), e.g. `1,8,32`.
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Orders in the projector's backlog (5 events each), produced in waves of at most 10 000.
    #[arg(long)]
    backlog: Option<usize>,
    /// Extra environment for the command-api under test, e.g.
    /// `--command-api-env APP_COMMAND_API__SWEEPER_INTERVAL_MS=3600000` (for experiments).
    #[arg(long)]
    command_api_env: Vec<String>,
    /// Stop after the write path (commands vs raw LWT and produce).
    #[arg(long)]
    write_path_only: bool,
    /// Only the cost of traces: commands/s at c=8 of command-api with traces off and on (10 %
    /// sampled, exported to an OTLP sink in the bench), restarted for each run, alternated twice.
    #[arg(long)]
    tracing_cost: bool,
    /// Internal: run one service role (command-api, query-api, projector, axum) in this process.
    #[arg(long, hide = true)]
    serve: Option<String>,
}

struct Plan {
    /// Unmeasured load on the JVMs before the first measurement, at least the first and at most
    /// the second: right after `infra/dev up` their JIT is cold and the first raw baseline would
    /// run at a fraction of its later rate.
    stack_warmup: (Duration, Duration),
    warmup: Duration,
    throughput: Duration,
    latency: Duration,
    concurrencies: Vec<usize>,
    backlog_orders: usize,
    wave: usize,
    read_concurrency: usize,
    upsert_concurrency: usize,
    produce_concurrency: usize,
}

impl Plan {
    fn new(cli: &Cli) -> Self {
        let mut plan = if cli.quick {
            Plan {
                stack_warmup: (Duration::from_secs(20), Duration::from_secs(60)),
                warmup: Duration::from_millis(1000),
                throughput: Duration::from_secs(4),
                latency: Duration::from_secs(6),
                concurrencies: vec![1, 8, 32],
                backlog_orders: 4_000,
                wave: 4_000,
                read_concurrency: 32,
                upsert_concurrency: 64,
                produce_concurrency: 32,
            }
        } else {
            Plan {
                stack_warmup: (Duration::from_secs(40), Duration::from_secs(120)),
                warmup: Duration::from_secs(3),
                throughput: Duration::from_secs(20),
                latency: Duration::from_secs(30),
                concurrencies: vec![1, 4, 8, 16, 32, 64, 128],
                backlog_orders: 40_000,
                wave: 10_000,
                read_concurrency: 32,
                upsert_concurrency: 64,
                produce_concurrency: 32,
            }
        };
        if !cli.concurrency.is_empty() {
            plan.concurrencies = cli.concurrency.clone();
        }
        if let Some(orders) = cli.backlog {
            plan.backlog_orders = orders.max(1);
            plan.wave = plan.backlog_orders.min(10_000);
        }
        plan
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(role) = &cli.serve {
        return match services::serve(role) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{role}: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = if cli.tracing_cost {
        runtime.block_on(tracing_cost::run(http_client(), cli.quick, cli.keep))
    } else {
        runtime.block_on(run(cli))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn section(name: &str) {
    eprintln!("\n== {name}");
}

/// The Kafka and Cassandra JVMs of the local stack, found by their main class.
fn stack_pids() -> Vec<(&'static str, u32)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("org.apache.cassandra.service.CassandraDaemon") {
            found.push(("cassandra", pid));
        } else if cmdline.contains("kafka.Kafka") && !cmdline.contains("dependency:") {
            found.push(("kafka", pid));
        }
    }
    found
}

fn http_client() -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(15));
    match infra::Settings::load() {
        Ok(settings) => tests::authorized(&settings, builder),
        Err(_) => builder,
    }
    .build()
    .unwrap_or_default()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let plan = Plan::new(&cli);
    let started = Instant::now();
    let now = Utc::now();
    let id = now.format("%Y%m%d%H%M%S").to_string();
    let mut settings = Settings::load()?;
    settings.cql.keyspace = format!("bench_{id}");
    settings.kafka.topic = format!("bench.{id}.events");
    settings.kafka.dead_letter_topic = format!("bench.{id}.events.dlq");
    let mut raw_kafka = settings.kafka.clone();
    raw_kafka.topic = format!("bench.{id}.raw");
    raw_kafka.dead_letter_topic = format!("bench.{id}.raw.dlq");
    let partitions = settings.kafka.partitions;
    let ks = settings.cql.keyspace.clone();
    let out_dir = report::out_dir(cli.out.as_deref());
    let log_dir = out_dir.join(format!("logs-{id}"));
    let mut table = Table::default();
    let http = http_client();

    let procs = Procs::default();
    procs.add("bench", std::process::id());
    for (label, pid) in stack_pids() {
        procs.add(label, pid);
    }
    let rss = procs.spawn_rss_sampler();

    section(&format!(
        "setup: keyspace {ks}, topics {} and {}, {partitions} partitions",
        settings.kafka.topic, raw_kafka.topic
    ));
    let session = infra::cql::connect(&settings.cql).await?;
    infra::migrations::run(&session, &settings.cql)
        .await
        .context("migrating the bench keyspace")?;
    session
        .query_unpaged(
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.bench_upsert (tenant_id text, order_id uuid, \
                 customer_id uuid, currency text, status text, items text, total_cents bigint, \
                 version bigint, placed_at timestamp, updated_at timestamp, \
                 PRIMARY KEY ((tenant_id, order_id)))"
            ),
            &[],
        )
        .await?;
    session.await_schema_agreement().await?;
    infra::kafka::ensure_topics(&settings.kafka).await?;
    infra::kafka::ensure_topics(&raw_kafka).await?;
    let producer = infra::kafka::producer(&raw_kafka)?;
    eprintln!("  ready after {:.1} s", started.elapsed().as_secs_f64());

    let command_env: Vec<(&str, String)> = cli
        .command_api_env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    if !command_env.is_empty() {
        table.note(format!("command-api ran with {:?}", cli.command_api_env));
    }
    let command_api =
        Service::start("command-api", &settings, &command_env, &log_dir, &http).await?;
    procs.add("command-api", command_api.pid());
    let cmd_base = format!("http://{}", command_api.addr);

    let raw = Raw::new(
        session.clone(),
        &ks,
        &settings.tenant,
        producer.clone(),
        &raw_kafka.topic,
        partitions,
    )
    .await?;

    // ---------------------------------------------------------------- JVM warm-up
    // Rounds of raw LWTs, commands and raw produces until the raw LWT rate of a round is within
    // 10 % of the previous one (the JIT has settled), between the bounds of `stack_warmup`.
    section("warm-up of Kafka and Cassandra (not measured)");
    let warm_started = Instant::now();
    let mut last_lwt: Option<f64> = None;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut lwt = 0.0;
        for (label, secs, warm) in [
            ("warm-up: raw CQL LWT insert", 2, raw.lwt_op()),
            (
                "warm-up: commands (mix)",
                2,
                workload::closed_commands(http.clone(), cmd_base.clone(), 32),
            ),
            ("warm-up: raw produce", 1, raw.produce_op()),
        ] {
            let outcome = closed_loop(
                label,
                32,
                Duration::ZERO,
                Duration::from_secs(secs),
                &procs,
                warm,
            )
            .await;
            if lwt == 0.0 {
                lwt = outcome.rate();
            }
        }
        let settled = last_lwt.is_some_and(|last| (lwt - last).abs() <= 0.1 * last);
        last_lwt = Some(lwt);
        let (least, most) = plan.stack_warmup;
        let elapsed = warm_started.elapsed();
        if (settled && elapsed >= least) || elapsed >= most {
            break;
        }
    }
    let warmed = format!(
        "{rounds} rounds, {:.0} s",
        warm_started.elapsed().as_secs_f64()
    );
    eprintln!("  warmed up in {warmed}");
    table.note(format!(
        "Kafka and Cassandra warmed up first: {warmed} of raw LWTs, commands and raw produces, until the raw LWT rate of a round was within 10 % of the previous one (not measured)"
    ));

    // ---------------------------------------------------------------- write path: throughput
    section("write path: closed-loop throughput, raw LWT vs commands");
    let mut lwt_by_c: BTreeMap<usize, Outcome> = BTreeMap::new();
    let mut mix_by_c: BTreeMap<usize, Outcome> = BTreeMap::new();
    let mut cmd_by_c: BTreeMap<usize, Outcome> = BTreeMap::new();
    for &c in &plan.concurrencies {
        let lwt = closed_loop(
            "raw CQL LWT insert",
            c,
            plan.warmup,
            plan.throughput,
            &procs,
            raw.lwt_op(),
        )
        .await;
        let cmd = closed_loop(
            "commands (mix)",
            c,
            plan.warmup,
            plan.throughput,
            &procs,
            workload::closed_commands(http.clone(), cmd_base.clone(), c),
        )
        .await;
        let mix = closed_loop(
            "raw CQL LWT lifecycle",
            c,
            plan.warmup,
            plan.throughput,
            &procs,
            raw.lwt_lifecycle_op(),
        )
        .await;
        lwt_by_c.insert(c, lwt);
        mix_by_c.insert(c, mix);
        cmd_by_c.insert(c, cmd);
    }
    let produce = closed_loop(
        "raw produce (awaited delivery)",
        plan.produce_concurrency,
        plan.warmup,
        plan.throughput,
        &procs,
        raw.produce_op(),
    )
    .await;
    let upsert = closed_loop(
        "raw CQL upsert",
        plan.upsert_concurrency,
        plan.warmup,
        plan.throughput,
        &procs,
        raw.upsert_op(),
    )
    .await;

    for (&c, cmd) in &cmd_by_c {
        let lwt = &lwt_by_c[&c];
        table
            .row(
                format!("commands/s, c={c} (closed loop; errors {})", cmd.errors),
                rate(cmd.rate()),
            )
            .baseline(format!("raw LWT {}", rate(lwt.rate())))
            .ratio(cmd.rate(), lwt.rate());
        if let Some(mix) = mix_by_c.get(&c) {
            table
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
    table
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
        plan.latency,
        &procs,
        raw.lwt_op(),
    )
    .await;
    let produce_lat = open_loop(
        "raw produce (awaited delivery)",
        half,
        plan.latency,
        &procs,
        raw.produce_op(),
    )
    .await;
    let cmd_lat = open_loop(
        "commands (mix)",
        half,
        plan.latency,
        &procs,
        workload::open_commands(http.clone(), cmd_base.clone(), None),
    )
    .await;
    let bound = lwt_lat.ms(0.99) + produce_lat.ms(0.99) + 3.0;
    table
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
    table.row(
        format!("raw LWT latency p50 / p99 / p999 @ {half:.0}/s"),
        format!(
            "{} / {} / {}",
            ms(lwt_lat.ms(0.5)),
            ms(lwt_lat.ms(0.99)),
            ms(lwt_lat.ms(0.999))
        ),
    );
    table.row(
        format!("raw produce latency p50 / p99 / p999 @ {half:.0}/s"),
        format!(
            "{} / {} / {}",
            ms(produce_lat.ms(0.5)),
            ms(produce_lat.ms(0.99)),
            ms(produce_lat.ms(0.999))
        ),
    );
    table.row(
        format!(
            "raw produce/s, awaited delivery, c={}",
            plan.produce_concurrency
        ),
        rate(produce.rate()),
    );
    // CPU per command, at the peak.
    if let (Some(cmd), Some(lwt)) = (cmd_by_c.get(&peak_c), lwt_by_c.get(&peak_c)) {
        let base_client = lwt.cpu_ms_per_op(&["bench"]).unwrap_or(0.0)
            + produce.cpu_ms_per_op(&["bench"]).unwrap_or(0.0);
        let svc = cmd.cpu_ms_per_op(&["command-api"]);
        table
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
        table
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
            table
                .row(format!("CPU per command: {name} (c={peak_c})"), cpu(used))
                .baseline(format!("{base_name}: {}", cpu(Some(base))))
                .ratio(used.unwrap_or(f64::NAN), base);
        }
        table.row(
            format!("CPU per command: load generator (c={peak_c})"),
            cpu(cmd.cpu_ms_per_op(&["bench"])),
        );
    }

    if cli.write_path_only {
        table.row("RSS command-api (peak)", procs_rss(&procs, "command-api"));
        rss.abort();
        command_api.stop(Duration::from_secs(10)).await;
        return finish(
            &cli, &mut table, &plan, now, started, partitions, &out_dir, &session, &settings,
            &raw_kafka,
        )
        .await;
    }

    // ---------------------------------------------------------------- projector
    section(&format!(
        "projector: backlog of {} orders ({} events) produced to {}",
        plan.backlog_orders,
        plan.backlog_orders * workload::STEPS,
        settings.kafka.topic
    ));
    let events_producer = infra::kafka::producer(&settings.kafka)?;
    let pb = indicatif::ProgressBar::new((plan.backlog_orders * workload::STEPS) as u64);
    let t = Instant::now();
    let order_ids = workload::produce_backlog(
        &events_producer,
        &settings.kafka.topic,
        partitions,
        &settings.tenant,
        plan.backlog_orders,
        plan.wave,
        &pb,
    )
    .await?;
    pb.finish_and_clear();
    eprintln!("  produced in {:.1} s", t.elapsed().as_secs_f64());
    let order_ids = Arc::new(order_ids);
    let end_total = end_offsets_total(&settings.kafka, &settings.kafka.topic).await?;

    section("raw consume of the events topic");
    let consume = raw_consume(&settings.kafka, &settings.kafka.topic, end_total, &procs).await;
    match &consume {
        Ok((n, secs, _)) => eprintln!("  {n} records in {secs:.2} s: {:.0}/s", *n as f64 / secs),
        Err(e) => eprintln!("  failed: {e:#}"),
    }

    section("projector live: the service drains the topic (commands' events + backlog)");
    let projector_svc = Service::start("projector", &settings, &[], &log_dir, &http).await;
    let mut projector_live = None;
    let mut history_live = None;
    match &projector_svc {
        Ok(p) => {
            procs.add("projector", p.pid());
            let (orders, history) = tokio::join!(
                follow(
                    &session,
                    &ks,
                    "orders",
                    1,
                    &settings.kafka.topic,
                    end_total,
                    &procs,
                    Duration::from_secs(600)
                ),
                follow(
                    &session,
                    &ks,
                    "order_history",
                    1,
                    &settings.kafka.topic,
                    end_total,
                    &procs,
                    Duration::from_secs(600)
                ),
            );
            projector_live = Some(orders);
            history_live = Some(history);
        }
        Err(e) => table.not_measured("projector", format!("{e:#}")),
    }
    let upsert_rate = upsert.rate();
    if let Some(live) = &projector_live {
        match live {
            Ok(f) => {
                let r = f.events as f64 / f.secs;
                eprintln!("  orders: {} events in {:.2} s: {r:.0}/s", f.events, f.secs);
                table
                    .row(
                        "**projector events/s, live** (orders; order_history beside)",
                        rate(r),
                    )
                    .baseline(format!(
                        "raw upsert {} (c={})",
                        rate(upsert_rate),
                        plan.upsert_concurrency
                    ))
                    .ratio(r, upsert_rate)
                    .at_least(0.7);
                if let Ok((n, secs, _)) = &consume {
                    let c = *n as f64 / secs;
                    table
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
                table
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
                table
                    .row(
                        "CPU per event: Cassandra, live (both projections)",
                        cpu(cass),
                    )
                    .baseline(format!("per raw upsert: {}", cpu(cass_base)))
                    .ratio(cass.unwrap_or(f64::NAN), cass_base.unwrap_or(0.0));
            }
            Err(e) => table.not_measured("projector events/s, live", format!("{e:#}")),
        }
    }
    if let Some(Ok(f)) = &history_live {
        let r = f.events as f64 / f.secs;
        eprintln!(
            "  order_history: {} events in {:.2} s: {r:.0}/s",
            f.events, f.secs
        );
        table
            .row("projector events/s, live (order_history)", rate(r))
            .baseline(format!("raw upsert {}", rate(upsert_rate)))
            .ratio(r, upsert_rate);
    }
    table.row(
        format!("raw upsert/s, c={}", plan.upsert_concurrency),
        rate(upsert_rate),
    );
    if let Ok((n, secs, _)) = &consume {
        table.row(
            "raw consume/s (rdkafka, projector's consumer settings)",
            rate(*n as f64 / secs),
        );
    }

    // ---------------------------------------------------------------- freshness
    let query_cached = Service::start("query-api", &settings, &[], &log_dir, &http).await;
    if let Ok(q) = &query_cached {
        procs.add("query-api", q.pid());
    }
    match (&query_cached, &projector_svc) {
        (Ok(q), Ok(_)) => {
            let query = format!("http://{}", q.addr);
            let g = active_generation(&session, &ks, "orders")
                .await
                .unwrap_or(1);
            let select = session
                .prepare(format!(
                    "SELECT version FROM {ks}.order_detail_g{g} WHERE tenant_id = ? AND order_id = ?"
                ))
                .await?;
            let fresh = || workload::Freshness {
                query: query.clone(),
                api: Arc::new(Mutex::new(measure::histogram())),
                failures: Arc::new(AtomicU64::new(0)),
                session: session.clone(),
                select: select.clone(),
                tenant: settings.tenant.clone(),
                table: Arc::new(Mutex::new(measure::histogram())),
                watching: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            };
            section(&format!(
                "freshness: command accepted → visible through query-api, at {half:.0} commands/s (half the write path's peak)"
            ));
            freshness(
                &mut table,
                &format!("@ {half:.0} commands/s"),
                true,
                half,
                &plan,
                &procs,
                &http,
                &cmd_base,
                fresh(),
            )
            .await;

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
                plan.warmup,
                plan.throughput,
                &procs,
                workload::closed_commands_read_back(
                    http.clone(),
                    cmd_base.clone(),
                    query.clone(),
                    c,
                ),
            )
            .await;
            table
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
                &mut table,
                &format!("@ {half_system:.0} commands/s (half the system's peak)"),
                false,
                half_system,
                &plan,
                &procs,
                &http,
                &cmd_base,
                fresh(),
            )
            .await;
        }
        (Err(e), _) => table.not_measured("freshness", format!("query-api: {e:#}")),
        (_, Err(e)) => table.not_measured("freshness", format!("projector: {e:#}")),
    }

    // ---------------------------------------------------------------- rebuild
    if projector_svc.is_ok() {
        section("projector rebuild of `orders` into a new generation (the service helps, as in production)");
        match rebuild(&settings, &session, &ks, &procs).await {
            Ok(f) => {
                let r = f.events as f64 / f.secs;
                eprintln!("  {} events in {:.2} s: {r:.0}/s", f.events, f.secs);
                table
                    .row("**projector events/s, rebuild** (orders)", rate(r))
                    .baseline(format!("raw upsert {}", rate(upsert_rate)))
                    .ratio(r, upsert_rate)
                    .at_least(0.7);
                let per_event = (f.cpu.secs.get("projector").copied().unwrap_or(0.0)
                    + f.cpu.secs.get("bench").copied().unwrap_or(0.0))
                    * 1000.0
                    / f.events as f64;
                table.row(
                    "CPU per event: rebuild (rebuild process + service)",
                    cpu(Some(per_event)),
                );
            }
            Err(e) => table.not_measured("projector events/s, rebuild", format!("{e:#}")),
        }
    }
    if let Ok(p) = &projector_svc {
        table.row("RSS projector (peak)", procs_rss(&procs, "projector"));
        let _ = p;
    }

    // ---------------------------------------------------------------- reads
    section("reads: raw CQL point reads, query-api uncached, bare axum, query-api cached");
    let generation = active_generation(&session, &ks, "orders")
        .await
        .unwrap_or(1);
    // The query-api refresher picks a new generation up within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let read_op = raw.read_op(generation, order_ids.clone()).await;
    let rc = plan.read_concurrency;
    match (read_op, &query_cached) {
        (Ok(read_op), Ok(cached_svc)) => {
            let raw_read = closed_loop(
                "raw CQL point read",
                rc,
                plan.warmup,
                plan.throughput,
                &procs,
                read_op.clone(),
            )
            .await;
            let uncached_svc = Service::start(
                "query-api",
                &settings,
                &[("APP_QUERY_API__CACHE_TTL_MS", "0".to_string())],
                &log_dir,
                &http,
            )
            .await?;
            procs.add("query-api-uncached", uncached_svc.pid());
            let uncached_op = http_read_op(
                http.clone(),
                format!("http://{}", uncached_svc.addr),
                order_ids.clone(),
                order_ids.len(),
            );
            let uncached = closed_loop(
                "query-api reads, uncached",
                rc,
                plan.warmup,
                plan.throughput,
                &procs,
                uncached_op.clone(),
            )
            .await;
            let axum_svc = Service::start("axum", &settings, &[], &log_dir, &http).await?;
            procs.add("axum", axum_svc.pid());
            let axum_op = http_read_op(
                http.clone(),
                format!("http://{}", axum_svc.addr),
                order_ids.clone(),
                order_ids.len(),
            );
            let axum = closed_loop(
                "bare axum JSON handler",
                rc,
                plan.warmup,
                plan.throughput,
                &procs,
                axum_op.clone(),
            )
            .await;
            let hot = 64.min(order_ids.len());
            let cached_op = http_read_op(
                http.clone(),
                format!("http://{}", cached_svc.addr),
                order_ids.clone(),
                hot,
            );
            let cached = closed_loop(
                "query-api reads, cached",
                rc,
                plan.warmup,
                plan.throughput,
                &procs,
                cached_op.clone(),
            )
            .await;

            // A quarter of the closed-loop rate: the load generator shares the 2 cores.
            let r_unc = (uncached.rate() / 4.0).max(1.0);
            let r_cac = (cached.rate() / 4.0).max(1.0);
            let lat_dur = plan.latency.min(Duration::from_secs(10));
            let raw_read_lat =
                open_loop("raw CQL point read", r_unc, lat_dur, &procs, read_op).await;
            let uncached_lat = open_loop(
                "query-api reads, uncached",
                r_unc,
                lat_dur,
                &procs,
                uncached_op,
            )
            .await;
            let axum_lat =
                open_loop("bare axum JSON handler", r_cac, lat_dur, &procs, axum_op).await;
            let cached_lat =
                open_loop("query-api reads, cached", r_cac, lat_dur, &procs, cached_op).await;

            table
                .row(
                    format!(
                        "**query reads/s, uncached** (c={rc}; errors {})",
                        uncached.errors
                    ),
                    rate(uncached.rate()),
                )
                .baseline(format!("raw CQL point read {}", rate(raw_read.rate())))
                .ratio(uncached.rate(), raw_read.rate())
                .at_least(0.8);
            table
                .row(
                    format!(
                        "**query reads/s, cached** (c={rc}, {hot} hot orders; errors {})",
                        cached.errors
                    ),
                    rate(cached.rate()),
                )
                .baseline(format!("bare axum {}", rate(axum.rate())))
                .ratio(cached.rate(), axum.rate())
                .at_least(0.5);
            table
                .row(
                    format!("query read latency p50 / p99, uncached @ {r_unc:.0}/s"),
                    format!(
                        "{} / {}",
                        ms(uncached_lat.ms(0.5)),
                        ms(uncached_lat.ms(0.99))
                    ),
                )
                .baseline(format!(
                    "raw CQL {} / {}",
                    ms(raw_read_lat.ms(0.5)),
                    ms(raw_read_lat.ms(0.99))
                ))
                .ratio(uncached_lat.ms(0.99), raw_read_lat.ms(0.99));
            table
                .row(
                    format!("query read latency p50 / p99, cached @ {r_cac:.0}/s"),
                    format!("{} / {}", ms(cached_lat.ms(0.5)), ms(cached_lat.ms(0.99))),
                )
                .baseline(format!(
                    "bare axum {} / {}",
                    ms(axum_lat.ms(0.5)),
                    ms(axum_lat.ms(0.99))
                ))
                .ratio(cached_lat.ms(0.99), axum_lat.ms(0.99));
            let unc_cpu = uncached.cpu_ms_per_op(&["query-api-uncached"]);
            let raw_cpu = raw_read.cpu_ms_per_op(&["bench"]);
            table
                .row("CPU per uncached read: query-api", cpu(unc_cpu))
                .baseline(format!("raw CQL read, client: {}", cpu(raw_cpu)))
                .ratio(unc_cpu.unwrap_or(f64::NAN), raw_cpu.unwrap_or(0.0));
            let cas_unc = uncached.cpu_ms_per_op(&["cassandra"]);
            let cas_raw = raw_read.cpu_ms_per_op(&["cassandra"]);
            table
                .row("CPU per uncached read: Cassandra", cpu(cas_unc))
                .baseline(format!("raw CQL read: {}", cpu(cas_raw)))
                .ratio(cas_unc.unwrap_or(f64::NAN), cas_raw.unwrap_or(0.0));
            let cac_cpu = cached.cpu_ms_per_op(&["query-api"]);
            let axum_cpu = axum.cpu_ms_per_op(&["axum"]);
            table
                .row("CPU per cached read: query-api", cpu(cac_cpu))
                .baseline(format!("bare axum: {}", cpu(axum_cpu)))
                .ratio(cac_cpu.unwrap_or(f64::NAN), axum_cpu.unwrap_or(0.0));
            table.row(
                "CPU per HTTP read: load generator (cached run)",
                cpu(cached.cpu_ms_per_op(&["bench"])),
            );
            procs.sample_rss();
            table.row(
                "RSS query-api, cached (peak)",
                procs_rss(&procs, "query-api"),
            );
            table.row(
                "RSS query-api, uncached (peak)",
                procs_rss(&procs, "query-api-uncached"),
            );
            table.row("RSS bare axum (peak)", procs_rss(&procs, "axum"));
            axum_svc.stop(Duration::from_secs(5)).await;
            uncached_svc.stop(Duration::from_secs(5)).await;
        }
        (Err(e), _) => table.not_measured("reads", format!("{e:#}")),
        (_, Err(e)) => table.not_measured("reads", format!("query-api: {e:#}")),
    }
    table.row("RSS command-api (peak)", procs_rss(&procs, "command-api"));

    // ---------------------------------------------------------------- wrap up
    rss.abort();
    command_api.stop(Duration::from_secs(10)).await;
    if let Ok(p) = projector_svc {
        p.stop(Duration::from_secs(15)).await;
    }
    if let Ok(q) = query_cached {
        q.stop(Duration::from_secs(5)).await;
    }

    finish(
        &cli, &mut table, &plan, now, started, partitions, &out_dir, &session, &settings,
        &raw_kafka,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    cli: &Cli,
    table: &mut Table,
    plan: &Plan,
    now: DateTime<Utc>,
    started: Instant,
    partitions: i32,
    out_dir: &std::path::Path,
    session: &Session,
    settings: &Settings,
    raw_kafka: &infra::settings::Kafka,
) -> anyhow::Result<()> {
    let ks = &settings.cql.keyspace;
    table.note(format!(
        "durations: warm-up {:?}, throughput {:?} per point, open-loop latency {:?}; backlog {} orders × {} events in waves of {}; {} partitions",
        plan.warmup, plan.throughput, plan.latency, plan.backlog_orders, workload::STEPS, plan.wave, partitions
    ));
    table.note("services run as child processes of the bench binary (release build, same code as the service binaries); the load generator shares the 2 cores with them and with the Kafka and Cassandra JVMs");
    table.note("CPU = utime+stime from /proc/<pid>/stat over the measured window, divided by the successful operations; RSS = peak VmRSS sampled every 250 ms");
    table.note(format!(
        "total run time {:.0} s",
        started.elapsed().as_secs_f64()
    ));

    let header = format!(
        "## Benchmark {} ({})\n\n{} UTC on {}; stack: Kafka (KRaft, 1 broker) and Apache Cassandra 5 from `infra/dev`; commit {}",
        now.format("%Y-%m-%d %H:%M"),
        if cli.quick { "--quick" } else { "full" },
        now.format("%Y-%m-%d %H:%M:%S"),
        report::hardware(),
        git_rev()
    );
    let md = table.markdown(&header);
    println!("\n{md}");
    std::fs::create_dir_all(out_dir)?;
    let file = out_dir.join(format!("bench-{}.md", now.format("%Y%m%d-%H%M%S")));
    std::fs::write(&file, &md)?;
    std::fs::write(out_dir.join("bench-latest.md"), &md)?;
    eprintln!("written to {} and bench-latest.md", file.display());

    if !cli.keep {
        section("cleanup");
        let _ = session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
            .await;
        if let Ok(admin) = infra::kafka::admin(&settings.kafka) {
            let opts = rdkafka::admin::AdminOptions::new();
            let _ = admin
                .delete_topics(
                    &[
                        settings.kafka.topic.as_str(),
                        settings.kafka.dead_letter_topic.as_str(),
                        raw_kafka.topic.as_str(),
                        raw_kafka.dead_letter_topic.as_str(),
                    ],
                    &opts,
                )
                .await;
        }
    }
    Ok(())
}

fn procs_rss(procs: &Procs, label: &str) -> String {
    procs
        .peak_rss_mib(label)
        .map(|m| format!("{m:.0} MiB"))
        .unwrap_or_else(|| "n/a".into())
}

fn git_rev() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| format!("{} (+ uncommitted work)", s.trim()))
        .unwrap_or_else(|| "unknown".into())
}

// ------------------------------------------------------------------------------------------------
// Raw baselines
// ------------------------------------------------------------------------------------------------

struct Raw {
    session: Arc<Session>,
    ks: String,
    tenant: String,
    producer: FutureProducer,
    topic: String,
    partitions: i32,
    lwt: scylla::statement::prepared::PreparedStatement,
    lwt_update: scylla::statement::prepared::PreparedStatement,
    upsert: scylla::statement::prepared::PreparedStatement,
    state: String,
    pending: String,
}

impl Raw {
    async fn new(
        session: Arc<Session>,
        ks: &str,
        tenant: &str,
        producer: FutureProducer,
        topic: &str,
        partitions: i32,
    ) -> anyhow::Result<Arc<Self>> {
        // The same statement as the write path's first LWT, on the same table.
        let lwt = session
            .prepare(format!(
                "INSERT INTO {ks}.aggregates (tenant_id, aggregate_type, aggregate_id, version, state, \
                 partition, pending, recent_commands, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
            ))
            .await?;
        // The same statement as the write path's later LWTs.
        let lwt_update = session
            .prepare(format!(
                "UPDATE {ks}.aggregates SET version = ?, state = ?, pending = ?, recent_commands = ?, \
                 updated_at = ? WHERE tenant_id = ? AND aggregate_type = ? AND aggregate_id = ? \
                 IF version = ?"
            ))
            .await?;
        let mut upsert = session
            .prepare(format!(
                "INSERT INTO {ks}.bench_upsert (tenant_id, order_id, customer_id, currency, status, \
                 items, total_cents, version, placed_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?;
        upsert.set_is_idempotent(true);
        let sample = workload::lifecycle_events(tenant, Uuid::now_v7());
        let state = serde_json::json!({
            "status": "open", "customer_id": Uuid::now_v7(), "currency": "EUR",
            "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1250}]
        })
        .to_string();
        let pending = serde_json::to_string(&sample[..1])?;
        Ok(Arc::new(Self {
            session,
            ks: ks.to_string(),
            tenant: tenant.to_string(),
            producer,
            topic: topic.to_string(),
            partitions,
            lwt,
            lwt_update,
            upsert,
            state,
            pending,
        }))
    }
}

impl Raw {
    /// The write path's LWT on order `id` at `version`: the insert of a new row at 0, else the
    /// conditional update to `version + 1`. Fails unless it applied.
    async fn lwt(&self, id: Uuid, version: i64) -> anyhow::Result<()> {
        let now = Utc::now();
        let recent: HashMap<String, String> = HashMap::new();
        let result = if version == 0 {
            self.session
                .execute_unpaged(
                    &self.lwt,
                    (
                        self.tenant.as_str(),
                        "bench_raw",
                        id,
                        1i64,
                        self.state.as_str(),
                        workload::partition_of(id, self.partitions),
                        self.pending.as_str(),
                        &recent,
                        now,
                        now,
                    ),
                )
                .await?
        } else {
            self.session
                .execute_unpaged(
                    &self.lwt_update,
                    (
                        version + 1,
                        self.state.as_str(),
                        self.pending.as_str(),
                        &recent,
                        now,
                        self.tenant.as_str(),
                        "bench_raw",
                        id,
                        version,
                    ),
                )
                .await?
        };
        let rows = result.into_rows_result()?;
        let row: Option<Row> = rows.maybe_first_row::<Row>()?;
        match row.as_ref().and_then(|r| r.columns.first()) {
            Some(Some(CqlValue::Boolean(true))) => Ok(()),
            _ => bail!("LWT not applied"),
        }
    }
}

trait RawOps {
    fn lwt_op(&self) -> measure::OpFn;
    fn lwt_lifecycle_op(&self) -> measure::OpFn;
    fn produce_op(&self) -> measure::OpFn;
    fn upsert_op(&self) -> measure::OpFn;
    async fn read_op(&self, generation: i32, ids: Arc<Vec<Uuid>>) -> anyhow::Result<measure::OpFn>;
}

impl RawOps for Arc<Raw> {
    fn lwt_op(&self) -> measure::OpFn {
        let raw = self.clone();
        op(move |_, _| {
            let raw = raw.clone();
            async move { raw.lwt(Uuid::now_v7(), 0).await }
        })
    }

    /// The write path's LWTs alone, in the commands' mix: each worker walks its own order through
    /// the lifecycle, one `INSERT … IF NOT EXISTS` then four `UPDATE … IF version = v`.
    fn lwt_lifecycle_op(&self) -> measure::OpFn {
        let raw = self.clone();
        let orders: Arc<Mutex<HashMap<usize, (Uuid, i64)>>> = Arc::default();
        op(move |_, worker| {
            let (raw, orders) = (raw.clone(), orders.clone());
            async move {
                let (id, version) = {
                    let mut orders = orders.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    let order = orders.entry(worker).or_insert((Uuid::now_v7(), 0));
                    if order.1 >= workload::STEPS as i64 {
                        *order = (Uuid::now_v7(), 0);
                    }
                    *order
                };
                raw.lwt(id, version).await?;
                if let Ok(mut orders) = orders.lock() {
                    orders.insert(worker, (id, version + 1));
                }
                Ok(())
            }
        })
    }

    fn produce_op(&self) -> measure::OpFn {
        let raw = self.clone();
        op(move |_, _| {
            let raw = raw.clone();
            async move {
                let id = Uuid::now_v7();
                let events = workload::lifecycle_events(&raw.tenant, id);
                let e = &events[1];
                let payload = e.to_json();
                let key = e.key();
                let record = FutureRecord::to(&raw.topic)
                    .partition(workload::partition_of(id, raw.partitions))
                    .key(&key)
                    .payload(&payload)
                    .headers(command_api::publisher::record_headers(e));
                let delivery = raw
                    .producer
                    .send_result(record)
                    .map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?;
                match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => bail!("delivery: {e}"),
                    Err(_) => bail!("delivery cancelled"),
                }
            }
        })
    }

    fn upsert_op(&self) -> measure::OpFn {
        let raw = self.clone();
        let items = r#"[{"sku":"SKU-1","quantity":1,"unit_price_cents":1250},{"sku":"SKU-2","quantity":2,"unit_price_cents":499}]"#;
        op(move |_, _| {
            let raw = raw.clone();
            async move {
                let now = Utc::now();
                raw.session
                    .execute_unpaged(
                        &raw.upsert,
                        (
                            raw.tenant.as_str(),
                            Uuid::now_v7(),
                            Uuid::now_v7(),
                            "EUR",
                            "open",
                            items,
                            2248i64,
                            2i64,
                            now,
                            now,
                            2i64,
                        ),
                    )
                    .await?;
                Ok(())
            }
        })
    }

    async fn read_op(&self, generation: i32, ids: Arc<Vec<Uuid>>) -> anyhow::Result<measure::OpFn> {
        // The same statement query-api prepares for an order view.
        let select = self
            .session
            .prepare(format!(
                "SELECT customer_id, currency, status, items, total_cents, version, placed_at, updated_at \
                 FROM {}.order_detail_g{generation} WHERE tenant_id = ? AND order_id = ?",
                self.ks
            ))
            .await?;
        let raw = self.clone();
        Ok(op(move |seq, worker| {
            let (raw, select, ids) = (raw.clone(), select.clone(), ids.clone());
            async move {
                let id =
                    ids[(measure::mix(seq ^ ((worker as u64) << 40)) % ids.len() as u64) as usize];
                type R = (
                    Option<Uuid>,
                    Option<String>,
                    Option<String>,
                    Option<String>,
                    Option<i64>,
                    Option<i64>,
                    Option<DateTime<Utc>>,
                    Option<DateTime<Utc>>,
                );
                let rows = raw
                    .session
                    .execute_unpaged(&select, (raw.tenant.as_str(), id))
                    .await?
                    .into_rows_result()?;
                match rows.maybe_first_row::<R>()? {
                    Some(_) => Ok(()),
                    None => bail!("order {id} not in the read model"),
                }
            }
        }))
    }
}

/// `GET /v1/orders/{id}` over the first `among` ids.
fn http_read_op(
    http: reqwest::Client,
    base: String,
    ids: Arc<Vec<Uuid>>,
    among: usize,
) -> measure::OpFn {
    let among = among.max(1).min(ids.len().max(1));
    op(move |seq, worker| {
        let (http, base, ids) = (http.clone(), base.clone(), ids.clone());
        async move {
            let id = ids[(measure::mix(seq ^ ((worker as u64) << 40)) % among as u64) as usize];
            let r = http.get(format!("{base}/v1/orders/{id}")).send().await?;
            let status = r.status();
            let body = r.bytes().await?;
            if !status.is_success() {
                bail!(
                    "GET order answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            Ok(())
        }
    })
}

/// query-api's `query_order_detail_reads_total` (its CQL reads of `order_detail`), from `/metrics`.
/// One freshness run: commands in open loop at `rate`, each read back through query-api with
/// `min_version`, one at a time also watched at the table; rows go to `table` (`headline`: the
/// row judged against the target, with the CPU and read-count rows beside it).
#[allow(clippy::too_many_arguments)]
async fn freshness(
    table: &mut Table,
    at: &str,
    headline: bool,
    rate_per_s: f64,
    plan: &Plan,
    procs: &Procs,
    http: &reqwest::Client,
    cmd_base: &str,
    fresh: workload::Freshness,
) {
    let reads_before = order_detail_reads(http, &fresh.query).await;
    let load = open_loop(
        "commands + read-back (min_version)",
        rate_per_s,
        plan.latency,
        procs,
        workload::open_commands(http.clone(), cmd_base.to_string(), Some(fresh.clone())),
    )
    .await;
    // Let the last read-backs land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let snapshot = |h: &Arc<Mutex<hdrhistogram::Histogram<u64>>>| {
        h.lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| measure::histogram())
    };
    let (h, t) = (snapshot(&fresh.api), snapshot(&fresh.table));
    let q = |h: &hdrhistogram::Histogram<u64>, x: f64| h.value_at_quantile(x) as f64 / 1000.0;
    let failures = fresh.failures.load(std::sync::atomic::Ordering::Relaxed);
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
    table
        .row(
            format!(
                "{name} {at}, through query-api `min_version` (n={}, failures {failures}, command errors {})",
                h.len(),
                load.errors
            ),
            format!("{} / {}", ms(q(&h, 0.5)), ms(q(&h, 0.99))),
        )
        .target("p99 ≤ 50 ms", Some(q(&h, 0.99) <= 50.0 && !h.is_empty()));
    table.row(
        format!(
            "freshness p50 / p99 {at} at the table (one command at a time, order_detail polled every 2 ms, n={})",
            t.len()
        ),
        format!("{} / {}", ms(q(&t, 0.5)), ms(q(&t, 0.99))),
    );
    table.row(
        format!("command latency p50 / p99 during the freshness run {at}"),
        format!("{} / {}", ms(load.ms(0.5)), ms(load.ms(0.99))),
    );
    let reads_after = order_detail_reads(http, &fresh.query).await;
    if let (Some(before), Some(after)) = (reads_before, reads_after) {
        if !h.is_empty() {
            let per = (after - before) / h.len() as f64;
            eprintln!("  query-api read order_detail {per:.2} times per read-back");
            table.row(
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
        table.row(
            format!("CPU per command during the freshness run {at}: {label}"),
            cpu(load.cpu_ms_per_op(&[who])),
        );
    }
}

async fn order_detail_reads(http: &reqwest::Client, base: &str) -> Option<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    // Absent until the first read.
    Some(
        text.lines()
            .filter(|l| l.starts_with("query_order_detail_reads_total"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum(),
    )
}

// ------------------------------------------------------------------------------------------------
// Kafka and projector helpers
// ------------------------------------------------------------------------------------------------

async fn end_offsets_total(kafka: &infra::settings::Kafka, topic: &str) -> anyhow::Result<i64> {
    let config = infra::kafka::base_config(kafka);
    let topic = topic.to_string();
    let partitions = kafka.partitions;
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config
            .clone()
            .set("group.id", "bench-watermarks")
            .create()?;
        let mut total = 0;
        for p in 0..partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
            total += high - low;
        }
        Ok(total)
    })
    .await?
}

/// Read the whole topic with the projector's consumer settings; (records, seconds from the
/// assignment to the last record, CPU).
async fn raw_consume(
    kafka: &infra::settings::Kafka,
    topic: &str,
    expected: i64,
    procs: &Procs,
) -> anyhow::Result<(i64, f64, measure::CpuDelta)> {
    let config =
        infra::kafka::consumer_config(kafka, &format!("bench-raw-consume-{}", Uuid::now_v7()));
    let topic = topic.to_string();
    let partitions = kafka.partitions;
    let procs = procs.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        let first = Some((Instant::now(), procs.snapshot()));
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut n = 0i64;
        let mut bytes = 0usize;
        while n < expected {
            if Instant::now() > deadline {
                bail!("consumed {n} of {expected} records before the deadline");
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    bytes += m.payload().map_or(0, <[u8]>::len);
                    n += 1;
                }
                Some(Err(e)) => bail!("consume: {e}"),
                None => {}
            }
        }
        let Some((t0, cpu0)) = first else {
            bail!("nothing consumed")
        };
        let secs = t0.elapsed().as_secs_f64().max(1e-6);
        let cpu = procs.snapshot().since(&cpu0, secs);
        let _ = bytes;
        Ok((n, secs, cpu))
    })
    .await?
}

struct Followed {
    events: i64,
    secs: f64,
    cpu: measure::CpuDelta,
}

/// Watch a projection generation's stored offsets until they cover `target` records; the rate is
/// taken from the first progress seen (after group join and the first batch) to the end.
#[allow(clippy::too_many_arguments)]
async fn follow(
    session: &Session,
    ks: &str,
    projection: &str,
    generation: i32,
    topic: &str,
    target: i64,
    procs: &Procs,
    timeout: Duration,
) -> anyhow::Result<Followed> {
    let select = session
        .prepare(format!(
            "SELECT next_offset FROM {ks}.projection_offsets WHERE projection = ? AND generation = ? AND topic = ?"
        ))
        .await?;
    let pb = indicatif::ProgressBar::new(target as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>34} [{elapsed_precise}] {bar:30} {pos}/{len} ({per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_prefix(format!("{projection} g{generation}"));
    let started = Instant::now();
    let mut first: Option<(Instant, i64, measure::CpuSnapshot)> = None;
    loop {
        let rows = session
            .execute_unpaged(&select, (projection, generation, topic))
            .await?
            .into_rows_result()?;
        let done: i64 = rows
            .rows::<(Option<i64>,)>()?
            .filter_map(Result::ok)
            .filter_map(|(n,)| n)
            .sum();
        pb.set_position(done.max(0) as u64);
        if done > 0 && first.is_none() {
            first = Some((Instant::now(), done, procs.snapshot()));
        }
        if done >= target {
            pb.finish_and_clear();
            let (t0, n0, cpu0) = first.context("no progress seen")?;
            let secs = t0.elapsed().as_secs_f64();
            if secs < 0.05 || target - n0 <= 0 {
                bail!("finished within one poll: not measurable (raise the backlog)");
            }
            return Ok(Followed {
                events: target - n0,
                secs,
                cpu: procs.snapshot().since(&cpu0, secs),
            });
        }
        if started.elapsed() > timeout {
            pb.finish_and_clear();
            bail!("{projection} g{generation} reached {done} of {target} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn active_generation(session: &Session, ks: &str, name: &str) -> anyhow::Result<i32> {
    let rows = session
        .query_unpaged(
            format!("SELECT active_generation FROM {ks}.projections WHERE name = ?"),
            (name,),
        )
        .await?
        .into_rows_result()?;
    Ok(rows
        .maybe_first_row::<(Option<i32>,)>()?
        .and_then(|(g,)| g)
        .unwrap_or(1))
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
