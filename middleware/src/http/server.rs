//! The server layer: extracts the caller's trace context and opens a SERVER span per request.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response};
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanBuilder, SpanKind, TraceContextExt};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_http::catch_panic::{CatchPanic, ResponseForPanic};

use super::attributes;
use super::body::{Completion, Side, TracedBody};
use super::request_id;
use super::routes::ROUTES;
use crate::grpc;
use crate::propagation::{Propagation, w3c};
use crate::tracer;

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

#[derive(Clone)]
struct Config {
    propagation: Propagation,
    filter: PathFilter,
    response_traceparent: bool,
    trust_forwarded: bool,
    conventions: grpc::RpcConventions,
    accept_baggage: bool,
    rpc_methods: Option<Arc<HashSet<String>>>,
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
                propagation: Propagation::current(),
                filter: Arc::new(|path| !DEFAULT_UNTRACED_PATHS.contains(&path)),
                response_traceparent: false,
                trust_forwarded: false,
                conventions: grpc::RpcConventions::from_env(),
                accept_baggage: true,
                rpc_methods: None,
            }),
        }
    }

    /// Whether callers' `baggage` is taken in (default yes). At a public edge, refuse it: the
    /// trace context is still read, the baggage dropped, so that outside callers cannot plant
    /// entries that later services trust.
    pub fn accept_baggage(mut self, accept: bool) -> Self {
        self.config_mut().accept_baggage = accept;
        self
    }

    /// Follows these RPC conventions for gRPC spans (default: what
    /// `OTEL_SEMCONV_STABILITY_OPT_IN` says, see [`RpcConventions`](crate::grpc::RpcConventions)).
    pub fn rpc_conventions(mut self, conventions: grpc::RpcConventions) -> Self {
        self.config_mut().conventions = conventions;
        self
    }

    /// The gRPC methods this server implements (`package.Service/Method`), for the stable
    /// conventions' `rpc.method`: a call to any other is `_OTHER` with `rpc.method_original`
    /// from the start. Without a list the server's answer decides (UNIMPLEMENTED means the
    /// method is unknown), so the stable `rpc.method` is set when the call completes, and a
    /// sampler does not see it.
    ///
    /// ```
    /// let layer = wayfinder_middleware::ServerLayer::new()
    ///     .rpc_methods(["inventory.v1.Inventory/Reserve", "inventory.v1.Inventory/Stock"]);
    /// # let _ = layer;
    /// ```
    pub fn rpc_methods<I, M>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: Into<String>,
    {
        let methods = methods.into_iter().map(Into::into).collect();
        self.config_mut().rpc_methods = Some(Arc::new(methods));
        self
    }

    /// Trusts a proxy in front: `client.address` from its `Forwarded` (`for=`) or
    /// `X-Forwarded-For`, and `url.scheme` from `Forwarded` (`proto=`) or `X-Forwarded-Proto`.
    /// Off by default: any caller can send those headers, so without a proxy that sets them
    /// they are ignored and both come from the connection. `network.peer.address` and
    /// `network.peer.port` always do.
    pub fn trust_forwarded_headers(mut self, trust: bool) -> Self {
        self.config_mut().trust_forwarded = trust;
        self
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
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
    type Service = ServerService<CatchPanic<S, PanicResponse>>;

    /// Wraps `inner` in tower-http's `CatchPanic` first: a handler that panics answers 500 and
    /// its span says `error.type = "panic"`, instead of dropping the connection.
    fn layer(&self, inner: S) -> Self::Service {
        ServerService {
            inner: CatchPanic::custom(inner, PanicResponse),
            config: self.config.clone(),
        }
    }
}

/// The answer to a handler that panicked: 500, empty, with the panic's message in an
/// extension for the span.
#[derive(Clone, Copy, Debug, Default)]
pub struct PanicResponse;

/// The message of a panic, on the response the panic handler made.
#[derive(Clone, Debug)]
pub(crate) struct Panicked(pub(crate) String);

impl ResponseForPanic for PanicResponse {
    type ResponseBody = http_body_util::Empty<bytes::Bytes>;

