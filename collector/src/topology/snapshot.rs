//! The graph over a window, read out of the builder: the form the query API turns into JSON.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::builder::{EdgeKey, InstanceEdgeKey, NodeKey, NodeKind, TopologyBuilder};
use super::stats::{BUCKET_SECONDS, Summary};
use crate::clock::unix_seconds;

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

pub(super) fn take(builder: &TopologyBuilder, window: Duration, now: SystemTime) -> Snapshot {
    let now_seconds = unix_seconds(now);
    let now_minute = now_seconds / BUCKET_SECONDS;
    let whole = (window.as_secs() / BUCKET_SECONDS).max(1);
    // `whole` minutes back plus the current one, which has run for `now % 60` seconds.
    let since = now_minute.saturating_sub(whole);
    let covered =
        Duration::from_secs((now_minute - since) * BUCKET_SECONDS + now_seconds % BUCKET_SECONDS);

    let mut edges: Vec<EdgeSnapshot> = builder
        .edges
        .iter()
        .filter_map(|(key, edge)| {
            Some(EdgeSnapshot {
                key: key.clone(),
                summary: edge.series.window(since)?,
            })
        })
        .collect();
    edges.sort_by(|a, b| a.key.cmp(&b.key));

    let mut instance_edges: Vec<InstanceEdgeSnapshot> = builder
        .instance_edges
        .iter()
        .filter_map(|(key, series)| {
            Some(InstanceEdgeSnapshot {
                key: key.clone(),
                summary: series.window(since)?,
            })
        })
        .collect();
    instance_edges.sort_by(|a, b| a.key.cmp(&b.key));

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
    for (service, series) in &builder.nodes {
        if let Some(served) = series.window(since) {
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
    for ((service, id), state) in &builder.instances {
        if let Some(served) = state.series.window(since) {
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
