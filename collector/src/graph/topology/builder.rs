//! The pairing rules: which spans make an edge, between which nodes.
//!
//! Every span is looked at once, as it arrives ([`TopologyBuilder::ingest`]); halves of an edge
//! that arrive apart wait in bounded maps for at most the edge wait. The rules, in the order they
//! are tried, are written out in `docs/topology.md`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::graph::Graph;
use super::keys::{ConnectionType, EdgeKey, InstanceEdgeKey, NodeKey, NodeKind};
use super::naming::{DatabaseName, PeerName, database_name, edge_dimensions, peer_name};
use super::pending::Expiring;
use super::side::{
    Half, Parent, Side, Waiting, connection_type, messaging_destination, observation, peer_class,
    receives_messages, time_in_broker,
};
use super::stats::BUCKET_SECONDS;
use crate::decode::{SpanFacts, SpanKind, SpanRef};
use crate::graph::dimensions::Dimension;
use crate::metrics::LogEvery;
use crate::util::clock::unix_seconds;

/// How the builder is bounded.
#[derive(Debug, Clone, PartialEq)]
pub struct TopologyConfig {
    /// How long half of an edge waits for the other half (`--edge-wait`).
    pub edge_wait: Duration,
    /// How many halves may wait at once (`--edge-max-pending`); when full, the oldest expire.
    pub max_pending: usize,
    /// How long per-minute figures are kept: the longest window that can be asked for.
    pub retention: Duration,
    /// How many edges, nodes and instances each are tracked at most; past it, new ones are
    /// counted and not tracked (a guard against unbounded label cardinality).
    pub max_series: usize,
    /// The memory budget of the figures (`--topology-max-bytes`); over it, the oldest minutes
    /// and the edges last seen longest ago are evicted, and counted.
    pub max_bytes: usize,
    /// Upper bounds of the service-graph histograms, in seconds, ascending
    /// (`--service-graph-buckets`; default [`HISTOGRAM_BOUNDS`](super::stats::HISTOGRAM_BOUNDS),
    /// the servicegraph connector's).
    pub histogram_buckets: Arc<[f64]>,
    /// Extra labels of the Prometheus series (`--service-graph-dimensions`): each is read from
    /// the client span (label `client_<name>`) and the server span (`server_<name>`), as in
    /// Tempo and the servicegraph connector.
    pub dimensions: Arc<[Dimension]>,
    /// Where database node names come from, first found wins
    /// (`--database-name-attributes`; default [`DatabaseName::defaults`]).
    pub database_names: Arc<[DatabaseName]>,
    /// Where the names of peers that send no spans come from, first found wins
    /// (`--peer-attributes`; default [`PeerName::defaults`]).
    pub peer_names: Arc<[PeerName]>,
    /// Whether the extra labels are `client_<name>` and `server_<name>` (the default, as the
    /// servicegraph connector always writes them), or one `<name>` label taking the server
    /// span's value, else the client's (Tempo with `enable_client_server_prefix` off).
    pub client_server_prefix: bool,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self {
            edge_wait: Duration::from_secs(10),
            max_pending: 100_000,
            retention: Duration::from_secs(3600),
            max_series: 10_000,
            max_bytes: 256 << 20,
            histogram_buckets: Arc::from(super::stats::HISTOGRAM_BOUNDS.as_slice()),
            dimensions: Arc::from([]),
            database_names: DatabaseName::defaults().into(),
            peer_names: PeerName::defaults().into(),
            client_server_prefix: true,
        }
    }
}

/// Counts of what the builder could not pair or keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Client and server spans paired into an edge.
    pub paired: u64,
    /// Edges to or from a virtual node (database, messaging, external, user).
    pub virtual_edges: u64,
    /// Client or producer spans that found no server and name no peer.
    pub unpaired_client: u64,
    /// Server or consumer spans that found no client.
    pub unpaired_server: u64,
    /// Halves expired early because `--edge-max-pending` was reached.
    pub evicted: u64,
    /// Observations not tracked because `max_series` was reached.
    pub series_dropped: u64,
    /// Series evicted to keep within `max_bytes`.
    pub series_evicted: u64,
}

