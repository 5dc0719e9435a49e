//! The peer of the benchmark: what a user would otherwise build, the `cqrs-es` crate with
//! `postgres-es` on PostgreSQL behind axum, in the shape of the cqrs-es demo (one aggregate, its
//! events in the `events` table, one view through `GenericQuery` + `PostgresViewRepository`
//! updated in the command's request after the commit).
//!
//! The routes take the same bodies as this repository's command-api, so the bench drives both
//! with one load generator:
//! `POST /v1/orders` (201), `POST /v1/orders/{id}/items`, `…/payments`, `…/shipments` (200),
//! `GET /v1/orders/{id}` (the view), `GET /stats` (view updates that failed), `GET /healthz`.
//! Errors are problem+json: 404 unknown order, 409 `write-conflict` (another writer committed the
//! same sequence first: cqrs-es' optimistic lock) or `order-exists`, 422 a business rule.
//!
//! Settings from the environment: `PEER_ADDR` (127.0.0.1:8090), `PEER_DATABASE_URL`
//! (postgresql://…), `PEER_POOL` (connections, 10 as in postgres-es' `default_postgress_pool`).

mod domain;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cqrs_es::persist::{GenericQuery, ViewRepository};
use cqrs_es::AggregateError;
use domain::{Command, Line, Order, OrderError, OrderView};
use postgres_es::{postgres_cqrs, PostgresCqrs, PostgresViewRepository};
use serde::Deserialize;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

type Views = PostgresViewRepository<OrderView, Order>;

/// View updates the `GenericQuery` could not store (its optimistic lock lost to another writer's
/// update of the same view, or a database error): the event is then missing from the view.
static VIEW_UPDATE_ERRORS: AtomicU64 = AtomicU64::new(0);

#[derive(Clone)]
struct App {
    cqrs: Arc<PostgresCqrs<Order>>,
    views: Arc<Views>,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS events (
        aggregate_type text NOT NULL,
        aggregate_id text NOT NULL,
        sequence bigint CHECK (sequence >= 0) NOT NULL,
        event_type text NOT NULL,
        event_version text NOT NULL,
        payload json NOT NULL,
        metadata json NOT NULL,
        PRIMARY KEY (aggregate_type, aggregate_id, sequence))",
    "CREATE TABLE IF NOT EXISTS order_view (
        view_id text NOT NULL,
        version bigint CHECK (version >= 0) NOT NULL,
        payload json NOT NULL,
        PRIMARY KEY (view_id))",
];

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-peer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("PEER_ADDR").unwrap_or_else(|_| "127.0.0.1:8090".into());
    let url = std::env::var("PEER_DATABASE_URL")
        .map_err(|_| "PEER_DATABASE_URL is not set (postgresql://user@host:port/db)")?;
    let pool_size: u32 = match std::env::var("PEER_POOL") {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("PEER_POOL={v}: not a number"))?,
        Err(_) => 10,
    };
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .connect(&url)
        .await?;
    for statement in SCHEMA {
        sqlx::query(statement).execute(&pool).await?;
    }
    let views = Arc::new(Views::new("order_view", pool.clone()));
    let mut query = GenericQuery::new(views.clone());
    query.use_error_handler(Box::new(|e| {
        VIEW_UPDATE_ERRORS.fetch_add(1, Ordering::Relaxed);
        eprintln!("bench-peer: view update failed: {e}");
    }));
    let cqrs = Arc::new(postgres_cqrs(pool, vec![Box::new(query)], ()));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/stats", get(stats))
        .route("/v1/orders", post(place))
        .route("/v1/orders/{id}", get(view))
        .route("/v1/orders/{id}/items", post(add_item))
        .route("/v1/orders/{id}/payments", post(pay))
        .route("/v1/orders/{id}/shipments", post(ship))
        .with_state(App { cqrs, views });
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bench-peer: listening on {addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn problem(status: StatusCode, kind: &str, detail: String) -> Response {
    (
        status,
        [("content-type", "application/problem+json")],
        json!({"type": format!("/problems/{kind}"), "status": status.as_u16(), "detail": detail})
            .to_string(),
    )
        .into_response()
}

fn answer(result: Result<(), AggregateError<OrderError>>, id: &str, created: bool) -> Response {
    match result {
        Ok(()) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(json!({"order_id": id}))).into_response()
        }
        Err(AggregateError::UserError(e)) => {
            let detail = e.to_string();
            match e {
                OrderError::NotFound => problem(StatusCode::NOT_FOUND, "not-found", detail),
                OrderError::AlreadyPlaced => problem(StatusCode::CONFLICT, "order-exists", detail),
                _ => problem(StatusCode::UNPROCESSABLE_ENTITY, "business-rule", detail),
            }
        }
        Err(AggregateError::AggregateConflict) => problem(
            StatusCode::CONFLICT,
            "write-conflict",
            "another command on this order committed first; retry the command".into(),
        ),
        Err(e) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}

#[derive(Deserialize)]
struct PlaceBody {
    order_id: Option<uuid::Uuid>,
    customer_id: uuid::Uuid,
    currency: String,
    items: Vec<Line>,
}

async fn place(State(app): State<App>, Json(body): Json<PlaceBody>) -> Response {
    let id = body.order_id.unwrap_or_else(uuid::Uuid::now_v7).to_string();
    let command = Command::Place {
        order_id: id.clone(),
        customer_id: body.customer_id.to_string(),
        currency: body.currency,
        items: body.items,
    };
    answer(app.cqrs.execute(&id, command).await, &id, true)
}

async fn add_item(
    State(app): State<App>,
    Path(id): Path<uuid::Uuid>,
    Json(line): Json<Line>,
) -> Response {
    let id = id.to_string();
    answer(
        app.cqrs.execute(&id, Command::AddItem(line)).await,
        &id,
        false,
    )
}

#[derive(Deserialize)]
struct PayBody {
    amount_cents: i64,
    payment_ref: String,
}

async fn pay(
    State(app): State<App>,
    Path(id): Path<uuid::Uuid>,
    Json(body): Json<PayBody>,
) -> Response {
    let id = id.to_string();
    let command = Command::Pay {
        amount_cents: body.amount_cents,
        payment_ref: body.payment_ref,
    };
    answer(app.cqrs.execute(&id, command).await, &id, false)
}

#[derive(Deserialize)]
struct ShipBody {
    carrier: String,
    tracking_number: String,
}

async fn ship(
    State(app): State<App>,
    Path(id): Path<uuid::Uuid>,
    Json(body): Json<ShipBody>,
) -> Response {
    let id = id.to_string();
    let command = Command::Ship {
        carrier: body.carrier,
        tracking_number: body.tracking_number,
    };
    answer(app.cqrs.execute(&id, command).await, &id, false)
}

async fn view(State(app): State<App>, Path(id): Path<uuid::Uuid>) -> Response {
    match app.views.load(&id.to_string()).await {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, "not-found", format!("order {id}")),
        Err(e) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}

async fn stats() -> Response {
    Json(json!({"view_update_errors": VIEW_UPDATE_ERRORS.load(Ordering::Relaxed)})).into_response()
}
