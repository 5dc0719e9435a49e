//! The sweeper: every instance periodically republishes batches whose writer died between the LWT
//! and the produce. Several instances sweeping at once is harmless: a batch published twice is
//! de-duplicated by consumers on (aggregate id, sequence).
//!
//! Intents sit in 5-second buckets. A pass reads every bucket from the sweepers' shared progress
//! up to `grace` ago, once each, and moves the progress past a bucket only when every batch of it
//! is published. Progress never jumps: after an outage of any length the sweepers go through every
//! bucket since, and a bucket whose batches cannot be published yet (Kafka down) holds the progress
//! back until they are. `command_oldest_unpublished_intent_seconds` tells how old the oldest batch
//! is that a pass found committed and could not publish (0 when a pass caught up).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use events::ORDER_AGGREGATE;

use crate::publisher::Publisher;
use crate::write::store::{bucket_length, bucket_of};
use crate::write::{CommandError, WritePath};

/// How the sweeper runs.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    pub interval: Duration,
    pub grace: Duration,
    pub lookback: TimeDelta,
    pub partition_refresh: Duration,
}

impl SweepSettings {
    pub fn from_settings(settings: &infra::Settings) -> Self {
        let c = &settings.command_api;
        let min_grace = c.min_sweeper_grace_ms(settings.cql.request_timeout_ms);
        if c.sweeper_grace_ms < min_grace {
            tracing::warn!(
                sweeper_grace_ms = c.sweeper_grace_ms,
                min_grace_ms = min_grace,
                "the sweeper grace is below two CQL request timeouts plus the clock skew margin: \
                 a batch whose LWT is slow and whose writer then dies may wait for the next \
                 command on its order"
            );
        }
        Self {
            interval: Duration::from_millis(c.sweeper_interval_ms.max(100)),
            grace: Duration::from_millis(c.sweeper_grace_ms),
            lookback: TimeDelta::minutes(i64::from(c.sweeper_lookback_minutes)),
            partition_refresh: Duration::from_millis(c.partition_refresh_ms.max(500)),
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub buckets: usize,
    pub republished: usize,
    /// The oldest intent found committed and unpublished that could not be published.
    pub oldest_unpublished: Option<DateTime<Utc>>,
}

/// One sweeper pass over the intents of every tenant that wrote to the topic: see [`sweep_tenant`].
/// A tenant whose pass stops does not stop the others'; the first error is returned at the end.
pub async fn sweep(
    write: &WritePath,
    grace: Duration,
    lookback: TimeDelta,
) -> Result<Pass, CommandError> {
    let now = Utc::now();
    let mut total = Pass::default();
    let mut first_error = None;
    for tenant in write.store().tenants().await? {
        match sweep_tenant(write, &tenant, now, grace, lookback).await {
            Ok(pass) => {
                total.buckets += pass.buckets;
                total.republished += pass.republished;
            }
            Err((pass, e)) => {
                total.republished += pass.republished;
                total.oldest_unpublished = match (total.oldest_unpublished, pass.oldest_unpublished)
                {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                tracing::warn!(tenant, error = %e, "sweeping a tenant's intents stopped");
                first_error.get_or_insert(e);
            }
        }
    }
    record(&total, now);
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// One tenant's buckets from the shared progress (or `lookback` ago, when no sweeper ever recorded
/// any) up to `grace` ago.
async fn sweep_tenant(
    write: &WritePath,
    tenant: &str,
    now: DateTime<Utc>,
    grace: Duration,
    lookback: TimeDelta,
) -> Result<Pass, (Pass, CommandError)> {
    let mut pass = Pass::default();
    match sweep_buckets(write, tenant, now, grace, lookback, &mut pass).await {
        Ok(()) => Ok(pass),
        Err(e) => Err((pass, e)),
    }
}

async fn sweep_buckets(
    write: &WritePath,
    tenant: &str,
    now: DateTime<Utc>,
    grace: Duration,
    lookback: TimeDelta,
    pass: &mut Pass,
) -> Result<(), CommandError> {
    let horizon = now - TimeDelta::from_std(grace).unwrap_or(TimeDelta::seconds(20));
    let store = write.store();
    let mut bucket = match store.sweep_progress(tenant).await? {
        Some(progress) => bucket_of(progress),
        None => {
            // The first pass ever: record where the sweepers start, so the next pass goes on
            // from there even if this one sweeps no whole bucket.
            let start = bucket_of(now - lookback);
            store.save_sweep_progress(tenant, start).await?;
            start
        }
    };
    let behind = (horizon - bucket).num_seconds() / bucket_length().num_seconds();
    if behind > 120 {
        tracing::info!(
            from = %bucket,
            buckets = behind,
            "sweeper catching up on every bucket since its last progress"
        );
    }
    // Only whole buckets that ended before the horizon: no writer of theirs is still running.
    while bucket + bucket_length() <= horizon {
        for intent in store.intents(tenant, bucket).await? {
            if intent.aggregate_type != ORDER_AGGREGATE || intent.published {
                continue;
            }
            match write
                .republish(tenant, intent.aggregate_id, intent.version)
                .await
            {
                Ok(true) => {
                    pass.republished += 1;
                    metrics::counter!("sweeper_republished_total").increment(1);
                    tracing::info!(tenant, order_id = %intent.aggregate_id, version = intent.version,
                        "sweeper republished a batch");
                }
                Ok(false) => {}
                Err(e) => {
                    pass.oldest_unpublished = Some(intent.created_at.unwrap_or(bucket));
                    return Err(e);
                }
            }
        }
        bucket += bucket_length();
        pass.buckets += 1;
        store.save_sweep_progress(tenant, bucket).await?;
    }
    Ok(())
}

fn record(pass: &Pass, now: DateTime<Utc>) {
    let age = pass.oldest_unpublished.map_or(0.0, |at| {
        (now - at).num_milliseconds().max(0) as f64 / 1000.0
    });
    metrics::gauge!("command_oldest_unpublished_intent_seconds").set(age);
    // A sweeper that hangs stops moving this: the `SweeperStalled` alert watches it.
    metrics::gauge!("command_sweeper_last_pass_timestamp_seconds").set(now.timestamp() as f64);
}

/// Sweep every `interval` until `shutdown`.
pub async fn run(
    write: Arc<WritePath>,
    sweep_settings: SweepSettings,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(sweep_settings.interval) => {}
            _ = shutdown.changed() => return,
        }
        match sweep(&write, sweep_settings.grace, sweep_settings.lookback).await {
            Ok(Pass { republished: 0, .. }) => {}
            Ok(pass) => tracing::info!(
                republished = pass.republished,
                buckets = pass.buckets,
                "sweeper pass"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "sweeper pass stopped; the next one goes on from there")
            }
        }
    }
}

/// Read the topic's partition count every `partition_refresh` until `shutdown`, so aggregates
/// created from then on spread over partitions ops added.
pub async fn refresh_partitions(
    publisher: Arc<Publisher>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        publisher.refresh_partitions().await;
    }
}
