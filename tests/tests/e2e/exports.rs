//! Exports as jobs (`POST /v1/exports`, `GET|DELETE /v1/jobs/{id}`, the files), end to end: 100k
//! events of a 10-minute window in the past (plus events before and after it, and of another
//! tenant) in a topic of the test's own; the job worker in projector child processes, one of them
//! killed with SIGKILL mid-export; the Parquet files read back by pyarrow (an independent reader,
//! `CQRS_PYTHON`) and compared with the topic record by record.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, TimeDelta, Utc};
use events::OrderEvent;
use rdkafka::producer::FutureRecord;
use serde_json::json;
use tests::{
    envelope, read_topic, settings_with_fresh_topic, token, Keyspace, Projector, QueryApi, Reply,
};
use uuid::Uuid;

/// Events of the tenant inside the window.
const IN_WINDOW: usize = 100_000;
/// Events of the tenant before and after the window, and of another tenant inside it.
const BEFORE: usize = 1_000;
const AFTER: usize = 1_000;
const OTHER_TENANT: usize = 2_000;

/// One row as pyarrow read it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    partition: i32,
    offset: i64,
    event_id: String,
    tenant_id: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    occurred_at_micros: i64,
    payload: serde_json::Value,
}

/// The python with pyarrow that `infra/dev test` points `CQRS_PYTHON` at.
fn python() -> anyhow::Result<PathBuf> {
    let python = std::env::var("CQRS_PYTHON").map_err(|_| {
        anyhow::anyhow!(
            "CQRS_PYTHON is not set: it names a python with pyarrow (infra/dev test sets it to the \
             venv under the dev cache; or: python3 -m venv v && v/bin/pip install pyarrow==26.0.1 \
             && export CQRS_PYTHON=$PWD/v/bin/python)"
        )
    })?;
    let python = PathBuf::from(python);
    if !python.exists() {
        bail!("CQRS_PYTHON={} does not exist", python.display());
    }
    Ok(python)
}

/// Read Parquet files with pyarrow; one row per event.
fn read_parquet(files: &[PathBuf]) -> anyhow::Result<Vec<Row>> {
    const SCRIPT: &str = r#"
import calendar, json, sys
import pyarrow.parquet as pq
out = open(sys.argv[1], "w")
for path in sys.argv[2:]:
    table = pq.read_table(path)
    assert table.schema.field("occurred_at").type.tz == "UTC", table.schema
    for r in table.to_pylist():
        out.write(json.dumps({
            "partition": r["kafka_partition"], "offset": r["kafka_offset"],
            "event_id": r["event_id"], "tenant_id": r["tenant_id"],
            "aggregate_id": r["aggregate_id"], "sequence": r["sequence"],
            "event_type": r["event_type"],
            "occurred_at_micros": calendar.timegm(r["occurred_at"].utctimetuple()) * 1_000_000 + r["occurred_at"].microsecond,
            "payload": json.loads(r["payload"]),
        }) + "\n")
out.close()
"#;
    let out = std::env::temp_dir().join(format!("exports-{}.jsonl", Uuid::now_v7()));
    let status = std::process::Command::new(python()?)
        .arg("-c")
        .arg(SCRIPT)
        .arg(&out)
        .args(files)
        .status()
        .context("running python")?;
    if !status.success() {
        bail!("pyarrow could not read the files: {status}");
    }
    let text = std::fs::read_to_string(&out)?;
    let _ = std::fs::remove_file(&out);
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)?;
            Ok(Row {
                partition: v["partition"].as_i64().context("partition")? as i32,
                offset: v["offset"].as_i64().context("offset")?,
                event_id: v["event_id"].as_str().context("event_id")?.into(),
                tenant_id: v["tenant_id"].as_str().context("tenant_id")?.into(),
                aggregate_id: v["aggregate_id"].as_str().context("aggregate_id")?.into(),
                sequence: v["sequence"].as_i64().context("sequence")?,
                event_type: v["event_type"].as_str().context("event_type")?.into(),
                occurred_at_micros: v["occurred_at_micros"].as_i64().context("occurred_at")?,
                payload: v["payload"].clone(),
            })
        })
        .collect()
}

