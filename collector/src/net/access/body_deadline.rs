//! The deadline for a request body: all of it must have arrived within `--body-read-timeout`
//! of its headers, as Go's `http.Server.ReadTimeout` (the OpenTelemetry Collector's
//! `read_timeout`) bounds a request. Headers have hyper's header-read timeout; without this, a
//! client that sends its headers and then one byte a minute would hold its connection for as
//! long as it liked. A deadline for the whole body, not for the gap between two chunks (nginx's
//! `client_body_timeout`): a gap timeout still lets a body arrive a byte at a time.
//!
//! Past the deadline the body yields [`BodyTimedOut`]; the OTLP receivers answer 408 with
//! `reason="body_timeout"`, the query API refuses the request, and the connection closes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} of its headers")]
pub(crate) struct BodyTimedOut(pub Duration);

impl BodyTimedOut {
    /// Whether `error` (or an error it wraps) is a body that timed out.
    pub(crate) fn is_cause_of(error: &(dyn std::error::Error + 'static)) -> bool {
        std::iter::successors(Some(error), |e| e.source()).any(|e| e.is::<Self>())
    }
}

/// The listeners' time limits, shared by every connection and changed in place by a
/// configuration reload: how long a connection has for its first bytes or TLS handshake, for
/// its first request, and an HTTP/1 request for its headers (`--header-read-timeout`), how
/// long a request's body may take after them (`--body-read-timeout`), and how long a
/// connection may have nothing open (`--idle-timeout`). A connection or request takes the
/// limits in force when it starts.
///
/// (Its example runs as the unit test `examples::example_deadlines`.)
#[derive(Debug, Clone)]
pub struct Deadlines(Arc<[AtomicU64; 3]>);

/// `--header-read-timeout`'s default.
pub(crate) const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// `--body-read-timeout`'s default.
pub(crate) const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// `--idle-timeout`'s default: longer than the gaps between an exporter's batches or
/// Prometheus' scrapes, so that their connections are kept (nginx keeps an idle client 75 s);
/// a full listener closes idle connections sooner.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

impl Default for Deadlines {
    /// The defaults of `--header-read-timeout` (10 s), `--body-read-timeout` (30 s) and
    /// `--idle-timeout` (2 min).
    fn default() -> Self {
        Self::new(
            DEFAULT_HEADER_READ_TIMEOUT,
            DEFAULT_BODY_READ_TIMEOUT,
            DEFAULT_IDLE_TIMEOUT,
        )
    }
}

impl Deadlines {
    /// The header, body and idle limits.
    pub fn new(headers: Duration, body: Duration, idle: Duration) -> Self {
        let deadlines = Self(Arc::new([
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
        ]));
        deadlines.set(headers, body, idle);
        deadlines
    }

    /// Changes the limits, for the connections and requests that start from now on.
    pub fn set(&self, headers: Duration, body: Duration, idle: Duration) {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0[0].store(nanos(headers), Ordering::Relaxed);
        self.0[1].store(nanos(body), Ordering::Relaxed);
        self.0[2].store(nanos(idle), Ordering::Relaxed);
    }

    /// How long a connection may have nothing open before it is closed.
    pub fn idle(&self) -> Duration {
        Duration::from_nanos(self.0[2].load(Ordering::Relaxed))
    }

    /// A connection's time to start, and an HTTP/1 request's for its headers.
    pub fn headers(&self) -> Duration {
        Duration::from_nanos(self.0[0].load(Ordering::Relaxed))
    }

    /// A request's time for its whole body after its headers.
    pub fn body(&self) -> Duration {
        Duration::from_nanos(self.0[1].load(Ordering::Relaxed))
    }
}

pin_project! {
    /// `inner`, failing with [`BodyTimedOut`] once `deadline` passes before its end.
    pub(crate) struct DeadlineBody<B> {
        #[pin]
        inner: B,
        #[pin]
        deadline: Sleep,
        timeout: Duration,
        // Set once the timeout was reported: the body then ends, so it is reported once.
        timed_out: bool,
    }
}

impl<B> DeadlineBody<B> {
    /// `inner`, due within `timeout` from now.
    pub(crate) fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: tokio::time::sleep(timeout),
            timeout,
            timed_out: false,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.timed_out {
            return Poll::Ready(None);
        }
        // What has arrived is taken first: a body complete at the deadline is not refused.
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.deadline.poll(cx) {
            Poll::Ready(()) => {
                *this.timed_out = true;
                Poll::Ready(Some(Err(Box::new(BodyTimedOut(*this.timeout)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn chunk(text: &'static str) -> Result<Frame<Bytes>, std::convert::Infallible> {
        Ok(Frame::data(Bytes::from_static(text.as_bytes())))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_arrives_in_time_is_whole() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let body = DeadlineBody::new(
            StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            Duration::from_secs(30),
        );
        tokio::spawn(async move {
            for part in ["a", "b", "c"] {
                tokio::time::sleep(Duration::from_secs(9)).await;
                tx.send(chunk(part)).await.expect("the body is read");
            }
        });
        let bytes = body.collect().await.expect("in time").to_bytes();
        assert_eq!(&bytes[..], b"abc");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_dribbles_past_the_deadline_fails() {
        // A chunk every 9 s never pauses long, but the whole takes 36 s: refused at 30 s.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let body = DeadlineBody::new(
            StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            Duration::from_secs(30),
        );
        tokio::spawn(async move {
            for part in ["a", "b", "c", "d"] {
                tokio::time::sleep(Duration::from_secs(9)).await;
                if tx.send(chunk(part)).await.is_err() {
                    return;
                }
            }
        });
        let started = tokio::time::Instant::now();
        let mut body = std::pin::pin!(body);
        let mut received = Vec::new();
        let error = loop {
            match body.frame().await.expect("an error before the end") {
                Ok(frame) => received.extend_from_slice(&frame.into_data().expect("data")),
                Err(error) => break error,
            }
        };
        assert_eq!(&received[..], b"abc", "what arrived in time was passed on");
        assert!(body.frame().await.is_none(), "reported once, then the end");
        assert!(body.is_end_stream());
        assert!(BodyTimedOut::is_cause_of(&*error), "{error}");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(
            error.to_string(),
            "the request body did not arrive within 30s of its headers"
        );
    }
}

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[test]
    fn example_deadlines() {
        use crate::net::access::Deadlines;
        use std::time::Duration;

        let s = Duration::from_secs;
        let deadlines = Deadlines::new(s(10), s(30), s(120));
        let shared = deadlines.clone();
        deadlines.set(s(5), s(60), s(30));
        assert_eq!(
            (shared.headers(), shared.body(), shared.idle()),
            (s(5), s(60), s(30))
        );
    }
}
