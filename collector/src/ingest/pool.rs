//! Where the receivers decode requests: a bounded pool off the async runtime's workers.
//!
//! Turning a 4 MiB OTLP request into Arrow takes tens of milliseconds of CPU; on a runtime
//! worker that stalls every connection the worker serves. A request of at least
//! [`INLINE_BELOW`] bytes is decoded on tokio's blocking threads instead, at most as many at
//! once as the machine has cores (so that decoding never takes more CPU than there is, and the
//! rest wait their turn in order); smaller ones are decoded where they are, where a thread
//! handoff would cost more than the work.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Requests smaller than this are decoded on the calling task.
pub(crate) const INLINE_BELOW: usize = 64 * 1024;

/// A bounded pool for CPU-heavy decoding.
#[derive(Debug, Clone)]
pub struct DecodePool {
    permits: Arc<Semaphore>,
    size: usize,
}

/// The decoding panicked (a bug: decoding refuses bad input with errors, it never panics).
#[derive(Debug, thiserror::Error)]
#[error("decoding the request failed unexpectedly: {0}")]
pub struct DecodePanicked(String);

impl Default for DecodePool {
    /// One slot per core.
    fn default() -> Self {
        Self::new(std::thread::available_parallelism().map_or(2, usize::from))
    }
}

impl DecodePool {
    /// A pool that runs at most `size` (at least 1) decodings at once.
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        Self {
            permits: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// How many decodings it runs at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `work` for a request of `bytes`: here when it is small, else on a blocking thread
    /// once a slot is free.
    pub async fn run<T: Send + 'static>(
        &self,
        bytes: usize,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, DecodePanicked> {
        if bytes < INLINE_BELOW {
            return Ok(work());
        }
        let _slot = self
            .permits
            .acquire()
            .await
            .expect("the pool's semaphore is never closed");
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| DecodePanicked(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn large_requests_leave_the_runtime_thread_small_ones_stay() {
        let pool = DecodePool::new(2);
        let here = std::thread::current().id();
        let small = pool
            .run(INLINE_BELOW - 1, || std::thread::current().id())
            .await
            .unwrap();
        assert_eq!(small, here, "a small request is decoded in place");
        let large = pool
            .run(INLINE_BELOW, || std::thread::current().id())
            .await
            .unwrap();
        assert_ne!(large, here, "a large one on a blocking thread");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_size_decodings_run_at_once() {
        let pool = DecodePool::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run(INLINE_BELOW, move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        // Long enough that the eight overlap if nothing holds them back.
                        let until =
                            std::time::Instant::now() + std::time::Duration::from_millis(20);
                        while std::time::Instant::now() < until {
                            std::hint::spin_loop();
                        }
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                    .unwrap();
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!(
            (1..=2).contains(&most),
            "two slots: never more than two at once (unbounded, the eight overlap): {most}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panic_in_decoding_is_an_error_not_a_crash() {
        let pool = DecodePool::new(1);
        let error = pool
            .run(INLINE_BELOW, || -> u8 { panic!("a decoder bug") })
            .await
            .expect_err("the panic is reported");
        assert!(error.to_string().contains("unexpectedly"), "{error}");
        // The slot was given back.
        assert_eq!(pool.run(INLINE_BELOW, || 7).await.unwrap(), 7);
    }
}
