//! What the graph is made of: nodes, edges and edges to instances, and how a client reached a
//! server. The pairing rules make these keys, the graph stores figures under them, snapshots and
//! the metrics read them.

use std::sync::Arc;

/// What a node of the graph is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeKind {
    /// An instrumented service.
    Service,
    /// A database, seen from its clients' spans.
    Database,
    /// A message topic or queue, between producers and consumers.
    Messaging,
    /// An uninstrumented service called by instrumented ones.
    External,
    /// Whoever called a root SERVER span.
    User,
}

impl NodeKind {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Database => "database",
            Self::Messaging => "messaging",
            Self::External => "external",
            Self::User => "user",
        }
    }
}

/// A node: its kind and name. The name is its id in the API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    /// What it is.
    pub kind: NodeKind,
    /// Its name.
    pub name: Arc<str>,
}

impl NodeKey {
    pub(super) fn service(name: &Arc<str>) -> Self {
        Self {
            kind: NodeKind::Service,
            name: name.clone(),
        }
    }

    pub(super) fn named(kind: NodeKind, name: &str) -> Self {
        Self {
            kind,
            name: Arc::from(name),
        }
    }
}

/// How the client reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectionType {
    /// HTTP (`http.request.method` or `url.full` on a side).
    Http,
    /// gRPC (`rpc.system = grpc`).
    Grpc,
    /// A database call.
    Database,
    /// A message through a broker.
    Messaging,
    /// Anything else.
    Other,
}

impl ConnectionType {
    /// The label value, as in the OpenTelemetry Collector's servicegraph connector (which leaves
    /// it empty for `other`; we name it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
            Self::Database => "database",
            Self::Messaging => "messaging",
            Self::Other => "other",
        }
    }
}

/// An edge of the service graph.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeKey {
    /// The caller.
    pub client: NodeKey,
    /// The callee.
    pub server: NodeKey,
    /// How.
    pub connection: ConnectionType,
}

/// An edge from a caller to one instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceEdgeKey {
    /// The caller.
    pub client: NodeKey,
    /// The callee service.
    pub server: Arc<str>,
    /// The callee instance (`service.instance.id`).
    pub instance: Arc<str>,
    /// How.
    pub connection: ConnectionType,
}
