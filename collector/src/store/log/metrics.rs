//! The write-ahead log's series: what it wrote and synced, what failed, what it holds on disk
//! and what the last start replayed and cut.

use std::fmt;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::Wal;

/// Encodes a log's counters at each scrape.
#[derive(Debug, Clone)]
pub struct WalMetrics(pub Wal);

impl Collector for WalMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = self.0.stats();
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        for (name, help, value) in [
            (
                "wayfinder_wal_records",
                "Records (accepted requests) written to the write-ahead log",
                load(&stats.records),
            ),
            (
                "wayfinder_wal_written_bytes",
                "Bytes written to the write-ahead log, frames included",
                load(&stats.bytes),
            ),
            (
                "wayfinder_wal_syncs",
                "fdatasync calls of the write-ahead log",
                load(&stats.syncs),
            ),
            (
                "wayfinder_wal_write_errors",
                "Writes or syncs of the write-ahead log that failed (their requests were refused)",
                load(&stats.write_errors),
            ),
            (
                "wayfinder_wal_refused",
                "Appends refused because more was waiting for the disk than the log buffers",
                load(&stats.refused_full),
            ),
            (
                "wayfinder_wal_replayed_records",
                "Records replayed from the write-ahead log at start",
                load(&stats.replayed_records),
            ),
            (
                "wayfinder_wal_recovery_dropped_bytes",
                "Bytes of torn or damaged records moved out of the write-ahead log at start (to DIR/wal/damaged)",
                load(&stats.dropped_bytes),
            ),
            (
                "wayfinder_wal_recovery_dropped_records",
                "Records known lost in damage found in the write-ahead log at start",
                load(&stats.dropped_records),
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
        let family = encoder.encode_descriptor(
            "wayfinder_wal_disk_bytes",
            "Bytes of the write-ahead log's segments on disk",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::try_from(load(&stats.disk_bytes)).unwrap_or(i64::MAX))
            .encode(family)?;
        Ok(())
    }
}
