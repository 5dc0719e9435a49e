//! `/v1/orders` and its sub-resources: each handler validates the request field by field (422
//! with field errors), builds a domain command and runs it through the write path.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Extension, Json, Router};
use events::{EventMetadata, LineItem};
use infra::auth::Principal;
use infra::http::{ApiJson, CorrelationId, FieldError, Problem};
use serde::Deserialize;
use uuid::Uuid;

use crate::domain::order::{OrderCommand, MAX_LINES, MAX_LINE_QUANTITY};
use crate::write::idempotency::order_id_for_key;
use crate::write::{CommandContext, CommandOutcome, WritePath};

pub fn router() -> Router<Arc<WritePath>> {
    Router::new()
        .route("/v1/orders", post(place_order))
        .route("/v1/orders/{id}/items", post(add_item))
        .route("/v1/orders/{id}/items/{sku}", delete(remove_item))
        .route("/v1/orders/{id}/payments", post(record_payment))
        .route("/v1/orders/{id}/shipments", post(ship_order))
        .route("/v1/orders/{id}/cancellation", post(cancel_order))
}

/// A line of an order.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Line {
    /// 1–64 characters of `[A-Za-z0-9._-]`, the first a letter or digit.
    #[schema(
        pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        min_length = 1,
        max_length = 64
    )]
    pub sku: String,
    /// 1–1000.
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(deserialize_with = "infra::http::integral")]
    pub quantity: i64,
    /// 0–1 000 000 000.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "infra::http::integral")]
    pub unit_price_cents: i64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PlaceOrder {
    /// Chosen by the client for idempotent creation; made by the server when absent (or null).
    /// A UUID in any of the forms RFC 9562 tools print: hyphenated, 32 hex digits, braced or URN.
    #[schema(value_type = Option<String>, format = Uuid, pattern = r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}|\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}|urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$")]
    pub order_id: Option<Uuid>,
    /// A UUID (the same forms as `order_id`).
    #[schema(value_type = String, format = Uuid, pattern = r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}|\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}|urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$")]
    pub customer_id: Uuid,
    /// Three upper-case letters (ISO 4217).
    #[schema(pattern = "^[A-Z]{3}$", min_length = 3, max_length = 3)]
    pub currency: String,
    /// 0–100 lines, each SKU once (a SKU twice is refused with 422).
    #[schema(max_items = 100)]
    pub items: Vec<Line>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RecordPayment {
    /// Must equal the order total.
    #[schema(minimum = 0)]
    #[serde(deserialize_with = "infra::http::integral")]
    pub amount_cents: i64,
    /// 1–200 characters, not only white space.
    #[schema(pattern = r"\S", min_length = 1, max_length = 200)]
    pub payment_ref: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ShipOrder {
    /// 1–100 characters, not only white space.
    #[schema(pattern = r"\S", min_length = 1, max_length = 100)]
    pub carrier: String,
    /// 1–100 characters, not only white space.
    #[schema(pattern = r"\S", min_length = 1, max_length = 100)]
    pub tracking_number: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CancelOrder {
    /// 1–500 characters, not only white space.
    #[schema(pattern = r"\S", min_length = 1, max_length = 500)]
    pub reason: String,
}

/// Collects field errors; a request with any is refused with 422.
#[derive(Default)]
struct Checks(Vec<FieldError>);

impl Checks {
    fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn text(&mut self, field: &str, value: &str, max: usize) {
        if value.trim().is_empty() {
            self.fail(field, "must not be empty");
        } else if value.chars().count() > max {
            self.fail(field, format!("must be at most {max} characters"));
        }
    }

    fn sku(&mut self, field: &str, sku: &str) {
        if !valid_sku(sku) {
            self.fail(
                field,
                "must be 1–64 characters of [A-Za-z0-9._-], the first a letter or digit",
            );
        }
    }

    fn line(&mut self, prefix: &str, line: &Line) -> Option<LineItem> {
        let before = self.0.len();
        self.sku(&format!("{prefix}sku"), &line.sku);
        if !(1..=i64::from(MAX_LINE_QUANTITY)).contains(&line.quantity) {
            self.fail(
                format!("{prefix}quantity"),
                format!("must be between 1 and {MAX_LINE_QUANTITY}"),
            );
        }
        if !(0..=1_000_000_000).contains(&line.unit_price_cents) {
            self.fail(
                format!("{prefix}unit_price_cents"),
                "must be between 0 and 1000000000",
            );
        }
        (self.0.len() == before).then(|| LineItem {
            sku: line.sku.clone(),
            quantity: line.quantity as u32,
            unit_price_cents: line.unit_price_cents,
        })
    }

    fn finish<T>(self, value: T) -> Result<T, Problem> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Problem::invalid_fields(self.0))
        }
    }
}