/// The live service graph and the halves waiting to become edges.
#[derive(Debug)]
pub struct TopologyBuilder {
    config: TopologyConfig,
    halves: Expiring<Waiting>,
    children: Expiring<Half>,
    parents: Expiring<Parent>,
    /// Where the figures the rules record are kept.
    graph: Graph,
    counters: Counters,
    pruned_minute: u64,
    /// When the byte budget was last checked.
    budget_checked: SystemTime,
    /// The halves evicted and observations dropped when a cap's line was last written, and
    /// when the next may be.
    cap_logged: (u64, u64),
    cap_log: LogEvery,
}

/// How often the graph's memory is estimated against `--topology-max-bytes` (the estimate
/// walks every series).
const BUDGET_CHECK_EVERY: Duration = Duration::from_secs(5);

fn minute_of(now: SystemTime) -> u64 {
    unix_seconds(now) / BUCKET_SECONDS
}

impl TopologyBuilder {
    /// An empty graph.
    pub fn new(mut config: TopologyConfig) -> Self {
        // A wait past an hour is a mistake; capping it also keeps `now + wait` in range.
        config.edge_wait = config.edge_wait.min(MAX_EDGE_WAIT);
        let max_pending = config.max_pending;
        Self {
            halves: Expiring::new(max_pending),
            children: Expiring::new(max_pending),
            parents: Expiring::new(max_pending),
            graph: Graph::new(
                config.max_series,
                config.max_bytes,
                config.histogram_buckets.clone(),
            ),
            config,
            counters: Counters::default(),
            pruned_minute: 0,
            budget_checked: SystemTime::UNIX_EPOCH,
            cap_logged: (0, 0),
            cap_log: LogEvery::default(),
        }
    }

    /// The graph's estimated memory at the last budget check.
    pub fn graph_bytes(&self) -> usize {
        self.graph.bytes()
    }

    /// Its configuration.
    pub fn config(&self) -> &TopologyConfig {
        &self.config
    }

    /// What could not be paired or kept, so far.
    pub fn counters(&self) -> Counters {
        Counters {
            series_dropped: self.graph.series_dropped(),
            series_evicted: self.graph.series_evicted(),
            ..self.counters
        }
    }

    /// The figures recorded so far: what snapshots and the metrics read.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Halves waiting for their other half.
    pub fn pending(&self) -> usize {
        self.halves.len()
    }

    /// Takes in a batch of spans that arrived at `now`.
    pub fn ingest(&mut self, spans: &mut [SpanFacts], now: SystemTime) {
        self.expire(now);
        self.graph.now = now;
        let minute = minute_of(now);
        let deadline = now + self.config.edge_wait;
        for span in spans {
            self.ingest_one(span, minute, deadline);
        }
    }

    /// Expires the halves that waited out the edge wait and drops figures past the retention.
    pub fn expire(&mut self, now: SystemTime) {
        let minute = minute_of(now);
        let mut expired = Vec::new();
        self.halves.expire(now, |half| expired.push(half));
        for half in expired {
            self.unpaired(half, minute);
        }
        self.children.expire(now, drop);
        self.parents.expire(now, drop);
        if minute != self.pruned_minute {
            self.pruned_minute = minute;
            let keep_from = minute.saturating_sub(self.config.retention.as_secs() / BUCKET_SECONDS);
            self.graph.prune(keep_from);
        }
        let counts = (self.counters.evicted, self.graph.series_dropped());
        if counts != self.cap_logged && self.cap_log.ready() {
            tracing::warn!(
                evicted_halves = counts.0 - self.cap_logged.0,
                dropped_observations = counts.1 - self.cap_logged.1,
                "the service graph reached a cap: halves evicted past --edge-max-pending, or observations of series past the series cap dropped (logged at most once a minute; counted in wayfinder_topology_evicted_halves_total and wayfinder_topology_dropped_series_observations_total)"
            );
            self.cap_logged = counts;
        }
        if now
            .duration_since(self.budget_checked)
            .is_ok_and(|since| since >= BUDGET_CHECK_EVERY)
            || self.budget_checked > now
        {
            self.budget_checked = now;
            let evicted = self.graph.keep_within_budget(minute);
            if evicted > 0 {
                tracing::warn!(
                    evicted,
                    bytes = self.graph.bytes(),
                    max_bytes = self.config.max_bytes,
                    "the service graph reached --topology-max-bytes: its oldest minutes and the edges not seen since were evicted"
                );
            }
        }
    }

