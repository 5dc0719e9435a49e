//! Operations on the stack the services need: wait for Kafka and CQL, apply migrations, create topics.
//! `infra/dev` calls it; ops can run it against a real cluster with the same `APP_…` settings.

#[global_allocator]
static ALLOCATOR: infra::Allocator = infra::Allocator;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use infra::Settings;

#[derive(Parser)]
#[command(about = "Stack administration: readiness, migrations, topics")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Wait until a Kafka broker answers a metadata request.
    WaitKafka {
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Wait until the CQL database answers a query.
    WaitCql {
        #[arg(long, default_value_t = 240)]
        timeout_secs: u64,
        /// Also wait until the node sees at least this many peers (a ring of N nodes: N - 1).
        #[arg(long, default_value_t = 0)]
        peers: usize,
    },
    /// Create the keyspace and apply schema migrations.
    Migrate,
    /// Create the event and dead-letter topics, growing partitions to the configured count.
    Topics,
    /// Make a development key pair (Ed25519) and its JWKS in a folder, unless there already.
    DevKeys {
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// Print a bearer token signed with the development key beside `auth.jwks`
    /// (`APP_AUTH__JWKS`), for the configured issuer and audience.
    Token {
        /// The tenant the token acts for.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Space- or comma-separated scopes; default: all (orders:write orders:read events:read ops).
        #[arg(long)]
        scopes: Option<String>,
        /// Lifetime: 90s, 15m, 1h, 2d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// The client (`sub`).
        #[arg(long, default_value = "dev")]
        subject: String,
    },
    /// Write the event stream as JSON lines or Parquet (to stdout or a file), with progress on
    /// stderr, and optionally a manifest of the offsets covered.
    Export {
        /// Start at the first event at or after this time (RFC 3339); default: the beginning.
        /// With --from-offsets it only filters.
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Start exactly where an earlier export ended: the end offsets of its manifest.json
        /// (written by an export job, or by --manifest).
        #[arg(long, value_name = "MANIFEST")]
        from_offsets: Option<std::path::PathBuf>,
        /// Only the events of this aggregate.
        #[arg(long)]
        aggregate: Option<uuid::Uuid>,
        /// Only events of this type (repeat for several).
        #[arg(long = "event-type")]
        event_types: Vec<String>,
        /// Only the events of this tenant (an analyst of one tenant exports only its data).
        #[arg(long)]
        tenant: Option<String>,
        /// `jsonl` (envelopes as stored) or `parquet` (one row per event; needs --out).
        #[arg(long, default_value = "jsonl")]
        format: infra::export::Format,
        /// Keep tailing new events instead of stopping at the end (jsonl only).
        #[arg(long)]
        follow: bool,
        /// Output file; standard output when absent.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Also write a manifest (offsets covered per partition, counts) to this file, for a later
        /// --from-offsets.
        #[arg(long)]
        manifest: Option<std::path::PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("settings: {e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = infra::telemetry::init_command_line(
        &infra::settings::Telemetry {
            filter: "warn,stack_admin=info,infra=info".into(),
            ..settings.telemetry.clone()
        },
        "stack-admin",
    );
    let result = match cli.command {
        Command::WaitKafka { timeout_secs } => {
            wait("Kafka", timeout_secs, || async {
                infra::kafka::ping(&settings.kafka, Duration::from_secs(2))
                    .await
                    .map(|_| ())
            })
            .await
        }
        Command::WaitCql {
            timeout_secs,
            peers,
        } => {
            wait("CQL", timeout_secs, || async {
                let session = tokio::time::timeout(
                    Duration::from_secs(5),
                    infra::cql::connect(&settings.cql),
                )
                .await??;
                infra::cql::ping(&session).await?;
                let seen = infra::cql::peers(&session).await?;
                if seen < peers {
                    anyhow::bail!("the node sees {seen} of {peers} peers");
                }
                Ok(())
            })
            .await
        }
        Command::Migrate => {
            async {
                let session = infra::cql::connect(&settings.cql).await?;
                let applied = infra::migrations::run(&session, &settings.cql).await?;
                println!("migrations applied now: {applied:?}");
                Ok(())
            }
            .await
        }
        Command::Topics => infra::kafka::ensure_topics(&settings.kafka).await,
        Command::DevKeys { dir } => infra::auth::dev::ensure_keys(&dir).map(|jwks| {
            println!("{}", jwks.display());
        }),
        Command::Token {
            tenant,
            scopes,
            ttl,
            subject,
        } => (|| {
            let scopes: Vec<String> = match scopes {
                Some(s) => s
                    .split([' ', ','])
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
                None => infra::auth::ALL_SCOPES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            };
            let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
            let ttl = infra::auth::dev::parse_ttl(&ttl)?;
            let token = infra::auth::dev::mint_for(&settings, &tenant, &subject, &scopes, ttl)?;
            println!("{token}");
            Ok(())
        })(),
        Command::Export {
            from,
            from_offsets,
            aggregate,
            event_types,
            tenant,
            format,
            follow,
            out,
            manifest,
        } => {
            let kafka = settings.kafka.clone();
            tokio::task::spawn_blocking(move || {
                export(
                    &kafka,
                    ExportArgs {
                        from,
                        from_offsets,
                        aggregate,
                        event_types,
                        tenant,
                        format,
                        follow,
                        out,
                        manifest,
                    },
                )
            })
            .await
            .unwrap_or_else(|e| Err(e.into()))
        }
    };
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn wait<F, Fut>(what: &str, timeout_secs: u64, probe: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    let deadline = Duration::from_secs(timeout_secs);
    loop {
        match probe().await {
            Ok(()) => {
                println!("{what} answers ({:.1} s)", start.elapsed().as_secs_f64());
                return Ok(());
            }
            Err(e) if start.elapsed() >= deadline => {
                anyhow::bail!("{what} did not answer within {timeout_secs} s: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

struct ExportArgs {
    from: Option<chrono::DateTime<chrono::Utc>>,
    from_offsets: Option<std::path::PathBuf>,
    aggregate: Option<uuid::Uuid>,
    event_types: Vec<String>,
    tenant: Option<String>,
    format: infra::export::Format,
    follow: bool,
    out: Option<std::path::PathBuf>,
    manifest: Option<std::path::PathBuf>,
}

/// `stack-admin export`: the shared export routine into a file or standard output.
fn export(kafka: &infra::settings::Kafka, args: ExportArgs) -> anyhow::Result<()> {
    use infra::export::{write, Format, Manifest};
    use std::io::Write;

    let start_offsets = match &args.from_offsets {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            let previous = Manifest::parse(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
            if previous.topic != kafka.topic {
                anyhow::bail!(
                    "{} covers topic {}, not {}",
                    path.display(),
                    previous.topic,
                    kafka.topic
                );
            }
            Some(previous.end_offsets())
        }
        None => None,
    };
    if args.format == Format::Parquet && args.out.is_none() {
        anyhow::bail!("--format parquet needs --out <file>");
    }
    if args.follow && (args.format == Format::Parquet || args.manifest.is_some()) {
        anyhow::bail!("--follow writes JSON lines only, without a manifest");
    }
    let request = infra::export::ExportRequest {
        from: args.from,
        aggregate_id: args.aggregate,
        event_types: args.event_types,
        tenant: args.tenant,
        start_offsets,
        follow: args.follow,
        progress: args.out.is_some(),
    };
    let created_at = chrono::Utc::now();
    let (report, bytes) = match (&args.out, args.format) {
        (Some(path), Format::Parquet) => {
            let file = std::io::BufWriter::new(std::fs::File::create(path)?);
            let mut sink = write::ParquetSink::new(file)?;
            let report = infra::export::export_with(kafka, &request, &mut sink)?;
            sink.finish()?.flush()?;
            (report, std::fs::metadata(path)?.len())
        }
        (Some(path), Format::Jsonl) => {
            let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
            let report = infra::export::export(kafka, &request, &mut file)?;
            file.flush()?;
            (report, std::fs::metadata(path)?.len())
        }
        (None, _) => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let report = infra::export::export(kafka, &request, &mut out)?;
            out.flush()?;
            (report, 0)
        }
    };
    eprintln!(
        "exported {} events ({} read, {} not envelopes)",
        report.written, report.read, report.skipped
    );
    if let Some(path) = &args.manifest {
        // One output holds every partition: the manifest lists no part files, only the offsets
        // covered and the totals.
        let manifest = Manifest {
            version: infra::export::manifest::MANIFEST_VERSION,
            job_id: None,
            after_job: None,
            format: args.format,
            selection: request.selection(),
            topic: kafka.topic.clone(),
            partitions: report.ranges.clone(),
            files: Vec::new(),
            events: report.written,
            bytes,
            created_at,
            finished_at: chrono::Utc::now(),
        };
        std::fs::write(path, manifest.to_json())?;
        eprintln!("manifest: {}", path.display());
    }
    Ok(())
}
