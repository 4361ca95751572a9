//! The cap on clients waiting for weights at once: gRPC `Watch` streams and HTTP long-polls
//! (`--max-watchers`). Each holds a permit for as long as it waits; one more is refused at once
//! with a retryable answer (gRPC `UNAVAILABLE` with `RetryInfo`, HTTP 503 with `Retry-After`),
//! which the balancers' discovery meets with its jittered backoff. The one computation of the
//! weights is shared by every watcher, so what the cap bounds is memory and file descriptors.

use prometheus_client::metrics::counter::Counter;

use crate::metrics::{LogEvery, Metrics};
use crate::util::cap::{Cap, Place};

/// Places for watchers, and the count of refusals.
#[derive(Debug, Clone)]
pub(crate) struct Watchers {
    cap: Cap,
    refused: Counter,
    log: std::sync::Arc<LogEvery>,
}

/// A watcher's place; released when dropped (the stream ends or the long-poll answers).
#[derive(Debug)]
pub(crate) struct WatcherPermit(#[allow(dead_code, reason = "held, not read")] Place);

impl Watchers {
    /// At most `max` (at least 1) watchers at once; refusals counted in
    /// `wayfinder_refused_watchers_total`, registered in `metrics`.
    pub(crate) fn register(max: usize, metrics: &Metrics) -> Self {
        let refused = Counter::default();
        metrics.register(
            "wayfinder_refused_watchers",
            "Weight watchers (gRPC Watch, HTTP long-polls) refused beyond --max-watchers",
            refused.clone(),
        );
        let watchers = Self::new(max, refused);
        metrics.register_collector(Box::new(Waiting(watchers.cap.clone())));
        watchers
    }

    /// At most `max` (at least 1) watchers at once; refusals counted in `refused`.
    pub(crate) fn new(max: usize, refused: Counter) -> Self {
        Self {
            cap: Cap::new(max),
            refused,
            log: std::sync::Arc::default(),
        }
    }

    /// A place, or `None` (counted) when all are taken.
    pub(crate) fn try_watch(&self) -> Option<WatcherPermit> {
        match self.cap.try_take() {
            Some(place) => Some(WatcherPermit(place)),
            None => {
                self.refused.inc();
                if self.log.ready() {
                    tracing::warn!(
                        max = self.cap.max(),
                        "a weight watcher beyond --max-watchers was refused, retryably (logged at most once a minute; counted in wayfinder_refused_watchers_total)"
                    );
                }
                None
            }
        }
    }

    /// Watchers now.
    #[cfg(test)]
    pub(crate) fn active(&self) -> usize {
        self.cap.held()
    }

    /// A new cap (a configuration reload): see [`Cap::set`].
    pub(crate) fn set_max(&self, max: usize) {
        self.cap.set(max);
    }

    /// The message of a refusal.
    pub(crate) fn refusal(&self) -> String {
        format!(
            "the collector serves {} weight watchers at most (--max-watchers); retry later",
            self.cap.max()
        )
    }
}

/// `wayfinder_weight_watchers`: the gRPC `Watch` streams and HTTP long-polls waiting now, read
/// at each scrape.
#[derive(Debug)]
struct Waiting(Cap);

impl prometheus_client::collector::Collector for Waiting {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::{MetricType, gauge::ConstGauge};
        let family = encoder.encode_descriptor(
            "wayfinder_weight_watchers",
            "Weight watchers (gRPC Watch streams, HTTP long-polls) waiting now",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::try_from(self.0.held()).unwrap_or(i64::MAX)).encode(family)
    }
}
