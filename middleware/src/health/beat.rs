//! The beat task: one per reporter, on its own timer, never on the request path. It refreshes
//! the checks, sends the status, and waits `interval ± 20%`, or backs off after a failed send
//! (`schedule`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use wayfinder_api::health::HealthReport;

use super::checks::{self, Check, Status};
use super::transport::Transport;
use super::{SEND_TIMEOUT, schedule};

/// What the task and the [`Health`](super::Health) handles share: the instance, where beats
/// go, the status, and the counts.
pub(super) struct Shared {
    pub(super) service: String,
    pub(super) instance_id: String,
    pub(super) address: Option<String>,
    pub(super) ttl: Duration,
    pub(super) transport: Transport,
    pub(super) seq: AtomicU64,
    pub(super) incarnation: u64,
    pub(super) status: watch::Sender<Status>,
    pub(super) output: Mutex<Option<String>>,
    pub(super) stop: Notify,
    pub(super) sent: AtomicU64,
    pub(super) failed: AtomicU64,
    /// When a failure was last a warning, and the failures since.
    warned: Mutex<(Option<tokio::time::Instant>, u64)>,
}

/// At most one warning about failed beats this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Shared {
    /// The state of a reporter about to start: `seq` and the incarnation from the wall clock.
    pub(super) fn new(
        service: String,
        instance_id: String,
        address: Option<String>,
        ttl: Duration,
        transport: Transport,
    ) -> Self {
        // The process's start: its incarnation, and the first `seq` (so that a collector that
        // orders by `seq` alone also takes a restart's beats as newer).
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let (status, _) = watch::channel(Status::Passing);
        Shared {
            service,
            instance_id,
            address,
            ttl,
            transport,
            seq: AtomicU64::new(started),
            incarnation: started,
            status,
            output: Mutex::new(None),
            stop: Notify::new(),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            warned: Mutex::new((None, 0)),
        }
    }

    fn report(&self, status: Status) -> HealthReport {
        HealthReport {
            service: self.service.clone(),
            instance_id: self.instance_id.clone(),
            address: self.address.clone(),
            status: status.as_str().to_owned(),
            ttl_ms: Some(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)),
            seq: Some(self.seq.fetch_add(1, Ordering::Relaxed)),
            incarnation: Some(self.incarnation),
            output: self.output.lock().clone(),
        }
    }

    /// Sends one beat with `status`; counts it, delivered or not.
    pub(super) async fn send(&self, status: Status) -> bool {
        let report = self.report(status);
        match self.shared_send(&report).await {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(error) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, "health beat not delivered");
                let mut warned = self.warned.lock();
                warned.1 += 1;
                let now = tokio::time::Instant::now();
                if warned
                    .0
                    .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
                {
                    let failed = std::mem::take(&mut warned.1);
                    warned.0 = Some(now);
                    drop(warned);
                    tracing::warn!(
                        target: "wayfinder_middleware::health",
                        service = %self.service,
                        instance = %self.instance_id,
                        failed_beats = failed,
                        "health beats not delivered: {error}"
                    );
                }
                false
            }
        }
    }

    async fn shared_send(&self, report: &HealthReport) -> Result<(), String> {
        match tokio::time::timeout(SEND_TIMEOUT, self.transport.send(report)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {SEND_TIMEOUT:?}")),
        }
    }
}

/// The reporter's task.
pub(super) async fn beat(
    shared: Arc<Shared>,
    mut checks: Vec<Check>,
    interval: Duration,
    failures_before_critical: u32,
) {
    let mut wait = schedule::first_delay(interval, fastrand::f64());
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.stop.notified() => return,
        }
        let now = Instant::now();
        for check in &mut checks {
            check.refresh(now).await;
        }
        let (status, output) = checks::status(&checks, failures_before_critical);
        *shared.output.lock() = output;
        if *shared.status.borrow() == Status::Down {
            return;
        }
        shared.status.send_replace(status);
        if shared.send(status).await {
            failures = 0;
            wait = schedule::next_delay(interval, fastrand::f64());
        } else {
            failures = failures.saturating_add(1);
            wait = schedule::backoff_delay(interval, shared.ttl, failures, fastrand::f64());
        }
    }
}
