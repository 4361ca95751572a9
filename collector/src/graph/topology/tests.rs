//! Fixture-driven tests of the pairing rules: each case sends spans in batches at given times
//! and states the exact edges and counts it expects.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::decode::{PeerAttributes, SpanFacts, SpanKind, SpanRef};

const T0: u64 = 1_800_000_000; // a whole minute

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + seconds)
}

/// A span of `service` with id `id` in trace `trace`, lasting `ms` milliseconds.
fn span(service: &str, kind: SpanKind, trace: u8, id: u8, parent: Option<u8>) -> SpanFacts {
    crate::testing::linked_facts(service, kind, (trace, id, parent), 10_000_000)
}

trait Fixture {
    fn peer(self, f: impl FnOnce(&mut PeerAttributes)) -> Self;
    fn error(self) -> Self;
    fn ms(self, ms: u64) -> Self;
    fn instance(self, id: &str) -> Self;
    fn link(self, trace: u8, id: u8) -> Self;
}

impl Fixture for SpanFacts {
    fn peer(mut self, f: impl FnOnce(&mut PeerAttributes)) -> Self {
        f(self.peer.get_or_insert_with(Box::default));
        self
    }
    fn error(mut self) -> Self {
        self.error = true;
        self
    }
    fn ms(mut self, ms: u64) -> Self {
        self.duration_ns = ms * 1_000_000;
        self
    }
    fn instance(mut self, id: &str) -> Self {
        self.instance = Some(Arc::from(id));
        self
    }
    fn link(mut self, trace: u8, id: u8) -> Self {
        self.links.push(SpanRef {
            trace_id: [trace; 16],
            span_id: [id; 8],
        });
        self
    }
}

use SpanKind::{Client, Consumer, Internal, Producer, Server};

fn http(p: &mut PeerAttributes) {
    p.http = true;
}

fn kafka(p: &mut PeerAttributes) {
    p.messaging_system = Some("kafka".into());
    p.messaging_destination = Some("order-events".into());
}

fn receive(p: &mut PeerAttributes) {
    kafka(p);
    p.messaging_operation = Some("receive".into());
}