/// `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$` (the first character excludes `.` and `..`, which URLs
/// resolve away).
fn valid_sku(sku: &str) -> bool {
    sku.len() <= 64
        && sku
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && sku
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The `{id}` of the path, parsed before the body so a bad id is a 400 whatever the body says.
pub struct OrderId(pub Uuid);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for OrderId {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| Problem::bad_request(e.body_text()))?;
        let raw = params
            .iter()
            .find(|(k, _)| k == "id")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        parse_id(raw).map(OrderId)
    }
}

fn parse_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem {
        errors: vec![FieldError {
            field: "id".into(),
            message: "must be a UUID".into(),
        }],
        ..Problem::bad_request(format!("{raw:?} is not a UUID"))
    })
}

/// What every command takes from its headers.
fn context(
    principal: &Principal,
    order_id: Uuid,
    command: OrderCommand,
    headers: &HeaderMap,
    correlation: &CorrelationId,
) -> Result<CommandContext, Problem> {
    let idempotency_key = idempotency_key(headers)?;
    let if_match = match headers.get(header::IF_MATCH) {
        None => None,
        Some(v) => Some(parse_if_match(v.to_str().unwrap_or("")).ok_or_else(|| {
            Problem::bad_request("If-Match must be a quoted version, like \"3\"")
        })?),
    };
    let command_id = Uuid::now_v7();
    let (traceparent, tracestate) = trace_context(headers);
    Ok(CommandContext {
        tenant: principal.tenant.clone(),
        order_id,
        command,
        idempotency_key,
        if_match,
        metadata: EventMetadata {
            command_id,
            correlation_id: correlation.0.clone(),
            causation_id: command_id.to_string(),
            traceparent: Some(traceparent),
            tracestate,
        },
    })
}

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

/// `"3"`, `W/"3"` or `3`: 1–18 digits (the pattern in the OpenAPI document, [`IF_MATCH_PATTERN`]).
fn parse_if_match(raw: &str) -> Option<i64> {
    let raw = raw.trim();
    let raw = raw.strip_prefix("W/").unwrap_or(raw);
    let inner = match raw.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"')?,
        None => raw,
    };
    if inner.is_empty() || inner.len() > 18 || !inner.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    inner.parse::<i64>().ok()
}

pub const IF_MATCH_PATTERN: &str = r#"^(W/)?"[0-9]{1,18}"$|^[0-9]{1,18}$"#;

/// The trace context the command's events carry: its own server span's when traces are exported
/// (the projector's spans then join the command's trace under it), else the caller's
/// `traceparent` and `tracestate`, or a new random `traceparent`.
fn trace_context(headers: &HeaderMap) -> (String, Option<String>) {
    if let Some(context) = infra::telemetry::trace_context(&tracing::Span::current()) {
        return context;
    }
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_traceparent(v))
        .map(String::from)
        .unwrap_or_else(new_traceparent);
    let tracestate = headers
        .get("tracestate")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    (traceparent, tracestate)
}

fn valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.len() == 4
        && parts[0].len() == 2
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3].len() == 2
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A W3C trace context for a request that came without one.
fn new_traceparent() -> String {
    let trace = Uuid::new_v4().simple().to_string();
    let span = &Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

async fn run(repo: &WritePath, ctx: CommandContext) -> Response {
    let command = ctx.command.name();
    match repo.execute(ctx).await {
        Ok(outcome) => {
            metrics::counter!("commands_total", "command" => command, "outcome" => "accepted")
                .increment(1);
            success(outcome)
        }
        Err(e) => {
            let problem = crate::error::problem(e);
            let outcome = match problem.status {
                409 => "conflict",
                412 => "precondition_failed",
                404 => "not_found",
                422 => "refused",
                503 => "unavailable",
                _ => "error",
            };
            metrics::counter!("commands_total", "command" => command, "outcome" => outcome)
                .increment(1);
            problem.into_response()
        }
    }
}

fn success(outcome: CommandOutcome) -> Response {
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::OK);
    let etag = format!("\"{}\"", outcome.body.version);
    let location = format!("/v1/orders/{}", outcome.body.order_id);
    let mut response = (status, Json(outcome.body)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    if status == StatusCode::CREATED {
        if let Ok(v) = HeaderValue::from_str(&location) {
            headers.insert(header::LOCATION, v);
        }
    }
    response
}

/// Place an order.
#[utoipa::path(post, path = "/v1/orders", tag = "commands", request_body = PlaceOrder,
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, description = "Same key, same answer, nothing written twice: 1–200 visible ASCII characters; without `order_id` in the body, the key names the order", min_length = 1, max_length = 200, pattern = "^[!-~]{1,200}$"),
    ),
    responses(
        (status = 201, description = "Order placed", body = crate::write::CommandResponse,
         headers(("Location" = String), ("ETag" = String))),
        (status = 400, description = "Malformed: broken JSON, a field of the wrong type, a bad Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order id is taken, or concurrent writers kept winning", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields or refused", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka or CQL unavailable; see Retry-After", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u32))),
    ))]
