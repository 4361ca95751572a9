//! What a connection is doing: how many requests (HTTP/2 streams) it has open, and since when
//! it has had none, so that the serve loop can close a connection that does nothing. Neither
//! hyper nor tonic closes an idle HTTP/2 connection: keep-alive pings close only peers that
//! do not answer, so a real client can idle for ever, and the HTTP/2 preface and a SETTINGS
//! frame are enough to hold a place under `--max-connections`.
//!
//! [`Counted`] wraps the service hyper calls for each request: the call opens a stream, and
//! the stream ends when its response body is dropped (hyper drops it once the last frame or
//! the trailers are handed to the connection, when the body fails, when the client resets
//! the stream, and when the connection goes), so a `Watch` stream or a long-poll counts as
//! open for as long as it lasts. [`Activity::closing`] says when and why the connection should
//! close: it never served a request within the first-request deadline, it has had nothing
//! open for the idle timeout, or the listener is full and it has been idle a while
//! ([`Pressure`]), as Envoy's overload manager shortens idle timeouts near its limits.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a connection must have been idle for a full listener to close it.
pub(super) const IDLE_BEFORE_EVICTION: Duration = Duration::from_secs(1);

/// A listener's signal that it is full: each time a connection finds no place, the connections
/// idle for [`IDLE_BEFORE_EVICTION`] close.
#[derive(Debug, Clone)]
pub(super) struct Pressure(Arc<watch::Sender<u64>>);

impl Default for Pressure {
    fn default() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }
}

impl Pressure {
    /// Signals that a connection is waiting for a place.
    pub(super) fn squeeze(&self) {
        self.0.send_modify(|generation| *generation += 1);
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// The requests of one connection.
#[derive(Debug, Clone, Copy)]
struct Streams {
    /// Open now.
    open: usize,
    /// When `open` last changed (or the connection was accepted).
    since: Instant,
    /// Whether any request came.
    served: bool,
}

/// The activity of one connection, shared by its service and its serve task.
#[derive(Debug, Clone)]
pub(super) struct Activity(Arc<watch::Sender<Streams>>);

/// Why a connection should close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closing {
    /// No request came within the first-request deadline (an HTTP/2 preface and nothing more).
    NeverStarted,
    /// Nothing open for the idle timeout.
    Idle,
    /// Idle while its listener is full.
    Evicted,
}

impl Closing {
    /// The `reason` label of `wayfinder_closed_idle_connections_total`.
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::NeverStarted => "never_started",
            Self::Idle => "idle",
            Self::Evicted => "evicted",
        }
    }
}

impl Activity {
    /// A connection accepted now, with nothing open.
    pub(super) fn new() -> Self {
        Self(Arc::new(
            watch::channel(Streams {
                open: 0,
                since: Instant::now(),
                served: false,
            })
            .0,
        ))
    }

    fn open(&self) -> StreamGuard {
        self.0.send_modify(|s| {
            s.open += 1;
            s.served = true;
            s.since = Instant::now();
        });
        StreamGuard(self.clone())
    }

    /// Waits until the connection should close: the first request has not come within `first`
    /// of its start, or nothing has been open for `idle`, or `pressure` squeezes while it has
    /// been idle for [`IDLE_BEFORE_EVICTION`].
    pub(super) async fn closing(
        &self,
        first: Duration,
        idle: Duration,
        pressure: &Pressure,
    ) -> Closing {
        let mut streams = self.0.subscribe();
        let mut squeezes = pressure.subscribe();
        loop {
            let now = *streams.borrow_and_update();
            if now.open > 0 {
                if streams.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                continue;
            }
            let (deadline, why) = if now.served {
                (now.since + idle, Closing::Idle)
            } else {
                (now.since + first, Closing::NeverStarted)
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return why,
                changed = streams.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                squeezed = squeezes.changed() => {
                    if squeezed.is_ok() && now.since.elapsed() >= IDLE_BEFORE_EVICTION {
                        return Closing::Evicted;
                    }
                    if squeezed.is_err() {
                        // The listener is gone: only the timers are left.
                        tokio::time::sleep_until(deadline).await;
                        return why;
                    }
                }
            }
        }
    }
}

