//! Request parameters and their validation, with the contract's split: a value that does not parse
//! (not a UUID, not an integer, not a `YYYY-MM-DD` day) is 400; a value that parses but is out of
//! range, missing or inconsistent with another is 422 with field errors.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use chrono::NaiveDate;
use infra::http::FieldError;
use uuid::Uuid;

use crate::cursor;
use crate::error::{ApiError, ApiResult};
use crate::store::CustomerOrderKey;

pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 100;
/// `from` and `to` of the sales report may span at most this many days, both included.
pub const MAX_REPORT_DAYS: i64 = 366;

/// The query string as a map; a query string that cannot be decoded is a 400 problem.
pub struct QueryParams(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map(|Query(map)| QueryParams(map))
            .map_err(|e| ApiError::malformed("query", e.body_text()))
    }
}

impl QueryParams {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// The single `{id}` of a path, as a UUID (400 otherwise).
pub struct PathId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::malformed("id", e.body_text()))?;
        parse_uuid("id", &id).map(PathId)
    }
}

pub fn parse_uuid(field: &str, text: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(text).map_err(|_| ApiError::malformed(field, "must be a UUID"))
}

/// An optional integer that must not be negative (`min_version`, `wait_ms`).
pub fn non_negative(params: &QueryParams, name: &str) -> ApiResult<Option<i64>> {
    let Some(text) = params.get(name) else {
        return Ok(None);
    };
    let value: i64 = text
        .parse()
        .map_err(|_| ApiError::malformed(name, "must be an integer"))?;
    if value < 0 {
        return Err(ApiError::invalid(name, "must not be negative"));
    }
    Ok(Some(value))
}

/// `limit`: 1..=100, 20 when absent.
pub fn limit(params: &QueryParams) -> ApiResult<usize> {
    let Some(text) = params.get("limit") else {
        return Ok(DEFAULT_LIMIT);
    };
    let value: i64 = text
        .parse()
        .map_err(|_| ApiError::malformed("limit", "must be an integer"))?;
    if !(1..=MAX_LIMIT as i64).contains(&value) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        ));
    }
    Ok(value as usize)
}

/// `cursor`: absent or empty for the first page, else one this service issued.
pub fn cursor(params: &QueryParams) -> ApiResult<Option<CustomerOrderKey>> {
    match params.get("cursor") {
        None | Some("") => Ok(None),
        Some(text) => cursor::decode(text)
            .map(Some)
            .map_err(|e| ApiError::malformed("cursor", e.to_string())),
    }
}

/// `from` and `to` of the sales report: both required, `from <= to`, at most 366 days.
pub fn day_range(params: &QueryParams) -> ApiResult<(NaiveDate, NaiveDate)> {
    let day = |name: &str| -> ApiResult<Option<NaiveDate>> {
        params
            .get(name)
            .map(|text| {
                NaiveDate::parse_from_str(text, "%Y-%m-%d")
                    .map_err(|_| ApiError::malformed(name, "must be a day as YYYY-MM-DD"))
            })
            .transpose()
    };
    let (from, to) = (day("from")?, day("to")?);
    let (Some(from), Some(to)) = (from, to) else {
        let missing = [("from", from.is_none()), ("to", to.is_none())]
            .into_iter()
            .filter(|(_, missing)| *missing)
            .map(|(field, _)| FieldError {
                field: field.into(),
                message: "is required".into(),
            })
            .collect();
        return Err(ApiError::Invalid(missing));
    };
    if from > to {
        return Err(ApiError::invalid("to", "must not be before from"));
    }
    if (to - from).num_days() + 1 > MAX_REPORT_DAYS {
        return Err(ApiError::invalid(
            "to",
            format!("the range may span at most {MAX_REPORT_DAYS} days"),
        ));
    }
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> QueryParams {
        QueryParams(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn status<T: std::fmt::Debug>(r: ApiResult<T>) -> u16 {
        r.unwrap_err().to_problem().status
    }

    #[test]
    fn limit_defaults_and_bounds() {
        assert_eq!(limit(&params(&[])).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(&params(&[("limit", "1")])).unwrap(), 1);
        assert_eq!(limit(&params(&[("limit", "100")])).unwrap(), 100);
        assert_eq!(status(limit(&params(&[("limit", "0")]))), 422);
        assert_eq!(status(limit(&params(&[("limit", "101")]))), 422);
        assert_eq!(status(limit(&params(&[("limit", "-3")]))), 422);
        assert_eq!(status(limit(&params(&[("limit", "ten")]))), 400);
    }

    #[test]
    fn min_version_must_be_a_non_negative_integer() {
        assert_eq!(non_negative(&params(&[]), "min_version").unwrap(), None);
        assert_eq!(
            non_negative(&params(&[("min_version", "3")]), "min_version").unwrap(),
            Some(3)
        );
        assert_eq!(
            status(non_negative(
                &params(&[("min_version", "x")]),
                "min_version"
            )),
            400
        );
        assert_eq!(
            status(non_negative(
                &params(&[("min_version", "-1")]),
                "min_version"
            )),
            422
        );
    }

    #[test]
    fn a_day_range_is_inclusive_and_at_most_366_days() {
        let (from, to) =
            day_range(&params(&[("from", "2024-01-01"), ("to", "2024-12-31")])).unwrap();
        assert_eq!((to - from).num_days(), 365, "2024 is a leap year: 366 days");
        assert!(day_range(&params(&[("from", "2024-03-01"), ("to", "2024-03-01")])).is_ok());
        assert_eq!(
            status(day_range(&params(&[
                ("from", "2024-01-01"),
                ("to", "2025-01-01")
            ]))),
            422
        );
    }

    #[test]
    fn a_reversed_range_is_422() {
        assert_eq!(
            status(day_range(&params(&[
                ("from", "2024-03-02"),
                ("to", "2024-03-01")
            ]))),
            422
        );
    }

    #[test]
    fn missing_days_are_422_naming_each_field() {
        let p = day_range(&params(&[])).unwrap_err().to_problem();
        assert_eq!(p.status, 422);
        let fields: Vec<_> = p.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["from", "to"]);
        let p = day_range(&params(&[("from", "2024-01-01")]))
            .unwrap_err()
            .to_problem();
        assert_eq!(p.errors[0].field, "to");
    }

    #[test]
    fn malformed_days_are_400() {
        assert_eq!(
            status(day_range(&params(&[
                ("from", "2024-1-32"),
                ("to", "2024-02-01")
            ]))),
            400
        );
        assert_eq!(
            status(day_range(&params(&[
                ("from", "01/02/2024"),
                ("to", "2024-02-01")
            ]))),
            400
        );
    }

    #[test]
    fn cursors_are_optional_but_must_be_ours() {
        assert_eq!(cursor(&params(&[])).unwrap(), None);
        assert_eq!(cursor(&params(&[("cursor", "")])).unwrap(), None);
        assert_eq!(status(cursor(&params(&[("cursor", "garbage")]))), 400);
    }

    #[test]
    fn ids_must_be_uuids() {
        assert!(parse_uuid("id", "0191a8f0-1234-7abc-8def-0123456789ab").is_ok());
        assert_eq!(status(parse_uuid("id", "42")), 400);
    }
}
