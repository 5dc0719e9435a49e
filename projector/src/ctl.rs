//! `projector ctl …`: projection control from the command line, acting directly on CQL and Kafka
//! with the settings (like `projector rebuild`), the same operations as the HTTP routes
//! ([`crate::control_ops`]). Every change needs `--reason`; the actor is `--actor`, by default
//! `$USER@host`. Results are printed as JSON on standard output; a refusal (unknown projection,
//! bad value, state conflict) exits with 2, a failure (CQL or Kafka unreachable) with 1.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use infra::Settings;
use serde::Serialize;

use crate::control::ResetTarget;
use crate::control_ops::{Change, ControlError, Controller};

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Who makes the change, for the audit log (default: $USER@host).
    #[arg(long, global = true)]
    pub actor: Option<String>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// The control state, stored offsets, skips, live instances and latest changes.
    Status { name: String },
    /// Stop every instance's consumers of the projection (its lag grows, nothing is applied).
    Pause {
        name: String,
        #[arg(long)]
        reason: String,
    },
    /// Let the instances consume again, from the stored offsets.
    Resume {
        name: String,
        #[arg(long)]
        reason: String,
    },
    /// Move the active generation's stored offsets (the projection must be paused).
    Reset {
        name: String,
        #[arg(long)]
        reason: String,
        /// `PARTITION=OFFSET`, the next offset to apply on that partition; repeat per partition.
        #[arg(long = "offset", value_parser = parse_partition_offset, conflicts_with = "to_time", required_unless_present = "to_time")]
        offsets: Vec<(i32, i64)>,
        /// Every partition to its first record at or after this time (RFC 3339).
        #[arg(long)]
        to_time: Option<DateTime<Utc>>,
    },
    /// Move past one record without applying it (the projection must be paused).
    Skip {
        name: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        partition: i32,
        #[arg(long)]
        offset: i64,
    },
    /// List the projection's dead letters.
    DeadLetters {
        name: String,
        /// At most this many (1–1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Apply the projection's dead letters (those not re-driven yet) to its active generation.
    Redrive {
        name: String,
        #[arg(long)]
        reason: String,
    },
}

/// `PARTITION=OFFSET`.
pub fn parse_partition_offset(value: &str) -> Result<(i32, i64), String> {
    let (partition, offset) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not PARTITION=OFFSET"))?;
    let partition: i32 = partition
        .trim()
        .parse()
        .map_err(|_| format!("partition {partition:?} is not an integer"))?;
    let offset: i64 = offset
        .trim()
        .parse()
        .map_err(|_| format!("offset {offset:?} is not an integer"))?;
    if partition < 0 || offset < 0 {
        return Err(format!(
            "{value:?}: partition and offset must not be negative"
        ));
    }
    Ok((partition, offset))
}

impl CtlCommand {
    fn projection(&self) -> &str {
        match self {
            CtlCommand::Status { name }
            | CtlCommand::Pause { name, .. }
            | CtlCommand::Resume { name, .. }
            | CtlCommand::Reset { name, .. }
            | CtlCommand::Skip { name, .. }
            | CtlCommand::DeadLetters { name, .. }
            | CtlCommand::Redrive { name, .. } => name,
        }
    }

    fn verb(&self) -> &'static str {
        match self {
            CtlCommand::Status { .. } => "reading the control state",
            CtlCommand::Pause { .. } => "pausing, waiting for every instance to stop",
            CtlCommand::Resume { .. } => "resuming",
            CtlCommand::Reset { .. } => "resetting offsets",
            CtlCommand::Skip { .. } => "recording the skip",
            CtlCommand::DeadLetters { .. } => "reading the dead-letter topic",
            CtlCommand::Redrive { .. } => "re-driving dead letters",
        }
    }
}

