//! `GET /v1/stats/sales?from=&to=`: orders paid and revenue per UTC day of payment, summed from
//! the day partitions of `sales_by_day` (read concurrently, see the CQL store).

use axum::extract::State;
use axum::routing::get;
use axum::Extension;
use axum::{Json, Router};
use chrono::NaiveDate;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiResult;
use crate::params::{self, QueryParams};
use crate::routes::PROBLEM;
use crate::store::DaySales;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/stats/sales", get(sales))
}

/// Sales of one UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SalesDay {
    #[schema(format = Date, example = "2024-05-01")]
    pub day: String,
    pub orders_paid: i64,
    pub revenue_cents: i64,
}

/// Days with sales, ascending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SalesReport {
    pub days: Vec<SalesDay>,
}

/// Every day of `from..=to`.
pub fn days(from: NaiveDate, to: NaiveDate) -> Vec<NaiveDate> {
    from.iter_days().take_while(|d| *d <= to).collect()
}

/// Days without sales left out, ascending by day.
pub fn report(mut sales: Vec<DaySales>) -> SalesReport {
    sales.retain(|s| s.orders_paid > 0);
    sales.sort_by_key(|s| s.day);
    SalesReport {
        days: sales
            .into_iter()
            .map(|s| SalesDay {
                day: s.day.format("%Y-%m-%d").to_string(),
                orders_paid: s.orders_paid,
                revenue_cents: s.revenue_cents,
            })
            .collect(),
    }
}

/// Sales per day of payment (a paid order later cancelled no longer counts).
#[utoipa::path(
    get,
    path = "/v1/stats/sales",
    tag = "stats",
    params(
        ("from" = String, Query, format = Date, description = "First day, YYYY-MM-DD (UTC)"),
        ("to" = String, Query, format = Date, description = "Last day, included; at most 366 days after from"),
    ),
    responses(
        (status = 200, description = "Days with sales, ascending", body = SalesReport),
        (status = 400, description = "A day is not YYYY-MM-DD", body = infra::http::Problem, content_type = PROBLEM),
        (status = 422, description = "from or to missing, from after to, or more than 366 days", body = infra::http::Problem, content_type = PROBLEM),
        (status = 503, description = "Store unreachable", body = infra::http::Problem, content_type = PROBLEM),
    )
)]
pub async fn sales(
    State(state): State<AppState>,
    Extension(principal): Extension<infra::auth::Principal>,
    params: QueryParams,
) -> ApiResult<Json<SalesReport>> {
    let (from, to) = params::day_range(&params)?;
    let sales = state.store.sales(&principal.tenant, days(from, to)).await?;
    Ok(Json(report(sales)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn the_range_is_inclusive() {
        let d = days(day("2024-02-27"), day("2024-03-01"));
        assert_eq!(d.len(), 4, "2024-02-29 exists");
        assert_eq!(days(day("2024-01-01"), day("2024-12-31")).len(), 366);
    }

    #[test]
    fn empty_days_are_left_out_and_the_rest_ascend() {
        let r = report(vec![
            DaySales {
                day: day("2024-03-02"),
                orders_paid: 2,
                revenue_cents: 500,
            },
            DaySales {
                day: day("2024-03-03"),
                orders_paid: 0,
                revenue_cents: 0,
            },
            DaySales {
                day: day("2024-03-01"),
                orders_paid: 1,
                revenue_cents: 100,
            },
        ]);
        let d: Vec<_> = r.days.iter().map(|d| d.day.as_str()).collect();
        assert_eq!(d, ["2024-03-01", "2024-03-02"]);
        assert_eq!(r.days[1].revenue_cents, 500);
    }
}
