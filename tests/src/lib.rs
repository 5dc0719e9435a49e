//! Test and benchmark harness: drives the real services against the real Kafka and CQL of the local
//! stack (`infra/dev up`). Nothing here is a mock.
//!
//! - [`settings`]: the stack's settings with a fresh topic, so each test reads only its own events;
//! - [`CommandApi`]: an in-process command API on port 0, or the real binary as a child process;
//! - [`read_topic`]: every record of a topic, with headers, up to its end offsets;
//! - [`dev`]: `infra/dev` sub-commands (stop and start a part) for failure tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use events::EventEnvelope;
use infra::Settings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use uuid::Uuid;

/// The stack's settings (defaults and `APP_…`), with a topic of the test's own, created now.
pub async fn settings_with_fresh_topic(label: &str) -> anyhow::Result<Settings> {
    let mut settings = Settings::load()?;
    let suffix = Uuid::now_v7().simple().to_string();
    settings.kafka.topic = format!("test.{label}.{suffix}");
    settings.kafka.dead_letter_topic = format!("test.{label}.{suffix}.dlq");
    settings.kafka.partitions = 3;
    infra::kafka::ensure_topics(&settings.kafka).await?;
    // Quick sweeps so crash-window tests finish fast.
    settings.command_api.sweeper_interval_ms = 300;
    settings.command_api.sweeper_grace_ms = 500;
    settings.command_api.sweeper_lookback_minutes = 5;
    Ok(settings)
}

/// Where cargo put the service binaries next to this test executable.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CQRS_TARGET_DIR") {
        let candidate = PathBuf::from(dir).join("debug");
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
        let app = command_api::App::build(settings).await?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(listener, async {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            http: client(),
            stop: Some(tx),
            task: Some(task),
            child: None,
        })
    }

    /// The real binary as a child process, with extra `APP_…` variables.
    pub async fn spawn_process(
        settings: &Settings,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut cmd = Command::new(bin_dir().join("command-api"));
        cmd.env("APP_COMMAND_API__ADDR", addr.to_string())
            .env("APP_KAFKA__TOPIC", &settings.kafka.topic)
            .env(
                "APP_KAFKA__DEAD_LETTER_TOPIC",
                &settings.kafka.dead_letter_topic,
            )
            .env(
                "APP_COMMAND_API__SWEEPER_GRACE_MS",
                settings.command_api.sweeper_grace_ms.to_string(),
            )
            .env(
                "APP_COMMAND_API__SWEEPER_INTERVAL_MS",
                settings.command_api.sweeper_interval_ms.to_string(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("starting the command-api binary")?;
        let api = Self {
            addr,
            http: client(),
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

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
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
