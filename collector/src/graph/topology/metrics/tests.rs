use super::*;
use crate::decode::{SpanFacts, SpanKind};
use crate::graph::topology::NodeKey;

trait Ms {
    fn with_ms(self, ms: u64) -> Self;
}

impl Ms for SpanFacts {
    fn with_ms(mut self, ms: u64) -> Self {
        self.duration_ns = ms * 1_000_000;
        self
    }
}

fn key(client: (NodeKind, &str), server: (NodeKind, &str), connection: ConnectionType) -> EdgeKey {
    let node = |(kind, name): (NodeKind, &str)| NodeKey {
        kind,
        name: Arc::from(name),
    };
    EdgeKey {
        client: node(client),
        server: node(server),
        connection,
    }
}

/// The exposition as a scrape sees it: counters and histograms.
fn exposition(topology: Arc<Topology>) -> String {
    let metrics = crate::metrics::Metrics::new();
    metrics.register_collector(Box::new(TopologyMetrics(topology.clone())));
    metrics.register_exposition(Box::new(TopologyMetrics(topology)));
    metrics.encode()
}

fn span(service: &str, kind: SpanKind, trace: u8, id: u8, parent: Option<u8>) -> SpanFacts {
    crate::testing::linked_facts(service, kind, (trace, id, parent), 50_000_000)
}

#[test]
fn histograms_use_the_configured_buckets() {
    let config = crate::graph::topology::TopologyConfig {
        histogram_buckets: Arc::from([0.01, 0.1].as_slice()),
        ..Default::default()
    };
    let topology = Arc::new(Topology::new(config, crate::util::clock::Clock::new()));
    topology.ingest(&mut [
        span("front", SpanKind::Client, 1, 1, None),
        span("cart", SpanKind::Server, 1, 2, Some(1)),
    ]);
    let text = exposition(topology);
    let bucket = |le: &str| {
        format!(
            "traces_service_graph_request_server_seconds_bucket{{client=\"front\",server=\"cart\",connection_type=\"\",le=\"{le}\"}}"
        )
    };
    for (le, count) in [("0.01", 0), ("0.1", 1), ("+Inf", 1)] {
        let line = format!("{} {count}", bucket(le));
        assert!(text.contains(&line), "{line} in\n{text}");
    }
    let graph: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("traces_service_graph"))
        .collect();
    assert!(
        !graph.iter().any(|l| l.contains("le=\"0.002\"")),
        "not the default bounds"
    );
    assert!(
        !graph.iter().any(|l| l.contains("le=\"inf\"")),
        "+Inf is written as OpenMetrics wants it"
    );
}

/// Every histogram bucket line that carries an exemplar names a trace that went through
/// that edge, with a value inside the bucket.
#[test]
fn histogram_buckets_carry_trace_exemplars() {
    let topology = Arc::new(Topology::new(
        crate::graph::topology::TopologyConfig::default(),
        crate::util::clock::Clock::new(),
    ));
    topology.ingest(&mut [
        span("front", SpanKind::Client, 1, 1, None).with_ms(3),
        span("cart", SpanKind::Server, 1, 2, Some(1)).with_ms(2),
        span("front", SpanKind::Client, 2, 1, None).with_ms(300),
        span("cart", SpanKind::Server, 2, 2, Some(1)).with_ms(250),
    ]);
    let text = exposition(topology);
    let client = |le: &str| {
        format!(
            "traces_service_graph_request_client_seconds_bucket{{client=\"front\",server=\"cart\",connection_type=\"\",le=\"{le}\"}}"
        )
    };
    let expect = [
        (
            client("0.004"),
            1,
            "01010101010101010101010101010101",
            0.003,
        ),
        (client("0.4"), 2, "02020202020202020202020202020202", 0.3),
    ];
    for (bucket, cumulative, trace, value) in expect {
        let line = text
            .lines()
            .find(|l| l.starts_with(&bucket))
            .unwrap_or_else(|| panic!("{bucket} in\n{text}"));
        let (count, exemplar) = line[bucket.len()..]
            .trim()
            .split_once(" # ")
            .unwrap_or_else(|| panic!("an exemplar on {line}"));
        assert_eq!(count, cumulative.to_string(), "{line}");
        let want = format!(
            "{{trace_id=\"{trace}\",span_id=\"{}\"}} {value} ",
            "01".repeat(8)
        );
        assert!(exemplar.starts_with(&want), "{exemplar} starts with {want}");
    }
    let plain = crate::metrics::openmetrics_to_text(&text);
    assert!(
        !plain.contains("trace_id"),
        "the text format has no exemplars"
    );
    assert!(plain.contains(&format!("{} 2\n", client("0.4"))), "{plain}");
}

