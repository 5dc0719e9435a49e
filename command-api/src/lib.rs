//! The command API: HTTP commands in, events out to Kafka, guarded by one LWT per aggregate row.
//!
//! A request is validated at the edge ([`routes`]), turned into a domain command, and run through
//! the write path of [`repository::OrderRepository`], which commits the new state and the event
//! batch in CQL before publishing the batch with [`publisher::Publisher`]. The [`sweeper`]
//! republishes batches whose writer died in between.

pub mod domain;
mod error;
pub mod openapi;
pub mod publisher;
pub mod repository;
pub mod routes;
pub mod sweeper;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};
use infra::http::{self, Readiness};
use infra::Settings;
use tokio::net::TcpListener;
use utoipa::OpenApi;

use crate::publisher::Publisher;
use crate::repository::OrderRepository;

/// Everything a running command API holds.
pub struct App {
    pub repository: Arc<OrderRepository>,
    pub publisher: Arc<Publisher>,
    pub readiness: Readiness,
    pub settings: Settings,
}

impl App {
    /// Connect to CQL and Kafka and prepare the write path.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        if settings.command_api.sweeper_grace_ms <= settings.cql.request_timeout_ms {
            tracing::warn!(
                sweeper_grace_ms = settings.command_api.sweeper_grace_ms,
                cql_request_timeout_ms = settings.cql.request_timeout_ms,
                "the sweeper grace is not above the CQL request timeout: a batch whose LWT is slow \
                 and whose writer then dies may wait for the next command on its order"
            );
        }
        let session = infra::cql::connect_keyspace(&settings.cql).await?;
        let publisher = Arc::new(Publisher::new(&settings.kafka).await?);
        let repository =
            Arc::new(OrderRepository::new(session.clone(), publisher.clone(), &settings).await?);
        let readiness = Readiness::new(vec![
            ("cql", http::cql_check(session)),
            ("kafka", http::kafka_client_check(publisher.probe())),
        ]);
        Ok(Self {
            repository,
            publisher,
            readiness,
            settings,
        })
    }

    /// The whole HTTP surface.
    pub fn router(&self) -> Router {
        let metrics = http::install_metrics();
        routes::orders::router()
            .with_state(self.repository.clone())
            .route(
                "/openapi.json",
                get(|| async { Json(openapi::ApiDoc::openapi()) }),
            )
            .merge(http::ops_routes(self.readiness.clone(), metrics))
            .fallback(http::fallback)
            .layer(DefaultBodyLimit::max(
                self.settings.command_api.body_limit_bytes,
            ))
            .layer(axum::middleware::from_fn(http::track_metrics))
            .layer(axum::middleware::from_fn(http::correlation_id))
    }

    /// Serve on `listener` until `shutdown` resolves, with the sweeper running beside; then finish
    /// in-flight commands and flush the producer.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let sweeper = tokio::spawn(sweeper::run(
            self.repository.clone(),
            self.publisher.clone(),
            self.settings.clone(),
            stop_rx,
        ));
        tracing::info!(addr = %listener.local_addr()?, "command-api listening");
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await?;
        let _ = stop_tx.send(true);
        let _ = sweeper.await;
        let publisher = self.publisher.clone();
        tokio::task::spawn_blocking(move || publisher.flush(Duration::from_secs(10))).await?;
        tracing::info!("command-api stopped");
        Ok(())
    }
}

/// Run the service with the given settings until SIGTERM or Ctrl-C.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&settings.command_api.addr).await?;
    App::build(settings)
        .await?
        .serve(listener, http::shutdown_signal())
        .await
}
