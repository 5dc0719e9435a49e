//! Export jobs: `POST /v1/exports` queues an export of the caller's tenant's events (202,
//! `Location: /v1/jobs/{id}`), `GET /v1/jobs/{id}` shows its state, progress and result,
//! `DELETE /v1/jobs/{id}` cancels it, `GET /v1/jobs/{id}/files/{name}` streams a result file from
//! the object store. The work is done by the projector's job worker (`projector/src/jobs.rs`) off
//! the durable queue in CQL (`infra::export::jobs`). Scope `events:read`; a job of another tenant
//! answers 404 exactly like an unknown one.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use infra::auth::Principal;
use infra::export::jobs::{Created, ExportSpec, Job, JobState, JobStore};
use infra::export::store::{is_export_file_name, ExportStore, MANIFEST};
use infra::export::Format;
use infra::http::{ApiJson, FieldError, Problem};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, RETRY_AFTER_SECS};
use crate::params::parse_uuid;
use crate::routes::PROBLEM;
use crate::views::rfc3339;
use crate::AppState;

/// At most this many aggregate ids in one export.
pub const MAX_AGGREGATE_IDS: usize = 1000;
/// At most this many event types in one export.
pub const MAX_EVENT_TYPES: usize = 100;
/// An event type: a letter, then letters, digits, `_`, `.` or `-`, 64 characters at most.
pub const EVENT_TYPE_PATTERN: &str = "^[A-Za-z][A-Za-z0-9_.-]{0,63}$";

/// What the job routes need; installed by [`crate::serve`] as an extension.
pub struct JobsApi {
    /// The job tables (none when they could not be prepared: run `stack-admin migrate`).
    pub jobs: Option<JobStore>,
    /// Where the files are (none when `APP_JOBS__STORE` is not set).
    pub files: Option<ExportStore>,
    /// The event topic the jobs read.
    pub topic: String,
}

impl JobsApi {
    /// Prepare the job statements and open the store; what is missing is logged, and the routes
    /// that need it answer 503.
    pub async fn open(
        settings: &infra::Settings,
        session: Arc<scylla::client::session::Session>,
    ) -> Self {
        let jobs = match JobStore::new(
            session,
            &settings.cql.keyspace,
            &settings.cql.serial_consistency,
        )
        .await
        {
            Ok(jobs) => Some(jobs),
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "export jobs unavailable (has `stack-admin migrate` run?)");
                None
            }
        };
        let files = match ExportStore::open(&settings.jobs) {
            Ok(store) => Some(store),
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "no export store: job files cannot be downloaded here");
                None
            }
        };
        Self {
            jobs,
            files,
            topic: settings.kafka.topic.clone(),
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/exports", post(create_export))
        .route("/v1/jobs/{id}", get(get_job).delete(cancel_job))
        .route("/v1/jobs/{id}/files/{name}", get(get_file))
}

/// An event type name.
#[derive(Debug, Clone, Deserialize)]
pub struct EventTypeName(pub String);

impl utoipa::PartialSchema for EventTypeName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(EVENT_TYPE_PATTERN))
            .min_length(Some(1))
            .max_length(Some(64))
            .examples(["OrderPlaced"])
            .into()
    }
}

impl ToSchema for EventTypeName {}

/// A UUID in canonical form.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[schema(value_type = String, format = Uuid)]
pub struct JobUuid(pub Uuid);