#[test]
fn messaging_edges_have_the_time_in_the_broker() {
    let topology = Arc::new(Topology::new(
        crate::graph::topology::TopologyConfig::default(),
        crate::util::clock::Clock::new(),
    ));
    let producer = span("orders", SpanKind::Producer, 1, 1, None).with_ms(2);
    let mut consumer = span("billing", SpanKind::Consumer, 1, 2, Some(1));
    // 30 ms after the producer's end.
    consumer.start_unix_nano = producer.start_unix_nano + 32_000_000;
    let mut early = span("billing", SpanKind::Consumer, 2, 2, Some(1));
    early.start_unix_nano -= 1; // before its producer: clocks out of step, skipped
    topology.ingest(&mut [
        producer,
        consumer,
        span("orders", SpanKind::Producer, 2, 1, None),
        early,
    ]);
    let text = exposition(topology);
    let family = "traces_service_graph_request_messaging_system_seconds";
    let labels = "{client=\"orders\",server=\"billing\",connection_type=\"messaging_system\"}";
    assert!(
        text.contains(&format!("{family}_count{labels} 1\n")),
        "one of two pairs has a time in the broker:\n{text}"
    );
    assert!(
        text.contains(&format!("{family}_sum{labels} 0.03\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("# UNIT {family} seconds\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("traces_service_graph_request_total{labels} 2\n")),
        "both pairs are requests:\n{text}"
    );
}

#[test]
fn labels_as_the_anchors_set_them() {
    use ConnectionType as C;
    use NodeKind as K;
    let cases = [
        (
            key((K::Service, "a"), (K::Service, "b"), C::Http),
            "",
            None,
            "HTTP between services: the plain type",
        ),
        (
            key((K::Service, "a"), (K::Service, "b"), C::Grpc),
            "",
            None,
            "gRPC too: the anchors do not tell it apart",
        ),
        (
            key((K::Service, "a"), (K::Database, "orders"), C::Database),
            "database",
            None,
            "a database call",
        ),
        (
            key((K::Service, "a"), (K::Service, "b"), C::Messaging),
            "messaging_system",
            None,
            "a producer and its consumer, through a broker",
        ),
        (
            key((K::Service, "a"), (K::Messaging, "topic"), C::Messaging),
            "virtual_node",
            Some("server"),
            "a producer whose consumer never came: into the topic's node",
        ),
        (
            key((K::Messaging, "topic"), (K::Service, "b"), C::Messaging),
            "virtual_node",
            Some("client"),
            "a consumer whose producer never came: out of the topic's node",
        ),
        (
            key((K::User, "user"), (K::Service, "a"), C::Http),
            "virtual_node",
            Some("client"),
            "the user before a root span",
        ),
        (
            key((K::Service, "a"), (K::External, "cart"), C::Http),
            "virtual_node",
            Some("server"),
            "a peer that sent no spans",
        ),
    ];
    for (key, connection_type, virtual_node, why) in cases {
        let labels = SeriesLabels::of(&key, &[]);
        assert_eq!(labels.connection_type, connection_type, "{why}");
        assert_eq!(labels.virtual_node, virtual_node, "{why}");
    }
    assert_ne!(
        SeriesLabels::of(&key((K::Service, "a"), (K::Service, "cart"), C::Http), &[]),
        SeriesLabels::of(&key((K::Service, "a"), (K::External, "cart"), C::Http), &[]),
        "a real and a virtual cart are two series"
    );
}

/// Configured dimensions become `client_`/`server_` labels from each side's own values, a
/// sampled-down pair counts for its weight, and a configured attribute names the database.
#[test]
fn dimensions_weights_and_database_names() {
    let mut plan = crate::graph::dimensions::AttributePlan::default();
    let env = plan.dimension("deployment.environment");
    let cluster = super::super::DatabaseName::of("db.cluster", &mut plan);
    let config = crate::graph::topology::TopologyConfig {
        dimensions: Arc::from([env]),
        database_names: Arc::from([cluster]),
        ..Default::default()
    };
    let topology = Arc::new(Topology::new(config, crate::util::clock::Clock::new()));
    let values = |env: Option<&str>, cluster: Option<&str>| {
        let values: Vec<Option<Arc<str>>> = vec![env.map(Arc::from), cluster.map(Arc::from)];
        Some(Arc::from(values))
    };
    let mut client = span("front", SpanKind::Client, 1, 1, None);
    client.attributes = values(Some("prod"), None);
    client.weight = 10.0; // sampled at 1/10
    let mut server = span("cart", SpanKind::Server, 1, 2, Some(1));
    server.attributes = values(Some("canary"), None);
    server.weight = 10.0;
    let mut db = span("cart", SpanKind::Client, 2, 3, None);
    db.peer = Some(Box::new(crate::decode::PeerAttributes {
        db_system: Some("postgresql".into()),
        db_namespace: Some("orders".into()),
        ..Default::default()
    }));
    db.attributes = values(None, Some("pg-east"));
    topology.ingest(&mut [client, server, db]);
    let text = exposition(topology);
    let cases = [
        (
            "traces_service_graph_request_total{client=\"front\",server=\"cart\",connection_type=\"\",client_deployment_environment=\"prod\",server_deployment_environment=\"canary\"} 10\n",
            "each side's value under its prefix; one sampled pair counts for ten",
        ),
        (
            "traces_service_graph_request_server_seconds_count{client=\"front\",server=\"cart\",connection_type=\"\",client_deployment_environment=\"prod\",server_deployment_environment=\"canary\"} 10\n",
            "the histograms count the weight too",
        ),
        (
            "traces_service_graph_request_total{client=\"cart\",server=\"pg-east\",connection_type=\"database\"} 1\n",
            "the configured attribute names the database, not db.namespace; no dimension value, no label",
        ),
    ];
    for (line, why) in cases {
        assert!(text.contains(line), "{why}: {line} in\n{text}");
    }
}

#[test]
fn without_the_prefix_each_dimension_is_one_label_with_the_servers_value() {
    let mut plan = crate::graph::dimensions::AttributePlan::default();
    let env = plan.dimension("deployment.environment");
    let config = crate::graph::topology::TopologyConfig {
        dimensions: Arc::from([env]),
        client_server_prefix: false,
        ..Default::default()
    };
    let topology = Arc::new(Topology::new(config, crate::util::clock::Clock::new()));
    let values = |env: Option<&str>| {
        let values: Vec<Option<Arc<str>>> = vec![env.map(Arc::from)];
        Some(Arc::from(values))
    };
    let mut spans = Vec::new();
    // Two pairs that differ only in the client's value, one whose server has none.
    for (trace, client_env, server_env) in [
        (1, Some("prod"), Some("canary")),
        (2, Some("staging"), Some("canary")),
        (3, Some("prod"), None),
    ] {
        let mut client = span("front", SpanKind::Client, trace, 1, None);
        client.attributes = values(client_env);
        let mut server = span("cart", SpanKind::Server, trace, 2, Some(1));
        server.attributes = values(server_env);
        spans.extend([client, server]);
    }
    topology.ingest(&mut spans);
    let text = exposition(topology);
    let totals: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("traces_service_graph_request_total{"))
        .collect();
    assert_eq!(
        totals,
        [
            r#"traces_service_graph_request_total{client="front",server="cart",connection_type="",deployment_environment="canary"} 2"#,
            r#"traces_service_graph_request_total{client="front",server="cart",connection_type="",deployment_environment="prod"} 1"#,
        ],
        "the server's value, else the client's; pairs that differ only in the client's value are one series, never two with the same labels"
    );
}
