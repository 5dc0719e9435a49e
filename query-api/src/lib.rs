//! query-api: HTTP over the read models the projector fills.
//!
//! A request flows: router (one file per resource in [`routes`]) → parameter validation
//! ([`params`], 400 for what does not parse, 422 for what is out of range) → the read models
//! ([`store::ReadModels`], CQL in production, always the projection's active generation) →
//! JSON, or an [`error::ApiError`] leaving as problem+json. Order views go through [`views`]:
//! an in-process [`cache`] keyed by generation, `ETag`s ([`etag`]) and the bounded `min_version`
//! wait that lets a client read its own write. Around every route: correlation ids, request
//! metrics by matched route, a server span (exported as a trace when traces are on), and the shared `/healthz`, `/readyz`, `/metrics`.
//!
//! [`run`] binds the configured address; [`serve`] takes a bound listener (port 0 in tests);
//! [`app`] builds the router alone so tests drive it with `oneshot`.

pub mod cache;
pub mod cursor;
pub mod error;
pub mod etag;
pub mod params;
pub mod routes;
pub mod store;
pub mod views;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::Router;
use infra::auth::{self, Authenticator};
use infra::http::{
    correlation_id, cql_check, fallback, install_metrics, kafka_check, ops_routes, track_metrics,
    Readiness,
};
use infra::Settings;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::cache::OrderCache;
use crate::store::cql::{spawn_refresher, CqlReadModels};
use crate::store::kafka::KafkaEndOffsets;
use crate::store::{EndOffsets, ReadModels};
use crate::views::OrderViews;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn ReadModels>,
    pub end_offsets: Arc<dyn EndOffsets>,
    pub views: Arc<OrderViews>,
    /// The upper bound of a `min_version` wait.
    pub min_version_wait: Duration,
    /// The event topic whose lag `/v1/projections` reports.
    pub topic: Arc<str>,
    pub readiness: Readiness,
    pub metrics: PrometheusHandle,
    pub auth: Arc<Authenticator>,
    /// This instance's readings of the generations being built (`/v1/projections` rates).
    pub builds: Arc<routes::projections::BuildReadings>,
}

impl AppState {
    pub fn new(
        settings: &Settings,
        store: Arc<dyn ReadModels>,
        end_offsets: Arc<dyn EndOffsets>,
        readiness: Readiness,
        auth: Arc<Authenticator>,
    ) -> Self {
        let q = &settings.query_api;
        let cache = OrderCache::new(q.cache_capacity, Duration::from_millis(q.cache_ttl_ms));
        Self {
            views: Arc::new(OrderViews::new(store.clone(), cache, &settings.kafka.topic)),
            store,
            end_offsets,
            min_version_wait: Duration::from_millis(q.min_version_wait_ms),
            topic: Arc::from(settings.kafka.topic.as_str()),
            readiness,
            metrics: install_metrics(),
            auth,
            builds: Arc::default(),
        }
    }
}

/// The whole HTTP surface of the service: `/v1` behind a bearer token (and the caller's rate
/// limits), each group of routes behind its scope; `/openapi.json` and the operational routes open.
pub fn app(state: AppState) -> Router {
    let ops = ops_routes(state.readiness.clone(), state.metrics.clone());
    let scoped = |router: Router<AppState>, scope: &'static str| {
        router.route_layer(from_fn_with_state(scope, auth::require))
    };
    let api = Router::new()
        .merge(scoped(
            routes::orders::router()
                .merge(routes::customers::router())
                .merge(routes::stats::router()),
            auth::ORDERS_READ,
        ))
        .merge(scoped(routes::order_events::router(), auth::EVENTS_READ))
        .merge(scoped(routes::projections::router(), auth::OPS))
        .merge(scoped(routes::jobs::router(), auth::EVENTS_READ))
        .route_layer(from_fn_with_state(state.auth.clone(), auth::authenticate));
    Router::new()
        .merge(api)
        .merge(routes::openapi::router())
        .merge(routes::status::router())
        .with_state(state)
        .merge(ops)
        .fallback(fallback)
        .layer(from_fn(track_metrics))
        .layer(from_fn(correlation_id))
        // A server span per request (`METHOD /route`, the status), parented on the caller's
        // `traceparent` and exported when traces are on.
        .layer(infra::telemetry::http_trace_layer())
}

/// Bind `settings.query_api.addr` and serve until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&settings.query_api.addr)
        .await
        .with_context(|| format!("binding {}", settings.query_api.addr))?;
    serve(listener, settings, shutdown).await
}

/// Serve on an already bound listener (tests bind port 0 and read `local_addr` first) until
/// `shutdown` resolves; in-flight requests are finished before returning.
pub async fn serve(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let auth = Authenticator::from_settings(&settings).await?;
    let auth_maintenance = auth.spawn_maintenance();
    let session = infra::cql::connect_keyspace(&settings.cql).await?;
    let models =
        Arc::new(CqlReadModels::new(session.clone(), settings.cql.keyspace.clone()).await?);
    let jobs = routes::jobs::JobsApi::open(&settings, session.clone()).await;
    let refresher = spawn_refresher(models.clone());
    let end_offsets = Arc::new(KafkaEndOffsets::new(&settings.kafka)?);
    let readiness = Readiness::new(vec![
        ("cql", cql_check(session)),
        ("kafka", kafka_check(settings.kafka.clone())),
    ]);
    let state = AppState::new(&settings, models, end_offsets, readiness, auth);
    let status = routes::status::spawn_sampler(&settings, &state);
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%addr, "query-api listening");
    let router = app(state)
        .layer(axum::Extension(status.history()))
        .layer(axum::Extension(Arc::new(jobs)));
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP");
    refresher.abort();
    auth_maintenance.abort();
    drop(status);
    tracing::info!("query-api stopped");
    served
}

#[cfg(test)]
mod tests;
