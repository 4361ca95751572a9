//! The service-graph series on `/metrics`, with the names and labels of the OpenTelemetry
//! Collector's servicegraph connector and Tempo's metrics generator, so that Grafana's
//! service-graph view reads them unchanged.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::Topology;
use super::stats::Cumulative;

/// Encodes the topology's series at each scrape (register it with
/// [`Metrics::register_collector`](crate::metrics::Metrics::register_collector)).
#[derive(Debug, Clone)]
pub struct TopologyMetrics(pub Arc<Topology>);

impl Collector for TopologyMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        self.0.with_builder(|builder| {
            let labels = |key: &super::EdgeKey| {
                [
                    ("client", key.client.name.to_string()),
                    ("server", key.server.name.to_string()),
                    ("connection_type", key.connection.as_str().to_owned()),
                ]
            };
            let mut edges: Vec<_> = builder.edges.iter().collect();
            edges.sort_by(|a, b| a.0.cmp(b.0));

            let mut family = encoder.encode_descriptor(
                "traces_service_graph_request",
                "Requests between two nodes of the service graph",
                None,
                MetricType::Counter,
            )?;
            for (key, edge) in &edges {
                let labels = labels(key);
                ConstCounter::new(edge.totals.requests).encode(family.encode_family(&labels)?)?;
            }
            let mut family = encoder.encode_descriptor(
                "traces_service_graph_request_failed",
                "Failed requests between two nodes of the service graph (either side Error)",
                None,
                MetricType::Counter,
            )?;
            for (key, edge) in &edges {
                let labels = labels(key);
                ConstCounter::new(edge.totals.errors).encode(family.encode_family(&labels)?)?;
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
                for (key, edge) in &edges {
                    let histogram: Option<&Cumulative> = if server_side {
                        edge.totals.server.as_deref()
                    } else {
                        edge.totals.client.as_deref()
                    };
                    if let Some(h) = histogram {
                        let labels = labels(key);
                        family
                            .encode_family(&labels)?
                            .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets(), None)?;
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
