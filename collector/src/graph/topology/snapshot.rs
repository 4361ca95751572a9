//! The graph over a window, read out of the [`Graph`]'s series (sealed minutes summed once and
//! cached, the current one merged in): the form the query API turns into JSON.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::graph::Graph;
use super::keys::{EdgeKey, InstanceEdgeKey, NodeKey, NodeKind};
use super::stats::{BUCKET_SECONDS, Summary};
use crate::util::clock::unix_seconds;

/// The service graph over a window.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken.
    pub generated_at: SystemTime,
    /// The window asked for.
    pub window: Duration,
    /// The time its buckets span: the whole minutes of the window plus the current, partial one.
    /// Rates are requests over this.
    pub covered: Duration,
    /// Every node with traffic in the window, by kind then name.
    pub nodes: Vec<NodeSnapshot>,
    /// Every edge with traffic in the window.
    pub edges: Vec<EdgeSnapshot>,
    /// Edges from a caller to one instance of a service.
    pub instance_edges: Vec<InstanceEdgeSnapshot>,
}

/// A node over the window.
#[derive(Debug, Clone)]
pub struct NodeSnapshot {
    /// Which node.
    pub key: NodeKey,
    /// What it served: from its SERVER/CONSUMER spans for a service, from the edges into it for
    /// a virtual node.
    pub served: Summary,
    /// Its instances with traffic in the window.
    pub instances: Vec<InstanceSnapshot>,
}

/// An instance over the window.
#[derive(Debug, Clone)]
pub struct InstanceSnapshot {
    /// `service.instance.id`.
    pub id: Arc<str>,
    /// Where it serves, when known from spans.
    pub address: Option<String>,
    /// When it last served a span.
    pub last_seen: Option<SystemTime>,
    /// What it served.
    pub served: Summary,
}

/// An edge over the window.
#[derive(Debug, Clone)]
pub struct EdgeSnapshot {
    /// Which edge.
    pub key: EdgeKey,
    /// Its figures.
    pub summary: Summary,
}

/// An edge to an instance over the window.
#[derive(Debug, Clone)]
pub struct InstanceEdgeSnapshot {
    /// Which edge.
    pub key: InstanceEdgeKey,
    /// Its figures.
    pub summary: Summary,
}

impl Snapshot {
    /// Requests per second over the window.
    pub fn rate(&self, requests: u64) -> f64 {
        let seconds = self.covered.as_secs_f64();
        if seconds > 0.0 {
            requests as f64 / seconds
        } else {
            0.0
        }
    }
}

pub(super) fn take(graph: &Graph, window: Duration, now: SystemTime) -> Snapshot {
    let now_seconds = unix_seconds(now);
    let now_minute = now_seconds / BUCKET_SECONDS;
    let whole = (window.as_secs() / BUCKET_SECONDS).max(1);
    // `whole` minutes back plus the current one, which has run for `now % 60` seconds.
    let since = now_minute.saturating_sub(whole);
    let covered =
        Duration::from_secs((now_minute - since) * BUCKET_SECONDS + now_seconds % BUCKET_SECONDS);
    take_minutes(graph, since, None, window, covered, now)
}

/// The graph over the whole minutes from the one holding `from` to the one holding `to`, for a
/// window that ends before now (Jaeger's `endTs`).
pub(super) fn take_between(
    graph: &Graph,
    from: SystemTime,
    to: SystemTime,
    now: SystemTime,
) -> Snapshot {
    let since = unix_seconds(from) / BUCKET_SECONDS;
    let until = (unix_seconds(to) / BUCKET_SECONDS).max(since);
    let covered = Duration::from_secs((until - since + 1) * BUCKET_SECONDS);
    let window = to.duration_since(from).unwrap_or_default();
    take_minutes(graph, since, Some(until), window, covered, now)
}

