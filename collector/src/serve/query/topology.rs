//! `GET /api/v1/topology`, `GET /api/v1/services` and `GET /api/v1/instances`: the service graph
//! and the instance registry as JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::Response;
use http::HeaderMap;
use serde::Deserialize;
use wayfinder_api::topology::{
    Edge, InstancesResponse, Node, NodeInstance, Service, ServicesResponse, SidesMs, Stats,
    TopologyResponse,
};

use super::error::ApiError;
use super::figures::{latency, ratio, window};
use super::http::{accepts_gzip, shared_body, shared_response};
use super::state::ApiState;
use crate::graph::registry::InstanceStatus;
use crate::graph::topology::stats::Summary;
use crate::graph::topology::{NodeKind, Snapshot, Topology};
use crate::util::reuse::SharedBody;

use crate::util::clock::rfc3339;

fn stats(summary: &Summary, graph: &Snapshot) -> Stats {
    Stats {
        requests: summary.requests,
        errors: summary.errors,
        rate_per_sec: graph.rate(summary.requests),
        error_rate: ratio(summary.errors as f64, summary.requests as f64),
        latency_ms: SidesMs {
            server: latency(&summary.server),
            client: latency(&summary.client),
        },
    }
}

/// A snapshot of the graph over `window`, merged on a blocking thread: merging every
/// minute's sketches of every edge is CPU work that must not hold a runtime worker. Readers of
/// the same window within a second share one ([`Topology::shared_snapshot`]).
pub(super) async fn snapshot(
    topology: &Arc<Topology>,
    window: Duration,
) -> Result<Arc<crate::graph::topology::Snapshot>, ApiError> {
    let topology = topology.clone();
    tokio::task::spawn_blocking(move || topology.shared_snapshot(window))
        .await
        .map_err(|e| ApiError::Internal(format!("the topology snapshot failed: {e}")))
}

fn topology(state: &ApiState) -> Result<&Arc<Topology>, ApiError> {
    state.topology.as_ref().ok_or_else(|| {
        ApiError::NotFound("the topology is off on this collector (--no-topology)".into())
    })
}

/// The query of `GET /api/v1/topology`.
#[derive(Debug, Deserialize)]
pub(crate) struct TopologyQuery {
    window: Option<String>,
    level: Option<String>,
    service: Option<String>,
}

