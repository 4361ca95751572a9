//! The service-graph series on `/metrics`, with the names and labels of the OpenTelemetry
//! Collector's servicegraph connector and Tempo's metrics generator, so that Grafana's
//! service-graph view reads them unchanged.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{ConnectionType, EdgeKey, NodeKind, Topology};
use crate::metrics::{Cumulative, Exposition, HistogramFamily, Labels, encode_count};

/// Encodes the topology's series at each scrape: register it both with
/// [`Metrics::register_collector`](crate::metrics::Metrics::register_collector) (counters)
/// and [`Metrics::register_exposition`](crate::metrics::Metrics::register_exposition)
/// (histograms with exemplars).
#[derive(Debug, Clone)]
pub(crate) struct TopologyMetrics(pub Arc<Topology>);

/// The service-graph series, one per label set: edges that differ only in what the anchors do
/// not tell apart (HTTP and gRPC between the same two nodes) are one series, summed, never a
/// duplicate series.
fn series_of(graph: &super::Graph, prefixed: bool) -> BTreeMap<SeriesLabels, SeriesTotals> {
    let mut series: BTreeMap<SeriesLabels, SeriesTotals> = BTreeMap::new();
    for (key, edge) in &graph.edges {
        for (dimensions, from) in &edge.totals {
            let labels = if prefixed {
                SeriesLabels::of(key, dimensions)
            } else {
                SeriesLabels::of(key, &unprefixed(dimensions))
            };
            let totals = series.entry(labels).or_default();
            totals.requests += from.requests;
            totals.errors += from.errors;
            merge_histogram(&mut totals.server, from.server.as_deref());
            merge_histogram(&mut totals.client, from.client.as_deref());
            merge_histogram(&mut totals.messaging, from.messaging.as_deref());
        }
    }
    series
}

/// An edge's dimension values (each on the client side, then each on the server side) as one
/// value per dimension: the server span's, else the client's. Series that differ only in the
/// other side's values become one.
fn unprefixed(dimensions: &[Option<Arc<str>>]) -> Vec<Option<Arc<str>>> {
    let (client, server) = dimensions.split_at(dimensions.len() / 2);
    client
        .iter()
        .zip(server)
        .map(|(client, server)| server.clone().or_else(|| client.clone()))
        .collect()
}

/// The names of the extra labels: `client_<name>` for each dimension, then `server_<name>`;
/// without the prefix, `<name>` once for each.
fn dimension_labels(builder: &super::TopologyBuilder) -> Vec<String> {
    let config = builder.config();
    let dimensions = &config.dimensions;
    if !config.client_server_prefix {
        return dimensions.iter().map(|d| d.label.clone()).collect();
    }
    let side = |side: &'static str| {
        dimensions
            .iter()
            .map(move |d| format!("{side}_{}", d.label))
    };
    side("client").chain(side("server")).collect()
}

impl Exposition for TopologyMetrics {
    /// The latency histograms, with trace exemplars (which prometheus-client's collectors
    /// cannot carry).
    fn encode_openmetrics(&self, out: &mut String) {
        self.0.with_builder(|builder| {
            let bounds = &builder.config().histogram_buckets;
            let series = series_of(builder.graph(), builder.config().client_server_prefix);
            let names = dimension_labels(builder);
            type Side = fn(&SeriesTotals) -> &Option<Cumulative>;
            let histograms: [(&str, &str, Side); 3] = [
                (
                    "traces_service_graph_request_server_seconds",
                    "Request latency between two nodes as the server saw it",
                    |t| &t.server,
                ),
                (
                    "traces_service_graph_request_client_seconds",
                    "Request latency between two nodes as the client saw it",
                    |t| &t.client,
                ),
                (
                    "traces_service_graph_request_messaging_system_seconds",
                    "Time from the producer span's end to the consumer span's start on messaging edges",
                    |t| &t.messaging,
                ),
            ];
            for (name, help, side) in histograms {
                let mut family = HistogramFamily::new(out, name, help);
                for (labels, totals) in &series {
                    if let Some(histogram) = side(totals) {
                        histogram.encode(&mut family, &labels.pairs(&names), bounds);
                    }
                }
            }
        });
    }
}

