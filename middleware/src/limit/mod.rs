//! Protecting a server from overload: a token-bucket rate limit, global or per key
//! ([`RateLimitLayer`], on `governor`'s GCRA), and a concurrency limit that sheds what is over
//! it ([`ShedLayer`], tower's `ConcurrencyLimit` + `LoadShed`). A refused request gets HTTP 429
//! (rate) or 503 (overload) with `Retry-After`, or for gRPC `RESOURCE_EXHAUSTED` /
//! `UNAVAILABLE` with `RetryInfo` and `grpc-retry-pushback-ms`. Put the layers inside
//! [`ServerLayer`](crate::ServerLayer), so that the request's span records the refusal.
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use wayfinder_middleware::ServerLayer;
//! use wayfinder_middleware::limit::{KeyBy, RateLimitLayer, ShedLayer};
//!
//! let app: Router = Router::new()
//!     .route("/orders", get(|| async { "orders" }))
//!     .layer(ShedLayer::new(256))                                    // at most 256 at once
//!     .layer(RateLimitLayer::per_second(100, 20).key(KeyBy::ClientIp)) // 100/s, bursts of 20, per client
//!     .layer(ServerLayer::new());
//! # let _ = app;
//! ```

mod reject;
mod shed;

use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::Clock;
use governor::{Quota, RateLimiter};
use http::{HeaderName, Request, Response};
use tower::{Layer, Service};

pub use shed::{Shed, ShedLayer};

use reject::{Refusal, refuse};

/// governor's clock on tokio's time, so that limits follow tokio's paused clock in tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// What a request is counted by.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyBy {
    /// One bucket for all requests.
    Global,
    /// One bucket per client IP (the connection's peer: axum's `ConnectInfo<SocketAddr>` or
    /// tonic's `TcpConnectInfo`; requests without one share a bucket).
    ClientIp,
    /// One bucket per value of this header (e.g. an API key; requests without it share one).
    Header(HeaderName),
    /// One bucket per route (axum's `MatchedPath`, else the path).
    Route,
}

/// One bucket for everything: no table, no key to build.
type Direct = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    TokioClock,
    governor::middleware::NoOpMiddleware<std::time::Instant>,
>;

type Keyed = RateLimiter<
    String,
    governor::state::keyed::DashMapStateStore<String>,
    TokioClock,
    governor::middleware::NoOpMiddleware<std::time::Instant>,
>;

/// Most keys tracked; past it, recent-only keys are kept and new ones share one bucket.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// The key every request without its own shares, and every new key once the table is full.
const SHARED_KEY: &str = "";

/// How often (in calls) the size of the key table is read while it is far from full: reading
/// it locks every shard of the map, which is too dear for every request.
const SIZE_CHECK_EVERY: u64 = 64;

/// A token-bucket rate limit as a tower layer.
#[derive(Clone)]
pub struct RateLimitLayer {
    direct: Arc<Direct>,
    limiter: Arc<Keyed>,
    key: KeyBy,
    max_keys: usize,
    refused: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
    near_full: Arc<AtomicBool>,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("key", &self.key)
            .field("keys", &self.limiter.len())
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// `rate` requests a second with bursts of up to `burst` (at least 1 each), one bucket
    /// for everything until [`key`](Self::key) says otherwise.
    pub fn per_second(rate: u32, burst: u32) -> Self {
        let rate = NonZeroU32::new(rate.max(1)).expect("at least 1");
        let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
        RateLimitLayer::quota(Quota::per_second(rate).allow_burst(burst))
    }

    /// Any `governor` quota.
    pub fn quota(quota: Quota) -> Self {
        RateLimitLayer {
            direct: Arc::new(RateLimiter::direct_with_clock(quota, TokioClock)),
            limiter: Arc::new(RateLimiter::dashmap_with_clock(quota, TokioClock)),
            key: KeyBy::Global,
            max_keys: DEFAULT_MAX_KEYS,
            refused: Arc::new(AtomicU64::new(0)),
            calls: Arc::new(AtomicU64::new(0)),
            near_full: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The bucket `key` is counted in: its own, or the shared one once the table is full
    /// (after dropping the keys that have refilled). The table's size is read every
    /// [`SIZE_CHECK_EVERY`] calls, and on every call once it is within that many of the cap,
    /// so that it never grows past `max_keys`.
    fn bucket(&self, key: String) -> String {
        let periodic = self
            .calls
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SIZE_CHECK_EVERY);
        if !periodic && !self.near_full.load(Ordering::Relaxed) {
            return key;
        }
        let limiter = &self.limiter;
        let mut len = limiter.len();
        if len >= self.max_keys {
            limiter.retain_recent();
            len = limiter.len();
        }
        let margin = usize::try_from(SIZE_CHECK_EVERY).unwrap_or(usize::MAX);
        self.near_full.store(
            len.saturating_add(margin) >= self.max_keys,
            Ordering::Relaxed,
        );
        if len >= self.max_keys {
            SHARED_KEY.to_owned()
        } else {
            key
        }
    }

    /// Counts requests by `key` (each key its own bucket).
    pub fn key(mut self, key: KeyBy) -> Self {
        self.key = key;
        self
    }

    /// At most this many keys (default [`DEFAULT_MAX_KEYS`]).
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = max.max(1);
        self
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

impl<S> RateLimit<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn key_of<B>(request: &Request<B>, by: &KeyBy) -> String {
    match by {
        KeyBy::Global => SHARED_KEY.to_owned(),
        KeyBy::ClientIp => client_ip(request).map_or_else(String::new, |ip| ip.to_string()),
        KeyBy::Header(name) => request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(SHARED_KEY)
            .to_owned(),
        KeyBy::Route => crate::http::matched_route(request.extensions())
            .unwrap_or_else(|| request.uri().path())
            .to_owned(),
    }
}

fn client_ip<B>(request: &Request<B>) -> Option<IpAddr> {
    crate::http::peer_address(request).map(|address| address.ip())
}

impl<S, B, ResBody> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let checked = match &self.layer.key {
            KeyBy::Global => self.layer.direct.check(),
            by => {
                let key = self.layer.bucket(key_of(&request, by));
                self.layer.limiter.check_key(&key)
            }
        };
        match checked {
            Ok(()) => ResponseFuture::admitted(self.inner.call(request)),
            Err(not_until) => {
                self.layer.refused.fetch_add(1, Ordering::Relaxed);
                let wait = not_until.wait_time_from(TokioClock.now());
                ResponseFuture::refused(refuse(request.headers(), Refusal::Rate, wait))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`RateLimit`]: the inner service's, or the refusal at once.
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Admitted { #[pin] inner: F },
        Refused { response: Option<Response<B>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    fn admitted(inner: F) -> Self {
        ResponseFuture {
            state: State::Admitted { inner },
        }
    }

    fn refused(response: Response<B>) -> Self {
        ResponseFuture {
            state: State::Refused {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Admitted { inner } => inner.poll(cx),
            StateProj::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

/// How long to ask a shed request to wait.
pub(crate) const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests;
