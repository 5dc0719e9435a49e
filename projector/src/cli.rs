//! The command line: `projector [run]` serves, `projector rebuild <name> [--from <time>]`
//! rebuilds one projection into a new generation and switches to it.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use infra::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "projector",
    about = "Folds the event stream into the CQL read models"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the projections (the default).
    Run,
    /// Rebuild a projection into a new generation of its tables, then switch reads to it.
    Rebuild {
        /// The projection (`orders`, `order_history`).
        name: String,
        /// Start from the first event at or after this time (RFC 3339) instead of offset 0.
        #[arg(long)]
        from: Option<DateTime<Utc>>,
        /// No progress bar (logs only).
        #[arg(long)]
        no_progress: bool,
    },
    /// Build a shadow generation of a projection with this binary's code, up to where the live
    /// generation is, and report how the two differ; `--promote` then switches reads to it.
    Shadow {
        /// The projection (`orders`, `order_history`).
        name: String,
        /// Start from the first event at or after this time (RFC 3339) instead of offset 0.
        #[arg(long)]
        from: Option<DateTime<Utc>>,
        /// Switch reads to the shadow generation once compared (otherwise it is dropped).
        #[arg(long)]
        promote: bool,
        /// Where every difference goes, one JSON line each
        /// (default `shadow-<projection>-g<generation>.jsonl`).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// No progress bars (logs only).
        #[arg(long)]
        no_progress: bool,
        /// Release a shadow left claimed by a process that is gone, and drop its tables.
        #[arg(long, conflicts_with_all = ["from", "promote", "out"])]
        abandon: bool,
    },
    /// Control a projection: pause, resume, reset, skip, dead letters (see `projector ctl --help`).
    Ctl(crate::ctl::CtlArgs),
}

/// Run what the command line asks for.
pub async fn execute(cli: Cli, settings: Settings) -> ExitCode {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => match crate::run(settings, infra::http::shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "projector failed");
                ExitCode::FAILURE
            }
        },
        Command::Rebuild {
            name,
            from,
            no_progress,
        } => {
            let rebuild = crate::rebuild(settings, &name, from, !no_progress);
            tokio::select! {
                result = rebuild => match result {
                    Ok(report) => {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&report).unwrap_or_default()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(err) => {
                        tracing::error!(projection = %name, error = %format!("{err:#}"), "rebuild failed");
                        ExitCode::FAILURE
                    }
                },
                () = infra::http::shutdown_signal() => {
                    eprintln!(
                        "interrupted: if the rebuild was claimed, running instances carry it on; \
                         run `projector rebuild {name}` again to resume and switch"
                    );
                    ExitCode::from(130)
                }
            }
        }
        Command::Shadow {
            name,
            from,
            promote,
            out,
            no_progress,
            abandon,
        } => {
            let options = crate::shadow::ShadowOptions {
                from,
                promote,
                out,
                progress: !no_progress,
                ..crate::shadow::ShadowOptions::new(&name)
            };
            crate::shadow::command(settings, options, abandon).await
        }
        Command::Ctl(args) => crate::ctl::execute(args, settings).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_subcommand_means_run() {
        let cli = Cli::try_parse_from(["projector"]).unwrap();
        assert!(cli.command.is_none());
    }

    #[test]
    fn rebuild_takes_a_name_and_an_rfc3339_start() {
        let cli = Cli::try_parse_from([
            "projector",
            "rebuild",
            "orders",
            "--from",
            "2026-03-01T00:00:00Z",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Rebuild { name, from, .. }) => {
                assert_eq!(name, "orders");
                assert_eq!(from.unwrap().to_rfc3339(), "2026-03-01T00:00:00+00:00");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["projector", "rebuild", "orders", "--from", "yesterday"]).is_err()
        );
    }
}
