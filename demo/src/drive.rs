//! The demo's users: `POST /orders` to `frontend` at a steady rate, counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// What the users saw.
#[derive(Debug, Default)]
pub struct Counts {
    /// Requests sent.
    pub sent: AtomicU64,
    /// Answered with a success.
    pub ok: AtomicU64,
    /// Failed (an error status or no answer).
    pub failed: AtomicU64,
    /// Not sent: too many already in flight.
    pub skipped: AtomicU64,
}

/// At most this many requests in flight; past it a tick is skipped and counted.
const MAX_IN_FLIGHT: usize = 256;

/// Sends `rps` requests a second to `frontend` until the task is aborted.
pub fn start(frontend: std::net::SocketAddr, rps: u32, counts: Arc<Counts>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
        {
            Ok(client) => client,
            Err(_) => return,
        };
        let url = format!("http://{frontend}/orders");
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut ticks =
            tokio::time::interval(Duration::from_secs(1).div_f64(f64::from(rps.max(1))));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                counts.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            counts.sent.fetch_add(1, Ordering::Relaxed);
            let request = client.post(&url).json(
                &serde_json::json!({ "sku": if fastrand::bool() { "apple" } else { "pear" } }),
            );
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                let ok = matches!(request.send().await, Ok(r) if r.status().is_success());
                if ok {
                    counts.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                }
                drop(slot);
            });
        }
    })
}
