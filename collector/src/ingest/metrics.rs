//! The receivers' figures: spans, log records and health events accepted or refused, per
//! protocol, and the throttle of the line that says requests are being refused.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::{LogEvery, Metrics};

/// Labels with the receiving protocol: `grpc`, `http/protobuf` or `http/json`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ProtocolLabels {
    /// The protocol.
    pub(crate) protocol: &'static str,
}

/// Labels of a refusal: the protocol and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusalLabels {
    /// The protocol.
    pub(crate) protocol: &'static str,
    /// Why, e.g. `invalid_trace_id`, `queue_full`, `malformed`, `too_large`.
    pub(crate) reason: &'static str,
}

/// What the receivers count, registered once by [`IngestMetrics::register`].
#[derive(Debug)]
pub(crate) struct IngestMetrics {
    /// Spans accepted, per protocol.
    pub(crate) accepted_spans: Family<ProtocolLabels, Counter>,
    /// Spans refused, per protocol and reason (invalid spans and whole refused requests).
    pub(crate) refused_spans: Family<RefusalLabels, Counter>,
    /// Requests refused as a whole, per protocol and reason.
    pub(crate) refused_requests: Family<RefusalLabels, Counter>,
    /// Log records accepted (and, for now, not stored), per protocol.
    pub(crate) accepted_log_records: Family<ProtocolLabels, Counter>,
    /// Valid health events received, per protocol.
    pub(crate) health_events: Family<ProtocolLabels, Counter>,
    /// Invalid health events refused, per protocol.
    pub(crate) refused_health_events: Family<ProtocolLabels, Counter>,
    /// When the line that says requests are refused retryably may be written next.
    pub(crate) refusal_log: LogEvery,
}

impl IngestMetrics {
    /// Creates the receivers' families and registers them in `metrics`.
    pub(crate) fn register(metrics: &Metrics) -> Self {
        let m = Self {
            accepted_spans: Family::default(),
            refused_spans: Family::default(),
            refused_requests: Family::default(),
            accepted_log_records: Family::default(),
            health_events: Family::default(),
            refused_health_events: Family::default(),
            refusal_log: LogEvery::default(),
        };
        metrics.register(
            "wayfinder_receiver_accepted_spans",
            "Spans accepted by the receivers",
            m.accepted_spans.clone(),
        );
        metrics.register(
            "wayfinder_receiver_refused_spans",
            "Spans refused by the receivers, per reason",
            m.refused_spans.clone(),
        );
        metrics.register(
            "wayfinder_receiver_refused_requests",
            "Requests refused as a whole by the receivers, per reason",
            m.refused_requests.clone(),
        );
        metrics.register(
            "wayfinder_receiver_accepted_log_records",
            "Log records other than health events accepted by the receivers (counted, not stored)",
            m.accepted_log_records.clone(),
        );
        metrics.register(
            "wayfinder_receiver_health_events",
            "Valid health events received",
            m.health_events.clone(),
        );
        metrics.register(
            "wayfinder_receiver_refused_health_events",
            "Invalid health events refused",
            m.refused_health_events.clone(),
        );
        m
    }
}
