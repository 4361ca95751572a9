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
//! open for the idle timeout, the listener is full and it has been idle a while
//! ([`Pressure`]), as Envoy's overload manager shortens idle timeouts near its limits, or a
//! frame of an answer has waited for the client to take it for the idle timeout (a client
//! that opens its window to nothing, or never reads, would otherwise hold its place with an
//! answer it never takes: nginx's `send_timeout`).

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
pub(crate) const IDLE_BEFORE_EVICTION: Duration = Duration::from_secs(1);

/// A listener's signal that it is full: each time a connection finds no place, the connections
/// idle for [`IDLE_BEFORE_EVICTION`] close.
#[derive(Debug, Clone)]
pub(crate) struct Pressure(Arc<watch::Sender<u64>>);

impl Default for Pressure {
    fn default() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }
}

impl Pressure {
    /// Signals that a connection is waiting for a place.
    pub(crate) fn squeeze(&self) {
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
    /// Answers waiting for the connection to ask for their next frame (a frame handed and
    /// the body not asked for more, or the first frame not asked for yet), and since when
    /// one has been.
    stalled: usize,
    stalled_since: Instant,
}

/// The activity of one connection, shared by its service and its serve task.
#[derive(Debug, Clone)]
pub(crate) struct Activity(Arc<watch::Sender<Streams>>);

/// Why a connection should close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    /// No request came within the first-request deadline (an HTTP/2 preface and nothing more).
    NeverStarted,
    /// Nothing open for the idle timeout.
    Idle,
    /// Idle while its listener is full.
    Evicted,
    /// An answer's frame waited for the client to take it for the idle timeout.
    Stalled,
}

impl Closing {
    /// The `reason` label of `wayfinder_closed_idle_connections_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::NeverStarted => "never_started",
            Self::Idle => "idle",
            Self::Evicted => "evicted",
            Self::Stalled => "stalled",
        }
    }
}

impl Activity {
    /// A connection accepted now, with nothing open.
    pub(crate) fn new() -> Self {
        Self(Arc::new(
            watch::channel(Streams {
                open: 0,
                since: Instant::now(),
                served: false,
                stalled: 0,
                stalled_since: Instant::now(),
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

    /// An answer handed a frame, or had it taken.
    fn stall(&self, stalled: bool) {
        self.0.send_modify(|s| {
            if stalled {
                if s.stalled == 0 {
                    s.stalled_since = Instant::now();
                }
                s.stalled += 1;
            } else {
                s.stalled = s.stalled.saturating_sub(1);
            }
        });
    }

    /// Waits until the connection should close: the first request has not come within `first`
    /// of its start, or nothing has been open for `idle`, or `pressure` squeezes while it has
    /// been idle for [`IDLE_BEFORE_EVICTION`].
    pub(crate) async fn closing(
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
                let stalled = now.stalled > 0;
                tokio::select! {
                    () = tokio::time::sleep_until(now.stalled_since + idle), if stalled => {
                        return Closing::Stalled;
                    }
                    changed = streams.changed() => {
                        if changed.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
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
pub(crate) struct Counted<S> {
    inner: S,
    activity: Activity,
}

impl<S> Counted<S> {
    pub(crate) fn new(inner: S, activity: Activity) -> Self {
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
    pub(crate) struct ResponseFuture<F> {
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
        // The answer is ready: it waits for the connection to ask for its first frame (a
        // client whose window is zero never lets it).
        if let Some(guard) = &guard {
            guard.0.stall(true);
        }
        Poll::Ready(Ok(response.map(|inner| GuardedBody {
            inner,
            handed: guard.is_some(),
            guard,
        })))
    }
}

pin_project! {
    /// A response body that keeps its stream open until it is dropped, and says whether a
    /// frame it handed is still waiting for the client to take it.
    pub(crate) struct GuardedBody<B> {
        #[pin]
        inner: B,
        guard: Option<StreamGuard>,
        // A data frame was handed, and the body not asked for more since.
        handed: bool,
    }

    impl<B> PinnedDrop for GuardedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.handed && let Some(guard) = this.guard.as_ref() {
                guard.0.stall(false);
            }
        }
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
        let this = self.project();
        let activity = this.guard.as_ref().map(|guard| &guard.0);
        if std::mem::take(this.handed)
            && let Some(activity) = activity
        {
            activity.stall(false);
        }
        let frame = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame
            && frame.is_data()
            && let Some(activity) = activity
        {
            *this.handed = true;
            activity.stall(true);
        }
        frame
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

    /// Why `activity`'s connection closes, awaited in a task: 10 s for its first request,
    /// 2 minutes of idleness.
    fn closing_of(activity: &Activity, pressure: &Pressure) -> tokio::task::JoinHandle<Closing> {
        let (activity, pressure) = (activity.clone(), pressure.clone());
        tokio::spawn(async move {
            activity
                .closing(Duration::from_secs(10), Duration::from_secs(120), &pressure)
                .await
        })
    }

    /// A service whose answer never has a frame (a Watch stream between updates).
    #[derive(Clone)]
    struct Quiet;

    impl hyper::service::Service<()> for Quiet {
        type Response = http::Response<
            http_body_util::StreamBody<
                futures::stream::Pending<Result<Frame<Bytes>, std::convert::Infallible>>,
            >,
        >;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn call(&self, (): ()) -> Self::Future {
            let body = http_body_util::StreamBody::new(futures::stream::pending());
            std::future::ready(Ok(http::Response::new(body)))
        }
    }

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
        let response = Counted::new(Quiet, activity.clone())
            .call(())
            .await
            .unwrap();
        let watcher = closing_of(&activity, &Pressure::default());
        // A long answer (a Watch stream), asked for its next frame and waiting for one: an
        // hour open is not idle, nor stalled.
        let reader = tokio::spawn(async move {
            let mut body = response.into_body();
            let _ = body.frame().await;
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(
            !watcher.is_finished(),
            "a connection with a stream open stays"
        );
        let ended = Instant::now();
        // The stream ends when its body is dropped.
        reader.abort();
        assert_eq!(watcher.await.unwrap(), Closing::Idle);
        assert_eq!(ended.elapsed(), Duration::from_secs(120));
        drop(pressure);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_the_client_never_takes_closes_its_connection() {
        let activity = Activity::new();
        let pressure = Pressure::default();
        // The answer is ready, and nobody asks for it (an HTTP/2 window of zero).
        let response = Counted::new(Hello, activity.clone())
            .call(())
            .await
            .unwrap();
        let started = Instant::now();
        let why = activity
            .closing(Duration::from_secs(10), Duration::from_secs(120), &pressure)
            .await;
        assert_eq!(why, Closing::Stalled);
        assert_eq!(started.elapsed(), Duration::from_secs(120));
        drop(response);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_taken_frame_by_frame_is_not_stalled() {
        let activity = Activity::new();
        let mut response = Counted::new(Hello, activity.clone())
            .call(())
            .await
            .unwrap();
        let watcher = closing_of(&activity, &Pressure::default());
        // Its one frame is taken, and the body asked again (it has ended); the stream stays
        // open past the timeout while the body lives, without being stalled.
        let body = response.body_mut();
        assert!(body.frame().await.unwrap().unwrap().is_data());
        assert!(body.frame().await.is_none());
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert!(
            !watcher.is_finished(),
            "open, and not waiting on the client"
        );
        drop(response);
        assert_eq!(watcher.await.unwrap(), Closing::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_listener_closes_connections_idle_for_a_while() {
        let pressure = Pressure::default();
        let fresh = Activity::new();
        let watcher = closing_of(&fresh, &pressure);
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
