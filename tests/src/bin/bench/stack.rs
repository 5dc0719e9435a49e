//! The stack around the services: the Kafka and Cassandra JVMs, the HTTP client of the load
//! generator, Kafka watermarks, a raw consume, and progress read from `projection_offsets`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use crate::measure::{self, Procs};

pub fn stack_pids() -> Vec<(&'static str, u32)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("org.apache.cassandra.service.CassandraDaemon") {
            found.push(("cassandra", pid));
        } else if cmdline.contains("kafka.Kafka") && !cmdline.contains("dependency:") {
            found.push(("kafka", pid));
        }
    }
    found
}

pub fn http_client() -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(15));
    match infra::Settings::load() {
        Ok(settings) => ::tests::authorized(&settings, builder),
        Err(_) => builder,
    }
    .build()
    .unwrap_or_default()
}

pub async fn end_offsets_total(kafka: &infra::settings::Kafka, topic: &str) -> anyhow::Result<i64> {
    let config = infra::kafka::base_config(kafka);
    let topic = topic.to_string();
    let partitions = kafka.partitions;
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config
            .clone()
            .set("group.id", "bench-watermarks")
            .create()?;
        let mut total = 0;
        for p in 0..partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
            total += high - low;
        }
        Ok(total)
    })
    .await?
}

/// Read the whole topic with the projector's consumer settings; (records, seconds from the
/// assignment to the last record, CPU).
pub async fn raw_consume(
    kafka: &infra::settings::Kafka,
    topic: &str,
    expected: i64,
    procs: &Procs,
) -> anyhow::Result<(i64, f64, measure::CpuDelta)> {
    let config =
        infra::kafka::consumer_config(kafka, &format!("bench-raw-consume-{}", Uuid::now_v7()));
    let topic = topic.to_string();
    let partitions = kafka.partitions;
    let procs = procs.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        let first = Some((Instant::now(), procs.snapshot()));
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut n = 0i64;
        let mut bytes = 0usize;
        while n < expected {
            if Instant::now() > deadline {
                bail!("consumed {n} of {expected} records before the deadline");
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    bytes += m.payload().map_or(0, <[u8]>::len);
                    n += 1;
                }
                Some(Err(e)) => bail!("consume: {e}"),
                None => {}
            }
        }
        let Some((t0, cpu0)) = first else {
            bail!("nothing consumed")
        };
        let secs = t0.elapsed().as_secs_f64().max(1e-6);
        let cpu = procs.snapshot().since(&cpu0, secs);
        let _ = bytes;
        Ok((n, secs, cpu))
    })
    .await?
}

pub struct Followed {
    pub events: i64,
    pub secs: f64,
    pub cpu: measure::CpuDelta,
    /// Time with no progress (polls 50 ms apart, gaps of 250 ms and more) between the first
    /// progress and the end: group joins and rebalances.
    pub stalled_secs: f64,
}

/// The statement [`applied`] runs.
pub async fn prepare_applied(session: &Session, ks: &str) -> anyhow::Result<PreparedStatement> {
    Ok(session
        .prepare(format!(
            "SELECT next_offset FROM {ks}.projection_offsets WHERE projection = ? AND generation = ? AND topic = ?"
        ))
        .await?)
}

/// Records of `topic` a projection generation has applied: its stored next offsets, summed over
/// the partitions (the bench's topics start at offset 0).
pub async fn applied(
    session: &Session,
    select: &PreparedStatement,
    projection: &str,
    generation: i32,
    topic: &str,
) -> anyhow::Result<i64> {
    Ok(session
        .execute_unpaged(select, (projection, generation, topic))
        .await?
        .into_rows_result()?
        .rows::<(Option<i64>,)>()?
        .filter_map(Result::ok)
        .filter_map(|(n,)| n)
        .sum())
}