pub async fn place_order(
    State(repo): State<Arc<WritePath>>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PlaceOrder>,
) -> Result<Response, Problem> {
    let mut checks = Checks::default();
    let currency_ok =
        body.currency.len() == 3 && body.currency.chars().all(|c| c.is_ascii_uppercase());
    if !currency_ok {
        checks.fail("currency", "must be 3 upper-case letters");
    }
    if body.items.len() > MAX_LINES {
        checks.fail("items", format!("at most {MAX_LINES} lines"));
    }
    let items: Vec<LineItem> = body
        .items
        .iter()
        .enumerate()
        .filter_map(|(i, line)| checks.line(&format!("items[{i}]."), line))
        .collect();
    // Without an id of the client's, an Idempotency-Key names the order (per tenant), so every
    // retry of the creation, on any instance, meets the first at the same row.
    let order_id = match (body.order_id, idempotency_key(&headers)?) {
        (Some(id), _) => id,
        (None, Some(key)) => order_id_for_key(&principal.tenant, &key),
        (None, None) => Uuid::now_v7(),
    };
    let command = checks.finish(OrderCommand::PlaceOrder {
        order_id,
        customer_id: body.customer_id,
        currency: body.currency,
        items,
    })?;
    let OrderCommand::PlaceOrder { order_id, .. } = &command else {
        return Err(Problem::internal(&"unexpected command"));
    };
    let ctx = context(&principal, *order_id, command, &headers, &correlation)?;
    Ok(run(&repo, ctx).await)
}

/// Add a line (or more units of a SKU already on the order).
#[utoipa::path(post, path = "/v1/orders/{id}/items", tag = "commands", request_body = Line,
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, nullable = false, description = "Refuse with 412 unless the order is at this version: \"3\", W/\"3\" or 3", pattern = r#"^(W/)?"[0-9]{1,18}"$|^[0-9]{1,18}$"#), ("Idempotency-Key" = Option<String>, Header, nullable = false, description = "Same key, same answer, nothing written twice: 1–200 visible ASCII characters", min_length = 1, max_length = 200, pattern = "^[!-~]{1,200}$")),
    responses((status = 200, description = "Applied; ETag is the order's new version", body = crate::write::CommandResponse, headers(("ETag" = String))),
        (status = 400, description = "Malformed: id not a UUID, bad If-Match or Idempotency-Key, broken JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (of the caller's tenant)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Concurrent writers kept winning; retry", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names another version", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, refused by a business rule, or an Idempotency-Key reused for another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka or CQL unavailable; see Retry-After", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u32)))))]
pub async fn add_item(
    State(repo): State<Arc<WritePath>>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(principal): Extension<Principal>,
    OrderId(id): OrderId,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Line>,
) -> Result<Response, Problem> {
    let mut checks = Checks::default();
    let line = checks.line("", &body);
    let command = checks.finish(line.map(OrderCommand::AddItem))?;
    let Some(command) = command else {
        return Err(Problem::internal(&"validated line missing"));
    };
    Ok(run(
        &repo,
        context(&principal, id, command, &headers, &correlation)?,
    )
    .await)
}

