//! The services under test run as child processes of this very binary (`bench --serve <role>`),
//! each exactly as its own `main.rs` runs it (settings from `APP_…`, telemetry, `run`), so that
//! every service has its own CPU account and resident memory, and the load generator's own CPU
//! does not count against them. The bare axum baselines are two more roles: `axum` (a JSON
//! handler, no store) and `axum-cql` (the raw CQL read of a view behind HTTP).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use infra::Settings;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Run one role until SIGTERM (this is the child side).
pub fn serve(role: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let settings = Settings::load()?;
        let telemetry = infra::telemetry::init(&settings.telemetry, role);
        let result = match role {
            "command-api" => command_api::run(settings).await,
            "query-api" => query_api::run(settings, infra::http::shutdown_signal()).await,
            "projector" => projector::run(settings, infra::http::shutdown_signal()).await,
            "axum" => bare_axum(&settings.query_api.addr).await,
            "axum-cql" => axum_cql(&settings).await,
            other => Err(anyhow::anyhow!("unknown role {other}")),
        };
        telemetry.shutdown();
        result
    })
}

#[derive(Serialize)]
struct Line {
    sku: &'static str,
    quantity: u32,
    unit_price_cents: i64,
}

/// The same shape as query-api's order view.
#[derive(Serialize)]
struct View {
    order_id: Uuid,
    customer_id: Uuid,
    currency: &'static str,
    status: &'static str,
    items: Vec<Line>,
    total_cents: i64,
    version: i64,
    placed_at: &'static str,
    updated_at: &'static str,
}

async fn order(Path(order_id): Path<Uuid>) -> Json<View> {
    Json(View {
        order_id,
        customer_id: Uuid::nil(),
        currency: "EUR",
        status: "shipped",
        items: vec![
            Line {
                sku: "SKU-1",
                quantity: 1,
                unit_price_cents: 1250,
            },
            Line {
                sku: "SKU-2",
                quantity: 2,
                unit_price_cents: 499,
            },
            Line {
                sku: "SKU-3",
                quantity: 1,
                unit_price_cents: 2999,
            },
        ],
        total_cents: 5247,
        version: 5,
        placed_at: "2026-01-01T00:00:00.000Z",
        updated_at: "2026-01-01T00:00:00.000Z",
    })
}

/// The smallest honest JSON endpoint: a path parameter parsed, a struct serialized.
async fn bare_axum(addr: &str) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/v1/orders/{id}", get(order))
        .route("/readyz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(infra::http::shutdown_signal())
        .await?;
    Ok(())
}

/// The orders generation the `axum-cql` role reads (`BENCH_ORDERS_GENERATION`).
pub const GENERATION_VAR: &str = "BENCH_ORDERS_GENERATION";

struct CqlRead {
    session: Arc<scylla::client::session::Session>,
    select: scylla::statement::prepared::PreparedStatement,
    tenant: String,
}

#[derive(Deserialize, Serialize)]
struct StoredLine {
    sku: String,
    quantity: u32,
    unit_price_cents: i64,
}

#[derive(Serialize)]
struct ReadView {
    order_id: Uuid,
    customer_id: Uuid,
    currency: String,
    status: String,
    items: Vec<StoredLine>,
    total_cents: i64,
    version: i64,
    placed_at: String,
    updated_at: String,
}

type DetailRow = (
    Uuid,
    String,
    String,
    String,
    i64,
    i64,
    DateTime<Utc>,
    DateTime<Utc>,
);

/// The least an HTTP service serving the view must do per uncached read: the raw CQL point read
/// (query-api's statement, one request), the items' JSON parsed and the view serialized. No auth,
/// tenants, cache, metrics, tracing or problem bodies.
async fn order_from_cql(
    State(read): State<Arc<CqlRead>>,
    Path(order_id): Path<Uuid>,
) -> Result<Json<ReadView>, StatusCode> {
    let rows = read
        .session
        .execute_unpaged(&read.select, (read.tenant.as_str(), order_id))
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?
        .into_rows_result()
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let row = rows
        .maybe_first_row::<DetailRow>()
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .ok_or(StatusCode::NOT_FOUND)?;
    let (customer_id, currency, status, items, total_cents, version, placed_at, updated_at) = row;
    let items = serde_json::from_str(&items).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let at = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    Ok(Json(ReadView {
        order_id,
        customer_id,
        currency,
        status,
        items,
        total_cents,
        version,
        placed_at: at(placed_at),
        updated_at: at(updated_at),
    }))
}

/// Bare axum in front of the raw CQL read: the baseline that tells query-api's own overhead per
/// uncached read from what HTTP itself costs.
async fn axum_cql(settings: &Settings) -> anyhow::Result<()> {
    let generation: i32 = std::env::var(GENERATION_VAR)
        .context(GENERATION_VAR)?
        .parse()
        .context(GENERATION_VAR)?;
    let session = infra::cql::connect(&settings.cql).await?;
    let select = session
        .prepare(format!(
            "SELECT customer_id, currency, status, items, total_cents, version, placed_at, updated_at \
             FROM {}.order_detail_g{generation} WHERE tenant_id = ? AND order_id = ?",
            settings.cql.keyspace
        ))
        .await?;
    let read = Arc::new(CqlRead {
        session,
        select,
        tenant: settings.tenant.clone(),
    });
    let app = Router::new()
        .route("/v1/orders/{id}", get(order_from_cql))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(read);
    let listener = tokio::net::TcpListener::bind(&settings.query_api.addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(infra::http::shutdown_signal())
        .await?;
    Ok(())
}

/// A running child.
pub struct Service {
    pub addr: SocketAddr,
    child: Child,
}

pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl Service {
    /// Start `role` with the bench's settings overrides plus `extra` variables, and wait for its
    /// `/readyz`.
    pub async fn start(
        role: &str,
        settings: &Settings,
        extra: &[(&str, String)],
        log_dir: &PathBuf,
        http: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        let addr = free_addr()?;
        let exe = std::env::current_exe().context("locating the bench binary")?;
        std::fs::create_dir_all(log_dir)?;
        let log = std::fs::File::create(log_dir.join(format!("{role}.log")))?;
        let mut cmd = Command::new(exe);
        cmd.arg("--serve")
            .arg(role)
            .env("APP_CQL__KEYSPACE", &settings.cql.keyspace)
            .env("APP_KAFKA__TOPIC", &settings.kafka.topic)
            .env(
                "APP_KAFKA__DEAD_LETTER_TOPIC",
                &settings.kafka.dead_letter_topic,
            )
            .env(
                "APP_KAFKA__PARTITIONS",
                settings.kafka.partitions.to_string(),
            )
            // Rebalances and generation switches are logged at info: keep them in the log.
            .env("APP_TELEMETRY__FILTER", "warn,projector=info")
            .env("RUST_LOG", "warn,projector=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let addr_var = match role {
            "command-api" => "APP_COMMAND_API__ADDR",
            "projector" => "APP_PROJECTOR__ADDR",
            _ => "APP_QUERY_API__ADDR",
        };
        cmd.env(addr_var, addr.to_string());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {role}"))?;
        let mut service = Self { addr, child };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = service.child.try_wait() {
                bail!(
                    "{role} exited with {status} (see {}/{role}.log)",
                    log_dir.display()
                );
            }
            if let Ok(r) = http
                .get(format!("http://{addr}/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                if r.status().is_success() {
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "{role} not ready within 60 s (see {}/{role}.log)",
                    log_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(service)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (graceful), then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let started = Instant::now();
        while started.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
