//! The request body the balancer sends down: kept in memory when it is small enough to be sent
//! again (so that the request can be retried), streamed once otherwise.
//!
//! Buffering reads the body's frames up to `max_replay_bytes`; a body that ends within the
//! limit becomes replayable, a longer one is passed on as what was read followed by the rest,
//! and its request is not retried (linkerd's `ReplayBody` makes the same cut). A body that does
//! not end within [`REPLAY_WAIT`] (a client stream that stays open) is passed on the same way,
//! so that buffering never holds a streaming call back.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::BoxError;

/// The body of a balanced request, as the inner client receives it: build your hyper-util
/// client over it (`Client::builder(…).build_http::<RequestBody>()`).
#[derive(Debug)]
pub struct RequestBody {
    inner: Inner,
}

enum Inner {
    Full {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Stream {
        read: VecDeque<Frame<Bytes>>,
        rest: UnsyncBoxBody<Bytes, BoxError>,
    },
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inner::Full { data, .. } => f
                .debug_struct("Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Inner::Stream { .. } => f.write_str("Stream"),
        }
    }
}

impl RequestBody {
    /// A body of these bytes.
    pub fn full(data: Bytes) -> Self {
        RequestBody {
            inner: Inner::Full {
                data: (!data.is_empty()).then_some(data),
                trailers: None,
            },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        RequestBody::full(Bytes::new())
    }

    /// A copy, while the body is held whole (read for replay); `None` when it streams.
    pub(crate) fn try_clone(&self) -> Option<RequestBody> {
        match &self.inner {
            Inner::Full { data, trailers } => Some(RequestBody {
                inner: Inner::Full {
                    data: data.clone(),
                    trailers: trailers.clone(),
                },
            }),
            Inner::Stream { .. } => None,
        }
    }
}

impl Default for RequestBody {
    fn default() -> Self {
        RequestBody::empty()
    }
}

/// How long buffering waits for a body to end before it streams it instead.
pub(crate) const REPLAY_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// A request body read for replay.
#[derive(Debug)]
pub(crate) enum Buffered {
    /// All of it, which can be sent any number of times.
    Replayable {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Too large: sent once.
    Once(RequestBody),
}

impl Buffered {
    /// Reads `body` up to `limit` bytes.
    pub(crate) async fn read<B>(body: B, limit: usize) -> Result<Self, BoxError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if body.size_hint().lower() > limit as u64 {
            return Ok(Buffered::Once(stream(VecDeque::new(), body)));
        }
        let mut body = Box::pin(body);
        let mut read = VecDeque::new();
        let mut len = 0usize;
        let mut trailers = None;
        let until = tokio::time::Instant::now() + REPLAY_WAIT;
        loop {
            // `frame()` only polls the body: dropping it on the timeout loses nothing.
            let Ok(frame) = tokio::time::timeout_at(until, body.frame()).await else {
                if let Some(trailers) = trailers {
                    read.push_back(Frame::trailers(trailers));
                }
                return Ok(Buffered::Once(stream(read, body)));
            };
            let Some(frame) = frame else { break };
            let frame = frame.map_err(Into::into)?;
            if let Some(data) = frame.data_ref() {
                len += data.len();
            } else if let Some(t) = frame.trailers_ref() {
                trailers = Some(t.clone());
                continue;
            }
            read.push_back(frame);
            if len > limit {
                return Ok(Buffered::Once(stream(read, body)));
            }
        }
        let mut data = BytesMut::with_capacity(len);
        for frame in read {
            if let Ok(chunk) = frame.into_data() {
                data.extend_from_slice(&chunk);
            }
        }
        Ok(Buffered::Replayable {
            data: data.freeze(),
            trailers,
        })
    }

    /// Passes `body` on without reading it (no retries for this call).
    pub(crate) fn once<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Buffered::Once(stream(VecDeque::new(), body))
    }

    /// Whether the request can be sent again.
    #[cfg(test)]
    pub(crate) fn replayable(&self) -> bool {
        matches!(self, Buffered::Replayable { .. })
    }

    /// The body for the next attempt: a copy when replayable, else the body itself (once).
    pub(crate) fn next(&mut self) -> RequestBody {
        match self {
            Buffered::Replayable { data, trailers } => RequestBody {
                inner: Inner::Full {
                    data: (!data.is_empty()).then(|| data.clone()),
                    trailers: trailers.clone(),
                },
            },
            Buffered::Once(body) => std::mem::take(body),
        }
    }
}

fn stream<B>(read: VecDeque<Frame<Bytes>>, rest: B) -> RequestBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    RequestBody {
        inner: Inner::Stream {
            read,
            rest: rest.map_err(Into::into).boxed_unsync(),
        },
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().inner {
            Inner::Full { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            Inner::Stream { read, rest } => {
                if let Some(frame) = read.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                Pin::new(rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Inner::Stream { read, rest } => read.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Inner::Stream { read, rest } => {
                let buffered: u64 = read
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.len() as u64)
                    .sum();
                let hint = rest.size_hint();
                let mut total = SizeHint::new();
                total.set_lower(hint.lower() + buffered);
                if let Some(upper) = hint.upper() {
                    total.set_upper(upper + buffered);
                }
                total
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    async fn collect(body: RequestBody) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stays_open_is_streamed_not_awaited() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        tx.send(Bytes::from_static(b"first")).await.unwrap();
        let started = tokio::time::Instant::now();
        let mut buffered = Buffered::read(Open(rx), 1024).await.unwrap();
        assert_eq!(
            tokio::time::Instant::now() - started,
            REPLAY_WAIT,
            "waited no longer"
        );
        assert!(!buffered.replayable(), "an open stream is sent once");
        let mut body = buffered.next();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "first", "what was read comes first");
        tx.send(Bytes::from_static(b"second")).await.unwrap();
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(second, "second", "then the rest, as it comes");
    }

    /// A body fed by a channel: open until the sender is dropped.
    struct Open(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Open {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.get_mut()
                .0
                .poll_recv(cx)
                .map(|c| c.map(|c| Ok(Frame::data(c))))
        }
    }

    #[tokio::test]
    async fn small_bodies_replay_and_large_ones_stream_once() {
        let mut small = Buffered::read(Full::new(Bytes::from_static(b"hello")), 16)
            .await
            .unwrap();
        assert!(small.replayable(), "5 bytes fit in 16");
        assert_eq!(collect(small.next()).await, "hello");
        assert_eq!(collect(small.next()).await, "hello", "sent again");

        // A body of unknown length, longer than the limit: what was read, then the rest.
        let chunks = (0..10u8).map(|i| Bytes::from(vec![b'a' + i; 4])).collect();
        let mut large = Buffered::read(Chunks(chunks), 16).await.unwrap();
        assert!(!large.replayable(), "40 bytes do not fit in 16");
        let all = collect(large.next()).await;
        assert_eq!(all.len(), 40, "nothing read for the check is lost");
        assert_eq!(&all[..8], b"aaaabbbb");

        let known = Full::new(Bytes::from(vec![0u8; 100]));
        assert!(
            !Buffered::read(known, 16).await.unwrap().replayable(),
            "a known length over the limit is not read at all"
        );
    }

    /// A body of these chunks, of unknown length.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }
}
