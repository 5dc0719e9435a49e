//! The one error type of query-api. Every failure of a handler is an [`ApiError`], and every
//! `ApiError` leaves the service as an RFC 9457 problem ([`infra::http::Problem`]).
//!
//! Read-store failures (CQL unreachable, timed out, a generation without tables) become 503 with
//! `Retry-After`: the client can simply try again. Corrupt rows are 500s whose cause is logged and
//! never shown to the client.

use axum::response::{IntoResponse, Response};
use infra::http::{FieldError, Problem};

use crate::store::StoreError;

/// Seconds a client is asked to wait before retrying a 503.
pub const RETRY_AFTER_SECS: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A parameter that cannot be parsed at all (not a UUID, not a number, not a day).
    #[error("malformed request: {detail}")]
    Malformed {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// Parameters that parse but are out of range, missing or inconsistent.
    #[error("invalid fields")]
    Invalid(Vec<FieldError>),
    #[error("not found: {0}")]
    NotFound(String),
    /// `min_version` was not reached within the wait bound.
    #[error("view at version {current}, {wanted} asked")]
    NotCaughtUp { wanted: i64, current: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    /// A malformed parameter, naming it.
    pub fn malformed(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::Malformed {
            detail: format!("{field}: {message}"),
            errors: vec![FieldError {
                field: field.to_string(),
                message,
            }],
        }
    }

    /// One field out of range or missing.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiError::Invalid(vec![FieldError {
            field: field.to_string(),
            message: message.into(),
        }])
    }

    pub fn to_problem(&self) -> Problem {
        match self {
            ApiError::Malformed { detail, errors } => Problem {
                errors: errors.clone(),
                ..Problem::bad_request(detail.clone())
            },
            ApiError::Invalid(errors) => Problem::invalid_fields(errors.clone()),
            ApiError::NotFound(detail) => Problem::not_found(detail.clone()),
            ApiError::NotCaughtUp { wanted, current } => Problem::unavailable(
                format!(
                    "the view is at version {current} and has not reached version {wanted} yet; retry later"
                ),
                RETRY_AFTER_SECS,
            ),
            ApiError::Store(err @ (StoreError::Unavailable { .. } | StoreError::NotReady(_))) => {
                tracing::warn!(error = %err, "read store unavailable");
                Problem::unavailable(
                    "the read store is unavailable; retry later",
                    RETRY_AFTER_SECS,
                )
            }
            ApiError::Store(err @ StoreError::Corrupt { .. }) => Problem::internal(err),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.to_problem().into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_outage_is_a_503_with_retry_after() {
        let p = ApiError::Store(StoreError::Unavailable {
            what: "reading",
            detail: "timeout".into(),
        })
        .to_problem();
        assert_eq!(p.status, 503);
        assert_eq!(p.retry_after_secs, Some(RETRY_AFTER_SECS));
        assert!(!p.detail.contains("timeout"));
    }

    #[test]
    fn malformed_and_invalid_map_to_400_and_422() {
        assert_eq!(
            ApiError::malformed("id", "not a UUID").to_problem().status,
            400
        );
        let p = ApiError::invalid("limit", "must be 1..100").to_problem();
        assert_eq!(p.status, 422);
        assert_eq!(p.errors[0].field, "limit");
    }
}
