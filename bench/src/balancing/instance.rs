//! One instance of the fleet: a real axum server on loopback whose service times are drawn from
//! a lognormal, behind a concurrency limit so that requests queue as they do on a real server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, LogNormal};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;

/// How an instance misbehaves, if it does.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fault {
    /// Service times multiplied by this (1 = normal).
    pub slowdown: f64,
    /// Share of requests answered at once with a 500.
    pub fail_rate: f64,
    /// A stop-the-world pause of `.0` every `.1`, as a garbage collector makes.
    pub pause: Option<(Duration, Duration)>,
}

impl Fault {
    /// A healthy instance.
    pub fn none() -> Self {
        Fault {
            slowdown: 1.0,
            ..Fault::default()
        }
    }
}

/// The shape of every instance's service time.
#[derive(Debug, Clone, Copy)]
pub struct ServiceTime {
    /// Median.
    pub median: Duration,
    /// σ of the underlying normal.
    pub sigma: f64,
    /// Requests served at once; the others wait.
    pub concurrency: usize,
}

impl ServiceTime {
    /// The mean of the lognormal: `median × e^(σ²/2)`.
    pub fn mean(&self) -> Duration {
        self.median.mul_f64((self.sigma * self.sigma / 2.0).exp())
    }

    /// Requests per second one instance serves at most.
    pub fn capacity(&self) -> f64 {
        self.concurrency as f64 / self.mean().as_secs_f64()
    }
}

struct Served {
    received: AtomicU64,
    fault: Fault,
    started: Instant,
    limit: Semaphore,
    times: LogNormal<f64>,
    rng: Mutex<SmallRng>,
}

impl Served {
    /// What is left of a pause at `now`, if one is on.
    fn paused_for(&self, now: Instant) -> Duration {
        let Some((pause, every)) = self.fault.pause else {
            return Duration::ZERO;
        };
        let phase = Duration::from_nanos(
            (now.saturating_duration_since(self.started).as_nanos() % every.as_nanos()) as u64,
        );
        pause.saturating_sub(phase)
    }
}

/// A running instance.
pub struct Instance {
    /// Where it listens.
    pub addr: SocketAddr,
    served: Arc<Served>,
    _stop: oneshot::Sender<()>,
}

impl Instance {
    /// Starts an instance on a loopback port.
    pub async fn start(time: ServiceTime, fault: Fault, seed: u64) -> anyhow::Result<Self> {
        let mu = time.median.as_secs_f64().ln();
        let served = Arc::new(Served {
            received: AtomicU64::new(0),
            fault,
            started: Instant::now(),
            limit: Semaphore::new(time.concurrency),
            times: LogNormal::new(mu, time.sigma)?,
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
        });
        let app = Router::new()
            .route("/work", get(work))
            .with_state(served.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Instance {
            addr,
            served,
            _stop: stop,
        })
    }

    /// Requests it received so far.
    pub fn received(&self) -> u64 {
        self.served.received.load(Ordering::Relaxed)
    }
}

async fn work(State(served): State<Arc<Served>>) -> (http::StatusCode, &'static str) {
    served.received.fetch_add(1, Ordering::Relaxed);
    let (fail, time) = {
        let mut rng = served.rng.lock();
        let fail = served.fault.fail_rate > 0.0
            && rand::Rng::random::<f64>(&mut *rng) < served.fault.fail_rate;
        (fail, served.times.sample(&mut *rng))
    };
    if fail {
        return (http::StatusCode::INTERNAL_SERVER_ERROR, "failed fast");
    }
    // The world stops for everyone during a pause: waiting requests and those being served.
    let paused = served.paused_for(Instant::now());
    if !paused.is_zero() {
        tokio::time::sleep(paused).await;
    }
    let Ok(_permit) = served.limit.acquire().await else {
        return (http::StatusCode::SERVICE_UNAVAILABLE, "stopping");
    };
    tokio::time::sleep(Duration::from_secs_f64(time * served.fault.slowdown)).await;
    let paused = served.paused_for(Instant::now());
    if !paused.is_zero() {
        tokio::time::sleep(paused).await;
    }
    (http::StatusCode::OK, "done")
}
