//! The cluster stack's parts, seen from the suite: part control through `infra/dev … --cluster`,
//! whether a part's process runs (its pid file), and the events topic's leaders and in-sync
//! replicas (rdkafka metadata).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use infra::Settings;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::say;

/// Every part of the cluster stack.
pub const PARTS: [&str; 13] = [
    "kafka-1",
    "kafka-2",
    "kafka-3",
    "cassandra-1",
    "cassandra-2",
    "cassandra-3",
    "command-api-1",
    "command-api-2",
    "query-api-1",
    "query-api-2",
    "projector-1",
    "projector-2",
    "haproxy",
];

/// `infra/dev <action> <part> --cluster` (kill, start, stop, pause, resume), off the async
/// runtime: each waits until done (`start` until the part answers).
pub async fn control(action: &str, part: &str) -> anyhow::Result<Duration> {
    let (action, part) = (action.to_string(), part.to_string());
    let start = Instant::now();
    tokio::task::spawn_blocking(move || crate::dev_cluster(&[action.as_str(), part.as_str()]))
        .await
        .context("the infra/dev task")??;
    Ok(start.elapsed())
}

/// The cluster's state folder: `CQRS_DEV_STATE` (the env file sets it), else `<repo>/.dev-cluster`.
pub fn state_dir() -> PathBuf {
    std::env::var("CQRS_DEV_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(".dev-cluster")
        })
}

/// What the pid file of a part says about its process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartState {
    /// No pid file, or its process is gone (or a zombie).
    Down,
    /// Alive and stopped (SIGSTOP).
    Paused,
    Running,
}

pub fn part_state(part: &str) -> PartState {
    let pid_file = state_dir().join("pids").join(format!("{part}.pid"));
    let Ok(pid) = std::fs::read_to_string(&pid_file) else {
        return PartState::Down;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) else {
        return PartState::Down;
    };
    // `pid (comm) S …`: the state follows the last parenthesis.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    match state {
        None | Some('Z') | Some('X') => PartState::Down,
        Some('T') | Some('t') => PartState::Paused,
        Some(_) => PartState::Running,
    }
}

/// One partition of the events topic: its leader and whether every replica is in sync.
#[derive(Debug, Clone)]
pub struct PartitionInfo {
    pub id: i32,
    /// Broker node id; -1 while the partition has no leader.
    pub leader: i32,
    pub replicas: usize,
    pub isr: usize,
}

/// The partitions of `topic` as the cluster's metadata gives them now.
pub async fn partitions(settings: &Settings, topic: &str) -> anyhow::Result<Vec<PartitionInfo>> {
    let config = infra::kafka::base_config(&settings.kafka);
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create()?;
        let metadata = client.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let Some(t) = metadata.topics().first() else {
            bail!("no metadata for {topic}");
        };
        if let Some(err) = t.error() {
            bail!("metadata of {topic}: {err:?}");
        }
        Ok(t.partitions()
            .iter()
            .map(|p| PartitionInfo {
                id: p.id(),
                leader: p.leader(),
                replicas: p.replicas().len(),
                isr: p.isr().len(),
            })
            .collect())
    })
    .await?
}

/// The broker (node id) leading the most partitions of `topic`, with the count of each.
pub async fn busiest_leader(
    settings: &Settings,
    topic: &str,
) -> anyhow::Result<(i32, BTreeMap<i32, usize>)> {
    let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
    for p in partitions(settings, topic).await? {
        if p.leader >= 0 {
            *counts.entry(p.leader).or_default() += 1;
        }
    }
    let leader = counts
        .iter()
        .max_by_key(|(id, n)| (**n, -**id))
        .map(|(id, _)| *id)
        .context("no partition of the events topic has a leader")?;
    Ok((leader, counts))
}

/// Wait until every partition of `topic` has a leader and all its replicas in sync.
pub async fn wait_fully_replicated(
    settings: &Settings,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let last = match partitions(settings, topic).await {
            Ok(parts) => {
                let lagging: Vec<String> = parts
                    .iter()
                    .filter(|p| p.leader < 0 || p.isr < p.replicas)
                    .map(|p| format!("p{} leader {} isr {}/{}", p.id, p.leader, p.isr, p.replicas))
                    .collect();
                if lagging.is_empty() && !parts.is_empty() {
                    return Ok(start.elapsed());
                }
                lagging.join(", ")
            }
            Err(e) => format!("{e:#}"),
        };
        if start.elapsed() > timeout {
            bail!("{topic} not fully replicated within {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every part runs (not paused, not dead); a part found down is started once more.
pub async fn ensure_parts_running() -> anyhow::Result<()> {
    for part in PARTS {
        match part_state(part) {
            PartState::Running => {}
            PartState::Paused => {
                say(&format!("{part} found paused: resuming it"));
                control("resume", part).await?;
            }
            PartState::Down => {
                say(&format!("{part} found down: starting it"));
                control("start", part).await?;
            }
        }
    }
    Ok(())
}