/// One open request; it ends when dropped.
#[derive(Debug)]
struct StreamGuard(Activity);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        (self.0).0.send_modify(|s| {
            s.open = s.open.saturating_sub(1);
            s.since = Instant::now();
        });
    }
}

/// A hyper service that counts its requests in an [`Activity`].
#[derive(Debug, Clone)]
pub(super) struct Counted<S> {
    inner: S,
    activity: Activity,
}

impl<S> Counted<S> {
    pub(super) fn new(inner: S, activity: Activity) -> Self {
        Self { inner, activity }
    }
}

impl<S, R, B> hyper::service::Service<R> for Counted<S>
where
    S: hyper::service::Service<R, Response = http::Response<B>>,
{
    type Response = http::Response<GuardedBody<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn call(&self, request: R) -> Self::Future {
        // hyper calls this as the stream is accepted, before the handler runs.
        let guard = self.activity.open();
        ResponseFuture {
            inner: self.inner.call(request),
            guard: Some(guard),
        }
    }
}

pin_project! {
    /// The response of a [`Counted`] service: the stream stays open in its body.
    pub(super) struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<StreamGuard>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<GuardedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|inner| GuardedBody {
            inner,
            _guard: guard,
        })))
    }
}

pin_project! {
    /// A response body that keeps its stream open until it is dropped.
    pub(super) struct GuardedBody<B> {
        #[pin]
        inner: B,
        _guard: Option<StreamGuard>,
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, Full};
    use hyper::service::Service as _;

    /// A service that answers "hi".
    #[derive(Clone)]
    struct Hello;

    impl hyper::service::Service<()> for Hello {
        type Response = http::Response<Full<Bytes>>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn call(&self, (): ()) -> Self::Future {
            std::future::ready(Ok(http::Response::new(Full::new(Bytes::from("hi")))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_asks_closes_at_the_first_deadline() {
        let activity = Activity::new();
        let pressure = Pressure::default();
        let started = Instant::now();
        let why = activity
            .closing(Duration::from_secs(10), Duration::from_secs(120), &pressure)
            .await;
        assert_eq!(why, Closing::NeverStarted);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_stream_holds_the_connection_and_idleness_counts_from_its_end() {
        let activity = Activity::new();
        let pressure = Pressure::default();
        let response = Counted::new(Hello, activity.clone())
            .call(())
            .await
            .unwrap();
        let watcher = tokio::spawn({
            let activity = activity.clone();
            async move {
                activity
                    .closing(
                        Duration::from_secs(10),
                        Duration::from_secs(120),
                        &Pressure::default(),
                    )
                    .await
            }
        });
        // A long answer (a Watch stream): an hour open is not idle.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(
            !watcher.is_finished(),
            "a connection with a stream open stays"
        );
        let ended = Instant::now();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hi");
        // The body is read; the stream ends when it is dropped.
        assert_eq!(watcher.await.unwrap(), Closing::Idle);
        assert_eq!(ended.elapsed(), Duration::from_secs(120));
        drop(pressure);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_listener_closes_connections_idle_for_a_while() {
        let pressure = Pressure::default();
        let fresh = Activity::new();
        let watcher = tokio::spawn({
            let (fresh, pressure) = (fresh.clone(), pressure.clone());
            async move {
                fresh
                    .closing(Duration::from_secs(10), Duration::from_secs(120), &pressure)
                    .await
            }
        });
        tokio::task::yield_now().await;
        pressure.squeeze();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !watcher.is_finished(),
            "half a second idle: not yet evicted"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        pressure.squeeze();
        assert_eq!(watcher.await.unwrap(), Closing::Evicted);
        drop(fresh);
    }
}
