//! `bench --tracing-cost`: what exporting traces costs the write path. command-api runs as a child
//! process, restarted for each run, with traces off, then on (`APP_TELEMETRY__OTLP_ENDPOINT` at an
//! OTLP sink in this process that accepts and discards every export, 10 % sampled), alternated
//! twice; each run is the same closed loop of commands at c=8 in a keyspace and topic of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use infra::Settings;

use crate::measure::{closed_loop, Outcome, Procs};
use crate::services::Service;
use crate::{report, workload};

const CONCURRENCY: usize = 8;
const SAMPLING: &str = "0.1";

/// Export requests and bytes the sink took.
#[derive(Default)]
struct Sunk {
    requests: AtomicU64,
    bytes: AtomicU64,
}

async fn sink(State(sunk): State<Arc<Sunk>>, body: Bytes) -> &'static str {
    sunk.requests.fetch_add(1, Ordering::Relaxed);
    sunk.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    ""
}

pub async fn run(http: reqwest::Client, quick: bool, keep: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let (warmup, measured) = if quick {
        (Duration::from_secs(1), Duration::from_secs(4))
    } else {
        (Duration::from_secs(2), Duration::from_secs(8))
    };
    let id = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    let mut settings = Settings::load()?;
    settings.cql.keyspace = format!("bench_tracing_{id}");
    settings.kafka.topic = format!("bench.{id}.tracing.events");
    settings.kafka.dead_letter_topic = format!("bench.{id}.tracing.events.dlq");
    let session = infra::cql::connect(&settings.cql).await?;
    infra::migrations::run(&session, &settings.cql)
        .await
        .context("migrating the bench keyspace")?;
    infra::kafka::ensure_topics(&settings.kafka).await?;
    let log_dir = report::out_dir(None).join(format!("logs-tracing-{id}"));

    let sunk = Arc::new(Sunk::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink_url = format!("http://{}", listener.local_addr()?);
    let app = Router::new()
        .route("/v1/traces", post(sink))
        .with_state(sunk.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let procs = Procs::default();
    procs.add("bench", std::process::id());
    let on_env = vec![
        ("APP_TELEMETRY__OTLP_ENDPOINT", sink_url.clone()),
        ("APP_TELEMETRY__SAMPLING_RATIO", SAMPLING.to_string()),
    ];
    eprintln!(
        "\n== tracing cost: command-api with traces off and on ({SAMPLING} sampled, to {sink_url}), c={CONCURRENCY}, {measured:?} per run"
    );
    let mut off: Vec<Outcome> = Vec::new();
    let mut on: Vec<Outcome> = Vec::new();
    for round in 1..=2 {
        for tracing in [false, true] {
            let env = if tracing { on_env.clone() } else { Vec::new() };
            let service = Service::start("command-api", &settings, &env, &log_dir, &http).await?;
            procs.add("command-api", service.pid());
            let base = format!("http://{}", service.addr);
            if round == 1 && !tracing {
                // The JVMs' JIT warms up on the first run's load, unmeasured.
                closed_loop(
                    "warm-up (not measured)",
                    32,
                    Duration::ZERO,
                    measured,
                    &procs,
                    workload::closed_commands(http.clone(), base.clone(), 32),
                )
                .await;
            }
            let label = format!(
                "commands, traces {}, round {round}",
                if tracing { "on 10 %" } else { "off" }
            );
            let outcome = closed_loop(
                &label,
                CONCURRENCY,
                warmup,
                measured,
                &procs,
                workload::closed_commands(http.clone(), base, CONCURRENCY),
            )
            .await;
            service.stop(Duration::from_secs(10)).await;
            if tracing { &mut on } else { &mut off }.push(outcome);
        }
    }
    server.abort();

    let mean = |runs: &[Outcome]| {
        let ok: u64 = runs.iter().map(|o| o.ok).sum();
        let secs: f64 = runs.iter().map(|o| o.secs).sum();
        if secs > 0.0 {
            ok as f64 / secs
        } else {
            0.0
        }
    };
    let cpu = |runs: &[Outcome]| {
        let per: Vec<f64> = runs
            .iter()
            .filter_map(|o| o.cpu_ms_per_op(&["command-api"]))
            .collect();
        (!per.is_empty()).then(|| per.iter().sum::<f64>() / per.len() as f64)
    };
    let errors: u64 = off.iter().chain(&on).map(|o| o.errors).sum();
    for (name, runs) in [("off", &off), ("on ", &on)] {
        let rates: Vec<String> = runs.iter().map(|o| format!("{:.0}", o.rate())).collect();
        eprintln!(
            "  traces {name}: runs {} commands/s; p50 {:.2} ms, p99 {:.2} ms (last run); command-api CPU {} per command",
            rates.join(", "),
            runs.last().map_or(0.0, |o| o.ms(0.5)),
            runs.last().map_or(0.0, |o| o.ms(0.99)),
            cpu(runs).map_or("n/a".into(), |c| format!("{c:.3} ms")),
        );
    }
    eprintln!(
        "  the sink took {} exports, {} bytes; command errors {errors}; {:.0} s in all",
        sunk.requests.load(Ordering::Relaxed),
        sunk.bytes.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    let (x, y) = (mean(&on), mean(&off));
    println!(
        "tracing 10 %: {x:.0} commands/s, off: {y:.0} commands/s, ratio X/Y {:.3}",
        if y > 0.0 { x / y } else { f64::NAN }
    );

    if !keep {
        let _ = session
            .query_unpaged(
                format!("DROP KEYSPACE IF EXISTS {}", settings.cql.keyspace),
                &[],
            )
            .await;
        if let Ok(admin) = infra::kafka::admin(&settings.kafka) {
            let _ = admin
                .delete_topics(
                    &[
                        settings.kafka.topic.as_str(),
                        settings.kafka.dead_letter_topic.as_str(),
                    ],
                    &rdkafka::admin::AdminOptions::new(),
                )
                .await;
        }
    }
    Ok(())
}
