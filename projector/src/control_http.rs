//! Projection control over the projector's HTTP port, for operators (scope `ops`):
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /v1/projections/{name}/control` | — | the control state, offsets, skips, live instances, latest audit entries |
//! | `POST /v1/projections/{name}/pause` | `{"reason"}` | the new state and which instances stopped |
//! | `POST /v1/projections/{name}/resume` | `{"reason"}` | the new state |
//! | `POST /v1/projections/{name}/reset` | `{"reason", "offsets": {"0": 12, …}}` or `{"reason", "to_time": "RFC 3339"}` | the offsets before and after |
//! | `POST /v1/projections/{name}/skip` | `{"reason", "partition", "offset"}` | the skip recorded |
//! | `GET /v1/projections/{name}/dead-letters?limit=` | — | the projection's dead letters |
//! | `POST /v1/projections/{name}/dead-letters/redrive` | `{"reason"}` | counts applied and failed, each failure's error |
//!
//! Bearer tokens exactly as on the APIs ([`infra::auth`]); the actor of a change is the token's
//! `sub`. The keys are read in the background: the projector consumes whether or not the
//! identity provider answers, and these routes answer 503 until the keys are loaded. Errors are
//! problem+json: 404 unknown projection, 400/415/422 bad body, 409 state conflicts, 503 CQL or
//! Kafka unavailable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use infra::auth::{self, Authenticator, Principal};
use infra::http::{ApiJson, FieldError, Problem};
use infra::Settings;
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::control::ResetTarget;
use crate::control_ops::{Change, ControlError, Controller};

/// Most dead letters one listing returns.
pub const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;

#[derive(Clone)]
pub struct ControlApp {
    pub controller: Controller,
    pub auth: Arc<OnceCell<Arc<Authenticator>>>,
}

/// Load the token keys in the background, retrying every 5 s until they load, then keep them
/// fresh. Abort the returned task to stop it all.
pub fn load_auth(
    settings: &Settings,
) -> (
    Arc<OnceCell<Arc<Authenticator>>>,
    tokio::task::JoinHandle<()>,
) {
    /// Stops the keys' refresh when the loader task is aborted.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let cell = Arc::new(OnceCell::new());
    let slot = cell.clone();
    let settings = settings.clone();
    let task = tokio::spawn(async move {
        loop {
            match Authenticator::from_settings(&settings).await {
                Ok(auth) => {
                    let _maintenance = AbortOnDrop(auth.spawn_maintenance());
                    let _ = slot.set(auth);
                    std::future::pending::<()>().await;
                }
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "control routes: the token keys cannot be loaded; they answer 503 until they can (retrying in 5 s)");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    });
    (cell, task)
}

impl From<ControlError> for Problem {
    fn from(err: ControlError) -> Self {
        match err {
            ControlError::NotFound(detail) => Problem::not_found(detail),
            ControlError::Invalid(field, message) => {
                Problem::invalid_fields(vec![FieldError { field, message }])
            }
            ControlError::Conflict(detail) => {
                Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
            }
            ControlError::Unavailable(err) => {
                tracing::warn!(error = %format!("{err:#}"), "projection control: dependency unavailable");
                Problem::unavailable(format!("{err:#}"), 1)
            }
        }
    }
}

type ApiResult<T> = Result<Json<T>, Problem>;

/// A change's body: why.
#[derive(Debug, Clone, Deserialize)]
pub struct ReasonBody {
    pub reason: String,
}

/// `…/reset`: where to, and why.
#[derive(Debug, Clone, Deserialize)]
pub struct ResetBody {
    pub reason: String,
    /// The next offset to apply per partition (JSON object keys are partition numbers).
    #[serde(default)]
    pub offsets: Option<BTreeMap<i32, i64>>,
    /// Or: every partition's first record at or after this time.
    #[serde(default)]
    pub to_time: Option<DateTime<Utc>>,
}

impl ResetBody {
    /// Exactly one of `offsets` and `to_time`.
    pub fn target(&self) -> Result<ResetTarget, ControlError> {
        match (&self.offsets, self.to_time) {
            (Some(offsets), None) => Ok(ResetTarget::Offsets(offsets.clone())),
            (None, Some(at)) => Ok(ResetTarget::Time(at)),
            (Some(_), Some(_)) => Err(ControlError::Invalid(
                "offsets".into(),
                "give either `offsets` or `to_time`, not both".into(),
            )),
            (None, None) => Err(ControlError::Invalid(
                "offsets".into(),
                "give `offsets` (per partition) or `to_time`".into(),
            )),
        }
    }
}

/// `…/skip`: which record, and why.
#[derive(Debug, Clone, Deserialize)]
pub struct SkipBody {
    pub reason: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListQuery {
    pub limit: Option<String>,
}

/// Parse `?limit=` (1..=MAX_LIMIT, default 100).
pub fn parse_limit(limit: Option<&str>) -> Result<usize, Problem> {
    let Some(raw) = limit else {
        return Ok(DEFAULT_LIMIT);
    };
    let value: i64 = raw
        .parse()
        .map_err(|_| Problem::bad_request(format!("limit: {raw:?} is not an integer")))?;
    if !(1..=MAX_LIMIT as i64).contains(&value) {
        return Err(Problem::invalid_fields(vec![FieldError {
            field: "limit".into(),
            message: format!("must be between 1 and {MAX_LIMIT}"),
        }]));
    }
    Ok(value as usize)
}

fn change(principal: &Principal, reason: &str) -> Change {
    Change {
        actor: principal.subject.clone(),
        reason: reason.trim().to_string(),
    }
}

/// The control routes, behind bearer authentication and the `ops` scope.
pub fn router(app: ControlApp) -> Router {
    Router::new()
        .route("/v1/projections/{name}/control", get(status))
        .route("/v1/projections/{name}/pause", post(pause))
        .route("/v1/projections/{name}/resume", post(resume))
        .route("/v1/projections/{name}/reset", post(reset))
        .route("/v1/projections/{name}/skip", post(skip))
        .route("/v1/projections/{name}/dead-letters", get(dead_letters))
        .route("/v1/projections/{name}/dead-letters/redrive", post(redrive))
        .route_layer(from_fn_with_state(auth::OPS, auth::require))
        .route_layer(from_fn_with_state(app.clone(), authenticate))
        .with_state(app)
}

/// [`auth::authenticate`] once the keys are loaded; 503 before.
async fn authenticate(State(app): State<ControlApp>, req: Request, next: Next) -> Response {
    match app.auth.get() {
        Some(authenticator) => auth::authenticate(State(authenticator.clone()), req, next).await,
        None => Problem::unavailable("the token keys (APP_AUTH__JWKS) are not loaded yet", 5)
            .into_response(),
    }
}

async fn status(
    State(app): State<ControlApp>,
    Path(name): Path<String>,
) -> ApiResult<crate::control_ops::ControlStatus> {
    Ok(Json(app.controller.status(&name).await?))
}

async fn pause(
    State(app): State<ControlApp>,
    Path(name): Path<String>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<ReasonBody>,
) -> ApiResult<crate::control_ops::PauseReport> {
    Ok(Json(
        app.controller
            .pause(&name, &change(&principal, &body.reason))
            .await?,
    ))
}

async fn resume(
    State(app): State<ControlApp>,
    Path(name): Path<String>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<ReasonBody>,
) -> ApiResult<crate::control_ops::PauseReport> {
    Ok(Json(
        app.controller
            .resume(&name, &change(&principal, &body.reason))
            .await?,
    ))
}

async fn reset(
    State(app): State<ControlApp>,
    Path(name): Path<String>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<ResetBody>,
) -> ApiResult<crate::control_ops::ResetReport> {
    let target = body.target()?;
    Ok(Json(
        app.controller
            .reset(&name, &target, &change(&principal, &body.reason))
            .await?,
    ))
}

async fn skip(
    State(app): State<ControlApp>,
    Path(name): Path<String>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<SkipBody>,
) -> ApiResult<crate::control_ops::SkipReport> {
    Ok(Json(
        app.controller
            .skip(
                &name,
                body.partition,
                body.offset,
                &change(&principal, &body.reason),
            )
            .await?,
    ))
}

async fn dead_letters(
    State(app): State<ControlApp>,
    Path(name): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<crate::control_ops::DeadLetterList> {
    let limit = parse_limit(query.limit.as_deref())?;
    Ok(Json(app.controller.dead_letters(&name, limit).await?))
}

async fn redrive(
    State(app): State<ControlApp>,
    Path(name): Path<String>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<ReasonBody>,
) -> ApiResult<crate::dead_letters::RedriveReport> {
    Ok(Json(
        app.controller
            .redrive(&name, &change(&principal, &body.reason))
            .await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use infra::http::parse_json;

    #[test]
    fn a_reset_body_names_offsets_per_partition_or_a_time() {
        let body: ResetBody =
            parse_json(br#"{"reason": "replay", "offsets": {"0": 12, "1": 40}}"#).unwrap();
        assert_eq!(
            body.target().unwrap(),
            ResetTarget::Offsets(BTreeMap::from([(0, 12), (1, 40)]))
        );
        let body: ResetBody =
            parse_json(br#"{"reason": "replay", "to_time": "2026-11-27T10:00:00Z"}"#).unwrap();
        assert!(
            matches!(body.target().unwrap(), ResetTarget::Time(t) if t.timestamp() == 1_795_773_600)
        );
        let neither: ResetBody = parse_json(br#"{"reason": "replay"}"#).unwrap();
        assert!(neither.target().is_err());
        let both: ResetBody = parse_json(
            br#"{"reason": "r", "offsets": {"0": 1}, "to_time": "2026-11-27T10:00:00Z"}"#,
        )
        .unwrap();
        assert!(both.target().is_err());
    }

    #[test]
    fn a_body_without_a_reason_is_a_422_and_a_bad_partition_key_a_400() {
        let p = parse_json::<ResetBody>(br#"{"offsets": {"0": 1}}"#).unwrap_err();
        assert_eq!((p.status, p.errors[0].field.as_str()), (422, "reason"));
        let p = parse_json::<ResetBody>(br#"{"reason": "r", "offsets": {"zero": 1}}"#).unwrap_err();
        assert_eq!(p.status, 400);
        let p = parse_json::<SkipBody>(br#"{"reason": "r", "partition": 1}"#).unwrap_err();
        assert_eq!((p.status, p.errors[0].field.as_str()), (422, "offset"));
        let p = parse_json::<ResetBody>(br#"{"reason": "r", "to_time": "yesterday"}"#).unwrap_err();
        assert_eq!(p.status, 400);
    }

    #[test]
    fn a_listing_limit_is_bounded() {
        assert_eq!(parse_limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(parse_limit(Some("5")).unwrap(), 5);
        assert_eq!(parse_limit(Some("x")).unwrap_err().status, 400);
        assert_eq!(parse_limit(Some("0")).unwrap_err().status, 422);
        assert_eq!(parse_limit(Some("1001")).unwrap_err().status, 422);
    }

    #[test]
    fn control_errors_become_problems_with_their_status() {
        let p: Problem = ControlError::NotFound("x".into()).into();
        assert_eq!(p.status, 404);
        let p: Problem = ControlError::Conflict("x".into()).into();
        assert_eq!((p.status, p.kind.as_str()), (409, "/problems/conflict"));
        let p: Problem = ControlError::Invalid("reason".into(), "blank".into()).into();
        assert_eq!(p.status, 422);
        let p: Problem = ControlError::Unavailable(anyhow::anyhow!("down")).into();
        assert_eq!(p.status, 503);
    }
}
