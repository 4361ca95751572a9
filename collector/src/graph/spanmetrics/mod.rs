//! Span metrics: calls, errors, a latency histogram and span bytes per service, span name, span
//! kind and status code (and status message, when asked), as Tempo's metrics-generator and the
//! OpenTelemetry Collector's `spanmetrics` connector make them from the same spans, for
//! `/metrics` (`traces_spanmetrics_calls_total`, `traces_spanmetrics_latency`,
//! `traces_spanmetrics_size_total`), `GET /api/v1/operations` and Jaeger's metrics API.
//!
//! At most `max_series` combinations are tracked; the spans of any further one are counted in
//! one overflow series (`otel_metric_overflow="true"`, as the connector names it), never
//! dropped and never a new series.
//!
//! (Its example runs as the unit test `examples::example`.)

mod metrics;
mod settings;
mod timeline;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hashbrown::HashMap;
use parking_lot::Mutex;

pub(crate) use metrics::SpanMetricsExposition;
pub use settings::SpanMetricsSettings;
pub(crate) use timeline::{MAX_SERIES_MINUTES, Minute, Selection, Timeline};

use crate::decode::{SpanFacts, SpanKind};
use crate::graph::dimensions::Dimension;
use crate::graph::topology::stats::{
    BUCKET_SECONDS, HISTOGRAM_BOUNDS, Observation, Series, Summary,
};
use crate::metrics::Cumulative;
use crate::util::clock::{Clock, unix_seconds};

/// How span metrics are bounded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SpanMetricsConfig {
    /// Combinations of service, span name, kind and status tracked at most; the spans of any
    /// further one go to the overflow series.
    pub max_series: usize,
    /// Upper bounds of the duration histogram, in seconds, ascending (default the spanmetrics
    /// connector's, which are the servicegraph connector's too).
    pub histogram_buckets: Arc<[f64]>,
    /// How long per-minute figures are kept: the longest window `operations` can be asked for.
    pub retention: Duration,
    /// Extra labels, from span (else resource) attributes (`--span-metrics-dimensions`), as
    /// the connector's `dimensions`; a span without one has no such label.
    pub dimensions: Arc<[Dimension]>,
    /// Whether the status message is a label (`status_message`, Tempo's opt-in intrinsic
    /// dimension).
    pub status_message: bool,
}

impl Default for SpanMetricsConfig {
    fn default() -> Self {
        Self {
            max_series: 10_000,
            histogram_buckets: Arc::from(HISTOGRAM_BOUNDS.as_slice()),
            retention: Duration::from_secs(3600),
            dimensions: Arc::from([]),
            status_message: false,
        }
    }
}

/// A span's status code, as the connector's `status.code` dimension has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum StatusCode {
    /// Not set.
    Unset,
    /// Set to Ok by the service.
    Ok,
    /// Error.
    Error,
}

impl StatusCode {
    fn of(span: &SpanFacts) -> Self {
        match (span.error, span.status_ok) {
            (true, _) => Self::Error,
            (false, true) => Self::Ok,
            (false, false) => Self::Unset,
        }
    }

    /// The label value (`STATUS_CODE_UNSET`, `STATUS_CODE_OK`, `STATUS_CODE_ERROR`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Unset => "STATUS_CODE_UNSET",
            Self::Ok => "STATUS_CODE_OK",
            Self::Error => "STATUS_CODE_ERROR",
        }
    }
}

/// The dimensions of one series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct OperationKey {
    /// `service.name`.
    pub service: Arc<str>,
    /// The span name.
    pub name: Arc<str>,
    /// The span kind.
    pub kind: SpanKind,
    /// The status code.
    pub status: StatusCode,
    /// The status message, when it is a label and the span has one.
    pub status_message: Option<Arc<str>>,
    /// The values of the configured dimensions (empty when none are).
    pub dimensions: Box<[Option<Arc<str>>]>,
}

/// The figures of one series.
#[derive(Debug, Default)]
pub(crate) struct OperationState {
    /// Per minute, for windows.
    pub(crate) series: Series,
    /// Calls since start, each span counted for its weight.
    pub(crate) calls: f64,
    /// Durations since start.
    pub(crate) duration: Cumulative,
    /// Bytes of the spans' protobuf messages since start (not weighted: Tempo counts the bytes
    /// it received).
    pub(crate) size: f64,
}

impl OperationState {
    fn record(&mut self, span: &SpanFacts, minute: u64, now: f64, bounds: &[f64]) {
        let observation = Observation {
            error: span.error,
            server_ns: Some(span.duration_ns),
            ..Observation::default()
        };
        self.series.record(minute, observation);
        self.calls += span.weight;
        self.size += span.size as f64;
        self.duration
            .record(bounds, span.duration_ns, span.weight, Some((span.id, now)));
    }
}

/// What the stage holds.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) series: HashMap<OperationKey, OperationState>,
    /// The spans of combinations past `max_series`.
    pub(crate) overflow: Option<OperationState>,
    pruned_minute: u64,
}

/// One operation of a service over a window: its span name and kind, all status codes summed.
#[derive(Debug, Clone)]
pub(crate) struct OperationSummary {
    /// The span name.
    pub name: Arc<str>,
    /// The span kind.
    pub kind: SpanKind,
    /// Calls, failed calls and the duration distribution (in `server`).
    pub summary: Summary,
}