fn take_minutes(
    graph: &Graph,
    since: u64,
    until: Option<u64>,
    window: Duration,
    covered: Duration,
    now: SystemTime,
) -> Snapshot {
    let sum = |series: &super::stats::Series| match until {
        None => series.window(since),
        Some(until) => series.between(since, until),
    };

    // One node per name, as the anchors have it (a node is its name there): a virtual node
    // named like a service (a client span whose server half expired, naming its peer) is that
    // service, and their edges are one edge.
    let canonical = canonical_kinds(graph);
    let canon = |key: &NodeKey| NodeKey {
        kind: canonical.get(&key.name).copied().unwrap_or(key.kind),
        name: key.name.clone(),
    };
    let mut merged: std::collections::BTreeMap<EdgeKey, Summary> = Default::default();
    for (key, edge) in &graph.edges {
        if let Some(summary) = sum(&edge.series) {
            let key = EdgeKey {
                client: canon(&key.client),
                server: canon(&key.server),
                connection: key.connection,
            };
            merged.entry(key).or_default().merge(&summary);
        }
    }
    let edges: Vec<EdgeSnapshot> = merged
        .into_iter()
        .map(|(key, summary)| EdgeSnapshot { key, summary })
        .collect();

    let mut merged: std::collections::BTreeMap<InstanceEdgeKey, Summary> = Default::default();
    for (key, series) in &graph.instance_edges {
        if let Some(summary) = sum(series) {
            let key = InstanceEdgeKey {
                client: canon(&key.client),
                ..key.clone()
            };
            merged.entry(key).or_default().merge(&summary);
        }
    }
    let instance_edges: Vec<InstanceEdgeSnapshot> = merged
        .into_iter()
        .map(|(key, summary)| InstanceEdgeSnapshot { key, summary })
        .collect();

    let mut nodes: std::collections::BTreeMap<NodeKey, NodeSnapshot> = Default::default();
    fn node<'m>(
        nodes: &'m mut std::collections::BTreeMap<NodeKey, NodeSnapshot>,
        key: &NodeKey,
    ) -> &'m mut NodeSnapshot {
        nodes.entry(key.clone()).or_insert_with(|| NodeSnapshot {
            key: key.clone(),
            served: Summary::default(),
            instances: Vec::new(),
        })
    }
    for (service, series) in &graph.nodes {
        if let Some(served) = sum(series) {
            node(
                &mut nodes,
                &NodeKey {
                    kind: NodeKind::Service,
                    name: service.clone(),
                },
            )
            .served = served;
        }
    }
    for ((service, id), state) in &graph.instances {
        if let Some(served) = sum(&state.series) {
            node(
                &mut nodes,
                &NodeKey {
                    kind: NodeKind::Service,
                    name: service.clone(),
                },
            )
            .instances
            .push(InstanceSnapshot {
                id: id.clone(),
                address: state.address.clone(),
                last_seen: state.last_seen,
                served,
            });
        }
    }
    for edge in &edges {
        node(&mut nodes, &edge.key.client);
        let server = node(&mut nodes, &edge.key.server);
        if server.key.kind != NodeKind::Service {
            server.served.merge(&edge.summary);
        }
    }
    let mut nodes: Vec<NodeSnapshot> = nodes.into_values().collect();
    for node in &mut nodes {
        node.instances.sort_by(|a, b| a.id.cmp(&b.id));
    }

    Snapshot {
        generated_at: now,
        window,
        covered,
        nodes,
        edges,
        instance_edges,
    }
}

/// The kind each node name is shown as: a service when a service has that name, else the first
/// kind seen for it in [`NodeKind`]'s order.
fn canonical_kinds(graph: &Graph) -> std::collections::HashMap<Arc<str>, NodeKind> {
    let mut kinds: std::collections::HashMap<Arc<str>, NodeKind> = Default::default();
    let mut see = |name: &Arc<str>, kind: NodeKind| {
        kinds
            .entry(name.clone())
            .and_modify(|k| *k = (*k).min(kind))
            .or_insert(kind);
    };
    for service in graph.nodes.keys() {
        see(service, NodeKind::Service);
    }
    for (service, _) in graph.instances.keys() {
        see(service, NodeKind::Service);
    }
    for key in graph.edges.keys() {
        see(&key.client.name, key.client.kind);
        see(&key.server.name, key.server.kind);
    }
    for key in graph.instance_edges.keys() {
        see(&key.client.name, key.client.kind);
    }
    kinds
}
