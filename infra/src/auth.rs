//! Who may call the APIs, for which tenant, and how often (docs/security.md).
//!
//! - [`Authenticator::verify`]: an `Authorization: Bearer <JWT>` checked against the public keys
//!   of a JWKS (a file or a URL, read again on a timer and when a token names an unknown `kid`).
//!   The key is chosen by the token's `kid`, and the algorithm is the key's own (its `alg`, or
//!   what its type implies): a token whose header names another algorithm is refused, so
//!   `alg: none` and HS256-signed-with-the-public-key tokens never verify. `iss`, `aud`, `exp`
//!   and `sub` are required, `exp`/`nbf` checked with a small leeway.
//! - [`Principal`]: the caller, with the tenant from a claim, and the scopes it was granted.
//! - [`authenticate`]: the middleware that answers 401 (RFC 6750 `WWW-Authenticate` and
//!   problem+json) or 429 (token buckets per tenant and per client, with `Retry-After` and the
//!   `RateLimit-Policy`/`RateLimit` headers), and otherwise hands the [`Principal`] to the handler.
//! - [`require`]: the per-route scope check, 403 `insufficient_scope`.
//! - [`dev`]: the development key pair and the tokens `infra/dev token` prints.

pub mod dev;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::http::Problem;
use crate::settings::{self, Settings};

/// Commands (`POST`/`DELETE` on `/v1/orders…`).
pub const ORDERS_WRITE: &str = "orders:write";
/// Order and customer views, stats.
pub const ORDERS_READ: &str = "orders:read";
/// An order's raw events, exports.
pub const EVENTS_READ: &str = "events:read";
/// Projection status and control.
pub const OPS: &str = "ops";
/// Every scope there is.
pub const ALL_SCOPES: [&str; 4] = [ORDERS_WRITE, ORDERS_READ, EVENTS_READ, OPS];

/// The realm every `WWW-Authenticate` names.
const REALM: &str = "orders";

/// The caller of a request, as its token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    /// The token's `sub`: the client, for rate limits and logs.
    pub subject: String,
    pub scopes: Vec<String>,
}

impl Principal {
    pub fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// Why a token was refused (the `error_description` of the 401; never a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("the Authorization header is not `Bearer <token>`")]
    Malformed,
    #[error("{0}")]
    Invalid(String),
}

impl AuthError {
    fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Invalid(_) => "invalid",
        }
    }

    /// 401 with the RFC 6750 challenge: no `error` when no credentials came at all (§3.1).
    pub fn into_problem_response(self) -> Response {
        metrics::counter!("http_auth_failures_total", "reason" => self.reason()).increment(1);
        let challenge = match &self {
            AuthError::Missing => format!("Bearer realm=\"{REALM}\""),
            other => format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                other
                    .to_string()
                    .chars()
                    .map(|c| match c {
                        '"' | '\\' => '\'',
                        c if c == ' ' || c.is_ascii_graphic() => c,
                        _ => '?',
                    })
                    .take(200)
                    .collect::<String>()
            ),
        };
        let mut response = Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            format!(
                "{}; send `Authorization: Bearer <token>`",
                self.to_string().chars().take(300).collect::<String>()
            ),
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        response
    }
}

/// Public keys by `kid`, each with the one algorithm it verifies.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
}

