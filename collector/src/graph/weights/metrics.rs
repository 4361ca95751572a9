//! `wayfinder_endpoint_weight{service,instance}` and the inputs behind it.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use super::WeightsEngine;
use crate::metrics::{Labels, MAX_INSTANCE_SERIES};

/// Encodes the latest weights at each scrape.
#[derive(Debug, Clone)]
pub(crate) struct WeightsMetrics(pub Arc<WeightsEngine>);

impl Collector for WeightsMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let snapshot = self.0.snapshot();
        type Pick = fn(&wayfinder_api::weights::Endpoint) -> Option<f64>;
        let series: [(&str, &str, Pick); 5] = [
            (
                "wayfinder_endpoint_weight",
                "Share of its service's traffic each instance should get",
                |e| Some(e.weight),
            ),
            (
                "wayfinder_endpoint_latency_p90_seconds",
                "p90 latency over the weight window, the rule's input",
                |e| e.latency_ms.p90.map(|ms| ms / 1e3),
            ),
            (
                "wayfinder_endpoint_latency_ewma_seconds",
                "EWMA of the mean latency, one step per update",
                |e| e.latency_ms.ewma.map(|ms| ms / 1e3),
            ),
            (
                "wayfinder_endpoint_error_rate",
                "Failed share of requests over the weight window",
                |e| Some(e.error_rate),
            ),
            (
                "wayfinder_endpoint_requests_per_second",
                "Requests per second over the weight window",
                |e| Some(e.requests_per_sec),
            ),
        ];
        for (name, help, pick) in series {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            let endpoints = snapshot.services.values().flat_map(|weights| {
                weights
                    .endpoints
                    .iter()
                    .map(move |endpoint| (weights, endpoint))
            });
            // Bounded, as every per-instance family.
            for (weights, endpoint) in endpoints.take(MAX_INSTANCE_SERIES) {
                {
                    if let Some(value) = pick(endpoint) {
                        let labels = [
                            ("service", weights.service.as_str()),
                            ("instance", endpoint.instance_id.as_str()),
                        ];
                        ConstGauge::new(value).encode(family.encode_family(&Labels(&labels))?)?;
                    }
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "wayfinder_weights_version",
            "Version of each service's weights (bumped by every change)",
            None,
            MetricType::Gauge,
        )?;
        for weights in snapshot.services.values() {
            let version = i64::try_from(weights.version).unwrap_or(i64::MAX);
            ConstGauge::new(version)
                .encode(family.encode_family(&Labels(&[("service", weights.service.as_str())]))?)?;
        }
        Ok(())
    }
}
