//! Typed settings: built-in defaults that fit the local stack, then an optional TOML file
//! (`APP_CONFIG_FILE`), then `APP_<SECTION>__<KEY>` environment variables.
//!
//! `APP_KAFKA__BROKERS=10.0.0.5:9092,10.0.0.6:9092` sets `kafka.brokers`, for instance.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Settings {
    /// The tenant of every request when authentication is switched off (`auth.enabled = false`);
    /// with authentication on, the tenant comes from each token's claim.
    pub tenant: String,
    pub auth: Auth,
    pub rate_limit: RateLimit,
    pub telemetry: Telemetry,
    pub kafka: Kafka,
    pub cql: Cql,
    pub command_api: CommandApi,
    pub query_api: QueryApi,
    pub projector: Projector,
    pub jobs: Jobs,
}

/// Bearer tokens (JWT) on both APIs; see docs/security.md.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Auth {
    /// `false` switches authentication off: every request acts for `tenant` with every scope.
    /// Only for local experiments; each start logs a warning.
    pub enabled: bool,
    /// The public keys tokens are verified with: a JWKS file's path or an `http(s)://` URL.
    pub jwks: String,
    /// How often the JWKS is read again (key rotation). An unknown `kid` also triggers a read, at
    /// most once per `jwks_min_refresh_ms`.
    pub jwks_refresh_ms: u64,
    pub jwks_min_refresh_ms: u64,
    /// The only accepted `iss`.
    pub issuer: String,
    /// The `aud` every token must name.
    pub audience: String,
    /// The claim that names the caller's tenant.
    pub tenant_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