/// `POST /v1/exports`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ExportRequest {
    /// Events whose Kafka record time is at or after this instant (RFC 3339).
    #[schema(value_type = String, format = DateTime)]
    #[serde(deserialize_with = "rfc3339_field")]
    pub from: DateTime<Utc>,
    /// … and before this one; later than `from`. A `to` after now is capped to the time of the
    /// request (the job's `request.to` says which).
    #[schema(value_type = String, format = DateTime)]
    #[serde(deserialize_with = "rfc3339_field")]
    pub to: DateTime<Utc>,
    /// Only these orders (at most 1000); all when absent or empty.
    #[schema(max_items = 1000, nullable = false)]
    #[serde(default)]
    pub aggregate_ids: Option<Vec<JobUuid>>,
    /// Only these event types (at most 100), e.g. `OrderPlaced`; all when absent or empty.
    #[schema(max_items = 100, nullable = false)]
    #[serde(default)]
    pub event_types: Option<Vec<EventTypeName>>,
    /// `jsonl` (default) or `parquet`.
    #[schema(nullable = false)]
    #[serde(default)]
    pub format: Option<Format>,
    /// A succeeded export job of the same tenant: start exactly where it ended (the end offsets
    /// of its manifest); `from` then only filters.
    #[schema(value_type = Option<String>, format = Uuid, nullable = false)]
    #[serde(default)]
    pub after_job: Option<Uuid>,
}

fn rfc3339_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let text = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| serde::de::Error::custom(format!("not an RFC 3339 date-time: {e}")))
}

/// The request of a job, as validated (`to` capped to the time of the request).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExportRequestView {
    #[schema(format = DateTime)]
    pub from: String,
    #[schema(format = DateTime)]
    pub to: String,
    #[schema(value_type = Vec<String>)]
    pub aggregate_ids: Vec<Uuid>,
    pub event_types: Vec<String>,
    pub format: Format,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub after_job: Option<Uuid>,
}

/// How far a job has come.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Progress {
    /// Events written so far.
    pub events: i64,
    /// Bytes of files written so far.
    pub bytes: i64,
    /// Records in the Kafka offsets the job covers: an upper bound of its events (exact when no
    /// filter drops any); null until the job is planned.
    pub estimated_events: Option<i64>,
    /// Part files done, of `parts_total` (null until planned).
    pub parts_done: i32,
    pub parts_total: Option<i32>,
}

/// A file of a job's result.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileLink {
    pub name: String,
    /// `GET` it with the same token.
    pub href: String,
    pub partition: i32,
    pub from_offset: i64,
    pub to_offset: i64,
    pub events: u64,
    pub bytes: u64,
}

/// The result of a succeeded job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobResult {
    /// The manifest: window, filters, the Kafka offsets covered per partition, the files.
    pub manifest: String,
    pub events: i64,
    pub bytes: i64,
    pub files: Vec<FileLink>,
}

/// A job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobView {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// `export`.
    pub kind: String,
    pub state: JobState,
    pub request: ExportRequestView,
    pub progress: Progress,
    /// Times a worker took the job (more than 1: it was resumed or retried).
    pub attempts: i32,
    /// Why the job failed (state `failed` only).
    pub error: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// When the job succeeded: its manifest and files.
    pub result: Option<JobResult>,
}

fn job_path(id: Uuid) -> String {
    format!("/v1/jobs/{id}")
}

impl From<&Job> for JobView {
    fn from(job: &Job) -> Self {
        let running = job.state == JobState::Running;
        let href = |name: &str| format!("{}/files/{name}", job_path(job.id));
        let result = (job.state == JobState::Succeeded).then(|| JobResult {
            manifest: href(MANIFEST),
            events: job.events,
            bytes: job.bytes,
            files: job
                .files
                .iter()
                .map(|f| FileLink {
                    name: f.name.clone(),
                    href: href(&f.name),
                    partition: f.partition,
                    from_offset: f.from_offset,
                    to_offset: f.to_offset,
                    events: f.events,
                    bytes: f.bytes,
                })
                .collect(),
        });
        let planned = job.plan.is_some();
        JobView {
            id: job.id,
            kind: infra::export::jobs::EXPORT.into(),
            state: job.state,
            request: ExportRequestView {
                from: rfc3339(job.spec.from),
                to: rfc3339(job.spec.to),
                aggregate_ids: job.spec.aggregate_ids.clone(),
                event_types: job.spec.event_types.clone(),
                format: job.spec.format,
                after_job: job.spec.after_job,
            },
            progress: Progress {
                events: job.events + if running { job.part_events } else { 0 },
                bytes: job.bytes + if running { job.part_bytes } else { 0 },
                estimated_events: planned.then_some(job.estimated_events),
                parts_done: job.parts_done,
                parts_total: planned.then_some(job.parts_total),
            },
            attempts: job.attempts,
            error: (job.state == JobState::Failed)
                .then(|| job.error.clone())
                .flatten(),
            created_at: rfc3339(job.created_at),
            started_at: job.started_at.map(rfc3339),
            finished_at: job.finished_at.map(rfc3339),
            result,
        }
    }
}

