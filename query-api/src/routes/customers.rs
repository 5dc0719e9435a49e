//! `GET /v1/customers/{id}/orders`: a customer's orders, newest first, in pages linked by an opaque
//! keyset cursor (see [`crate::cursor`]).

use axum::extract::State;
use axum::routing::get;
use axum::Extension;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::cursor;
use crate::error::ApiResult;
use crate::params::{self, PathId, QueryParams};
use crate::routes::PROBLEM;
use crate::store::{CustomerOrderKey, CustomerOrderRow};
use crate::views::rfc3339;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/customers/{id}/orders", get(list_customer_orders))
}

/// One order in a customer's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CustomerOrder {
    pub order_id: Uuid,
    pub status: String,
    pub total_cents: i64,
    #[schema(format = DateTime)]
    pub placed_at: String,
    pub version: i64,
}

/// A page of a customer's orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CustomerOrders {
    pub items: Vec<CustomerOrder>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Build the page from up to `limit + 1` rows: the extra row only says there is a next page.
pub fn page(mut rows: Vec<CustomerOrderRow>, limit: usize) -> CustomerOrders {
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = rows.last().filter(|_| has_more).map(|last| {
        cursor::encode(&CustomerOrderKey {
            placed_at_ms: last.placed_at.timestamp_millis(),
            order_id: last.order_id,
        })
    });
    CustomerOrders {
        items: rows
            .into_iter()
            .map(|r| CustomerOrder {
                order_id: r.order_id,
                status: r.status,
                total_cents: r.total_cents,
                placed_at: rfc3339(r.placed_at),
                version: r.version,
            })
            .collect(),
        next_cursor,
    }
}

/// A customer's orders, newest first.
#[utoipa::path(
    get,
    path = "/v1/customers/{id}/orders",
    tag = "orders",
    params(
        ("id" = uuid::Uuid, Path, description = "Customer id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size, 1..=100 (default 20)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of orders", body = CustomerOrders),
        (status = 400, description = "id not a UUID, limit not an integer, or a cursor this service did not issue", body = infra::http::Problem, content_type = PROBLEM),
        (status = 422, description = "limit out of range", body = infra::http::Problem, content_type = PROBLEM),
        (status = 503, description = "Store unreachable", body = infra::http::Problem, content_type = PROBLEM),
    )
)]
pub async fn list_customer_orders(
    State(state): State<AppState>,
    Extension(principal): Extension<infra::auth::Principal>,
    PathId(customer_id): PathId,
    params: QueryParams,
) -> ApiResult<Json<CustomerOrders>> {
    let limit = params::limit(&params)?;
    let after = params::cursor(&params)?;
    let rows = state
        .store
        .customer_orders(&principal.tenant, customer_id, after, limit + 1)
        .await?;
    Ok(Json(page(rows, limit)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn row(ms: i64) -> CustomerOrderRow {
        CustomerOrderRow {
            order_id: Uuid::now_v7(),
            status: "open".into(),
            total_cents: 1,
            placed_at: Utc.timestamp_millis_opt(ms).single().unwrap(),
            version: 1,
        }
    }

    #[test]
    fn a_full_page_has_a_cursor_pointing_after_its_last_row() {
        let rows = vec![row(3), row(2), row(1)];
        let p = page(rows.clone(), 2);
        assert_eq!(p.items.len(), 2);
        let key = cursor::decode(p.next_cursor.as_deref().unwrap()).unwrap();
        assert_eq!(key.placed_at_ms, 2);
        assert_eq!(key.order_id, rows[1].order_id);
    }

    #[test]
    fn the_last_page_has_no_cursor() {
        let p = page(vec![row(3), row(2)], 2);
        assert_eq!(p.items.len(), 2);
        assert_eq!(p.next_cursor, None);
        assert_eq!(
            serde_json::to_value(&p).unwrap()["next_cursor"],
            serde_json::Value::Null
        );
    }
}