/// `GET /api/v1/topology`: the JSON is made on a blocking thread and handed to the readers of
/// the same window and level within a second ([`ApiState::topology_json`]): at a thousand
/// edges it is a megabyte, and making it costs more than the snapshot.
pub(crate) async fn get_topology(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(query): Query<TopologyQuery>,
) -> Result<Response, ApiError> {
    let topology = topology(&state)?.clone();
    let window = window(query.window.as_deref(), topology.retention())?;
    let instance_level = match query.level.as_deref() {
        None | Some("service") => false,
        Some("instance") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "level must be service or instance; got {other}"
            )));
        }
    };
    let service = query.service;
    let gzip = accepts_gzip(&headers);
    let made = tokio::task::spawn_blocking(move || {
        let body =
            state
                .topology_json
                .get_or_make(&(window, instance_level, service.clone()), || {
                    let graph = topology.shared_snapshot(window);
                    let response = topology_response(
                        &state,
                        &graph,
                        window,
                        instance_level,
                        service.as_deref(),
                    )?;
                    serde_json::to_vec(&response)
                        .map(|json| SharedBody::new(json.into()))
                        .map_err(|e| ApiError::Internal(e.to_string()))
                })?;
        Ok::<_, ApiError>(shared_body(&body, gzip))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the topology answer failed: {e}")))?;
    Ok(shared_response("application/json", made?))
}

/// The topology answer from a snapshot, with status and addresses from the registry.
fn topology_response(
    state: &ApiState,
    graph: &Snapshot,
    window: Duration,
    instance_level: bool,
    service: Option<&str>,
) -> Result<TopologyResponse, ApiError> {
    // Status and address from the registry (an address a heartbeat gave beats one learned from
    // spans).
    let registered: BTreeMap<(String, String), (InstanceStatus, Option<String>)> = state
        .registry
        .instances(None)
        .into_iter()
        .map(|i| {
            let key = (i.service.to_string(), i.instance_id.to_string());
            (key, (i.status, i.address))
        })
        .collect();

    let mut nodes: BTreeMap<(u8, String), Node> = BTreeMap::new();
    for node in &graph.nodes {
        let instances = node
            .instances
            .iter()
            .map(|i| {
                let registry = registered.get(&(node.key.name.to_string(), i.id.to_string()));
                NodeInstance {
                    id: i.id.to_string(),
                    address: registry
                        .and_then(|(_, address)| address.clone())
                        .or_else(|| i.address.clone()),
                    status: registry.map(|(status, _)| status.as_str().to_owned()),
                    stats: stats(&i.served, graph),
                }
            })
            .collect();
        nodes.insert(
            (node.key.kind as u8, node.key.name.to_string()),
            Node {
                id: node.key.name.to_string(),
                kind: node.key.kind.as_str().to_owned(),
                service: None,
                instances,
                stats: stats(&node.served, graph),
            },
        );
    }

    // At instance level an edge into a service is replaced by the edges into its instances,
    // when there are any (spans without `service.instance.id` have none).
    let by_instance: BTreeSet<(String, String, &'static str)> = graph
        .instance_edges
        .iter()
        .map(|e| {
            (
                e.key.client.name.to_string(),
                e.key.server.to_string(),
                e.key.connection.as_str(),
            )
        })
        .collect();
    let mut edges: Vec<Edge> = Vec::new();
    for edge in &graph.edges {
        let key = (
            edge.key.client.name.to_string(),
            edge.key.server.name.to_string(),
            edge.key.connection.as_str(),
        );
        if instance_level && edge.key.server.kind == NodeKind::Service && by_instance.contains(&key)
        {
            continue;
        }
        edges.push(Edge {
            source: edge.key.client.name.to_string(),
            target: edge.key.server.name.to_string(),
            connection_type: edge.key.connection.as_str().to_owned(),
            requests: edge.summary.requests,
            errors: edge.summary.errors,
            rate_per_sec: graph.rate(edge.summary.requests),
            latency_ms: stats(&edge.summary, graph).latency_ms,
        });
    }
    if instance_level {
        let services: Vec<Node> = nodes.values().cloned().collect();
        for service in services.iter().filter(|n| n.kind == "service") {
            for instance in &service.instances {
                let id = format!("{}/{}", service.id, instance.id);
                nodes.insert(
                    (u8::MAX, id.clone()),
                    Node {
                        id,
                        kind: "instance".into(),
                        service: Some(service.id.clone()),
                        instances: Vec::new(),
                        stats: instance.stats.clone(),
                    },
                );
            }
        }
        for edge in &graph.instance_edges {
            // An instance that only received parent-to-child calls served no SERVER span.
            let target = format!("{}/{}", edge.key.server, edge.key.instance);
            nodes
                .entry((u8::MAX, target.clone()))
                .or_insert_with(|| Node {
                    id: target,
                    kind: "instance".into(),
                    service: Some(edge.key.server.to_string()),
                    instances: Vec::new(),
                    stats: stats(&Summary::default(), graph),
                });
            edges.push(Edge {
                source: edge.key.client.name.to_string(),
                target: format!("{}/{}", edge.key.server, edge.key.instance),
                connection_type: edge.key.connection.as_str().to_owned(),
                requests: edge.summary.requests,
                errors: edge.summary.errors,
                rate_per_sec: graph.rate(edge.summary.requests),
                latency_ms: stats(&edge.summary, graph).latency_ms,
            });
        }
    }

    if let Some(service) = service {
        let known = nodes.values().any(|n| n.id == service);
        if !known {
            return Err(ApiError::NotFound(format!(
                "no node named {service} in the last {}",
                humantime::format_duration(window)
            )));
        }
        let prefix = format!("{service}/");
        let mine = |id: &str| id == service || (instance_level && id.starts_with(&prefix));
        edges.retain(|e| mine(&e.source) || mine(&e.target));
        let keep: BTreeSet<String> = edges
            .iter()
            .flat_map(|e| [e.source.clone(), e.target.clone()])
            .chain([service.to_owned()])
            .collect();
        nodes.retain(|_, n| keep.contains(&n.id) || n.service.as_deref() == Some(service));
    }
    edges.sort_by(|a, b| (&a.source, &a.target).cmp(&(&b.source, &b.target)));

    Ok(TopologyResponse {
        window_seconds: window.as_secs(),
        generated_at: rfc3339(graph.generated_at),
        level: if instance_level {
            "instance"
        } else {
            "service"
        }
        .into(),
        nodes: nodes.into_values().collect(),
        edges,
    })
}

/// The query of `GET /api/v1/services`.
#[derive(Debug, Deserialize)]
pub(crate) struct ServicesQuery {
    window: Option<String>,
}

pub(crate) async fn get_services(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<ServicesQuery>,
) -> Result<Json<ServicesResponse>, ApiError> {
    let topology = topology(&state)?;
    let window = window(query.window.as_deref(), topology.retention())?;
    let graph = snapshot(topology, window).await?;
    let mut instance_counts: BTreeMap<String, u64> = BTreeMap::new();
    for instance in state.registry.instances(None) {
        *instance_counts
            .entry(instance.service.to_string())
            .or_default() += 1;
    }
    let mut services: Vec<Service> = graph
        .nodes
        .iter()
        .filter(|n| n.key.kind != NodeKind::User)
        .map(|node| {
            let served = &node.served;
            // A virtual node's latency is what its callers saw.
            let latency = if node.key.kind == NodeKind::Service {
                &served.server
            } else {
                &served.client
            };
            let instances = instance_counts
                .get(&*node.key.name)
                .copied()
                .unwrap_or(node.instances.len() as u64);
            let s = stats(served, &graph);
            Service {
                name: node.key.name.to_string(),
                kind: node.key.kind.as_str().to_owned(),
                instance_count: instances,
                requests: served.requests,
                request_rate: s.rate_per_sec,
                error_rate: s.error_rate,
                p50_ms: latency.quantile(0.5),
                p99_ms: latency.quantile(0.99),
            }
        })
        .collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(ServicesResponse {
        window_seconds: window.as_secs(),
        generated_at: rfc3339(graph.generated_at),
        services,
    }))
}

/// The query of `GET /api/v1/instances`.
#[derive(Debug, Deserialize)]
pub(crate) struct InstancesQuery {
    service: Option<String>,
    limit: Option<usize>,
    page_token: Option<String>,
}

/// Instances in one page of `GET /api/v1/instances` when `limit` does not say, and at most.
const INSTANCES_PAGE: usize = 1_000;
const INSTANCES_MAX_PAGE: usize = 10_000;

/// A page token: the hex of the last instance's service, a NUL, and its id.
fn page_token(service: &str, instance_id: &str) -> String {
    const_hex::encode(format!("{service}\0{instance_id}"))
}

fn after_token(token: &str) -> Option<(String, String)> {
    let bytes = const_hex::decode(token).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (service, id) = text.split_once('\0')?;
    Some((service.to_owned(), id.to_owned()))
}

pub(crate) async fn get_instances(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<InstancesQuery>,
) -> Result<Json<InstancesResponse>, ApiError> {
    let limit = query
        .limit
        .unwrap_or(INSTANCES_PAGE)
        .clamp(1, INSTANCES_MAX_PAGE);
    let after = match query.page_token.as_deref() {
        None => None,
        Some(token) => Some(after_token(token).ok_or_else(|| {
            ApiError::BadRequest(format!("`{token}` is not a page token of this API"))
        })?),
    };
    // In fleet mode, the instances their services' owners published: the same everywhere.
    #[cfg(feature = "kafka")]
    if let Some(views) = &state.views {
        let (instances, more) =
            views.instances_page(query.service.as_deref(), after.as_ref(), limit);
        let next_page_token = more
            .then(|| {
                instances
                    .last()
                    .map(|i| page_token(&i.service, &i.instance_id))
            })
            .flatten();
        return Ok(Json(InstancesResponse {
            instances,
            next_page_token,
        }));
    }
    let (page, more) =
        state
            .registry
            .instances_page(query.service.as_deref(), after.as_ref(), limit);
    let next_page_token = more
        .then(|| page.last().map(|i| page_token(&i.service, &i.instance_id)))
        .flatten();
    let instances = page
        .iter()
        .map(crate::graph::registry::Instance::to_api)
        .collect();
    Ok(Json(InstancesResponse {
        instances,
        next_page_token,
    }))
}
