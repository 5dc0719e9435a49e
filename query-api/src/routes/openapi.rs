//! `GET /openapi.json`: the OpenAPI 3 description of every route, generated from the handlers'
//! `#[utoipa::path]` attributes. The operational routes are served by `infra::http::ops_routes`;
//! the functions below only describe them.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::{Modify, OpenApi};

use crate::routes::{customers, jobs, order_events, orders, projections, stats, PROBLEM};
use crate::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "query-api",
        description = "Reads of the order read models: order detail (ETag, min_version), orders by customer, sales per day, event history, projection lag."
    ),
    paths(
        orders::get_order,
        customers::list_customer_orders,
        stats::sales,
        order_events::order_events,
        projections::projections,
        jobs::create_export,
        jobs::get_job,
        jobs::cancel_job,
        jobs::get_file,
        healthz,
        readyz,
        metrics,
        status_page,
        status_json,
        openapi_json,
    ),
    components(schemas(
        crate::views::OrderDetail,
        crate::views::OrderLine,
        customers::CustomerOrders,
        customers::CustomerOrder,
        stats::SalesReport,
        stats::SalesDay,
        order_events::OrderEvents,
        projections::Projections,
        projections::ProjectionStatus,
        projections::PartitionLag,
        projections::ControlChange,
        projections::Building,
        projections::BuildKind,
        projections::BuildPartition,
        jobs::ExportRequest,
        jobs::EventTypeName,
        jobs::JobUuid,
        jobs::JobView,
        jobs::ExportRequestView,
        jobs::Progress,
        jobs::JobResult,
        jobs::FileLink,
        infra::export::Format,
        infra::export::jobs::JobState,
        infra::http::Problem,
        infra::http::FieldError,
    )),
    tags(
        (name = "orders", description = "Order views"),
        (name = "stats", description = "Aggregates"),
        (name = "exports", description = "Exports of the event stream as background jobs"),
        (name = "ops", description = "Health, readiness, metrics, projections"),
    ),
    modifiers(&Secured)
)]
pub struct ApiDoc;

/// `/v1` needs a bearer token: events with `events:read`, projections with `ops`, the rest with
/// `orders:read`.
struct Secured;

impl Modify for Secured {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        infra::auth::document(api, |path| match path {
            "/v1/orders/{id}/events" => Some(infra::auth::EVENTS_READ),
            p if p == "/v1/exports" || p.starts_with("/v1/jobs/") => Some(infra::auth::EVENTS_READ),
            "/v1/projections" => Some(infra::auth::OPS),
            p if p.starts_with("/v1/") => Some(infra::auth::ORDERS_READ),
            _ => None,
        });
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json"))
)]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Liveness: 200 while the process serves.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    responses((status = 200, description = "Serving", body = Object, example = json!({"status": "ok"})))
)]
pub async fn healthz() {}

/// Readiness: 200 only while Kafka and CQL answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "Kafka and CQL reachable", body = Object, example = json!({"status": "ready"})),
        (status = 503, description = "A dependency is unreachable", body = infra::http::Problem, content_type = PROBLEM,
            headers(("Retry-After" = u32))),
    )
)]
pub async fn readyz() {}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"))
)]
pub async fn metrics() {}

/// The status page for people (HTML, no external assets); keep it internal like `/metrics`.
#[utoipa::path(
    get,
    path = "/status",
    tag = "ops",
    responses((status = 200, description = "HTML page of lag, rates and dead letters", body = String, content_type = "text/html"))
)]
#[allow(dead_code)]
pub async fn status_page() {}

/// The figures of the status page: the last 15 minutes of samples.
#[utoipa::path(
    get,
    path = "/status.json",
    tag = "ops",
    responses(
        (status = 200, description = "Samples and current figures", body = Object),
        (status = 503, description = "This instance takes no samples", body = infra::http::Problem, content_type = PROBLEM),
    )
)]
#[allow(dead_code)]
pub async fn status_json() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_every_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/v1/orders/{id}",
            "/v1/orders/{id}/events",
            "/v1/customers/{id}/orders",
            "/v1/stats/sales",
            "/v1/projections",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        assert!(doc["components"]["schemas"]["OrderDetail"].is_object());
    }
}