/// The checks of a request that parsed: 422 with every field at fault.
pub fn validate(
    request: &ExportRequest,
    now: DateTime<Utc>,
) -> Result<(ExportSpec, String), ApiError> {
    let mut errors = Vec::new();
    let mut fail = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.to_string(),
            message,
        })
    };
    let to = request.to.min(now);
    if request.from >= request.to {
        fail("from", "must be before to".into());
    } else if request.from >= now {
        fail("from", "must be in the past".into());
    }
    let mut aggregate_ids: Vec<Uuid> = request
        .aggregate_ids
        .iter()
        .flatten()
        .map(|id| id.0)
        .collect();
    if aggregate_ids.len() > MAX_AGGREGATE_IDS {
        fail("aggregate_ids", format!("at most {MAX_AGGREGATE_IDS} ids"));
    }
    let mut event_types: Vec<String> = request
        .event_types
        .iter()
        .flatten()
        .map(|t| t.0.clone())
        .collect();
    if event_types.len() > MAX_EVENT_TYPES {
        fail("event_types", format!("at most {MAX_EVENT_TYPES} types"));
    }
    for (i, t) in event_types.iter().enumerate() {
        if !valid_event_type(t) {
            fail(
                &format!("event_types[{i}]"),
                "must be a letter then up to 63 letters, digits, `_`, `.` or `-`".into(),
            );
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    // The filters are sets: their order and repetitions do not change the export (nor its
    // Idempotency-Key fingerprint).
    aggregate_ids.sort_unstable();
    aggregate_ids.dedup();
    event_types.sort_unstable();
    event_types.dedup();
    let format = request.format.unwrap_or_default();
    // The fingerprint is of the request as asked (`to` before capping), so a retry later matches.
    let fingerprint = serde_json::json!({
        "from": request.from.timestamp_micros(),
        "to": request.to.timestamp_micros(),
        "aggregate_ids": aggregate_ids,
        "event_types": event_types,
        "format": format,
        "after_job": request.after_job,
    })
    .to_string();
    Ok((
        ExportSpec {
            from: request.from,
            to,
            aggregate_ids,
            event_types,
            format,
            after_job: request.after_job,
            topic: String::new(),
        },
        fingerprint,
    ))
}

fn valid_event_type(t: &str) -> bool {
    let mut chars = t.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && t.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `Idempotency-Key`: 1–200 visible ASCII characters (as on command-api).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v.as_bytes();
    if key.is_empty() || key.len() > 200 || !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(Problem::bad_request(
            "Idempotency-Key must be 1–200 visible ASCII characters (no spaces)",
        ));
    }
    Ok(Some(String::from_utf8_lossy(key).into_owned()))
}

fn unavailable(err: anyhow::Error) -> Problem {
    tracing::warn!(error = %format!("{err:#}"), "job store unavailable");
    Problem::unavailable(
        "the job store is unavailable; retry later",
        RETRY_AFTER_SECS,
    )
}

fn jobs_of(api: &Option<Extension<Arc<JobsApi>>>) -> Result<&JobStore, Problem> {
    api.as_ref()
        .and_then(|Extension(api)| api.jobs.as_ref())
        .ok_or_else(|| {
            Problem::unavailable(
                "export jobs are not available on this instance (job tables missing)",
                RETRY_AFTER_SECS,
            )
        })
}

fn accepted(job: &Job) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(JobView::from(job))).into_response();
    if let Ok(v) = HeaderValue::from_str(&job_path(job.id)) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

