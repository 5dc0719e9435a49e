//! `infra/dev faults [--trials N] …`: the whole fault suite against the cluster stack
//! (`infra/dev up --cluster`), under a steady load through HAProxy. Prints one row per fault and
//! exits non-zero when an acknowledged command was lost, a view differs, or any check failed.
//! The settings come from the environment (`infra/dev faults` loads `.dev-cluster/env`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use infra::Settings;
use tests::faults::plan::Plan;
use tests::faults::{run, say, Options};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PlanName {
    /// 20 kills of each service, 5 broker kills, 5 Cassandra node kills, pauses and rolling
    /// restarts once each.
    Full,
    /// One kill of one instance of each service, one broker kill, one Cassandra node kill.
    Ci,
}

#[derive(Debug, Parser)]
#[command(
    name = "faults",
    about = "Kill, pause and restart parts of the cluster under load; check nothing acknowledged is lost"
)]
struct Cli {
    #[arg(long, value_enum, default_value = "full")]
    plan: PlanName,
    /// Trials of every fault of the plan (instead of the plan's counts).
    #[arg(long)]
    trials: Option<usize>,
    /// Only these faults, e.g. `--only broker-kill,cassandra-pause` (command-api-kill,
    /// query-api-kill, projector-kill, broker-kill, cassandra-kill, broker-pause, cassandra-pause,
    /// broker-rolling, cassandra-rolling).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Concurrent clients of the load.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// command-api's address (default: APP_COMMAND_API__ADDR, HAProxy's in the cluster).
    #[arg(long)]
    command_url: Option<String>,
    /// query-api's address (default: APP_QUERY_API__ADDR, HAProxy's in the cluster).
    #[arg(long)]
    query_url: Option<String>,
    /// Seconds a killed service instance stays down.
    #[arg(long, default_value_t = 5)]
    service_hold_secs: u64,
    /// Seconds a killed broker or Cassandra node stays down.
    #[arg(long, default_value_t = 10)]
    infra_hold_secs: u64,
    /// Seconds a broker or Cassandra node stays paused (SIGSTOP).
    #[arg(long, default_value_t = 15)]
    pause_secs: u64,
    /// Seconds a command is retried with its key before its order is given up.
    #[arg(long, default_value_t = 120)]
    retry_secs: u64,
    /// Skip the comparison of the views with a rebuild of the topic at the end.
    #[arg(long)]
    no_rebuild: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    match main_inner().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("faults: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn main_inner() -> anyhow::Result<bool> {
    let cli = Cli::parse();
    let settings = Settings::load().context("loading the settings (APP_… variables)")?;
    let mut plan = match cli.plan {
        PlanName::Full => Plan::full(),
        PlanName::Ci => Plan::ci(),
    };
    if let Some(trials) = cli.trials {
        plan = plan.with_trials(trials);
    }
    if !cli.only.is_empty() {
        plan = plan.only(&cli.only)?;
    }
    let mut options = Options::new(plan, &settings);
    options.load.clients = cli.clients.max(1);
    if let Some(url) = cli.command_url {
        options.load.command_url = url;
    }
    if let Some(url) = cli.query_url {
        options.load.query_url = url;
    }
    options.service_hold = Duration::from_secs(cli.service_hold_secs);
    options.infra_hold = Duration::from_secs(cli.infra_hold_secs);
    options.pause = Duration::from_secs(cli.pause_secs);
    options.load.retry_bound = Duration::from_secs(cli.retry_secs);
    options.rebuild = !cli.no_rebuild;

    let report = run(&settings, &options).await?;
    say("done");
    println!("\n{}", report.render());
    Ok(report.passed())
}
