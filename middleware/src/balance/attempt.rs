//! One attempt of a balanced call, as the service that [`ResendPolicy`](super::policy) resends
//! through: choose an endpoint not [`Tried`] yet, aim the request at it, send it within the
//! attempt's deadline, and record the outcome on the endpoint (its Peak-EWMA and outlier
//! state).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Timeout};
use tower::Service;
use tower::util::Oneshot;

use super::Balancer;
use super::body::RequestBody;
use super::endpoint::InFlight;
use super::error::for_caller;
use super::policy::Tried;
use super::retry;
use crate::BoxError;
use crate::http::Attempt;

/// Sends each request to the endpoint the balancer chooses for it.
#[derive(Clone, Debug)]
pub(crate) struct Attempts<S> {
    balancer: Balancer,
    inner: S,
    grpc: bool,
}

impl<S> Attempts<S> {
    /// Attempts through `inner` (a clone per attempt), choosing with `balancer`.
    pub(crate) fn new(balancer: Balancer, inner: S, grpc: bool) -> Self {
        Attempts {
            balancer,
            inner,
            grpc,
        }
    }
}

impl<S, ResBody> Service<Request<RequestBody>> for Attempts<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = AttemptFuture<S>;

    /// Always ready: each attempt waits for its own clone of the inner client.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        let Some(tried) = request.extensions().get::<Tried>().cloned() else {
            return AttemptFuture::Refused {
                error: Some("a balanced attempt without its call's state".into()),
            };
        };
        let picked = match self.balancer.pick(&tried.endpoints()) {
            Ok(picked) => picked,
            Err(error) => {
                return AttemptFuture::Refused {
                    error: Some(for_caller(error, self.grpc)),
                };
            }
        };
        let endpoint = picked.endpoint;
        let config = &self.balancer.shared.config;
        let deadline = tried.deadline.min(Instant::now() + config.attempt_timeout);
        *request.uri_mut() = match with_authority(request.uri(), &endpoint.authority) {
            Ok(uri) => uri,
            Err(error) => return AttemptFuture::Refused { error: Some(error) },
        };
        // The caller's own gRPC deadline goes on, shortened by what the earlier attempts took.
        // (The attempt timeout is the balancer's, to the response head; the server never sees
        // it, so that a long stream is not cut.)
        if tried.grpc_deadline {
            request.headers_mut().insert(
                "grpc-timeout",
                retry::grpc_timeout_value(tried.deadline.saturating_duration_since(Instant::now())),
            );
        }
        let resend_count = tried.push(endpoint.address.clone());
        request.extensions_mut().insert(Attempt {
            endpoint: endpoint.address.clone(),
            reason: picked.reason,
            resend_count,
            deadline,
        });
        AttemptFuture::Sending {
            send: tokio::time::timeout_at(deadline, Oneshot::new(self.inner.clone(), request)),
            in_flight: Some(endpoint.start()),
            sent: Instant::now(),
            balancer: self.balancer.clone(),
            grpc: self.grpc,
        }
    }
}

pin_project! {
    /// The response future of one attempt.
    #[project = AttemptProj]
    pub(crate) enum AttemptFuture<S>
    where
        S: Service<Request<RequestBody>>,
    {
        /// No endpoint to send to: the error, once.
        Refused { error: Option<BoxError> },
        /// On its way to the endpoint.
        Sending {
            #[pin]
            send: Timeout<Oneshot<S, Request<RequestBody>>>,
            in_flight: Option<InFlight>,
            sent: Instant,
            balancer: Balancer,
            grpc: bool,
        },
    }
}

impl<S, ResBody> Future for AttemptFuture<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AttemptProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "an attempt polled after it ended".into()))),
            AttemptProj::Sending {
                send,
                in_flight,
                sent,
                balancer,
                grpc,
            } => {
                let result = match ready!(send.poll(cx)) {
                    Ok(Ok(response)) => Ok(response),
                    Ok(Err(error)) => Err(error.into()),
                    Err(elapsed) => Err(BoxError::from(elapsed)),
                };
                let Some(in_flight) = in_flight.take() else {
                    return Poll::Ready(result);
                };
                let verdict = match &result {
                    Ok(response) => {
                        retry::response_verdict(response.status(), response.headers(), *grpc)
                    }
                    Err(error) => retry::error_verdict(error.as_ref()),
                };
                let endpoint = in_flight.endpoint().clone();
                drop(in_flight);
                endpoint.record(
                    *sent,
                    verdict.failed(),
                    &balancer.shared.config,
                    fastrand::f64(),
                );
                Poll::Ready(result)
            }
        }
    }
}

/// `uri` aimed at `authority` (`http` unless it says otherwise).
fn with_authority(uri: &Uri, authority: &Authority) -> Result<Uri, BoxError> {
    let mut parts = uri.clone().into_parts();
    if parts.scheme.is_none() {
        parts.scheme = Some(Scheme::HTTP);
    }
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    Ok(Uri::from_parts(parts)?)
}