/// Token buckets per tenant and per client (token subject), in each instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RateLimit {
    /// Requests per second a tenant may sustain (0: no limit), and how many it may send at once.
    pub tenant_per_second: u32,
    pub tenant_burst: u32,
    /// The same per client (a tenant's subject).
    pub client_per_second: u32,
    pub client_burst: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Telemetry {
    /// `pretty` for people, `json` for log shippers.
    pub format: String,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub filter: String,
    /// Where traces go: an OTLP/HTTP (protobuf) collector's base URL, e.g.
    /// `http://127.0.0.1:4318` (`/v1/traces` is appended). Empty: no traces are exported and no
    /// OpenTelemetry layer is installed.
    pub otlp_endpoint: String,
    /// The share of new traces sampled, 0.0–1.0 (parent-based: a span whose caller or event
    /// carries a trace context follows that trace's decision).
    pub sampling_ratio: f64,
    /// The `service.name` of this process's spans; empty: the binary's own name (`command-api`,
    /// `query-api`, `projector`, `stack-admin`).
    pub service_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Kafka {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    pub topic: String,
    pub dead_letter_topic: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub min_insync_replicas: i32,
    /// -1 keeps events forever: the topic is the system of record for replays.
    pub retention_ms: i64,
    /// How long a produce may wait for acknowledgement before it fails (bounds 503 latency).
    pub message_timeout_ms: u64,
    /// How long the producer holds a record back to batch it with others. 0 (the default): a lone
    /// command's record goes out at once; under load records still batch behind the request in
    /// flight (`max_in_flight`).
    pub linger_ms: u64,
    /// Produce requests in flight per broker connection (1 to 5; idempotence keeps the order
    /// either way). While they are all in flight, new records wait and go out together in the next
    /// request: batching that costs a lone record nothing, unlike a linger. Default 1.
    pub max_in_flight: u32,
    /// How often consumers (and the producer) refresh the topic's metadata: partitions added to
    /// the topic are consumed (and can be produced to) at most this long after they appear.
    pub metadata_refresh_ms: u64,
    /// Extra librdkafka properties for every client (TLS, SASL, …), e.g. in the TOML file:
    /// `[kafka.properties] "security.protocol" = "SSL"`.
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Cql {
    /// Comma-separated `host:port` list of contact points.
    pub nodes: String,
    pub keyspace: String,
    /// The replication map of `CREATE KEYSPACE`, as CQL.
    pub replication: String,
    /// Consistency of reads and writes (`LOCAL_QUORUM`, `QUORUM`, `ONE`, …).
    pub consistency: String,
    /// Consistency of LWT conditions (`LOCAL_SERIAL` or `SERIAL`).
    pub serial_consistency: String,
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub username: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CommandApi {
    pub addr: String,
    pub body_limit_bytes: usize,
    /// Attempts of the write path when a concurrent writer wins the LWT.
    pub max_lwt_attempts: u32,
    /// Entries of the in-process aggregate head cache.
    pub cache_capacity: usize,
    /// Idempotency keys remembered per aggregate.
    pub idempotency_keys_per_aggregate: usize,
    pub sweeper_interval_ms: u64,
    /// Intents younger than this are left to their writer. A writer stamps its intent, then
    /// writes it and runs its LWT (each at most one CQL request timeout), so the grace must exceed
    /// two request timeouts plus the clock skew between command-api hosts
    /// (`sweeper_clock_skew_ms`); a shorter one (tests, to sweep fast) is logged as a warning at start.
    pub sweeper_grace_ms: u64,
    /// The largest clock difference assumed between command-api hosts (NTP keeps it far below).
    pub sweeper_clock_skew_ms: u64,
    /// Where a sweeper starts when no sweeper ever recorded progress. Once progress exists, the
    /// sweepers go through every bucket after it, however old: none is skipped.
    pub sweeper_lookback_minutes: u32,
    /// How often the partition count of the topic is read again (new orders spread over
    /// partitions ops added).
    pub partition_refresh_ms: u64,
    /// Test-only fault injection: `none`, `abort_after_lwt` (the command fails after its LWT and
    /// before its produce) or `exit_after_lwt` (the process exits there). Never set in production.
    pub fault: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct QueryApi {
    pub addr: String,
    pub cache_capacity: usize,
    pub cache_ttl_ms: u64,
    pub min_version_wait_ms: u64,
    /// The Prometheus endpoints (`http://host:port/metrics`, comma-separated) of the command-api
    /// and projector instances whose figures the status page (`GET /status`) shows.
    pub status_sources: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Projector {
    /// Health, readiness and metrics.
    pub addr: String,
    /// Projections this instance runs; empty means all.
    pub projections: Vec<String>,
    pub batch_size: usize,
    pub max_apply_attempts: u32,
}

/// Background jobs (exports): the durable queue in CQL, the worker in the projector process and
/// where results go; see docs/operations.md#export-jobs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Jobs {
    /// Run the job worker in this projector process (`APP_JOBS__WORKER=false` turns it off).
    pub worker: bool,
    /// Where export files go, as a URL: `file:///absolute/folder`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix` (credentials from the usual `AWS_…`,
    /// `GOOGLE_…`, `AZURE_…` variables and `store_options`). Empty: exports cannot run.
    pub store: String,
    /// Extra `object_store` options (TOML only), e.g. `aws_region`, `aws_endpoint`.
    pub store_options: BTreeMap<String, String>,
    /// How long a worker's lease on a job lasts without renewal; a job whose worker died is taken
    /// over this long after its last renewal.
    pub lease_ms: u64,
    /// How often an idle worker looks for runnable jobs.
    pub poll_ms: u64,
    /// Kafka offsets per part file (per partition): the unit of checkpointing.
    pub part_records: u64,
    /// Tests only: a pause after each part file, so a test can kill a worker mid-job. Keep 0.
    pub part_pause_ms: u64,
}

impl Default for Jobs {
    fn default() -> Self {
        Self {
            worker: true,
            store: String::new(),
            store_options: BTreeMap::new(),
            lease_ms: 15_000,
            poll_ms: 1_000,
            part_records: 100_000,
            part_pause_ms: 0,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            tenant: events::DEFAULT_TENANT.to_string(),
            auth: Auth::default(),
            rate_limit: RateLimit::default(),
            telemetry: Telemetry::default(),
            kafka: Kafka::default(),
            cql: Cql::default(),
            command_api: CommandApi::default(),
            query_api: QueryApi::default(),
            projector: Projector::default(),
            jobs: Jobs::default(),
        }
    }
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            enabled: true,
            jwks: String::new(),
            jwks_refresh_ms: 300_000,
            jwks_min_refresh_ms: 10_000,
            issuer: "cqrs-dev".into(),
            audience: "orders-api".into(),
            tenant_claim: "tenant".into(),
            leeway_secs: 30,
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            tenant_per_second: 1_000,
            tenant_burst: 2_000,
            client_per_second: 200,
            client_burst: 400,
        }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            format: "pretty".into(),
            filter: "info".into(),
            otlp_endpoint: String::new(),
            sampling_ratio: 1.0,
            service_name: String::new(),
        }
    }
}

impl Default for Kafka {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "orders.events".into(),
            dead_letter_topic: "orders.events.dlq".into(),
            partitions: 6,
            replication_factor: 1,
            min_insync_replicas: 1,
            retention_ms: -1,
            message_timeout_ms: 5_000,
            linger_ms: 0,
            max_in_flight: 1,
            metadata_refresh_ms: 3_000,
            properties: BTreeMap::new(),
        }
    }
}

