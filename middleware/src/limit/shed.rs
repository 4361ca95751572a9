//! A concurrency limit that sheds what is over it: tower's `ConcurrencyLimit`, with the
//! `LoadShed` rule (a service that is not ready refuses at once instead of queueing) applied
//! here so that a refusal is an answer — 503 with `Retry-After`, or gRPC `UNAVAILABLE` — and
//! the error type stays the inner service's (axum's routers need `Infallible`; tower's
//! `LoadShed` boxes every error to add its own `Overloaded`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::limit::ConcurrencyLimit;
use tower::{Layer, Service};

use super::SHED_RETRY_AFTER;
use super::reject::{Refusal, refuse};

/// At most `max` requests in flight (to their response head); the others get 503 at once.
#[derive(Clone, Debug)]
pub struct ShedLayer {
    semaphore: Arc<tokio::sync::Semaphore>,
    shed: Arc<AtomicU64>,
}

impl ShedLayer {
    /// At most `max` requests at once, across every clone of the service.
    pub fn new(max: usize) -> Self {
        ShedLayer {
            semaphore: Arc::new(tokio::sync::Semaphore::new(max.max(1))),
            shed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Requests shed so far.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner: ConcurrencyLimit::with_semaphore(inner, self.semaphore.clone()),
            overloaded: false,
            shed: self.shed.clone(),
        }
    }
}

/// The service of [`ShedLayer`].
#[derive(Clone, Debug)]
pub struct Shed<S> {
    inner: ConcurrencyLimit<S>,
    overloaded: bool,
    shed: Arc<AtomicU64>,
}

impl<S, B, ResBody> Service<Request<B>> for Shed<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // LoadShed's rule: not ready is not a wait, it is a refusal.
        match self.inner.poll_ready(cx) {
            Poll::Pending => {
                self.overloaded = true;
                Poll::Ready(Ok(()))
            }
            other => {
                self.overloaded = false;
                other
            }
        }
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if std::mem::take(&mut self.overloaded) {
            self.shed.fetch_add(1, Ordering::Relaxed);
            let response = refuse(request.headers(), Refusal::Overloaded, SHED_RETRY_AFTER);
            return Box::pin(async move { Ok(response) });
        }
        Box::pin(self.inner.call(request))
    }
}
