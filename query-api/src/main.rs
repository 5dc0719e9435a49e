//! The query-api process: settings, telemetry, then [`query_api::run`] until Ctrl-C or SIGTERM.

#[global_allocator]
static ALLOCATOR: infra::Allocator = infra::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = infra::Settings::load()?;
    let telemetry = infra::telemetry::init(&settings.telemetry, "query-api");
    let result = query_api::run(settings, infra::http::shutdown_signal()).await;
    telemetry.shutdown();
    result
}