    fn response_for_panic(
        &mut self,
        error: Box<dyn std::any::Any + Send + 'static>,
    ) -> Response<Self::ResponseBody> {
        let message = error
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| error.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic without a message".to_owned());
        let mut response = Response::new(http_body_util::Empty::new());
        *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        response.extensions_mut().insert(Panicked(message));
        response
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
    S::Error: fmt::Display,
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
        let trust = self.config.trust_forwarded;
        let recognized = if grpc {
            recognized(request.uri().path(), self.config.rpc_methods.as_deref())
        } else {
            attributes::Recognized::Yes
        };
        let mut builder = if grpc {
            grpc_span(&request, trust, self.config.conventions, recognized)
        } else {
            http_span(&request, trust)
        };
        if let Ok(id) = request_id.0.to_str() {
            builder
                .attributes
                .get_or_insert_with(Vec::new)
                .push(KeyValue::new(
                    "http.request.header.x-request-id",
                    // A header attribute is a string array in the conventions.
                    opentelemetry::Value::Array(opentelemetry::Array::String(vec![
                        opentelemetry::StringValue::from(id.to_owned()),
                    ])),
                ));
        }
        let header_value = request_id.0.clone();
        let mut parent = self.config.propagation.extract(request.headers());
        if !self.config.accept_baggage {
            use opentelemetry::baggage::BaggageExt;
            parent = parent.with_cleared_baggage();
        }
        let parent = parent.with_value(request_id);
        let cx = tracer::start(builder, &parent);
        // The stable `rpc.method` the call's outcome decides (see `rpc_methods`).
        let deferred = (grpc
            && self.config.conventions.stable()
            && recognized == attributes::Recognized::Later)
            .then(|| grpc::service_and_method(request.uri().path()))
            .flatten()
            .map(|(service, method)| format!("{service}/{method}"));
        let inner = {
            let _attached = cx.clone().attach();
            self.inner.call(request)
        };
        ResponseFuture {
            inner,
            completion: Some(
                Completion::new(cx, Side::Server, grpc)
                    .with_conventions(self.config.conventions)
                    .with_deferred_method(deferred),
            ),
            request_id: header_value,
            traceparent: self.config.response_traceparent,
        }
    }
}

/// The HTTP SERVER span of `request`.
fn http_span<B>(request: &Request<B>, trust_forwarded: bool) -> SpanBuilder {
    let route = attributes::matched_route(request.extensions());
    let uri = request.uri();
    let mut attributes = Vec::with_capacity(14);
    let method = attributes::push_method(&mut attributes, request.method());
    let name = match route {
        Some(route) => {
            let (name, value) = ROUTES.get(method, route);
            attributes.push(KeyValue::new("http.route", value));
            name
        }
        None => attributes::route_less_name(method).into(),
    };
    attributes.push(KeyValue::new("url.path", uri.path().to_owned()));
    if let Some(query) = uri.query() {
        attributes.push(KeyValue::new(
            "url.query",
            attributes::redact_query(query).into_owned(),
        ));
    }
    let scheme = match trust_forwarded
        .then(|| attributes::forwarded_proto(request))
        .flatten()
    {
        Some(proto) => proto.into(),
        None => attributes::scheme_static(uri),
    };
    attributes.push(KeyValue::new("url.scheme", scheme));
    attributes::push_common(&mut attributes, request, trust_forwarded);
    SpanBuilder::from_name(name)
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
}

/// Whether the server knows the method at `path`: by the configured list, else later.
fn recognized(path: &str, methods: Option<&HashSet<String>>) -> attributes::Recognized {
    match methods {
        None => attributes::Recognized::Later,
        Some(methods) => match path.strip_prefix('/') {
            Some(method) if methods.contains(method) => attributes::Recognized::Yes,
            _ => attributes::Recognized::No,
        },
    }
}

/// The gRPC SERVER span of `request`.
fn grpc_span<B>(
    request: &Request<B>,
    trust_forwarded: bool,
    conventions: grpc::RpcConventions,
    recognized: attributes::Recognized,
) -> SpanBuilder {
    let path = request.uri().path();
    let mut attributes = Vec::with_capacity(10);
    attributes::push_rpc(&mut attributes, path, conventions, recognized);
    attributes::push_common(&mut attributes, request, trust_forwarded);
    let name = if recognized == attributes::Recognized::No {
        grpc::unknown_method_name(conventions).to_owned()
    } else {
        grpc::span_name(path, conventions)
    };
    SpanBuilder::from_name(name)
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
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
    E: fmt::Display,
{
    type Output = Result<Response<TracedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let attached = this
            .completion
            .as_ref()
            .map(|completion| completion.context().clone().attach());
        let result = ready!(this.inner.poll(cx));
        drop(attached);
        let mut completion = this.completion.take();
        match result {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                parts
                    .headers
                    .entry(request_id::HEADER)
                    .or_insert_with(|| this.request_id.clone());
                if let Some(completion) = completion.as_mut() {
                    match parts.extensions.get::<Panicked>() {
                        Some(Panicked(message)) => completion.panicked(message),
                        None => completion.response(parts.status, &parts.headers),
                    }
                    if *this.traceparent {
                        write_traceparent(completion.context(), &mut parts.headers);
                    }
                }
                Poll::Ready(Ok(Response::from_parts(
                    parts,
                    TracedBody::new(body, completion),
                )))
            }
            Err(error) => {
                if let Some(completion) = completion.as_mut() {
                    completion.failed("_OTHER", error.to_string());
                }
                Poll::Ready(Err(error))
            }
        }
    }
}

/// `traceparent` of the span in `cx` on a response.
fn write_traceparent(cx: &opentelemetry::Context, headers: &mut http::HeaderMap) {
    let span_ref = cx.span();
    let context = span_ref.span_context();
    if context.is_valid()
        && let Ok(value) = HeaderValue::from_str(&w3c::traceparent(context))
    {
        headers.insert(w3c::TRACEPARENT, value);
    }
}
