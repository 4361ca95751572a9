//! One endpoint as the balancer sees it locally: its address, its requests in flight, its
//! Peak-EWMA round trip and its ejection state. The central view (weight, health, reason) is
//! kept beside it in the balancer's endpoint set, which every update replaces; the local view
//! lives as long as the address stays in the set, and a request in flight keeps it alive after
//! its endpoint was removed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::uri::Authority;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::config::BalanceConfig;
use super::load::PeakEwma;
use super::outlier::Outlier;

/// The local state of one endpoint.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// `host:port`.
    pub(crate) address: Arc<str>,
    /// The same, parsed for the request URI.
    pub(crate) authority: Authority,
    in_flight: AtomicU32,
    requests: AtomicU64,
    failures: AtomicU64,
    state: Mutex<Local>,
}

#[derive(Debug)]
struct Local {
    load: PeakEwma,
    outlier: Outlier,
}

impl Endpoint {
    /// An endpoint at `address` (`host:port`); `None` when it is not an authority.
    pub(crate) fn new(address: &str, config: &BalanceConfig, now: Instant) -> Option<Arc<Self>> {
        let authority: Authority = address.parse().ok()?;
        authority.port_u16()?;
        Some(Arc::new(Endpoint {
            address: Arc::from(address),
            authority,
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            state: Mutex::new(Local {
                load: PeakEwma::new(config.default_rtt, config.decay, now),
                outlier: Outlier::new(config, now),
            }),
        }))
    }

    /// Its Peak-EWMA cost at `now`: `rtt × (in_flight + 1)`, in nanoseconds.
    pub(crate) fn cost(&self, now: Instant) -> f64 {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        self.state.lock().load.estimate(now) * f64::from(in_flight + 1)
    }

    /// Whether it wants out of rotation, and how bad it is (its failure share).
    pub(crate) fn ejection(&self, now: Instant) -> Option<f64> {
        let state = self.state.lock();
        state
            .outlier
            .is_ejected(now)
            .then(|| state.outlier.failure_share(now))
    }

    /// Its slow-start factor at `now`.
    pub(crate) fn ramp(&self, slow_start: Duration, now: Instant) -> f64 {
        self.state.lock().outlier.ramp(slow_start, now)
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
        }
    }

    /// Records the outcome of an attempt sent at `sent`; returns whether it ejected the
    /// endpoint.
    pub(crate) fn record(
        &self,
        sent: Instant,
        failed: bool,
        config: &BalanceConfig,
        jitter: f64,
    ) -> bool {
        let now = Instant::now();
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let mut state = self.state.lock();
        state.load.record(
            now.saturating_duration_since(sent),
            failed,
            config.failure_penalty,
            now,
        );
        state.outlier.record(failed, config, now, jitter)
    }

    /// What the read API shows of it.
    pub(crate) fn local_view(&self, now: Instant) -> LocalView {
        let state = self.state.lock();
        LocalView {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            rtt: Duration::from_nanos(state.load.estimate(now) as u64),
            ejected_for: state
                .outlier
                .ejected_until(now)
                .map(|until| until.saturating_duration_since(now)),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }
}

/// The local half of [`EndpointView`](super::EndpointView).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalView {
    pub(crate) in_flight: u32,
    pub(crate) rtt: Duration,
    pub(crate) ejected_for: Option<Duration>,
    pub(crate) requests: u64,
    pub(crate) failures: u64,
}

/// A request in flight to an endpoint; dropping it ends the count.
#[derive(Debug)]
pub(crate) struct InFlight {
    endpoint: Arc<Endpoint>,
}

impl InFlight {
    /// The endpoint it counts on.
    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
