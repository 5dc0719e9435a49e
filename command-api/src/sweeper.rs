//! The sweeper: every instance periodically republishes batches whose writer died between the LWT
//! and the produce. Several instances sweeping at once is harmless: a batch published twice is
//! de-duplicated by consumers on (aggregate id, sequence).

use std::sync::Arc;
use std::time::Duration;

use crate::publisher::Publisher;
use crate::repository::OrderRepository;

pub async fn run(
    repository: Arc<OrderRepository>,
    publisher: Arc<Publisher>,
    settings: infra::Settings,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let interval = Duration::from_millis(settings.command_api.sweeper_interval_ms.max(100));
    let grace = Duration::from_millis(settings.command_api.sweeper_grace_ms);
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        ticks += 1;
        match repository
            .sweep(grace, settings.command_api.sweeper_lookback_minutes)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(republished = n, "sweeper pass"),
            Err(e) => tracing::warn!(error = %e, "sweeper pass failed"),
        }
        // Pick up partitions added by ops for aggregates created from now on.
        if ticks.is_multiple_of(15) {
            publisher.refresh_partitions(&settings.kafka).await;
        }
    }
}
