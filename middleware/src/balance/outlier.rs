//! Outlier ejection, the balancer's circuit breaker: an endpoint that fails too often is taken
//! out of rotation for a while, then probed and ramped back.
//!
//! The rules are Envoy's outlier detection (`consecutive_5xx`, `failure_percentage`,
//! `base_ejection_time × n` up to `max_ejection_time`, `max_ejection_percent`) and linkerd's
//! consecutive-failures breaker: an endpoint is ejected after `consecutive_failures` failures in
//! a row, or when its failure share over a short window reaches `failure_rate`; the n-th
//! ejection in a row lasts `n × base_ejection` (at most `max_ejection`, ±10% jitter so that a
//! fleet of clients does not probe in step). When the time is up the endpoint is on probation:
//! its next failure ejects it again at once, its first success clears the probation, and it
//! ramps back through slow start. Each clean `base_ejection` after a return forgives one
//! ejection. The share of endpoints ejected at once is capped by the caller
//! ([`Outlier::is_ejected`] says whether an endpoint wants out; the choice keeps the least bad).

use std::time::Duration;

use tokio::time::Instant;

use super::config::BalanceConfig;

/// One second's requests and failures.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    requests: u32,
    failures: u32,
}

/// The ejection state of one endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Outlier {
    /// Consecutive failures.
    consecutive: u32,
    /// Per-second counts over the failure-rate window, as a ring.
    buckets: Vec<Bucket>,
    /// The clock the bucket seconds count from.
    epoch: Instant,
    /// Ejected until then.
    ejected_until: Option<Instant>,
    /// Ejections in a row (not yet forgiven).
    ejections: u32,
    /// When it last came back (for slow start and forgiveness).
    returned_at: Option<Instant>,
    /// Back from an ejection and not yet proven.
    probation: bool,
    /// The failure share that ejected it (the window starts afresh at an ejection).
    ejected_share: f64,
}

impl Outlier {
    pub(crate) fn new(config: &BalanceConfig, now: Instant) -> Self {
        let seconds = config.failure_rate_window.as_secs().max(1) as usize;
        Outlier {
            consecutive: 0,
            buckets: vec![Bucket::default(); seconds],
            epoch: now,
            ejected_until: None,
            ejections: 0,
            returned_at: None,
            probation: false,
            ejected_share: 0.0,
        }
    }

    /// Whether it wants to be out of rotation at `now` (before the ejection cap).
    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// Until when it is ejected, if it is.
    pub(crate) fn ejected_until(&self, now: Instant) -> Option<Instant> {
        self.ejected_until.filter(|until| now < *until)
    }

    /// How bad it is, to keep the least bad in rotation: while ejected, the larger of the
    /// failure share that ejected it and the share since; otherwise the share over the window.
    pub(crate) fn failure_share(&self, now: Instant) -> f64 {
        let (requests, failures) = self.window(now);
        let current = if requests == 0 {
            0.0
        } else {
            f64::from(failures) / f64::from(requests)
        };
        if self.is_ejected(now) {
            current.max(self.ejected_share)
        } else {
            current
        }
    }

    /// Its slow-start factor at `now`: from 0.1 to 1 over `slow_start` after a return.
    pub(crate) fn ramp(&self, slow_start: Duration, now: Instant) -> f64 {
        // An ejection that ran out is a return, even before the next outcome is recorded.
        let returned = match self.ejected_until {
            Some(until) if now >= until => Some(until),
            _ => self.returned_at,
        };
        match returned {
            Some(at) if !slow_start.is_zero() => {
                let age = now.saturating_duration_since(at).as_secs_f64();
                (age / slow_start.as_secs_f64()).clamp(0.1, 1.0)
            }
            _ => 1.0,
        }
    }

    /// Records an attempt's outcome at `now`; `jitter` in `[0, 1)` spreads the ejection time.
    /// Returns whether this outcome ejected it.
    pub(crate) fn record(
        &mut self,
        failed: bool,
        config: &BalanceConfig,
        now: Instant,
        jitter: f64,
    ) -> bool {
        // An ejection that has run out is a return, seen lazily.
        if let Some(until) = self.ejected_until
            && now >= until
        {
            self.ejected_until = None;
            self.returned_at = Some(until);
            self.probation = true;
        }
        let bucket = self.bucket(now);
        bucket.requests = bucket.requests.saturating_add(1);
        if !failed {
            self.consecutive = 0;
            self.probation = false;
            return false;
        }
        bucket.failures = bucket.failures.saturating_add(1);
        self.consecutive = self.consecutive.saturating_add(1);
        if self.is_ejected(now) {
            return false;
        }
        let (requests, failures) = self.window(now);
        let by_count =
            config.consecutive_failures > 0 && self.consecutive >= config.consecutive_failures;
        let by_rate = requests >= config.failure_rate_min_requests
            && f64::from(failures) >= config.failure_rate * f64::from(requests);
        if self.probation || by_count || by_rate {
            self.eject(config, now, jitter);
            return true;
        }
        false
    }

    fn eject(&mut self, config: &BalanceConfig, now: Instant, jitter: f64) {
        let (requests, failures) = self.window(now);
        self.ejected_share = if requests == 0 {
            1.0
        } else {
            f64::from(failures) / f64::from(requests)
        };
        // Each clean `base_ejection` since the last return forgives one ejection.
        if let Some(returned) = self.returned_at
            && !config.base_ejection.is_zero()
        {
            let clean = now.saturating_duration_since(returned).as_secs_f64()
                / config.base_ejection.as_secs_f64();
            self.ejections = self.ejections.saturating_sub(clean as u32);
        }
        self.ejections = self.ejections.saturating_add(1);
        let base = config.base_ejection.mul_f64(f64::from(self.ejections));
        let spread = 0.9 + 0.2 * jitter.clamp(0.0, 1.0);
        let time = base.mul_f64(spread).min(config.max_ejection);
        self.ejected_until = Some(now + time);
        self.consecutive = 0;
        self.probation = false;
        // The window starts afresh, so that the same failures do not eject it again on return.
        self.buckets.iter_mut().for_each(|b| *b = Bucket::default());
    }

    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let len = self.buckets.len();
        let bucket = &mut self.buckets[(second as usize) % len];
        if bucket.second != second {
            *bucket = Bucket {
                second,
                requests: 0,
                failures: 0,
            };
        }
        bucket
    }

    fn window(&self, now: Instant) -> (u32, u32) {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let len = self.buckets.len() as u64;
        self.buckets
            .iter()
            .filter(|b| b.second + len > second && b.second <= second)
            .fold((0, 0), |(r, f), b| (r + b.requests, f + b.failures))
    }
}
