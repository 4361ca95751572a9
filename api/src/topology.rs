//! The service graph, the services and the instance registry, as the query API serves them:
//! `GET /api/v1/topology`, `GET /api/v1/services`, `GET /api/v1/instances`.
//!
//! Latencies are in milliseconds, rates per second, times RFC 3339 in UTC.

use serde::{Deserialize, Serialize};

/// Quantiles and mean of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
}

/// Latency as each side saw it; a side is `null` when no span of that side was seen (e.g. the
/// server side of a database edge).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SidesMs {
    /// From the server spans.
    pub server: Option<LatencyMs>,
    /// From the client spans.
    pub client: Option<LatencyMs>,
}

/// Traffic figures over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Requests per second.
    pub rate_per_sec: f64,
    /// `errors / requests` (0 without requests).
    pub error_rate: f64,
    /// Latency.
    pub latency_ms: SidesMs,
}

/// One instance of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInstance {
    /// `service.instance.id`.
    pub id: String,
    /// Where it serves, when known.
    pub address: Option<String>,
    /// Its registry status (`passing`, `warning`, `critical`, `unknown`), `null` when it is not
    /// in the registry (any more).
    pub status: Option<String>,
    /// What it served over the window.
    pub stats: Stats,
}

/// A node of the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Its name (for an instance node: `service/instance`).
    pub id: String,
    /// `service`, `database`, `messaging`, `external`, `user`, or `instance` at instance level.
    pub kind: String,
    /// For an instance node, its service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Its instances with traffic in the window (services only).
    pub instances: Vec<NodeInstance>,
    /// What it served over the window.
    pub stats: Stats,
}

/// An edge of the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    /// The caller's node id.
    pub source: String,
    /// The callee's node id.
    pub target: String,
    /// `http`, `grpc`, `database`, `messaging` or `other`.
    pub connection_type: String,
    /// Requests over the window.
    pub requests: u64,
    /// Failed requests (either side Error).
    pub errors: u64,
    /// Requests per second.
    pub rate_per_sec: f64,
    /// Latency as each side saw it.
    pub latency_ms: SidesMs,
}

/// `GET /api/v1/topology`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopologyResponse {
    /// The window asked for.
    pub window_seconds: u64,
    /// When it was computed.
    pub generated_at: String,
    /// `service` or `instance`.
    pub level: String,
    /// Nodes, by kind then id.
    pub nodes: Vec<Node>,
    /// Edges, by source then target.
    pub edges: Vec<Edge>,
}

/// A service in `GET /api/v1/services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// `service`, or the kind of a virtual node.
    pub kind: String,
    /// Instances in the registry.
    pub instance_count: u64,
    /// Requests it served over the window.
    pub requests: u64,
    /// Requests per second.
    pub request_rate: f64,
    /// Failed share of the requests.
    pub error_rate: f64,
    /// Median latency in ms (`null` without requests).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in ms.
    pub p99_ms: Option<f64>,
}

/// `GET /api/v1/services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicesResponse {
    /// The window asked for.
    pub window_seconds: u64,
    /// When it was computed.
    pub generated_at: String,
    /// The services, by name.
    pub services: Vec<Service>,
}

/// One operation of a service in `GET /api/v1/operations`: its span name and kind, every
/// status code summed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// The span name.
    pub name: String,
    /// The span kind: `server`, `client`, `producer`, `consumer`, `internal` or `unspecified`.
    pub span_kind: String,
    /// Spans over the window.
    pub requests: u64,
    /// Spans with status Error.
    pub errors: u64,
    /// Spans per second.
    pub rate_per_sec: f64,
    /// `errors / requests`.
    pub error_rate: f64,
    /// The spans' durations.
    pub latency_ms: Option<LatencyMs>,
}

/// `GET /api/v1/operations?service=`: the span metrics of one service over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationsResponse {
    /// The service asked for.
    pub service: String,
    /// The window asked for.
    pub window_seconds: u64,
    /// When it was computed.
    pub generated_at: String,
    /// Its operations, by name then kind.
    pub operations: Vec<Operation>,
}

/// An instance in `GET /api/v1/instances`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// `service.name`.
    pub service: String,
    /// `service.instance.id`.
    pub instance_id: String,
    /// `passing`, `warning`, `critical` or `unknown`.
    pub status: String,
    /// Where it serves, when known.
    pub address: Option<String>,
    /// `health` (it sends heartbeats) or `traces` (only seen in spans).
    pub source: String,
    /// Its last accepted beat.
    pub last_beat: Option<String>,
    /// Its last span.
    pub last_seen: Option<String>,
    /// Since when it has its status.
    pub since: String,
    /// TTL of its last beat.
    pub ttl_ms: Option<u64>,
    /// `seq` of its last beat.
    pub seq: Option<u64>,
    /// Output of its last beat.
    pub output: Option<String>,
}

/// `GET /api/v1/instances`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstancesResponse {
    /// The instances, by service then id: a page of them.
    pub instances: Vec<Instance>,
    /// When there are more: the `page_token` that asks for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}