impl Collector for TopologyMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        self.0.with_builder(|builder| {
            let series = series_of(builder.graph(), builder.config().client_server_prefix);
            let names = dimension_labels(builder);
            let mut family = encoder.encode_descriptor(
                "traces_service_graph_request",
                "Requests between two nodes of the service graph",
                None,
                MetricType::Counter,
            )?;
            for (labels, totals) in &series {
                encode_count(
                    totals.requests,
                    family.encode_family(&Labels(&labels.pairs(&names)))?,
                )?;
            }
            let mut family = encoder.encode_descriptor(
                "traces_service_graph_request_failed",
                "Failed requests between two nodes of the service graph (either side Error)",
                None,
                MetricType::Counter,
            )?;
            for (labels, totals) in &series {
                encode_count(totals.errors, family.encode_family(&Labels(&labels.pairs(&names)))?)?;
            }

            let counters = builder.counters();
            let mut family = encoder.encode_descriptor(
                "wayfinder_topology_unpaired_spans",
                "Client or server spans whose other half never came and that name no peer",
                None,
                MetricType::Counter,
            )?;
            for (side, count) in [
                ("client", counters.unpaired_client),
                ("server", counters.unpaired_server),
            ] {
                ConstCounter::new(count).encode(family.encode_family(&[("side", side)])?)?;
            }
            let simple = [
                (
                    "wayfinder_topology_paired_spans",
                    "Client/server span pairs made into edges",
                    counters.paired,
                ),
                (
                    "wayfinder_topology_virtual_edge_requests",
                    "Requests recorded on edges to or from virtual nodes",
                    counters.virtual_edges,
                ),
                (
                    "wayfinder_topology_evicted_halves",
                    "Halves expired early because --edge-max-pending was reached",
                    counters.evicted,
                ),
                (
                    "wayfinder_topology_dropped_series_observations",
                    "Observations not tracked because the series limit was reached",
                    counters.series_dropped,
                ),
                (
                    "wayfinder_topology_evicted_series",
                    "Series (edges, nodes, instances) evicted with the oldest minutes to keep within --topology-max-bytes",
                    counters.series_evicted,
                ),
            ];
            for (name, help, value) in simple {
                let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                ConstCounter::new(value).encode(family)?;
            }
            let family = encoder.encode_descriptor(
                "wayfinder_topology_pending_halves",
                "Halves of edges waiting for their other half",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(builder.pending() as i64).encode(family)?;
            let family = encoder.encode_descriptor(
                "wayfinder_topology_bytes",
                "Estimated memory of the service graph's figures at the last budget check (every 5 s)",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(builder.graph_bytes() as i64).encode(family)?;
            Ok(())
        })
    }
}

/// The labels of one service-graph series, as Tempo and the servicegraph connector set them:
/// `client`, `server`, `connection_type` (`""`, `database`, `messaging_system` or
/// `virtual_node`), and, on an edge with an uninstrumented side, `virtual_node` naming that
/// side (`client` for the user before a root span, `server` for a peer that sent no spans), as
/// Tempo's `enable_virtual_node_label` does; then the configured dimensions that the spans
/// had, `client_<name>` and `server_<name>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SeriesLabels {
    client: Arc<str>,
    server: Arc<str>,
    connection_type: &'static str,
    virtual_node: Option<&'static str>,
    dimensions: Box<[Option<Arc<str>>]>,
}

impl SeriesLabels {
    fn of(key: &EdgeKey, dimensions: &[Option<Arc<str>>]) -> Self {
        // A topic node exists only for a half whose other side never came.
        let uninstrumented = |kind| {
            matches!(
                kind,
                NodeKind::User | NodeKind::External | NodeKind::Messaging
            )
        };
        let virtual_node = if uninstrumented(key.client.kind) {
            Some("client")
        } else if uninstrumented(key.server.kind) {
            Some("server")
        } else {
            None
        };
        let connection_type = match (virtual_node, key.connection) {
            (Some(_), _) => "virtual_node",
            (None, ConnectionType::Database) => "database",
            (None, ConnectionType::Messaging) => "messaging_system",
            (None, ConnectionType::Http | ConnectionType::Grpc | ConnectionType::Other) => "",
        };
        Self {
            client: key.client.name.clone(),
            server: key.server.name.clone(),
            connection_type,
            virtual_node,
            dimensions: dimensions.into(),
        }
    }

    /// The label pairs, with `names` the extra labels' names (one per dimension value).
    fn pairs<'a>(&'a self, names: &'a [String]) -> Vec<(&'a str, &'a str)> {
        let mut pairs = vec![
            ("client", &*self.client),
            ("server", &*self.server),
            ("connection_type", self.connection_type),
        ];
        if let Some(side) = self.virtual_node {
            pairs.push(("virtual_node", side));
        }
        for (name, value) in names.iter().zip(&self.dimensions) {
            if let Some(value) = value {
                pairs.push((name, value));
            }
        }
        pairs
    }
}

/// What the series of one label set add up to.
#[derive(Debug, Default)]
struct SeriesTotals {
    requests: f64,
    errors: f64,
    server: Option<Cumulative>,
    client: Option<Cumulative>,
    messaging: Option<Cumulative>,
}

fn merge_histogram(into: &mut Option<Cumulative>, from: Option<&Cumulative>) {
    if let Some(from) = from {
        into.get_or_insert_with(Cumulative::default).merge(from);
    }
}

#[cfg(test)]
mod tests {
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

    fn key(
        client: (NodeKind, &str),
        server: (NodeKind, &str),
        connection: ConnectionType,
    ) -> EdgeKey {
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
}
