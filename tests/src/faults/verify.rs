//! The checks: every acknowledged command visible through query-api and present in the topic
//! (after each fault), and the live views equal to a fresh rebuild of the same topic (at the end).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use infra::Settings;
use serde_json::Value;
use uuid::Uuid;

use super::load::{event_type, view_difference, OrderLog};
use super::say;
use super::topic::TopicFollower;
use crate::{end_offsets, Keyspace, Projector, PROJECTIONS};

/// What a check of the acknowledged commands found.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    /// Orders read back through query-api.
    pub orders_read: usize,
    /// Orders whose events were checked in the topic.
    pub orders_in_topic: usize,
    /// Acknowledged commands missing from the views or the topic.
    pub lost_commands: usize,
    /// Orders whose view is not what their version must show.
    pub views_differing: usize,
    /// One line per lost command, differing view or topic anomaly.
    pub details: Vec<String>,
    /// Gaps, reordering, two events at one sequence, more events than commands sent, wrong types.
    pub topic_anomalies: usize,
}

impl Findings {
    pub fn clean(&self) -> bool {
        self.lost_commands == 0 && self.views_differing == 0 && self.topic_anomalies == 0
    }
}

/// Check the orders of the load: those in `to_read` through query-api (`min_version` of the
/// last acknowledged version answers 200 at that version or later, with the contents of that
/// version), every one in the topic as `topic` has read it up to the end offsets of now
/// (sequences after de-duplication exactly `1..=n` in topic order, as `tests::sequences_of` gives
/// them, `n` at least the last acknowledged version and at most the last step sent, each of the
/// type the script makes). `orders` is what the load reached; `started_after` is read after the
/// topic.
pub async fn check_orders(
    settings: &Settings,
    topic: &TopicFollower,
    query_url: &str,
    orders: &[(Uuid, OrderLog)],
    to_read: &HashSet<Uuid>,
    started_after: impl Fn() -> HashMap<Uuid, u64>,
    read_bound: Duration,
) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    // Lost commands per order, the larger of what the views and the topic miss.
    let mut lost: HashMap<Uuid, (u64, Vec<String>)> = HashMap::new();

    // 1. Views, through query-api, concurrently.
    let http = crate::authorized(
        &infra::Settings::load()?,
        reqwest::Client::builder().timeout(Duration::from_secs(15)),
    )
    .build()?;
    let reads = orders
        .iter()
        .filter(|(id, log)| log.acked > 0 && to_read.contains(id))
        .map(|(id, log)| {
            let http = http.clone();
            async move {
                let seen = read_view(&http, query_url, *id, log.acked, read_bound).await;
                (*id, log.clone(), seen)
            }
        });
    let mut reads = futures::stream::iter(reads).buffer_unordered(16);
    while let Some((id, log, seen)) = reads.next().await {
        findings.orders_read += 1;
        match seen {
            Ok(view) => {
                if let Some(diff) = view_difference(&view, log.customer) {
                    findings.views_differing += 1;
                    findings
                        .details
                        .push(format!("view of order {id} differs {diff}"));
                }
            }
            Err(visible) => {
                let entry = lost.entry(id).or_default();
                entry.0 = entry.0.max(log.acked - visible);
                entry.1.push(format!(
                    "order {id}: acknowledged up to version {}, query-api shows {visible}",
                    log.acked
                ));
            }
        }
    }

    // 2. The topic: every record up to the end offsets as they are now, in topic order.
    let ends = end_offsets(settings, &settings.kafka.topic).await?;
    topic
        .caught_up(&ends, Duration::from_secs(300))
        .await
        .context("reading the events topic")?;
    // Read after the end offsets: every command behind an event below them was sent by now.
    let started = started_after();
    for (id, log) in orders {
        let list: Vec<(u64, Uuid, String)> = topic
            .events_of(*id, &ends)
            .into_iter()
            .map(|e| (e.sequence, e.event_id, e.event_type))
            .collect();
        if log.acked == 0 && list.is_empty() {
            continue;
        }
        findings.orders_in_topic += 1;
        // De-duplicated by sequence, in topic order; a duplicate must be the same event.
        let mut first: BTreeMap<u64, Uuid> = BTreeMap::new();
        let mut in_order = Vec::new();
        let mut anomalies = Vec::new();
        for (sequence, event_id, kind) in &list {
            match first.get(sequence) {
                Some(other) if other != event_id => anomalies.push(format!(
                    "order {id}: two different events at sequence {sequence} ({other}, {event_id})"
                )),
                Some(_) => {}
                None => {
                    first.insert(*sequence, *event_id);
                    in_order.push(*sequence);
                    if kind != event_type(*sequence) {
                        anomalies.push(format!(
                            "order {id}: sequence {sequence} is {kind}, expected {}",
                            event_type(*sequence)
                        ));
                    }
                }
            }
        }
        let n = in_order.len() as u64;
        if in_order != (1..=n).collect::<Vec<_>>() {
            anomalies.push(format!(
                "order {id}: sequences {in_order:?} are not 1..={n} in order"
            ));
        }
        // Contiguous prefix: what a consumer can apply.
        let prefix = in_order
            .iter()
            .enumerate()
            .take_while(|(i, s)| **s == *i as u64 + 1)
            .count() as u64;
        if prefix < log.acked {
            let entry = lost.entry(*id).or_default();
            entry.0 = entry.0.max(log.acked - prefix);
            entry.1.push(format!(
                "order {id}: acknowledged up to version {}, the topic holds 1..={prefix}",
                log.acked
            ));
        }
        let sent = started.get(id).copied().unwrap_or(log.started);
        if n > sent {
            anomalies.push(format!(
                "order {id}: {n} events in the topic, only {sent} commands sent"
            ));
        }
        findings.topic_anomalies += anomalies.len();
        findings.details.extend(anomalies);
    }
    for (_, (count, lines)) in lost {
        findings.lost_commands += count as usize;
        findings.details.extend(lines);
    }
    Ok(findings)
}

