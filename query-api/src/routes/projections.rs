//! `GET /v1/projections`: each projection's state, serving generation and lag per partition of the
//! event topic (Kafka high watermark minus the projection's next offset).

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiResult;
use crate::routes::PROBLEM;
use crate::store::ProjectionRecord;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/projections", get(projections))
}

/// How far one projection is behind on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PartitionLag {
    pub partition: i32,
    /// The next offset the projection will apply.
    pub offset: i64,
    /// The partition's high watermark.
    pub end_offset: i64,
    pub lag: i64,
}

/// One projection and its lag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ProjectionStatus {
    pub name: String,
    /// The generation serving reads.
    pub generation: i32,
    /// `live` or `rebuilding`.
    pub state: String,
    /// Sum of the partitions' lag.
    pub lag: i64,
    pub partitions: Vec<PartitionLag>,
}

/// All projections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Projections {
    pub projections: Vec<ProjectionStatus>,
}

/// Lag of every projection on every partition known to Kafka or to its offsets.
pub fn lag_report(records: Vec<ProjectionRecord>, ends: &BTreeMap<i32, i64>) -> Projections {
    let projections = records
        .into_iter()
        .map(|record| {
            let partitions: BTreeSet<i32> =
                ends.keys().chain(record.offsets.keys()).copied().collect();
            let partitions: Vec<PartitionLag> = partitions
                .into_iter()
                .map(|partition| {
                    let offset = record.offsets.get(&partition).copied().unwrap_or(0);
                    let end_offset = ends.get(&partition).copied().unwrap_or(offset);
                    PartitionLag {
                        partition,
                        offset,
                        end_offset,
                        lag: (end_offset - offset).max(0),
                    }
                })
                .collect();
            ProjectionStatus {
                name: record.name,
                generation: record.generation,
                state: record.state,
                lag: partitions.iter().map(|p| p.lag).sum(),
                partitions,
            }
        })
        .collect();
    Projections { projections }
}

/// Projections, their serving generation and lag.
#[utoipa::path(
    get,
    path = "/v1/projections",
    tag = "ops",
    responses(
        (status = 200, description = "Every registered projection", body = Projections),
        (status = 503, description = "Kafka or the store unreachable", body = infra::http::Problem, content_type = PROBLEM),
    )
)]
pub async fn projections(State(state): State<AppState>) -> ApiResult<Json<Projections>> {
    let topic: &str = &state.topic;
    let (records, ends) = tokio::join!(
        state.store.projections(topic),
        state.end_offsets.end_offsets(topic)
    );
    Ok(Json(lag_report(records?, &ends?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_end_minus_next_offset_and_missing_offsets_count_from_zero() {
        let ends = BTreeMap::from([(0, 10), (1, 5), (2, 0)]);
        let record = ProjectionRecord {
            name: "orders".into(),
            generation: 2,
            state: "live".into(),
            offsets: BTreeMap::from([(0, 7), (2, 0)]),
        };
        let report = lag_report(vec![record], &ends);
        let p = &report.projections[0];
        assert_eq!(p.generation, 2);
        let lags: Vec<_> = p
            .partitions
            .iter()
            .map(|p| (p.partition, p.offset, p.end_offset, p.lag))
            .collect();
        assert_eq!(lags, [(0, 7, 10, 3), (1, 0, 5, 5), (2, 0, 0, 0)]);
        assert_eq!(p.lag, 8);
    }
}
