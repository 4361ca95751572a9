//! Load-balancing weights, as `GET /api/v1/weights/{service}` serves them.

use serde::{Deserialize, Serialize};

/// Latency of an endpoint over the weight window, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EndpointLatency {
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile (what the rule compares).
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Exponentially weighted moving average of the window's mean, one step per update.
    pub ewma: Option<f64>,
}

/// One instance of the service and its share of the traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `service.instance.id`.
    pub instance_id: String,
    /// Where to send its traffic (`host:port`), when known.
    pub address: Option<String>,
    /// Its share; the weights of a service sum to 1.
    pub weight: f64,
    /// Registry status: `passing`, `warning`, `critical`, `unknown`.
    pub health: String,
    /// Latency over the window.
    pub latency_ms: EndpointLatency,
    /// Failed share of its requests over the window.
    pub error_rate: f64,
    /// Its requests per second over the window.
    pub requests_per_sec: f64,
    /// Why the weight is what it is, e.g. `slow: p90 4.8x median`, `slow start 40%`, `critical`.
    pub reason: String,
}

/// The weights of one service.
///
/// ```
/// use wayfinder_api::weights::ServiceWeights;
///
/// let weights: ServiceWeights = serde_json::from_str(r#"{"service":"cart","version":3,
///   "generated_at":"2026-11-24T20:00:00.000Z","ttl_ms":60000,"endpoints":[]}"#).unwrap();
/// assert_eq!(weights.version, 3);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceWeights {
    /// The service.
    pub service: String,
    /// Bumped by every change of a weight or of the set of endpoints.
    pub version: u64,
    /// When the weights were last computed (RFC 3339).
    pub generated_at: String,
    /// After this long without a newer answer, a client must treat the weights as stale.
    pub ttl_ms: u64,
    /// The endpoints, by instance id.
    pub endpoints: Vec<Endpoint>,
}
