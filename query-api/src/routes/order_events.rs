//! `GET /v1/orders/{id}/events`: an order's event history from `order_events`, each envelope
//! exactly as the projector consumed it from Kafka.

use axum::extract::State;
use axum::routing::get;
use axum::Extension;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiResult;
use crate::params::PathId;
use crate::routes::PROBLEM;
use crate::store::StoreError;
use crate::views::not_found;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/orders/{id}/events", get(order_events))
}

/// An order's events in sequence order.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct OrderEvents {
    /// Envelopes: event_id, tenant_id, aggregate_type, aggregate_id, sequence, event_type,
    /// schema_version, occurred_at, command_id, correlation_id, causation_id, trace context, payload.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
}

/// The event history of one order.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}/events",
    tag = "orders",
    params(("id" = uuid::Uuid, Path, description = "Order id")),
    responses(
        (status = 200, description = "Envelopes in sequence order", body = OrderEvents),
        (status = 400, description = "id is not a UUID", body = infra::http::Problem, content_type = PROBLEM),
        (status = 404, description = "No such order", body = infra::http::Problem, content_type = PROBLEM),
        (status = 503, description = "Store unreachable", body = infra::http::Problem, content_type = PROBLEM),
    )
)]
pub async fn order_events(
    State(state): State<AppState>,
    Extension(principal): Extension<infra::auth::Principal>,
    PathId(order_id): PathId,
) -> ApiResult<Json<OrderEvents>> {
    let stored = state
        .store
        .order_events(&principal.tenant, order_id)
        .await?;
    if stored.is_empty() {
        return Err(not_found(order_id));
    }
    let events = stored
        .iter()
        .map(|text| serde_json::from_str(text))
        .collect::<Result<Vec<serde_json::Value>, _>>()
        .map_err(|e| StoreError::corrupt("order_events.envelope")(&e))?;
    Ok(Json(OrderEvents { events }))
}
