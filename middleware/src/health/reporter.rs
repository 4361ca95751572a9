//! [`Health`], the running reporter: the status of the last beat, the readiness routes and the
//! gRPC health service that show it, and the shutdown that says `down`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[cfg(feature = "axum")]
use axum::{Router, http::StatusCode, routing::get};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::beat::{Shared, beat};
use super::checks::{Check, Status};

/// The running reporter: its state, its readiness routes, and its shutdown. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    shared: Arc<Shared>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("instance_id", &self.shared.instance_id)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Health {
    /// Starts the beat task of `shared` on the current runtime.
    pub(super) fn start(
        shared: Shared,
        checks: Vec<Check>,
        interval: Duration,
        failures_before_critical: u32,
    ) -> Health {
        let shared = Arc::new(shared);
        let task = tokio::spawn(beat(
            shared.clone(),
            checks,
            interval,
            failures_before_critical,
        ));
        Health {
            shared,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// The status the last beat reported (`Down` once shutting down).
    pub fn status(&self) -> Status {
        *self.shared.status.borrow()
    }

    /// A receiver of every status change.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.shared.status.subscribe()
    }

    /// Whether the instance should get traffic: passing or warning, not shutting down.
    pub fn ready(&self) -> bool {
        matches!(self.status(), Status::Passing | Status::Warning)
    }

    /// Beats delivered, and beats that did not arrive.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.sent.load(Ordering::Relaxed),
            self.shared.failed.load(Ordering::Relaxed),
        )
    }

    /// An axum router with `GET /readyz` (200 while [`ready`](Self::ready), else 503) and
    /// `GET /livez` (200 until the instance is critical or down), for Kubernetes probes.
    #[cfg(feature = "axum")]
    pub fn routes<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let ready = self.clone();
        let live = self.clone();
        Router::new()
            .route(
                "/readyz",
                get(move || {
                    let ready = ready.clone();
                    async move { probe(ready.ready(), ready.status()) }
                }),
            )
            .route(
                "/livez",
                get(move || {
                    let live = live.clone();
                    async move {
                        let status = live.status();
                        probe(!matches!(status, Status::Critical | Status::Down), status)
                    }
                }),
            )
    }

    /// Stops the beats and sends `down` (one try, at most 2 s): the collector removes the
    /// instance at once and balancers stop sending it new requests from their next update.
    /// Readiness fails from now on.
    pub async fn shutdown(&self) {
        self.shared.status.send_replace(Status::Down);
        self.shared.stop.notify_one();
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.shared.send(Status::Down).await;
    }
}

#[cfg(feature = "axum")]
fn probe(ok: bool, status: Status) -> (StatusCode, &'static str) {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, status.as_str())
}