    fn ingest_one(&mut self, span: &mut SpanFacts, minute: u64, deadline: SystemTime) {
        match span.kind {
            SpanKind::Client if span.peer.as_deref().is_some_and(receives_messages) => {
                self.on_receive(span, minute, deadline)
            }
            SpanKind::Client | SpanKind::Producer => self.on_client(span, minute, deadline),
            SpanKind::Server | SpanKind::Consumer => {
                self.graph.served(span, minute);
                self.on_parent(span, minute, deadline);
                self.on_server(span, minute, deadline);
            }
            SpanKind::Internal | SpanKind::Unspecified => {
                self.on_parent(span, minute, deadline);
                self.on_child(span, minute, deadline);
            }
        }
    }

    /// A CLIENT or PRODUCER span: the client half of an edge, keyed by its own span id, as in
    /// Tempo and the servicegraph connector (a PRODUCER is a client whose edge is
    /// `messaging_system`). A database CLIENT span is a whole edge at once.
    fn on_client(&mut self, span: &mut SpanFacts, minute: u64, deadline: SystemTime) {
        let peer = span.peer.as_deref();
        // A database is not instrumented: its clients' spans are the whole edge.
        if span.kind == SpanKind::Client
            && let Some(name) = peer.and_then(|peer| {
                database_name(
                    peer,
                    span.attributes.as_deref(),
                    &self.config.database_names,
                )
            })
        {
            let server = NodeKey::named(NodeKind::Database, &name);
            self.record_virtual(
                NodeKey::service(&span.service),
                server,
                ConnectionType::Database,
                Some(Side::of(span)),
                None,
                minute,
            );
            return;
        }
        match self.halves.remove(&span.id) {
            Some(Waiting::Server(server)) => {
                self.record_pair(Side::of(span), server.side(), minute);
                return;
            }
            Some(Waiting::Client(_)) | None => {}
        }
        if let Some(child) = self.children.remove(&span.id)
            && child.service != span.service
        {
            self.record_pair(Side::of(span), child.side().without_latency(), minute);
            return;
        }
        self.wait(span.id, Waiting::Client(Half::take(span)), minute, deadline);
    }

    /// A SERVER or CONSUMER span: the server half, keyed by its parent, as in the anchors; a
    /// consumer that starts a trace of its own finds its producers by link. A consumer under a
    /// local span that received the message (its parent in the same service) makes no edge of
    /// its own: the receive span is the edge. That is told by the parent's service, not by the
    /// span's is-remote flag, which SDKs do not all set.
    fn on_server(&mut self, span: &mut SpanFacts, minute: u64, deadline: SystemTime) {
        let consumer = span.kind == SpanKind::Consumer;
        match span.parent_span_id {
            Some(parent) => {
                let key = SpanRef {
                    trace_id: span.id.trace_id,
                    span_id: parent,
                };
                self.find_client(key, span, minute, deadline);
            }
            None if consumer && !span.links.is_empty() => self.find_linked(span, minute, deadline),
            None if span.kind == SpanKind::Server => {
                let user = NodeKey::named(NodeKind::User, "user");
                let connection = connection_type(None, Some(Side::of(span)));
                self.record_virtual(
                    user,
                    NodeKey::service(&span.service),
                    connection,
                    None,
                    Some(Side::of(span)),
                    minute,
                );
            }
            None => self.unpaired(Waiting::Server(Half::take(span)), minute),
        }
    }

    /// A CLIENT span that receives messages (`messaging.operation.type = receive`, e.g. SQS
    /// `ReceiveMessage`): the consumer's side of a messaging edge, found by link, never an
    /// edge from the consumer into the broker. It is also the parent of the spans that process
    /// what it received: a CONSUMER of its own service waiting for it is no edge.
    fn on_receive(&mut self, span: &mut SpanFacts, minute: u64, deadline: SystemTime) {
        if matches!(self.halves.get(&span.id), Some(Waiting::Server(s)) if s.service == span.service)
        {
            self.halves.remove(&span.id);
        }
        self.on_parent(span, minute, deadline);
        if span.links.is_empty() {
            self.unpaired(Waiting::Server(Half::take(span)), minute);
        } else {
            self.find_linked(span, minute, deadline);
        }
    }

    /// A consumer's producers, by link (a batch consumer may link to many).
    fn find_linked(&mut self, span: &mut SpanFacts, minute: u64, deadline: SystemTime) {
        let links: Vec<SpanRef> = span.links.iter().take(MAX_LINKS).copied().collect();
        let last = links.len().saturating_sub(1);
        for (i, link) in links.into_iter().enumerate() {
            // A half that waits takes the peer attributes; the next link needs them too.
            let peer = if i < last { span.peer.clone() } else { None };
            self.find_client(link, span, minute, deadline);
            if span.peer.is_none() {
                span.peer = peer;
            }
        }
    }

