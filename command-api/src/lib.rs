//! The command API: HTTP commands in, events out to Kafka, guarded by one LWT per aggregate row.
//!
//! A request is validated at the edge ([`routes`]), turned into a domain command, and run through
//! the [`write::WritePath`], which commits the new state and the event batch in CQL
//! ([`write::cql::CqlStore`]) before publishing the batch with [`publisher::Publisher`]. The
//! [`sweeper`] republishes batches whose writer died in between.

pub mod domain;
mod error;
pub mod openapi;
pub mod publisher;
pub mod routes;
pub mod sweeper;
pub mod write;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};
use infra::auth::{self, Authenticator};
use infra::http::{self, Readiness};
use infra::Settings;
use tokio::net::TcpListener;
use utoipa::OpenApi;

use crate::publisher::Publisher;
use crate::sweeper::SweepSettings;
use crate::write::cql::CqlStore;
use crate::write::{Limits, WritePath};

/// Everything a running command API holds.
pub struct App {
    pub write: Arc<WritePath>,
    pub auth: Arc<Authenticator>,
    pub publisher: Arc<Publisher>,
    pub readiness: Readiness,
    pub settings: Settings,
}

impl App {
    /// Connect to CQL and Kafka and prepare the write path.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let auth = Authenticator::from_settings(&settings).await?;
        let session = infra::cql::connect_keyspace(&settings.cql).await?;
        let publisher = Arc::new(Publisher::new(&settings.kafka).await?);
        let store = Arc::new(CqlStore::new(session.clone(), &settings).await?);
        let write = Arc::new(WritePath::new(
            store,
            publisher.clone(),
            Limits::from_settings(&settings.command_api),
        ));
        // The tenant of unauthenticated setups (and of data written before tokens named tenants)
        // is swept from the start.
        write.register_tenant(&settings.tenant).await?;
        let readiness = Readiness::new(vec![
            ("cql", http::cql_check(session)),
            ("kafka", http::kafka_client_check(publisher.probe())),
        ]);
        Ok(Self {
            write,
            auth,
            publisher,
            readiness,
            settings,
        })
    }

    /// The whole HTTP surface.
    pub fn router(&self) -> Router {
        let metrics = http::install_metrics();
        api_router(
            self.write.clone(),
            self.auth.clone(),
            self.settings.command_api.body_limit_bytes,
        )
        .merge(http::ops_routes(self.readiness.clone(), metrics))
    }

    /// Serve on `listener` until `shutdown` resolves, with the sweeper running beside; then finish
    /// in-flight commands and flush the producer.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let sweep_settings = SweepSettings::from_settings(&self.settings);
        let refresher = tokio::spawn(sweeper::refresh_partitions(
            self.publisher.clone(),
            sweep_settings.partition_refresh,
            stop_rx.clone(),
        ));
        let sweeper = tokio::spawn(sweeper::run(self.write.clone(), sweep_settings, stop_rx));
        let auth_maintenance = self.auth.spawn_maintenance();
        tracing::info!(addr = %listener.local_addr()?, "command-api listening");
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await?;
        auth_maintenance.abort();
        let _ = stop_tx.send(true);
        let _ = sweeper.await;
        let _ = refresher.await;
        let publisher = self.publisher.clone();
        tokio::task::spawn_blocking(move || publisher.flush(Duration::from_secs(10))).await?;
        tracing::info!("command-api stopped");
        Ok(())
    }
}

/// The command routes (bearer token with `orders:write`, rate limits) and `/openapi.json` over a
/// write path, with the body limit and the request plumbing (metrics, correlation ids); no
/// `/healthz` etc. Route tests call it on an in-memory one.
pub fn api_router(
    write: Arc<WritePath>,
    auth: Arc<Authenticator>,
    body_limit_bytes: usize,
) -> Router {
    routes::orders::router()
        .with_state(write)
        .route_layer(axum::middleware::from_fn_with_state(
            auth::ORDERS_WRITE,
            auth::require,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            auth,
            auth::authenticate,
        ))
        .route(
            "/openapi.json",
            get(|| async { Json(openapi::ApiDoc::openapi()) }),
        )
        .fallback(http::fallback)
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        .layer(axum::middleware::from_fn(http::track_metrics))
        .layer(axum::middleware::from_fn(http::correlation_id))
        // One server span per request, parented on the caller's `traceparent`; failures are
        // already logged where they happen.
        .layer(infra::telemetry::http_trace_layer().on_failure(()))
}

/// Run the service with the given settings until SIGTERM or Ctrl-C.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&settings.command_api.addr).await?;
    App::build(settings)
        .await?
        .serve(listener, http::shutdown_signal())
        .await
}