/// The topic's records as rows, by (partition, offset).
fn topic_rows(records: &[tests::Record]) -> anyhow::Result<BTreeMap<(i32, i64), Row>> {
    records
        .iter()
        .map(|r| {
            let e = r.envelope()?;
            Ok((
                (r.partition, r.offset),
                Row {
                    partition: r.partition,
                    offset: r.offset,
                    event_id: e.event_id.to_string(),
                    tenant_id: e.tenant_id.clone(),
                    aggregate_id: e.aggregate_id.to_string(),
                    sequence: e.sequence as i64,
                    event_type: e.event_type.clone(),
                    occurred_at_micros: e.occurred_at.timestamp_micros(),
                    payload: e.payload.clone(),
                },
            ))
        })
        .collect()
}

/// Produce `events` (record time, tenant), in record-time order, with explicit record times.
async fn produce(
    settings: &infra::Settings,
    events: &[(DateTime<Utc>, String)],
) -> anyhow::Result<()> {
    let producer = infra::kafka::producer(&settings.kafka)?;
    let topic = settings.kafka.topic.clone();
    // Five events per order, sequences 1..=5.
    let mut order = Uuid::now_v7();
    for (chunk_index, chunk) in events.chunks(5_000).enumerate() {
        let mut sends = Vec::with_capacity(chunk.len());
        for (i, (at, tenant)) in chunk.iter().enumerate() {
            let n = chunk_index * 5_000 + i;
            if n % 5 == 0 {
                order = Uuid::now_v7();
            }
            let mut e = envelope(
                tenant,
                order,
                (n % 5) as u64 + 1,
                OrderEvent::OrderCancelled {
                    reason: format!("#{n}"),
                },
            );
            e.occurred_at = *at;
            let payload = e.to_json();
            let key = e.key();
            let producer = producer.clone();
            let topic = topic.clone();
            let at = at.timestamp_millis();
            sends.push(async move {
                producer
                    .send(
                        FutureRecord::to(&topic)
                            .key(&key)
                            .payload(&payload)
                            .timestamp(at),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))
            });
        }
        for result in futures::future::join_all(sends).await {
            result?;
        }
    }
    Ok(())
}

/// Run the `stack-admin` binary with the test's settings.
fn stack_admin(settings: &infra::Settings, args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new(tests::bin_dir().join("stack-admin"))
        .envs(tests::settings_env(settings)?)
        .args(args)
        .status()
        .context("running stack-admin (cargo build -p infra --bin stack-admin)")?;
    if !status.success() {
        bail!("stack-admin {args:?}: {status}");
    }
    Ok(())
}

fn at_ms(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

struct Api<'a> {
    api: &'a QueryApi,
}

