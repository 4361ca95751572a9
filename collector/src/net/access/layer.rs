//! [`RequireTokenLayer`]: a tower layer that lets in only requests with a valid bearer token,
//! except on the paths left open (the probes). A refused request gets `401` with
//! `WWW-Authenticate: Bearer` (RFC 6750) over HTTP, or `UNAUTHENTICATED` over gRPC, and is
//! counted; the token given is never logged.
//!
//! tower-http's `ValidateRequestHeaderLayer::bearer` does one fixed token with `==`; this one
//! takes several, reloadable, compared in constant time, with open paths and gRPC's status.

use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use http::{HeaderValue, Request, Response, StatusCode, header};
use prometheus_client::metrics::counter::Counter;

use super::Tokens;

/// How a refusal is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// `401 Unauthorized` with `WWW-Authenticate: Bearer`.
    Http,
    /// gRPC status `UNAUTHENTICATED` (HTTP 200 with `grpc-status: 16`).
    Grpc,
}

/// Requires a token of `tokens` on every request but those to `open` paths.
#[derive(Debug, Clone)]
pub(crate) struct RequireTokenLayer {
    tokens: Tokens,
    style: Style,
    open: &'static [&'static str],
    refused: Counter,
}

impl RequireTokenLayer {
    /// A layer admitting `tokens`, answering refusals in `style`, counting them in `refused`.
    pub(crate) fn new(tokens: Tokens, style: Style, refused: Counter) -> Self {
        Self {
            tokens,
            style,
            open: &[],
            refused,
        }
    }

    /// Paths that need no token (exact matches), e.g. `/healthz`.
    pub(crate) fn open_paths(mut self, paths: &'static [&'static str]) -> Self {
        self.open = paths;
        self
    }
}

impl<S> tower::Layer<S> for RequireTokenLayer {
    type Service = RequireToken<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireToken {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`RequireTokenLayer`].
#[derive(Debug, Clone)]
pub(crate) struct RequireToken<S> {
    inner: S,
    layer: RequireTokenLayer,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for RequireToken<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<ResBody>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        if layer.open.contains(&request.uri().path())
            || layer
                .tokens
                .admits(request.headers().get(header::AUTHORIZATION))
        {
            return Either::Right(self.inner.call(request));
        }
        layer.refused.inc();
        Either::Left(ready(Ok(refusal(layer.style, &request))))
    }
}

fn refusal<B, R: Default>(style: Style, request: &Request<B>) -> Response<R> {
    let missing = !request.headers().contains_key(header::AUTHORIZATION);
    let mut response = Response::new(R::default());
    let headers = response.headers_mut();
    match style {
        Style::Http => {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            // RFC 6750 §3: no error code when the request had no credentials.
            let challenge = if missing {
                "Bearer"
            } else {
                "Bearer error=\"invalid_token\""
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        Style::Grpc => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert("grpc-status", HeaderValue::from_static("16"));
            let message = if missing {
                "a bearer token is required (authorization: Bearer <token>)"
            } else {
                "the bearer token is not valid"
            };
            headers.insert("grpc-message", HeaderValue::from_static(message));
        }
    }
    response
}