/// Remove a SKU from the order.
#[utoipa::path(delete, path = "/v1/orders/{id}/items/{sku}", tag = "commands",
    params(("id" = Uuid, Path), ("sku" = String, Path, description = "The SKU to remove", min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"), ("If-Match" = Option<String>, Header, nullable = false, description = "Refuse with 412 unless the order is at this version: \"3\", W/\"3\" or 3", pattern = r#"^(W/)?"[0-9]{1,18}"$|^[0-9]{1,18}$"#), ("Idempotency-Key" = Option<String>, Header, nullable = false, description = "Same key, same answer, nothing written twice: 1–200 visible ASCII characters", min_length = 1, max_length = 200, pattern = "^[!-~]{1,200}$")),
    responses((status = 200, description = "Applied; ETag is the order's new version", body = crate::write::CommandResponse, headers(("ETag" = String))),
        (status = 400, description = "Malformed: id not a UUID, bad If-Match or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (of the caller's tenant)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Concurrent writers kept winning; retry", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names another version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, refused by a business rule, or an Idempotency-Key reused for another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka or CQL unavailable; see Retry-After", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u32)))))]
pub async fn remove_item(
    State(repo): State<Arc<WritePath>>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(principal): Extension<Principal>,
    OrderId(id): OrderId,
    Path(path): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let sku = path.1;
    let mut checks = Checks::default();
    checks.sku("sku", &sku);
    let command = checks.finish(OrderCommand::RemoveItem { sku })?;
    Ok(run(
        &repo,
        context(&principal, id, command, &headers, &correlation)?,
    )
    .await)
}

/// Record the payment of the order's total.
#[utoipa::path(post, path = "/v1/orders/{id}/payments", tag = "commands", request_body = RecordPayment,
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, nullable = false, description = "Refuse with 412 unless the order is at this version: \"3\", W/\"3\" or 3", pattern = r#"^(W/)?"[0-9]{1,18}"$|^[0-9]{1,18}$"#), ("Idempotency-Key" = Option<String>, Header, nullable = false, description = "Same key, same answer, nothing written twice: 1–200 visible ASCII characters", min_length = 1, max_length = 200, pattern = "^[!-~]{1,200}$")),
    responses((status = 200, description = "Applied; ETag is the order's new version", body = crate::write::CommandResponse, headers(("ETag" = String))),
        (status = 400, description = "Malformed: id not a UUID, bad If-Match or Idempotency-Key, broken JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (of the caller's tenant)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Concurrent writers kept winning; retry", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names another version", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, refused by a business rule, or an Idempotency-Key reused for another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka or CQL unavailable; see Retry-After", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u32)))))]
pub async fn record_payment(
    State(repo): State<Arc<WritePath>>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(principal): Extension<Principal>,
    OrderId(id): OrderId,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RecordPayment>,
) -> Result<Response, Problem> {
    let mut checks = Checks::default();
    if body.amount_cents < 0 {
        checks.fail("amount_cents", "must not be negative");
    }
    checks.text("payment_ref", &body.payment_ref, 200);
    let command = checks.finish(OrderCommand::RecordPayment {
        amount_cents: body.amount_cents,
        payment_ref: body.payment_ref,
    })?;
    Ok(run(
        &repo,
        context(&principal, id, command, &headers, &correlation)?,
    )
    .await)
}

/// Ship a paid order.
#[utoipa::path(post, path = "/v1/orders/{id}/shipments", tag = "commands", request_body = ShipOrder,
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, nullable = false, description = "Refuse with 412 unless the order is at this version: \"3\", W/\"3\" or 3", pattern = r#"^(W/)?"[0-9]{1,18}"$|^[0-9]{1,18}$"#), ("Idempotency-Key" = Option<String>, Header, nullable = false, description = "Same key, same answer, nothing written twice: 1–200 visible ASCII characters", min_length = 1, max_length = 200, pattern = "^[!-~]{1,200}$")),
    responses((status = 200, description = "Applied; ETag is the order's new version", body = crate::write::CommandResponse, headers(("ETag" = String))),
        (status = 400, description = "Malformed: id not a UUID, bad If-Match or Idempotency-Key, broken JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (of the caller's tenant)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Concurrent writers kept winning; retry", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names another version", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, refused by a business rule, or an Idempotency-Key reused for another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka or CQL unavailable; see Retry-After", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u32)))))]
pub async fn ship_order(
    State(repo): State<Arc<WritePath>>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(principal): Extension<Principal>,
    OrderId(id): OrderId,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ShipOrder>,
) -> Result<Response, Problem> {
    let mut checks = Checks::default();
    checks.text("carrier", &body.carrier, 100);
    checks.text("tracking_number", &body.tracking_number, 100);
    let command = checks.finish(OrderCommand::ShipOrder {
        carrier: body.carrier,
        tracking_number: body.tracking_number,
    })?;
    Ok(run(
        &repo,
        context(&principal, id, command, &headers, &correlation)?,
    )
    .await)
}

