//! `GET /api/v1/operations?service=&window=`: the span metrics of one service as JSON, the same
//! figures as `traces_spanmetrics_*` on `/metrics`, over a window.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use wayfinder_api::topology::{Operation, OperationsResponse};

use super::error::ApiError;
use super::figures::{latency, ratio, window};
use super::state::ApiState;

/// The query of `GET /api/v1/operations`.
#[derive(Debug, Deserialize)]
pub(crate) struct OperationsQuery {
    service: Option<String>,
    window: Option<String>,
}

/// `GET /api/v1/operations`: one service's operations (span name and kind) with calls in the
/// window, by name then kind.
pub(crate) async fn get_operations(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<OperationsQuery>,
) -> Result<Json<OperationsResponse>, ApiError> {
    let spanmetrics = state.spanmetrics.clone().ok_or_else(|| {
        ApiError::NotFound("span metrics are off on this collector (--no-topology)".into())
    })?;
    let service = query
        .service
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::BadRequest("service is required, e.g. ?service=cart".into()))?;
    let window = window(query.window.as_deref(), spanmetrics.retention())?;
    // Merging a window's sketches is CPU work: not on a runtime worker.
    tokio::task::spawn_blocking(move || {
        let (_, covered) = spanmetrics.window_start(window);
        let seconds = covered.as_secs_f64();
        let operations = spanmetrics
            .operations(&service, window)
            .into_iter()
            .map(|op| {
                let summary = &op.summary;
                Operation {
                    name: op.name.to_string(),
                    span_kind: op.kind.as_str().to_owned(),
                    requests: summary.requests,
                    errors: summary.errors,
                    rate_per_sec: ratio(summary.requests as f64, seconds),
                    error_rate: ratio(summary.errors as f64, summary.requests as f64),
                    latency_ms: latency(&summary.server),
                }
            })
            .collect();
        Json(OperationsResponse {
            service,
            window_seconds: window.as_secs(),
            generated_at: crate::util::clock::rfc3339(spanmetrics.now()),
            operations,
        })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the operations answer failed: {e}")))
}
