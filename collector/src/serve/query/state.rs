//! What the query API's handlers share.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::error::ApiError;
use crate::metrics::Metrics;
use crate::serve::sql::QueryEngine;
use crate::util::reuse::{Reuse, SharedBody};

/// What the query API's handlers share.
#[derive(Debug)]
pub(crate) struct ApiState {
    /// The SQL engine (and through it, the store).
    pub engine: QueryEngine,
    /// The service graph, unless the topology is off.
    pub topology: Option<Arc<crate::graph::topology::Topology>>,
    /// The span metrics, unless the topology is off.
    pub spanmetrics: Option<Arc<crate::graph::spanmetrics::SpanMetrics>>,
    /// The instance registry.
    pub registry: Arc<crate::graph::registry::Registry>,
    /// The load-balancing weights.
    pub weights: Arc<crate::graph::weights::WeightsEngine>,
    /// The collector's metrics.
    pub metrics: Arc<Metrics>,
    /// Whether the collector is ready (listeners up, not shutting down).
    pub ready: Arc<AtomicBool>,
    /// Whether every ingest stage is up (none backing off after a panic).
    pub pipeline: Arc<crate::pipeline::PipelineHealth>,
    /// The collector's tasks: any that ended while it runs makes it not ready.
    pub tasks: crate::util::tasks::Supervision,
    /// Cancelled when the query API stops: long-polls answer at once then.
    pub stop: tokio_util::sync::CancellationToken,
    /// The cap on gRPC watchers and HTTP long-polls.
    pub watchers: super::watchers::Watchers,
    /// The configuration in force (`GET /api/v1/config`), tokens redacted.
    pub config: parking_lot::RwLock<Arc<serde_json::Value>>,
    /// Fleet mode: who owns which partition (a trace lookup goes to its owner).
    #[cfg(feature = "kafka")]
    pub owners: Option<Arc<crate::ingest::kafka::owners::Owners>>,
    /// Fleet mode: the weights and instances their services' owners published.
    #[cfg(feature = "kafka")]
    pub views: Option<Arc<crate::ingest::kafka::services::Views>>,
    /// The client that asks the owners.
    #[cfg(feature = "kafka")]
    pub forwarder: super::forward::Forwarder,
    /// `GET /api/v1/topology` answers by (window, instance level, service), shared for a
    /// second.
    pub topology_json: Reuse<(Duration, bool, Option<String>), Result<SharedBody, ApiError>>,
}
