//! The response future of [`Balance`](super::Balance): read the body so that it can be sent
//! again (up to `max_replay_bytes`), then the attempts ([`Attempts`]) under tower's
//! [`Retry`] with the [`ResendPolicy`], then the outcome as the caller reads it (a timeout past
//! the call's deadline says so; for gRPC, a `tonic::Status`).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::request::Parts;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;
use tower::retry::Retry;
use tower::util::Oneshot;

use super::attempt::Attempts;
use super::body::{Buffered, RequestBody};
use super::error::{BalanceError, GrpcCode, for_caller, grpc_status};
use super::policy::ResendPolicy;
use crate::BoxError;

/// The attempts of one call, resent by the policy.
type Resending<S> = Retry<ResendPolicy, Attempts<S>>;

/// Reading a body for replay.
type Reading = Pin<Box<dyn Future<Output = Result<Buffered, BoxError>> + Send + 'static>>;

pin_project! {
    /// The response future of [`Balance`](super::Balance).
    pub struct ResponseFuture<S, ResBody>
    where
        S: Service<Request<RequestBody>, Response = Response<ResBody>>,
        S: Clone,
        S::Error: Into<BoxError>,
    {
        #[pin]
        state: State<S, ResBody>,
        // When the call must be done, and the limit that made it (for the error).
        deadline: Instant,
        limit: Duration,
        grpc: bool,
        _body: PhantomData<fn() -> ResBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ResBody>
    where
        S: Service<Request<RequestBody>, Response = Response<ResBody>>,
        S: Clone,
        S::Error: Into<BoxError>,
    {
        /// Reading the body (only when a retry may send it again).
        Reading {
            read: Reading,
            parts: Option<Parts>,
            resending: Option<Resending<S>>,
        },
        /// The attempts.
        Sending {
            #[pin]
            call: Oneshot<Resending<S>, Request<RequestBody>>,
        },
    }
}

impl<S, ResBody> std::fmt::Debug for ResponseFuture<S, ResBody>
where
    S: Service<Request<RequestBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("deadline", &self.deadline)
            .field("grpc", &self.grpc)
            .finish_non_exhaustive()
    }
}

impl<S, ResBody> ResponseFuture<S, ResBody>
where
    S: Service<Request<RequestBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    /// The call of `parts` and `body` through `resending`: the body read first when
    /// `max_replay_bytes` lets a retry send it again.
    pub(super) fn new<B>(
        parts: Parts,
        body: B,
        resending: Resending<S>,
        replay: Option<usize>,
        deadline: Instant,
        limit: Duration,
        grpc: bool,
    ) -> Self
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let state = match replay {
            Some(max) => State::Reading {
                read: Box::pin(Buffered::read(body, max)),
                parts: Some(parts),
                resending: Some(resending),
            },
            None => State::Sending {
                call: Oneshot::new(
                    resending,
                    Request::from_parts(parts, Buffered::once(body).next()),
                ),
            },
        };
        ResponseFuture {
            state,
            deadline,
            limit,
            grpc,
            _body: PhantomData,
        }
    }
}

impl<S, ResBody> Future for ResponseFuture<S, ResBody>
where
    S: Service<Request<RequestBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Reading {
                    read,
                    parts,
                    resending,
                } => {
                    let mut body = match ready!(read.as_mut().poll(cx)) {
                        Ok(body) => body,
                        Err(error) => {
                            return Poll::Ready(Err(for_caller(
                                BalanceError::Body(error),
                                *this.grpc,
                            )));
                        }
                    };
                    let (Some(parts), Some(resending)) = (parts.take(), resending.take()) else {
                        return Poll::Ready(Err("a balanced call polled after it ended".into()));
                    };
                    let request = Request::from_parts(parts, body.next());
                    this.state.set(State::Sending {
                        call: Oneshot::new(resending, request),
                    });
                }
                StateProj::Sending { call } => {
                    let result = ready!(call.poll(cx));
                    return Poll::Ready(finish(result, *this.deadline, *this.limit, *this.grpc));
                }
            }
        }
    }
}

/// The last attempt's outcome; a timeout past the call's deadline says so.
fn finish<ResBody>(
    result: Result<Response<ResBody>, BoxError>,
    deadline: Instant,
    limit: std::time::Duration,
    grpc: bool,
) -> Result<Response<ResBody>, BoxError> {
    match result {
        Err(error) if is_elapsed(error.as_ref()) => {
            if Instant::now() >= deadline {
                Err(for_caller(BalanceError::DeadlineExceeded(limit), grpc))
            } else if grpc {
                Err(grpc_status(
                    GrpcCode::DeadlineExceeded,
                    format!("attempt timed out: {error}"),
                ))
            } else {
                Err(error)
            }
        }
        other => other,
    }
}

fn is_elapsed(error: &(dyn std::error::Error + 'static)) -> bool {
    error.is::<tokio::time::error::Elapsed>() || error.is::<tower::timeout::error::Elapsed>()
}