fn not_found(id: Uuid) -> Problem {
    Problem::not_found(format!("no job {id}"))
}

/// Queue an export of the caller's tenant's events.
#[utoipa::path(post, path = "/v1/exports", tag = "exports", request_body = ExportRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, description = "The same key with the same request gives the same job (202 again, same Location); with another request 422. 1–200 visible ASCII characters", min_length = 1, max_length = 200, pattern = "^[!-~]{1,200}$"),
    ),
    responses(
        (status = 202, description = "Queued (or, with a known Idempotency-Key, the job it made); poll Location", body = JobView,
         headers(("Location" = String, description = "/v1/jobs/{id}"))),
        (status = 400, description = "Malformed: broken JSON, a field of the wrong type, a time that is not RFC 3339, a bad Idempotency-Key", body = Problem, content_type = PROBLEM),
        (status = 413, description = "Body too large", body = Problem, content_type = PROBLEM),
        (status = 415, description = "Not JSON", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Invalid fields (from not before to or not in the past, too many ids or types, a bad event type, after_job not a succeeded export of this tenant), or an Idempotency-Key reused for another request", body = Problem, content_type = PROBLEM),
        (status = 503, description = "The job store is unreachable", body = Problem, content_type = PROBLEM, headers(("Retry-After" = u32))),
    ))]
pub async fn create_export(
    api: Option<Extension<Arc<JobsApi>>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ExportRequest>,
) -> Result<Response, Problem> {
    let key = idempotency_key(&headers)?;
    let (mut spec, fingerprint) = validate(&body, Utc::now()).map_err(|e| e.to_problem())?;
    let jobs = jobs_of(&api)?;
    if let Some(Extension(api)) = &api {
        spec.topic = api.topic.clone();
    }
    if let Some(previous) = spec.after_job {
        let before = jobs
            .get(&principal.tenant, previous)
            .await
            .map_err(unavailable)?;
        let usable = before.is_some_and(|b| b.state == JobState::Succeeded && b.plan.is_some());
        if !usable {
            return Err(ApiError::invalid(
                "after_job",
                "must be a succeeded export job of this tenant",
            )
            .to_problem());
        }
    }
    let created = jobs
        .create(
            &principal.tenant,
            &spec,
            key.as_deref().map(|k| (k, fingerprint.as_str())),
        )
        .await
        .map_err(unavailable)?;
    match created {
        Created::New(job) => {
            tracing::info!(job_id = %job.id, tenant = %principal.tenant, format = ?spec.format, "export job queued");
            metrics::counter!("jobs_created_total", "kind" => "export").increment(1);
            Ok(accepted(&job))
        }
        Created::Existing(job) => Ok(accepted(&job)),
        Created::KeyReused => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused",
            "this Idempotency-Key was used for another export request; use a new key for a new request",
        )),
    }
}

/// A job: state, progress, and when it succeeded its result.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "exports",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "id is not a UUID", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No such job (for this tenant)", body = Problem, content_type = PROBLEM),
        (status = 503, description = "The job store is unreachable", body = Problem, content_type = PROBLEM, headers(("Retry-After" = u32))),
    ))]
pub async fn get_job(
    api: Option<Extension<Arc<JobsApi>>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, Problem> {
    let id = parse_uuid("id", &id).map_err(|e| e.to_problem())?;
    let jobs = jobs_of(&api)?;
    let job = jobs
        .get(&principal.tenant, id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(JobView::from(&job)))
}

/// Cancel a queued or running job. A running job's worker stops at its next lease renewal (a few
/// seconds) and deletes the files it wrote.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "exports",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 202, description = "Cancelled (also when it already was); the job as it is now", body = JobView),
        (status = 400, description = "id is not a UUID", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No such job (for this tenant)", body = Problem, content_type = PROBLEM),
        (status = 409, description = "The job already succeeded or failed", body = Problem, content_type = PROBLEM),
        (status = 503, description = "The job store is unreachable", body = Problem, content_type = PROBLEM, headers(("Retry-After" = u32))),
    ))]
