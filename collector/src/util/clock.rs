//! The one source of time for the stages that keep time-based state (topology windows, the
//! instance registry's TTLs).
//!
//! It reads tokio's clock, so that tests can pause and advance time
//! (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`) and see TTLs expire without
//! sleeping. Wall-clock time is the wall clock at start plus the monotonic time since, so it never
//! jumps backwards when the system clock is adjusted.
//!
//! (Its example runs as the unit test `examples::example`.)

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Wall-clock time that advances with tokio's (possibly paused) clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_at_start: SystemTime,
    started: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock that reads the system's wall clock once, now, and tokio's clock from then on.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A clock whose time is `wall` now (tests use a fixed epoch for readable assertions).
    pub fn starting_at(wall: SystemTime) -> Self {
        Self {
            wall_at_start: wall,
            started: Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> SystemTime {
        self.wall_at_start + self.started.elapsed()
    }
}

/// Seconds since the Unix epoch of `time` (0 before the epoch).
pub(crate) fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Milliseconds since the Unix epoch of `time` (0 before the epoch).
pub(crate) fn unix_millis(time: SystemTime) -> u64 {
    let millis = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    u64::try_from(millis).unwrap_or(u64::MAX)
}

/// `time` as RFC 3339 in UTC with milliseconds, e.g. `2026-11-24T20:00:00.000Z`.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn example() {
        use crate::util::clock::Clock;
        use std::time::Duration;

        let clock = Clock::new();
        let before = clock.now();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(
            clock.now().duration_since(before).unwrap(),
            Duration::from_secs(90)
        );
    }
}
