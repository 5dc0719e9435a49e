//! Test and benchmark harness: drives the real services against the real Kafka and CQL of the local
//! stack (`infra/dev up`). Nothing here is a mock.
//!
//! - [`settings_with_fresh_topic`]: the stack's settings with a fresh topic and tenant, so each test
//!   reads only its own events; [`settings_env`]: the same settings for a child process;
//! - [`CommandApi`]: an in-process command API on port 0, or the real binary as a child process;
//! - [`read_topic`]: every record of a topic, with headers, up to its end offsets;
//! - [`dev`]: `infra/dev` sub-commands (stop and start a part) for failure tests;
//!   [`dev_cluster`]: the same on the cluster stack (`infra/dev … --cluster`);
//! - [`faults`]: the fault suite (steady load through HAProxy while parts of the cluster fail);
//! - [`Keyspace`]: a migrated keyspace of the test's own, its read-model rows, and [`Keyspace::drain`]
//!   (wait until the projector's stored offsets reach the topic's end);
//! - [`Projector`]: the projector in process, or the real binary as a child process (SIGKILL);
//! - [`QueryApi`]: an in-process query API on port 0;
//! - [`envelope`]: an order event wrapped as the command API would publish it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use events::{EventEnvelope, EventMetadata, OrderEvent, ORDER_AGGREGATE};
use infra::Settings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use uuid::Uuid;

pub mod faults;

/// `event` as the `sequence`-th event of order `id`, in the envelope the command API publishes
/// (occurred now, fresh event and command ids).
pub fn envelope(tenant: &str, id: Uuid, sequence: u64, event: OrderEvent) -> EventEnvelope {
    let command_id = Uuid::now_v7();
    EventEnvelope {
        event_id: Uuid::now_v7(),
        tenant_id: tenant.to_string(),
        aggregate_type: ORDER_AGGREGATE.to_string(),
        aggregate_id: id,
        sequence,
        event_type: event.event_type().to_string(),
        schema_version: event.schema_version(),
        occurred_at: chrono::Utc::now(),
        metadata: EventMetadata {
            command_id,
            correlation_id: command_id.to_string(),
            causation_id: command_id.to_string(),
            traceparent: None,
            tracestate: None,
        },
        payload: event.to_payload(),
    }
}

/// The stack's settings (defaults and `APP_…`), with a topic of the test's own, created now, and a
/// tenant of its own: every aggregate row, publish intent and sweeper progress key carries the
/// tenant, so no other test's sweeper (sharing the keyspace) ever republishes this test's batches
/// into its own topic, and this test's read models are rows of its tenant only.
pub async fn settings_with_fresh_topic(label: &str) -> anyhow::Result<Settings> {
    settings_with_fresh_topic_of(label, 3).await
}

/// [`settings_with_fresh_topic`], the topic created with `partitions` partitions.
pub async fn settings_with_fresh_topic_of(
    label: &str,
    partitions: i32,
) -> anyhow::Result<Settings> {
    let mut settings = Settings::load()?;
    let suffix = Uuid::now_v7().simple().to_string();
    settings.tenant = format!("test.{label}.{suffix}");
    settings.kafka.topic = format!("test.{label}.{suffix}");
    settings.kafka.dead_letter_topic = format!("test.{label}.{suffix}.dlq");
    settings.kafka.partitions = partitions;
    infra::kafka::ensure_topics(&settings.kafka).await?;
    // Quick sweeps so crash-window tests finish fast.
    settings.command_api.sweeper_interval_ms = 300;
    settings.command_api.sweeper_grace_ms = 500;
    settings.command_api.sweeper_lookback_minutes = 5;
    Ok(settings)
}

/// `settings` as the `APP_…` variables a service binary reads (`APP_TENANT`,
/// `APP_KAFKA__TOPIC`, `APP_CQL__KEYSPACE`, `APP_COMMAND_API__SWEEPER_GRACE_MS`, …): every scalar
/// and list setting, so a child process runs with exactly the test's settings. Nested maps
/// (`kafka.properties`) and unset options are left to the inherited environment.
pub fn settings_env(settings: &Settings) -> anyhow::Result<Vec<(String, String)>> {
    fn scalar(value: &serde_json::Value) -> Option<String> {
        match value {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            serde_json::Value::Array(items) if !items.is_empty() => items
                .iter()
                .map(scalar)
                .collect::<Option<Vec<_>>>()
                .map(|items| items.join(",")),
            _ => None,
        }
    }
    let mut vars = Vec::new();
    let serde_json::Value::Object(sections) = serde_json::to_value(settings)? else {
        bail!("settings do not serialize to a map");
    };
    for (section, value) in &sections {
        match value {
            serde_json::Value::Object(keys) => {
                for (key, value) in keys {
                    if let Some(value) = scalar(value) {
                        vars.push((
                            format!("APP_{}__{}", section.to_uppercase(), key.to_uppercase()),
                            value,
                        ));
                    }
                }
            }
            other => {
                if let Some(value) = scalar(other) {
                    vars.push((format!("APP_{}", section.to_uppercase()), value));
                }
            }
        }
    }
    Ok(vars)
}

