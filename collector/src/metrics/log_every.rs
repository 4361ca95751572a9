//! A log line that says a cap was reached, written at most once a minute per place: the count
//! is in a metric; the line tells an operator who reads logs first that the metric moved, and
//! why, without a line per refused request under overload.
//!
//! (Its example runs as the unit test `examples::example`.)

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often the collector's cap log lines are written at most.
pub(crate) const CAP_LOG_EVERY: Duration = Duration::from_secs(60);

/// Says when a throttled log line may be written.
#[derive(Debug)]
pub(crate) struct LogEvery {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl LogEvery {
    /// At most once every `every`.
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(None),
        }
    }

    /// Whether a line may be written now; if so, the next may be written `every` later.
    pub(crate) fn ready(&self) -> bool {
        let mut last = self.last.lock();
        if last.is_none_or(|at| at.elapsed() >= self.every) {
            *last = Some(Instant::now());
            true
        } else {
            false
        }
    }
}

impl Default for LogEvery {
    fn default() -> Self {
        Self::new(CAP_LOG_EVERY)
    }
}

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[test]
    fn example() {
        use crate::metrics::LogEvery;
        use std::time::Duration;

        let log = LogEvery::new(Duration::from_secs(60));
        assert!(log.ready(), "the first time");
        assert!(!log.ready(), "not again within the minute");
    }
}
