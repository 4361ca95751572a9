//! The service-graph series on `/metrics`, with the names and labels of the OpenTelemetry
//! Collector's servicegraph connector and Tempo's metrics generator, so that Grafana's
//! service-graph view reads them unchanged.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::stats::Cumulative;
use super::{ConnectionType, EdgeKey, NodeKind, Topology};

/// Encodes the topology's series at each scrape (register it with
/// [`Metrics::register_collector`](crate::metrics::Metrics::register_collector)).
#[derive(Debug, Clone)]
pub struct TopologyMetrics(pub Arc<Topology>);

impl Collector for TopologyMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        self.0.with_builder(|builder| {
            let bounds = &builder.config().histogram_buckets;
            // Edges that differ only in what the anchors do not tell apart (HTTP and gRPC between
            // the same two nodes) are one series, summed: never a duplicate series.
            let mut series: BTreeMap<SeriesLabels, SeriesTotals> = BTreeMap::new();
            for (key, edge) in &builder.edges {
                let totals = series.entry(SeriesLabels::of(key)).or_default();
                totals.requests += edge.totals.requests;
                totals.errors += edge.totals.errors;
                merge_histogram(&mut totals.server, edge.totals.server.as_deref());
                merge_histogram(&mut totals.client, edge.totals.client.as_deref());
            }

            let mut family = encoder.encode_descriptor(
                "traces_service_graph_request",
                "Requests between two nodes of the service graph",
                None,
                MetricType::Counter,
            )?;
            for (labels, totals) in &series {
                ConstCounter::new(totals.requests)
                    .encode(family.encode_family(&labels.pairs())?)?;
            }
            let mut family = encoder.encode_descriptor(
                "traces_service_graph_request_failed",
                "Failed requests between two nodes of the service graph (either side Error)",
                None,
                MetricType::Counter,
            )?;
            for (labels, totals) in &series {
                ConstCounter::new(totals.errors).encode(family.encode_family(&labels.pairs())?)?;
            }
            for (name, help, server_side) in [
                (
                    "traces_service_graph_request_server_seconds",
                    "Request latency between two nodes as the server saw it",
                    true,
                ),
                (
                    "traces_service_graph_request_client_seconds",
                    "Request latency between two nodes as the client saw it",
                    false,
                ),
            ] {
                let mut family =
                    encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
                for (labels, totals) in &series {
                    let histogram = if server_side {
                        &totals.server
                    } else {
                        &totals.client
                    };
                    if let Some(h) = histogram {
                        family
                            .encode_family(&labels.pairs())?
                            .encode_histogram::<NoLabelSet>(
                                h.sum,
                                h.count,
                                &h.buckets(bounds),
                                None,
                            )?;
                    }
                }
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
            Ok(())
        })
    }
}

/// The labels of one service-graph series, as Tempo and the servicegraph connector set them:
/// `client`, `server`, `connection_type` (`""`, `database`, `messaging_system` or
/// `virtual_node`), and, on an edge with an uninstrumented side, `virtual_node` naming that
/// side (`client` for the user before a root span, `server` for a peer that sent no spans), as
/// Tempo's `enable_virtual_node_label` does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SeriesLabels {
    client: Arc<str>,
    server: Arc<str>,
    connection_type: &'static str,
    virtual_node: Option<&'static str>,
}

impl SeriesLabels {
    fn of(key: &EdgeKey) -> Self {
        let uninstrumented = |kind| matches!(kind, NodeKind::User | NodeKind::External);
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
        }
    }

    fn pairs(&self) -> Vec<(&'static str, &str)> {
        let mut pairs = vec![
            ("client", &*self.client),
            ("server", &*self.server),
            ("connection_type", self.connection_type),
        ];
        if let Some(side) = self.virtual_node {
            pairs.push(("virtual_node", side));
        }
        pairs
    }
}

/// What the series of one label set add up to.
#[derive(Debug, Default)]
struct SeriesTotals {
    requests: u64,
    errors: u64,
    server: Option<Cumulative>,
    client: Option<Cumulative>,
}

fn merge_histogram(into: &mut Option<Cumulative>, from: Option<&Cumulative>) {
    if let Some(from) = from {
        into.get_or_insert_with(Cumulative::default).merge(from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::NodeKey;

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

    #[test]
    fn histograms_use_the_configured_buckets() {
        use crate::decode::{SpanFacts, SpanKind, SpanRef};
        let config = crate::topology::TopologyConfig {
            histogram_buckets: Arc::from([0.01, 0.1].as_slice()),
            ..Default::default()
        };
        let topology = Arc::new(Topology::new(config, crate::clock::Clock::new()));
        let span = |service: &str, kind, id: u8, parent: Option<u8>| SpanFacts {
            id: SpanRef {
                trace_id: [1; 16],
                span_id: [id; 8],
            },
            parent_span_id: parent.map(|p| [p; 8]),
            parent_is_remote: None,
            kind,
            error: false,
            duration_ns: 50_000_000,
            service: Arc::from(service),
            instance: None,
            links: Vec::new(),
            peer: None,
        };
        topology.ingest(&mut [
            span("front", SpanKind::Client, 1, None),
            span("cart", SpanKind::Server, 2, Some(1)),
        ]);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(TopologyMetrics(topology)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let bucket = |le: &str| {
            format!(
                "traces_service_graph_request_server_seconds_bucket{{le=\"{le}\",client=\"front\",server=\"cart\",connection_type=\"\"}}"
            )
        };
        for (le, count) in [("0.01", 0), ("0.1", 1), ("+Inf", 1)] {
            let line = format!("{} {count}", bucket(le));
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert!(!text.contains("le=\"0.002\""), "not the default bounds");
        assert!(
            !text.contains("le=\"inf\""),
            "+Inf is written as OpenMetrics wants it"
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
                key((K::Service, "a"), (K::Messaging, "topic"), C::Messaging),
                "messaging_system",
                None,
                "through a broker",
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
            let labels = SeriesLabels::of(&key);
            assert_eq!(labels.connection_type, connection_type, "{why}");
            assert_eq!(labels.virtual_node, virtual_node, "{why}");
        }
        assert_ne!(
            SeriesLabels::of(&key((K::Service, "a"), (K::Service, "cart"), C::Http)),
            SeriesLabels::of(&key((K::Service, "a"), (K::External, "cart"), C::Http)),
            "a real and a virtual cart are two series"
        );
    }
}