pub async fn cancel_job(
    api: Option<Extension<Arc<JobsApi>>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = parse_uuid("id", &id).map_err(|e| e.to_problem())?;
    let jobs = jobs_of(&api)?;
    let job = jobs
        .cancel(&principal.tenant, id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found(id))?;
    match job.state {
        JobState::Cancelled => {
            tracing::info!(job_id = %id, tenant = %principal.tenant, "export job cancelled");
            Ok((StatusCode::ACCEPTED, Json(JobView::from(&job))).into_response())
        }
        state => Err(Problem::new(
            StatusCode::CONFLICT,
            "job-finished",
            "Job finished",
            format!("job {id} already {}; nothing to cancel", state.as_str()),
        )),
    }
}

/// A file of a succeeded job, streamed from the object store.
#[utoipa::path(get, path = "/v1/jobs/{id}/files/{name}", tag = "exports",
    params(
        ("id" = Uuid, Path, description = "Job id"),
        ("name" = String, Path, description = "`manifest.json` or a part file `part-NNNNN.jsonl|parquet` (as listed in the job's result)", pattern = r"^(manifest\.json|part-[0-9]{5,9}\.(jsonl|parquet))$"),
    ),
    responses(
        (status = 200, description = "The file: JSON lines, Parquet, or the manifest (JSON)",
         content(
            (String = "application/x-ndjson"),
            (String = "application/vnd.apache.parquet"),
            (Object = "application/json"),
         ),
         headers(("Content-Length" = u64), ("Content-Disposition" = String))),
        (status = 400, description = "id is not a UUID, or name is not a file name a job writes", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No such job (for this tenant), or no such file in its result (yet)", body = Problem, content_type = PROBLEM),
        (status = 503, description = "The job store or the object store is unreachable", body = Problem, content_type = PROBLEM, headers(("Retry-After" = u32))),
    ))]
