//! Distributed traces: a command placed with a client's `traceparent` makes one trace, from the
//! command API's server span (with its LWT and produce inside) to the projector's apply spans,
//! exported over OTLP/HTTP to a receiver this test runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::json;
use tests::{eventually, read_topic, settings_with_fresh_topic, CommandApi, Keyspace, Projector};
use uuid::Uuid;

/// One received span, with the `service.name` of the process that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    links: Vec<(String, String)>,
    attributes: HashMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Received>>>;

fn value(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// `POST /v1/traces`: an OTLP/HTTP protobuf export, kept in `spans`.
async fn receive(State(spans): State<Spans>, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(value)
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(Received {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), value(kv)))
                        .collect(),
                });
            }
        }
    }
    spans.lock().unwrap().extend(received);
    StatusCode::OK
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver on a free port: its base URL and what it received.
async fn receiver() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

/// Walk up from `span` through `parents` (span id → span); true when `ancestor` is met.
fn descends_from(span: &Received, ancestor: &str, parents: &HashMap<String, Received>) -> bool {
    let mut parent = span.parent_span_id.clone();
    for _ in 0..32 {
        if parent == ancestor {
            return true;
        }
        match parents.get(&parent) {
            Some(p) => parent = p.parent_span_id.clone(),
            None => return false,
        }
    }
    false
}

#[tokio::test]
async fn a_command_and_its_projection_make_one_trace_under_the_clients_traceparent() {
    let started = Instant::now();
    let mut settings = settings_with_fresh_topic("traces").await.unwrap();
    let keyspace = Keyspace::fresh(&mut settings).await.unwrap();
    let (url, spans) = receiver().await;
    // Export every 200 ms rather than every 5 s.
    let env = [
        ("APP_TELEMETRY__OTLP_ENDPOINT", url.as_str()),
        ("APP_TELEMETRY__SAMPLING_RATIO", "1.0"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let api = CommandApi::spawn_process(&settings, &env).await.unwrap();
    let projector = Projector::spawn_process(&settings, &env).await.unwrap();

    let trace_id = Uuid::new_v4().simple().to_string();
    let client_span = Uuid::new_v4().simple().to_string()[..16].to_string();
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let order = Uuid::now_v7();
    let reply = api
        .post(
            "/v1/orders",
            json!({"order_id": order, "customer_id": Uuid::now_v7(), "currency": "EUR",
                   "items": [{"sku": "TRACED", "quantity": 1, "unit_price_cents": 100}]}),
            &[("traceparent", traceparent.as_str())],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);

    // Everything of the trace (or linked to it): the command's spans and one apply span per
    // projection.
    let trace: Vec<Received> = eventually(
        Duration::from_secs(60),
        "the command's and the projector's spans reaching the receiver",
        || {
            let spans = spans.clone();
            let trace_id = trace_id.clone();
            async move {
                let trace: Vec<Received> = spans
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| s.trace_id == trace_id || s.links.iter().any(|l| l.0 == trace_id))
                    .cloned()
                    .collect();
                let has = |name: &str| trace.iter().any(|s| s.name == name);
                let applies = trace
                    .iter()
                    .filter(|s| s.service == "projector" && s.name.starts_with("apply "))
                    .map(|s| s.name.clone())
                    .collect::<std::collections::BTreeSet<_>>();
                Ok((has("POST /v1/orders")
                    && has("cql.lwt")
                    && has("kafka.produce")
                    && applies.len() == 2)
                    .then_some(trace))
            }
        },
    )
    .await
    .unwrap_or_else(|e| {
        let received: Vec<String> = spans
            .lock()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{} {} trace {} parent {}",
                    s.service, s.name, s.trace_id, s.parent_span_id
                )
            })
            .collect();
        panic!("{e:#}; expected trace {trace_id}; received: {received:#?}")
    });
    let by_id: HashMap<String, Received> = trace
        .iter()
        .map(|s| (s.span_id.clone(), s.clone()))
        .collect();

    // The command API's server span: a child of the client's span, with route and status.
    let server: Vec<&Received> = trace
        .iter()
        .filter(|s| s.name == "POST /v1/orders")
        .collect();
    assert_eq!(server.len(), 1, "{server:#?}");
    let server = server[0];
    assert_eq!(server.service, "command-api");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(server.parent_span_id, client_span);
    assert_eq!(server.attributes["http.route"], "/v1/orders");
    assert_eq!(server.attributes["http.request.method"], "POST");
    assert_eq!(server.attributes["http.response.status_code"], "201");

    // Its LWT and its produce, inside it.
    for (name, kind) in [
        ("cql.lwt", SpanKind::Client),
        ("kafka.produce", SpanKind::Producer),
    ] {
        let span = trace
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span"));
        assert_eq!(span.service, "command-api", "{span:#?}");
        assert_eq!(span.kind, kind as i32, "{span:#?}");
        assert!(
            descends_from(span, &server.span_id, &by_id),
            "{name} is not under the server span: {span:#?}\n{trace:#?}"
        );
    }

    // The events carry the server span's context, in the envelope and in the Kafka headers.
    let expected = format!("00-{trace_id}-{}-01", server.span_id);
    let records = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    assert!(!records.is_empty());
    for record in &records {
        assert_eq!(record.headers["traceparent"], expected);
        assert_eq!(
            record.envelope().unwrap().metadata.traceparent.as_deref(),
            Some(expected.as_str())
        );
    }

    // Each projection's apply span: a child of the command's span (one command's events in the
    // batch), or linked to it.
    for projection in ["orders", "order_history"] {
        let apply = trace
            .iter()
            .find(|s| s.name == format!("apply {projection}"))
            .unwrap_or_else(|| panic!("no apply span of {projection}"));
        assert_eq!(apply.service, "projector", "{apply:#?}");
        assert_eq!(apply.attributes["projection"], projection);
        assert_eq!(apply.kind, SpanKind::Consumer as i32, "{apply:#?}");
        let parented = apply.trace_id == trace_id && apply.parent_span_id == server.span_id;
        let linked = apply
            .links
            .iter()
            .any(|(t, s)| *t == trace_id && *s == server.span_id);
        assert!(
            parented || linked,
            "the {projection} apply span is neither a child of nor linked to the command's span: {apply:#?}"
        );
    }

    eprintln!(
        "one trace of {} spans ({}), in {:.1} s",
        trace.len(),
        trace
            .iter()
            .map(|s| format!("{}:{}", s.service, s.name))
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64()
    );
    projector.stop().await.unwrap();
    api.stop().await.unwrap();
    keyspace.drop_keyspace().await.unwrap();
}
