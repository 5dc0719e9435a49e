//! The manifest written beside an export's files (`manifest.json`): what was asked (window,
//! filters, format), the Kafka offsets covered per partition (`from_offset` included,
//! `to_offset` excluded) and each file with its offsets, event count and size. The next export
//! starts exactly at `to_offset` of every partition (`after_job`, `stack-admin export
//! --from-offsets`), so a chain of exports holds every event once.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Format;

/// The version of the manifest's shape.
pub const MANIFEST_VERSION: u32 = 1;

/// The offsets of one partition an export covers: `[from_offset, to_offset)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PartitionRange {
    pub partition: i32,
    /// The first offset read.
    pub from_offset: i64,
    /// The first offset not read: where the next export of this partition starts.
    pub to_offset: i64,
}

impl PartitionRange {
    pub fn len(&self) -> u64 {
        (self.to_offset - self.from_offset).max(0) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One file of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileEntry {
    /// `part-00000.parquet`, `part-00001.jsonl`, …
    pub name: String,
    /// The offsets whose events it holds (of one partition).
    pub partition: i32,
    pub from_offset: i64,
    pub to_offset: i64,
    /// Events (rows or lines) in the file.
    pub events: u64,
    pub bytes: u64,
}

/// The time window and filters of an export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// Events whose Kafka record time is at or after `from` …
    pub from: Option<DateTime<Utc>>,
    /// … and before `to`.
    pub to: Option<DateTime<Utc>>,
    /// Only these tenants' events (one for a job).
    pub tenant_id: Option<String>,
    /// Only these aggregates (all when empty).
    #[serde(default)]
    pub aggregate_ids: Vec<Uuid>,
    /// Only these event types (all when empty).
    #[serde(default)]
    pub event_types: Vec<String>,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// The job that wrote it (none for `stack-admin export`).
    pub job_id: Option<Uuid>,
    /// The export this one continues, if any.
    pub after_job: Option<Uuid>,
    pub format: Format,
    pub selection: Selection,
    /// The Kafka topic read.
    pub topic: String,
    /// Per partition, the offsets covered; every partition of the topic at the time of the export.
    pub partitions: Vec<PartitionRange>,
    pub files: Vec<FileEntry>,
    pub events: u64,
    pub bytes: u64,
    pub created_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

impl Manifest {
    /// Where the next export of the same topic starts, per partition (partitions not listed, added
    /// to the topic later, start at their beginning).
    pub fn end_offsets(&self) -> BTreeMap<i32, i64> {
        self.partitions
            .iter()
            .map(|r| (r.partition, r.to_offset))
            .collect()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parse and check a manifest: a known version, each partition once with `from ≤ to`, each
    /// file inside its partition's range, and totals that add up (when files are listed).
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        let manifest: Manifest = serde_json::from_slice(bytes).context("not an export manifest")?;
        if manifest.version != MANIFEST_VERSION {
            bail!(
                "manifest version {} (this build reads {MANIFEST_VERSION})",
                manifest.version
            );
        }
        let mut seen = BTreeMap::new();
        for range in &manifest.partitions {
            if range.from_offset < 0 || range.to_offset < range.from_offset {
                bail!(
                    "partition {}: offsets {}..{} are not a range",
                    range.partition,
                    range.from_offset,
                    range.to_offset
                );
            }
            if seen.insert(range.partition, *range).is_some() {
                bail!("partition {} is listed twice", range.partition);
            }
        }
        for file in &manifest.files {
            let Some(range) = seen.get(&file.partition) else {
                bail!("{}: partition {} is not covered", file.name, file.partition);
            };
            if file.from_offset < range.from_offset || file.to_offset > range.to_offset {
                bail!(
                    "{}: offsets outside partition {}'s range",
                    file.name,
                    file.partition
                );
            }
        }
        // A manifest of `stack-admin export` lists no part files (its one output holds them all).
        let events: u64 = manifest.files.iter().map(|f| f.events).sum();
        if !manifest.files.is_empty() && events != manifest.events {
            bail!(
                "the files hold {events} events, the manifest says {}",
                manifest.events
            );
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let at = DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        Manifest {
            version: MANIFEST_VERSION,
            job_id: Some(Uuid::nil()),
            after_job: None,
            format: Format::Parquet,
            selection: Selection {
                from: Some(at),
                to: Some(at + chrono::TimeDelta::minutes(10)),
                tenant_id: Some("acme".into()),
                ..Default::default()
            },
            topic: "orders.events".into(),
            partitions: vec![
                PartitionRange {
                    partition: 0,
                    from_offset: 10,
                    to_offset: 30,
                },
                PartitionRange {
                    partition: 1,
                    from_offset: 5,
                    to_offset: 5,
                },
            ],
            files: vec![
                FileEntry {
                    name: "part-00000.parquet".into(),
                    partition: 0,
                    from_offset: 10,
                    to_offset: 20,
                    events: 7,
                    bytes: 100,
                },
                FileEntry {
                    name: "part-00001.parquet".into(),
                    partition: 0,
                    from_offset: 20,
                    to_offset: 30,
                    events: 3,
                    bytes: 80,
                },
            ],
            events: 10,
            bytes: 180,
            created_at: at,
            finished_at: at,
        }
    }

    #[test]
    fn a_manifest_round_trips_and_gives_the_next_start() {
        let m = sample();
        let parsed = Manifest::parse(&m.to_json()).unwrap();
        assert_eq!(parsed, m);
        assert_eq!(
            parsed.end_offsets(),
            BTreeMap::from([(0, 30), (1, 5)]),
            "the next export starts where this one ended, empty partitions included"
        );
        let text = String::from_utf8(m.to_json()).unwrap();
        assert!(text.contains("\"format\": \"parquet\""), "{text}");
    }

    #[test]
    fn inconsistent_manifests_are_refused() {
        let mut m = sample();
        m.events = 11;
        assert!(Manifest::parse(&m.to_json()).is_err(), "totals");
        let mut m = sample();
        m.partitions.push(m.partitions[0]);
        assert!(Manifest::parse(&m.to_json()).is_err(), "a partition twice");
        let mut m = sample();
        m.files[1].to_offset = 31;
        assert!(
            Manifest::parse(&m.to_json()).is_err(),
            "a file beyond its range"
        );
        let mut m = sample();
        m.partitions[1].to_offset = 4;
        assert!(Manifest::parse(&m.to_json()).is_err(), "to before from");
        let mut m = sample();
        m.version = 2;
        assert!(Manifest::parse(&m.to_json()).is_err(), "an unknown version");
        assert!(Manifest::parse(b"{\"version\": 1}").is_err());
    }

    #[test]
    fn ranges_count_their_offsets() {
        let r = PartitionRange {
            partition: 0,
            from_offset: 3,
            to_offset: 10,
        };
        assert_eq!(r.len(), 7);
        assert!(!r.is_empty());
    }
}