    fn find_client(
        &mut self,
        key: SpanRef,
        span: &mut SpanFacts,
        minute: u64,
        deadline: SystemTime,
    ) {
        match self.halves.remove(&key) {
            Some(Waiting::Client(client)) => {
                self.record_pair(client.side(), Side::of(span), minute);
                return;
            }
            // Two servers under one client span: the older one stays unpaired.
            Some(Waiting::Server(_)) => self.counters.unpaired_server += 1,
            None => {}
        }
        // A caller that made no CLIENT span: the parent-to-child rule.
        if let Some(parent) = self.parent_of(&key) {
            if parent.service != span.service {
                self.record_pair(Side::parent(&parent), Side::of(span), minute);
            }
            return;
        }
        self.wait(key, Waiting::Server(Half::take(span)), minute, deadline);
    }

    /// Any span that is not a client: children in other services may be waiting for it, and
    /// later ones may name it.
    fn on_parent(&mut self, span: &SpanFacts, minute: u64, deadline: SystemTime) {
        if let Some(child) = self.children.remove(&span.id)
            && child.service != span.service
        {
            self.record_pair(
                Side::of(span).without_latency(),
                child.side().without_latency(),
                minute,
            );
        }
        // A server of another service that arrived first and waits for its caller: the caller
        // made no CLIENT span, this span is its parent.
        if matches!(self.halves.get(&span.id), Some(Waiting::Server(s)) if s.service != span.service)
            && let Some(Waiting::Server(server)) = self.halves.remove(&span.id)
        {
            self.record_pair(Side::of(span).without_latency(), server.side(), minute);
        }
        let parent = Parent {
            service: span.service.clone(),
            instance: span.instance.clone(),
            error: span.error,
            class: span.peer.as_deref().and_then(peer_class),
            attributes: span.attributes.clone(),
            weight: span.weight,
        };
        self.parents.insert(span.id, parent, deadline);
    }

    /// An INTERNAL or unspecified span: an edge when its parent is in another service.
    fn on_child(&mut self, span: &mut SpanFacts, minute: u64, deadline: SystemTime) {
        let Some(parent) = span.parent_span_id else {
            return;
        };
        if span.parent_is_remote == Some(false) {
            return;
        }
        let key = SpanRef {
            trace_id: span.id.trace_id,
            span_id: parent,
        };
        if let Some(Waiting::Client(client)) = self.halves.get(&key) {
            if client.service != span.service
                && let Some(Waiting::Client(client)) = self.halves.remove(&key)
            {
                self.record_pair(client.side(), Side::of(span).without_latency(), minute);
            }
            return;
        }
        if let Some(parent) = self.parent_of(&key) {
            if parent.service != span.service {
                self.record_pair(
                    Side::parent(&parent),
                    Side::of(span).without_latency(),
                    minute,
                );
            }
            return;
        }
        // Children wait in their own map so that they never crowd out client and server halves.
        self.children.insert(key, Half::take(span), deadline);
    }

    /// A recent span, if it is known.
    fn parent_of(&self, key: &SpanRef) -> Option<Parent> {
        self.parents.get(key).cloned()
    }

    fn wait(&mut self, key: SpanRef, waiting: Waiting, minute: u64, deadline: SystemTime) {
        if let Some(evicted) = self.halves.insert(key, waiting, deadline) {
            self.counters.evicted += 1;
            self.unpaired(evicted, minute);
        }
    }