impl KeySet {
    /// The usable keys of a JWKS document: signature keys with a `kid` whose algorithm is EdDSA,
    /// ES256 or RS256. Others are skipped with a warning.
    pub fn parse(json: &str) -> anyhow::Result<Self> {
        let set: JwkSet = serde_json::from_str(json).context("the JWKS is not a JWK set")?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                tracing::warn!("a JWKS key without `kid` is ignored");
                continue;
            };
            let implied = match &jwk.algorithm {
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    Some(Algorithm::EdDSA)
                }
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Some(Algorithm::ES256)
                }
                AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
                _ => None,
            };
            let declared = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            let alg = match (declared, implied) {
                (Some(d), Some(i)) if d == i => d,
                (None, Some(i)) => i,
                _ => {
                    tracing::warn!(kid, "a JWKS key of an unsupported type or algorithm is ignored (EdDSA/Ed25519, ES256/P-256, RS256 are)");
                    continue;
                }
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid, (key, alg));
                }
                Err(e) => {
                    tracing::warn!(kid, error = %e, "a JWKS key that does not parse is ignored")
                }
            }
        }
        if keys.is_empty() {
            bail!("the JWKS holds no usable key (EdDSA, ES256 or RS256 with a `kid`)");
        }
        Ok(Self { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<Vec<String>>,
    #[serde(flatten)]
    rest: HashMap<String, serde_json::Value>,
}

/// A token verified against a key set, good until its `exp` (plus the leeway) and only while that
/// key set is the current one: a JWKS read again (a key rotated out) makes every entry stale.
struct Verified {
    principal: Principal,
    /// Unix seconds after which the token is refused (`exp` + leeway).
    valid_until: i64,
    keys: Arc<KeySet>,
}

/// The most verified tokens kept; when full, the cache starts over.
const VERIFIED_CAPACITY: usize = 4096;

type KeyedLimiter = RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// One token bucket per key (a tenant, or a tenant's client).
struct Limit {
    name: &'static str,
    per_second: u32,
    limiter: KeyedLimiter,
}

impl Limit {
    fn new(name: &'static str, per_second: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
        Some(Self {
            name,
            per_second,
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
                .with_middleware::<StateInformationMiddleware>(),
        })
    }

    fn policy(&self) -> String {
        format!("\"{}\";q={};w=1", self.name, self.per_second)
    }
}

/// Verifies tokens and applies rate limits; one per service, shared by every request.
pub struct Authenticator {
    settings: settings::Auth,
    /// The tenant of every request when authentication is off.
    fallback_tenant: String,
    keys: RwLock<Arc<KeySet>>,
    /// Tokens already verified, so a client's next request with the same token costs a lookup
    /// rather than a signature check (an Ed25519 or ECDSA verification is tens of microseconds,
    /// more than the rest of a cached read).
    verified: Mutex<HashMap<String, Verified>>,
    last_read: Mutex<Instant>,
    http: reqwest::Client,
    limits: Vec<Limit>,
}

impl Authenticator {
    /// Read the JWKS (a service refuses to start without usable keys) and set up the limits.
    pub async fn from_settings(settings: &Settings) -> anyhow::Result<Arc<Self>> {
        let auth = Self::new(settings, KeySet::default());
        if !settings.auth.enabled {
            tracing::warn!(
                tenant = %settings.tenant,
                "AUTHENTICATION IS OFF (auth.enabled = false): anyone who reaches this service acts for tenant {:?} with every scope; never run it like this where others can connect",
                settings.tenant
            );
            return Ok(Arc::new(auth));
        }
        if settings.auth.jwks.trim().is_empty() {
            bail!("auth.jwks is not set: set APP_AUTH__JWKS to a JWKS file or URL (infra/dev up makes a development one), or APP_AUTH__ENABLED=false to run without authentication");
        }
        let keys = auth.read_jwks().await?;
        tracing::info!(jwks = %settings.auth.jwks, keys = keys.len(), issuer = %settings.auth.issuer, audience = %settings.auth.audience, "bearer tokens required");
        if let Ok(mut slot) = auth.keys.write() {
            *slot = Arc::new(keys);
        }
        Ok(Arc::new(auth))
    }

    /// Authentication off: every request is `tenant` with every scope (route tests).
    pub fn disabled(tenant: &str) -> Arc<Self> {
        let settings = Settings {
            tenant: tenant.to_string(),
            auth: settings::Auth {
                enabled: false,
                ..settings::Auth::default()
            },
            rate_limit: settings::RateLimit {
                tenant_per_second: 0,
                client_per_second: 0,
                ..settings::RateLimit::default()
            },
            ..Settings::default()
        };
        Arc::new(Self::new(&settings, KeySet::default()))
    }

    fn new(settings: &Settings, keys: KeySet) -> Self {
        let r = &settings.rate_limit;
        // The client's bucket first: a request its client may not send takes nothing from the
        // tenant's bucket (one client cannot use up its tenant's share with refused requests).
        let limits = [
            Limit::new("client", r.client_per_second, r.client_burst),
            Limit::new("tenant", r.tenant_per_second, r.tenant_burst),
        ]
        .into_iter()
        .flatten()
        .collect();
        Self {
            settings: settings.auth.clone(),
            fallback_tenant: settings.tenant.clone(),
            keys: RwLock::new(Arc::new(keys)),
            verified: Mutex::new(HashMap::new()),
            last_read: Mutex::new(Instant::now()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            limits,
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    async fn read_jwks(&self) -> anyhow::Result<KeySet> {
        let source = self.settings.jwks.trim();
        let text = if source.starts_with("http://") || source.starts_with("https://") {
            self.http
                .get(source)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .with_context(|| format!("fetching the JWKS from {source}"))?
                .text()
                .await
                .with_context(|| format!("reading the JWKS from {source}"))?
        } else {
            tokio::fs::read_to_string(source)
                .await
                .with_context(|| format!("reading the JWKS file {source}"))?
        };
        KeySet::parse(&text).with_context(|| format!("the JWKS at {source}"))
    }

    /// Read the JWKS again; on failure the keys already loaded stay.
    pub async fn refresh(&self) {
        if let Ok(mut last) = self.last_read.lock() {
            *last = Instant::now();
        }
        match self.read_jwks().await {
            Ok(keys) => {
                if let Ok(mut slot) = self.keys.write() {
                    *slot = Arc::new(keys);
                }
            }
            Err(e) => {
                metrics::counter!("auth_jwks_refresh_failures_total").increment(1);
                tracing::warn!(
                    error = format!("{e:#}"),
                    "reading the JWKS again failed; the keys read before stay in use"
                );
            }
        }
    }

    /// Read the JWKS on a timer, and forget idle rate-limit buckets, until the process ends.
    pub fn spawn_maintenance(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let auth = self.clone();
        tokio::spawn(async move {
            let period = Duration::from_millis(auth.settings.jwks_refresh_ms.max(1_000));
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                if auth.settings.enabled {
                    auth.refresh().await;
                }
                for limit in &auth.limits {
                    limit.limiter.retain_recent();
                }
            }
        })
    }

    fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        self.keys.read().ok()?.keys.get(kid).cloned()
    }

    /// The caller a bearer token names, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if let Some(principal) = self.already_verified(token) {
            return Ok(principal);
        }
        let keys = self.current_keys();
        let (principal, exp) = self.verify_signed(token).await?;
        self.remember(token, &principal, exp, keys);
        Ok(principal)
    }

    fn current_keys(&self) -> Option<Arc<KeySet>> {
        self.keys.read().ok().map(|keys| keys.clone())
    }

    /// The principal of `token` if it was verified against the current keys and has not expired.
    fn already_verified(&self, token: &str) -> Option<Principal> {
        let keys = self.current_keys()?;
        let now = chrono::Utc::now().timestamp();
        let verified = self.verified.lock().ok()?;
        let entry = verified.get(token)?;
        (now < entry.valid_until && Arc::ptr_eq(&entry.keys, &keys))
            .then(|| entry.principal.clone())
    }

    /// Keep a verified token, if the keys it was verified with are still the current ones.
    fn remember(&self, token: &str, principal: &Principal, exp: i64, keys: Option<Arc<KeySet>>) {
        let Some(keys) = keys else {
            return;
        };
        let leeway = i64::try_from(self.settings.leeway_secs).unwrap_or(0);
        let Ok(mut verified) = self.verified.lock() else {
            return;
        };
        if verified.len() >= VERIFIED_CAPACITY {
            verified.clear();
        }
        verified.insert(
            token.to_string(),
            Verified {
                principal: principal.clone(),
                valid_until: exp.saturating_add(leeway),
                keys,
            },
        );
    }

    /// Check the token's signature and claims; returns the caller and the token's `exp`.
    async fn verify_signed(&self, token: &str) -> Result<(Principal, i64), AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("the token's header does not parse: {e}")))?;
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Invalid("the token names no key (`kid`)".into()))?;
        let (key, alg) = match self.key(&kid) {
            Some(found) => found,
            None => {
                // A key rotated in since the last read: read again, but not on every request.
                let due = self.last_read.lock().is_ok_and(|last| {
                    last.elapsed() >= Duration::from_millis(self.settings.jwks_min_refresh_ms)
                });
                if due {
                    self.refresh().await;
                }
                self.key(&kid)
                    .ok_or_else(|| AuthError::Invalid(format!("unknown key {kid:?}")))?
            }
        };
        if header.alg != alg {
            return Err(AuthError::Invalid(format!(
                "key {kid:?} verifies {alg:?} only, the token says {:?}",
                header.alg
            )));
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.settings.leeway_secs;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| AuthError::Invalid(format!("the token is not valid: {e}")))?;
        let claims = data.claims;
        // Required and checked by the validation above; a number in seconds.
        let exp = claims
            .rest
            .get("exp")
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
            .ok_or_else(|| AuthError::Invalid("the token's `exp` is not a number".into()))?;
        let tenant = claims
            .rest
            .get(&self.settings.tenant_claim)
            .and_then(|v| v.as_str())
            .filter(|t| valid_tenant(t))
            .ok_or_else(|| {
                AuthError::Invalid(format!(
                    "the token has no valid `{}` claim (1–128 characters of [A-Za-z0-9._:-])",
                    self.settings.tenant_claim
                ))
            })?;
        if claims.sub.is_empty() {
            return Err(AuthError::Invalid("the token's `sub` is empty".into()));
        }
        let scopes = match (claims.scope, claims.scp) {
            (Some(s), _) => s.split_whitespace().map(String::from).collect(),
            (None, Some(list)) => list,
            (None, None) => Vec::new(),
        };
        Ok((
            Principal {
                tenant: tenant.to_string(),
                subject: claims.sub,
                scopes,
            },
            exp,
        ))
    }

    /// The caller of a request from its `Authorization` header.
    pub async fn principal(
        &self,
        authorization: Option<&HeaderValue>,
    ) -> Result<Principal, AuthError> {
        if !self.settings.enabled {
            return Ok(Principal {
                tenant: self.fallback_tenant.clone(),
                subject: "anonymous".into(),
                scopes: ALL_SCOPES.iter().map(|s| s.to_string()).collect(),
            });
        }
        let Some(value) = authorization else {
            return Err(AuthError::Missing);
        };
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
            return Err(AuthError::Malformed);
        }
        self.verify(token).await
    }

    /// Take one token from the caller's buckets: `Err` with the 429 when one is empty, else the
    /// `RateLimit` header value to answer with.
    fn take(&self, principal: &Principal) -> Result<Option<String>, Box<Response>> {
        let mut tightest: Option<(u32, &Limit)> = None;
        for limit in &self.limits {
            let key = match limit.name {
                "tenant" => principal.tenant.clone(),
                _ => format!("{}\u{0}{}", principal.tenant, principal.subject),
            };
            match limit.limiter.check_key(&key) {
                Ok(snapshot) => {
                    let left = snapshot.remaining_burst_capacity();
                    if tightest.is_none_or(|(l, _)| left < l) {
                        tightest = Some((left, limit));
                    }
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    let secs = u32::try_from(secs.max(1)).unwrap_or(u32::MAX);
                    metrics::counter!("http_rate_limited_total", "limit" => limit.name)
                        .increment(1);
                    let mut response = Problem {
                        retry_after_secs: Some(secs),
                        ..Problem::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "rate-limited",
                            "Too many requests",
                            format!(
                                "the {} limit ({} requests per second) is reached; retry after {secs} s",
                                limit.name, limit.per_second
                            ),
                        )
                    }
                    .into_response();
                    self.rate_headers(
                        &mut response,
                        Some(format!("\"{}\";r=0;t={secs}", limit.name)),
                    );
                    return Err(Box::new(response));
                }
            }
        }
        Ok(tightest.map(|(left, limit)| {
            let refill = u64::from(left).div_ceil(u64::from(limit.per_second.max(1)));
            format!("\"{}\";r={left};t={}", limit.name, refill.max(1))
        }))
    }

    fn rate_headers(&self, response: &mut Response, current: Option<String>) {
        if self.limits.is_empty() {
            return;
        }
        let policy = self
            .limits
            .iter()
            .map(Limit::policy)
            .collect::<Vec<_>>()
            .join(", ");
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&policy) {
            headers.insert(HeaderName::from_static("ratelimit-policy"), v);
        }
        if let Some(Ok(v)) = current.map(|c| HeaderValue::from_str(&c)) {
            headers.insert(HeaderName::from_static("ratelimit"), v);
        }
    }
}

fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

/// The middleware in front of every `/v1` route: 401 unless the bearer token verifies, 429 past
/// the caller's rate limits, else the [`Principal`] goes to the handler as an extension.
pub async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    mut req: Request,
    next: Next,
) -> Response {
    let principal = match auth
        .principal(req.headers().get(header::AUTHORIZATION))
        .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "request refused: not authenticated");
            return e.into_problem_response();
        }
    };
    let current = match auth.take(&principal) {
        Ok(current) => current,
        Err(response) => return *response,
    };
    req.extensions_mut().insert(principal);
    let mut response = next.run(req).await;
    auth.rate_headers(&mut response, current);
    response
}

/// The scope check of a group of routes: `route_layer(from_fn_with_state(SCOPE, require))`.
pub async fn require(State(scope): State<&'static str>, req: Request, next: Next) -> Response {
    match req.extensions().get::<Principal>() {
        Some(p) if p.has(scope) => next.run(req).await,
        Some(_) => {
            metrics::counter!("http_auth_failures_total", "reason" => "insufficient_scope")
                .increment(1);
            let mut response = Problem::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "Insufficient scope",
                format!("this request needs the scope `{scope}`"),
            )
            .into_response();
            let challenge = format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{scope}\""
            );
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            response
        }
        None => AuthError::Missing.into_problem_response(),
    }
}

