//! `GET /status`: an operational page for people. One self-contained HTML document (inline CSS,
//! inline JavaScript, SVG plots drawn in the browser; nothing fetched from elsewhere, so it works
//! offline) that polls `GET /status.json` every few seconds and shows, per projection and
//! generation, lag per partition now and over the last 15 minutes, events applied per second and
//! dead letters; commands per second and the share that failed; queries per second; the age of the
//! oldest unpublished intent; and whether each metrics source answers.
//!
//! `/status.json` is assembled here from the samples a background task ([`Sampler`], started by
//! [`crate::serve`]) takes every 5 s: the projections' lag read like `/v1/projections` does, the
//! Prometheus text of the services listed in `query_api.status_sources` (command-api and projector
//! instances), and this process's own metrics. Like `/metrics`, both routes are open (no token)
//! and belong on the internal network only.

mod history;
mod prometheus;
mod scrape;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use infra::http::Problem;
use infra::Settings;

pub use history::{History, Report, Sampler};

use crate::AppState;

/// The page: HTML, CSS and JavaScript in one file.
const PAGE: &str = include_str!("status/page.html");

/// Nothing but this document's own inline code and same-origin requests.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/status", get(page))
        .route("/status.json", get(report))
}

/// Start sampling for the status page with the sources of `settings`; the samples go to the
/// [`History`] the router reads (`app(state).layer(Extension(sampler.history()))`).
pub fn spawn_sampler(settings: &Settings, state: &AppState) -> Sampler {
    Sampler::spawn(
        history::source_list(&settings.query_api.status_sources),
        state,
    )
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
        .into_response()
}

async fn report(State(state): State<AppState>, history: Option<Extension<History>>) -> Response {
    let Some(Extension(history)) = history else {
        return Problem::unavailable("the status sampler is not running in this instance", 5)
            .into_response();
    };
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(history.report(&state.topic)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use infra::http::Readiness;
    use tower::ServiceExt;

    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::ProjectionRecord;

    fn state(store: Arc<MemoryStore>) -> AppState {
        AppState::new(
            &Settings::default(),
            store.clone(),
            store,
            Readiness::new(vec![]),
            infra::auth::Authenticator::disabled(crate::store::memory::TENANT),
        )
    }

    async fn body(response: Response) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_page_is_one_self_contained_document() {
        let app = crate::app(state(Arc::new(MemoryStore::new())));
        let r = app
            .oneshot(Request::get("/status").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'"));
        let html = body(r).await.replace("http://www.w3.org/2000/svg", "");
        assert!(html.contains("status.json"));
        // Nothing loaded from elsewhere.
        for external in ["http://", "https://", "src=", "href=", "@import", "url("] {
            assert!(!html.contains(external), "the page refers to {external}");
        }
    }

    #[tokio::test]
    async fn the_report_serves_the_sampled_lag() {
        let store = Arc::new(MemoryStore::new());
        store.records.lock().unwrap().push(ProjectionRecord {
            name: "orders".into(),
            generation: 3,
            state: "live".into(),
            offsets: BTreeMap::from([(0, 4), (1, 2)]),
            ..ProjectionRecord::default()
        });
        *store.ends.lock().unwrap() = BTreeMap::from([(0, 10), (1, 2)]);
        let state = state(store);
        // A source that does not answer is reported, not fatal.
        let mut settings = Settings::default();
        settings.query_api.status_sources = "http://127.0.0.1:9/metrics".into();
        let sampler = spawn_sampler(&settings, &state);
        let app = crate::app(state).layer(Extension(sampler.history()));
        let mut report = serde_json::Value::Null;
        for _ in 0..100 {
            let r = app
                .clone()
                .oneshot(Request::get("/status.json").body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            report = serde_json::from_str(&body(r).await).unwrap();
            if report["samples"].as_u64() > Some(0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let p = &report["projections"][0];
        assert_eq!(p["name"], "orders");
        assert_eq!(p["generation"], 3);
        assert_eq!(p["lag"], 6);
        assert_eq!(p["lag_history"][0]["points"][0][1], 6.0);
        assert_eq!(report["sources"][0]["up"], false);
        assert!(report["sources"][0]["error"].is_string());
    }

    #[tokio::test]
    async fn without_a_sampler_the_report_is_unavailable() {
        let app = crate::app(state(Arc::new(MemoryStore::new())));
        let r = app
            .oneshot(Request::get("/status.json").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
