//! Graceful shutdown that deregisters first: on SIGTERM or SIGINT (or [`GracefulShutdown::trigger`])
//! the instance sends `down` and fails its readiness, keeps serving for a drain period (so that
//! balancers and load balancers see it leave before it stops: Kubernetes' preStop pause), then
//! lets the server stop accepting and finish what is in flight, up to a deadline.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::Health;

/// The shutdown sequence of one process's servers. Cheap to clone; every clone's
/// [`signal`](Self::signal) resolves at the same moment.
///
/// ```no_run
/// use std::time::Duration;
/// use wayfinder_middleware::health::GracefulShutdown;
///
/// # async fn run(health: wayfinder_middleware::health::Health, app: axum::Router) -> std::io::Result<()> {
/// let shutdown = GracefulShutdown::new().health(health).drain(Duration::from_secs(5));
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
/// let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.signal());
/// // tonic: Server::builder().add_service(…).serve_with_shutdown(addr, shutdown.signal())
/// shutdown.run(server).await.unwrap_or(Ok(()))?; // in flight finished, or the deadline passed
/// // then flush the spans: telemetry.shutdown().await
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct GracefulShutdown {
    health: Option<Health>,
    drain: Duration,
    deadline: Duration,
    trigger: Arc<Notify>,
    /// Flips to `true` when the servers are told to stop accepting.
    stopping: watch::Sender<bool>,
    /// Started once, whichever clone's signal runs first.
    started: Arc<tokio::sync::OnceCell<()>>,
}

impl Default for GracefulShutdown {
    fn default() -> Self {
        GracefulShutdown::new()
    }
}

/// The in-flight deadline passed before the server finished.
#[derive(Debug, thiserror::Error)]
#[error("requests still in flight {0:?} after the servers stopped accepting")]
pub struct DeadlinePassed(pub Duration);

impl GracefulShutdown {
    /// On SIGTERM or SIGINT: drain 5 s, then 10 s for what is in flight.
    pub fn new() -> Self {
        GracefulShutdown {
            health: None,
            drain: Duration::from_secs(5),
            deadline: Duration::from_secs(10),
            trigger: Arc::new(Notify::new()),
            stopping: watch::channel(false).0,
            started: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// Sends `down` through this reporter first (readiness fails with it).
    pub fn health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// How long to keep serving after `down` (default 5 s).
    pub fn drain(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// How long requests in flight may take once the servers stop accepting (default 10 s).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Starts the sequence now, as a signal would.
    pub fn trigger(&self) {
        self.trigger.notify_one();
    }

    /// Whether the servers have been told to stop accepting.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves when the servers should stop accepting: after a signal (or
    /// [`trigger`](Self::trigger)), `down`, and the drain period. Give it to axum's
    /// `with_graceful_shutdown` or tonic's `serve_with_shutdown`.
    pub fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move {
            this.started
                .get_or_init(|| async {
                    tokio::select! {
                        () = this.trigger.notified() => {}
                        () = os_signal() => {}
                    }
                    if let Some(health) = &this.health {
                        health.shutdown().await;
                    }
                    tokio::time::sleep(this.drain).await;
                    this.stopping.send_replace(true);
                })
                .await;
            let mut stopping = this.stopping.subscribe();
            let _ = stopping.wait_for(|s| *s).await;
        }
    }

    /// Runs `server` (built with [`signal`](Self::signal)) until it returns; once the servers
    /// stop accepting, it has `deadline` to finish what is in flight, after which it is dropped
    /// (its connections closed) and `Err(DeadlinePassed)` returned.
    pub async fn run<F: IntoFuture>(&self, server: F) -> Result<F::Output, DeadlinePassed> {
        let mut server = std::pin::pin!(server.into_future());
        let mut stopping = self.stopping.subscribe();
        tokio::select! {
            output = &mut server => return Ok(output),
            _ = stopping.wait_for(|s| *s) => {}
        }
        tokio::time::timeout(self.deadline, server)
            .await
            .map_err(|_| DeadlinePassed(self.deadline))
    }
}

/// SIGTERM or SIGINT (Ctrl-C); never on a platform without them.
async fn os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