/// Describe the bearer scheme in an OpenAPI document and, on every operation whose path
/// `scope_of` gives a scope, the scope it needs and the 401, 403 and 429 it may answer.
pub fn document(
    api: &mut utoipa::openapi::OpenApi,
    scope_of: impl Fn(&str) -> Option<&'static str>,
) {
    use utoipa::openapi::content::ContentBuilder;
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::response::ResponseBuilder;
    use utoipa::openapi::security::{
        HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    use utoipa::openapi::{Object, Ref, RefOr, Response, Type};

    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "A JWT signed with a key of the deployment's JWKS (EdDSA, ES256 or RS256), with `iss`, \
                     `aud`, `sub`, `exp`, the caller's tenant in the `tenant` claim and its scopes in \
                     `scope` (space-separated): orders:write, orders:read, events:read, ops.",
                ))
                .build(),
        ),
    );
    let text = || {
        RefOr::T(utoipa::openapi::Schema::Object(Object::with_type(
            Type::String,
        )))
    };
    let integer = || {
        RefOr::T(utoipa::openapi::Schema::Object(Object::with_type(
            Type::Integer,
        )))
    };
    let problem = |description: &str, headers: &[(&str, bool)]| -> RefOr<Response> {
        let mut builder = ResponseBuilder::new().description(description).content(
            PROBLEM_JSON_TYPE,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        );
        for (name, numeric) in headers {
            let schema = if *numeric { integer() } else { text() };
            builder = builder.header(*name, HeaderBuilder::new().schema(schema).build());
        }
        RefOr::T(builder.build())
    };
    for (path, item) in api.paths.paths.iter_mut() {
        let Some(scope) = scope_of(path) else {
            continue;
        };
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for operation in operations.into_iter().flatten() {
            operation.security = Some(vec![SecurityRequirement::new("bearer", [scope])]);
            let responses = &mut operation.responses.responses;
            responses.insert(
                "401".into(),
                problem(
                    "No bearer token, or one that does not verify (signature, key, algorithm, issuer, audience, expiry)",
                    &[("WWW-Authenticate", false)],
                ),
            );
            responses.insert(
                "403".into(),
                problem(
                    &format!("The token lacks the scope `{scope}` (insufficient_scope)"),
                    &[("WWW-Authenticate", false)],
                ),
            );
            responses.insert(
                "429".into(),
                problem(
                    "Over the tenant's or the client's rate limit",
                    &[
                        ("Retry-After", true),
                        ("RateLimit-Policy", false),
                        ("RateLimit", false),
                    ],
                ),
            );
        }
    }
}

