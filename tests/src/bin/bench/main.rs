//! `infra/dev bench [--quick]`: the system measured side by side with raw baselines, on this
//! machine, in one run (see BENCHMARKS.md for the method), and against the peer a user would
//! otherwise pick (`cqrs-es` + `postgres-es` on PostgreSQL, `tests/peer/`). `infra/dev bench
//! --tracing-cost` measures only what exporting traces costs the write path.
//!
//! Everything runs in an isolated keyspace (`bench_<time>`) and fresh topics, so the dev stack's
//! own data and running services are untouched; both are dropped at the end (`--keep` keeps them).
//! The services under test are child processes of this binary (`--serve <role>`), so each has its
//! own CPU account and resident memory; the load generator and the raw baselines run here.
//!
//! One file per phase: `warmup`, `write_path`, `projector_live`, `freshness`, `rebuild`, `reads`,
//! `peer`, `scale`; `finish` writes the report. The phases share [`Bench`].

#[global_allocator]
static ALLOCATOR: infra::Allocator = infra::Allocator;

mod finish;
mod freshness;
mod measure;
mod peer;
mod projector_live;
mod raw;
mod reads;
mod rebuild;
mod report;
mod scale;
mod services;
mod stack;
mod tracing_cost;
mod warmup;
mod workload;
mod write_path;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Parser;
use infra::Settings;
use measure::Procs;
use report::Table;
use scylla::client::session::Session;
use services::Service;

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "The CQRS backend measured against raw baselines and against a cqrs-es + PostgreSQL peer"
)]
pub struct Cli {
    /// Short run (under 5 minutes on 2 cores): concurrencies 1/8/32, a few seconds per point.
    #[arg(long)]
    pub quick: bool,
    /// Keep the bench keyspace and topics afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Where the report goes (default: <target>/bench).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Command concurrencies (closed loop), e.g. `1,8,32`.
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Orders in the projector's backlog (5 events each), produced in waves of at most 10 000.
    #[arg(long)]
    pub backlog: Option<usize>,
    /// Extra environment for the command-api under test, e.g.
    /// `--command-api-env APP_COMMAND_API__SWEEPER_INTERVAL_MS=3600000` (for experiments).
    #[arg(long)]
    pub command_api_env: Vec<String>,
    /// Stop after the write path (commands vs raw LWT and produce).
    #[arg(long)]
    pub write_path_only: bool,
    /// Only the cost of traces: commands/s at c=8 of command-api with traces off and on (10 %
    /// sampled, exported to an OTLP sink in the bench), restarted for each run, alternated twice.
    #[arg(long)]
    pub tracing_cost: bool,
    /// Phases to run, e.g. `write,peer,scale` (default: all of write, projector, freshness,
    /// rebuild, reads, peer, scale). Services a phase needs are started when it first needs them.
    #[arg(long, value_delimiter = ',')]
    pub phases: Vec<String>,
    /// Leave the peer (cqrs-es + postgres-es on PostgreSQL) out.
    #[arg(long)]
    pub no_peer: bool,
    /// Internal: run one service role (command-api, query-api, projector, axum) in this process.
    #[arg(long, hide = true)]
    pub serve: Option<String>,
}

pub struct Plan {
    /// Unmeasured load on the JVMs before the first measurement, at least the first and at most
    /// the second: right after `infra/dev up` their JIT is cold and the first raw baseline would
    /// run at a fraction of its later rate.
    pub stack_warmup: (Duration, Duration),
    pub warmup: Duration,
    pub throughput: Duration,
    pub latency: Duration,
    pub concurrencies: Vec<usize>,
    pub backlog_orders: usize,
    pub wave: usize,
    pub read_concurrency: usize,
    pub upsert_concurrency: usize,
    pub produce_concurrency: usize,
    /// Concurrencies of the comparison with the peer.
    pub peer_concurrencies: Vec<usize>,
    /// Length of the contention run (32 clients on 4 orders).
    pub contention: Duration,
    /// Orders (5 events each) drained by 1, 2 and 4 projector instances.
    pub scale_backlog_orders: usize,
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
                peer_concurrencies: vec![1, 8, 32],
                contention: Duration::from_secs(8),
                scale_backlog_orders: 10_000,
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
                peer_concurrencies: vec![1, 8, 32],
                contention: Duration::from_secs(20),
                scale_backlog_orders: 20_000,
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
        runtime.block_on(tracing_cost::run(stack::http_client(), cli.quick, cli.keep))
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

/// What every phase shares: the run's settings, clients, processes and report.
pub struct Bench {
    pub cli: Cli,
    pub plan: Plan,
    pub settings: Settings,
    /// The raw produce baseline's topic.
    pub raw_kafka: infra::settings::Kafka,
    pub session: Arc<Session>,
    pub http: reqwest::Client,
    pub procs: Procs,
    pub table: Table,
    pub log_dir: PathBuf,
    pub out_dir: PathBuf,
    pub now: DateTime<Utc>,
    pub started: Instant,
    /// Run id (`<time>`), part of every keyspace and topic name of the run.
    pub id: String,
    pub command_api: Option<Service>,
    pub projector: Option<Service>,
    /// query-api with its default cache.
    pub query: Option<Service>,
    /// Raw upserts/s (one row, c=64), the projector's baseline, once measured.
    pub upsert_rate: Option<f64>,
}

impl Bench {
    pub fn ks(&self) -> &str {
        &self.settings.cql.keyspace
    }

    pub fn partitions(&self) -> i32 {
        self.settings.kafka.partitions
    }

