//! Every command failure leaves as problem+json with the status docs/api.md gives it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use infra::http::Problem;

use crate::domain::order::OrderError;
use crate::write::CommandError;

impl IntoResponse for CommandError {
    fn into_response(self) -> Response {
        problem(self).into_response()
    }
}

pub fn problem(error: CommandError) -> Problem {
    let detail = error.to_string();
    match error {
        CommandError::Rule(OrderError::AlreadyPlaced) => Problem::new(
            StatusCode::CONFLICT,
            "order-exists",
            "Order already exists",
            detail,
        ),
        CommandError::Rule(_) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "business-rule",
            "Refused by a business rule",
            detail,
        ),
        CommandError::NotFound(_) => Problem::not_found(detail),
        CommandError::KeyReused => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused",
            format!("{detail}; use a new key for a new request"),
        ),
        CommandError::PreconditionFailed { .. } => Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "version-mismatch",
            "Version mismatch",
            detail,
        ),
        CommandError::Conflict(_) => Problem::new(
            StatusCode::CONFLICT,
            "write-conflict",
            "Concurrent writers",
            format!("{detail}; retry the command"),
        ),
        CommandError::Unavailable(what, cause) => {
            tracing::warn!(dependency = what, error = %cause, "dependency unavailable");
            Problem::unavailable(format!("{what} is unavailable; retry later"), 2)
        }
        CommandError::Internal(cause) => Problem::internal(&cause),
    }
}