/// Where cargo put the service binaries next to this test executable.
pub fn bin_dir() -> PathBuf {
    // `infra/dev test` exports the binaries' folder (`<target>/<profile>`).
    if let Ok(dir) = std::env::var("CQRS_TARGET_DIR") {
        let candidate = PathBuf::from(dir);
        if candidate.join("command-api").exists() {
            return candidate;
        }
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/e2e-xxxx -> target/debug
    exe.parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A command API under test.
pub struct CommandApi {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    child: Option<Child>,
}

impl CommandApi {
    /// In this process, on a free port.
    pub async fn spawn(settings: Settings) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let http = client_for(&settings);
        let app = command_api::App::build(settings).await?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(listener, async {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            http,
            stop: Some(tx),
            task: Some(task),
            child: None,
        })
    }

    /// The real binary as a child process, with the test's settings ([`settings_env`]) and extra
    /// `APP_…` variables.
    pub async fn spawn_process(
        settings: &Settings,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut cmd = Command::new(bin_dir().join("command-api"));
        // The test's settings (tenant, topics, keyspace, sweeper timings, …), then its address.
        cmd.envs(settings_env(settings)?)
            .env("APP_COMMAND_API__ADDR", addr.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("starting the command-api binary")?;
        let api = Self {
            addr,
            http: client_for(settings),
            stop: None,
            task: None,
            child: Some(child),
        };
        api.wait_ready(Duration::from_secs(30)).await?;
        Ok(api)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if start.elapsed() > timeout {
                bail!("command-api at {} not ready within {timeout:?}", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `POST` JSON to `path` with optional headers; returns status, headers and body as JSON.
    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        let mut req = self.http.post(self.url(path)).json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Reply::from(req.send().await?).await
    }

    /// Place an order with one line; returns its id.
    pub async fn place_order(&self) -> anyhow::Result<Uuid> {
        let id = Uuid::now_v7();
        let reply = self
            .post(
                "/v1/orders",
                serde_json::json!({
                    "order_id": id, "customer_id": Uuid::now_v7(), "currency": "EUR",
                    "items": [{"sku": "FIRST", "quantity": 1, "unit_price_cents": 100}]
                }),
                &[],
            )
            .await?;
        if reply.status != 201 {
            bail!("placing an order answered {}: {}", reply.status, reply.body);
        }
        Ok(id)
    }

    /// Stop: gracefully for an in-process app, SIGKILL for a child process.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Wait for a child process to exit by itself (a fault switch), up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for CommandApi {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The value of a counter or gauge on a Prometheus endpoint (summed over the lines whose labels
/// contain `label`), 0 when absent.
pub async fn scrape(url: &str, name: &str, label: &str) -> anyhow::Result<f64> {
    let text = client().get(url).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// A client without credentials (operational routes, or to be refused).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

/// A client whose every request carries a bearer token for `settings.tenant` with every scope,
/// signed with the development key beside `settings.auth.jwks` (`infra/dev up` makes it); a
/// plain client when authentication is off.
pub fn client_for(settings: &Settings) -> reqwest::Client {
    authorized(
        settings,
        reqwest::Client::builder().timeout(Duration::from_secs(30)),
    )
    .build()
    .unwrap_or_default()
}

/// `builder` with the `Authorization` of [`client_for`] as a default header.
pub fn authorized(settings: &Settings, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    if !settings.auth.enabled {
        return builder;
    }
    match token(settings, &settings.tenant, &infra::auth::ALL_SCOPES) {
        Ok(token) => {
            let mut headers = reqwest::header::HeaderMap::new();
            if let Ok(v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
                headers.insert(reqwest::header::AUTHORIZATION, v);
            }
            builder.default_headers(headers)
        }
        Err(e) => {
            eprintln!("no token for the tests' requests (they will get 401): {e:#}");
            builder
        }
    }
}

/// A development token for `tenant` with `scopes`, valid for 6 hours.
pub fn token(settings: &Settings, tenant: &str, scopes: &[&str]) -> anyhow::Result<String> {
    infra::auth::dev::mint_for(
        settings,
        tenant,
        "tests",
        scopes,
        Duration::from_secs(6 * 3600),
    )
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
    pub elapsed: Duration,
}

impl Reply {
    pub async fn from(response: reqwest::Response) -> anyhow::Result<Self> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        let body = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into())
            })
        };
        Ok(Self {
            status,
            headers,
            body,
            elapsed: Duration::ZERO,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: HashMap<String, String>,
    pub payload: Vec<u8>,
}

impl Record {
    pub fn envelope(&self) -> anyhow::Result<EventEnvelope> {
        Ok(EventEnvelope::from_json(&self.payload)?)
    }
}

/// Every record of `topic`, from the beginning to the end offsets as they are now.
pub async fn read_topic(settings: &Settings, topic: &str) -> anyhow::Result<Vec<Record>> {
    let config = infra::kafka::base_config(&settings.kafka);
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config
            .clone()
            .set("group.id", format!("test-reader-{}", Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .first()
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        let mut ends = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, *p, Duration::from_secs(10))?;
            if high > low {
                ends.insert(*p, high);
                tpl.add_partition_offset(&topic, *p, Offset::Beginning)?;
            }
        }
        let mut records = Vec::new();
        if ends.is_empty() {
            return Ok(records);
        }
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut done: HashMap<i32, bool> = HashMap::new();
        while done.len() < ends.len() {
            if Instant::now() > deadline {
                bail!("reading {topic} timed out");
            }
            let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let msg = msg?;
            let end = ends.get(&msg.partition()).copied().unwrap_or(0);
            if msg.offset() < end {
                records.push(Record {
                    partition: msg.partition(),
                    offset: msg.offset(),
                    key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    headers: infra::kafka::header_map(msg.headers()),
                    payload: msg.payload().unwrap_or_default().to_vec(),
                });
            }
            if msg.offset() + 1 >= end {
                done.insert(msg.partition(), true);
            }
        }
        records.sort_by_key(|r| (r.partition, r.offset));
        Ok(records)
    })
    .await?
}

/// The envelopes of one aggregate in `records`, de-duplicated by sequence, in topic order.
pub fn sequences_of(records: &[Record], aggregate_id: Uuid) -> anyhow::Result<Vec<u64>> {
    let mut seen = std::collections::BTreeSet::new();
    let mut in_order = Vec::new();
    for r in records {
        let e = r.envelope()?;
        if e.aggregate_id == aggregate_id && seen.insert(e.sequence) {
            in_order.push(e.sequence);
        }
    }
    Ok(in_order)
}

/// Poll `check` until it returns `Some`, or fail after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            bail!("{what} did not happen within {timeout:?} (last error: {last_err:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Run `infra/dev <args…> --cluster`: the same sub-commands on the cluster stack (`kafka-1`,
/// `cassandra-2`, `command-api-1`, `haproxy`, … as parts; `kill`, `pause`, `resume` besides
/// `start` and `stop`).
pub fn dev_cluster(args: &[&str]) -> anyhow::Result<()> {
    let mut args = args.to_vec();
    args.push("--cluster");
    dev(&args)
}

/// Run `infra/dev <args…>` (the script the README documents) and require success.
pub fn dev(args: &[&str]) -> anyhow::Result<()> {
    let script = std::env::var("CQRS_DEV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("infra")
                .join("dev")
        });
    let status = Command::new(&script)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("running {} {args:?}", script.display()))?;
    if !status.success() {
        bail!("infra/dev {args:?} failed: {status}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The read side: a keyspace of the test's own, the projector and query-api in process or as child
// processes, and deterministic waits on the projector's stored offsets.
// ---------------------------------------------------------------------------------------------

/// The projections the projector runs, with the tables each owns (`<base>_g<generation>`): the
/// `read-models` crate's list, which the projector's own is checked against.
pub const PROJECTIONS: &[&read_models::ProjectionSchema] = read_models::ALL;

/// A CQL keyspace of the test's own (`test_rs_<uuid>`), migrated, so projections, offsets and
/// generations of one test never meet another's. Drop it with [`Keyspace::drop_keyspace`].
pub struct Keyspace {
    pub name: String,
    /// A session whose current keyspace is this one.
    pub session: std::sync::Arc<scylla::client::session::Session>,
    /// The registry reads (`projections`, `projection_offsets`, `projection_control`).
    pub registry: read_models::RegistryReader,
}

impl Keyspace {
    /// An existing keyspace `name`, read through `session`.
    pub fn open(name: &str, session: std::sync::Arc<scylla::client::session::Session>) -> Self {
        Self {
            registry: read_models::RegistryReader::new(session.clone(), name),
            name: name.to_string(),
            session,
        }
    }

    /// Point `settings` at a fresh keyspace and run the migrations on it.
    pub async fn fresh(settings: &mut Settings) -> anyhow::Result<Self> {
        settings.cql.keyspace = format!("test_rs_{}", Uuid::new_v4().simple());
        // The test's own session waits longer than the services do: schema changes and whole
        // table reads while the other tests load the same node.
        let mut cql = settings.cql.clone();
        cql.request_timeout_ms = 60_000;
        let admin = infra::cql::connect(&cql).await?;
        infra::migrations::run(&admin, &cql).await?;
        let session = infra::cql::connect_keyspace(&cql).await?;
        Ok(Self::open(&settings.cql.keyspace, session))
    }

    pub async fn drop_keyspace(self) -> anyhow::Result<()> {
        self.session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", self.name), ())
            .await?;
        Ok(())
    }

    /// The `projections` row of `name`: (active generation, building generation).
    pub async fn generations(&self, name: &str) -> anyhow::Result<Option<(i32, Option<i32>)>> {
        Ok(self
            .registry
            .projection(name)
            .await?
            .map(|state| (state.active_generation, state.building_generation)))
    }

    /// The stored next offsets of one generation of a projection on `topic`.
    pub async fn offsets(
        &self,
        projection: &str,
        generation: i32,
        topic: &str,
    ) -> anyhow::Result<std::collections::BTreeMap<i32, i64>> {
        Ok(self.registry.offsets(projection, generation, topic).await?)
    }

    /// Every row of a table, each rendered as text (all columns, in table order), sorted: two
    /// generations of a table hold the same rows exactly when these lists are equal.
    pub async fn table_rows(&self, table: &str) -> anyhow::Result<Vec<String>> {
        use futures::TryStreamExt;
        let pager = self
            .session
            .query_iter(format!("SELECT * FROM {table}"), ())
            .await
            .with_context(|| format!("reading {table}"))?;
        let mut rows: Vec<String> = pager
            .rows_stream::<scylla::value::Row>()?
            .map_ok(|row| format!("{:?}", row.columns))
            .try_collect()
            .await?;
        rows.sort();
        Ok(rows)
    }

    /// Wait until every projection's active generation has applied the topic up to its end
    /// offsets as they are now (its `projection_offsets` reach the high watermarks). No sleeping
    /// in the blind: it returns as soon as the stored offsets say so.
    pub async fn drain(&self, settings: &Settings, timeout: Duration) -> anyhow::Result<()> {
        let ends = end_offsets(settings, &settings.kafka.topic).await?;
        let start = Instant::now();
        loop {
            let mut behind = Vec::new();
            for projection in PROJECTIONS.iter().map(|p| p.name) {
                let Some((generation, _)) = self.generations(projection).await? else {
                    behind.push(format!("{projection}: not registered"));
                    continue;
                };
                let stored = self
                    .offsets(projection, generation, &settings.kafka.topic)
                    .await?;
                for (partition, end) in &ends {
                    let next = stored.get(partition).copied().unwrap_or(0);
                    if *end > 0 && next < *end {
                        behind.push(format!(
                            "{projection} g{generation} p{partition}: {next} < {end}"
                        ));
                    }
                }
            }
            if behind.is_empty() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("not drained within {timeout:?}: {behind:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `projection` is served from `generation`.
    pub async fn wait_active(
        &self,
        projection: &str,
        generation: i32,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        eventually(
            timeout,
            &format!("{projection} switching to g{generation}"),
            || async {
                Ok(self
                    .generations(projection)
                    .await?
                    .filter(|(active, _)| *active == generation)
                    .map(|_| ()))
            },
        )
        .await
    }
}

/// Every partition's high watermark (the offset the next record will get).
pub async fn end_offsets(
    settings: &Settings,
    topic: &str,
) -> anyhow::Result<std::collections::BTreeMap<i32, i64>> {
    let config = infra::kafka::base_config(&settings.kafka);
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create()?;
        let metadata = client.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let mut ends = std::collections::BTreeMap::new();
        for partition in metadata
            .topics()
            .first()
            .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let (_, high) = client.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
            ends.insert(partition, high);
        }
        Ok(ends)
    })
    .await?
}

/// A projector under test: in this process (stopped gracefully), or the real binary as a child
/// process (killed with SIGKILL).
pub struct Projector {
    /// Its ops endpoints (`/healthz`, `/metrics`); only known for a child process.
    pub addr: Option<SocketAddr>,
    /// Where a child process writes its logs.
    pub log: Option<PathBuf>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    child: Option<Child>,
}

impl Projector {
    /// `projector::run` in this process (ops endpoints on a free port).
    pub fn spawn(settings: &Settings) -> Self {
        let mut settings = settings.clone();
        settings.projector.addr = "127.0.0.1:0".into();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(projector::run(settings, async {
            let _ = rx.await;
        }));
        Self {
            addr: None,
            log: None,
            stop: Some(tx),
            task: Some(task),
            child: None,
        }
    }

    /// The real binary (`bin_dir()/projector`) as a child process with the test's settings
    /// ([`settings_env`]: keyspace, topics, tenant, …) and extra `APP_…` variables; returns once
    /// its `/healthz` answers. It listens on a free port, or on `APP_PROJECTOR__ADDR` when
    /// `extra_env` gives one (a projector restarted at the same address, e.g. one `/metrics`
    /// source).
    pub async fn spawn_process(
        settings: &Settings,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let binary = bin_dir().join("projector");
        if !binary.exists() {
            bail!(
                "{} is missing: build it first (cargo build -p projector, or infra/dev up)",
                binary.display()
            );
        }
        let addr: SocketAddr = match extra_env.iter().find(|(k, _)| *k == "APP_PROJECTOR__ADDR") {
            Some((_, given)) => given
                .parse()
                .with_context(|| format!("APP_PROJECTOR__ADDR {given:?}"))?,
            None => format!("127.0.0.1:{}", free_port()?).parse()?,
        };
        let log = std::env::temp_dir().join(format!(
            "projector-{}-{}.log",
            settings.cql.keyspace,
            Uuid::now_v7().simple()
        ));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(binary);
        // The test's settings (tenant, topics, keyspace, batch size, …), its extra variables,
        // then its address.
        cmd.envs(settings_env(settings)?)
            .env("APP_TELEMETRY__FORMAT", "json")
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.env("APP_PROJECTOR__ADDR", addr.to_string());
        let child = cmd.spawn().context("starting the projector binary")?;
        let projector = Self {
            addr: Some(addr),
            log: Some(log),
            stop: None,
            task: None,
            child: Some(child),
        };
        let http = client();
        eventually(
            Duration::from_secs(30),
            "the projector serving /healthz",
            || {
                let http = http.clone();
                async move {
                    let r = http.get(format!("http://{addr}/healthz")).send().await?;
                    Ok(r.status().is_success().then_some(()))
                }
            },
        )
        .await?;
        Ok(projector)
    }

    /// The value of a counter or gauge on a child process's `/metrics` (summed over the lines
    /// whose labels contain `label`), 0 when absent.
    pub async fn metric(&self, name: &str, label: &str) -> anyhow::Result<f64> {
        let Some(addr) = self.addr else {
            bail!("metrics are only scraped from a child process");
        };
        scrape(&format!("http://{addr}/metrics"), name, label).await
    }

    /// SIGKILL a child process (no goodbye: no offsets written, no group left).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop: gracefully in process, SIGKILL for a child process.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .context("the projector did not stop within 60 s")???;
        }
        self.kill();
        Ok(())
    }
}

impl Drop for Projector {
    fn drop(&mut self) {
        self.kill();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A query API in this process, on a free port.
pub struct QueryApi {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl QueryApi {
    pub async fn spawn(settings: &Settings) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(query_api::serve(listener, settings.clone(), async {
            let _ = rx.await;
        }));
        let api = Self {
            addr,
            http: client_for(settings),
            stop: Some(tx),
            task: Some(task),
        };
        eventually(
            Duration::from_secs(30),
            "query-api serving /healthz",
            || async {
                let r = api.http.get(api.url("/healthz")).send().await?;
                Ok(r.status().is_success().then_some(()))
            },
        )
        .await?;
        Ok(api)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Wait until the read models can be read (the projector created their tables): an unknown
    /// order answers 404 rather than 503.
    pub async fn wait_read_models(&self, timeout: Duration) -> anyhow::Result<()> {
        eventually(timeout, "query-api reading the read models", || async {
            let r = self.get(&format!("/v1/orders/{}", Uuid::nil())).await?;
            Ok((r.status == 404).then_some(()))
        })
        .await
    }

    /// `GET path`; status, headers and body as JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        Reply::from(self.http.get(self.url(path)).send().await?).await
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .context("query-api did not stop within 30 s")???;
        }
        Ok(())
    }
}

impl Drop for QueryApi {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