    pub fn runs(&self, phase: &str) -> bool {
        self.cli.phases.is_empty() || self.cli.phases.iter().any(|p| p == phase)
    }

    pub fn cmd_base(&self) -> String {
        self.command_api
            .as_ref()
            .map(|s| format!("http://{}", s.addr))
            .unwrap_or_default()
    }

    /// The projector service of the run, started on first use.
    pub async fn ensure_projector(&mut self) -> anyhow::Result<()> {
        if self.projector.is_none() {
            let p =
                Service::start("projector", &self.settings, &[], &self.log_dir, &self.http).await?;
            self.procs.add("projector", p.pid());
            self.projector = Some(p);
        }
        Ok(())
    }

    /// query-api (default cache) of the run, started on first use; its base URL.
    pub async fn ensure_query(&mut self) -> anyhow::Result<String> {
        if self.query.is_none() {
            let q =
                Service::start("query-api", &self.settings, &[], &self.log_dir, &self.http).await?;
            self.procs.add("query-api", q.pid());
            self.query = Some(q);
        }
        Ok(self
            .query
            .as_ref()
            .map(|q| format!("http://{}", q.addr))
            .unwrap_or_default())
    }
}

pub fn section(name: &str) {
    eprintln!("\n== {name}");
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
    let out_dir = report::out_dir(cli.out.as_deref());
    let log_dir = out_dir.join(format!("logs-{id}"));
    let http = stack::http_client();
    let procs = Procs::default();
    procs.add("bench", std::process::id());
    for (label, pid) in stack::stack_pids() {
        procs.add(label, pid);
    }
    let rss = procs.spawn_rss_sampler();

    let ks = settings.cql.keyspace.clone();
    section(&format!(
        "setup: keyspace {ks}, topics {} and {}, {} partitions",
        settings.kafka.topic, raw_kafka.topic, settings.kafka.partitions
    ));
    let session = infra::cql::connect(&settings.cql).await?;
    infra::migrations::run(&session, &settings.cql)
        .await
        .context("migrating the bench keyspace")?;
    raw::create_tables(&session, &ks).await?;
    infra::kafka::ensure_topics(&settings.kafka).await?;
    infra::kafka::ensure_topics(&raw_kafka).await?;
    let producer = infra::kafka::producer(&raw_kafka)?;
    eprintln!("  ready after {:.1} s", started.elapsed().as_secs_f64());

    let mut b = Bench {
        cli,
        plan,
        settings,
        raw_kafka,
        session,
        http,
        procs,
        table: Table::default(),
        log_dir,
        out_dir,
        now,
        started,
        id,
        command_api: None,
        projector: None,
        query: None,
        upsert_rate: None,
    };
    let command_env: Vec<(&str, String)> = b
        .cli
        .command_api_env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    if !command_env.is_empty() {
        let note = format!("command-api ran with {:?}", b.cli.command_api_env);
        b.table.note(note);
    }
    let command_api = Service::start(
        "command-api",
        &b.settings,
        &command_env,
        &b.log_dir,
        &b.http,
    )
    .await?;
    b.procs.add("command-api", command_api.pid());
    b.command_api = Some(command_api);
    let raw = raw::Raw::new(
        b.session.clone(),
        &ks,
        &b.settings.tenant,
        producer,
        &b.raw_kafka.topic,
        b.settings.kafka.partitions,
    )
    .await?;

    let result = phases(&mut b, &raw).await;
    if let Err(e) = &result {
        b.table
            .not_measured("the rest of the run", format!("{e:#}"));
    }

    rss.abort();
    if let Some(c) = b.command_api.take() {
        c.stop(Duration::from_secs(10)).await;
    }
    if let Some(p) = b.projector.take() {
        p.stop(Duration::from_secs(15)).await;
    }
    if let Some(q) = b.query.take() {
        q.stop(Duration::from_secs(5)).await;
    }
    finish::finish(&mut b).await?;
    result
}

async fn phases(b: &mut Bench, raw: &Arc<raw::Raw>) -> anyhow::Result<()> {
    warmup::run(b, raw).await;
    let write = if b.runs("write") {
        Some(write_path::run(b, raw).await)
    } else {
        None
    };
    if b.cli.write_path_only {
        b.table.row(
            "RSS command-api (peak)",
            finish::procs_rss(&b.procs, "command-api"),
        );
        return Ok(());
    }
    let mut order_ids = None;
    if b.runs("projector") {
        order_ids = Some(projector_live::run(b, raw).await?);
    }
    if let Some(write) = &write {
        if b.runs("freshness") {
            freshness::run(b, write).await;
        }
    }
    if b.runs("rebuild") && b.projector.is_some() {
        rebuild::run(b).await;
    }
    if b.projector.is_some() {
        b.table.row(
            "RSS projector (peak)",
            finish::procs_rss(&b.procs, "projector"),
        );
    }
    if let Some(ids) = order_ids {
        if b.runs("reads") {
            reads::run(b, raw, ids).await?;
        }
    }
    if b.runs("peer") && !b.cli.no_peer {
        if let Err(e) = peer::run(b).await {
            b.table
                .not_measured("the peer (cqrs-es + postgres-es)", format!("{e:#}"));
        }
    }
    if b.runs("scale") {
        if let Err(e) = scale::run(b).await {
            b.table.not_measured("scale rows", format!("{e:#}"));
        }
    }
    b.table.row(
        "RSS command-api (peak)",
        finish::procs_rss(&b.procs, "command-api"),
    );
    Ok(())
}
