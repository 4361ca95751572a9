//! The query API: HTTP JSON (SQL, traces, the service graph, the registry, the weights), the
//! Jaeger-compatible endpoints, Prometheus metrics and probes, and the weights over gRPC.
//!
//! Each route module imports only [`state`], [`error`] and `figures` (and, for Jaeger, the SQL
//! answer's JSON form from [`http`]); this module wires them into the router. In fleet mode the
//! trace routes pass through `fleet`, which asks the owner of a trace's partition through
//! `forward`. The SQL engine is in
//! [`crate::serve::sql`].

mod error;
mod figures;
#[cfg(feature = "kafka")]
mod fleet;

/// In fleet mode, the header of a SQL answer that says how fresh each partition's spans in it
/// are ([`fleet::freshness`]).
#[cfg(feature = "kafka")]
pub(crate) const FRESHNESS: &str = "wayfinder-freshness";
#[cfg(feature = "kafka")]
pub(crate) mod forward;
pub(crate) mod grpc;
pub(crate) mod http;
mod jaeger;
mod operations;
mod state;
mod topology;
mod watchers;
mod weights;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

pub(crate) use error::ApiError;
pub(crate) use state::ApiState;
pub(crate) use watchers::Watchers;

/// The router of the query port.
pub(crate) fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/sql", post(http::sql))
        .route(
            "/api/v1/traces/{trace_id}",
            traced(get(http::trace), &state),
        )
        .route("/api/v1/topology", get(topology::get_topology))
        .route("/api/v1/services", get(topology::get_services))
        .route("/api/v1/operations", get(operations::get_operations))
        .route("/api/v1/instances", get(topology::get_instances))
        .route("/api/v1/weights/{service}", get(weights::get_weights))
        .route("/api/services", get(jaeger::services))
        .route(
            "/api/services/{service}/operations",
            get(jaeger::service_operations),
        )
        .route("/api/operations", get(jaeger::operations))
        .route("/api/traces", get(jaeger::search))
        .route("/api/traces/{trace_id}", traced(get(jaeger::trace), &state))
        .route("/api/dependencies", get(jaeger::dependencies))
        .route("/api/v3/services", get(jaeger::services_v3))
        .route("/api/metrics/calls", get(jaeger::calls))
        .route("/api/metrics/errors", get(jaeger::errors))
        .route("/api/metrics/latencies", get(jaeger::latencies))
        .route("/api/metrics/minstep", get(jaeger::min_step))
        .route("/api/v1/config", get(http::config))
        .route("/metrics", get(http::metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(http::ready))
        .with_state(state)
}

/// A trace route: in fleet mode, asked of the collector that owns the trace's partition.
fn traced(
    route: axum::routing::MethodRouter<Arc<ApiState>>,
    state: &Arc<ApiState>,
) -> axum::routing::MethodRouter<Arc<ApiState>> {
    #[cfg(feature = "kafka")]
    let route = route.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        fleet::to_owner,
    ));
    #[cfg(not(feature = "kafka"))]
    let _ = state;
    route
}

/// The router of a connection admitted past the query port's cap, in a place kept for probes:
/// the probes, and for anything else a retryable 503 that closes the connection, so that a
/// full port still says whether the collector lives and is ready.
pub(crate) fn probes(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(http::ready))
        .fallback(|| async {
            ApiError::Unavailable(
                "the query port is at --max-connections; this connection answers only \
                 /healthz, /readyz and /livez: retry"
                    .into(),
            )
        })
        .with_state(state)
}