/// The span metrics stage: fed the facts of every accepted batch, read by `/metrics` and the
/// operations API. The lock is held for one batch or one read, never across an `.await`.
#[derive(Debug)]
pub(crate) struct SpanMetrics {
    config: SpanMetricsConfig,
    clock: Clock,
    pub(crate) state: Mutex<State>,
}

fn minute_of(now: SystemTime) -> u64 {
    unix_seconds(now) / BUCKET_SECONDS
}

impl SpanMetrics {
    /// An empty stage that reads time from `clock`.
    pub(crate) fn new(config: SpanMetricsConfig, clock: Clock) -> Self {
        Self {
            config,
            clock,
            state: Mutex::new(State::default()),
        }
    }

    /// Its configuration.
    pub(crate) fn config(&self) -> &SpanMetricsConfig {
        &self.config
    }

    /// Counts the spans of a batch that arrived now.
    pub(crate) fn ingest(&self, spans: &[SpanFacts]) {
        let now = self.clock.now();
        let minute = minute_of(now);
        let seconds = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let bounds = &self.config.histogram_buckets;
        let mut state = self.state.lock();
        state.prune(minute, &self.config);
        let State {
            series, overflow, ..
        } = &mut *state;
        for span in spans {
            let key = OperationKey {
                service: span.service.clone(),
                name: span.name.clone(),
                kind: span.kind,
                status: StatusCode::of(span),
                status_message: if self.config.status_message {
                    span.status_message.clone()
                } else {
                    None
                },
                dimensions: self
                    .config
                    .dimensions
                    .iter()
                    .map(|d| d.value(span.attributes.as_deref()).cloned())
                    .collect(),
            };
            let entry = if let Some(entry) = series.get_mut(&key) {
                entry
            } else if series.len() < self.config.max_series {
                series.entry(key).or_default()
            } else {
                overflow.get_or_insert_with(OperationState::default)
            };
            entry.record(span, minute, seconds, bounds);
        }
    }

    /// The operations of `service` with calls in the last `window`, by name then kind.
    pub(crate) fn operations(&self, service: &str, window: Duration) -> Vec<OperationSummary> {
        let since = self.window_start(window).0;
        let state = self.state.lock();
        let mut merged: std::collections::BTreeMap<(Arc<str>, SpanKind), Summary> =
            Default::default();
        for (key, entry) in state.series.iter().filter(|(k, _)| &*k.service == service) {
            if let Some(summary) = entry.series.window(since) {
                merged
                    .entry((key.name.clone(), key.kind))
                    .or_default()
                    .merge(&summary);
            }
        }
        merged
            .into_iter()
            .map(|((name, kind), summary)| OperationSummary {
                name,
                kind,
                summary,
            })
            .collect()
    }

    /// The first minute of `window` (the whole minutes back plus the current one) and the time
    /// its buckets cover: rates are calls over that.
    pub(crate) fn window_start(&self, window: Duration) -> (u64, Duration) {
        let now = unix_seconds(self.clock.now());
        let minute = now / BUCKET_SECONDS;
        let since = minute.saturating_sub((window.as_secs() / BUCKET_SECONDS).max(1));
        let covered = Duration::from_secs((minute - since) * BUCKET_SECONDS + now % BUCKET_SECONDS);
        (since, covered)
    }

    /// The longest window that can be asked for.
    pub(crate) fn retention(&self) -> Duration {
        self.config.retention
    }

    /// The time its windows are measured against.
    pub(crate) fn now(&self) -> SystemTime {
        self.clock.now()
    }
}

impl State {
    /// Drops the series with nothing in the retention, once a minute.
    fn prune(&mut self, minute: u64, config: &SpanMetricsConfig) {
        if minute == self.pruned_minute {
            return;
        }
        self.pruned_minute = minute;
        let keep_from = minute.saturating_sub(config.retention.as_secs() / BUCKET_SECONDS);
        self.series.retain(|_, entry| entry.series.prune(keep_from));
    }
}

impl crate::pipeline::FactsConsumer for SpanMetrics {
    fn name(&self) -> &'static str {
        "spanmetrics"
    }

    fn consume(&self, facts: &[SpanFacts]) {
        self.ingest(facts);
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[test]
    fn example() {
        use crate::decode::SpanKind;
        use crate::graph::spanmetrics::{SpanMetrics, SpanMetricsConfig};
        use crate::testing::facts;
        use crate::util::clock::Clock;
        use std::sync::Arc;

        let metrics = SpanMetrics::new(SpanMetricsConfig::default(), Clock::new());
        let cart: Arc<str> = Arc::from("cart");
        let mut span = facts(&cart, None, SpanKind::Server, 12_000_000);
        span.name = Arc::from("GET /cart");
        metrics.ingest(&[span.clone(), span]);
        let operations = metrics.operations("cart", std::time::Duration::from_secs(300));
        assert_eq!(operations.len(), 1);
        assert_eq!(&*operations[0].name, "GET /cart");
        assert_eq!(operations[0].summary.requests, 2);
    }
}
