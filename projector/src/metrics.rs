//! The projector's metrics, with low-cardinality labels only (projection, partition), and the
//! task that keeps the lag gauge fresh.
//!
//! Lag is computed from the shared state, not from this instance's assignment: for the active
//! generation of each projection, the high watermark of every partition minus the next offset
//! stored in `projection_offsets`. Every instance reports the same numbers, including partitions
//! nobody consumes at the moment (which is when lag matters most).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::projections::Projection;
use crate::registry::{OffsetStore, Registry};
use crate::topic::TopicInfo;

pub const EVENTS_APPLIED: &str = "projector_events_applied_total";
pub const APPLY_SECONDS: &str = "projector_apply_seconds";
pub const LAG: &str = "projector_lag";
pub const DEAD_LETTERS: &str = "projector_dead_letters_total";
/// Reads of a stored row a projection needed before it could fold an aggregate's events.
pub const STATE_READS: &str = "projector_state_reads_total";

pub fn events_applied(projection: &'static str, count: usize) {
    metrics::counter!(EVENTS_APPLIED, "projection" => projection).increment(count as u64);
}

pub fn apply_seconds(projection: &'static str, seconds: f64) {
    metrics::histogram!(APPLY_SECONDS, "projection" => projection).record(seconds);
}

pub fn state_read(projection: &'static str) {
    metrics::counter!(STATE_READS, "projection" => projection).increment(1);
}

pub fn dead_letter(projection: &'static str) {
    metrics::counter!(DEAD_LETTERS, "projection" => projection).increment(1);
}

pub fn lag(projection: &'static str, partition: i32, lag: i64) {
    metrics::gauge!(LAG, "projection" => projection, "partition" => partition.to_string())
        .set(lag as f64);
}

/// Refresh `projector_lag` every `every` until the task is aborted.
pub async fn refresh_lag(
    registry: Registry,
    projections: Vec<Arc<dyn Projection>>,
    topic: TopicInfo,
    topic_name: String,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stores: HashMap<(&'static str, i32), OffsetStore> = HashMap::new();
    loop {
        tick.tick().await;
        let marks = match topic.watermarks().await {
            Ok(marks) => marks,
            Err(err) => {
                tracing::debug!(error = %format!("{err:#}"), "lag: watermarks unavailable");
                continue;
            }
        };
        for projection in &projections {
            let name = projection.name();
            let offsets = async {
                let Some(state) = registry.get(name).await? else {
                    return Ok(None);
                };
                let key = (name, state.active_generation);
                if !stores.contains_key(&key) {
                    let store = OffsetStore::new(
                        registry.session().clone(),
                        registry.keyspace(),
                        name,
                        state.active_generation,
                        &topic_name,
                    )
                    .await?;
                    stores.retain(|(n, _), _| *n != name);
                    stores.insert(key, store);
                }
                match stores.get(&key) {
                    Some(store) => store.load().await.map(Some),
                    None => Ok(None),
                }
            };
            let offsets: anyhow::Result<_> = offsets.await;
            match offsets {
                Ok(Some(offsets)) => {
                    for (partition, mark) in &marks {
                        let next = offsets.get(partition).copied().unwrap_or(mark.low);
                        lag(name, *partition, (mark.high - next).max(0));
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::debug!(projection = name, error = %format!("{err:#}"), "lag: offsets unavailable")
                }
            }
        }
    }
}
