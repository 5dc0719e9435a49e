//! The tracing subscriber, built once per process, and distributed traces.
//!
//! Logs go to stdout (JSON lines or human-readable). When `telemetry.otlp_endpoint` is set, the
//! process's `tracing` spans are also exported as OpenTelemetry traces over OTLP/HTTP (protobuf),
//! sampled parent-based with a trace-id ratio (`telemetry.sampling_ratio`). When it is empty (the
//! default) no OpenTelemetry layer is installed at all: the subscriber is exactly the logging one.
//!
//! The W3C trace context crosses the services twice: from an HTTP caller's `traceparent` header
//! into the server span ([`http_trace_layer`]), and from the command's span into every event's
//! envelope and Kafka headers ([`trace_context`]), where the projector picks it up again
//! ([`set_remote_parent`], [`add_remote_link`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, Request, Response};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{DefaultOnRequest, DefaultOnResponse, OnResponse, TraceLayer};
use tracing::{Level, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::{fmt, prelude::*, EnvFilter, Layer, Registry};

use crate::settings::Telemetry;

/// Whether this process exports traces (an OpenTelemetry layer is installed).
static EXPORTING: AtomicBool = AtomicBool::new(false);
/// Logs go to stderr instead of stdout: set by [`init_command_line`].
static LOGS_TO_STDERR: AtomicBool = AtomicBool::new(false);

/// Whether spans of this process are exported as OpenTelemetry traces. Callers skip the work of
/// propagating trace contexts when they are not.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Flushes and stops the trace exporter when dropped (or by [`TelemetryGuard::shutdown`]); holds
/// nothing when traces are off. Keep it alive for as long as the process runs.
#[must_use = "dropping the guard stops the trace exporter"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Export the spans still buffered (bounded by the exporter's timeout) and stop exporting.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown() {
                eprintln!("telemetry: flushing traces at exit failed: {e}");
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// [`init`] for a command-line tool (`projector rebuild|shadow|ctl`, `stack-admin`): the same
/// logs, on stderr, so that what the command prints on stdout (a JSON report, an export) can be
/// piped as it is.
pub fn init_command_line(settings: &Telemetry, service: &str) -> TelemetryGuard {
    LOGS_TO_STDERR.store(true, Ordering::Relaxed);
    init(settings, service)
}

/// Where log lines are written: stdout for the services, stderr for command-line tools.
fn log_writer() -> fmt::writer::BoxMakeWriter {
    if LOGS_TO_STDERR.load(Ordering::Relaxed) {
        fmt::writer::BoxMakeWriter::new(std::io::stderr)
    } else {
        fmt::writer::BoxMakeWriter::new(std::io::stdout)
    }
}

/// Install the global subscriber: JSON lines or human-readable, filtered by `RUST_LOG` or the
/// setting; plus the OpenTelemetry layer when `otlp_endpoint` is set. `service` names the process
/// in traces unless `telemetry.service_name` does.
pub fn init(settings: &Telemetry, service: &str) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let endpoint = settings.otlp_endpoint.trim();
    if endpoint.is_empty() {
        logs_only(filter, &settings.format);
        return TelemetryGuard { provider: None };
    }

    let service = if settings.service_name.trim().is_empty() {
        service
    } else {
        settings.service_name.trim()
    };
    let provider = match tracer_provider(endpoint, settings.sampling_ratio, service) {
        Ok(provider) => provider,
        Err(e) => {
            // Logging must work even when the exporter cannot be built: go on without traces.
            logs_only(filter, &settings.format);
            tracing::error!(error = %format!("{e:#}"), "traces are off: the OTLP exporter could not be built");
            return TelemetryGuard { provider: None };
        }
    };
    // Logs keep their own filter; the exporter sees every span at INFO and above, whatever the log
    // filter, and events (span events) from WARN up.
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if settings.format == "json" {
        json_layer().with_filter(filter).boxed()
    } else {
        fmt::layer()
            .compact()
            .with_writer(log_writer())
            .with_filter(filter)
            .boxed()
    };
    // No busy/idle timing (a clock read at every poll of every span) and no thread names: what
    // a trace needs is the spans' structure, times and fields.
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service.to_string()))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(
            filter_fn(|meta| {
                if meta.is_span() {
                    *meta.level() <= Level::INFO
                } else {
                    *meta.level() <= Level::WARN
                }
            })
            .with_max_level_hint(LevelFilter::INFO),
        )
        .boxed();
    if tracing_subscriber::registry()
        .with(vec![logs, traces])
        .try_init()
        .is_err()
    {
        // Another subscriber was installed first: nothing of this one is used.
        let _ = provider.shutdown();
        return TelemetryGuard { provider: None };
    }
    EXPORTING.store(true, Ordering::Relaxed);
    tracing::info!(%endpoint, sampling_ratio = settings.sampling_ratio, %service, "exporting traces over OTLP/HTTP");
    TelemetryGuard {
        provider: Some(provider),
    }
}

/// The subscriber without traces: the log layer behind the global filter, as it always was.
fn logs_only(filter: EnvFilter, format: &str) {
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (tests building several apps) is harmless: the first subscriber stays.
    let _ = if format == "json" {
        registry.with(json_layer()).try_init()
    } else {
        registry
            .with(fmt::layer().compact().with_writer(log_writer()))
            .try_init()
    };
}

fn json_layer<S>() -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_writer(log_writer())
}

/// `endpoint` as the URL spans are posted to: `/v1/traces` is appended to a base URL.
pub fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{endpoint}/v1/traces")
    }
}

