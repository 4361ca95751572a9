//! The collector's own figures, served as Prometheus text on `GET /metrics`.

mod cumulative;
mod labels;
mod log_every;
mod openmetrics;

pub(crate) use cumulative::Cumulative;
pub(crate) use labels::{Labels, escape_value};
pub(crate) use log_every::LogEvery;
pub(crate) use openmetrics::{Exemplar, Exposition, HistogramFamily, openmetrics_to_text};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Encodes a counter whose value is a count of spans or their weights (sampled spans stand for
/// several): whole values as integers, as Prometheus clients write counts, others as floats.
pub(crate) fn encode_count(
    value: f64,
    encoder: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric as _;
    use prometheus_client::metrics::counter::ConstCounter;
    if value.fract() == 0.0 && (0.0..9_007_199_254_740_992.0).contains(&value) {
        ConstCounter::new(value as u64).encode(encoder)
    } else {
        ConstCounter::new(value).encode(encoder)
    }
}

/// Labels with the receiving protocol: `grpc`, `http/protobuf` or `http/json`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// The protocol.
    pub protocol: &'static str,
}

/// Labels of a refusal: the protocol and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The protocol.
    pub protocol: &'static str,
    /// Why, e.g. `invalid_trace_id`, `queue_full`, `malformed`, `too_large`.
    pub reason: &'static str,
}

/// Labels with a listener: `otlp-grpc`, `otlp-http`, `query-http`, `query-grpc`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// The listener.
    pub listener: &'static str,
}

/// Labels of a connection closed for doing nothing: its listener and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdleClosedLabels {
    /// The listener.
    pub listener: &'static str,
    /// `never_started`, `idle` or `evicted`.
    pub reason: &'static str,
}

/// Labels with a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: &'static str,
}

/// Labels with an outcome: `ok` or an error class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The outcome.
    pub outcome: &'static str,
}

/// The most instances a per-instance family lists (`wayfinder_instance_health`, the endpoint
/// weights): past them a scrape would grow with whatever a stranger registers.
pub(crate) const MAX_INSTANCE_SERIES: usize = 10_000;

/// How long one exposition is handed to later scrapes ([`Metrics::encode_shared`]).
pub(crate) const METRICS_REUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Every metric of the collector, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Collectors of other stages (topology, registry), encoded at each scrape.
    collectors: parking_lot::Mutex<Registry>,
    /// Families other stages write themselves (histograms with exemplars), at each scrape.
    expositions: parking_lot::Mutex<Vec<Box<dyn Exposition>>>,
    /// The expositions handed out by [`Metrics::encode_shared`], by reuse period.
    encoded: crate::util::reuse::Reuse<std::time::Duration, crate::util::reuse::SharedBody>,
    /// The same in the Prometheus text format ([`Metrics::encode_shared_text`]).
    encoded_text: crate::util::reuse::Reuse<std::time::Duration, crate::util::reuse::SharedBody>,
    /// Spans accepted, per protocol.
    pub accepted_spans: Family<ProtocolLabels, Counter>,
    /// Spans refused, per protocol and reason (invalid spans and whole refused requests).
    pub refused_spans: Family<RefusalLabels, Counter>,
    /// Requests refused as a whole, per protocol and reason.
    pub refused_requests: Family<RefusalLabels, Counter>,
    /// Log records accepted (and, for now, not stored), per protocol.
    pub accepted_log_records: Family<ProtocolLabels, Counter>,
    /// Valid health events received, per protocol.
    pub health_events: Family<ProtocolLabels, Counter>,
    /// Invalid health events refused, per protocol.
    pub refused_health_events: Family<ProtocolLabels, Counter>,
    /// Bytes waiting in the ingest queue.
    pub ingest_queue_bytes: Gauge,
    /// The ingest queue's budget.
    pub ingest_queue_capacity_bytes: Gauge,
    /// Spans in the store.
    pub store_rows: Gauge,
    /// Memory the store's batches hold.
    pub store_bytes: Gauge,
    /// Batches in the store.
    pub store_batches: Gauge,
    /// Spans evicted from the store, per reason (`age`, `size`).
    pub store_evicted_spans: Family<ReasonLabels, Counter>,
    /// Spans written out of memory as Parquet.
    pub sealed_spans: Counter,
    /// Seals that failed (and were retried).
    pub seal_failures: Counter,
    /// Sealed files deleted past the retention.
    pub expired_files: Counter,
    /// Sealed files kept.
    pub sealed_files: Gauge,
    /// Bytes of the sealed files kept.
    pub sealed_bytes: Gauge,
    /// SQL queries, per outcome.
    pub sql_queries: Family<OutcomeLabels, Counter>,
    /// SQL query durations.
    pub sql_query_duration: Histogram,
    /// Connections closed beyond `--max-connections`, per listener.
    pub refused_connections: Family<ListenerLabels, Counter>,
    /// Connections closed for doing nothing, per listener and reason.
    pub closed_idle_connections: Family<IdleClosedLabels, Counter>,
    /// Weight watchers (gRPC `Watch`, HTTP long-polls) refused beyond `--max-watchers`.
    pub refused_watchers: Counter,
    /// Requests refused for a missing or invalid bearer token, per listener.
    pub unauthorized: Family<ListenerLabels, Counter>,
    /// Connections closed because they sent no first byte, or did not finish their TLS
    /// handshake, within `--header-read-timeout`, per listener.
    pub slow_connections: Family<ListenerLabels, Counter>,
    /// TLS handshakes that failed (a missing or untrusted client certificate, a plaintext
    /// client on a TLS listener), per listener.
    pub tls_handshake_failures: Family<ListenerLabels, Counter>,
    /// Configuration reloads, per outcome (`applied`, `unchanged`, `rejected`).
    pub config_reloads: Family<OutcomeLabels, Counter>,
    /// When each cap's log line may be written next (at most once a minute each).
    pub cap_logs: CapLogs,
}

