//! The span-metrics series on `/metrics`, named as Tempo's metrics-generator names them
//! (`traces_spanmetrics_calls_total`, `traces_spanmetrics_latency`,
//! `traces_spanmetrics_size_total`) with its labels (`service`, `span_name`, `span_kind`,
//! `status_code`, and `status_message` when enabled), which Grafana's Tempo views query.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::{OperationKey, OperationState, SpanMetrics};
use crate::graph::dimensions::Dimension;
use crate::metrics::{Exposition, HistogramFamily, Labels, encode_count};

/// Encodes the span metrics at each scrape: register it both with
/// [`Metrics::register_collector`](crate::metrics::Metrics::register_collector) (the calls
/// counter) and [`Metrics::register_exposition`](crate::metrics::Metrics::register_exposition)
/// (the duration histogram, with exemplars).
#[derive(Debug, Clone)]
pub(crate) struct SpanMetricsExposition(pub Arc<SpanMetrics>);

/// The overflow series' only label, as the spanmetrics connector names it.
const OVERFLOW: [(&str, &str); 1] = [("otel_metric_overflow", "true")];

/// The labels of a series: the connector's four, then the configured dimensions the span had.
fn labels<'a>(key: &'a OperationKey, dimensions: &'a [Dimension]) -> Vec<(&'a str, &'a str)> {
    let mut labels = vec![
        ("service", &*key.service),
        ("span_name", &*key.name),
        ("span_kind", key.kind.otlp_name()),
        ("status_code", key.status.as_str()),
    ];
    if let Some(message) = &key.status_message {
        labels.push(("status_message", message));
    }
    for (dimension, value) in dimensions.iter().zip(&key.dimensions) {
        if let Some(value) = value {
            labels.push((&dimension.label, value));
        }
    }
    labels
}

impl SpanMetricsExposition {
    /// Every series in label order, then the overflow series.
    fn each(&self, mut f: impl FnMut(&[(&str, &str)], &OperationState)) {
        let state = self.0.state.lock();
        let mut series: Vec<(&OperationKey, &OperationState)> = state.series.iter().collect();
        series.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let dimensions = &self.0.config().dimensions;
        for (key, entry) in series {
            f(&labels(key, dimensions), entry);
        }
        if let Some(overflow) = &state.overflow {
            f(&OVERFLOW, overflow);
        }
    }
}

impl Collector for SpanMetricsExposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        type Figure = fn(&OperationState) -> f64;
        let counters: [(&str, &str, Figure); 2] = [
            (
                "traces_spanmetrics_calls",
                "Spans per service, span name, span kind and status code",
                |entry| entry.calls,
            ),
            (
                "traces_spanmetrics_size",
                "Bytes of the spans' protobuf messages per service, span name, span kind and status code",
                |entry| entry.size,
            ),
        ];
        for (name, help, figure) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            let mut result = Ok(());
            self.each(|labels, entry| {
                if result.is_ok() {
                    result = family
                        .encode_family(&Labels(labels))
                        .and_then(|encoder| encode_count(figure(entry), encoder));
                }
            });
            result?;
        }
        Ok(())
    }
}

impl Exposition for SpanMetricsExposition {
    fn encode_openmetrics(&self, out: &mut String) {
        let bounds = self.0.config().histogram_buckets.clone();
        let mut family = HistogramFamily::new(
            out,
            "traces_spanmetrics_latency",
            "Span durations per service, span name, span kind and status code",
        );
        self.each(|labels, entry| entry.duration.encode(&mut family, labels, &bounds));
    }
}