/// Cancel an open or paid order.
#[utoipa::path(post, path = "/v1/orders/{id}/cancellation", tag = "commands", request_body = CancelOrder,
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, nullable = false, description = "Refuse with 412 unless the order is at this version: \"3\", W/\"3\" or 3", pattern = r#"^(W/)?"[0-9]{1,18}"$|^[0-9]{1,18}$"#), ("Idempotency-Key" = Option<String>, Header, nullable = false, description = "Same key, same answer, nothing written twice: 1–200 visible ASCII characters", min_length = 1, max_length = 200, pattern = "^[!-~]{1,200}$")),
    responses((status = 200, description = "Applied; ETag is the order's new version", body = crate::write::CommandResponse, headers(("ETag" = String))),
        (status = 400, description = "Malformed: id not a UUID, bad If-Match or Idempotency-Key, broken JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (of the caller's tenant)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Concurrent writers kept winning; retry", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names another version", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, refused by a business rule, or an Idempotency-Key reused for another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka or CQL unavailable; see Retry-After", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u32)))))]
pub async fn cancel_order(
    State(repo): State<Arc<WritePath>>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(principal): Extension<Principal>,
    OrderId(id): OrderId,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CancelOrder>,
) -> Result<Response, Problem> {
    let mut checks = Checks::default();
    checks.text("reason", &body.reason, 500);
    let command = checks.finish(OrderCommand::CancelOrder {
        reason: body.reason,
    })?;
    Ok(run(
        &repo,
        context(&principal, id, command, &headers, &correlation)?,
    )
    .await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_accepts_quoted_weak_and_bare_versions() {
        assert_eq!(parse_if_match("\"3\""), Some(3));
        assert_eq!(parse_if_match("W/\"4\""), Some(4));
        assert_eq!(parse_if_match("5"), Some(5));
        assert_eq!(parse_if_match("\"x\""), None);
        assert_eq!(parse_if_match("\"-1\""), None);
    }

    #[test]
    fn a_line_out_of_range_lists_every_bad_field() {
        let mut checks = Checks::default();
        let line = Line {
            sku: "bad sku!".into(),
            quantity: 0,
            unit_price_cents: -1,
        };
        assert!(checks.line("items[0].", &line).is_none());
        let fields: Vec<_> = checks.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "items[0].sku",
                "items[0].quantity",
                "items[0].unit_price_cents"
            ]
        );
    }

    #[test]
    fn integers_may_be_written_as_floats_without_a_fraction() {
        let line: Line =
            serde_json::from_str(r#"{"sku":"A","quantity":2.0,"unit_price_cents":5}"#).unwrap();
        assert_eq!(line.quantity, 2);
        for bad in [
            r#"{"sku":"A","quantity":2.5,"unit_price_cents":5}"#,
            r#"{"sku":"A","quantity":1e300,"unit_price_cents":5}"#,
            r#"{"sku":"A","quantity":"2","unit_price_cents":5}"#,
            r#"{"sku":"A","quantity":18446744073709551615,"unit_price_cents":5}"#,
        ] {
            assert!(serde_json::from_str::<Line>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn skus_start_with_a_letter_or_digit() {
        assert!(valid_sku("A-1.b_c"));
        assert!(!valid_sku("."));
        assert!(!valid_sku(".."));
        assert!(!valid_sku(""));
        assert!(!valid_sku(&"a".repeat(65)));
        assert!(!valid_sku("a b"));
    }

    #[test]
    fn generated_trace_contexts_are_valid() {
        assert!(valid_traceparent(&new_traceparent()));
        assert!(!valid_traceparent("00-xyz-abc-01"));
    }

    #[test]
    fn without_traces_the_events_carry_the_callers_trace_context_or_a_new_one() {
        let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static(caller));
        headers.insert("tracestate", HeaderValue::from_static("k=v"));
        assert_eq!(
            trace_context(&headers),
            (caller.to_string(), Some("k=v".to_string()))
        );
        headers.insert("traceparent", HeaderValue::from_static("garbage"));
        let (made, _) = trace_context(&headers);
        assert!(valid_traceparent(&made) && made != caller);
    }
}
