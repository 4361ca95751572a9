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
mod tests;