pub async fn get_file(
    api: Option<Extension<Arc<JobsApi>>>,
    Extension(principal): Extension<Principal>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let id = parse_uuid("id", &id).map_err(|e| e.to_problem())?;
    if !is_export_file_name(&name) {
        return Err(ApiError::malformed(
            "name",
            "must be manifest.json or part-NNNNN.jsonl|parquet",
        )
        .to_problem());
    }
    let jobs = jobs_of(&api)?;
    let job = jobs
        .get(&principal.tenant, id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found(id))?;
    let listed = if name == MANIFEST {
        job.state == JobState::Succeeded
    } else {
        job.state != JobState::Cancelled && job.files.iter().any(|f| f.name == name)
    };
    if !listed {
        return Err(Problem::not_found(format!("job {id} has no file {name}")));
    }
    let files = api
        .as_ref()
        .and_then(|Extension(api)| api.files.as_ref())
        .ok_or_else(|| {
            Problem::unavailable(
                "no export store is configured on this instance (APP_JOBS__STORE)",
                RETRY_AFTER_SECS,
            )
        })?;
    let Some((size, stream)) = files
        .get_stream(&principal.tenant, id, &name)
        .await
        .map_err(unavailable)?
    else {
        return Err(Problem::not_found(format!("job {id} has no file {name}")));
    };
    let content_type = if name == MANIFEST {
        "application/json"
    } else if name.ends_with(".parquet") {
        Format::Parquet.content_type()
    } else {
        Format::Jsonl.content_type()
    };
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn request(json: serde_json::Value) -> Result<ExportRequest, Problem> {
        infra::http::parse_json(json.to_string().as_bytes())
    }

    #[test]
    fn a_request_parses_with_defaults() {
        let r = request(serde_json::json!({
            "from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:10:00.5+01:00"
        }))
        .unwrap();
        let (spec, _) = validate(&r, at("2027-01-01T00:00:00Z")).unwrap();
        assert_eq!(spec.format, Format::Jsonl);
        assert_eq!(spec.to, at("2026-01-01T00:10:00.5Z"));
        assert!(spec.aggregate_ids.is_empty() && spec.after_job.is_none());
    }

    #[test]
    fn malformed_fields_are_400_and_missing_ones_422() {
        for bad in [
            serde_json::json!({"from": "yesterday", "to": "2026-01-01T00:00:00Z"}),
            serde_json::json!({"from": "2026-01-01", "to": "2026-01-02T00:00:00Z"}),
            serde_json::json!({"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z", "format": "csv"}),
            serde_json::json!({"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z", "aggregate_ids": ["nope"]}),
            serde_json::json!({"from": 1, "to": "2026-01-02T00:00:00Z"}),
        ] {
            assert_eq!(request(bad.clone()).unwrap_err().status, 400, "{bad}");
        }
        let missing = request(serde_json::json!({"from": "2026-01-01T00:00:00Z"})).unwrap_err();
        assert_eq!(missing.status, 422);
        assert_eq!(missing.errors[0].field, "to");
    }

    #[test]
    fn the_window_must_be_ordered_and_in_the_past_and_to_is_capped() {
        let now = at("2026-06-01T00:00:00Z");
        let check = |from: &str, to: &str| {
            let r = request(serde_json::json!({"from": from, "to": to})).unwrap();
            validate(&r, now)
        };
        let err = check("2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z").unwrap_err();
        assert!(matches!(&err, ApiError::Invalid(e) if e[0].field == "from"));
        assert!(check("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z").is_err());
        assert!(
            check("2026-07-01T00:00:00Z", "2026-08-01T00:00:00Z").is_err(),
            "from in the future"
        );
        let (spec, fingerprint) = check("2026-05-01T00:00:00Z", "2030-01-01T00:00:00Z").unwrap();
        assert_eq!(spec.to, now, "capped to now");
        let (_, later) = validate(
            &request(
                serde_json::json!({"from": "2026-05-01T00:00:00Z", "to": "2030-01-01T00:00:00Z"}),
            )
            .unwrap(),
            now + chrono::TimeDelta::hours(1),
        )
        .unwrap();
        assert_eq!(
            fingerprint, later,
            "the fingerprint is of the request as asked"
        );
    }

    #[test]
    fn filters_are_bounded_checked_and_compared_as_sets() {
        let now = at("2026-06-01T00:00:00Z");
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let one = request(serde_json::json!({
            "from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z",
            "aggregate_ids": [a, b, a], "event_types": ["OrderPlaced", "ItemAdded"], "format": "parquet"
        }))
        .unwrap();
        let two = request(serde_json::json!({
            "to": "2026-01-02T00:00:00Z", "from": "2026-01-01T00:00:00Z", "format": "parquet",
            "event_types": ["ItemAdded", "OrderPlaced"], "aggregate_ids": [b, a]
        }))
        .unwrap();
        let (spec, f1) = validate(&one, now).unwrap();
        let (_, f2) = validate(&two, now).unwrap();
        assert_eq!(f1, f2);
        assert_eq!(spec.aggregate_ids.len(), 2);
        assert_eq!(spec.format, Format::Parquet);

        let ids: Vec<Uuid> = (0..=MAX_AGGREGATE_IDS).map(|_| Uuid::now_v7()).collect();
        let too_many = request(serde_json::json!({
            "from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z", "aggregate_ids": ids,
            "event_types": ["Order Placed", "9x", ""]
        }))
        .unwrap();
        let Err(ApiError::Invalid(errors)) = validate(&too_many, now) else {
            panic!("expected 422");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "aggregate_ids",
                "event_types[0]",
                "event_types[1]",
                "event_types[2]"
            ]
        );
    }

    #[test]
    fn idempotency_keys_are_checked_like_command_apis() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h).unwrap(), None);
        h.insert("idempotency-key", HeaderValue::from_static("export-42"));
        assert_eq!(idempotency_key(&h).unwrap().as_deref(), Some("export-42"));
        h.insert("idempotency-key", HeaderValue::from_static("with space"));
        assert_eq!(idempotency_key(&h).unwrap_err().status, 400);
    }
}
