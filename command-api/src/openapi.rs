//! `/openapi.json`, generated from the handlers' annotations.

use utoipa::{Modify, OpenApi};

use crate::routes::orders;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "command-api",
        description = "Commands on orders: validated, committed with one LWT, published to Kafka."
    ),
    paths(
        orders::place_order,
        orders::add_item,
        orders::remove_item,
        orders::record_payment,
        orders::ship_order,
        orders::cancel_order,
        healthz,
        readyz,
        metrics,
    ),
    components(schemas(infra::http::Problem, infra::http::FieldError)),
    modifiers(&Secured)
)]
pub struct ApiDoc;

/// Every command needs a bearer token with `orders:write`.
struct Secured;

impl Modify for Secured {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        infra::auth::document(api, |path| {
            path.starts_with("/v1/")
                .then_some(infra::auth::ORDERS_WRITE)
        });
    }
}

/// The process serves.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Serving")))]
#[allow(dead_code)]
fn healthz() {}

/// Kafka and CQL both answer.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "A dependency does not answer", body = infra::http::Problem, content_type = "application/problem+json")))]
#[allow(dead_code)]
fn readyz() {}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
#[allow(dead_code)]
fn metrics() {}
