//! command-api: see the library.

#[global_allocator]
static ALLOCATOR: infra::Allocator = infra::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = infra::Settings::load()?;
    let telemetry = infra::telemetry::init(&settings.telemetry, "command-api");
    let result = command_api::run(settings).await;
    telemetry.shutdown();
    result
}