fn tracer_provider(
    endpoint: &str,
    sampling_ratio: f64,
    service: &str,
) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    let timeout = Duration::from_secs(10);
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .with_timeout(timeout)
        .with_http_client(BlockingHttp::new(timeout)?)
        .build()?;
    let ratio = if sampling_ratio.is_finite() {
        sampling_ratio.clamp(0.0, 1.0)
    } else {
        1.0
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build())
}

/// The exporter's HTTP client: the workspace's reqwest (0.12), blocking, because the batch span
/// processor exports from a thread of its own, outside any async runtime.
#[derive(Debug)]
struct BlockingHttp(reqwest::blocking::Client);

impl BlockingHttp {
    fn new(timeout: Duration) -> anyhow::Result<Self> {
        // A blocking client starts a runtime of its own, which cannot be done from inside one
        // (`init` runs in `#[tokio::main]`): build it on a plain thread.
        std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .build()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("building the OTLP HTTP client panicked"))?
        .map(Self)
        .map_err(Into::into)
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for BlockingHttp {
    async fn send_bytes(
        &self,
        request: Request<opentelemetry_http::Bytes>,
    ) -> Result<Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let response = self.0.execute(request.try_into()?)?;
        let mut answer = Response::builder().status(response.status());
        if let Some(headers) = answer.headers_mut() {
            *headers = response.headers().clone();
        }
        Ok(answer.body(response.bytes()?)?)
    }
}

// ------------------------------------------------------------------------------------------------
// W3C trace context
// ------------------------------------------------------------------------------------------------

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A `traceparent` and its optional `tracestate`, as carried by an event.
struct Carried<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Carried<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

#[derive(Default)]
struct Injected(HashMap<String, String>);

impl Injector for Injected {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

/// Parent `span` (not yet entered) on the caller's `traceparent`/`tracestate` headers, if valid.
pub fn set_parent_from_headers(span: &Span, headers: &HeaderMap) {
    if !exporting() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Parent `span` (not yet entered) on a carried trace context (an event's); false when it is not a
/// valid one (or traces are off).
pub fn set_remote_parent(span: &Span, traceparent: &str, tracestate: Option<&str>) -> bool {
    if !exporting() {
        return false;
    }
    let parent = TraceContextPropagator::new().extract(&Carried {
        traceparent,
        tracestate,
    });
    parent.span().span_context().is_valid() && span.set_parent(parent).is_ok()
}

/// Link `span` (not yet entered) to a carried trace context (an event's), if valid.
pub fn add_remote_link(span: &Span, traceparent: &str, tracestate: Option<&str>) {
    if !exporting() {
        return;
    }
    let linked = TraceContextPropagator::new().extract(&Carried {
        traceparent,
        tracestate,
    });
    span.add_link(linked.span().span_context().clone());
}

/// The W3C `traceparent` and `tracestate` of `span`, when traces are exported (`None` when off).
pub fn trace_context(span: &Span) -> Option<(String, Option<String>)> {
    if !exporting() {
        return None;
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut injected = Injected::default();
    TraceContextPropagator::new().inject_context(&context, &mut injected);
    let traceparent = injected.0.remove("traceparent")?;
    let tracestate = injected.0.remove("tracestate").filter(|s| !s.is_empty());
    Some((traceparent, tracestate))
}

// ------------------------------------------------------------------------------------------------
// HTTP server spans
// ------------------------------------------------------------------------------------------------

/// Makes the server span of a request: `http.server` named `METHOD /route` (the matched route,
/// never the raw path), parented on the caller's `traceparent` when traces are exported. Without
/// traces it is a DEBUG span, which the default log filter never builds (as tower-http's own).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSpan;

macro_rules! server_span {
    ($level:expr, $method:expr, $route:expr, $path:expr) => {
        tracing::span!(
            $level,
            "http.server",
            otel.name = %format_args!("{} {}", $method, $route),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = %$method,
            http.route = %$route,
            url.path = %$path,
            http.response.status_code = tracing::field::Empty,
        )
    };
}

impl<B> tower_http::trace::MakeSpan<B> for ServerSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let route = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map_or("unmatched", |p| p.as_str());
        let (method, path) = (request.method().as_str(), request.uri().path());
        if !exporting() {
            return server_span!(Level::DEBUG, method, route, path);
        }
        let span = server_span!(Level::INFO, method, route, path);
        set_parent_from_headers(&span, request.headers());
        span
    }
}

/// Records the response status on the server span (5xx marks it failed), then logs like
/// tower-http's default.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordStatus;

impl<B> OnResponse<B> for RecordStatus {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        DefaultOnResponse::default().on_response(response, latency, span);
    }
}

/// tower-http's `TraceLayer` for an API: one server span per request ([`ServerSpan`]) with its
/// status ([`RecordStatus`]). Add it with `Router::layer` so that the matched route is known.
pub fn http_trace_layer(
) -> TraceLayer<SharedClassifier<ServerErrorsAsFailures>, ServerSpan, DefaultOnRequest, RecordStatus>
{
    TraceLayer::new_for_http()
        .make_span_with(ServerSpan)
        .on_response(RecordStatus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_appended_to_a_base_url_once() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector/v1/traces"),
            "http://collector/v1/traces"
        );
    }

    #[test]
    fn without_an_exporter_no_trace_context_is_made() {
        let span = tracing::info_span!("x");
        assert!(trace_context(&span).is_none());
        assert!(!set_remote_parent(
            &span,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            None
        ));
    }
}
