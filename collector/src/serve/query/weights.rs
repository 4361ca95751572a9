//! `GET /api/v1/weights/{service}`, with long-polling: `?after_version=N&wait=30s` answers as
//! soon as the service's version is newer than `N`, or with the same version when the wait ends.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use wayfinder_api::weights::ServiceWeights;

use super::error::ApiError;
use super::state::ApiState;

/// The query of `GET /api/v1/weights/{service}`.
#[derive(Debug, Deserialize)]
pub(crate) struct WeightsQuery {
    after_version: Option<u64>,
    wait: Option<String>,
}

pub(crate) async fn get_weights(
    State(state): State<Arc<ApiState>>,
    Path(service): Path<String>,
    Query(query): Query<WeightsQuery>,
) -> Result<Json<Arc<ServiceWeights>>, ApiError> {
    // The longest wait is half the TTL, so that a client that long-polls in a loop always
    // holds weights younger than their TTL.
    let max_wait = state.weights.config().ttl / 2;
    let wait = match query.wait.as_deref() {
        None => Duration::ZERO,
        Some(text) => crate::util::units::parse_duration(text)
            .map_err(ApiError::BadRequest)?
            .min(max_wait),
    };
    let unknown = || ApiError::NotFound(format!("no instances of service {service} are known"));
    let mut updates = state.weights.subscribe();
    let current = updates.borrow_and_update().services.get(&service).cloned();
    let Some(after) = query.after_version else {
        return current.map(Json).ok_or_else(unknown);
    };
    if let Some(weights) = &current
        && weights.version > after
    {
        return Ok(Json(weights.clone()));
    }
    // Waiting holds a watcher's place; a long-poll that need not wait takes none.
    let _place = if wait.is_zero() {
        None
    } else {
        Some(
            state
                .watchers
                .try_watch()
                .ok_or_else(|| ApiError::Unavailable(state.watchers.refusal()))?,
        )
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let changed = tokio::select! {
            changed = tokio::time::timeout_at(deadline, updates.changed()) => {
                matches!(changed, Ok(Ok(())))
            }
            // The query API is stopping: answer now rather than hold the shutdown.
            () = state.stop.cancelled() => false,
        };
        if changed {
            {
                let latest = updates.borrow_and_update().services.get(&service).cloned();
                if let Some(weights) = latest
                    && weights.version > after
                {
                    return Ok(Json(weights));
                }
            }
        } else {
            // The wait is over (or the collector is stopping): the latest, whatever its version.
            let latest = state.weights.get(&service);
            return latest.map(Json).ok_or_else(unknown);
        }
    }
}