    /// A half whose other half never came. A client that names a message destination is an
    /// edge into that destination's node, a client that names its peer (the first of
    /// `--peer-attributes` it has: `peer.service`, `service.peer.name`, … the URL's authority)
    /// an edge into an external node, a consumer
    /// that names its destination an edge from that destination's node (Tempo's virtual
    /// nodes, with the destination as the peer); anything else is counted.
    fn unpaired(&mut self, half: Waiting, minute: u64) {
        match half {
            Waiting::Client(client) => {
                let peer = client.peer.as_deref();
                if let Some(destination) = peer.and_then(messaging_destination) {
                    let server = NodeKey::named(NodeKind::Messaging, destination);
                    self.record_virtual(
                        NodeKey::service(&client.service),
                        server,
                        ConnectionType::Messaging,
                        Some(client.side()),
                        None,
                        minute,
                    );
                    return;
                }
                let name = peer_name(peer, client.attributes.as_deref(), &self.config.peer_names);
                match name {
                    Some(name) => {
                        let connection = connection_type(Some(client.side()), None);
                        self.record_virtual(
                            NodeKey::service(&client.service),
                            NodeKey::named(NodeKind::External, &name),
                            connection,
                            Some(client.side()),
                            None,
                            minute,
                        );
                    }
                    None => self.counters.unpaired_client += 1,
                }
            }
            Waiting::Server(server) => {
                let consumes = server.kind == SpanKind::Consumer
                    || server.peer.as_deref().is_some_and(receives_messages);
                match server.peer.as_deref().and_then(messaging_destination) {
                    Some(destination) if consumes => {
                        let client = NodeKey::named(NodeKind::Messaging, destination);
                        self.record_virtual(
                            client,
                            NodeKey::service(&server.service),
                            ConnectionType::Messaging,
                            None,
                            Some(server.side()),
                            minute,
                        );
                    }
                    _ => self.counters.unpaired_server += 1,
                }
            }
        }
    }

    fn record_pair(&mut self, client: Side<'_>, server: Side<'_>, minute: u64) {
        self.counters.paired += 1;
        let connection = connection_type(Some(client), Some(server));
        let key = EdgeKey {
            client: NodeKey::service(client.service),
            server: NodeKey::service(server.service),
            connection,
        };
        let mut seen = observation(Some(client), Some(server));
        if connection == ConnectionType::Messaging {
            seen.messaging_ns = time_in_broker(client, server);
        }
        let dimensions = edge_dimensions(
            &self.config.dimensions,
            client.attributes,
            server.attributes,
        );
        self.graph.edge(key, seen, dimensions, minute);
        if let Some(instance) = server.instance {
            let key = InstanceEdgeKey {
                client: NodeKey::service(client.service),
                server: server.service.clone(),
                instance: instance.clone(),
                connection,
            };
            self.graph.instance_edge(key, seen, minute);
            // Where the instance serves, as its callers address it.
            if let Some(peer) = client.peer {
                self.graph.learn_address(server.service, instance, peer);
            }
        }
    }

    /// An edge with a virtual node on one side; `client`/`server` are the spans there are.
    fn record_virtual(
        &mut self,
        client_node: NodeKey,
        server_node: NodeKey,
        connection: ConnectionType,
        client: Option<Side<'_>>,
        server: Option<Side<'_>>,
        minute: u64,
    ) {
        self.counters.virtual_edges += 1;
        let mut observation = observation(client, server);
        // A database sends no spans: as in Tempo and the servicegraph connector, its side of
        // the edge takes the client's duration, so that database nodes show a latency.
        if connection == ConnectionType::Database && observation.server_ns.is_none() {
            observation.server_ns = observation.client_ns;
        }
        // Into a service (from the user node or a topic): also per instance.
        if let Some(server) = server
            && let Some(instance) = server.instance
        {
            let key = InstanceEdgeKey {
                client: client_node.clone(),
                server: server.service.clone(),
                instance: instance.clone(),
                connection,
            };
            self.graph.instance_edge(key, observation, minute);
        }
        let key = EdgeKey {
            client: client_node,
            server: server_node,
            connection,
        };
        let dimensions = edge_dimensions(
            &self.config.dimensions,
            client.and_then(|c| c.attributes),
            server.and_then(|s| s.attributes),
        );
        self.graph.edge(key, observation, dimensions, minute);
    }

    /// The figures, to read or (in fleet mode, from the fleet's view) to set.
    pub(crate) fn graph_mut(&mut self) -> &mut Graph {
        &mut self.graph
    }

    /// The figures of every node and edge over the last `window`, as of `now`.
    pub fn snapshot(&self, window: Duration, now: SystemTime) -> super::Snapshot {
        super::snapshot::take(&self.graph, window, now)
    }

    /// The figures over the whole minutes from `from` to `to` (a window that may end before
    /// `now`).
    pub fn snapshot_between(
        &self,
        from: SystemTime,
        to: SystemTime,
        now: SystemTime,
    ) -> super::Snapshot {
        super::snapshot::take_between(&self.graph, from, to, now)
    }
}

/// The longest edge wait taken.
const MAX_EDGE_WAIT: Duration = Duration::from_secs(3600);

/// Links followed per consumer span (a batch consumer may link to many producers).
const MAX_LINKS: usize = 128;
