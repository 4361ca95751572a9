//! The server layer: extracts the caller's trace context and opens a SERVER span per request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response};
use opentelemetry::trace::TraceContextExt;
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::attributes;
use super::body::{Completion, Side, TracedBody};
use super::request_id;
use crate::grpc;
use crate::propagation::{Propagation, w3c};

/// Decides from a request's path whether it is traced.
pub type PathFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Paths not traced by default: liveness and readiness probes and the gRPC health service.
/// They are called every few seconds by orchestrators and say nothing about the service's
/// traffic.
pub const DEFAULT_UNTRACED_PATHS: &[&str] = &[
    "/health",
    "/healthz",
    "/livez",
    "/readyz",
    "/ready",
    "/live",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

/// A tower [`Layer`] that traces every request a service receives: it reads the caller's
/// trace context ([`Propagation`]), opens a SERVER span named and attributed by the
/// OpenTelemetry semantic conventions (HTTP or gRPC, told apart by `content-type`), sets
/// `x-request-id` when missing and echoes it on the response.
///
/// It works on an axum `Router` (add it with `Router::layer` so that `http.route` comes from
/// `MatchedPath`) and on a tonic server (`Server::builder().layer(…)`).
///
/// ```
/// use axum::{Router, routing::get};
/// use wayfinder_middleware::ServerLayer;
///
/// let app: Router = Router::new()
///     .route("/users/{id}", get(|| async { "ok" }))
///     .layer(ServerLayer::new());
/// ```
#[derive(Clone)]
pub struct ServerLayer {
    config: Arc<Config>,
}

struct Config {
    propagation: Propagation,
    filter: PathFilter,
    response_traceparent: bool,
}

impl fmt::Debug for ServerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerLayer")
            .field("propagation", &self.config.propagation)
            .field("response_traceparent", &self.config.response_traceparent)
            .finish_non_exhaustive()
    }
}

impl Default for ServerLayer {
    fn default() -> Self {
        ServerLayer::new()
    }
}

impl ServerLayer {
    /// Extracts every known format, skips [`DEFAULT_UNTRACED_PATHS`], adds no `traceparent`
    /// to responses.
    pub fn new() -> Self {
        ServerLayer {
            config: Arc::new(Config {
                propagation: Propagation::default(),
                filter: Arc::new(|path| !DEFAULT_UNTRACED_PATHS.contains(&path)),
                response_traceparent: false,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::get_mut(&mut self.config).expect("configured before it is cloned")
    }

    /// Uses `propagation` to read incoming headers (for example [`Propagation::none`] for a
    /// public edge that must not trust callers' trace ids).
    pub fn propagation(mut self, propagation: Propagation) -> Self {
        self.config_mut().propagation = propagation;
        self
    }

    /// Traces a request only when `filter(path)` is true. Replaces the default filter; the
    /// filtered requests still get an `x-request-id`.
    ///
    /// ```
    /// use wayfinder_middleware::ServerLayer;
    ///
    /// // Trace everything, health checks included.
    /// let layer = ServerLayer::new().filter(|_path| true);
    /// // Keep the defaults and also skip the metrics endpoint.
    /// let layer = ServerLayer::new().filter(|path| {
    ///     path != "/metrics" && !wayfinder_middleware::DEFAULT_UNTRACED_PATHS.contains(&path)
    /// });
    /// ```
    pub fn filter(mut self, filter: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.config_mut().filter = Arc::new(filter);
        self
    }

    /// Adds the server span's `traceparent` to every traced response, so that a caller
    /// without tracing (a browser, curl) can find the trace. Off by default: it tells callers
    /// the internal trace id.
    pub fn response_traceparent(mut self, enabled: bool) -> Self {
        self.config_mut().response_traceparent = enabled;
        self
    }
}

impl<S> Layer<S> for ServerLayer {
    type Service = ServerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`ServerLayer`] produces.
#[derive(Clone)]
pub struct ServerService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for ServerService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ServerService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let request_id = request_id::ensure(request.headers_mut());
        request.extensions_mut().insert(request_id.clone());
        if !(self.config.filter)(request.uri().path()) {
            return ResponseFuture {
                inner: self.inner.call(request),
                completion: None,
                request_id: request_id.0,
                traceparent: false,
            };
        }
        let grpc = grpc::is_grpc(request.headers());
        let span = if grpc {
            grpc_span(&request)
        } else {
            http_span(&request)
        };
        if !span.is_disabled() {
            let parent = self
                .config
                .propagation
                .extract(request.headers())
                .with_value(request_id.clone());
            // Fails only when the span has started already, which it cannot have here.
            let _ = span.set_parent(parent);
        }
        let inner = span.in_scope(|| self.inner.call(request));
        ResponseFuture {
            inner,
            completion: Some(Completion::new(span, Side::Server, grpc)),
            request_id: request_id.0,
            traceparent: self.config.response_traceparent,
        }
    }
}

fn http_span<B>(request: &Request<B>) -> Span {
    let (method, original) = attributes::method(request.method());
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|path| path.as_str());
    let (host, port) = attributes::server_address(request);
    tracing::info_span!(
        target: "wayfinder_middleware::server",
        "HTTP request",
        otel.name = attributes::span_name(method, route),
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        http.request.method = method,
        http.request.method_original = original,
        http.route = route,
        url.path = request.uri().path(),
        url.query = request.uri().query(),
        url.scheme = attributes::scheme(request.uri()),
        server.address = host,
        server.port = port,
        client.address = attributes::client_address(request),
        network.protocol.version = attributes::protocol_version(request.version()),
        user_agent.original = request
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|value| value.to_str().ok()),
        http.response.status_code = Empty,
        error.type = Empty,
    )
}