/// Watch a projection generation's stored offsets until they cover `target` records; the rate is
/// taken from the first progress seen (after group join and the first batch) to the end.
#[allow(clippy::too_many_arguments)]
pub async fn follow(
    session: &Session,
    ks: &str,
    projection: &str,
    generation: i32,
    topic: &str,
    target: i64,
    procs: &Procs,
    timeout: Duration,
) -> anyhow::Result<Followed> {
    let select = prepare_applied(session, ks).await?;
    let pb = indicatif::ProgressBar::new(target as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>34} [{elapsed_precise}] {bar:30} {pos}/{len} ({per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_prefix(format!("{projection} g{generation}"));
    let started = Instant::now();
    let mut first: Option<(Instant, i64, measure::CpuSnapshot)> = None;
    let mut last_move = (Instant::now(), 0i64);
    let mut stalled = 0.0f64;
    loop {
        let done = applied(session, &select, projection, generation, topic).await?;
        pb.set_position(done.max(0) as u64);
        if done > 0 && first.is_none() {
            first = Some((Instant::now(), done, procs.snapshot()));
            last_move = (Instant::now(), done);
        }
        if first.is_some() && done != last_move.1 {
            let gap = last_move.0.elapsed().as_secs_f64();
            if gap >= 0.25 {
                stalled += gap;
            }
            last_move = (Instant::now(), done);
        }
        if done >= target {
            pb.finish_and_clear();
            let (t0, n0, cpu0) = first.context("no progress seen")?;
            let secs = t0.elapsed().as_secs_f64();
            if secs < 0.05 || target - n0 <= 0 {
                bail!("finished within one poll: not measurable (raise the backlog)");
            }
            return Ok(Followed {
                events: target - n0,
                secs,
                cpu: procs.snapshot().since(&cpu0, secs),
                stalled_secs: stalled,
            });
        }
        if started.elapsed() > timeout {
            pb.finish_and_clear();
            bail!("{projection} g{generation} reached {done} of {target} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn active_generation(session: &Session, ks: &str, name: &str) -> anyhow::Result<i32> {
    let rows = session
        .query_unpaged(
            format!("SELECT active_generation FROM {ks}.projections WHERE name = ?"),
            (name,),
        )
        .await?
        .into_rows_result()?;
    Ok(rows
        .maybe_first_row::<(Option<i32>,)>()?
        .and_then(|(g,)| g)
        .unwrap_or(1))
}

/// Cassandra's own count of the requests it coordinated, per table of `ks`
/// (`system_views.coordinator_{read,write}_latency`, Cassandra 4.1+), keyed "read <table>" and
/// "write <table>". Empty when the node has no such views (ScyllaDB): the rows that use it say so.
pub async fn cql_requests(session: &Session, ks: &str) -> std::collections::BTreeMap<String, i64> {
    let mut out = std::collections::BTreeMap::new();
    for kind in ["read", "write"] {
        let Ok(result) = session
            .query_unpaged(
                format!(
                    "SELECT table_name, count FROM system_views.coordinator_{kind}_latency \
                     WHERE keyspace_name = ?"
                ),
                (ks,),
            )
            .await
        else {
            continue;
        };
        let Ok(rows) = result.into_rows_result() else {
            continue;
        };
        let Ok(rows) = rows.rows::<(String, i64)>() else {
            continue;
        };
        for (table, count) in rows.flatten() {
            out.insert(format!("{kind} {table}"), count);
        }
    }
    out
}

/// The requests per operation between two [`cql_requests`] snapshots, as "write aggregates 1.00,
/// read … ", nonzero entries only; `None` when nothing was counted.
pub fn cql_requests_per_op(
    before: &std::collections::BTreeMap<String, i64>,
    after: &std::collections::BTreeMap<String, i64>,
    ops: u64,
) -> Option<(f64, String)> {
    if ops == 0 || after.is_empty() {
        return None;
    }
    let mut total = 0.0;
    let parts: Vec<String> = after
        .iter()
        .filter_map(|(k, v)| {
            let d = (v - before.get(k).copied().unwrap_or(0)) as f64 / ops as f64;
            (d >= 0.005).then(|| {
                total += d;
                format!("{k} {d:.2}")
            })
        })
        .collect();
    Some((total, parts.join(", ")))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::cql_requests_per_op;

    fn counts(entries: &[(&str, i64)]) -> BTreeMap<String, i64> {
        entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn requests_per_op_are_the_deltas_over_the_operations() {
        let before = counts(&[("read aggregates", 100), ("write publish_intents", 7)]);
        let after = counts(&[
            ("read aggregates", 110),
            ("write publish_intents", 27),
            ("write tenants", 0),
        ]);
        let (total, parts) = cql_requests_per_op(&before, &after, 10).expect("counted");
        assert!((total - 3.0).abs() < 1e-9, "{total}");
        assert_eq!(parts, "read aggregates 1.00, write publish_intents 2.00");
    }

    #[test]
    fn nothing_counted_is_none() {
        let before = counts(&[("read aggregates", 1)]);
        assert!(cql_requests_per_op(&before, &BTreeMap::new(), 10).is_none());
        assert!(cql_requests_per_op(&before, &before, 0).is_none());
    }
}