impl Api<'_> {
    async fn post(&self, body: serde_json::Value, key: Option<&str>) -> anyhow::Result<Reply> {
        let mut req = self.api.http.post(self.api.url("/v1/exports")).json(&body);
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        Reply::from(req.send().await?).await
    }

    async fn job(&self, id: &str) -> anyhow::Result<serde_json::Value> {
        let reply = self.api.get(&format!("/v1/jobs/{id}")).await?;
        if reply.status != 200 {
            bail!("GET job {id}: {} {}", reply.status, reply.body);
        }
        Ok(reply.body)
    }

    /// Poll until the job is finished; returns it and every progress seen on the way.
    async fn wait(
        &self,
        id: &str,
        timeout: Duration,
        mut on_progress: impl FnMut(&serde_json::Value) -> anyhow::Result<()>,
    ) -> anyhow::Result<serde_json::Value> {
        let start = Instant::now();
        loop {
            let job = self.job(id).await?;
            on_progress(&job)?;
            match job["state"].as_str() {
                Some("succeeded") => return Ok(job),
                Some("failed") | Some("cancelled") => bail!("job {id} ended: {job}"),
                _ => {}
            }
            if start.elapsed() > timeout {
                bail!("job {id} not done within {timeout:?}: {job}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Download every file of a succeeded job into `dir`; returns the parts' paths in order and
    /// the manifest.
    async fn download(
        &self,
        job: &serde_json::Value,
        dir: &Path,
    ) -> anyhow::Result<(Vec<PathBuf>, serde_json::Value)> {
        std::fs::create_dir_all(dir)?;
        let manifest_href = job["result"]["manifest"]
            .as_str()
            .context("manifest link")?;
        let manifest: serde_json::Value = self
            .api
            .http
            .get(self.api.url(manifest_href))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut paths = Vec::new();
        for file in job["result"]["files"].as_array().context("files")? {
            let href = file["href"].as_str().context("href")?;
            let name = file["name"].as_str().context("name")?;
            let response = self
                .api
                .http
                .get(self.api.url(href))
                .send()
                .await?
                .error_for_status()?;
            let bytes = response.bytes().await?;
            assert_eq!(
                bytes.len() as u64,
                file["bytes"].as_u64().unwrap_or(0),
                "{name}"
            );
            let path = dir.join(name);
            std::fs::write(&path, &bytes)?;
            paths.push(path);
        }
        Ok((paths, manifest))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_run_as_jobs_resume_after_a_kill_and_chain_without_gaps_or_repeats() {
    python().expect("pyarrow is needed");
    let mut settings = settings_with_fresh_topic("exports").await.unwrap();
    let keyspace = Keyspace::fresh(&mut settings).await.unwrap();
    let store_dir = std::env::temp_dir().join(format!("exports-store-{}", Uuid::now_v7()));
    settings.jobs.store = format!("file://{}", store_dir.display());
    settings.jobs.part_records = 5_000;
    settings.jobs.lease_ms = 4_000;
    settings.jobs.poll_ms = 200;
    settings.jobs.part_pause_ms = 150;
    // The projections are not what this test is about: one light one keeps the projector busy
    // with little.
    settings.projector.projections = vec!["order_history".into()];
    let tenant = settings.tenant.clone();
    let other = format!("{tenant}.other");

    // A 10-minute window half an hour ago: the tenant's 100k events spread over it, events of
    // another tenant inside it, and the tenant's events just before and just after it; produced in
    // record-time order.
    let from = at_ms(Utc::now() - TimeDelta::minutes(30));
    let to = from + TimeDelta::minutes(10);
    let window_ms = (to - from).num_milliseconds();
    let mut events: Vec<(DateTime<Utc>, String)> = Vec::new();
    for i in 0..IN_WINDOW {
        let offset_ms = (i as i64 * window_ms) / IN_WINDOW as i64;
        events.push((from + TimeDelta::milliseconds(offset_ms), tenant.clone()));
    }
    for i in 0..OTHER_TENANT {
        let offset_ms = (i as i64 * window_ms) / OTHER_TENANT as i64;
        events.push((from + TimeDelta::milliseconds(offset_ms), other.clone()));
    }
    for i in 0..BEFORE {
        events.push((
            from - TimeDelta::minutes(5) + TimeDelta::milliseconds(i as i64 * 100),
            tenant.clone(),
        ));
    }
    for i in 0..AFTER {
        events.push((to + TimeDelta::milliseconds(i as i64 * 100), tenant.clone()));
    }
    events.sort_by_key(|(at, _)| *at);
    let started = Instant::now();
    produce(&settings, &events).await.unwrap();
    eprintln!(
        "produced {} events in {:?}",
        events.len(),
        started.elapsed()
    );

    let api = QueryApi::spawn(&settings).await.unwrap();
    let jobs = Api { api: &api };
    let mut worker = Projector::spawn_process(&settings, &[]).await.unwrap();

    // The window's events of the tenant, from the topic itself.
    let records = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    let all = topic_rows(&records).unwrap();
    let expected: BTreeMap<(i32, i64), Row> = all
        .iter()
        .filter(|(_, r)| {
            r.tenant_id == tenant
                && r.occurred_at_micros >= from.timestamp_micros()
                && r.occurred_at_micros < to.timestamp_micros()
        })
        .map(|(k, r)| (*k, r.clone()))
        .collect();
    assert_eq!(expected.len(), IN_WINDOW);

    // --- The export, with an Idempotency-Key -------------------------------------------------
    let body = json!({"from": from.to_rfc3339(), "to": to.to_rfc3339(), "format": "parquet"});
    let first = jobs.post(body.clone(), Some("window-1")).await.unwrap();
    assert_eq!(first.status, 202, "{}", first.body);
    let location = first.header("location").unwrap().to_string();
    let id_a = first.body["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/jobs/{id_a}"));
    assert!(["queued", "running"].contains(&first.body["state"].as_str().unwrap()));
    let again = jobs.post(body.clone(), Some("window-1")).await.unwrap();
    assert_eq!(again.status, 202);
    assert_eq!(
        again.header("location"),
        Some(location.as_str()),
        "same key, same job"
    );
    let reused = jobs
        .post(
            json!({"from": from.to_rfc3339(), "to": to.to_rfc3339(), "format": "jsonl"}),
            Some("window-1"),
        )
        .await
        .unwrap();
    assert_eq!(reused.status, 422);
    assert_eq!(reused.body["type"], "/problems/idempotency-key-reused");

    // Another tenant's token: the job does not exist for it.
    let outsider = tests::client();
    let outsider_token = token(&settings, &other, &[infra::auth::EVENTS_READ]).unwrap();
    let foreign = outsider
        .get(api.url(&location))
        .bearer_auth(&outsider_token)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 404);
    let unknown = api
        .get(&format!("/v1/jobs/{}", Uuid::now_v7()))
        .await
        .unwrap();
    assert_eq!(unknown.status, 404);
    let foreign: serde_json::Value = foreign.json().await.unwrap();
    assert_eq!(
        foreign["type"], unknown.body["type"],
        "exactly like an unknown job"
    );
    assert_eq!(foreign["title"], unknown.body["title"]);

    // Progress moves while it runs: events only grow, below the estimate, up to the result.
    let mut seen: Vec<i64> = Vec::new();
    let job_a = jobs
        .wait(&id_a, Duration::from_secs(300), |job| {
            let p = &job["progress"];
            let events = p["events"].as_i64().unwrap_or(0);
            if let Some(estimate) = p["estimated_events"].as_i64() {
                assert!(events <= estimate, "{p}");
                assert!(estimate >= IN_WINDOW as i64, "{p}");
            }
            if seen.last() != Some(&events) {
                assert!(
                    seen.last().is_none_or(|last| *last <= events),
                    "{seen:?} then {events}"
                );
                seen.push(events);
            }
            Ok(())
        })
        .await
        .unwrap();
    assert!(
        seen.iter()
            .filter(|e| **e > 0 && **e < IN_WINDOW as i64)
            .count()
            >= 2,
        "progress seen: {seen:?}"
    );
    assert_eq!(job_a["progress"]["events"], IN_WINDOW as i64);
    assert_eq!(job_a["result"]["events"], IN_WINDOW as i64);

    let (files_a, manifest_a) = jobs
        .download(&job_a, &store_dir.join("download-a"))
        .await
        .unwrap();
    assert!(files_a.len() > 3, "several parts: {files_a:?}");
    assert!(files_a
        .iter()
        .all(|f| f.extension().is_some_and(|e| e == "parquet")));
    let rows_a = read_parquet(&files_a).unwrap();
    assert_eq!(rows_a.len(), IN_WINDOW, "every event once");
    let by_offset: BTreeMap<(i32, i64), Row> = rows_a
        .iter()
        .map(|r| ((r.partition, r.offset), r.clone()))
        .collect();
    assert_eq!(by_offset.len(), rows_a.len(), "no record twice");
    assert_eq!(
        by_offset, expected,
        "exactly the window's events of the tenant, as in the topic"
    );
    let ids: BTreeSet<&str> = rows_a.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids.len(), IN_WINDOW);
    // The manifest: the topic, the offsets per partition, the files.
    assert_eq!(manifest_a["topic"], settings.kafka.topic);
    assert_eq!(manifest_a["events"], IN_WINDOW as u64);
    assert_eq!(manifest_a["format"], "parquet");
    let partitions = manifest_a["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 3);
    for p in partitions {
        let partition = p["partition"].as_i64().unwrap() as i32;
        let to_offset = p["to_offset"].as_i64().unwrap();
        let from_offset = p["from_offset"].as_i64().unwrap();
        // It ends right after the partition's last event of the window.
        let last = expected
            .keys()
            .filter(|(q, _)| *q == partition)
            .map(|(_, o)| *o)
            .max();
        assert_eq!(last.map(|o| o + 1), Some(to_offset), "{p}");
        let first = expected
            .keys()
            .filter(|(q, _)| *q == partition)
            .map(|(_, o)| *o)
            .min();
        assert!(first.is_some_and(|f| f >= from_offset), "{p}");
    }

    // --- The same export, its worker killed mid-way (SIGKILL) ---------------------------------
    let second = jobs.post(body.clone(), None).await.unwrap();
    assert_eq!(second.status, 202);
    let id_b = second.body["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    loop {
        let job = jobs.job(&id_b).await.unwrap();
        let events = job["progress"]["events"].as_i64().unwrap_or(0);
        let estimate = job["progress"]["estimated_events"]
            .as_i64()
            .unwrap_or(i64::MAX);
        if events > 0 && events < estimate && job["progress"]["parts_done"].as_i64() > Some(0) {
            eprintln!("killing the worker at {events} of ~{estimate} events");
            break;
        }
        assert!(
            job["state"] != "succeeded",
            "the job finished before the kill: {job}"
        );
        assert!(start.elapsed() < Duration::from_secs(120), "{job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.kill();
    let killed_at = jobs.job(&id_b).await.unwrap();
    assert_eq!(killed_at["state"], "running");
    let parts_done_at_kill = killed_at["progress"]["parts_done"].as_i64().unwrap();
    let mut worker = Projector::spawn_process(&settings, &[]).await.unwrap();
    let job_b = jobs
        .wait(&id_b, Duration::from_secs(300), |_| Ok(()))
        .await
        .unwrap();
    assert!(job_b["attempts"].as_i64().unwrap() >= 2, "{job_b}");
    let (files_b, manifest_b) = jobs
        .download(&job_b, &store_dir.join("download-b"))
        .await
        .unwrap();
    let rows_b = read_parquet(&files_b).unwrap();
    assert_eq!(rows_b, rows_a, "the same content as the undisturbed export");
    assert_eq!(manifest_b["partitions"], manifest_a["partitions"]);
    assert_eq!(manifest_b["files"], manifest_a["files"], "the same parts");
    assert!(parts_done_at_kill < manifest_b["files"].as_array().unwrap().len() as i64);

    // --- The next export starts where the first ended (after_job) -----------------------------
    let newer: Vec<(DateTime<Utc>, String)> = (0..500)
        .map(|_| (Utc::now(), tenant.clone()))
        .chain((0..100).map(|_| (Utc::now(), other.clone())))
        .collect();
    produce(&settings, &newer).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let third = jobs
        .post(
            json!({
                "from": from.to_rfc3339(),
                "to": (Utc::now() + TimeDelta::hours(1)).to_rfc3339(),
                "after_job": id_a,
            }),
            None,
        )
        .await
        .unwrap();
    assert_eq!(third.status, 202, "{}", third.body);
    let capped =
        DateTime::parse_from_rfc3339(third.body["request"]["to"].as_str().unwrap()).unwrap();
    assert!(
        capped <= Utc::now(),
        "a `to` in the future is capped to now"
    );
    let id_c = third.body["id"].as_str().unwrap().to_string();
    let job_c = jobs
        .wait(&id_c, Duration::from_secs(120), |_| Ok(()))
        .await
        .unwrap();
    let (files_c, manifest_c) = jobs
        .download(&job_c, &store_dir.join("download-c"))
        .await
        .unwrap();
    let mut rows_c = BTreeMap::new();
    for file in &files_c {
        assert_eq!(file.extension().and_then(|e| e.to_str()), Some("jsonl"));
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let e = events::EventEnvelope::from_json(line.as_bytes()).unwrap();
            assert!(
                rows_c.insert(e.event_id.to_string(), e).is_none(),
                "an event twice"
            );
        }
    }
    let records = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    let ends_a: BTreeMap<i64, i64> = manifest_a["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap(),
                p["to_offset"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected_c: BTreeSet<String> = records
        .iter()
        .filter(|r| r.offset >= ends_a[&(r.partition as i64)])
        .map(|r| r.envelope().unwrap())
        .filter(|e| e.tenant_id == tenant)
        .map(|e| e.event_id.to_string())
        .collect();
    assert_eq!(
        expected_c.len(),
        AFTER + 500,
        "the later events of the tenant"
    );
    assert_eq!(
        rows_c.keys().cloned().collect::<BTreeSet<_>>(),
        expected_c,
        "exactly the tenant's events after the first export's end offsets"
    );
    let ids_a: BTreeSet<String> = rows_a.iter().map(|r| r.event_id.clone()).collect();
    assert!(ids_a.is_disjoint(&expected_c), "nothing in both exports");
    assert_eq!(manifest_c["after_job"], json!(id_a));
    for p in manifest_c["partitions"].as_array().unwrap() {
        assert_eq!(
            p["from_offset"].as_i64(),
            ends_a.get(&p["partition"].as_i64().unwrap()).copied(),
            "starts exactly where the first ended"
        );
    }
    // stack-admin export continues from a job's manifest too, and writes Parquet and a manifest.
    let manifest_path = store_dir.join("manifest-a.json");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest_a).unwrap()).unwrap();
    let local = store_dir.join("local.parquet");
    let local_manifest = store_dir.join("local.manifest.json");
    stack_admin(
        &settings,
        &[
            "export",
            "--tenant",
            &tenant,
            "--from-offsets",
            manifest_path.to_str().unwrap(),
            "--format",
            "parquet",
            "--out",
            local.to_str().unwrap(),
            "--manifest",
            local_manifest.to_str().unwrap(),
        ],
    )
    .unwrap();
    let local_ids: BTreeSet<String> = read_parquet(std::slice::from_ref(&local))
        .unwrap()
        .into_iter()
        .map(|r| r.event_id)
        .collect();
    assert_eq!(local_ids, expected_c, "stack-admin from the job's manifest");
    let chained = store_dir.join("chained.jsonl");
    stack_admin(
        &settings,
        &[
            "export",
            "--tenant",
            &tenant,
            "--from-offsets",
            local_manifest.to_str().unwrap(),
            "--out",
            chained.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&chained).unwrap(),
        "",
        "nothing after the end of the last export"
    );

    let bad_after = jobs
        .post(
            json!({"from": from.to_rfc3339(), "to": to.to_rfc3339(), "after_job": Uuid::now_v7()}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(bad_after.status, 422);
    assert_eq!(bad_after.body["errors"][0]["field"], "after_job");

    // --- Cancelling ----------------------------------------------------------------------------
    let fourth = jobs.post(body.clone(), None).await.unwrap();
    let id_d = fourth.body["id"].as_str().unwrap().to_string();
    let cancel = |id: String| {
        let api = &api;
        async move {
            Reply::from(
                api.http
                    .delete(api.url(&format!("/v1/jobs/{id}")))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
            .unwrap()
        }
    };
    let cancelled = cancel(id_d.clone()).await;
    assert_eq!(cancelled.status, 202, "{}", cancelled.body);
    assert_eq!(cancelled.body["state"], "cancelled");
    assert_eq!(
        cancel(id_d.clone()).await.status,
        202,
        "cancelling twice is harmless"
    );
    let finished = cancel(id_a.clone()).await;
    assert_eq!(finished.status, 409);
    assert_eq!(finished.body["type"], "/problems/job-finished");
    // The cancelled job stays cancelled and gets no result, whatever the worker had begun.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d = jobs.job(&id_d).await.unwrap();
    assert_eq!(d["state"], "cancelled");
    assert!(d["result"].is_null());
    let missing = api
        .get(&format!("/v1/jobs/{id_d}/files/manifest.json"))
        .await
        .unwrap();
    assert_eq!(missing.status, 404);
    let bad_name = api
        .get(&format!("/v1/jobs/{id_a}/files/..%2Fsecret"))
        .await
        .unwrap();
    assert_eq!(bad_name.status, 400);

    worker.kill();
    api.stop().await.unwrap();
    keyspace.drop_keyspace().await.unwrap();
    let _ = std::fs::remove_dir_all(&store_dir);
}