impl Default for Cql {
    fn default() -> Self {
        Self {
            nodes: "127.0.0.1:9042".into(),
            keyspace: "orders".into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            consistency: "LOCAL_QUORUM".into(),
            serial_consistency: "LOCAL_SERIAL".into(),
            request_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            username: None,
            password: None,
        }
    }
}

impl CommandApi {
    /// The shortest safe grace: two CQL request timeouts (intent, LWT) plus the clock skew.
    pub fn min_sweeper_grace_ms(&self, cql_request_timeout_ms: u64) -> u64 {
        2 * cql_request_timeout_ms + self.sweeper_clock_skew_ms
    }
}

impl Default for CommandApi {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            body_limit_bytes: 64 * 1024,
            max_lwt_attempts: 8,
            cache_capacity: 100_000,
            idempotency_keys_per_aggregate: 32,
            sweeper_interval_ms: 2_000,
            // 2 x the CQL request timeout (5 s) + the clock skew margin (5 s) + 5 s to spare.
            sweeper_grace_ms: 20_000,
            sweeper_clock_skew_ms: 5_000,
            sweeper_lookback_minutes: 60,
            partition_refresh_ms: 5_000,
            fault: "none".into(),
        }
    }
}

impl Default for QueryApi {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8081".into(),
            cache_capacity: 100_000,
            cache_ttl_ms: 1_000,
            min_version_wait_ms: 5_000,
            status_sources: "http://127.0.0.1:8080/metrics,http://127.0.0.1:8082/metrics".into(),
        }
    }
}

impl Default for Projector {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8082".into(),
            projections: Vec::new(),
            batch_size: 500,
            max_apply_attempts: 3,
        }
    }
}

impl Kafka {
    pub fn message_timeout(&self) -> Duration {
        Duration::from_millis(self.message_timeout_ms)
    }
}

impl Cql {
    pub fn node_list(&self) -> Vec<String> {
        split_list(&self.nodes)
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

impl Settings {
    /// Defaults, then the file named by `APP_CONFIG_FILE` (if any), then `APP_…` variables.
    pub fn load() -> Result<Self, config::ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::Config::try_from(&Settings::default())?);
        if let Ok(path) = std::env::var("APP_CONFIG_FILE") {
            builder = builder.add_source(config::File::with_name(&path));
        }
        builder
            .add_source(
                config::Environment::with_prefix("APP")
                    .prefix_separator("_")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("projector.projections")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_without_a_file_or_variables() {
        let s = Settings::load().unwrap();
        assert_eq!(s.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(s.tenant, "default");
    }

    #[test]
    fn lists_are_split_and_trimmed() {
        assert_eq!(split_list(" a:1, b:2 ,,"), vec!["a:1", "b:2"]);
    }
}