/// `(client, server, connection, requests, errors)` of every edge, sorted.
type Edge = (&'static str, &'static str, &'static str, u64, u64);

struct Case {
    why: &'static str,
    batches: Vec<(u64, Vec<SpanFacts>)>,
    /// When the graph is read (expiry runs then).
    read_at: u64,
    edges: Vec<Edge>,
    unpaired_client: u64,
    unpaired_server: u64,
}

fn run(case: Case, config: TopologyConfig) -> (TopologyBuilder, Snapshot) {
    let mut builder = TopologyBuilder::new(config);
    for (offset, mut spans) in case.batches {
        builder.ingest(&mut spans, at(offset));
    }
    builder.expire(at(case.read_at));
    let graph = builder.snapshot(Duration::from_secs(300), at(case.read_at));
    (builder, graph)
}

fn edges_of(graph: &Snapshot) -> Vec<(String, String, &'static str, u64, u64)> {
    graph
        .edges
        .iter()
        .map(|e| {
            (
                e.key.client.name.to_string(),
                e.key.server.name.to_string(),
                e.key.connection.as_str(),
                e.summary.requests,
                e.summary.errors,
            )
        })
        .collect()
}

#[test]
fn pairing_rules() {
    let cases = vec![
        Case {
            why: "client then server in one request",
            batches: vec![(
                0,
                vec![
                    span("front", Client, 1, 1, None).peer(http),
                    span("cart", Server, 1, 2, Some(1)).peer(http),
                ],
            )],
            read_at: 1,
            edges: vec![("front", "cart", "http", 1, 0)],
            unpaired_client: 0,
            unpaired_server: 0,
        },
        Case {
            why: "server first, client 3 s later in another request",
            batches: vec![
                (0, vec![span("cart", Server, 1, 2, Some(1))]),
                (
                    3,
                    vec![
                        span("front", Client, 1, 1, None)
                            .peer(|p| p.rpc_system = Some("grpc".into())),
                    ],
                ),
            ],
            read_at: 4,
            edges: vec![("front", "cart", "grpc", 1, 0)],
            unpaired_client: 0,
            unpaired_server: 0,
        },
        Case {
            why: "producer and consumer paired by parent",
            batches: vec![(
                0,
                vec![
                    span("orders", Producer, 1, 1, None),
                    span("billing", Consumer, 1, 2, Some(1)),
                ],
            )],
            read_at: 1,
            edges: vec![("orders", "billing", "messaging", 1, 0)],
            unpaired_client: 0,
            unpaired_server: 0,
        },
        Case {
            why: "a consumer that starts its own trace is paired by its link",
            batches: vec![
                (0, vec![span("billing", Consumer, 9, 5, None).link(1, 1)]),
                (2, vec![span("orders", Producer, 1, 1, None)]),
            ],
            read_at: 3,
            edges: vec![("orders", "billing", "messaging", 1, 0)],
            unpaired_client: 0,
            unpaired_server: 0,
        },
        Case {
            why: "with a named destination, producer and consumer are still one direct edge",
            batches: vec![(
                0,
                vec![
                    span("orders", Producer, 1, 1, None).peer(kafka),
                    span("billing", Consumer, 1, 2, Some(1)).peer(kafka),
                ],
            )],
            read_at: 1,
            edges: vec![("orders", "billing", "messaging", 1, 0)],
            unpaired_client: 0,
            unpaired_server: 0,
        },
        Case {
            why: "a producer whose consumer never comes: an edge into the topic, after the wait",
            batches: vec![(0, vec![span("orders", Producer, 1, 1, None).peer(kafka)])],
            read_at: 10,
            edges: vec![("orders", "order-events", "messaging", 1, 0)],
            unpaired_client: 0,
            unpaired_server: 0,
        },
        Case {
            why: "a consumer with no producer to find: an edge out of the topic, at once",
            batches: vec![(0, vec![span("billing", Consumer, 1, 2, None).peer(kafka)])],
            read_at: 0,
            edges: vec![("order-events", "billing", "messaging", 1, 0)],
            unpaired_client: 0,
            unpaired_server: 0,
        },
        Case {
            why: "a CLIENT receive span (SQS ReceiveMessage) is the consumer side, by its link",
            batches: vec![(
                0,
                vec![
                    span("orders", Producer, 1, 1, None).peer(kafka),
                    span("billing", Client, 2, 7, Some(6))
                        .peer(receive)
                        .link(1, 1),
                ],
            )],
            read_at: 1,
            edges: vec![("orders", "billing", "messaging", 1, 0)],
            unpaired_client: 0,
            unpaired_server: 0,
        },
        Case {
            why: "a CLIENT receive span with no link: out of the topic, never into it",
            batches: vec![(
                0,
                vec![span("billing", Client, 2, 7, Some(6)).peer(receive)],
            )],
            read_at: 10,
            edges: vec![("order-events", "billing", "messaging", 1, 0)],
            unpaired_client: 0,
            unpaired_server: 0,
        },
        Case {
            why: "a consumer under its local receive span adds no edge of its own, even when its is-remote flag says otherwise",
            batches: vec![(
                0,
                vec![
                    span("orders", Producer, 1, 1, None).peer(kafka),
                    span("billing", Client, 2, 7, None).peer(receive).link(1, 1),
                    span("billing", Consumer, 2, 8, Some(7)).peer(kafka),
                ],
            )],
            read_at: 10,
            edges: vec![("orders", "billing", "messaging", 1, 0)],
            unpaired_client: 0,
            unpaired_server: 0,
        },
        Case {
            why: "a batch consumer links to two producers: two requests",
            batches: vec![(
                0,
                vec![
                    span("orders", Producer, 1, 1, None).peer(kafka),
                    span("refunds", Producer, 3, 1, None).peer(kafka),
                    span("billing", Consumer, 2, 8, None)
                        .peer(kafka)
                        .link(1, 1)
                        .link(3, 1),
                ],
            )],
            read_at: 10,
            edges: vec![
                ("orders", "billing", "messaging", 1, 0),
                ("refunds", "billing", "messaging", 1, 0),
            ],
            unpaired_client: 0,
            unpaired_server: 0,
        },
        Case {
            why: "database nodes: peer.service, namespace, server address, peer address, system",
            batches: vec![(
                0,
                vec![
                    span("cart", Client, 1, 1, None).peer(|p| {
                        p.db_system = Some("postgresql".into());
                        p.db_namespace = Some("carts".into());
                        p.server_address = Some("db.internal".into());
                    }),
                    span("cart", Client, 1, 2, None).peer(|p| {
                        p.db_system = Some("redis".into());
                        p.server_address = Some("cache.internal".into());
                    }),
                    span("cart", Client, 1, 3, None).peer(|p| p.db_system = Some("sqlite".into())),
                    span("cart", Client, 1, 4, None).peer(|p| {
                        p.db_system = Some("postgresql".into());
                        p.peer_service = Some("cart-db".into());
                        p.db_namespace = Some("carts".into());
                    }),
                    span("cart", Client, 1, 5, None).peer(|p| {
                        p.db_system = Some("mysql".into());
                        p.network_peer_address = Some("10.0.0.9".into());
                        p.network_peer_port = Some(3306);
                    }),
                    span("cart", Client, 1, 6, None).peer(|p| {
                        p.db_system = Some("mysql".into());
                        p.network_peer_address = Some("10.0.0.10".into());
                    }),
                ],
            )],
            read_at: 0,
            edges: vec![
                ("cart", "10.0.0.10", "database", 1, 0),
                ("cart", "10.0.0.9:3306", "database", 1, 0),
                ("cart", "cache.internal", "database", 1, 0),
                ("cart", "cart-db", "database", 1, 0),
                ("cart", "carts", "database", 1, 0),
                ("cart", "sqlite", "database", 1, 0),
            ],
            unpaired_client: 0,
            unpaired_server: 0,
        },
        Case {
            why: "unmatched clients become external nodes after the wait, if they name a peer",
            batches: vec![(
                0,
                vec![
                    span("cart", Client, 1, 1, None)
                        .peer(|p| p.peer_service = Some("payments".into())),
                    span("cart", Client, 1, 2, None).peer(|p| {
                        p.server_address = Some("api.stripe.example".into());
                        p.server_port = Some(443);
                        p.http = true;
                    }),
                    span("cart", Client, 1, 3, None),
                ],
            )],
            read_at: 10,
            edges: vec![
                ("cart", "api.stripe.example:443", "http", 1, 0),
                ("cart", "payments", "other", 1, 0),
            ],
            unpaired_client: 1,
            unpaired_server: 0,
        },
        Case {
            why: "nothing is external before the wait is over",
            batches: vec![(
                0,
                vec![
                    span("cart", Client, 1, 1, None)
                        .peer(|p| p.peer_service = Some("payments".into())),
                ],
            )],
            read_at: 9,
            edges: vec![],
            unpaired_client: 0,
            unpaired_server: 0,
        },
        Case {
            why: "a root server span is called by the user node; a non-root one waits, then is counted",
            batches: vec![(
                0,
                vec![
                    span("front", Server, 1, 1, None).peer(http),
                    span("cart", Server, 2, 2, Some(7)),
                ],
            )],
            read_at: 10,
            edges: vec![("user", "front", "http", 1, 0)],
            unpaired_client: 0,
            unpaired_server: 1,
        },
        Case {
            why: "parent-to-child: an internal span whose parent is in another service",
            batches: vec![
                (0, vec![span("worker", Internal, 1, 2, Some(1))]),
                (1, vec![span("scheduler", Internal, 1, 1, None)]),
                (
                    2,
                    vec![
                        span("scheduler", Internal, 2, 1, None),
                        span("worker", SpanKind::Unspecified, 2, 2, Some(1)),
                    ],
                ),
                (
                    3,
                    vec![
                        span("scheduler", Internal, 3, 1, None),
                        span("scheduler", Internal, 3, 2, Some(1)),
                    ],
                ),
            ],
            read_at: 4,
            edges: vec![("scheduler", "worker", "other", 2, 0)],
            unpaired_client: 0,
            unpaired_server: 0,
        },
        Case {
            why: "a server whose caller made no client span pairs with the parent span",
            batches: vec![(
                0,
                vec![
                    span("front", Internal, 1, 1, None),
                    span("cart", Server, 1, 2, Some(1)),
                ],
            )],
            read_at: 1,
            edges: vec![("front", "cart", "other", 1, 0)],
            unpaired_client: 0,
            unpaired_server: 0,
        },
        Case {
            why: "the same, the server first: it waits until its parent comes",
            batches: vec![
                (0, vec![span("cart", Server, 1, 2, Some(1))]),
                (2, vec![span("front", Internal, 1, 1, None)]),
            ],
            read_at: 3,
            edges: vec![("front", "cart", "other", 1, 0)],
            unpaired_client: 0,
            unpaired_server: 0,
        },
        Case {
            why: "an error on either side fails the request",
            batches: vec![(
                0,
                vec![
                    span("front", Client, 1, 1, None).error(),
                    span("cart", Server, 1, 2, Some(1)),
                    span("front", Client, 1, 3, None),
                    span("cart", Server, 1, 4, Some(3)).error(),
                    span("front", Client, 1, 5, None),
                    span("cart", Server, 1, 6, Some(5)),
                ],
            )],
            read_at: 1,
            edges: vec![("front", "cart", "other", 3, 2)],
            unpaired_client: 0,
            unpaired_server: 0,
        },
        Case {
            why: "a half that expired does not pair with a late other half",
            batches: vec![
                (0, vec![span("cart", Server, 1, 2, Some(1))]),
                (11, vec![span("front", Client, 1, 1, None)]),
            ],
            read_at: 30,
            edges: vec![],
            unpaired_client: 1,
            unpaired_server: 1,
        },
    ];
    for case in cases {
        let reversed = reversed(&case);
        for (case, order) in [(case, "as listed"), (reversed, "in reverse")] {
            let why = format!("{} ({order})", case.why);
            let want: Vec<_> = case
                .edges
                .iter()
                .map(|(c, s, t, r, e)| (c.to_string(), s.to_string(), *t, *r, *e))
                .collect();
            let (unpaired_client, unpaired_server) = (case.unpaired_client, case.unpaired_server);
            let (builder, graph) = run(case, TopologyConfig::default());
            assert_eq!(edges_of(&graph), want, "{why}");
            let counters = builder.counters();
            assert_eq!(
                counters.unpaired_client, unpaired_client,
                "{why}: unpaired clients"
            );
            assert_eq!(
                counters.unpaired_server, unpaired_server,
                "{why}: unpaired servers"
            );
        }
    }
}

/// The same case with its spans arriving in the opposite order: the last span first, at the
/// time the first batch came, and so on; no rule may depend on which half comes first.
fn reversed(case: &Case) -> Case {
    let offsets: Vec<u64> = case.batches.iter().map(|(offset, _)| *offset).collect();
    let batches = case
        .batches
        .iter()
        .rev()
        .zip(offsets)
        .map(|((_, spans), offset)| (offset, spans.iter().rev().cloned().collect()))
        .collect();
    Case {
        why: case.why,
        batches,
        read_at: case.read_at,
        edges: case.edges.clone(),
        unpaired_client: case.unpaired_client,
        unpaired_server: case.unpaired_server,
    }
}

#[test]
fn full_pending_store_expires_the_oldest_first() {
    let config = TopologyConfig {
        max_pending: 2,
        ..TopologyConfig::default()
    };
    let mut builder = TopologyBuilder::new(config);
    let mut clients: Vec<_> = (1..=3)
        .map(|i| span("front", Client, 1, i, None).peer(|p| p.peer_service = Some("svc".into())))
        .collect();
    builder.ingest(&mut clients, at(0));
    assert_eq!(builder.counters().evicted, 1);
    assert_eq!(builder.pending(), 2);
    // The evicted one was handled as expired: an external edge at once.
    let graph = builder.snapshot(Duration::from_secs(60), at(0));
    assert_eq!(graph.edges[0].summary.requests, 1);
    // The servers of the two that still wait pair; the first one's server finds nothing (and
    // comes last, so that its own wait evicts no one).
    let mut servers: Vec<_> = [2, 3, 1]
        .into_iter()
        .map(|i| span("back", Server, 1, 10 + i, Some(i)))
        .collect();
    builder.ingest(&mut servers, at(1));
    builder.expire(at(20));
    let graph = builder.snapshot(Duration::from_secs(60), at(20));
    let edges = edges_of(&graph);
    assert!(
        edges.contains(&("front".into(), "back".into(), "other", 2, 0)),
        "{edges:?}"
    );
    assert_eq!(builder.counters().unpaired_server, 1);
}

#[test]
fn latencies_nodes_and_instances() {
    let mut builder = TopologyBuilder::new(TopologyConfig::default());
    let mut spans = Vec::new();
    for i in 0..10u8 {
        spans.push(
            span("front", Client, 1, 2 * i + 1, None)
                .ms(30)
                .peer(|p| p.url_full = Some("http://10.0.0.7:8080/cart".into())),
        );
        let instance = if i < 6 { "cart-a" } else { "cart-b" };
        spans.push(
            span("cart", Server, 1, 2 * i + 2, Some(2 * i + 1))
                .ms(20)
                .instance(instance),
        );
    }
    builder.ingest(&mut spans, at(5));
    let graph = builder.snapshot(Duration::from_secs(60), at(5));
    let edge = &graph.edges[0];
    assert_eq!(
        edge.key.connection,
        ConnectionType::Http,
        "url.full says http"
    );
    let server_p50 = edge.summary.server.quantile(0.5).unwrap();
    let client_p50 = edge.summary.client.quantile(0.5).unwrap();
    assert!((server_p50 - 20.0).abs() < 0.3, "server p50 {server_p50}");
    assert!((client_p50 - 30.0).abs() < 0.4, "client p50 {client_p50}");

    let cart = graph.nodes.iter().find(|n| &*n.key.name == "cart").unwrap();
    assert_eq!(cart.served.requests, 10);
    let instances: Vec<_> = cart
        .instances
        .iter()
        .map(|i| (&*i.id, i.served.requests, i.address.as_deref()))
        .collect();
    assert_eq!(
        instances,
        [
            ("cart-a", 6, Some("10.0.0.7:8080")),
            ("cart-b", 4, Some("10.0.0.7:8080"))
        ],
        "instances, and the address their callers used"
    );
    let to_instances: Vec<_> = graph
        .instance_edges
        .iter()
        .map(|e| (&*e.key.client.name, &*e.key.instance, e.summary.requests))
        .collect();
    assert_eq!(
        to_instances,
        [("front", "cart-a", 6), ("front", "cart-b", 4)]
    );
    // 60 s window read 5 s into a minute: one whole minute plus 5 s.
    assert_eq!(graph.covered, Duration::from_secs(65));
}

#[test]
fn windows_and_retention() {
    let config = TopologyConfig {
        retention: Duration::from_secs(600),
        ..TopologyConfig::default()
    };
    let mut builder = TopologyBuilder::new(config);
    let root = |trace| vec![span("front", Server, trace, 1, None)];
    builder.ingest(&mut root(1), at(0));
    builder.ingest(&mut root(2), at(120));
    builder.ingest(&mut root(3), at(300));
    let requests = |b: &TopologyBuilder, window: u64, now: u64| {
        b.snapshot(Duration::from_secs(window), at(now))
            .edges
            .first()
            .map_or(0, |e| e.summary.requests)
    };
    assert_eq!(requests(&builder, 60, 300), 1, "last minute");
    assert_eq!(requests(&builder, 180, 300), 2, "last three minutes");
    assert_eq!(requests(&builder, 600, 300), 3, "everything");
    builder.expire(at(800));
    assert_eq!(
        requests(&builder, 600, 800),
        1,
        "minutes 0 and 2 are past the retention"
    );
}

/// Readers of one window within the reuse period share one snapshot (new spans show in the
/// next period's); with no reuse every reader gets a new one.
#[test]
fn readers_share_a_snapshot_within_the_reuse_period() {
    let clock = crate::util::clock::Clock::starting_at(at(0));
    let root = || span("checkout", SpanKind::Server, 1, 1, None);
    let window = Duration::from_secs(300);

    let shared = Topology::new(TopologyConfig::default(), clock)
        .with_snapshot_reuse(Duration::from_secs(3600));
    shared.ingest(&mut [root()]);
    let first = shared.shared_snapshot(window);
    shared.ingest(&mut [span("checkout", SpanKind::Server, 2, 1, None)]);
    let second = shared.shared_snapshot(window);
    assert!(
        Arc::ptr_eq(&first, &second),
        "the same snapshot, within the period"
    );
    assert_eq!(
        second.edges[0].summary.requests, 1,
        "so the second root is not in it yet"
    );
    let other = shared.shared_snapshot(Duration::from_secs(60));
    assert_eq!(
        other.edges[0].summary.requests, 2,
        "another window is its own snapshot"
    );

    let fresh = Topology::new(TopologyConfig::default(), clock).with_snapshot_reuse(Duration::ZERO);
    fresh.ingest(&mut [root()]);
    let first = fresh.shared_snapshot(window);
    fresh.ingest(&mut [span("checkout", SpanKind::Server, 2, 1, None)]);
    let second = fresh.shared_snapshot(window);
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(
        second.edges[0].summary.requests, 2,
        "no reuse: the new root counts"
    );
}

#[test]
fn a_virtual_node_named_like_a_service_is_that_service() {
    // frontend → cart twice: once with cart's server span, once with only the client span
    // naming `peer.service = cart` (its server half never comes). The anchors key nodes by name:
    // one node `cart`, one edge with both requests; on `/metrics` they stay two series, told
    // apart by `connection_type` (see topology/metrics.rs).
    let mut builder = TopologyBuilder::new(TopologyConfig::default());
    let mut spans = vec![
        span("front", Client, 1, 1, None).peer(http),
        span("cart", Server, 1, 2, Some(1)).peer(http),
        span("front", Client, 2, 3, None).peer(|p| {
            p.http = true;
            p.peer_service = Some("cart".into());
        }),
    ];
    builder.ingest(&mut spans, at(0));
    builder.expire(at(30));
    let graph = builder.snapshot(Duration::from_secs(300), at(30));
    assert_eq!(
        edges_of(&graph),
        [("front".into(), "cart".into(), "http", 2, 0)],
        "one edge"
    );
    let carts: Vec<_> = graph
        .nodes
        .iter()
        .filter(|n| &*n.key.name == "cart")
        .map(|n| n.key.kind)
        .collect();
    assert_eq!(carts, [NodeKind::Service], "one node, the service");
    // Before the merge the builder holds two edges: the real one and the virtual one.
    let kinds: Vec<_> = builder
        .graph()
        .edges
        .keys()
        .map(|k| k.server.kind)
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(kinds.contains(&NodeKind::External), "{kinds:?}");
}

#[test]
fn a_database_edge_takes_the_client_duration_for_its_server_side() {
    let mut builder = TopologyBuilder::new(TopologyConfig::default());
    let mut spans = vec![
        span("cart", Client, 1, 1, None)
            .ms(40)
            .peer(|p| p.db_system = Some("postgresql".into())),
    ];
    builder.ingest(&mut spans, at(0));
    let graph = builder.snapshot(Duration::from_secs(60), at(0));
    let edge = &graph.edges[0];
    let client = edge.summary.client.quantile(0.5).expect("a client latency");
    let server = edge
        .summary
        .server
        .quantile(0.5)
        .expect("a server latency, as the anchors give");
    assert_eq!(client, server, "the same observation");
    assert!((server - 40.0).abs() < 0.5, "about 40 ms: {server}");
    let node = graph
        .nodes
        .iter()
        .find(|n| n.key.kind == NodeKind::Database)
        .expect("the database node");
    assert!(
        node.served.server.quantile(0.5).is_some(),
        "the database node shows a latency"
    );
}

#[test]
fn the_parent_to_child_rule_does_not_depend_on_arrival_order() {
    // A caller that made no CLIENT span: its span is the parent of a span in another service.
    // Whichever comes first, the edge has the same requests, errors and connection type.
    let grpc = |p: &mut PeerAttributes| p.rpc_system = Some("grpc".into());
    let cases: Vec<(&str, SpanFacts, SpanFacts, Edge)> = vec![
        (
            "a failed INTERNAL parent, an INTERNAL child",
            span("front", Internal, 1, 1, None).error(),
            span("cart", Internal, 1, 2, Some(1)),
            ("front", "cart", "other", 1, 1),
        ),
        (
            "a SERVER parent whose peer says gRPC, an INTERNAL child",
            span("front", Server, 1, 1, None).peer(grpc),
            span("cart", Internal, 1, 2, Some(1)),
            ("front", "cart", "grpc", 1, 0),
        ),
        (
            "a failed INTERNAL parent, a SERVER child",
            span("front", Internal, 1, 1, None).error().peer(grpc),
            span("cart", Server, 1, 2, Some(1)),
            ("front", "cart", "grpc", 1, 1),
        ),
    ];
    for (why, parent, child, want) in cases {
        for parent_first in [true, false] {
            let mut builder = TopologyBuilder::new(TopologyConfig::default());
            let (first, second) = if parent_first {
                (parent.clone(), child.clone())
            } else {
                (child.clone(), parent.clone())
            };
            builder.ingest(&mut [first], at(0));
            builder.ingest(&mut [second], at(1));
            let graph = builder.snapshot(Duration::from_secs(60), at(1));
            let edges: Vec<_> = edges_of(&graph)
                .into_iter()
                .filter(|e| e.0 == "front" && e.1 == "cart")
                .collect();
            let want = (want.0.into(), want.1.into(), want.2, want.3, want.4);
            assert_eq!(edges, [want], "{why}, parent first: {parent_first}");
        }
    }
}

#[test]
fn a_window_that_ends_before_now_sums_only_its_minutes() {
    // Jaeger's /api/dependencies?endTs=…&lookback=…: the minutes from endTs - lookback to endTs.
    let mut builder = TopologyBuilder::new(TopologyConfig::default());
    let pair = |trace: u8| {
        vec![
            span("front", Client, trace, 1, None).peer(http),
            span("cart", Server, trace, 2, Some(1)).peer(http),
        ]
    };
    builder.ingest(&mut pair(1), at(0));
    builder.ingest(&mut pair(2), at(600));
    builder.ingest(&mut pair(3), at(610));
    let requests = |graph: &Snapshot| graph.edges.iter().map(|e| e.summary.requests).sum::<u64>();
    let cases = [
        (0, 59, 1, "the first minute only"),
        (540, 660, 2, "the eleventh minute only"),
        (0, 700, 3, "both"),
        (120, 300, 0, "a quiet stretch"),
    ];
    for (from, to, want, why) in cases {
        let graph = builder.snapshot_between(at(from), at(to), at(700));
        assert_eq!(requests(&graph), want, "{why}");
    }
}

#[test]
fn over_its_byte_budget_the_graph_drops_its_oldest_minutes_and_stalest_edges() {
    // Thirty minutes, each with an edge of its own (service names with the minute in them),
    // as a fleet whose callers come and go.
    let feed = |builder: &mut TopologyBuilder| {
        for minute in 0..30u64 {
            let (client, server) = (format!("caller-{minute}"), format!("callee-{minute}"));
            for trace in 0..20u8 {
                let mut pair = vec![
                    span(&client, Client, trace, 1, None)
                        .peer(http)
                        .ms(u64::from(trace) + 1),
                    span(&server, Server, trace, 2, Some(1)).peer(http),
                ];
                builder.ingest(&mut pair, at(minute * 60 + u64::from(trace)));
            }
            builder.expire(at(minute * 60 + 30));
        }
    };
    let mut unbounded = TopologyBuilder::new(TopologyConfig::default());
    feed(&mut unbounded);
    let full = unbounded.graph_bytes();
    assert!(full > 0, "the estimate counts something");
    assert_eq!(
        unbounded.counters().series_evicted,
        0,
        "within the default budget"
    );

    let budget = full / 2;
    let mut bounded = TopologyBuilder::new(TopologyConfig {
        max_bytes: budget,
        ..TopologyConfig::default()
    });
    feed(&mut bounded);
    assert!(
        bounded.graph_bytes() <= budget,
        "{} bytes over a budget of {budget}",
        bounded.graph_bytes()
    );
    let evicted = bounded.counters().series_evicted;
    assert!(evicted > 0, "series were evicted and counted");

    let edges = |builder: &TopologyBuilder| {
        builder
            .snapshot(Duration::from_secs(3600), at(30 * 60))
            .edges
            .iter()
            .map(|e| e.key.client.name.to_string())
            .collect::<Vec<_>>()
    };
    let kept = edges(&bounded);
    assert!(
        kept.contains(&"caller-29".to_owned()),
        "the newest edge stays: {kept:?}"
    );
    assert!(
        !kept.contains(&"caller-0".to_owned()),
        "the stalest edge went: {kept:?}"
    );
    assert_eq!(edges(&unbounded).len(), 30);
    // Each evicted edge took the node of its callee with it (a caller that serves nothing
    // has no node series of its own).
    assert_eq!(evicted as usize, (30 - kept.len()) * 2, "{kept:?}");
}
