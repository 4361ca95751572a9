//! The store's figures: what memory holds (read from the store at each scrape), what was
//! evicted, sealed to Parquet and expired, and the throttles of the lines that say so.

use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;

use super::Inner;
use crate::metrics::{LogEvery, Metrics};

/// Labels of an eviction: `age` (the retention) or `size` (`--max-store-bytes`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EvictionLabels {
    /// Why.
    pub(crate) reason: &'static str,
}

/// What the store counts, registered once by [`StoreMetrics::register`].
#[derive(Debug)]
pub(crate) struct StoreMetrics {
    /// Spans evicted from the store, per reason.
    pub(crate) evicted_spans: Family<EvictionLabels, Counter>,
    /// Spans written out of memory as Parquet.
    pub(crate) sealed_spans: Counter,
    /// Seals that failed (and were retried).
    pub(crate) seal_failures: Counter,
    /// Sealed files deleted past the retention.
    pub(crate) expired_files: Counter,
    /// Fleet mode: spans dropped at a seal because the seal held the same span already.
    pub(crate) duplicate_spans: Counter,
    /// When the line that says the budget evicted spans may be written next.
    pub(crate) size_log: LogEvery,
    /// When the line that says a seal failed may be written next (tried every second).
    pub(crate) seal_failure_log: LogEvery,
}

impl StoreMetrics {
    /// Creates the store's counters and registers them in `metrics`, with the gauges read
    /// from `inner` at each scrape.
    pub(super) fn register(metrics: &Metrics, inner: &Arc<RwLock<Inner>>) -> Self {
        let m = Self {
            evicted_spans: Family::default(),
            sealed_spans: Counter::default(),
            seal_failures: Counter::default(),
            expired_files: Counter::default(),
            duplicate_spans: Counter::default(),
            size_log: LogEvery::default(),
            seal_failure_log: LogEvery::default(),
        };
        metrics.register(
            "wayfinder_store_evicted_spans",
            "Spans evicted from the span store, per reason (age, size)",
            m.evicted_spans.clone(),
        );
        metrics.register(
            "wayfinder_sealed_spans",
            "Spans written out of memory as Parquet files",
            m.sealed_spans.clone(),
        );
        metrics.register(
            "wayfinder_seal_failures",
            "Seals to Parquet that failed (the spans stay in memory and are sealed later)",
            m.seal_failures.clone(),
        );
        metrics.register(
            "wayfinder_expired_files",
            "Sealed Parquet files deleted past the retention",
            m.expired_files.clone(),
        );
        metrics.register(
            "wayfinder_store_duplicate_spans",
            "Fleet mode: spans not sealed because the same span (trace and span id) of the same partition was in the seal already (an exporter's retry, a partition read twice)",
            m.duplicate_spans.clone(),
        );
        metrics.register_collector(Box::new(StoreGauges(inner.clone())));
        m
    }
}

/// The store's gauges, read under its lock at each scrape.
#[derive(Debug)]
struct StoreGauges(Arc<RwLock<Inner>>);

impl Collector for StoreGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let gauges = {
            let inner = self.0.read();
            [
                (
                    "wayfinder_store_spans",
                    "Spans held in the span store",
                    inner.rows as u64,
                ),
                (
                    "wayfinder_store_bytes",
                    "Memory held by the span store's Arrow batches",
                    inner.bytes as u64,
                ),
                (
                    "wayfinder_store_batches",
                    "Arrow batches held in the span store",
                    inner.batches as u64,
                ),
                (
                    "wayfinder_sealed_files",
                    "Sealed Parquet files kept",
                    inner.files.len() as u64,
                ),
                (
                    "wayfinder_sealed_bytes",
                    "Bytes of the sealed Parquet files kept",
                    inner.files.iter().map(|f| f.size).sum(),
                ),
            ]
        };
        for (name, help, value) in gauges {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(family)?;
        }
        Ok(())
    }
}
