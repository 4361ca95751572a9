//! The local load signal: a peak-sensitive EWMA of an endpoint's round trip times.
//!
//! This is the rule of tower's `load::PeakEwma`, which takes it from Finagle's
//! `PeakEwmaLoadBalancerFactory`: a round trip longer than the estimate replaces it at once (the
//! peak), a shorter one moves it by `1 - e^(-Δt/τ)` where `Δt` is the time since the last
//! update, and reading the estimate decays it towards zero the same way, so that an endpoint
//! that has not been used for a while looks cheap enough to be tried again. The cost of an
//! endpoint is `estimate × (in_flight + 1)`.
//!
//! Unlike tower's, a failed attempt is recorded as slow: its round trip counts as at least
//! `failure_penalty ×` the endpoint's recent successful round trip (or the default RTT while it
//! has none), so that an endpoint answering errors in a millisecond never looks like the
//! cheapest. The successful round trips are kept as a plain EWMA of their own, so that repeated
//! failures do not compound the penalty.

use std::time::Duration;

use tokio::time::Instant;

/// A Peak-EWMA estimate of one endpoint's round trip, in nanoseconds.
#[derive(Debug, Clone)]
pub(crate) struct PeakEwma {
    /// The estimate, as of `updated_at`.
    estimate_ns: f64,
    updated_at: Instant,
    /// A plain EWMA of successful round trips, the base of the failure penalty.
    success_ns: Option<f64>,
    default_ns: f64,
    decay_ns: f64,
}

impl PeakEwma {
    /// Starts at `default_rtt`, decaying over `decay` (τ).
    pub(crate) fn new(default_rtt: Duration, decay: Duration, now: Instant) -> Self {
        let default_ns = nanos(default_rtt).max(1.0);
        PeakEwma {
            estimate_ns: default_ns,
            updated_at: now,
            success_ns: None,
            default_ns,
            decay_ns: nanos(decay).max(1.0),
        }
    }

    /// The estimate at `now`: decayed towards zero since the last update, as tower's does on
    /// every `load()`.
    pub(crate) fn estimate(&self, now: Instant) -> f64 {
        let elapsed = nanos(now.saturating_duration_since(self.updated_at));
        self.estimate_ns * (-elapsed / self.decay_ns).exp()
    }

    /// Records a round trip that ended at `now`; `failed` ones count as at least
    /// `failure_penalty ×` the successful round trip.
    pub(crate) fn record(
        &mut self,
        rtt: Duration,
        failed: bool,
        failure_penalty: f64,
        now: Instant,
    ) {
        let mut rtt_ns = nanos(rtt);
        if failed {
            let base = self.success_ns.unwrap_or(self.default_ns);
            rtt_ns = rtt_ns.max(base * failure_penalty);
        } else {
            self.success_ns = Some(match self.success_ns {
                // The successes' own EWMA moves by a fifth per sample.
                Some(previous) => previous + (rtt_ns - previous) * 0.2,
                None => rtt_ns,
            });
        }
        let elapsed = nanos(now.saturating_duration_since(self.updated_at));
        self.estimate_ns = if rtt_ns > self.estimate_ns {
            rtt_ns
        } else {
            let decay = (-elapsed / self.decay_ns).exp();
            self.estimate_ns * decay + rtt_ns * (1.0 - decay)
        };
        self.updated_at = now;
    }
}

fn nanos(duration: Duration) -> f64 {
    duration.as_nanos() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn peaks_jump_and_fade_with_time() {
        let start = Instant::now();
        let mut ewma = PeakEwma::new(30 * MS, Duration::from_secs(10), start);
        assert_eq!(
            ewma.estimate(start),
            30e6,
            "a new endpoint costs the default RTT"
        );

        tokio::time::advance(Duration::from_secs(1)).await;
        ewma.record(200 * MS, false, 5.0, Instant::now());
        assert_eq!(
            ewma.estimate(Instant::now()),
            200e6,
            "a peak replaces the estimate at once"
        );

        // A fast answer 10 s later moves it by 1 - 1/e towards 10 ms.
        tokio::time::advance(Duration::from_secs(10)).await;
        ewma.record(10 * MS, false, 5.0, Instant::now());
        let expected = 200e6 / std::f64::consts::E + 10e6 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((ewma.estimate(Instant::now()) - expected).abs() < 1.0);

        // Unused for 10 s, it decays by 1/e, towards being tried again.
        let at = Instant::now();
        let later = at + Duration::from_secs(10);
        let decayed = ewma.estimate(later);
        assert!((decayed - expected / std::f64::consts::E).abs() < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn fast_failures_count_as_slow_without_compounding() {
        let now = Instant::now();
        let mut ewma = PeakEwma::new(30 * MS, Duration::from_secs(10), now);
        ewma.record(10 * MS, false, 5.0, now);
        ewma.record(Duration::from_micros(100), true, 5.0, now);
        assert_eq!(
            ewma.estimate(now),
            50e6,
            "a 0.1 ms failure counts as 5 × the 10 ms successes"
        );
        ewma.record(Duration::from_micros(100), true, 5.0, now);
        assert_eq!(
            ewma.estimate(now),
            50e6,
            "a second failure does not multiply the penalty again"
        );
        let mut fresh = PeakEwma::new(30 * MS, Duration::from_secs(10), now);
        fresh.record(Duration::from_micros(100), true, 5.0, now);
        assert_eq!(
            fresh.estimate(now),
            150e6,
            "without a success the penalty is on the default RTT"
        );
    }
}
