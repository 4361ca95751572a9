//! Answers handed to several readers: what readers in a loop (a dashboard per user, a
//! scraper, a script) ask for again within a short period is made once and shared.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Values by key, each handed out again for `period` after it was made. One caller makes a
/// value at a time and the others wait for it, so that however many readers ask, making costs
/// at most one thread and one value per key per period.
///
/// ```
/// use std::time::Duration;
/// use wayfinder_collector::reuse::Reuse;
///
/// let reuse = Reuse::new(Duration::from_secs(60));
/// let mut made = 0;
/// let first = reuse.get_or_make(&"topology", || { made += 1; made });
/// let again = reuse.get_or_make(&"topology", || { made += 1; made });
/// assert_eq!((first, again), (1, 1), "made once within the period");
/// ```
#[derive(Debug)]
pub struct Reuse<K, V> {
    period: Duration,
    made: Mutex<Vec<(K, Instant, V)>>,
}

impl<K: PartialEq + Clone, V: Clone> Reuse<K, V> {
    /// Values are handed out again for `period`; zero makes one for every caller.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            made: Mutex::new(Vec::new()),
        }
    }

    /// The value made for `key` less than the period ago, or a new one from `make`.
    pub fn get_or_make(&self, key: &K, make: impl FnOnce() -> V) -> V {
        let mut made = self.made.lock();
        let period = self.period;
        if let Some((_, _, value)) = made
            .iter()
            .find(|(k, at, _)| k == key && at.elapsed() < period)
        {
            return value.clone();
        }
        let value = make();
        made.retain(|(k, at, _)| k != key && at.elapsed() < period);
        if !period.is_zero() {
            made.push((key.clone(), Instant::now(), value.clone()));
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_period_makes_a_value_for_every_caller_and_keys_are_apart() {
        let fresh = Reuse::new(Duration::ZERO);
        assert_eq!(fresh.get_or_make(&1, || "a"), "a");
        assert_eq!(fresh.get_or_make(&1, || "b"), "b", "nothing kept");
        let kept = Reuse::new(Duration::from_secs(60));
        assert_eq!(kept.get_or_make(&1, || "a"), "a");
        assert_eq!(
            kept.get_or_make(&2, || "b"),
            "b",
            "another key is its own value"
        );
        assert_eq!(kept.get_or_make(&1, || "c"), "a");
    }
}