/// The throttles of the log lines that say a cap was reached: the counts are in the metrics
/// above, the line says once a minute that they moved.
#[derive(Debug, Default)]
pub struct CapLogs {
    /// Requests refused retryably (the ingest queue, the store, the write-ahead log).
    pub refused_requests: LogEvery,
    /// SQL queries refused or stopped by a limit (busy, timeout, memory).
    pub sql_limits: LogEvery,
    /// Spans evicted from memory by `--max-store-bytes`.
    pub store_size: LogEvery,
    /// Seals that failed (a full disk, an unreachable bucket): tried again every second.
    pub seal_failures: LogEvery,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            encoded: crate::util::reuse::Reuse::new(METRICS_REUSE),
            encoded_text: crate::util::reuse::Reuse::new(METRICS_REUSE),
            accepted_spans: Family::default(),
            refused_spans: Family::default(),
            refused_requests: Family::default(),
            accepted_log_records: Family::default(),
            health_events: Family::default(),
            refused_health_events: Family::default(),
            ingest_queue_bytes: Gauge::default(),
            ingest_queue_capacity_bytes: Gauge::default(),
            store_rows: Gauge::default(),
            store_bytes: Gauge::default(),
            store_batches: Gauge::default(),
            store_evicted_spans: Family::default(),
            sealed_spans: Counter::default(),
            seal_failures: Counter::default(),
            expired_files: Counter::default(),
            sealed_files: Gauge::default(),
            sealed_bytes: Gauge::default(),
            sql_queries: Family::default(),
            sql_query_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            unauthorized: Family::default(),
            slow_connections: Family::default(),
            tls_handshake_failures: Family::default(),
            config_reloads: Family::default(),
            cap_logs: CapLogs::default(),
            refused_watchers: Counter::default(),
            refused_connections: Family::default(),
            closed_idle_connections: Family::default(),
            registry: Registry::default(),
            collectors: parking_lot::Mutex::new(Registry::default()),
            expositions: parking_lot::Mutex::new(Vec::new()),
        };
        registry.register(
            "wayfinder_receiver_accepted_spans",
            "Spans accepted by the receivers",
            m.accepted_spans.clone(),
        );
        registry.register(
            "wayfinder_receiver_refused_spans",
            "Spans refused by the receivers, per reason",
            m.refused_spans.clone(),
        );
        registry.register(
            "wayfinder_receiver_refused_requests",
            "Requests refused as a whole by the receivers, per reason",
            m.refused_requests.clone(),
        );
        registry.register(
            "wayfinder_receiver_accepted_log_records",
            "Log records other than health events accepted by the receivers (counted, not stored)",
            m.accepted_log_records.clone(),
        );
        registry.register(
            "wayfinder_receiver_health_events",
            "Valid health events received",
            m.health_events.clone(),
        );
        registry.register(
            "wayfinder_receiver_refused_health_events",
            "Invalid health events refused",
            m.refused_health_events.clone(),
        );
        registry.register(
            "wayfinder_ingest_queue_bytes",
            "Bytes waiting in the ingest queue",
            m.ingest_queue_bytes.clone(),
        );
        registry.register(
            "wayfinder_ingest_queue_capacity_bytes",
            "Memory budget of the ingest queue",
            m.ingest_queue_capacity_bytes.clone(),
        );
        registry.register(
            "wayfinder_store_spans",
            "Spans held in the span store",
            m.store_rows.clone(),
        );
        registry.register(
            "wayfinder_store_bytes",
            "Memory held by the span store's Arrow batches",
            m.store_bytes.clone(),
        );
        registry.register(
            "wayfinder_store_batches",
            "Arrow batches held in the span store",
            m.store_batches.clone(),
        );
        registry.register(
            "wayfinder_store_evicted_spans",
            "Spans evicted from the span store, per reason (age, size)",
            m.store_evicted_spans.clone(),
        );
        registry.register(
            "wayfinder_sealed_spans",
            "Spans written out of memory as Parquet files",
            m.sealed_spans.clone(),
        );
        registry.register(
            "wayfinder_seal_failures",
            "Seals to Parquet that failed (the spans stay in memory and are sealed later)",
            m.seal_failures.clone(),
        );
        registry.register(
            "wayfinder_expired_files",
            "Sealed Parquet files deleted past the retention",
            m.expired_files.clone(),
        );
        registry.register(
            "wayfinder_sealed_files",
            "Sealed Parquet files kept",
            m.sealed_files.clone(),
        );
        registry.register(
            "wayfinder_sealed_bytes",
            "Bytes of the sealed Parquet files kept",
            m.sealed_bytes.clone(),
        );
        registry.register(
            "wayfinder_sql_queries",
            "SQL queries, per outcome",
            m.sql_queries.clone(),
        );
        registry.register(
            "wayfinder_sql_query_duration_seconds",
            "SQL query durations",
            m.sql_query_duration.clone(),
        );
        registry.register(
            "wayfinder_refused_connections",
            "Connections closed at once because the listener held --max-connections, per listener",
            m.refused_connections.clone(),
        );
        registry.register(
            "wayfinder_closed_idle_connections",
            "Connections closed for doing nothing, per listener and reason: never_started (no request within --header-read-timeout), idle (nothing open for --idle-timeout), evicted (idle while the listener was full), stalled (an answer not taken for --idle-timeout)",
            m.closed_idle_connections.clone(),
        );
        registry.register(
            "wayfinder_refused_watchers",
            "Weight watchers (gRPC Watch, HTTP long-polls) refused beyond --max-watchers",
            m.refused_watchers.clone(),
        );
        registry.register(
            "wayfinder_unauthorized_requests",
            "Requests refused for a missing or invalid bearer token, per listener",
            m.unauthorized.clone(),
        );
        registry.register(
            "wayfinder_slow_connections",
            "Connections closed because they sent nothing, or did not finish their TLS handshake, within --header-read-timeout, per listener",
            m.slow_connections.clone(),
        );
        registry.register(
            "wayfinder_tls_handshake_failures",
            "TLS handshakes that failed (a missing or untrusted client certificate, a plaintext client on a TLS listener), per listener",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "wayfinder_config_reloads",
            "Configuration reloads (SIGHUP or a changed file), per outcome: applied, unchanged, rejected",
            m.config_reloads.clone(),
        );
        Self { registry, ..m }
    }

    /// Registers a metric that the part it belongs to created and counts.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.collectors.lock().register(name, help, metric);
    }

    /// Adds a collector whose series are encoded at each scrape, after the collector's own.
    pub fn register_collector(&self, collector: Box<dyn prometheus_client::collector::Collector>) {
        self.collectors.lock().register_collector(collector);
    }

    /// Adds families written by hand at each scrape, after the collectors'.
    pub fn register_exposition(&self, exposition: Box<dyn Exposition>) {
        self.expositions.lock().push(exposition);
    }

    /// The OpenMetrics exposition of every metric.
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text;
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = text::encode_registry(&mut out, &self.registry);
        let _ = text::encode_registry(&mut out, &self.collectors.lock());
        for exposition in self.expositions.lock().iter() {
            exposition.encode_openmetrics(&mut out);
        }
        let _ = text::encode_eof(&mut out);
        out
    }

    /// [`Metrics::encode`], or the exposition made less than [`METRICS_REUSE`] ago: scrapers
    /// in a loop cost one encoding (which walks every series of the service graph) a second,
    /// on one thread at a time.
    pub fn encode_shared(&self) -> crate::util::reuse::SharedBody {
        self.encoded.get_or_make(&METRICS_REUSE, || {
            crate::util::reuse::SharedBody::new(bytes::Bytes::from(self.encode()))
        })
    }

    /// [`Metrics::encode_shared`] in the Prometheus text format (version 0.0.4), for scrapers
    /// that do not ask for OpenMetrics (`promtool`, curl, older agents), shared the same way.
    pub fn encode_shared_text(&self) -> crate::util::reuse::SharedBody {
        self.encoded_text.get_or_make(&METRICS_REUSE, || {
            let openmetrics = self.encode_shared();
            let text = String::from_utf8_lossy(openmetrics.plain());
            crate::util::reuse::SharedBody::new(bytes::Bytes::from(openmetrics_to_text(&text)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_within_the_reuse_period_share_one_exposition() {
        let metrics = Metrics::new();
        let labels = ProtocolLabels { protocol: "grpc" };
        metrics.accepted_spans.get_or_create(&labels).inc_by(1);
        let first = metrics.encode_shared().plain().clone();
        metrics.accepted_spans.get_or_create(&labels).inc_by(41);
        let again = metrics.encode_shared().plain().clone();
        assert_eq!(first, again, "the same text within the second");
        let line = |text: &[u8]| {
            String::from_utf8_lossy(text)
                .lines()
                .find(|l| l.starts_with("wayfinder_receiver_accepted_spans_total{"))
                .map(str::to_owned)
        };
        assert!(line(&first).unwrap().ends_with(" 1"), "{:?}", line(&first));
        let fresh = metrics.encode();
        assert!(line(fresh.as_bytes()).unwrap().ends_with(" 42"), "{fresh}");
    }
}