fn print<T: Serialize>(value: &T) -> ExitCode {
    match serde_json::to_string_pretty(value) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Run one `projector ctl` command.
pub async fn execute(args: CtlArgs, settings: Settings) -> ExitCode {
    let actor = args
        .actor
        .clone()
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(crate::control::default_actor);
    let name = args.command.projection().to_string();
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.set_message(format!("{name}: {}", args.command.verb()));
    spinner.enable_steady_tick(Duration::from_millis(120));
    tracing::info!(projection = %name, %actor, command = args.command.verb(), "projector ctl");
    let result = run(args.command, actor, settings).await;
    spinner.finish_and_clear();
    match result {
        Ok(code) => code,
        Err(ControlError::Unavailable(err)) => {
            tracing::error!(projection = %name, error = %format!("{err:#}"), "projector ctl failed");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
        Err(refused) => {
            eprintln!("refused: {refused}");
            ExitCode::from(2)
        }
    }
}

async fn run(
    command: CtlCommand,
    actor: String,
    settings: Settings,
) -> Result<ExitCode, ControlError> {
    let session = infra::cql::connect_keyspace(&settings.cql).await?;
    let controller = Controller::new(settings, session).await?;
    let change = |reason: &str| Change {
        actor: actor.clone(),
        reason: reason.trim().to_string(),
    };
    Ok(match command {
        CtlCommand::Status { name } => print(&controller.status(&name).await?),
        CtlCommand::Pause { name, reason } => {
            print(&controller.pause(&name, &change(&reason)).await?)
        }
        CtlCommand::Resume { name, reason } => {
            print(&controller.resume(&name, &change(&reason)).await?)
        }
        CtlCommand::Reset {
            name,
            reason,
            offsets,
            to_time,
        } => {
            let target = match to_time {
                Some(at) => ResetTarget::Time(at),
                None => ResetTarget::Offsets(offsets.into_iter().collect::<BTreeMap<_, _>>()),
            };
            print(&controller.reset(&name, &target, &change(&reason)).await?)
        }
        CtlCommand::Skip {
            name,
            reason,
            partition,
            offset,
        } => print(
            &controller
                .skip(&name, partition, offset, &change(&reason))
                .await?,
        ),
        CtlCommand::DeadLetters { name, limit } => {
            if !(1..=crate::control_http::MAX_LIMIT).contains(&limit) {
                return Err(ControlError::Invalid(
                    "limit".into(),
                    format!("must be between 1 and {}", crate::control_http::MAX_LIMIT),
                ));
            }
            print(&controller.dead_letters(&name, limit).await?)
        }
        CtlCommand::Redrive { name, reason } => {
            print(&controller.redrive(&name, &change(&reason)).await?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn ctl(args: &[&str]) -> Result<CtlArgs, clap::Error> {
        let mut all = vec!["projector", "ctl"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all)?.command {
            Some(Command::Ctl(args)) => Ok(args),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partition_offsets_parse_as_pairs() {
        assert_eq!(parse_partition_offset("0=12"), Ok((0, 12)));
        assert_eq!(parse_partition_offset(" 3 = 40 "), Ok((3, 40)));
        assert!(parse_partition_offset("0:12").is_err());
        assert!(parse_partition_offset("a=1").is_err());
        assert!(parse_partition_offset("1=-1").is_err());
    }

    #[test]
    fn a_change_needs_a_reason_and_takes_an_actor() {
        assert!(ctl(&["pause", "orders"]).is_err());
        let args = ctl(&[
            "pause",
            "orders",
            "--reason",
            "bad deploy",
            "--actor",
            "ann",
        ])
        .unwrap();
        assert_eq!(args.actor.as_deref(), Some("ann"));
        assert!(matches!(
            args.command,
            CtlCommand::Pause { ref name, ref reason } if name == "orders" && reason == "bad deploy"
        ));
        let args = ctl(&["--actor", "bob", "resume", "orders", "--reason", "fixed"]).unwrap();
        assert_eq!(args.actor.as_deref(), Some("bob"));
    }

    #[test]
    fn a_reset_takes_offsets_per_partition_or_a_time_but_not_both() {
        let args = ctl(&[
            "reset", "orders", "--reason", "r", "--offset", "0=12", "--offset", "1=40",
        ])
        .unwrap();
        assert!(matches!(
            args.command,
            CtlCommand::Reset { ref offsets, to_time: None, .. } if offsets == &vec![(0, 12), (1, 40)]
        ));
        let args = ctl(&[
            "reset",
            "orders",
            "--reason",
            "r",
            "--to-time",
            "2026-11-27T10:00:00Z",
        ])
        .unwrap();
        assert!(matches!(
            args.command,
            CtlCommand::Reset {
                to_time: Some(_),
                ..
            }
        ));
        assert!(ctl(&["reset", "orders", "--reason", "r"]).is_err());
        assert!(ctl(&[
            "reset",
            "orders",
            "--reason",
            "r",
            "--offset",
            "0=1",
            "--to-time",
            "2026-11-27T10:00:00Z"
        ])
        .is_err());
    }

    #[test]
    fn skip_dead_letters_and_redrive_parse() {
        let args = ctl(&[
            "skip",
            "orders",
            "--reason",
            "poison",
            "--partition",
            "2",
            "--offset",
            "17",
        ])
        .unwrap();
        assert!(matches!(
            args.command,
            CtlCommand::Skip {
                partition: 2,
                offset: 17,
                ..
            }
        ));
        assert!(ctl(&["skip", "orders", "--reason", "r", "--partition", "2"]).is_err());
        let args = ctl(&["dead-letters", "orders", "--limit", "5"]).unwrap();
        assert!(matches!(
            args.command,
            CtlCommand::DeadLetters { limit: 5, .. }
        ));
        let args = ctl(&["redrive", "orders", "--reason", "fixed in 1.4"]).unwrap();
        assert!(matches!(args.command, CtlCommand::Redrive { .. }));
        assert!(ctl(&["status", "orders"]).is_ok());
    }
}
