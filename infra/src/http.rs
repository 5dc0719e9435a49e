//! HTTP plumbing shared by every service: the problem+json error every failure leaves through, a
//! JSON extractor whose rejections use it, correlation ids, request metrics, and the operational
//! routes `/healthz`, `/readyz` and `/metrics`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

pub const PROBLEM_JSON: &str = "application/problem+json";
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// One invalid field of a request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON path of the field (`items[2].quantity`), or the parameter's name.
    pub field: String,
    pub message: String,
}

/// An RFC 9457 problem: the only shape an error leaves a service in.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip)]
    pub retry_after_secs: Option<u32>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("/problems/{slug}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after_secs: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-request",
            "Malformed request",
            detail,
        )
    }

    pub fn invalid_fields(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            errors,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid fields",
                detail,
            )
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u32) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                detail,
            )
        }
    }

    /// A generic 500: the cause goes to the log, never to the client.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the server failed to handle the request; it has been logged",
        )
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Deserialize an integer as JSON Schema defines one: any number without a fractional part
/// (`3` and `3.0` alike, as generated clients may send), within ±2^53 when written as a float.
/// A fraction, or a float beyond the exactly representable range, is refused.
pub fn integral<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    use serde::de::{Error, Unexpected};
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match serde_json::Number::deserialize(deserializer)? {
        n if n.is_i64() => n.as_i64().ok_or_else(|| D::Error::custom("not an integer")),
        n if n.is_u64() => Err(D::Error::invalid_value(
            Unexpected::Other(&n.to_string()),
            &"an integer within the signed 64-bit range",
        )),
        n => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f.abs() <= EXACT {
                Ok(f as i64)
            } else {
                Err(D::Error::invalid_type(Unexpected::Float(f), &"an integer"))
            }
        }
    }
}

/// A JSON body extractor whose every rejection is a [`Problem`]: 415 without `application/json`,
/// 413 past the body limit, 400 for broken JSON or a wrong type (with the field's path), 422 when a
/// required field is missing.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "the body must be sent with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload-too-large",
                    "Payload too large",
                    "the body is larger than the limit",
                )
            } else {
                Problem::bad_request(rejection.body_text())
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// Parse a JSON body, reporting the path of the offending field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_string();
        if inner.is_data() && message.starts_with("missing field") {
            let field = message
                .trim_start_matches("missing field ")
                .trim_matches('`')
                .to_string();
            let field = if path == "." || path.is_empty() {
                field
            } else {
                format!("{path}.{field}")
            };
            Problem::invalid_fields(vec![FieldError {
                field,
                message: "is required".into(),
            }])
        } else if inner.is_data() {
            Problem {
                errors: vec![FieldError {
                    field: path.clone(),
                    message: message.clone(),
                }],
                ..Problem::bad_request(format!("{path}: {message}"))
            }
        } else {
            Problem::bad_request(format!("the body is not valid JSON: {message}"))
        }
    })
}

/// Take the caller's `X-Correlation-Id` or make one; it is echoed on the response and available to
/// handlers as an extension.
pub async fn correlation_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(String::from)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    req.extensions_mut().insert(CorrelationId(id.clone()));
    let mut response = next.run(req).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(CORRELATION_HEADER, value);
    }
    response
}

#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

/// Count requests and time them by matched route (never by raw path: ids would explode cardinality).
pub async fn track_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().to_string();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}

/// Install the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is already installed (several apps in one test process):
                // serve an empty, detached one.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
/// One dependency probe.
pub type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// The answer of `/readyz`: every dependency answered within its timeout. Results are kept for a
/// second so that frequent probes do not hammer the dependencies.
#[derive(Clone)]
pub struct Readiness {
    checks: Arc<Vec<(&'static str, Check)>>,
    last: Arc<Mutex<Option<CheckedAt>>>,
}

/// When the checks last ran, and what they said.
type CheckedAt = (Instant, Result<(), String>);

impl Readiness {
    pub fn new(checks: Vec<(&'static str, Check)>) -> Self {
        Self {
            checks: Arc::new(checks),
            last: Arc::new(Mutex::new(None)),
        }
    }

    pub async fn check(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref() {
            if at.elapsed() < Duration::from_secs(1) {
                return result.clone();
            }
        }
        let mut failures = Vec::new();
        for (name, check) in self.checks.iter() {
            match tokio::time::timeout(Duration::from_secs(2), check()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(format!("{name}: {e}")),
                Err(_) => failures.push(format!("{name}: no answer within 2 s")),
            }
        }
        let result = if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        };
        *last = Some((Instant::now(), result.clone()));
        result
    }
}

/// A readiness check that runs a CQL query.
pub fn cql_check(session: Arc<scylla::client::session::Session>) -> Check {
    Arc::new(move || {
        let session = session.clone();
        Box::pin(async move {
            crate::cql::ping(&session)
                .await
                .map_err(|e| format!("{e:#}"))
        })
    })
}

/// A readiness check that asks a Kafka broker for metadata, with a client of its own.
pub fn kafka_check(settings: crate::settings::Kafka) -> Check {
    match crate::kafka::base_config(&settings).create() {
        Ok(client) => kafka_client_check(Arc::new(client)),
        Err(e) => {
            let reason = format!("Kafka client could not be created: {e}");
            Arc::new(move || {
                let reason = reason.clone();
                Box::pin(async move { Err(reason) })
            })
        }
    }
}

/// A readiness check that asks a Kafka broker for metadata through an existing client.
pub fn kafka_client_check(client: Arc<rdkafka::consumer::BaseConsumer>) -> Check {
    use rdkafka::consumer::Consumer;
    Arc::new(move || {
        let client = client.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                client
                    .fetch_metadata(None, Duration::from_millis(1500))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?
        })
    })
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// `/healthz`, `/readyz` and `/metrics`, to merge into a service's router.
pub fn ops_routes(readiness: Readiness, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(OpsState { readiness, metrics })
}

async fn readyz(State(state): State<OpsState>) -> Response {
    match state.readiness.check().await {
        Ok(()) => Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(detail) => Problem::unavailable(detail, 1).into_response(),
    }
}

async fn render_metrics(State(state): State<OpsState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// 404 for any path no route matches, as problem+json.
pub async fn fallback() -> Problem {
    Problem::not_found("no such resource")
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Line {
        sku: String,
        quantity: u32,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        items: Vec<Line>,
    }

    #[test]
    fn a_wrong_type_is_a_400_naming_the_field_path() {
        let p = parse_json::<Body>(br#"{"items":[{"sku":"a","quantity":"x"}]}"#).unwrap_err();
        assert_eq!(p.status, 400);
        assert_eq!(p.errors[0].field, "items[0].quantity");
    }

    #[test]
    fn a_missing_field_is_a_422_naming_the_field() {
        let p = parse_json::<Body>(br#"{"items":[{"sku":"a"}]}"#).unwrap_err();
        assert_eq!(p.status, 422);
        assert_eq!(p.errors[0].field, "items[0].quantity");
    }

    #[test]
    fn broken_json_is_a_400() {
        let p = parse_json::<Body>(b"{not json").unwrap_err();
        assert_eq!(p.status, 400);
        assert!(p.errors.is_empty());
    }

    #[test]
    fn json_content_types_are_recognized() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!is_json(&h));
    }
}
