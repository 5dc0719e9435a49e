//! The projector binary: settings, telemetry, then [`projector::cli::execute`].

#[global_allocator]
static ALLOCATOR: infra::Allocator = infra::Allocator;

use std::process::ExitCode;

use clap::Parser;
use infra::Settings;
use projector::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("settings: {err}");
            return ExitCode::FAILURE;
        }
    };
    // The service logs to stdout; the one-shot commands (rebuild, shadow, ctl) to stderr, so that
    // the JSON they print on stdout is all there is on it.
    let telemetry = match cli.command {
        None | Some(projector::cli::Command::Run) => {
            infra::telemetry::init(&settings.telemetry, "projector")
        }
        Some(_) => infra::telemetry::init_command_line(&settings.telemetry, "projector"),
    };
    let code = projector::cli::execute(cli, settings).await;
    telemetry.shutdown();
    code
}
