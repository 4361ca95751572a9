//! The cap on clients waiting for weights at once: gRPC `Watch` streams and HTTP long-polls
//! (`--max-watchers`). Each holds a permit for as long as it waits; one more is refused at once
//! with a retryable answer (gRPC `UNAVAILABLE` with `RetryInfo`, HTTP 503 with `Retry-After`),
//! which the balancers' discovery meets with its jittered backoff. The one computation of the
//! weights is shared by every watcher, so what the cap bounds is memory and file descriptors.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits for watchers, and the count of refusals.
#[derive(Debug, Clone)]
pub struct Watchers {
    permits: Arc<Semaphore>,
    max: usize,
    refused: Counter,
}

/// A watcher's place; released when dropped (the stream ends or the long-poll answers).
#[derive(Debug)]
pub struct WatcherPermit(#[allow(dead_code, reason = "held, not read")] OwnedSemaphorePermit);

impl Watchers {
    /// At most `max` (at least 1) watchers at once; refusals counted in `refused`.
    pub fn new(max: usize, refused: Counter) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            refused,
        }
    }

    /// A place, or `None` (counted) when all are taken.
    pub fn try_watch(&self) -> Option<WatcherPermit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Some(WatcherPermit(permit)),
            Err(_) => {
                self.refused.inc();
                None
            }
        }
    }

    /// Watchers now.
    pub fn active(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// The message of a refusal.
    pub fn refusal(&self) -> String {
        format!(
            "the collector serves {} weight watchers at most (--max-watchers); retry later",
            self.max
        )
    }
}