fn grpc_span<B>(request: &Request<B>) -> Span {
    let path = request.uri().path();
    let (service, method) = match grpc::service_and_method(path) {
        Some((service, method)) => (Some(service), Some(method)),
        None => (None, None),
    };
    let (host, port) = attributes::server_address(request);
    tracing::info_span!(
        target: "wayfinder_middleware::server",
        "gRPC request",
        otel.name = path.strip_prefix('/').unwrap_or(path),
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        server.address = host,
        server.port = port,
        client.address = attributes::client_address(request),
        network.protocol.version = attributes::protocol_version(request.version()),
        user_agent.original = request
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|value| value.to_str().ok()),
        rpc.grpc.status_code = Empty,
        error.type = Empty,
    )
}

pin_project! {
    /// The response future of [`ServerService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        completion: Option<Completion>,
        request_id: HeaderValue,
        traceparent: bool,
    }
}

impl<F: fmt::Debug> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<TracedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.completion.as_ref().map(|c| c.span().enter());
        let result = ready!(this.inner.poll(cx));
        drop(_entered);
        let mut completion = this.completion.take();
        match result {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                parts
                    .headers
                    .entry(request_id::HEADER)
                    .or_insert_with(|| this.request_id.clone());
                if let Some(completion) = completion.as_mut() {
                    completion.response(parts.status, &parts.headers);
                    if *this.traceparent {
                        write_traceparent(completion.span(), &mut parts.headers);
                    }
                }
                Poll::Ready(Ok(Response::from_parts(
                    parts,
                    TracedBody::new(body, completion),
                )))
            }
            Err(error) => {
                if let Some(completion) = completion.as_mut() {
                    completion.failed(std::any::type_name::<E>(), "the service returned an error");
                }
                Poll::Ready(Err(error))
            }
        }
    }
}

/// `traceparent` of `span` on a response.
fn write_traceparent(span: &Span, headers: &mut http::HeaderMap) {
    let cx = span.context();
    let span_ref = cx.span();
    let context = span_ref.span_context();
    if context.is_valid()
        && let Ok(value) = HeaderValue::from_str(&w3c::traceparent(context))
    {
        headers.insert(w3c::TRACEPARENT, value);
    }
}