/// `GET /v1/orders/{id}?min_version=…` until it answers 200 at `version` or later: the view, or
/// the highest version seen (0 if none) once `bound` has passed.
async fn read_view(
    http: &reqwest::Client,
    query_url: &str,
    order: Uuid,
    version: u64,
    bound: Duration,
) -> Result<Value, u64> {
    let url = format!("{query_url}/v1/orders/{order}?min_version={version}");
    let start = Instant::now();
    let mut seen = 0;
    loop {
        if let Ok(response) = http.get(&url).send().await {
            let status = response.status().as_u16();
            if let Ok(body) = response.json::<Value>().await {
                let at = body["version"].as_u64().unwrap_or(0);
                if status == 200 {
                    seen = seen.max(at);
                    if at >= version {
                        return Ok(body);
                    }
                }
            }
        }
        if start.elapsed() > bound {
            return Err(seen);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A hash of read-model tables (FNV-1a over every table's name and its sorted rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablesHash {
    pub hash: u64,
    pub rows: usize,
    /// (table without generation suffix, hash, rows).
    pub tables: Vec<(String, u64, usize)>,
}

fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Hash the tables of the active generation of every projection of `ks`.
pub async fn hash_tables(ks: &Keyspace) -> anyhow::Result<TablesHash> {
    let mut all = FNV_OFFSET;
    let mut rows_total = 0;
    let mut tables = Vec::new();
    for (projection, bases) in PROJECTIONS.iter().map(|p| (p.name, p.bases)) {
        let (generation, _) = ks
            .generations(projection)
            .await?
            .with_context(|| format!("{projection} is not registered in {}", ks.name))?;
        for base in bases {
            let rows = ks.table_rows(&format!("{base}_g{generation}")).await?;
            let mut hash = FNV_OFFSET;
            fnv1a(&mut hash, base.as_bytes());
            for row in &rows {
                fnv1a(&mut hash, b"\n");
                fnv1a(&mut hash, row.as_bytes());
            }
            fnv1a(&mut all, &hash.to_le_bytes());
            rows_total += rows.len();
            tables.push((base.to_string(), hash, rows.len()));
        }
    }
    Ok(TablesHash {
        hash: all,
        rows: rows_total,
        tables,
    })
}

/// Wait until every projection's active generation in `ks` has applied `topic` up to `ends`.
async fn drain_to(
    ks: &Keyspace,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    timeout: Duration,
    label: &str,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut told = Instant::now();
    loop {
        let behind: anyhow::Result<i64> = async {
            let mut behind = 0;
            for projection in PROJECTIONS.iter().map(|p| p.name) {
                let stored = match ks.generations(projection).await? {
                    Some((generation, _)) => ks.offsets(projection, generation, topic).await?,
                    None => BTreeMap::new(),
                };
                for (partition, end) in ends {
                    behind += (end - stored.get(partition).copied().unwrap_or(0)).max(0);
                }
            }
            Ok(behind)
        }
        .await;
        let behind = match behind {
            Ok(0) => return Ok(()),
            Ok(n) => format!("{n} records (summed over the projections) still to apply"),
            Err(e) => format!("offsets unreadable: {e:#}"),
        };
        if start.elapsed() > timeout {
            bail!("{label}: not drained within {timeout:?}: {behind}");
        }
        if told.elapsed() > Duration::from_secs(10) {
            say(&format!("{label}: {behind}"));
            told = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The live views against a rebuild of the same topic.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub live: TablesHash,
    pub rebuild: TablesHash,
    /// The records both were built from (sum of the end offsets).
    pub records: i64,
    /// Tables whose hashes differ.
    pub differing_tables: Vec<String>,
    /// The rebuild's keyspace, kept when the views differ (dropped otherwise).
    pub kept_keyspace: Option<String>,
}

/// Build a second copy of the views from the whole topic, with a projector of its own in a
/// fresh keyspace, and compare it with the live views of `settings.cql.keyspace`, both at the same
/// end offsets (measured again after hashing: if the topic moved meanwhile, both are drained to
/// the new ends and hashed again).
pub async fn compare_with_rebuild(settings: &Settings) -> anyhow::Result<Comparison> {
    let topic = &settings.kafka.topic;
    let mut cql = settings.cql.clone();
    cql.request_timeout_ms = 60_000;
    let live = Keyspace::open(
        &settings.cql.keyspace,
        infra::cql::connect_keyspace(&cql).await?,
    );
    let mut fresh_settings = settings.clone();
    let fresh = Keyspace::fresh(&mut fresh_settings).await?;
    say(&format!(
        "rebuilding the views from {topic} into keyspace {}",
        fresh.name
    ));
    let built = rebuild_and_hash(settings, &live, &fresh, &fresh_settings).await;
    let (ends, live_hash, rebuild_hash) = match built {
        Ok(built) => built,
        Err(e) => {
            let _ = fresh.drop_keyspace().await;
            return Err(e);
        }
    };
    let differing_tables: Vec<String> = live_hash
        .tables
        .iter()
        .zip(&rebuild_hash.tables)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("{} ({} rows live, {} rebuilt)", a.0, a.2, b.2))
        .collect();
    let kept_keyspace = if differing_tables.is_empty() {
        fresh.drop_keyspace().await?;
        None
    } else {
        Some(fresh.name.clone())
    };
    Ok(Comparison {
        live: live_hash,
        rebuild: rebuild_hash,
        records: ends.values().sum(),
        differing_tables,
        kept_keyspace,
    })
}

/// Run a projector into `fresh` until it and the live views stand at the same end offsets;
/// hash both.
async fn rebuild_and_hash(
    settings: &Settings,
    live: &Keyspace,
    fresh: &Keyspace,
    fresh_settings: &Settings,
) -> anyhow::Result<(BTreeMap<i32, i64>, TablesHash, TablesHash)> {
    let topic = &settings.kafka.topic;
    let projector = Projector::spawn_process(fresh_settings, &[]).await?;
    let started = Instant::now();
    for round in 1..=5 {
        let ends = end_offsets(settings, topic).await?;
        drain_to(live, topic, &ends, Duration::from_secs(300), "live views").await?;
        drain_to(fresh, topic, &ends, Duration::from_secs(1800), "rebuild")
            .await
            .with_context(|| {
                let log = projector.log.as_ref().map(|p| p.display().to_string());
                format!(
                    "the rebuild's projector logs to {}",
                    log.unwrap_or_default()
                )
            })?;
        let live_hash = hash_tables(live).await?;
        let rebuild_hash = hash_tables(fresh).await?;
        if end_offsets(settings, topic).await? == ends {
            say(&format!(
                "rebuild caught up after {:.1} s",
                started.elapsed().as_secs_f64()
            ));
            drop(projector);
            return Ok((ends, live_hash, rebuild_hash));
        }
        say(&format!(
            "the topic moved on while comparing (round {round}): again"
        ));
    }
    bail!("the topic kept moving: no quiet moment to compare the views")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_its_reference_values() {
        let mut h = FNV_OFFSET;
        fnv1a(&mut h, b"a");
        assert_eq!(h, 0xaf63_dc4c_8601_ec8c);
    }
}
