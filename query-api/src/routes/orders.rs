//! `GET /v1/orders/{id}`: one order's view with `ETag`, `If-None-Match` → 304, and `min_version`
//! to read one's own writes (see [`crate::views`] for the cache and the bounded wait).
//!
//! `Cache-Control: no-cache`: a client or proxy may store the view but must revalidate it every
//! time. A max-age, however short, would let a client miss its own write right after a command;
//! revalidation is cheap here (a 304 answered from the in-process cache, no body).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;

use crate::error::ApiResult;
use crate::etag::{etag, if_none_match_matches};
use crate::params::{non_negative, PathId, QueryParams};
use crate::routes::PROBLEM;
use crate::views::{not_found, OrderDetail};
use crate::AppState;

pub const CACHE_CONTROL: &str = "no-cache";

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/orders/{id}", get(get_order))
}

/// The current view of one order.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}",
    tag = "orders",
    params(
        ("id" = uuid::Uuid, Path, description = "Order id"),
        ("min_version" = Option<i64>, Query, minimum = 0, description = "Wait until the view reflects at least this version (read your own writes)"),
        ("wait_ms" = Option<i64>, Query, minimum = 0, description = "Shortens the wait for `min_version` (never lengthens the server's bound, 5 s by default)"),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "An ETag from an earlier answer: 304 when still current"),
    ),
    responses(
        (status = 200, description = "The order", body = OrderDetail,
            headers(("ETag" = String, description = "\"<version>\""), ("Cache-Control" = String))),
        (status = 304, description = "Not modified since the ETag given in If-None-Match"),
        (status = 400, description = "id is not a UUID, or min_version/wait_ms not an integer", body = infra::http::Problem, content_type = PROBLEM),
        (status = 404, description = "No such order (after waiting, when min_version is given)", body = infra::http::Problem, content_type = PROBLEM),
        (status = 422, description = "min_version or wait_ms negative", body = infra::http::Problem, content_type = PROBLEM),
        (status = 503, description = "The view did not reach min_version in time, or the store is unreachable; see Retry-After", body = infra::http::Problem, content_type = PROBLEM,
            headers(("Retry-After" = u32))),
    )
)]
pub async fn get_order(
    State(state): State<AppState>,
    Extension(principal): Extension<infra::auth::Principal>,
    PathId(order_id): PathId,
    params: QueryParams,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let min_version = non_negative(&params, "min_version")?;
    let wait_ms = non_negative(&params, "wait_ms")?;
    let view = match min_version {
        None => state
            .views
            .get(&principal.tenant, order_id)
            .await?
            .ok_or_else(|| not_found(order_id))?,
        Some(min_version) => {
            let bound = state.min_version_wait;
            let wait = wait_ms.map_or(bound, |ms| bound.min(Duration::from_millis(ms as u64)));
            state
                .views
                .get_at_least(&principal.tenant, order_id, min_version, wait)
                .await?
        }
    };
    let tag = HeaderValue::from_str(&etag(view.version))
        .map_err(|e| crate::store::StoreError::corrupt("order_detail.version")(&e))?;
    let cache_control = HeaderValue::from_static(CACHE_CONTROL);
    if if_none_match_matches(headers.get(header::IF_NONE_MATCH), view.version) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, tag), (header::CACHE_CONTROL, cache_control)],
        )
            .into_response());
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, tag),
            (header::CACHE_CONTROL, cache_control),
        ],
        view.body.clone(),
    )
        .into_response())
}
