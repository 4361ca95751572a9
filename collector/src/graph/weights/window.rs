//! What each instance (and each address its callers aim at) did over the last `--weight-window`:
//! requests, errors and a latency sketch, in 5-second buckets.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use crate::graph::topology::stats::Latency;

/// Width of one bucket.
pub(crate) const BUCKET: Duration = Duration::from_secs(5);

/// The bucket `time` falls in (5-second slots since the epoch).
pub(crate) fn slot_of(time: SystemTime) -> u64 {
    crate::util::clock::unix_millis(time) / (BUCKET.as_millis() as u64)
}

/// What one bucket holds.
#[derive(Debug, Default, Clone)]
pub(crate) struct Bucket {
    /// Requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Latency, in milliseconds.
    pub latency: Latency,
}

/// A sliding window of buckets, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Window {
    buckets: VecDeque<(u64, Bucket)>,
}

/// A window summed up.
#[derive(Debug, Clone, Default)]
pub(crate) struct WindowStats {
    /// Requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Latency, in milliseconds.
    pub latency: Latency,
}

impl WindowStats {
    /// `errors / requests` (0 without requests).
    pub(crate) fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

impl Window {
    /// Adds one request.
    pub(crate) fn record(&mut self, now: SystemTime, duration_ns: u64, error: bool) {
        let slot = slot_of(now);
        let bucket = match self.buckets.back_mut() {
            Some((s, bucket)) if *s >= slot => bucket,
            _ => {
                self.buckets.push_back((slot, Bucket::default()));
                &mut self.buckets.back_mut().expect("just pushed").1
            }
        };
        bucket.requests += 1;
        bucket.errors += u64::from(error);
        bucket.latency.record(duration_ns);
    }

    /// Adds a bucket's figures to the bucket of `slot` (made where missing, in order): how the
    /// fleet's figures of one instance are summed from every collector's.
    pub(crate) fn add(&mut self, slot: u64, bucket: &Bucket) {
        let at = self.buckets.partition_point(|(s, _)| *s < slot);
        if self.buckets.get(at).is_none_or(|(s, _)| *s != slot) {
            self.buckets.insert(at, (slot, Bucket::default()));
        }
        let mine = &mut self.buckets[at].1;
        mine.requests += bucket.requests;
        mine.errors += bucket.errors;
        mine.latency.merge(&bucket.latency);
    }

    /// Its buckets from `slot` on, oldest first.
    pub(crate) fn since(&self, slot: u64) -> impl Iterator<Item = (u64, &Bucket)> {
        self.buckets
            .iter()
            .filter(move |(s, _)| *s >= slot)
            .map(|(s, b)| (*s, b))
    }

    /// Drops buckets older than `window` before `now`; says whether any are left.
    pub(crate) fn prune(&mut self, now: SystemTime, window: Duration) -> bool {
        let oldest = slot_of(now).saturating_sub(buckets_in(window));
        while self.buckets.front().is_some_and(|(s, _)| *s <= oldest) {
            self.buckets.pop_front();
        }
        !self.buckets.is_empty()
    }

    /// The sum of the two newest buckets (the current one and the one before): what happened
    /// in the last 5–10 seconds, for reacting to a peak before it fills a tenth of the window.
    pub(crate) fn recent(&self, now: SystemTime) -> WindowStats {
        self.stats(now, BUCKET * 2)
    }

    /// The sum of the buckets within `window` before `now`.
    pub(crate) fn stats(&self, now: SystemTime, window: Duration) -> WindowStats {
        let oldest = slot_of(now).saturating_sub(buckets_in(window));
        let mut stats = WindowStats::default();
        for (_, bucket) in self.buckets.iter().filter(|(s, _)| *s > oldest) {
            stats.requests += bucket.requests;
            stats.errors += bucket.errors;
            stats.latency.merge(&bucket.latency);
        }
        stats
    }
}

fn buckets_in(window: Duration) -> u64 {
    (window.as_millis() as u64)
        .div_ceil(BUCKET.as_millis() as u64)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slides() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut window = Window::default();
        window.record(at(0), 10_000_000, false);
        window.record(at(12), 20_000_000, true);
        window.record(at(29), 30_000_000, false);
        let w = Duration::from_secs(30);
        assert_eq!(window.stats(at(29), w).requests, 3);
        assert_eq!(
            window.stats(at(30), w).requests,
            2,
            "t=0 has left the window"
        );
        assert_eq!(window.stats(at(30), w).errors, 1);
        assert!(window.prune(at(44), w));
        assert_eq!(window.stats(at(44), w).requests, 1);
        assert!(!window.prune(at(60), w));
    }
}