const PROBLEM_JSON_TYPE: &str = "application/problem+json";

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &std::path::Path) -> Settings {
        let jwks = dev::ensure_keys(dir).unwrap();
        Settings {
            auth: settings::Auth {
                jwks: jwks.display().to_string(),
                ..settings::Auth::default()
            },
            ..Settings::default()
        }
    }

    #[tokio::test]
    async fn a_dev_token_verifies_with_its_tenant_subject_and_scopes() {
        let dir = std::env::temp_dir().join(format!("auth-{}", uuid::Uuid::now_v7()));
        let s = settings(&dir);
        let auth = Authenticator::from_settings(&s).await.unwrap();
        let token =
            dev::mint_for(&s, "acme", "alice", &[ORDERS_READ], Duration::from_secs(60)).unwrap();
        let p = auth.verify(&token).await.unwrap();
        assert_eq!(p.tenant, "acme");
        assert_eq!(p.subject, "alice");
        assert!(p.has(ORDERS_READ) && !p.has(ORDERS_WRITE));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_token_for_another_audience_or_issuer_is_refused() {
        let dir = std::env::temp_dir().join(format!("auth-{}", uuid::Uuid::now_v7()));
        let s = settings(&dir);
        let auth = Authenticator::from_settings(&s).await.unwrap();
        let mut other = s.clone();
        other.auth.audience = "someone-else".into();
        let token = dev::mint_for(&other, "acme", "alice", &[], Duration::from_secs(60)).unwrap();
        assert!(matches!(
            auth.verify(&token).await,
            Err(AuthError::Invalid(_))
        ));
        let mut other = s.clone();
        other.auth.issuer = "someone-else".into();
        let token = dev::mint_for(&other, "acme", "alice", &[], Duration::from_secs(60)).unwrap();
        assert!(matches!(
            auth.verify(&token).await,
            Err(AuthError::Invalid(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A verified token is kept, and served from memory only until its `exp` (plus leeway).
    #[tokio::test]
    async fn a_remembered_token_still_expires() {
        let dir = std::env::temp_dir().join(format!("auth-{}", uuid::Uuid::now_v7()));
        let mut s = settings(&dir);
        s.auth.leeway_secs = 0;
        let auth = Authenticator::from_settings(&s).await.unwrap();
        let token =
            dev::mint_for(&s, "acme", "alice", &[ORDERS_READ], Duration::from_secs(1)).unwrap();
        assert_eq!(auth.verify(&token).await.unwrap().subject, "alice");
        assert_eq!(auth.verified.lock().unwrap().len(), 1, "remembered");
        assert_eq!(auth.verify(&token).await.unwrap().subject, "alice");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(
            auth.verify(&token).await.is_err(),
            "an expired token is refused even though it was remembered"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A JWKS served over HTTP is read at start, and a token naming a key rotated in later makes
    /// the service read it again (at most once per `jwks_min_refresh_ms`).
    #[tokio::test]
    async fn a_rotated_key_is_picked_up_from_the_jwks_url() {
        let first = std::env::temp_dir().join(format!("auth-{}", uuid::Uuid::now_v7()));
        let second = std::env::temp_dir().join(format!("auth-{}", uuid::Uuid::now_v7()));
        let jwks_a = dev::ensure_keys(&first).unwrap();
        let jwks_b = dev::ensure_keys(&second).unwrap();
        let served = Arc::new(std::sync::Mutex::new(
            std::fs::read_to_string(&jwks_a).unwrap(),
        ));
        let body = served.clone();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let body = body.lock().unwrap().clone();
                async move { body }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut s = Settings::default();
        s.auth.jwks = url;
        s.auth.jwks_min_refresh_ms = 0;
        let auth = Authenticator::from_settings(&s).await.unwrap();
        let sign = |jwks: &std::path::Path| {
            let key = dev::load_signing_key(&dev::signing_key_beside(jwks)).unwrap();
            dev::sign(
                &key,
                &dev::claims(&s, "acme", "alice", &[OPS], Duration::from_secs(60)),
            )
            .unwrap()
        };
        assert!(auth.verify(&sign(&jwks_a)).await.is_ok());
        // Key B is not published yet: refused, even after a re-read.
        assert!(auth.verify(&sign(&jwks_b)).await.is_err());
        // Rotated: the JWKS now holds key B only; its tokens verify, key A's no longer do.
        *served.lock().unwrap() = std::fs::read_to_string(&jwks_b).unwrap();
        assert!(auth.verify(&sign(&jwks_b)).await.is_ok());
        auth.refresh().await;
        assert!(auth.verify(&sign(&jwks_a)).await.is_err());
        let _ = std::fs::remove_dir_all(first);
        let _ = std::fs::remove_dir_all(second);
    }

    #[tokio::test]
    async fn without_a_usable_jwks_a_service_refuses_to_start_unless_auth_is_off() {
        let mut s = Settings::default();
        assert!(
            Authenticator::from_settings(&s).await.is_err(),
            "no JWKS set"
        );
        s.auth.jwks = "/nonexistent/jwks.json".into();
        assert!(
            Authenticator::from_settings(&s).await.is_err(),
            "unreadable"
        );
        s.auth.enabled = false;
        let auth = Authenticator::from_settings(&s).await.unwrap();
        let p = auth.principal(None).await.unwrap();
        assert_eq!(p.tenant, s.tenant);
        assert!(ALL_SCOPES.iter().all(|scope| p.has(scope)));
    }

    #[test]
    fn tenants_are_short_and_plain() {
        assert!(valid_tenant("acme"));
        assert!(valid_tenant("test.label.0190"));
        assert!(!valid_tenant(""));
        assert!(!valid_tenant("a b"));
        assert!(!valid_tenant(&"x".repeat(129)));
    }
}
