//! The SQL engine's figures: queries per outcome, their durations, and the throttle of the
//! line that says a query met a limit.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::metrics::{LogEvery, Metrics, OutcomeLabels};

/// What the engine counts, registered once by [`SqlMetrics::register`].
#[derive(Debug)]
pub(super) struct SqlMetrics {
    /// SQL queries, per outcome (`ok`, `busy`, `timeout`, …).
    pub(super) queries: Family<OutcomeLabels, Counter>,
    /// SQL query durations.
    pub(super) duration: Histogram,
    /// When the line that says a query met a limit may be written next.
    pub(super) limit_log: LogEvery,
}

impl SqlMetrics {
    /// Creates the engine's families and registers them in `metrics`.
    pub(super) fn register(metrics: &Metrics) -> Self {
        let m = Self {
            queries: Family::default(),
            // 0.5 ms to about 66 s.
            duration: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            limit_log: LogEvery::default(),
        };
        metrics.register(
            "wayfinder_sql_queries",
            "SQL queries, per outcome",
            m.queries.clone(),
        );
        metrics.register(
            "wayfinder_sql_query_duration_seconds",
            "SQL query durations",
            m.duration.clone(),
        );
        m
    }
}
